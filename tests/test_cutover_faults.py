"""Cutover faults on real components: ``vmmove cutover`` killed (SIGKILL) at every step
boundary and in the middle of the final sync, then rerun; a source that ignores the ACPI
shutdown; a target that never reaches Running.  Throughout, ``vmmove status`` must say
what to do next for a VM whose source is stopped, and the source stays runnable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import pytest

from migrate.pipeline.cutover import PAUSE_ENV
from migrate.pipeline.warm import RESUME_ENV
from migrate.plan import load_plan
from tests.guest_support import (
    DOWN_MARKER,
    KubeVirt,
    boot_guest,
    kubevirt,  # noqa: F401
    stage_guest,
)
from tests.libvirtd_support import DomainFactory, libvirt_domains  # noqa: F401
from tests.plan_support import VMR, Cluster, Controllers, cluster, controllers  # noqa: F401
from tests.s3_support import SeaweedFS, subprocess_env

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SHUT_OFF = 5
STEP_ORDER = ("preflight", "stop", "sync", "start", "verify", "done")


def run_until_pause(command: list[str], env: dict[str, str], point: str,
                    log: Path, timeout: float = 120.0) -> None:
    """Run ``command`` paused at ``point`` (the test hook), then SIGKILL it there."""
    log.write_text("")
    with open(log, "w") as err:
        proc = subprocess.Popen(command, env={**env, PAUSE_ENV: point}, cwd=str(ROOT),
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    marker = f"vmmove: test pause at {point}"
    deadline = time.monotonic() + timeout
    try:
        while marker not in log.read_text():
            if proc.poll() is not None:
                raise AssertionError(f"exited {proc.returncode} before {point}:\n"
                                     f"{log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no pause at {point} after {timeout}s:\n"
                                     f"{log.read_text()[-2000:]}")
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def fault_while_paused(args: list[str], env: dict[str, str], point: str, tmp: Path,
                       fault: Callable[[], None]) -> list[str]:
    """Run ``vmmove ARGS`` in a child paused at ``point`` (the ``RESUME_ENV`` test hook),
    run ``fault()`` there, let the child go on; its stderr lines (without the pause line)
    once it has failed."""
    resume, log = tmp / f"resume-{point}", tmp / f"fault-{point}.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", "from migrate.cli import run; run()",
                                 *args], env={**env, PAUSE_ENV: point, RESUME_ENV: str(resume)},
                                cwd=str(ROOT), start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 120
        while f"test pause at {point}" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        fault()
        resume.touch()
        assert proc.wait(120) != 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    resume.unlink(missing_ok=True)
    return [ln for ln in log.read_text().splitlines() if "test pause" not in ln]


def step_statuses(plan: Any, key: str) -> dict[str, str]:
    with plan.journal() as journal:
        return {s.item.removeprefix(key + "/"): s.status for s in journal.steps("cutover")
                if s.item.startswith(key + "/")}


def vm_status(cli: Any, plan_file: Path) -> dict[str, Any]:
    return json.loads(cli("status", str(plan_file), "-o", "json", ok=True).stdout)["vms"][0]


def test_cutover_killed_at_every_step_boundary_resumes(
        cli: Any, tmp_path: Path, libvirt_domains: DomainFactory, s3_server: SeaweedFS,
        s3_bucket: str, s3_env: dict[str, str], cluster: Cluster, controllers: Controllers,
        kubevirt: KubeVirt) -> None:
    guest = boot_guest(libvirt_domains, "kill")
    plan_file = stage_guest(cli, tmp_path, guest, s3_server, s3_bucket, cluster)
    plan = load_plan(plan_file)
    (p,) = plan.wave(1)
    env = subprocess_env(s3_server.env(tmp_path))
    env.update(KUBECONFIG=str(cluster.kubeconfig), PYTHONUNBUFFERED="1")
    command = [sys.executable, "-c", "from migrate.cli import run; run()", "cutover",
               str(plan_file), "--wave", "1", "--shutdown-timeout", "120",
               "--verify-timeout", "60", "-o", "json"]
    log = tmp_path / "cutover.err"

    points = ["preflight", "stop", "start:sync", "sync", "start", "verify"]
    for point in points:
        run_until_pause(command, env, point, log)
        statuses = step_statuses(plan, p.key)
        step = point.removeprefix("start:")
        done_upto = STEP_ORDER.index(step) + (0 if point.startswith("start:") else 1)
        assert all(statuses.get(s) == "done" for s in STEP_ORDER[:done_upto]), (point, statuses)
        assert not any(statuses.get(s) == "done" for s in STEP_ORDER[done_upto:]), \
            (point, statuses)
        status = vm_status(cli, plan_file)
        assert status["phase"] == "imported" and status["state"] == "running", status
        if point == "preflight":
            assert guest.dom.isActive()  # nothing was changed
            assert status["next"].startswith("nothing was changed yet")
        else:
            # the source is stopped: status says so, and what to do next
            assert guest.state() == SHUT_OFF
            assert "source is STOPPED" in status["next"], status
            assert f"vmmove cutover {plan.path} --wave 1" in status["next"]
            assert f"vmmove rollback {plan.path} --wave 1" in status["next"]
            table = cli("status", str(plan_file), ok=True).stdout
            assert "next: source is STOPPED" in table
        if point == "start":
            assert cluster.get(VMR, "vms", p.name)["spec"]["runStrategy"] == "Always"

    final = subprocess.run(command, env=env, cwd=str(ROOT), capture_output=True, text=True,
                           timeout=180)
    assert final.returncode == 0, final.stderr[-2000:]
    (row,) = json.loads(final.stdout)
    assert row["status"] == "done" and row["steps"]["stop"] == "skipped"
    assert step_statuses(plan, p.key) == {s: "done" for s in STEP_ORDER}
    # nothing harmful repeated: one shutdown of the guest, each step done once, the sync
    # redone only after the kill inside it
    assert guest.serial.read_text().count(DOWN_MARKER) == 1
    with plan.journal() as journal:
        history: dict[str, list[str]] = {}
        for h in journal.history("cutover"):
            if h["item"].startswith(p.key + "/"):
                history.setdefault(h["item"].rsplit("/", 1)[-1], []).append(h["status"])
        top = journal.get("cutover", p.key)
    for step in STEP_ORDER:
        assert history[step].count("done") == 1, (step, history[step])
    assert history["stop"] == ["running", "done"]
    assert history["sync"] == ["running", "running", "done"]  # SIGKILL: no "failed" written
    assert top is not None and top.status == "done" and top.data["downtime"] > 0
    status = vm_status(cli, plan_file)
    assert status["phase"] == "cut over" and status["next"] is None
    assert cluster.get(kubevirt.vmi, "vms", p.name)["status"]["phase"] == "Running"
    assert kubevirt.events.count(("created", p.name)) == 1


def test_stubborn_source_and_target_that_never_runs(
        cli: Any, tmp_path: Path, libvirt_domains: DomainFactory, s3_server: SeaweedFS,
        s3_bucket: str, s3_env: dict[str, str], cluster: Cluster, controllers: Controllers,
        kubevirt: KubeVirt) -> None:
    guest = boot_guest(libvirt_domains, "stubborn", ignore_power=True)
    plan_file = stage_guest(cli, tmp_path, guest, s3_server, s3_bucket, cluster)
    plan = load_plan(plan_file)
    (p,) = plan.wave(1)
    kubevirt.hold.add(p.name)
    base = ["cutover", str(plan_file), "--wave", "1", "--kubeconfig", str(cluster.kubeconfig)]

    # the guest ignores the ACPI shutdown: a clear error, the source still running
    started = time.monotonic()
    result = cli(*base, "--shutdown-timeout", "3", ok=False)
    assert time.monotonic() - started < 60
    assert "did not shut down within 3s" in result.stderr and "--force" in result.stderr
    assert guest.dom.isActive()
    status = vm_status(cli, plan_file)
    assert status["state"] == "failed" and "source still running" in status["next"]
    assert cluster.get(VMR, "vms", p.name)["spec"]["runStrategy"] == "Halted"

    # --force powers it off after the timeout; then the target never reaches Running
    result = cli(*base, "--shutdown-timeout", "2", "--force", "--verify-timeout", "3",
                 ok=False)
    assert "VirtualMachineInstance vms/" + p.name + " is Scheduling after 3s" in result.stderr
    assert f"vmmove rollback {plan.path} --wave 1" in result.stderr
    assert guest.state() == SHUT_OFF
    statuses = step_statuses(plan, p.key)
    assert statuses["stop"] == "done" and statuses["verify"] == "failed"
    with plan.journal() as journal:
        assert journal.get("cutover", f"{p.key}/stop").data["how"] == "destroyed after timeout"
    status = vm_status(cli, plan_file)
    assert status["state"] == "failed" and "source is STOPPED" in status["next"]
    assert "vmmove rollback" in status["next"]

    # rollback: the target halts, its VMI goes, the source runs again
    back = cli("rollback", str(plan_file), "--wave", "1", "--kubeconfig",
               str(cluster.kubeconfig), "-o", "json")
    assert back.exit_code == 0, back.stderr
    assert json.loads(back.stdout)[0]["sourceAction"] == "started"
    assert guest.dom.isActive()
    assert cluster.get(VMR, "vms", p.name)["spec"]["runStrategy"] == "Halted"
    assert cluster.get(kubevirt.vmi, "vms", p.name) is None
    status = vm_status(cli, plan_file)
    assert status["phase"] == "rolled back"  # next: cut over again, from the preflight
    assert status["next"] == f"vmmove cutover {plan.path} --wave 1 {p.vm.name}"
    assert step_statuses(plan, p.key) == {}  # the next cutover starts from the preflight
