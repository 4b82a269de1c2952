"""A cluster for plan/apply tests: kmock taught server-side apply, KubeVirt's and CDI's parts.

Builds on :mod:`tests.kube_support` (kmock's emulator on loopback, a real kubeconfig, the
real ``kubernetes`` client).  What kmock 0.8 lacks for ``vmmove apply`` is configured here,
in the mock server, never by patching the client:

* server-side apply: ``PATCH`` with ``Content-Type: application/apply-patch+yaml`` creates
  the object when absent and merges it otherwise, keeps ``resourceVersion`` when nothing
  changed (so a rerun can be seen to change nothing), honours ``?dryRun=All`` and refuses
  a request without ``fieldManager`` (400), as kube-apiserver does;
* ``/api/v1/namespaces/NAME`` (kmock reads it as a namespace with no resource);
* list answers with ``kind``/``apiVersion`` (the dynamic client needs them);
* faults: :meth:`ApplyEmulator.inject` answers the next matching requests with a status
  (409 conflict, 500, …) before the normal handling, for retry tests.

:class:`Cluster` is a :class:`~tests.kube_support.KubeApi` serving that emulator, with the
core, KubeVirt and CDI resources declared (or not: ``kubevirt=False``/``cdi=False`` for the
"CRDs missing" tests).  :class:`Controllers` plays virt-controller (a DataVolume for each
``dataVolumeTemplates`` entry of an applied VirtualMachine) and CDI's importer: each
DataVolume goes ImportScheduled → ImportInProgress (progress %) → Succeeded, or fails as
scripted (:attr:`Controllers.failures`) with the importer's reason on the Running
condition and a growing ``restartCount``, each change sent to watchers as a real
``MODIFIED`` event.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import itertools
import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp.web
import kmock
import pytest
import yaml
from kmock._internal import dicts as kdicts

from migrate.demo import NodeVm, write_node  # the node files `vmmove demo` writes
from migrate.core.model import Inventory
from migrate.plan import load_plan
from migrate.core.serialize import save_inventory
from migrate.core.workdir import disk_item
from tests.kube_support import DV, KubeApi, Reconciler, _Emulator

NS = kmock.resource("", "v1", "namespaces")
SECRET = kmock.resource("", "v1", "secrets")
VMR = kmock.resource("kubevirt.io", "v1", "virtualmachines")
APPLY = "application/apply-patch+yaml"
_COUNTER = itertools.count(100)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Fault:
    """Answer the next ``times`` requests matching ``method`` and ``path`` with ``status``."""

    method: str
    path: str  # regular expression, searched in the request path
    status: int
    reason: str
    message: str
    times: int = 1
    hits: int = 0


def _status(status: int, reason: str, message: str) -> aiohttp.web.Response:
    return aiohttp.web.json_response({
        "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
        "code": status, "reason": reason, "message": message}, status=status)


class ApplyEmulator(_Emulator):
    """kmock's emulator plus server-side apply, namespace paths, list kinds and faults."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.faults: list[Fault] = []
        self.applies: list[dict[str, Any]] = []  # every apply request: path, manager, dryRun

    def inject(self, method: str, path: str, status: int, reason: str = "",
               message: str = "", times: int = 1) -> Fault:
        fault = Fault(method.upper(), path, status, reason or {409: "Conflict"}.get(status, "Error"),
                      message or f"injected {status}", times)
        self.faults.append(fault)
        return fault

    def _fault(self, request: Any) -> Fault | None:
        for fault in self.faults:
            if fault.hits < fault.times and request.method == fault.method and \
                    re.search(fault.path, request.url.path):
                fault.hits += 1
                return fault
        return None

    async def _handle(self, request: Any) -> aiohttp.web.StreamResponse:
        fault = self._fault(request)
        if fault is not None:
            return _status(fault.status, fault.reason, fault.message)
        ctype = (request.headers.get("Content-Type") or "").split(";")[0].strip()
        if request.method == "PATCH" and ctype == APPLY:
            return await self._apply(request)
        return await super()._handle(request)

    def _target(self, path: str) -> tuple[Any, str | None, str] | None:
        parts = path.strip("/").split("/")
        if parts[:3] == ["api", "v1", "namespaces"] and len(parts) == 4:
            return NS, None, parts[3]
        if parts[0] == "api" and len(parts) == 6 and parts[2] == "namespaces":
            return kmock.resource("", parts[1], parts[4]), parts[3], parts[5]
        if parts[0] == "apis" and len(parts) == 7 and parts[3] == "namespaces":
            return kmock.resource(parts[1], parts[2], parts[5]), parts[4], parts[6]
        if parts[0] == "apis" and len(parts) == 5:
            return kmock.resource(parts[1], parts[2], parts[3]), None, parts[4]
        return None

    async def _apply(self, request: Any) -> aiohttp.web.StreamResponse:
        target = self._target(request.url.path)
        if target is None or target[0] not in self._get_resources():
            return _status(404, "NotFound", f"the server could not find the requested "
                                            f"resource ({request.url.path})")
        resource, namespace, name = target
        manager = request.params.get("fieldManager")
        dry = request.params.get("dryRun") == "All"
        self.applies.append({"path": request.url.path, "manager": manager, "dryRun": dry,
                             "force": request.params.get("force")})
        if not manager:
            return _status(400, "BadRequest", "PATCH /apply: fieldManager is required for "
                                              "apply requests")
        body = yaml.safe_load(request.text) or {}
        meta = body.get("metadata") or {}
        if meta.get("name") not in (None, name):
            return _status(400, "BadRequest", "the name of the object does not match the URL")
        async with self._lock:
            key = (resource, namespace, name)
            existing = self._objects[key] if key in self._objects else None
            if existing is None or existing.deleted:
                obj = json.loads(json.dumps(body))
                obj.setdefault("metadata", {}).update({
                    "name": name, "uid": str(uuid.uuid4()),
                    "resourceVersion": str(next(_COUNTER)), "generation": 1,
                    "creationTimestamp": _now(),
                    "managedFields": [{"manager": manager, "operation": "Apply"}]})
                if namespace:
                    obj["metadata"]["namespace"] = namespace
                if not dry:
                    self._objects[key] = obj
                    await self._buses[resource].put({"type": "ADDED", "object": obj})
                return aiohttp.web.json_response(obj, status=201)
            old = existing.raw
            merged = kdicts.merge_patch_dict(old, body)
            merged = json.loads(json.dumps(merged))
            if merged == old:
                return aiohttp.web.json_response(old, status=200)  # nothing changed
            merged["metadata"]["resourceVersion"] = str(next(_COUNTER))
            if merged.get("spec") != old.get("spec"):
                merged["metadata"]["generation"] = int(old["metadata"].get("generation", 1)) + 1
            if not dry:
                existing.history.append(kmock.ObjectVersion(merged))
                await self._buses[resource].put({"type": "MODIFIED", "object": merged})
            return aiohttp.web.json_response(merged, status=200)

    async def _serve_list(self, request: Any) -> Any:
        payload = await super()._serve_list(request)
        info = self._resources[request.resource] if request.resource in self._resources \
            else None
        kind = (info.kind if info is not None and info.kind else "Object")
        group, version = request.resource.group, request.resource.version
        return {"apiVersion": f"{group}/{version}" if group else version,
                "kind": f"{kind}List", **payload}


