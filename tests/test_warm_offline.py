"""Warm cutover of an offline source: a VMX export (descriptor + flat VMDK, built here with
qemu-img) whose flat VMDK changes between precopy rounds and again before the cutover.

scan → plan --warm → migrate --stage (SeaweedFS, kmock playing CDI and KubeVirt) → sync →
flat VMDK written (qemu-io) → sync → written again → cutover: refused without
``--source-powered-off`` and while a VMware lock file is in the export, then done with it
(the final delta re-reads the flat VMDK, writes only the changed pieces, the volume equals
the changed source by ``qemu-img compare``, the export untouched) → rollback (the target
Halted, the operator told to power the source on at its platform)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from migrate.clients.nbd import file_guest_checksum
from migrate.core.journal import DONE
from migrate.core.output import human_size
from migrate.pipeline.itinerary import OFFLINE_WARM_CUTOVER, WARM_CUTOVER, cutover_itinerary
from migrate.pipeline.warm import KIND_WARM, Warm, WarmError
from migrate.plan import load_plan
from tests.conftest import qemu_io
from tests.offline_support import make_vmdk, ovf_text, vmx_export, warm_plan
from tests.guest_support import KubeVirt, kubevirt  # noqa: F401
from tests.plan_support import VMR, Cluster, Controllers, cluster, controllers  # noqa: F401
from tests.s3_support import SeaweedFS

pytestmark = pytest.mark.slow
MiB = 1 << 20


def same(descriptor: Path, volume: Path) -> bool:
    proc = subprocess.run(["qemu-img", "compare", "-f", "vmdk", "-F", "raw", str(descriptor),
                           str(volume)], capture_output=True, text=True)
    return proc.returncode == 0


def test_offline_vmx_warm_cutover_and_rollback(
        cli: Any, tmp_path: Path, s3_server: SeaweedFS, s3_bucket: str,
        s3_env: dict[str, str], cluster: Cluster, controllers: Controllers,
        kubevirt: KubeVirt) -> None:
    vmx, descriptor, flat = vmx_export(tmp_path / "export")
    inventory, plan_file, made = warm_plan(
        cli, vmx, tmp_path, "--s3", f"s3://{s3_bucket}/{tmp_path.name}", "--endpoint-url",
        s3_server.endpoint)
    assert "warm app/sda: hash (offline vmx source" in made.stderr, made.stderr
    kube = ["--kubeconfig", str(cluster.kubeconfig)]
    staged = cli("migrate", str(plan_file), "--wave", "1", "--stage", *kube)
    assert staged.exit_code == 0, staged.stderr
    plan = load_plan(plan_file)
    (p,) = plan.wave(1)

    r1 = cli("sync", str(plan_file), "--wave", "1", "-o", "json")
    assert r1.exit_code == 0, r1.stderr
    assert json.loads(r1.stdout)[0]["kind"] == "full"
    (volume,) = (tmp_path / "volumes" / "vms").glob("*/disk.img")
    assert same(descriptor, volume)

    # the VM ran on at its platform: 256 KiB changed in the flat extent
    qemu_io(str(flat), "write -P 0xa1 5M 256k", "raw")
    r2 = cli("sync", str(plan_file), "--wave", "1", "-o", "json")
    assert r2.exit_code == 0, r2.stderr
    (row,) = json.loads(r2.stdout)
    assert row["kind"] == "incremental" and row["changed"] == 256 << 10, row
    assert same(descriptor, volume)

    # the flat extent cut short between rounds (qemu would read the rest as zeros and the
    # round would find nothing changed): refused, naming the file and both sizes
    data = flat.read_bytes()
    os.truncate(flat, MiB)
    short = cli("sync", str(plan_file), "--wave", "1", "-o", "json")
    assert short.exit_code != 0
    assert "app.vmdk: extent file 'app-flat.vmdk' is 1048576 bytes, the descriptor declares " \
        "33554432 bytes (65536 sectors at offset 0): truncated" in short.stderr, short.stderr
    flat.write_bytes(data)
    assert same(descriptor, volume)

    # the runbook gives the offline itinerary's steps and commands, no virsh
    book = tmp_path / "runbooks"
    cli("runbook", str(plan_file), "--out", str(book), ok=True)
    text = (book / "wave-1.md").read_text()
    # the offline itinerary itself (no ACPI shutdown), the flag on the wave's command too
    assert "2. **Stop the source** — nothing vmmove can stop" in text
    assert "ACPI" not in text.split("## Expected downtime")[0]
    assert "1 VM(s) move from a VMware (VMX) export to KubeVirt" in text
    assert "--wave 1 app --source-powered-off" in text and "virsh" not in text
    assert f"vmmove cutover {plan_file} --wave 1 --jobs 1 --source-powered-off\n" in text
    dry = cli("cutover", str(plan_file), "--wave", "1", "--dry-run", ok=True)
    assert "nothing to stop: app powered off at its platform" in dry.stdout, dry.stdout
    steps = {s["step"]: s for s in json.loads(cli(
        "cutover", str(plan_file), "--wave", "1", "--dry-run", "-o", "json", ok=True).stdout)}
    # without the flag: the preflight would refuse, the stop says the flag is required
    assert steps["preflight"]["state"] == "refused"
    assert "power the VM off at its platform, then rerun with --source-powered-off" in \
        steps["preflight"]["what"]
    assert steps["stop"]["what"] == "nothing to stop: app powered off at its platform " \
        "(--source-powered-off required)"
    # one stop model for the dry run and the runbook: 0 s, nothing vmmove stops
    assert steps["stop"]["seconds"] == 0.0
    assert steps["stop"]["basis"] == "nothing vmmove stops: powered off at its platform " \
        "before the cutover"
    assert "| app | 32.0M | warm | 0 s |" in text, text
    # the final delta's rate is the last round's (a hash round reads every disk whole)
    with plan.journal() as journal:
        last = journal.get(KIND_WARM, p.key).state["history"][-1]
    assert last["read"] == 6 * MiB and last["changed"] == 256 << 10  # its data; holes unread
    speed = human_size(int(last["read"] / last["seconds"]))
    assert steps["sync"]["basis"].endswith(
        f"expected to change, every disk read whole (hash), at {speed}/s (the last "
        "round's rate)"), steps["sync"]
    confirmed = {s["step"]: s for s in json.loads(cli(
        "cutover", str(plan_file), "--wave", "1", "--dry-run", "--source-powered-off",
        "-o", "json", ok=True).stdout)}
    assert confirmed["preflight"]["state"] == "to do", confirmed["preflight"]
    assert confirmed["stop"]["what"].endswith("(confirmed by --source-powered-off)")
    lock = vmx.parent / "app.vmx.lck"
    lock.mkdir()
    locked = {s["step"]: s for s in json.loads(cli(
        "cutover", str(plan_file), "--wave", "1", "--dry-run", "--source-powered-off",
        "-o", "json", ok=True).stdout)}
    assert locked["preflight"]["state"] == "refused"
    assert "VMware lock file app.vmx.lck" in locked["preflight"]["what"], locked["preflight"]
    lock.rmdir()

    # and again after the last round, into a block that was a hole: the final delta's part
    qemu_io(str(flat), "write -P 0xb2 20M 64k", "raw")
    qemu_io(str(flat), "write -P 0xb3 1M 4k", "raw")
    assert not same(descriptor, volume)

    # without the operator's word that the VM is off: refused before anything changes
    refused = cli("cutover", str(plan_file), "--wave", "1", *kube, "-o", "json")
    assert refused.exit_code != 0
    assert "power the VM off at its platform, then rerun with --source-powered-off" in \
        refused.stderr
    assert cluster.get(VMR, "vms", p.name)["spec"]["runStrategy"] == "Halted"

    # a VMware lock file says the VM still runs: refused even with the confirmation
    lock = vmx.parent / "app.vmx.lck"
    lock.mkdir()
    locked = cli("cutover", str(plan_file), "--wave", "1", *kube, "--source-powered-off")
    assert locked.exit_code != 0 and "VMware lock file app.vmx.lck" in locked.stderr
    assert cluster.get(VMR, "vms", p.name)["spec"]["runStrategy"] == "Halted"
    lock.rmdir()

    # the export is untrusted input: a descriptor edited to name a file outside it is
    # refused before anything changes (and that file is never read)
    outside = tmp_path / "outside.raw"
    outside.write_bytes(b"\x66" * MiB)
    text = descriptor.read_text()
    descriptor.write_text(text.replace('"app-flat.vmdk"', '"../outside.raw"'))
    escaped = cli("cutover", str(plan_file), "--wave", "1", *kube, "--source-powered-off")
    assert escaped.exit_code != 0 and "disk sda:" in escaped.stderr, escaped.stderr
    assert "preflight failed, nothing was changed" in escaped.stderr
    assert cluster.get(VMR, "vms", p.name)["spec"]["runStrategy"] == "Halted"
    descriptor.write_text(text)

    before = {f: os.stat(f).st_mtime_ns for f in (vmx, descriptor, flat)}
    cut = cli("cutover", str(plan_file), "--wave", "1", *kube, "--source-powered-off",
              "--verify-timeout", "60", "--no-guest-agent", "-o", "json")
    assert cut.exit_code == 0, cut.stderr
    (done,) = json.loads(cut.stdout)
    assert done["status"] == "done" and done["syncMode"] == "warm", done
    assert done["fullCopySeconds"] is not None
    assert same(descriptor, volume)  # the PVC equals the changed source
    assert {f: os.stat(f).st_mtime_ns for f in (vmx, descriptor, flat)} == before
    assert cluster.get(VMR, "vms", p.name)["spec"]["runStrategy"] == "Always"
    with plan.journal() as journal:
        stop = journal.get("cutover", f"{p.key}/stop")
        assert stop is not None and stop.status == DONE
        assert stop.data["how"] == "powered off at its platform (confirmed: " \
            "--source-powered-off)" and stop.data["confirmed_at"] > 0
        sync = journal.get("cutover", f"{p.key}/sync")
        assert sync is not None and sync.status == DONE
        disk = sync.data["disks"]["sda"]
        assert disk["method"] == "hash" and disk["source_sha256"] == disk["volume_sha256"]
        assert disk["source_sha256"] == file_guest_checksum(volume)[0]  # xxh3-1m, issue 17
        # the whole flat extent read; only the two changed 64 KiB pieces written
        assert disk["read"] >= 6 * MiB and disk["changed"] == 2 * (64 << 10), disk
        # a volume checksum in another form (an older worker image reports sha256-1m): the
        # source is read again in that form, never compared across forms
        old = file_guest_checksum(volume, form="sha256-1m")[0]
        warm = Warm(plan, journal)
        assert warm.verify(p, {"sda": old}, {"sda": disk["source_sha256"]}) == {
            "sda": {"source_sha256": old, "volume_sha256": old}}
        with pytest.raises(WarmError, match="differs from the source's sha256-1m:"):
            warm.verify(p, {"sda": "sha256-1m:" + "0" * 64}, {"sda": disk["source_sha256"]})

    back = cli("rollback", str(plan_file), "--wave", "1", *kube, "-o", "json")
    assert back.exit_code == 0, back.stderr
    (rb,) = json.loads(back.stdout)
    assert rb["targetAction"] == "Halted"
    assert "NOT started" in rb["sourceAction"] and "at its platform" in rb["sourceAction"]
    assert cluster.get(VMR, "vms", p.name)["spec"]["runStrategy"] == "Halted"
    with plan.journal() as journal:
        warm = journal.get(KIND_WARM, p.key)
        assert warm is not None and "rolled back after the target started" in \
            warm.state["full_reason"]
    # the next cutover starts over: the preflight wants the confirmation again
    again = cli("cutover", str(plan_file), "--wave", "1", *kube)
    assert again.exit_code != 0 and "--source-powered-off" in again.stderr


def test_offline_ovf_export_refreshed_between_rounds_is_cut_over(
        cli: Any, tmp_path: Path, s3_server: SeaweedFS, s3_bucket: str,
        s3_env: dict[str, str], cluster: Cluster, controllers: Controllers,
        kubevirt: KubeVirt) -> None:
    """An OVF export (a streamOptimized VMDK) whose platform exports it again between the
    rounds: the data allow a warm cutover too (no lock files to look at: the operator's
    confirmation alone), and the volume ends equal to the last export."""
    export = tmp_path / "export"
    export.mkdir()
    make_vmdk(export, "disk1.vmdk")
    ovf = export / "web01.ovf"
    ovf.write_text(ovf_text())
    inventory = tmp_path / "inventory.yaml"
    cli("scan", str(ovf), "--output-file", str(inventory), "-o", "json", ok=True)
    plan_file = tmp_path / "plan.yaml"
    made = cli("plan", str(inventory), "--out", str(plan_file), "-n", "vms", "--s3",
               f"s3://{s3_bucket}/{tmp_path.name}", "--endpoint-url", s3_server.endpoint,
               "--warm", "--warm-volumes", "volumes", "--network", "*=pod", ok=True)
    assert ": hash (offline ovf source" in made.stderr, made.stderr
    kube = ["--kubeconfig", str(cluster.kubeconfig)]
    staged = cli("migrate", str(plan_file), "--wave", "1", "--stage", *kube)
    assert staged.exit_code == 0, staged.stderr
    assert cli("sync", str(plan_file), "--wave", "1").exit_code == 0
    # exported again after the VM ran on: another stream-optimized file, 64 KiB changed
    (export / "disk1.vmdk").unlink()
    make_vmdk(export, "disk1.vmdk", pattern=0xCD)
    cut = cli("cutover", str(plan_file), "--wave", "1", *kube, "--source-powered-off",
              "--verify-timeout", "60", "--no-guest-agent", "-o", "json")
    assert cut.exit_code == 0, cut.stderr
    (done,) = json.loads(cut.stdout)
    assert done["status"] == "done" and done["syncMode"] == "warm", done
    (volume,) = (tmp_path / "volumes" / "vms").glob("*/disk.img")
    proc = subprocess.run(["qemu-img", "compare", "-f", "vmdk", "-F", "raw",
                           str(export / "disk1.vmdk"), str(volume)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout
    plan = load_plan(plan_file)
    (p,) = plan.wave(1)
    with plan.journal() as journal:
        sync = journal.get("cutover", f"{p.key}/sync")
        assert sync is not None
        (disk,) = sync.data["disks"].values()
        # 256 KiB rewritten with another pattern: four pieces of 64 KiB, nothing else
        assert disk["changed"] == 256 << 10 and disk["source_sha256"] == disk["volume_sha256"]
    back = cli("rollback", str(plan_file), "--wave", "1", *kube, "-o", "json")
    assert back.exit_code == 0 and "power the VM on at its platform" in back.stdout


def test_offline_itinerary_is_declared_as_data() -> None:
    """Same phases and journal names as the warm one; the preflight checks the export and
    the operator's confirmation instead of a domain; stop and sync say what happens."""
    assert OFFLINE_WARM_CUTOVER.names == WARM_CUTOVER.names
    assert cutover_itinerary(True, offline=True) is OFFLINE_WARM_CUTOVER
    assert cutover_itinerary(False, offline=True).name == "cutover"
    checks = OFFLINE_WARM_CUTOVER.phase("preflight").checks
    assert "source" not in checks and {"export", "powered-off", "warm"} <= set(checks)
    assert "--source-powered-off" in OFFLINE_WARM_CUTOVER.phase("stop").text
    assert "64 KiB pieces" in OFFLINE_WARM_CUTOVER.phase("sync").text
    assert OFFLINE_WARM_CUTOVER.phase("start") == WARM_CUTOVER.phase("start")
