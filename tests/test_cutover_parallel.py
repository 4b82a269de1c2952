"""A wave cut over in parallel (``vmmove cutover --jobs N``, ``vmmove rollback --jobs N``) on
real components: libvirt's test driver as the source host, real images, SeaweedFS, kmock with
CDI and KubeVirt played.  The journal's timestamps prove the VMs' windows overlap (or, with
``--jobs 1``, follow one another); a VM whose target never runs fails alone; the runbook's
window follows the ``--jobs`` it assumes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from migrate.plan import load_plan
from migrate.views.runbook import Estimate, schedule
from tests.conftest import qemu_io
from tests.guest_support import KubeVirt, kubevirt  # noqa: F401
from tests.plan_support import VMR, Cluster, Controllers, cluster, controllers  # noqa: F401
from tests.s3_support import SeaweedFS
from tests.test_migrate_e2e import scan_and_plan

pytestmark = pytest.mark.slow

WAVE = {"alpha": [("vda", "qcow2", 4)], "bravo": [("vda", "qcow2", 4)],
        "charlie": [("vda", "raw", 4)]}


def stage(cli: Any, tmp: Path, s3: SeaweedFS, bucket: str, cluster: Cluster) -> Path:
    plan_file = scan_and_plan(cli, tmp, s3, bucket, WAVE)
    staged = cli("migrate", str(plan_file), "--wave", "1", "--stage",
                 "--kubeconfig", str(cluster.kubeconfig))
    assert staged.exit_code == 0, staged.stderr
    return plan_file


def windows(plan: Any) -> dict[str, tuple[float, float, float]]:
    """Per VM name: (stop started, verify finished, downtime journalled)."""
    out = {}
    with plan.journal() as journal:
        for p in plan.wave(1):
            stop = journal.get("cutover", f"{p.key}/stop")
            verify = journal.get("cutover", f"{p.key}/verify")
            top = journal.get("cutover", p.key)
            assert stop and verify and top and top.status == "done", (p.vm.name, top)
            out[p.vm.name] = (stop.started, verify.finished, top.data["downtime"])
    return out


def test_wave_cut_over_three_at_once_then_one_after_another(
        cli: Any, tmp_path: Path, s3_server: SeaweedFS, s3_bucket: str,
        s3_env: dict[str, str], cluster: Cluster, controllers: Controllers,
        kubevirt: KubeVirt) -> None:
    plan_file = stage(cli, tmp_path, s3_server, s3_bucket, cluster)
    plan = load_plan(plan_file)
    kube = ["--kubeconfig", str(cluster.kubeconfig)]

    result = cli("cutover", str(plan_file), "--wave", "1", "--jobs", "3", *kube, "-o", "json")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["vm"] for r in rows] == list(WAVE)  # reported in plan order
    assert {r["status"] for r in rows} == {"done"}
    assert "cutting over 3 VM(s), 3 at once" in result.stderr
    # every progress line is one whole event: a time stamp, then the VM's name (or the
    # wave's one line); each VM's six steps are each reported once
    lines = result.stderr.splitlines()
    for line in lines:
        stamp, _, rest = line.partition(" ")
        assert len(stamp) == 8 and stamp.count(":") == 2, line
        assert rest.split(":")[0] in WAVE or rest.startswith("cutting over 3 VM(s)"), line
    for name in WAVE:
        for step in ("preflight", "stop", "sync", "start", "verify", "done"):
            assert sum(f" {name}: {step} done" in line for line in lines) == 1, (name, step)
    parallel = windows(plan)
    # the stop windows overlap: every source was stopped before the first target was verified
    assert max(s for s, _, _ in parallel.values()) < min(v for _, v, _ in parallel.values())
    for name, (stopped, verified, downtime) in parallel.items():
        # each VM its own downtime, from its own stop to its own verification
        assert downtime == pytest.approx(verified - stopped, abs=0.01), name
        assert next(r for r in rows if r["vm"] == name)["downtime"] == downtime
    for name in WAVE:
        p = plan.planned(name)
        assert cluster.get(kubevirt.vmi, "vms", p.name)["status"]["phase"] == "Running"
    window3 = max(v for _, v, _ in parallel.values()) - min(s for s, _, _ in parallel.values())

    # rollback, three at once: every target halted, every source (off before) left off
    back = cli("rollback", str(plan_file), "--wave", "1", "--jobs", "3", *kube, "-o", "json")
    assert back.exit_code == 0, back.stderr
    outcomes = json.loads(back.stdout)
    assert [r["vm"] for r in outcomes] == list(WAVE)
    assert {r["status"] for r in outcomes} == {"rolled back"}
    assert {r["targetAction"] for r in outcomes} == {"Halted"}
    assert all(cluster.get(kubevirt.vmi, "vms", plan.planned(n).name) is None for n in WAVE)

    # --jobs 1: one after another, in plan order, as before
    result = cli("cutover", str(plan_file), "--wave", "1", "--jobs", "1", *kube, "-o", "json")
    assert result.exit_code == 0, result.stderr
    assert "at once" not in result.stderr
    serial = windows(plan)
    ordered = [serial[name] for name in WAVE]
    for (_, verified, _), (next_stop, _, _) in zip(ordered, ordered[1:]):
        assert next_stop >= verified  # the next source stops after the last VM was verified
    window1 = ordered[-1][1] - ordered[0][0]
    print(f"wave of 3 (test driver, verify sync): --jobs 3 window {window3:.2f}s, "
          f"--jobs 1 window {window1:.2f}s")
    assert window3 < window1

    # the runbook plans for the --jobs it is given, and says how the window is computed
    book = tmp_path / "book"
    cli("runbook", str(plan_file), "--out", str(book), "--jobs", "3", ok=True)
    text = (book / "wave-1.md").read_text()
    assert f"vmmove cutover {plan_file} --wave 1 --jobs 3 --at HH:MM" in text
    assert "Wave window with `--jobs 3`" in text and "batch of 3" in text
    cli("runbook", str(plan_file), "--out", str(book), "--jobs", "1", ok=True)
    assert "Wave window with `--jobs 1`" in (book / "wave-1.md").read_text()


def test_one_target_never_runs_the_others_are_cut_over(
        cli: Any, tmp_path: Path, s3_server: SeaweedFS, s3_bucket: str,
        s3_env: dict[str, str], cluster: Cluster, controllers: Controllers,
        kubevirt: KubeVirt) -> None:
    plan_file = stage(cli, tmp_path, s3_server, s3_bucket, cluster)
    plan = load_plan(plan_file)
    base = ["cutover", str(plan_file), "--wave", "1", "--jobs", "3",
            "--kubeconfig", str(cluster.kubeconfig), "-o", "json"]

    # one VM fails its preflight (its VirtualMachine was deleted): no source is stopped
    gone = plan.planned("charlie")
    saved = cluster.get(VMR, "vms", gone.name)
    cluster.call(lambda: cluster.emulator.objects[VMR, "vms", gone.name].delete())
    result = cli(*base, ok=False)
    rows = {r["vm"]: r for r in json.loads(result.stdout)}
    assert rows["charlie"]["status"] == "failed"
    assert "preflight failed, nothing was changed" in rows["charlie"]["error"]
    assert rows["alpha"]["status"] == rows["bravo"]["status"] == "not started"
    assert "--wave 1 alpha bravo`" in rows["alpha"]["next"]
    assert "no source stopped: the preflight of charlie failed" in result.stderr
    assert "1 of 3 VM(s) failed, 2 not started" in result.stderr
    with plan.journal() as journal:
        assert not [s for s in journal.steps("cutover") if s.item.endswith("/stop")]
    cluster.create(VMR, "vms", saved)

    stuck = plan.planned("bravo")
    kubevirt.hold.add(stuck.name)  # its VirtualMachineInstance never leaves Scheduling
    # alpha's and charlie's disks change after staging: both are sent again, at once
    for name, fmt in (("alpha", "qcow2"), ("charlie", "raw")):
        qemu_io(plan.planned(name).vm.disks[0].path, "write -P 0x5a 1M 64k", fmt)

    result = cli(*base, "--verify-timeout", "3", ok=False)
    assert result.exit_code != 0
    rows = {r["vm"]: r for r in json.loads(result.stdout)}
    assert rows["alpha"]["status"] == rows["charlie"]["status"] == "done"
    assert rows["bravo"]["status"] == "failed"
    assert rows["bravo"]["steps"] == {"preflight": "done", "stop": "done", "sync": "done",
                                      "start": "done", "verify": "failed"}
    # one error line for the failed VM, naming it, what happened and the rollback command
    errors = [line for line in result.stderr.splitlines()
              if line.startswith("vmmove: error: ") and "error: cutover: " not in line]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("vmmove: error: bravo: ")
    assert f"{stuck.namespace}/{stuck.name} is Scheduling after 3s" in errors[0]
    assert f"vmmove rollback {plan.path} --wave 1 bravo" in errors[0]
    assert "vmmove: error: cutover: 1 of 3 VM(s) failed;" in result.stderr

    status = {s["vm"]: s for s in json.loads(
        cli("status", str(plan_file), "-o", "json", ok=True).stdout)["vms"]}
    assert status["alpha"]["phase"] == status["charlie"]["phase"] == "cut over"
    assert status["alpha"]["next"] is None and status["charlie"]["next"] is None
    assert status["bravo"]["state"] == "failed"
    assert "source is STOPPED" in status["bravo"]["next"]
    assert f"vmmove rollback {plan.path} --wave 1 bravo" in status["bravo"]["next"]
    with plan.journal() as journal:
        assert journal.get("cutover", f"{stuck.key}/verify").status == "failed"
        assert journal.get("cutover", f"{stuck.key}/done") is None
    for name in ("alpha", "charlie"):
        p = plan.planned(name)
        assert cluster.get(kubevirt.vmi, "vms", p.name)["status"]["phase"] == "Running"
    # the two re-sends took turns (the converter's work-folder lock, the wave-wide upload),
    # each VM converted, uploaded and re-imported its own changed disk
    with plan.journal() as journal:
        sends = []
        for name in ("alpha", "charlie"):
            p = plan.planned(name)
            sync = journal.get("cutover", f"{p.key}/sync")
            assert sync.data["converted"] == ["vda"] and sync.data["reimported"] == [
                f"{p.name}-vda"], sync.data
            assert sync.data["disks"]["vda"]["uploaded"] == sync.data["disks"]["vda"]["checksum"]
            convert = journal.get("convert", f"{p.key}/vda")
            upload = journal.get("upload", f"{p.key}/vda")
            assert upload.checksum == convert.checksum
            sends.append((convert.started, upload.finished))
        first, second = sorted(sends)
        assert second[0] >= first[1] - 0.01  # the second convert began after the first upload

    # the rerun resumes only the failed VM once its target runs
    kubevirt.hold.discard(stuck.name)
    again = cli(*base)
    assert again.exit_code == 0, again.stderr
    rows = {r["vm"]: r for r in json.loads(again.stdout)}
    assert rows["alpha"]["status"] == rows["charlie"]["status"] == "done before"
    assert rows["bravo"]["status"] == "done" and rows["bravo"]["steps"]["stop"] == "skipped"


def test_schedule_of_a_wave() -> None:
    """The runbook's window: ``jobs`` workers in plan order; full syncs send one at a time."""
    def e(total_sync: float, mode: str = "verify") -> Estimate:
        return Estimate(stop=10.0, sync=total_sync, boot=20.0, mode=mode, rate=1.0)

    four = [e(30), e(70), e(10), e(40)]  # totals 60, 100, 40, 70
    assert max(s.end for s in schedule(four, 1)) == pytest.approx(270)  # the sum
    two = schedule(four, 2)
    # 60 and 100 start at once; the third starts when the first ends (60 → 100), the fourth
    # when the second does (100 → 170)
    assert [(s.start, s.end) for s in two] == [(0, 60), (0, 100), (60, 100), (100, 170)]
    assert max(s.end for s in schedule(four, 4)) == pytest.approx(100)  # the longest
    # full syncs take turns: the second waits for the first's send, and that wait is downtime
    full = schedule([e(30, "full"), e(30, "full")], 2)
    assert full[1].wait == pytest.approx(30) and full[1].downtime == pytest.approx(90)
    assert max(s.end for s in full) == pytest.approx(90)
