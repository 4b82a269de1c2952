"""Cutover end to end on real components: a TCG guest on the system libvirtd, SeaweedFS,
kmock playing the Kubernetes API (CDI and KubeVirt played by the test).

scan → plan → stage (the guest running: read with -U) → cutover (ACPI shutdown for real,
full final sync that must carry what the guest wrote while shutting down) → verify →
rollback (the guest boots again) → status, journal and runbook checked on the way."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import defusedxml.ElementTree
import pytest
import yaml

from migrate.plan import load_plan
from migrate.core.journal import DONE, Journal
from tests.guest_support import (
    BOOT_TAG,
    SHUTDOWN_OFFSET,
    SHUTDOWN_TAG,
    Guest,
    KubeVirt,
    boot_guest,
    kubevirt,  # noqa: F401
    read_image_bytes,
    stage_guest,
)
from tests.libvirtd_support import URI, DomainFactory, libvirt_domains  # noqa: F401
from tests.plan_support import VMR, Cluster, Controllers, cluster, controllers  # noqa: F401
from tests.s3_support import SeaweedFS

pytestmark = pytest.mark.slow

SHUT_OFF = 5


def cutover_history(journal: Journal, key: str) -> list[tuple[str, str]]:
    return [(h["item"].removeprefix(key + "/"), h["status"])
            for h in journal.history("cutover") if h["item"].startswith(key)]


def test_cutover_and_rollback_end_to_end(cli: Any, tmp_path: Path, libvirt_domains: DomainFactory,
                                         s3_server: SeaweedFS, s3_bucket: str,
                                         s3_env: dict[str, str], cluster: Cluster,
                                         controllers: Controllers, kubevirt: KubeVirt) -> None:
    guest = boot_guest(libvirt_domains, "cut")
    print(f"guest boot: {guest.boot_seconds:.1f}s")
    plan_file = stage_guest(cli, tmp_path, guest, s3_server, s3_bucket, cluster)
    plan = load_plan(plan_file)
    (p,) = plan.wave(1)
    with plan.journal() as journal:
        staged = journal.get("convert", f"{p.key}/vda")
        assert staged is not None and staged.data["force_share"] is True
        staged_checksum = staged.checksum
    out = Path(staged.data["output"])
    # staged while running: the boot marker is there, the shutdown marker not yet
    assert read_image_bytes(out, "qcow2", 0, len(BOOT_TAG)) == BOOT_TAG
    assert SHUTDOWN_TAG not in read_image_bytes(out, "qcow2", SHUTDOWN_OFFSET, 64)

    # the runbook, written before the cutover, names the exact commands
    # the runbook, written before the cutover, names the exact commands
    book = tmp_path / "runbooks"
    cli("runbook", str(plan_file), "--out", str(book), ok=True)
    text = (book / "wave-1.md").read_text()
    for expected in (f"vmmove cutover {plan.path} --wave 1", f"virsh -c {URI} shutdown {guest.name}",
                     f"kubectl -n vms get vmi {p.name}", f"vmmove rollback {plan.path} --wave 1",
                     "## Sign-off", "| " + guest.name + " |", "full"):
        assert expected in text, expected

    started = time.monotonic()
    result = cli("cutover", str(plan_file), "--wave", "1", "--kubeconfig",
                 str(cluster.kubeconfig), "--shutdown-timeout", "120", "--verify-timeout",
                 "60", "--guest-agent", "--verify-command", "test \"$VMMOVE_NAME\" = " + p.name,
                 "-o", "json")
    wall = time.monotonic() - started
    assert result.exit_code == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert row["status"] == "done" and row["syncMode"] == "full"
    print(f"cutover wall {wall:.1f}s, downtime {row['downtime']:.1f}s")

    # the source: shut down (ACPI, not destroyed), still defined, its disk untouched by us
    assert guest.state() == SHUT_OFF
    assert "VMMOVE-GUEST-DOWN" in guest.serial.read_text()
    # the final sync carried what the guest wrote while shutting down, to the image and S3
    with plan.journal() as journal:
        steps = {s.item.removeprefix(p.key + "/"): s for s in journal.steps("cutover")
                 if s.item.startswith(p.key + "/")}
        top = journal.get("cutover", p.key)
        synced = journal.get("convert", f"{p.key}/vda")
        upload = journal.get("upload", f"{p.key}/vda")
        imported = journal.get("import", f"{p.key}/vda")
        history = cutover_history(journal, p.key)
    assert set(steps) == {"preflight", "stop", "sync", "start", "verify", "done"}
    assert all(s.status == DONE for s in steps.values())
    assert steps["stop"].data["how"] == "shutdown" and steps["stop"].data["before"] == "running"
    assert steps["sync"].data["mode"] == "full" and steps["sync"].data["converted"] == ["vda"]
    assert steps["sync"].data["reimported"] == [f"{p.name}-vda"]
    assert steps["verify"].data["phase"] == "Running" and steps["verify"].data["agent"] is True
    assert top is not None and top.status == DONE and top.data["next"] is None
    assert top.data["downtime"] == pytest.approx(
        steps["verify"].finished - steps["stop"].started, abs=0.01)
    assert 0 < top.data["downtime"] < wall
    assert synced is not None and synced.checksum != staged_checksum
    assert synced.data["force_share"] is False
    assert upload is not None and upload.checksum == synced.checksum
    assert imported is not None and imported.status == DONE
    assert SHUTDOWN_TAG in read_image_bytes(out, "qcow2", SHUTDOWN_OFFSET, 64)
    head = s3_server.client().head_object(Bucket=s3_bucket, Key=upload.data["key"])
    assert head["Metadata"]["checksum"] == synced.checksum
    # each step ran once
    assert [h for h in history if h[0] != p.key] == [
        (s, st) for s in ("preflight", "stop", "sync", "start", "verify", "done")
        for st in ("running", "done")]
    # the API: runStrategy Always, the VMI Running, the DataVolume imported again
    vm = cluster.get(VMR, "vms", p.name)
    assert vm is not None and vm["spec"]["runStrategy"] == "Always"
    vmi = cluster.get(kubevirt.vmi, "vms", p.name)
    assert vmi is not None and vmi["status"]["phase"] == "Running"
    assert controllers.created.count(f"vms/{p.name}-vda") == 2  # deleted, made again
    assert controllers.phases[f"{p.name}-vda"][-1] == "Succeeded"

    status = json.loads(cli("status", str(plan_file), "-o", "json", ok=True).stdout)
    assert [(v["phase"], v["state"]) for v in status["vms"]] == [("cut over", "idle")]

    # the report: the same downtime and checksums as the journal, and a well-formed plot
    svg = tmp_path / "wave-1.svg"
    report = json.loads(cli("report", str(plan_file), "--plot", str(svg), "-o", "json",
                            ok=True).stdout)
    (vm_report,) = report["vms"]
    assert vm_report["downtime"] == top.data["downtime"] and vm_report["syncMode"] == "full"
    assert vm_report["disks"][0]["checksum"] == synced.checksum
    assert report["throughput"]["sync"]["samples"] == 1
    root = defusedxml.ElementTree.parse(svg).getroot()
    texts = [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    # matplotlib's plot (issue 13): the VM, both units, the measured downtime as a label
    assert guest.name in texts and "MiB/s" in texts and "seconds" in texts
    assert f"{top.data['downtime']:.1f} s" in texts
    if os.environ.get("VMMOVE_KEEP_PLOT"):
        shutil.copyfile(svg, os.environ["VMMOVE_KEEP_PLOT"])
    # a runbook written now estimates from what this cutover measured
    cli("runbook", str(plan_file), "--out", str(book), ok=True)
    assert "final syncs measured (1)" in (book / "wave-1.md").read_text()

    # a rerun does nothing: the VM is cut over
    again = cli("cutover", str(plan_file), "--wave", "1", "--kubeconfig",
                str(cluster.kubeconfig), "-o", "json")
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)[0]["status"] == "done before"
    with plan.journal() as journal:
        assert cutover_history(journal, p.key) == history

    # rollback: the target halts, its VMI goes, then the guest boots again
    back = cli("rollback", str(plan_file), "--wave", "1", "--kubeconfig",
               str(cluster.kubeconfig), "-o", "json")
    assert back.exit_code == 0, back.stderr
    (rb,) = json.loads(back.stdout)
    assert rb["targetAction"] == "Halted" and rb["sourceAction"] == "started"
    assert cluster.get(VMR, "vms", p.name)["spec"]["runStrategy"] == "Halted"
    assert cluster.get(kubevirt.vmi, "vms", p.name) is None
    assert ("deleted", p.name) in kubevirt.events
    print(f"guest reboot after rollback: {guest.wait_up(count=2):.1f}s")
    assert "boot=2" in guest.serial.read_text()
    status = json.loads(cli("status", str(plan_file), "-o", "json", ok=True).stdout)
    assert status["vms"][0]["phase"] == "rolled back"
    # rollback again: nothing to do, still safe
    twice = cli("rollback", str(plan_file), "--wave", "1", "--kubeconfig",
                str(cluster.kubeconfig), "-o", "json")
    assert twice.exit_code == 0, twice.stderr
    assert json.loads(twice.stdout)[0]["sourceAction"].startswith("left running")
    assert guest.dom.isActive()
