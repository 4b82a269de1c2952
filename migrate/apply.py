"""Applying a wave to the cluster, then watching its disks import.

Order matters: Namespaces first (everything else lives in one), then Secrets (the
DataVolumes' S3 credentials, which the importer reads the moment the DataVolume
exists), then the VirtualMachines, whose ``dataVolumeTemplates`` make KubeVirt create
the DataVolumes and CDI import each disk.

Each object applied is a journal step, kind ``apply`` — item ``<vm key>`` for a VM,
``namespace:<name>`` and ``secret:<namespace>/<name>`` for the others — holding the
server's ``uid`` and ``resourceVersion`` and the sha256 of what was sent; a rerun applies
again (server-side apply makes that a no-op) and reports ``unchanged``.  A VM whose
journal says it was cut over (kind ``cutover`` done, and no later ``rollback``) is not
applied again: the cutover changed its run strategy on purpose.

Each disk's import is a step too, kind ``import``, item ``<vm key>/<disk target>``, with
the DataVolume's last phase, progress and, on failure, the importer's reason.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from migrate.clients.cluster import DATA_VOLUME, Kube, KubeError
from migrate.core.journal import DONE, FAILED, Journal
from migrate.core.progress import Subscriber
from migrate.core.records import KIND_APPLY, KIND_IMPORT, KIND_CUTOVER, KIND_ROLLBACK


SUCCEEDED = "Succeeded"
FAILED_PHASE = "Failed"
#: Phases where CDI waits for something outside the import itself (a consumer pod).
WAITING_PHASES = {"WaitForFirstConsumer", "PendingPopulation"}
#: Running-condition reasons that are not failures.
BENIGN_REASONS = {"", "Pending", "Completed", "Pod is running", "Running", "ContainerCreating",
                  "PodInitializing"}


@dataclass
class VmObjects:
    """What one VM brings to the cluster: its VirtualMachine and the Secrets it needs."""

    key: str  # VM.key: the journal item
    label: str  # how messages name it (source name)
    virtual_machine: dict[str, Any]
    secrets: list[dict[str, Any]] = field(default_factory=list)
    imports: list[ImportItem] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.virtual_machine["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.virtual_machine["metadata"]["namespace"])


@dataclass
class ImportItem:
    """One disk whose data CDI puts into the DataVolume ``dv``."""

    item: str  # journal item <vm key>/<disk target>
    label: str  # vm/disk
    dv: str
    namespace: str


@dataclass
class Applied:
    """The outcome of applying one object."""

    kind: str
    namespace: str | None
    name: str
    result: str  # applied | unchanged | skipped | failed | dry-run
    item: str
    uid: str | None = None
    resource_version: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.result != "failed"

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.namespace + '/' if self.namespace else ''}{self.name}"


def digest(obj: dict[str, Any]) -> str:
    """sha256 of an object's canonical JSON: what the journal compares across runs."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def namespace_object(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "vmmove"}}}


def is_cut_over(journal: Journal, key: str) -> bool:
    """True when the journal says ``key`` was cut over and not rolled back since."""
    cut = journal.get(KIND_CUTOVER, key)
    if cut is None or cut.status != DONE:
        return False
    back = journal.get(KIND_ROLLBACK, key)
    return not (back is not None and back.status == DONE and
                (back.finished or 0) >= (cut.finished or 0))


def ordered(vms: Iterable[VmObjects]) -> list[tuple[str, dict[str, Any]]]:
    """(journal item, object) in apply order: Namespaces, Secrets, VirtualMachines."""
    vms = list(vms)
    out: list[tuple[str, dict[str, Any]]] = []
    for ns in sorted({v.namespace for v in vms}):
        out.append((f"namespace:{ns}", namespace_object(ns)))
    seen: set[str] = set()
    for v in vms:
        for secret in v.secrets:
            meta = secret["metadata"]
            item = f"secret:{meta.get('namespace', v.namespace)}/{meta['name']}"
            if item not in seen:
                seen.add(item)
                out.append((item, secret))
    for v in vms:
        out.append((v.key, v.virtual_machine))
    return out


