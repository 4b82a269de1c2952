"""Cutover of VMs staged shut off (libvirt's test driver as the source host, real images,
SeaweedFS, kmock): the final sync proves the source unchanged instead of copying it, and
copies only a disk that did change; ``--at`` waits; rollback leaves a VM that was off, off.
Also ``--at`` parsing and the runbook's estimate arithmetic."""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path
from typing import Any

import pytest

from migrate.pipeline.cutover import parse_at
from migrate.core.errors import UsageError, VmmoveError
from migrate.plan import load_plan
from migrate.views.report import MIB, Rate, Throughput
from migrate.views.runbook import DEFAULT_BOOT, DEFAULT_STOP, estimate
from migrate.core.journal import Journal
from tests.conftest import qemu_io
from tests.guest_support import KubeVirt, kubevirt  # noqa: F401
from tests.plan_support import VMR, Cluster, Controllers, cluster, controllers  # noqa: F401
from tests.s3_support import SeaweedFS
from tests.test_migrate_e2e import scan_and_plan

pytestmark = pytest.mark.slow


def test_verify_sync_at_time_and_rollback_of_a_vm_that_was_off(
        cli: Any, tmp_path: Path, s3_server: SeaweedFS, s3_bucket: str,
        s3_env: dict[str, str], cluster: Cluster, controllers: Controllers,
        kubevirt: KubeVirt) -> None:
    plan_file = scan_and_plan(cli, tmp_path, s3_server, s3_bucket, {
        "same": [("vda", "qcow2", 8)], "edited": [("vda", "qcow2", 8), ("vdb", "raw", 4)]})
    kube = ["--kubeconfig", str(cluster.kubeconfig)]
    staged = cli("migrate", str(plan_file), "--wave", "1", "--stage", *kube)
    assert staged.exit_code == 0, staged.stderr
    plan = load_plan(plan_file)
    same, edited = plan.wave(1)
    # the source of one disk changes after staging (as if the VM ran once more)
    qemu_io(edited.vm.disks[1].path, "write -P 0x77 1M 64k", "raw")
    with plan.journal() as journal:
        before = {s.item: s.checksum for s in journal.steps("upload")}

    at = (datetime.datetime.now() + datetime.timedelta(seconds=3)).strftime("%H:%M:%S")
    wanted = parse_at(at).timestamp()
    started = time.monotonic()
    result = cli("cutover", str(plan_file), "--wave", "1", "--at", at, *kube, "-o", "json")
    assert result.exit_code == 0, result.stderr
    assert "waiting until" in result.stderr and time.monotonic() - started >= 1.5
    rows = {r["vm"]: r for r in json.loads(result.stdout)}
    assert {r["status"] for r in rows.values()} == {"done"}
    assert {r["syncMode"] for r in rows.values()} == {"verify"}

    with plan.journal() as journal:
        def sync(p: Any) -> dict[str, Any]:
            step = journal.get("cutover", f"{p.key}/sync")
            assert step is not None
            return step.data

        def stop(p: Any) -> dict[str, Any]:
            step = journal.get("cutover", f"{p.key}/stop")
            assert step is not None
            return step.data

        assert stop(same)["how"] == stop(edited)["how"] == "already off"
        assert sync(same)["converted"] == [] and sync(same)["reimported"] == []
        assert sync(same)["disks"]["vda"] == {
            "staged_checksum": before[f"{same.key}/vda"], "status": "unchanged",
            "compare": "identical", "checksum": before[f"{same.key}/vda"]}
        assert sync(edited)["disks"]["vda"]["status"] == "unchanged"
        assert sync(edited)["converted"] == ["vdb"]
        assert sync(edited)["reimported"] == [f"{edited.name}-vdb"]
        after = {s.item: s.checksum for s in journal.steps("upload")}
        uploads = {}
        for h in journal.history("upload"):
            uploads.setdefault(h["item"], []).append(h["status"])
        stop_started = journal.get("cutover", f"{same.key}/stop").started
    # only the changed disk was sent again
    assert after[f"{edited.key}/vdb"] != before[f"{edited.key}/vdb"]
    assert {k: v for k, v in after.items() if k != f"{edited.key}/vdb"} == \
        {k: v for k, v in before.items() if k != f"{edited.key}/vdb"}
    assert uploads[f"{same.key}/vda"].count("done") == 1
    assert uploads[f"{edited.key}/vdb"].count("done") == 2
    # no source was stopped before --at
    assert stop_started >= wanted - 0.01
    for p in (same, edited):
        assert cluster.get(VMR, "vms", p.name)["spec"]["runStrategy"] == "Always"
        assert cluster.get(kubevirt.vmi, "vms", p.name)["status"]["phase"] == "Running"

    # runbook for the wave: estimates from the throughput measured, verify mode said
    book = tmp_path / "book"
    cli("runbook", str(plan_file), "--out", str(book), ok=True)
    text = (book / "wave-1.md").read_text()
    assert "convert measured (compare reads alike)" in text
    assert "| same |" in text and "| edited |" in text and "virsh -c test://" in text

    # rollback of VMs that were off: the targets halt, the sources stay off
    back = cli("rollback", str(plan_file), "--wave", "1", *kube, "-o", "json")
    assert back.exit_code == 0, back.stderr
    for r in json.loads(back.stdout):
        assert r["targetAction"] == "Halted"
        assert r["sourceAction"] == "left shut off (it was off before the cutover)"
    assert all(cluster.get(kubevirt.vmi, "vms", p.name) is None for p in (same, edited))
    statuses = json.loads(cli("status", str(plan_file), "-o", "json", ok=True).stdout)["vms"]
    assert {s["phase"] for s in statuses} == {"rolled back"}