class Cluster(KubeApi):
    """A :class:`KubeApi` serving :class:`ApplyEmulator`, with the resources vmmove uses."""

    def __init__(self, folder: Path, namespace: str = "vms", context: str = "test",
                 kubevirt: bool = True, cdi: bool = True) -> None:
        super().__init__(folder, namespace, context)
        self.declare(NS, "Namespace", namespaced=False)
        self.declare(SECRET, "Secret")
        if kubevirt:
            self.declare(VMR, "VirtualMachine")
        if cdi:
            self.declare(DV, "DataVolume")

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with ApplyEmulator() as emulator, kmock.Server(emulator) as server:
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def inject(self, method: str, path: str, status: int, reason: str = "",
               message: str = "", times: int = 1) -> Fault:
        return self.call(lambda: self.emulator.inject(method, path, status, reason, message,
                                                      times))

    def acall(self, fn: Callable[[], Any]) -> Any:
        """Run the coroutine function ``fn`` on the server's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(fn(), self.loop).result(10)

    def status_patch(self, resource: Any, namespace: str | None, name: str,
                     changes: dict[str, Any]) -> None:
        """Change an object as a controller would, and tell the watchers (MODIFIED)."""
        emulator = self.emulator

        async def run() -> None:
            async with emulator._lock:
                obj = emulator.objects[resource, namespace, name]
                obj.patch(changes)
                obj.patch({"metadata": {"resourceVersion": str(next(_COUNTER))}})
                await emulator._buses[resource].put({"type": "MODIFIED", "object": obj.raw})

        self.acall(run)

    def create(self, resource: Any, namespace: str | None, body: dict[str, Any]) -> None:
        """Create an object as a controller would (ADDED event)."""
        emulator = self.emulator
        name = body["metadata"]["name"]

        async def run() -> None:
            async with emulator._lock:
                emulator.objects[resource, namespace, name] = body
                await emulator._buses[resource].put({"type": "ADDED", "object": body})

        self.acall(run)

    @property
    def applies(self) -> list[dict[str, Any]]:
        return self.call(lambda: list(self.emulator.applies))

    def wipe(self) -> None:
        """Forget every object (a fresh cluster at the same address)."""

        def run() -> None:
            for key in list(self.emulator.objects):
                del self.emulator.objects[key]

        self.call(run)


@dataclass
class Script:
    """How one DataVolume's import goes: steps of progress, then success or failure."""

    steps: int = 4
    fail_reason: str | None = None  # e.g. "Error"
    fail_message: str | None = None
    fail_phase: bool = False  # True: phase Failed; False: restarts climb (CDI's usual way)