def apply_objects(
    kube: Kube | None,
    vms: Iterable[VmObjects],
    journal: Journal | None,
    *,
    dry_run: str | None = None,
    force: bool = False,
    on_applied: Callable[[Applied], None] | None = None,
) -> list[Applied]:
    """Apply every object of ``vms`` in order, journalling each (not in a dry run).

    ``dry_run``: None (apply), ``"client"`` (nothing sent: report what would be applied)
    or ``"server"`` (the server checks and answers, stores nothing).  Stops at the first
    failure — a VM must not exist without its namespace or its Secrets — and returns the
    results so far, the last one failed.
    """
    vms = list(vms)
    labels = {v.key: v.label for v in vms}
    results: list[Applied] = []
    for item, obj in ordered(vms):
        meta = obj["metadata"]
        base = Applied(obj["kind"], meta.get("namespace"), meta["name"], "", item)
        if journal is not None and item in labels and is_cut_over(journal, item):
            base.result = "skipped"
            base.error = "cut over: not applied again (vmmove rollback first)"
        elif dry_run == "client":
            base.result = "dry-run"
        else:
            assert kube is not None
            base = _apply_one(kube, item, obj, journal, dry_run == "server", force, base)
        results.append(base)
        if on_applied:
            on_applied(base)
        if not base.ok:
            break
    return results


def _apply_one(kube: Kube, item: str, obj: dict[str, Any], journal: Journal | None,
               server_dry_run: bool, force: bool, result: Applied) -> Applied:
    sent = digest(obj)
    before = journal.get(KIND_APPLY, item) if journal is not None and not server_dry_run \
        else None
    if journal is not None and not server_dry_run:
        journal.start(KIND_APPLY, item, object_kind=result.kind, name=result.name,
                      namespace=result.namespace)
    try:
        answer = kube.apply(obj, dry_run=server_dry_run, force=force)
    except KubeError as exc:
        result.result, result.error = "failed", str(exc)
        if journal is not None and not server_dry_run:
            journal.fail(KIND_APPLY, item, str(exc))
        return result
    meta = answer.get("metadata") or {}
    result.uid = meta.get("uid")
    result.resource_version = meta.get("resourceVersion")
    if server_dry_run:
        result.result = "dry-run"
        return result
    unchanged = before is not None and before.status == DONE and \
        before.resource_version == result.resource_version and \
        before.uid == result.uid
    result.result = "unchanged" if unchanged else "applied"
    assert journal is not None
    journal.done(KIND_APPLY, item, checksum=sent, uid=result.uid,
                 resourceVersion=result.resource_version, result=result.result,
                 generation=meta.get("generation"))
    return result


# -- watching the imports ---------------------------------------------------------------------


@dataclass
class ImportState:
    """Where one DataVolume stands, as its status says."""

    item: ImportItem
    phase: str | None = None
    progress: float | None = None  # percent
    restarts: int = 0
    reason: str | None = None  # failure: the importer's reason and message
    outcome: str | None = None  # None (in progress) | imported | failed | waiting | timeout
    started: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> bool:
        return self.outcome is not None


def _percent(text: Any) -> float | None:
    try:
        return float(str(text).strip().rstrip("%"))
    except (TypeError, ValueError):
        return None  # "N/A" before the importer reports


def _running_condition(status: dict[str, Any]) -> dict[str, Any]:
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Running":
            return cond
    return {}


def failure_reason(status: dict[str, Any]) -> str:
    """The importer's reason for a failed import, from the Running (or Ready) condition."""
    conds = status.get("conditions") or []
    running = _running_condition(status)
    pick = running if running.get("reason") not in BENIGN_REASONS or running.get("message") \
        else next((c for c in conds if c.get("status") == "False" and c.get("message")), running)
    reason = pick.get("reason") or "unknown reason"
    message = pick.get("message") or ""
    return f"{reason}: {message}" if message else str(reason)


def classify(state: ImportState, dv: dict[str, Any], max_restarts: int) -> None:
    """Update ``state`` from a DataVolume object."""
    status = dv.get("status") or {}
    state.phase = status.get("phase")
    state.progress = _percent(status.get("progress")) if status.get("progress") else \
        state.progress
    state.restarts = int(status.get("restartCount") or 0)
    running = _running_condition(status)
    if state.phase == SUCCEEDED:
        state.outcome, state.progress, state.reason = "imported", 100.0, None
    elif state.phase == FAILED_PHASE:
        state.outcome, state.reason = "failed", failure_reason(status)
    elif running.get("status") == "False" and running.get("reason") not in BENIGN_REASONS \
            and state.restarts >= max_restarts:
        state.outcome = "failed"
        state.reason = f"{failure_reason(status)} (importer restarted {state.restarts} times)"
    elif state.phase in WAITING_PHASES:
        state.outcome = "waiting"
        state.reason = (f"{state.phase}: the import starts when the VM first runs (storage "
                        "class binds on first consumer)")


