"""The fast tier: the pipeline's state machines with in-memory fakes, no libvirtd, no cluster.

The cutover itinerary's resume, failure and parallel rules (:class:`Cutover`) and the wave
runner's resume and skip (:func:`run_stages`), each against a real journal (SQLite in a
temporary folder) and fakes of the hypervisor (a domain that stops and starts) and of the
cluster (a VirtualMachine whose VMI runs once its runStrategy is Always), injected through
the constructors.  The real-component tests (test_cutover_*.py) cover the same paths
against libvirt and a Kubernetes API; these run in well under five seconds.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from migrate.core.errors import VmmoveError
from migrate.core.journal import Journal
from migrate.core.mapping import Maps
from migrate.core.progress import Subscriber
from migrate.core.model import VM, Inventory, PowerState, Source, SourceKind
from migrate.core.records import (
    KIND_APPLY,
    KIND_BOOT_TEST,
    KIND_CUTOVER,
    KIND_STAGE,
    CutoverRecord,
)
from migrate.pipeline.cutover import (
    Cutover,
    CutoverError,
    CutoverOptions,
    SourceStopped,
    step_item,
)
from migrate.pipeline.itinerary import CUTOVER, STAGES, WAVE
from migrate.pipeline.wave import Stage, resume_point, run_stages, stage_item
from migrate.plan import (
    ConvertSettings,
    Defaults,
    Plan,
    PlannedVM,
    TransferSettings,
    VmEntry,
    Wave,
)

# -- fakes ---------------------------------------------------------------------------------------


class FakeHost:
    """The hypervisor: domains by VM name, each running or shut off."""

    def __init__(self, names: list[str]) -> None:
        self.running = {n: True for n in names}
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def source(self, p: PlannedVM) -> FakeDomain:
        return FakeDomain(self, p.vm.name)


class FakeDomain:
    def __init__(self, host: FakeHost, name: str) -> None:
        self.host, self.name = host, name

    def __enter__(self) -> FakeDomain:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    @property
    def running(self) -> bool:
        return self.host.running[self.name]

    @property
    def state_name(self) -> str:
        return "running" if self.running else "shut off"

    def stop(self, timeout: float, force: bool) -> dict[str, Any]:
        with self.host.lock:
            self.host.calls.append((self.name, "stop"))
        before = self.state_name
        if not self.running:
            return {"before": before, "how": "already off", "seconds": 0.0}
        self.host.running[self.name] = False
        return {"before": before, "how": "shutdown", "seconds": 0.01}

    def start(self) -> str:
        self.host.calls.append((self.name, "start"))
        self.host.running[self.name] = True
        return "started"


class _Answer:
    def __init__(self, obj: dict[str, Any]) -> None:
        self.obj = obj

    def to_dict(self) -> dict[str, Any]:
        return self.obj


class FakeCluster:
    """The Kubernetes API as the cutover uses it: VirtualMachines whose VMI runs once the
    runStrategy is Always (``broken``: a VMI that fails instead)."""

    where = "fake cluster"
    kubeconfig = "/dev/null"

    class options:  # noqa: N801 - the attribute Kube has
        request_timeout = 1

    def __init__(self, names: list[str]) -> None:
        self.vms = {n: {"metadata": {"name": n, "resourceVersion": "1"},
                        "spec": {"runStrategy": "Halted"}} for n in names}
        self.broken: set[str] = set()

    def get(self, api_version: str, kind: str, name: str,
            namespace: str | None = None) -> dict[str, Any] | None:
        vm = self.vms.get(name)
        if kind == "VirtualMachine":
            return vm
        if vm is None or vm["spec"]["runStrategy"] != "Always":
            return None
        phase = "Failed" if name in self.broken else "Running"
        return {"metadata": {"name": name}, "status": {"phase": phase, "nodeName": "n1"}}

    def retrying(self, what: str, call: Any) -> Any:
        return call()

    def resource(self, api_version: str, kind: str) -> Any:
        cluster = self

        class Resource:
            def patch(self, body: dict[str, Any], name: str, **_: Any) -> _Answer:
                cluster.vms[name]["spec"].update(body["spec"])
                return _Answer(cluster.vms[name])

        return Resource()

    def watch(self, *args: Any, **kwargs: Any) -> Any:
        return iter(())


class Recorder(Subscriber):
    """The progress protocol's calls, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []

    def on_queued(self, item: Any, total: float, already: float = 0) -> None:
        self.calls.append(("queued", item.label, total))

    def on_progress(self, item: Any, amount: float | None, note: str | None = None) -> None:
        self.calls.append(("progress", item.label, note))

    def on_done(self, item: Any, result: Any) -> None:
        self.calls.append(("done", item.label, result.status))


# -- a plan in memory ----------------------------------------------------------------------------


