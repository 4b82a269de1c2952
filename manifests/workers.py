"""Bodies for the ``direct`` transfer mode: a blank DataVolume, a PSK Secret and a
``batch/v1`` Job per disk, in which ``vmmove worker`` writes the disk from the source
host's NBD export (TLS-PSK) straight into the DataVolume's PVC.

Layout inside the worker's container (all under :data:`ROOT`, docs/remote-hosts.md):

* the PVC: Filesystem mode mounted at ``/run/vmmove/pvc`` and written as ``disk.img`` at
  its root (CDI's layout, so KubeVirt boots it as any imported disk); Block mode as the
  device ``/run/vmmove/disk`` (``volumeDevices``);
* the Secret (key ``keys.psk``, qemu/libnbd PSK format) at ``/run/vmmove/tls``, mode 0400;
* the result (JSON: checksums, bytes) in ``/run/vmmove/result``, the container's
  ``terminationMessagePath``, so vmmove reads it from the pod's status.

Every body is strictly valid: the DataVolume against CDI's schema (../shared/schemas, in
the tests), the Job and Secret against Kubernetes' own (``kubernetes-validate``,
:func:`validate_builtin`).
"""

from __future__ import annotations

import base64
from typing import Any

from migrate.core.mapping import StorageTarget
from migrate.plan_workers import WorkerSettings

ROOT = "/run/vmmove"
PVC_MOUNT = f"{ROOT}/pvc"
DISK_FILE = f"{PVC_MOUNT}/disk.img"
DEVICE_PATH = f"{ROOT}/disk"
TLS_MOUNT = f"{ROOT}/tls"
PSK_KEY = "keys.psk"
RESULT_PATH = f"{ROOT}/result"
KUBERNETES_VERSION = "1.33"  # the schemas kubernetes-validate checks against
MANAGED = {"app.kubernetes.io/managed-by": "vmmove"}
MULTUS = "k8s.v1.cni.cncf.io/networks"


def blank_datavolume(name: str, namespace: str, size: int, storage: StorageTarget,
                     item: str) -> dict[str, Any]:
    """A CDI DataVolume with ``source.blank``: an empty volume of ``size`` bytes."""
    spec_storage: dict[str, Any] = {"resources": {"requests": {"storage": str(size)}}}
    if storage.storage_class:
        spec_storage["storageClassName"] = storage.storage_class
    if storage.access_modes:
        spec_storage["accessModes"] = list(storage.access_modes)
    if storage.volume_mode:
        spec_storage["volumeMode"] = storage.volume_mode
    return {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(MANAGED),
                         "annotations": {"vmmove.io/source": item}},
            "spec": {"source": {"blank": {}}, "storage": spec_storage}}


def psk_secret(name: str, namespace: str, psk: bytes, item: str) -> dict[str, Any]:
    """The Secret holding one export's PSK file (deleted when its Job is done)."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(MANAGED),
                         "annotations": {"vmmove.io/source": item}},
            "data": {PSK_KEY: base64.b64encode(psk).decode()}}


def worker_args(source_url: str, size: int, block: bool) -> list[str]:
    """The exact arguments ``vmmove worker`` gets (see migrate/cli/worker.py)."""
    return ["--source", source_url, "--psk-file", f"{TLS_MOUNT}/{PSK_KEY}",
            "--dest", DEVICE_PATH if block else DISK_FILE, "--size", str(size),
            "--result", RESULT_PATH]


def worker_job(name: str, namespace: str, *, claim: str, secret: str, source_url: str,
               size: int, block: bool, settings: WorkerSettings, item: str) -> dict[str, Any]:
    """The Job that runs ``vmmove worker`` once (retried up to ``backoffLimit`` times)."""
    container: dict[str, Any] = {
        "name": "worker", "image": settings.image, "imagePullPolicy": "IfNotPresent",
        "command": ["vmmove", "worker"],
        "args": worker_args(source_url, size, block),
        "terminationMessagePath": RESULT_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",  # a failure: its last line
        "volumeMounts": [{"name": "tls", "mountPath": TLS_MOUNT, "readOnly": True}],
        "resources": {"requests": {"cpu": "250m", "memory": "128Mi"},
                      "limits": {"memory": "512Mi"}},
        "securityContext": {"allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}},
    }
    if block:
        container["volumeDevices"] = [{"name": "disk", "devicePath": DEVICE_PATH}]
    else:
        container["volumeMounts"].append({"name": "disk", "mountPath": PVC_MOUNT})
    pod_meta: dict[str, Any] = {"labels": {**MANAGED, "vmmove.io/worker": name}}
    if settings.network:
        pod_meta["annotations"] = {MULTUS: settings.network}
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [
            {"name": "disk", "persistentVolumeClaim": {"claimName": claim}},
            {"name": "tls", "secret": {"secretName": secret, "defaultMode": 0o400,
                                       "items": [{"key": PSK_KEY, "path": PSK_KEY}]}},
        ],
    }
    if settings.node_selector:
        pod_spec["nodeSelector"] = dict(settings.node_selector)
    if settings.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in settings.tolerations]
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(MANAGED),
                         "annotations": {"vmmove.io/source": item}},
            "spec": {"backoffLimit": settings.backoff_limit, "template": {
                "metadata": pod_meta, "spec": pod_spec}}}


def validate_builtin(obj: dict[str, Any], version: str = KUBERNETES_VERSION) -> None:
    """Check a built-in kind (Job, Secret) against Kubernetes' schema for ``version``
    (``kubernetes-validate``, strict: unknown fields fail); raise ValueError naming it."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path) or "(root)"
        raise ValueError(f"{obj.get('kind')} {obj['metadata'].get('name')}: {where}: "
                         f"{exc.message}") from None