def watch_imports(
    kube: Kube,
    items: list[ImportItem],
    journal: Journal | None,
    *,
    timeout: float = 3600.0,
    max_restarts: int = 3,
    poll: float = 2.0,
    progress: Subscriber | None = None,
) -> list[ImportState]:
    """Follow every DataVolume until it succeeds, fails, waits for a consumer or time is up.

    List, then watch (events move the bars at once); a quiet or broken watch just leads
    to the next list, so nothing is missed.  Each outcome is journalled (kind ``import``).
    ``progress`` (closed here) hears each DataVolume queued (100 %), its progress in
    percent with its CDI phase as the note, and its outcome (the :class:`ImportState`).
    """
    progress = progress or Subscriber()
    reported: dict[tuple[str, str], float | None] = {}

    def report(state: ImportState) -> None:
        key = (state.item.namespace, state.item.dv)
        if key not in reported:
            progress.on_queued(state.item, 100.0, 0)
            reported[key] = 0.0
        if state.done:
            progress.on_done(state.item, state)
            return
        amount = None
        if state.progress is not None:
            amount = state.progress - (reported[key] or 0.0)
            reported[key] = state.progress
        progress.on_progress(state.item, amount, state.phase)

    states = {(i.namespace, i.dv): ImportState(i) for i in items}
    deadline = time.monotonic() + timeout
    api_version, kind = DATA_VOLUME
    if journal is not None:
        for s in states.values():
            step = journal.get(KIND_IMPORT, s.item.item)
            if step is None or step.status != DONE:
                journal.start(KIND_IMPORT, s.item.item, dv=s.item.dv,
                              namespace=s.item.namespace)

    def see(dv: dict[str, Any]) -> None:
        meta = dv.get("metadata") or {}
        state = states.get((meta.get("namespace"), meta.get("name")))
        if state is None or state.done:
            return
        classify(state, dv, max_restarts)
        report(state)
        if state.done:
            _record(journal, state)

    try:
        while True:
            pending = [s for s in states.values() if not s.done]
            if not pending:
                break
            if time.monotonic() >= deadline:
                for s in pending:
                    s.outcome = "timeout"
                    s.reason = (f"still {s.phase or 'not created'} after {timeout:.0f}s "
                                "(rerun vmmove apply to keep watching)")
                    report(s)
                    _record(journal, s)
                break
            namespaces = sorted({s.item.namespace for s in pending})
            for ns in namespaces:
                for dv in kube.list(api_version, kind, ns):
                    see(dv)
            pending = [s for s in states.values() if not s.done]
            if not pending:
                break
            ns = pending[0].item.namespace
            quiet = min(poll, max(0.1, deadline - time.monotonic()))
            for event in kube.watch(api_version, kind, ns, read_timeout=quiet,
                                    timeout_seconds=max(1, int(quiet * 5))):
                if event["type"] in ("ADDED", "MODIFIED"):
                    see(event["object"])
                if all(s.done for s in states.values()) or time.monotonic() >= deadline:
                    break
    finally:
        progress.close()
    return list(states.values())


def _record(journal: Journal | None, state: ImportState) -> None:
    if journal is None:
        return
    item = state.item
    data = {"dv": item.dv, "namespace": item.namespace, "phase": state.phase,
            "progress": state.progress, "restartCount": state.restarts,
            "outcome": state.outcome}
    if state.outcome == "imported":
        journal.done(KIND_IMPORT, item.item, **data)
    elif state.outcome == "failed":
        journal.fail(KIND_IMPORT, item.item,
                     f"{item.label}: DataVolume {item.namespace}/{item.dv} import failed: "
                     f"{state.reason}", **data)
    else:  # waiting / timeout: not done, not failed; the next run keeps watching
        journal.update(KIND_IMPORT, item.item, **data, note=state.reason)


def import_failed(journal: Journal, item: str) -> bool:
    step = journal.get(KIND_IMPORT, item)
    return step is not None and step.status == FAILED