@dataclass
class Controllers(Reconciler):
    """virt-controller and CDI's importer for the DataVolumes of applied VirtualMachines."""

    cluster: Cluster
    interval: float = 0.05
    failures: dict[str, Script] = field(default_factory=dict)  # DataVolume name → script
    hold: set[str] = field(default_factory=set)  # DataVolume names left Pending
    created: list[str] = field(default_factory=list)
    phases: dict[str, list[str]] = field(default_factory=dict)  # every phase each DV went through

    def __post_init__(self) -> None:
        self._ticks: dict[str, int] = {}
        self.start("controllers")

    def _reconcile(self) -> None:
        for (ns, name), vm in self.cluster.objects(VMR).items():
            for template in (vm.get("spec") or {}).get("dataVolumeTemplates") or []:
                dv_name = template["metadata"]["name"]
                if self.cluster.get(DV, ns, dv_name) is None:
                    body = {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
                            "metadata": {**template.get("metadata", {}), "namespace": ns,
                                         "uid": str(uuid.uuid4()),
                                         "ownerReferences": [{
                                             "apiVersion": "kubevirt.io/v1",
                                             "kind": "VirtualMachine", "name": name,
                                             "uid": vm["metadata"].get("uid", "")}]},
                            "spec": template.get("spec", {}),
                            "status": {"phase": "Pending"}}
                    self.cluster.create(DV, ns, body)
                    self.created.append(f"{ns}/{dv_name}")
                    self.phases[dv_name] = ["Pending"]
        for (ns, name), dv in self.cluster.objects(DV).items():
            if "upload" in ((dv.get("spec") or {}).get("source") or {}) or name in self.hold:
                continue
            self._advance(ns, name, dv)

    def _advance(self, ns: str, name: str, dv: dict[str, Any]) -> None:
        status = dv.get("status") or {}
        phase = status.get("phase")
        script = self.failures.get(name, Script())
        tick = self._ticks.get(name, 0)
        self._ticks[name] = tick + 1
        change: dict[str, Any] | None = None
        if phase in (None, "Pending"):
            change = {"phase": "ImportScheduled", "progress": "N/A", "conditions": [
                {"type": "Bound", "status": "True", "reason": "Bound"},
                {"type": "Running", "status": "False", "reason": "Pending"}]}
        elif phase == "ImportScheduled":
            change = {"phase": "ImportInProgress", "progress": "0.00%", "conditions": [
                {"type": "Bound", "status": "True", "reason": "Bound"},
                {"type": "Running", "status": "True", "reason": "Pod is running"}]}
        elif phase == "ImportInProgress":
            done = float(str(status.get("progress", "0")).rstrip("%") or 0)
            if script.fail_reason and done >= 50.0:
                restarts = int(status.get("restartCount") or 0) + 1
                running = {"type": "Running", "status": "False", "reason": script.fail_reason,
                           "message": script.fail_message or "importer failed"}
                change = {"restartCount": restarts, "conditions": [
                    {"type": "Bound", "status": "True", "reason": "Bound"}, running]}
                if script.fail_phase:
                    change["phase"] = "Failed"
                elif restarts > 5:
                    return
            elif done >= 100.0:
                change = {"phase": "Succeeded", "progress": "100.0%", "conditions": [
                    {"type": "Bound", "status": "True", "reason": "Bound"},
                    {"type": "Ready", "status": "True"},
                    {"type": "Running", "status": "False", "reason": "Completed"}]}
            else:
                change = {"progress": f"{min(100.0, done + 100.0 / script.steps):.2f}%"}
        if change is not None:
            self.cluster.status_patch(DV, ns, name, {"status": change})
            if "phase" in change:
                self.phases.setdefault(name, []).append(change["phase"])


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A fresh cluster API (core, KubeVirt and CDI resources) with a kubeconfig."""
    api = Cluster(tmp_path)
    try:
        yield api
    finally:
        api.stop()


@pytest.fixture
def controllers(cluster: Cluster) -> Iterator[Controllers]:
    """virt-controller and CDI playing on ``cluster``."""
    sim = Controllers(cluster)
    try:
        yield sim
    finally:
        sim.stop()


# -- a libvirt test-driver node whose disks are real images -------------------------------------

# The node file and its domains are written as `vmmove demo` writes them (migrate.demo).


def make_images(folder: Path, vms: dict[str, list[tuple[str, str, int]]]) -> list[NodeVm]:
    """Real images (qemu-img create + qemu-io data) for ``{vm: [(target, fmt, MiB)]}``."""
    from tests.conftest import qemu_img, qemu_io

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for n, (name, disks) in enumerate(vms.items()):
        made = []
        for i, (target, fmt, mib) in enumerate(disks):
            path = folder / f"{name}-{target}.{fmt}"
            qemu_img("create", "-q", "-f", fmt, str(path), f"{mib}M")
            # data at the start, the middle and the end: converted images must carry all of it
            for offset in (0, mib // 2, mib - 1):
                qemu_io(str(path), f"write -P 0x{(0x11 * (n + 1) + i) & 0xff:02x} {offset}M 512k",
                        fmt)
            made.append((target, str(path), fmt))
        out.append(NodeVm(name, made, f"52:54:00:aa:{n:02x}:01"))
    return out


# -- a plan whose disks the journal records as converted and uploaded ----------------------------

SECRET_NAME = "vmmove-s3-test"


def staged(tmp: Path, inventory: Inventory, waves: list[list[str]] | None = None) -> Path:
    """A plan whose disks the journal records as converted and uploaded to S3, as
    ``vmmove upload`` records them (see migrate/core/workdir.py)."""
    save_inventory(inventory, tmp / "inventory.yaml")
    waves = waves or [["web-01", "legacy-i440fx"]]
    plan_file = tmp / "plan.yaml"
    plan_file.write_text(yaml.safe_dump({
        "apiVersion": "vmmove.io/v1alpha1", "kind": "Plan", "inventory": "inventory.yaml",
        "namespace": "vms", "networks": {"*": "pod"},
        "transfer": {"s3": "s3://images/vms", "endpointUrl": "http://127.0.0.1:9000"},
        "waves": [{"vms": w} for w in waves]}, sort_keys=False))
    plan = load_plan(plan_file)
    plan.workdir.mkdir()
    secret_file = plan.workdir / f"{SECRET_NAME}.secret.yaml"
    secret_file.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET_NAME},
        "type": "Opaque", "data": {"accessKeyId": base64.b64encode(b"id").decode(),
                                   "secretKey": base64.b64encode(b"key").decode()}}))
    with plan.journal() as journal:
        for p in plan.vms:
            for d in p.vm.disks:
                if d.device != "disk":
                    continue
                item = disk_item(p.vm, d)
                name = f"{p.name}-{d.target}.qcow2"
                journal.start("convert", item)
                journal.done("convert", item, checksum="sha256:" + "0" * 64,
                             output=str(plan.workdir / name), format="qcow2",
                             virtual_size=d.virtual_size)
                journal.start("upload", item)
                journal.done("upload", item, bytes=1024, checksum="sha256:" + "0" * 64,
                             backend="s3", url=f"http://127.0.0.1:9000/images/vms/{name}",
                             secret=SECRET_NAME, secret_file=str(secret_file), size=1024,
                             sent=1024, key=f"vms/{name}")
    return plan_file
