"""Transfer mode ``direct``: in-cluster workers write each disk from its host into a PVC.

For each disk of a wave (VMs of ``qemu+ssh://`` hosts only):

1. a blank DataVolume (CDI ``source.blank``) of the disk's size, with the storage the
   plan's map gives the disk, is applied and waited for (``Succeeded``: the PVC is
   bound and empty);
2. on the host, the disk is exported on TCP with TLS-PSK (:mod:`migrate.sources.
   remote_disks`: a backup job's point-in-time export re-served by ``qemu-nbd`` for a
   running VM, ``qemu-nbd --read-only`` for a shut-off one), a fresh PSK per disk;
3. a Secret with the PSK and a ``batch/v1`` Job running ``vmmove worker``
   (manifests/workers.py) are applied; vmmove watches the Job (Kubernetes retries the
   pod up to ``backoffLimit``), reads the worker's result (checksums) from the pod's
   termination message, then deletes the Job and the Secret and ends the export;
4. the journal records the disk as transferred (``upload`` step, backend ``direct``,
   ``dv`` = the DataVolume), which ``vmmove manifests`` turns into a VM disk that uses
   that DataVolume as it is.  A disk is recorded done only after its Job succeeded with a
   verified checksum; the Job is deleted before the stage ends, so no VM is started while
   a worker holds its PVC.

Concurrency: at most ``max_inflight`` disks per wave and ``max_inflight_per_host`` per
source host at once.  Errors: one line per failed disk, naming it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from manifests.workers import blank_datavolume, psk_secret, worker_job
from migrate.clients.nbd import PSK_USER
from migrate.core import digest
from migrate.core.errors import VmmoveError
from migrate.clients.cluster import Kube
from migrate.core.mapping import StorageMap
from migrate.core.model import VM, Disk
from migrate.core.naming import dns1123_label
from migrate.plan_workers import WorkerSettings
from migrate.sources.remote_disks import (
    Lease,
    RemoteDiskError,
    RemoteReads,
    is_remote,
    ssh_target,
)
from migrate.core.journal import DONE, Journal
from migrate.core.records import KIND_UPLOAD
from migrate.core.workdir import disk_item

BACKEND = "direct"
DV_TIMEOUT = 600.0  # seconds for a blank DataVolume to be ready
JOB_TIMEOUT = 6 * 3600.0
POLL = 0.25
PORT_TRIES = 20
#: Container waiting reasons kubelet does not get out of by itself.
STUCK_REASONS = {"CreateContainerConfigError", "CreateContainerError", "ErrImagePull",
                 "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}


@dataclass(frozen=True)
class JobState:
    """A worker Job's state: ``complete`` with the pod's ``result`` (its termination
    message, JSON), or ``failed`` / ``stuck`` with the reason (empty when not), and the
    pods run so far (``attempts``: succeeded + failed)."""

    complete: bool
    failed: str
    stuck: str
    attempts: int
    result: dict[str, Any]


def _terminated(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    state = (statuses[0].get("state") or {}) if statuses else {}
    return state.get("terminated") or {}


def _stuck(pods: list[dict[str, Any]]) -> str:
    """A pod that will never run by itself (kubelet: a missing Secret or key, an image that
    cannot be pulled): its reason and message; empty when none is stuck."""
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_REASONS:
                return f"{waiting['reason']}: {waiting.get('message') or ''}".strip()
    return ""


def _pod_result(pods: list[dict[str, Any]]) -> dict[str, Any]:
    for pod in pods:
        term = _terminated(pod)
        if term.get("exitCode") == 0 and term.get("message"):
            try:
                return dict(json.loads(term["message"]))
            except ValueError:
                continue
    return {}


def _pod_failure(pods: list[dict[str, Any]]) -> str:
    messages = [str(_terminated(p).get("message") or "").strip() for p in pods]
    messages = [m.splitlines()[-1] for m in messages if m]
    return messages[-1] if messages else ""


class DirectError(VmmoveError):
    """A disk could not be written by its worker."""


@dataclass
class DirectDisk:
    vm: VM
    disk: Disk
    name: str  # the VM's target name (DataVolume names derive from it)
    namespace: str

    @property
    def item(self) -> str:
        return disk_item(self.vm, self.disk)

    @property
    def label(self) -> str:
        return f"{self.vm.name}/{self.disk.target}"

    @property
    def dv(self) -> str:
        return dns1123_label(f"{self.name}-{self.disk.target}")


@dataclass
class DirectResult:
    item: str
    label: str
    status: str  # transferred | skipped | failed
    checksum: str | None = None
    error: str | None = None
    attempts: int = 0


def _phase(obj: dict[str, Any] | None) -> str:
    return ((obj or {}).get("status") or {}).get("phase") or "Pending"


class DirectTransfer:
    """One wave's direct transfers against one cluster."""

    def __init__(self, kube: Kube, journal: Journal, storage: StorageMap,
                 settings: WorkerSettings, *, redo: bool | set[str] = False,
                 on_event: Callable[[str], None] | None = None) -> None:
        self.kube, self.journal, self.storage = kube, journal, storage
        self.settings, self.redo = settings, redo
        self.on_event = on_event or (lambda _msg: None)
        self._jlock = threading.Lock()
        self._ports: set[int] = set()
        self._plock = threading.Lock()
        self._hosts: dict[str, threading.Semaphore] = {}

    # -- bookkeeping ---------------------------------------------------------------------
    def _journal(self, fn: str, *args: Any, **kw: Any) -> Any:
        with self._jlock:
            return getattr(self.journal, fn)(*args, **kw)

    def _host_slot(self, vm: VM) -> threading.Semaphore:
        target = ssh_target(vm)
        host = target.host if target else vm.source.location
        with self._plock:
            return self._hosts.setdefault(
                host, threading.Semaphore(self.settings.max_inflight_per_host))

    def _port(self) -> int:
        low, high = self.settings.port_range
        with self._plock:
            for port in range(low, high + 1):
                if port not in self._ports:
                    self._ports.add(port)
                    return port
        raise DirectError(f"no free port left in workers.portRange {low}-{high}")

    def _free_port(self, port: int) -> None:
        with self._plock:
            self._ports.discard(port)

    # -- the wave ------------------------------------------------------------------------
    def run(self, disks: list[DirectDisk]) -> list[DirectResult]:
        """Transfer every disk (``max_inflight`` at a time); one result per disk."""
        bad = [d.label for d in disks if not is_remote(d.vm)]
        if bad:
            raise DirectError(f"transfer mode direct reads disks from qemu+ssh:// hosts only: "
                              f"{', '.join(bad)} (use transfer.s3 or transfer.uploadProxy)")
        pairs = [(d.vm, d.disk) for d in disks]
        with RemoteReads(pairs) as reads, \
                ThreadPoolExecutor(max_workers=self.settings.max_inflight,
                                   thread_name_prefix="direct") as pool:
            return list(pool.map(lambda d: self._one(reads, d), disks))

    def _one(self, reads: RemoteReads, d: DirectDisk) -> DirectResult:
        step = self._journal("get", KIND_UPLOAD, d.item)
        redo = self.redo is True or (isinstance(self.redo, set) and d.vm.key in self.redo)
        if step is not None and step.status == DONE and not redo \
                and step.backend == BACKEND:
            return DirectResult(d.item, d.label, "skipped", step.checksum)
        with self._host_slot(d.vm):
            self._journal("start", KIND_UPLOAD, d.item, backend=BACKEND, dv=d.dv,
                          namespace=d.namespace, vm=d.vm.name, disk=d.disk.target)
            try:
                checksum, attempts = self._transfer(reads, d)
            except VmmoveError as exc:
                msg = str(exc) if str(exc).startswith(d.label) else f"{d.label}: {exc}"
                self._journal("fail", KIND_UPLOAD, d.item, msg)
                return DirectResult(d.item, d.label, "failed", error=msg)
            except BaseException:
                self._journal("fail", KIND_UPLOAD, d.item, "interrupted: rerun to resume")
                raise
        size = d.disk.virtual_size
        self._journal("done", KIND_UPLOAD, d.item, checksum=checksum, size=size, bytes=size,
                      attempts=attempts)
        return DirectResult(d.item, d.label, "transferred", checksum, attempts=attempts)

    def _transfer(self, reads: RemoteReads, d: DirectDisk) -> tuple[str, int]:
        size = d.disk.virtual_size
        if not size:
            raise DirectError(f"{d.label}: the disk's size is unknown (rescan the host)")
        target = self.storage.resolve(d.disk)
        block = target.volume_mode == "Block"
        self.kube.apply(blank_datavolume(d.dv, d.namespace, size, target, d.item))
        self._wait_dv(d)
        host = ssh_target(d.vm)
        assert host is not None
        address = self.settings.source_address or host.host
        port, stack, lease = self._export(reads, d)
        try:
            with stack:
                assert lease.psk is not None
                url = f"nbds://{PSK_USER}@{address}:{port}/{lease.export}"
                job_name = dns1123_label(f"vmmove-w-{d.dv}")
                secret_name = dns1123_label(f"vmmove-psk-{d.dv}")
                self._delete("batch/v1", "Job", job_name, d.namespace)  # an earlier run's
                self.kube.apply(psk_secret(secret_name, d.namespace, lease.psk, d.item))
                try:
                    job = worker_job(job_name, d.namespace, claim=d.dv, secret=secret_name,
                                     source_url=url, size=size, block=block,
                                     settings=self.settings, item=d.item)
                    self.kube.apply(job)
                    self.on_event(f"{d.label}: worker Job {d.namespace}/{job_name} started "
                                  f"({lease.kind}: {lease.note})")
                    return self._wait_job(d, job_name, size)
                finally:
                    self._delete("batch/v1", "Job", job_name, d.namespace)
                    self._delete("v1", "Secret", secret_name, d.namespace)
        finally:
            self._free_port(port)

    def _export(self, reads: RemoteReads, d: DirectDisk) -> tuple[int, ExitStack, Lease]:
        """The disk exported with TLS on a free port of ``workers.portRange`` (a port
        another process holds on the host is skipped); the stack ends the export."""
        for _ in range(PORT_TRIES):
            port = self._port()
            stack = ExitStack()
            try:
                lease = stack.enter_context(reads.lease(d.vm, d.disk, tls_port=port))
            except RemoteDiskError as exc:
                stack.close()
                if "already in use" in str(exc):
                    continue  # stays marked taken for this run
                self._free_port(port)
                raise
            return port, stack, lease
        raise DirectError(f"{d.label}: no free port on the host after {PORT_TRIES} tries in "
                          f"workers.portRange {self.settings.port_range[0]}-"
                          f"{self.settings.port_range[1]}")

    # -- cluster -------------------------------------------------------------------------
    def _wait_dv(self, d: DirectDisk) -> None:
        deadline = time.monotonic() + DV_TIMEOUT
        while True:
            dv = self.kube.get("cdi.kubevirt.io/v1beta1", "DataVolume", d.dv, d.namespace)
            phase = _phase(dv)
            if phase == "Succeeded":
                return
            if phase == "Failed":
                raise DirectError(f"{d.label}: blank DataVolume {d.namespace}/{d.dv} failed")
            if time.monotonic() > deadline:
                raise DirectError(f"{d.label}: blank DataVolume {d.namespace}/{d.dv} still "
                                  f"{phase} after {DV_TIMEOUT:.0f}s")
            time.sleep(POLL)

    def _wait_job(self, d: DirectDisk, name: str, size: int) -> tuple[str, int]:
        deadline = time.monotonic() + JOB_TIMEOUT
        while True:
            state = self.job_state(d, name)
            if state.complete:
                result = state.result
                parsed = digest.parse(str(result.get("checksum") or ""))
                if result.get("bytes") != size or parsed is None \
                        or parsed[0] not in digest.TREE_FORMS:  # (an older worker: sha256-1m)
                    raise DirectError(f"{d.label}: worker Job {name} succeeded without a "
                                      f"verified result ({result or 'none'})")
                return str(result["checksum"]), state.attempts
            if state.failed:
                raise DirectError(f"{d.label}: worker Job {d.namespace}/{name} failed after "
                                  f"{state.attempts} attempt(s): {state.failed}")
            if state.stuck:
                raise DirectError(f"{d.label}: worker Job {d.namespace}/{name}: its pod cannot "
                                  f"start: {state.stuck}")
            if time.monotonic() > deadline:
                raise DirectError(f"{d.label}: worker Job {name} still running after "
                                  f"{JOB_TIMEOUT:.0f}s")
            time.sleep(POLL)

    def job_state(self, d: DirectDisk, name: str) -> JobState:
        """Where worker Job ``name`` stands, from the Job and its own pods (labelled
        ``vmmove.io/worker=<name>``; the label is checked here too, since not every API
        server applies a selector to a list and two disks' Jobs run at once).
        Raises :class:`DirectError` when the Job was deleted."""
        job = self.kube.get("batch/v1", "Job", name, d.namespace)
        if job is None:
            raise DirectError(f"{d.label}: worker Job {d.namespace}/{name} was deleted")
        status = job.get("status") or {}
        conditions = {c.get("type"): c for c in status.get("conditions") or []
                      if c.get("status") == "True"}
        attempts = int(status.get("succeeded") or 0) + int(status.get("failed") or 0)
        pods = self._pods(d, name)
        if "Complete" in conditions or status.get("succeeded"):
            return JobState(True, "", "", attempts, _pod_result(pods))
        if "Failed" in conditions:
            why = _pod_failure(pods) or conditions["Failed"].get("message") \
                or conditions["Failed"].get("reason") or "failed"
            return JobState(False, why, "", attempts, {})
        return JobState(False, "", _stuck(pods), attempts, {})

    def _pods(self, d: DirectDisk, name: str) -> list[dict[str, Any]]:
        pods = self.kube.list("v1", "Pod", d.namespace, label_selector=f"vmmove.io/worker={name}")
        return [p for p in pods
                if ((p.get("metadata") or {}).get("labels") or {}).get("vmmove.io/worker") == name]

    def _delete(self, api_version: str, kind: str, name: str, namespace: str) -> None:
        resource = self.kube.resource(api_version, kind)

        def call() -> Any:
            try:
                return resource.delete(name=name, namespace=namespace,
                                       body={"propagationPolicy": "Background"})
            except Exception as exc:  # the client's NotFoundError: only client modules
                if getattr(exc, "status", None) == 404:  # may import kubernetes
                    return None
                raise

        self.kube.retrying(f"delete {kind} {namespace}/{name}", call)