def test_cutover_refuses_bad_selection_and_unstaged_vms(
        cli: Any, tmp_path: Path, s3_server: SeaweedFS, s3_bucket: str,
        s3_env: dict[str, str], cluster: Cluster, kubevirt: KubeVirt) -> None:
    plan_file = scan_and_plan(cli, tmp_path, s3_server, s3_bucket, {"lone": [("vda", "qcow2", 4)]})
    kube = ["--kubeconfig", str(cluster.kubeconfig)]
    bad = cli("cutover", str(plan_file), "--wave", "1", "nosuch", *kube, ok=False)
    assert "no VM 'nosuch' in the plan" in bad.stderr
    bad = cli("cutover", str(plan_file), "--wave", "3", *kube, ok=False)
    assert "no wave 3" in bad.stderr
    bad = cli("cutover", str(plan_file), "--wave", "1", "--at", "soon", *kube, ok=False)
    assert "--at 'soon'" in bad.stderr
    # nothing staged: the preflight says why, and nothing is changed
    result = cli("cutover", str(plan_file), "--wave", "1", *kube, ok=False)
    assert "preflight failed, nothing was changed" in result.stderr
    assert "not applied yet" in result.stderr and "not imported yet" in result.stderr
    plan = load_plan(plan_file)
    with Journal(plan.journal_path) as journal:
        assert journal.get("cutover", f"{plan.wave(1)[0].key}/stop") is None
    status = json.loads(cli("status", str(plan_file), "-o", "json", ok=True).stdout)["vms"][0]
    assert status["state"] == "failed" and status["next"].startswith("nothing was changed")


def test_parse_at() -> None:
    now = datetime.datetime(2025, 5, 1, 22, 30, tzinfo=datetime.timezone.utc)
    assert parse_at("23:15", now) == now.replace(hour=23, minute=15)
    assert parse_at("02:00", now) == datetime.datetime(2025, 5, 2, 2, 0, tzinfo=now.tzinfo)
    assert parse_at("2025-05-03T01:02:03+00:00", now) == datetime.datetime(
        2025, 5, 3, 1, 2, 3, tzinfo=datetime.timezone.utc)
    assert parse_at("2025-05-03T01:02Z", now).tzinfo is not None
    with pytest.raises(UsageError):
        parse_at("tomorrow", now)


def test_estimate_adds_stop_sync_and_boot() -> None:
    from migrate.plan import PlannedVM, VmEntry
    from migrate.core.model import VM, Disk, Source, SourceKind

    vm = VM(name="x", source=Source(SourceKind.LIBVIRT, "qemu:///system"),
            disks=[Disk(target="vda", allocated_size=600 * MIB)])
    p = PlannedVM(vm, VmEntry("x"), 1, "x", "vms")
    nothing = estimate(p, Throughput(), "full")
    assert nothing.total == pytest.approx(DEFAULT_STOP + 6.0 + DEFAULT_BOOT)  # 100 MiB/s
    t = Throughput(convert=Rate("convert", 100 * MIB, 1.0, 1),
                   upload=Rate("upload", 100 * MIB, 2.0, 1), stop_seconds=[4.0, 9.0],
                   boot_seconds=[20.0])
    full = estimate(p, t, "full")  # 1/(1/100 + 1/50) MiB/s = 33.3 MiB/s
    assert full.sync == pytest.approx(18.0) and full.total == pytest.approx(9 + 18 + 20)
    assert estimate(p, t, "verify").sync == pytest.approx(6.0)


AGENT_DOMAIN = """<domain type='kvm'><name>{name}</name><memory>1048576</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='q35'>hvm</type></os><devices>{channel}</devices></domain>"""
AGENT_CHANNEL = ("<channel type='unix'><source mode='bind'/>"
                 "<target type='virtio' name='org.qemu.guest_agent.0'/></channel>")


def test_verify_waits_for_the_guest_agent_when_the_source_had_one(
        cluster: Cluster, kubevirt: KubeVirt) -> None:
    """The guest agent is awaited exactly when the source VM had a QEMU guest agent channel
    (read by the real domain XML parser); a target whose agent never connects fails
    verification with a line that says so."""
    from migrate.pipeline.cutover import has_guest_agent, wait_running
    from migrate.clients.cluster import Kube, KubeOptions
    from migrate.core.model import Source, SourceKind
    from migrate.sources.domxml import parse_domain_xml

    source = Source(SourceKind.DOMAIN_XML, "/dev/null")
    with_agent = parse_domain_xml(AGENT_DOMAIN.format(name="a", channel=AGENT_CHANNEL), source)
    without = parse_domain_xml(AGENT_DOMAIN.format(name="b", channel=""), source)
    assert has_guest_agent(with_agent) and not has_guest_agent(without)

    def start(name: str) -> None:
        cluster.create(VMR, "vms", {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
                                    "metadata": {"name": name, "namespace": "vms"},
                                    "spec": {"runStrategy": "Always"}})

    with Kube(KubeOptions(kubeconfig=str(cluster.kubeconfig))) as kube:
        start("up")
        running = wait_running(kube, "vms", "up", 10, has_guest_agent(with_agent), 0.05)
        assert running["phase"] == "Running" and running["agent"] is True
        kubevirt.agent = False  # from now on VMIs run without their agent connecting
        start("mute")
        with pytest.raises(VmmoveError, match="runs but its guest agent did not connect"):
            wait_running(kube, "vms", "mute", 1.5, has_guest_agent(with_agent), 0.05)
        # a source without the channel does not make verification wait for an agent
        assert wait_running(kube, "vms", "mute", 10, has_guest_agent(without), 0.05)["agent"] \
            is False