def make_plan(tmp_path: Path, names: list[str]) -> Plan:
    vms = [VM(name=n, source=Source(SourceKind.LIBVIRT, "test:///default"),
              uuid=f"00000000-0000-0000-0000-00000000000{i}", memory=1 << 30, arch="x86_64",
              machine="pc-q35-7.2", hypervisor="kvm", os_type="hvm",
              power_state=PowerState.RUNNING) for i, n in enumerate(names, 1)]
    wave = Wave(1, "one", [VmEntry(n) for n in names])
    plan = Plan(path=tmp_path / "plan.yaml", inventory_path=tmp_path / "inventory.yaml",
                inventory=Inventory(vms=vms), workdir=tmp_path / "work", namespace="vms",
                maps=Maps(), transfer=TransferSettings(s3="s3://b/p"),
                convert=ConvertSettings(), defaults=Defaults(), waves=[wave])
    plan.vms = [PlannedVM(vm, entry, 1, vm.name, "vms") for vm, entry in zip(vms, wave.entries)]
    return plan


class World:
    def __init__(self, tmp_path: Path, names: list[str]) -> None:
        self.plan = make_plan(tmp_path, names)
        self.host = FakeHost(names)
        self.cluster = FakeCluster(names)
        self.journal = Journal(tmp_path / "journal.sqlite")
        self.synced: list[SourceStopped] = []
        self.sync_fails: set[str] = set()
        self.log: list[str] = []
        self.progress = Recorder()
        self.skip_boot_test = False
        for p in self.plan.vms:  # staged: applied, no disks to import
            self.journal.start(KIND_APPLY, p.key)
            self.journal.done(KIND_APPLY, p.key, result="applied")

    def sync(self, p: PlannedVM, journal: Journal, stopped: SourceStopped) -> dict[str, Any]:
        assert not self.host.running[p.vm.name], "the final sync ran on a running source"
        if p.vm.name in self.sync_fails:
            raise CutoverError(f"{p.vm.name}: final sync: disk vda differs")
        self.synced.append(stopped)
        return {"mode": "verify", "disks": {}, "bytes": 0}

    def cutover(self) -> Cutover:
        return Cutover(self.plan, self.cluster, self.journal, self.sync,  # type: ignore[arg-type]
                       CutoverOptions(verify_timeout=2, skip_boot_test=self.skip_boot_test),
                       self.log.append,
                       source=self.host.source,  # type: ignore[arg-type]
                       progress=self.progress)

    def run(self, jobs: int = 1, names: list[str] | None = None) -> dict[str, Any]:
        chosen = [p for p in self.plan.vms if names is None or p.vm.name in names]
        return {r.vm: r for r in self.cutover().run_selection(chosen, 1, jobs, None)}

    def step(self, name: str, step: str) -> CutoverRecord | None:
        key = next(p.key for p in self.plan.vms if p.vm.name == name)
        found = self.journal.get(KIND_CUTOVER, step_item(key, step))
        assert found is None or isinstance(found, CutoverRecord)
        return found


@pytest.fixture
def world(tmp_path: Path) -> Any:
    made: list[World] = []

    def make(names: list[str]) -> World:
        made.append(World(tmp_path, names))
        return made[-1]

    yield make
    for w in made:
        w.journal.close()


# -- the cutover itinerary ------------------------------------------------------------------------


def test_itineraries_are_declared_once_in_order() -> None:
    assert WAVE.names == STAGES == ("convert", "inspect", "guest", "upload", "manifests",
                                    "apply")
    assert CUTOVER.phase("preflight").checks == ("concerns", "boot-test", "applied",
                                                 "imported", "target", "source")
    assert CUTOVER.names == ("preflight", "stop", "sync", "start", "verify", "done")
    assert [p.name for p in CUTOVER.after("preflight")] == list(CUTOVER.names[1:])
    assert [p.source_stopped for p in CUTOVER.phases] == [False, False, True, True, True,
                                                           True]


def test_cutover_runs_every_phase_and_records_the_downtime(world: Any) -> None:
    w = world(["web"])
    results = w.run()
    r = results["web"]
    assert r.status == "done", r.error
    assert r.steps == {name: "done" for name in CUTOVER.names}
    for name in CUTOVER.names:
        assert w.step("web", name).status == "done"
    assert w.cluster.vms["web"]["spec"]["runStrategy"] == "Always"
    assert w.host.running["web"] is False
    # the sync was given the stop step's fact, not a forged power state
    stop = w.step("web", "stop")
    assert w.synced == [SourceStopped(w.plan.vms[0].key, "shutdown", stop.started)]
    top = w.journal.get(KIND_CUTOVER, w.plan.vms[0].key)
    assert isinstance(top, CutoverRecord)
    assert top.status == "done" and top.sync_mode == "verify"
    assert top.downtime == pytest.approx(w.step("web", "verify").finished - stop.started,
                                         abs=1e-3)
    # the cutover reports through the one progress protocol: a unit per phase
    assert w.progress.calls == [("queued", "web", 5)] + [
        ("progress", "web", name) for name in CUTOVER.names[1:]] + [("done", "web", "done")]
    # a second run repeats nothing
    assert w.run()["web"].status == "done before"
    assert w.host.calls == [("web", "stop")]


