"""The objects the transfer step needs in the cluster, made here so that transfer
backends (:mod:`converters.transfer`) only move bytes.

* :func:`s3_secret`: the Secret CDI's s3 source reads (``accessKeyId``/``secretKey``);
* :func:`upload_datavolume`: an upload DataVolume the CDI upload proxy fills;
* :func:`upload_token_request`: the request for the proxy's upload token.

Sources: CDI's datavolumes.md (s3 and upload sources, ``storage``), upload.md (the
UploadTokenRequest), and the storage.bind.immediate.requested annotation.
"""

from __future__ import annotations

import base64
from typing import Any

CDI_API = "cdi.kubevirt.io/v1beta1"
UPLOAD_API = "upload.cdi.kubevirt.io/v1beta1"
#: Bind the PVC at once even with a WaitForFirstConsumer storage class.
BIND_IMMEDIATE = "cdi.kubevirt.io/storage.bind.immediate.requested"
MANAGED_BY = {"app.kubernetes.io/managed-by": "vmmove"}


def s3_secret(name: str, endpoint: str, access_key: str, secret_key: str,
              namespace: str | None = None) -> dict[str, Any]:
    """The Secret (``Opaque``) holding S3 credentials for a DataVolume's s3 source,
    annotated with the endpoint it is for; ``namespace`` left out when None."""
    meta: dict[str, Any] = {"name": name, "labels": dict(MANAGED_BY),
                            "annotations": {"vmmove.io/s3-endpoint": endpoint}}
    if namespace:
        meta["namespace"] = namespace
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "type": "Opaque",
        "data": {
            "accessKeyId": base64.b64encode(access_key.encode()).decode(),
            "secretKey": base64.b64encode(secret_key.encode()).decode(),
        },
    }


def upload_datavolume(name: str, namespace: str, source_item: str, size: int, *,
                      storage_class: str | None = None,
                      access_modes: list[str] | None = None,
                      volume_mode: str | None = None,
                      force_bind: bool = False) -> dict[str, Any]:
    """An upload DataVolume of ``size`` bytes for the journal item ``source_item``
    (annotation ``vmmove.io/source``); storage settings left to the StorageProfile when
    not given."""
    storage: dict[str, Any] = {"resources": {"requests": {"storage": str(size)}}}
    if storage_class:
        storage["storageClassName"] = storage_class
    if access_modes:
        storage["accessModes"] = list(access_modes)
    if volume_mode:
        storage["volumeMode"] = volume_mode
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(MANAGED_BY),
                            "annotations": {"vmmove.io/source": source_item}}
    if force_bind:
        meta["annotations"][BIND_IMMEDIATE] = "true"
    return {"apiVersion": CDI_API, "kind": "DataVolume",
            "metadata": meta, "spec": {"source": {"upload": {}}, "storage": storage}}


def upload_token_request(pvc: str, namespace: str) -> dict[str, Any]:
    """The UploadTokenRequest for uploading into PVC ``pvc``."""
    return {"apiVersion": UPLOAD_API, "kind": "UploadTokenRequest",
            "metadata": {"name": f"token-for-{pvc}", "namespace": namespace},
            "spec": {"pvcName": pvc}}