def test_a_failed_sync_resumes_at_the_sync_without_stopping_again(world: Any) -> None:
    w = world(["db"])
    w.sync_fails.add("db")
    r = w.run()["db"]
    assert r.status == "failed"
    assert "final sync: disk vda differs" in r.error
    assert "source is STOPPED" in r.error  # the next action says the VM is down
    assert w.step("db", "stop").status == "done"
    assert w.step("db", "sync").status == "failed"
    assert w.step("db", "start") is None
    assert w.cluster.vms["db"]["spec"]["runStrategy"] == "Halted"

    w.sync_fails.clear()
    r = w.run()["db"]
    assert r.status == "done", r.error
    assert r.steps["stop"] == "skipped" and r.steps["sync"] == "done"
    assert w.host.calls == [("db", "stop")]  # stopped once


def test_a_source_started_again_after_the_sync_is_an_error(world: Any) -> None:
    w = world(["app"])
    w.cluster.broken.add("app")  # the VMI fails: verify fails after the sync
    r = w.run()["app"]
    assert r.status == "failed" and w.step("app", "sync").status == "done"
    w.host.running["app"] = True  # someone started the source by hand
    w.cluster.broken.clear()
    r = w.run()["app"]
    assert r.status == "failed"
    assert "the source runs again" in r.error
    assert w.cluster.vms["app"]["spec"]["runStrategy"] == "Always"  # from the first run


def test_no_source_stops_unless_every_preflight_passes(world: Any) -> None:
    w = world(["a", "b", "c"])
    del w.cluster.vms["b"]  # b's VirtualMachine is not in the cluster
    results = w.run(jobs=3)
    assert results["b"].status == "failed"
    assert "is not in the cluster" in results["b"].error
    assert results["a"].status == results["c"].status == "not started"
    assert "vmmove cutover" in results["a"].next and results["a"].next.endswith("a c`")
    assert w.host.calls == [] and all(w.host.running.values())
    assert w.step("a", "preflight").status == "done" and w.step("a", "stop") is None


def test_a_failed_boot_test_stops_the_preflight_unless_skipped(world: Any) -> None:
    w = world(["a", "b"])
    key = {p.vm.name: p.key for p in w.plan.vms}
    w.journal.start(KIND_BOOT_TEST, key["a"], vm="a")
    w.journal.fail(KIND_BOOT_TEST, key["a"], "failed: no bootable device", verdict="failed")
    w.journal.start(KIND_BOOT_TEST, key["b"], vm="b")
    w.journal.done(KIND_BOOT_TEST, key["b"], verdict="booted", reason="login prompt")
    results = w.run(jobs=2)
    assert results["a"].status == "failed"
    assert "last boot test failed: failed: no bootable device" in results["a"].error
    assert "--skip-boot-test" in results["a"].error
    assert results["b"].status == "not started" and w.host.calls == []
    w.skip_boot_test = True
    results = w.run(jobs=2)
    assert results["a"].status == results["b"].status == "done"


def test_parallel_vms_keep_their_own_steps_and_failures(world: Any) -> None:
    w = world(["a", "b", "c", "d"])
    w.sync_fails.add("c")
    started = time.monotonic()
    results = w.run(jobs=4)
    assert time.monotonic() - started < 5
    assert [results[n].status for n in "abcd"] == ["done", "done", "failed", "done"]
    assert sorted(name for name, _ in w.host.calls) == ["a", "b", "c", "d"]
    assert w.step("c", "sync").status == "failed" and w.step("c", "start") is None
    for n in "abd":
        assert w.step(n, "done").status == "done"
    # order of the results is the order given, whatever finished first
    assert list(results) == ["a", "b", "c", "d"]


# -- the wave runner ----------------------------------------------------------------------------


def test_wave_runner_stops_at_a_failure_and_resumes_there(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, ["web"])
    ran: list[str] = []
    failing = {"manifests"}

    def stage(name: str) -> Stage:
        def run() -> str:
            ran.append(name)
            if name in failing:
                raise VmmoveError(f"{name}: broken")
            return f"{name}: ok"
        return Stage(name, run)

    results = run_stages(plan, 1, [stage(n) for n in STAGES])
    assert [(r.stage, r.status) for r in results] == [
        ("convert", "done"), ("inspect", "done"), ("guest", "done"), ("upload", "done"),
        ("manifests", "failed")]
    assert ran == ["convert", "inspect", "guest", "upload", "manifests"]
    with plan.journal() as journal:
        assert resume_point(journal, 1) == "manifests"
        failed = journal.get(KIND_STAGE, stage_item(1, "manifests"))
        assert failed.status == "failed" and failed.error == "manifests: broken"
        assert journal.get(KIND_STAGE, stage_item(1, "upload")).summary == "upload: ok"

    failing.clear()
    ran.clear()
    results = run_stages(plan, 1, [stage(n) for n in STAGES])
    assert [r.status for r in results] == ["done"] * len(STAGES)
    # every stage runs again: each one skips, from its own records, what is done
    assert ran == list(STAGES)
    with plan.journal() as journal:
        assert resume_point(journal, 1) is None
