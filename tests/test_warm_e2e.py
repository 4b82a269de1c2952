"""Warm migration end to end on real components: two running TCG guests on the system
libvirtd (one qcow2 disk: bitmap method, one raw disk: hash method), real checkpoints and
backup jobs, the final delta after a real ACPI shutdown, kmock playing the cluster.

scan → plan --warm → stage → sync ×2 (writes between rounds through the running QEMU's
block layer, as a guest's writes go) → cutover → verify (volumes checksum-equal to the
sources, nothing left on the host) → rollback → sync → cutover again; plus the faults a
warm chain meets: a checkpoint deleted behind vmmove's back, a disk resized."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from migrate.clients.checkpoint import PREFIX, plan_tag, scratch_dir
from migrate.plan import load_plan
from migrate.core.journal import DONE
from migrate.pipeline.warm import KIND_WARM
from tests.guest_support import (
    SHUTDOWN_OFFSET,
    SHUTDOWN_TAG,
    Guest,
    KubeVirt,
    boot_guest,
    kubevirt,  # noqa: F401
)
from tests.libvirtd_support import DomainFactory, libvirt_domains  # noqa: F401
from tests.plan_support import VMR, Cluster, Controllers, cluster, controllers  # noqa: F401
from tests.s3_support import SeaweedFS
from tests.workers_support import JOB, SECRET, Kubelet, kubelet  # noqa: F401

pytestmark = pytest.mark.slow
SHUT_OFF = 5
HMP_DISK = "/machine/peripheral/virtio-disk0/virtio-backend"


def write(guest: Guest, command: str) -> None:
    """A write into the running guest's disk through QEMU's block layer (dirty bitmaps
    see it as they see the guest's own writes)."""
    import libvirt_qemu

    said = libvirt_qemu.qemuMonitorCommand(guest.dom, f'qemu-io -d {HMP_DISK} "{command}"',
                                           libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
    assert not said.strip(), said


def checkpoints(guest: Guest) -> list[str]:
    return [c.getName() for c in guest.dom.listAllCheckpoints(0)]


def bitmaps(path: Path) -> list[str]:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)],
                         capture_output=True, text=True, check=True).stdout
    data = (json.loads(out).get("format-specific") or {}).get("data") or {}
    return [b["name"] for b in data.get("bitmaps") or []]


def same(source: Path, fmt: str, volume: Path) -> bool:
    proc = subprocess.run(["qemu-img", "compare", "-U", "-f", fmt, "-F", "raw", str(source),
                           str(volume)], capture_output=True, text=True)
    return proc.returncode == 0


def warm_plan(cli: Any, tmp_path: Path, names: list[str], s3: SeaweedFS, bucket: str,
              stage_with: Cluster | None = None) -> tuple[Path, str]:
    """scan → plan --warm (the guests in one wave, volumes beside the plan) → optionally
    migrate --stage (read while running, as the cold path's copy); the plan file and what
    plan said on stderr."""
    inventory = tmp_path / "inventory.yaml"
    cli("scan", "-c", "qemu:///system", "--output-file", str(inventory), "-o", "json")
    plan_file = tmp_path / "plan.yaml"
    made = cli("plan", str(inventory), "--out", str(plan_file), "-n", "vms", "--s3",
               f"s3://{bucket}/{tmp_path.name}", "--endpoint-url", s3.endpoint, "--by", "list",
               "--wave", ",".join(names), "--warm", "--warm-volumes", "volumes", ok=True)
    if stage_with is not None:
        data = yaml.safe_load(plan_file.read_text())
        data["convert"]["forceShare"] = True
        plan_file.write_text(yaml.safe_dump(data, sort_keys=False))
        staged = cli("migrate", str(plan_file), "--wave", "1", "--stage", "--kubeconfig",
                     str(stage_with.kubeconfig), "-o", "json")
        assert staged.exit_code == 0, staged.stderr
    return plan_file, made.stderr


def test_warm_wave_end_to_end(cli: Any, tmp_path: Path, libvirt_domains: DomainFactory,
                              s3_server: SeaweedFS, s3_bucket: str, s3_env: dict[str, str],
                              cluster: Cluster, controllers: Controllers,
                              kubevirt: KubeVirt) -> None:
    qc = boot_guest(libvirt_domains, "warmq")
    raw = boot_guest(libvirt_domains, "warmr", disk_format="raw")
    # a checkpoint of the domain's own: vmmove must never touch it
    qc.dom.checkpointCreateXML("<domaincheckpoint><name>owner-cp</name></domaincheckpoint>", 0)

    plan_file, said = warm_plan(cli, tmp_path, [qc.name, raw.name], s3_server, s3_bucket,
                                stage_with=cluster)
    assert f"warm {qc.name}/vda: bitmap" in said and f"warm {raw.name}/vda: hash" in said
    kube = ["--kubeconfig", str(cluster.kubeconfig)]
    plan = load_plan(plan_file)
    pq, pr = plan.wave(1)
    tag = plan_tag(plan.workdir)

    # the cutover refuses a warm VM without a round, before stopping anything
    refused = cli("cutover", str(plan_file), "--wave", "1", *kube, "-o", "json")
    assert refused.exit_code != 0 and "without a precopy round" in refused.stderr
    assert qc.state() != SHUT_OFF and raw.state() != SHUT_OFF

    # round 1: full
    r1 = cli("sync", str(plan_file), "--wave", "1", "-o", "json")
    assert r1.exit_code == 0, r1.stderr
    rounds = {r["vm"]: r for r in json.loads(r1.stdout)}
    assert rounds[qc.name]["kind"] == "full" and rounds[raw.name]["kind"] == "full"
    assert rounds[qc.name]["disks"]["vda"]["method"] == "bitmap"
    assert rounds[raw.name]["disks"]["vda"]["method"] == "hash"
    assert checkpoints(qc) == ["owner-cp", f"{PREFIX}{tag}-1"] or \
        sorted(checkpoints(qc)) == sorted(["owner-cp", f"{PREFIX}{tag}-1"])

    # the guests' disks change: 256 KiB at 6 MiB on both
    write(qc, "write -P 0xa1 6M 256k")
    write(raw, "write -P 0xa1 6M 256k")
    r2 = cli("sync", str(plan_file), "--wave", "1", "-o", "json")
    assert r2.exit_code == 0, r2.stderr
    rounds = {r["vm"]: r for r in json.loads(r2.stdout)}
    q2, h2 = rounds[qc.name], rounds[raw.name]
    assert q2["kind"] == "incremental" and h2["kind"] == "incremental"
    # bitmap: the dirty clusters (64 KiB granularity) and nothing like the whole disk
    assert 256 << 10 <= q2["changed"] <= 1 << 20, q2
    # hash: whole disk read; of the 1 MiB block whose hash changed, only the 64 KiB pieces
    # that differ from the volume are written
    assert 256 << 10 <= h2["changed"] <= 1 << 20 and h2["disks"]["vda"]["read"] <= 16 << 20, h2
    assert sorted(checkpoints(qc)) == sorted(["owner-cp", f"{PREFIX}{tag}-2"])

    status = cli("status", str(plan_file), "-o", "json")
    warm = {v["vm"]: v["warm"] for v in json.loads(status.stdout)["vms"]}
    assert warm[qc.name]["rounds"] == 2 and warm[qc.name]["delta"] == q2["changed"]
    assert warm[qc.name]["predicted"] is not None and warm[qc.name]["age"] >= 0

    # the runbook shows the warm timeline: rounds, expected final delta, downtime window
    book = tmp_path / "runbooks"
    cli("runbook", str(plan_file), "--out", str(book), ok=True)
    text = (book / "wave-1.md").read_text()
    assert "## Warm timeline" in text and f"vmmove sync {plan.path} --wave 1" in text
    assert f"| {qc.name} | vda (bitmap) | 2 | round 2 (incremental" in text
    assert f"| {raw.name} | vda (hash) | 2 |" in text
    # its steps come from the warm itinerary, beside the cold one
    assert "3. **Final sync** (warm) — the final delta" in text

    # a write after the last round: the final delta must carry it (and the shutdown marker)
    write(qc, "write -P 0xb2 9M 64k")
    write(raw, "write -P 0xb2 9M 64k")
    cut = cli("cutover", str(plan_file), "--wave", "1", *kube, "--shutdown-timeout", "120",
              "--verify-timeout", "60", "--no-guest-agent", "-o", "json")
    assert cut.exit_code == 0, cut.stderr
    rows = {r["vm"]: r for r in json.loads(cut.stdout)}
    print(f"warm cutover downtime: {rows[qc.name]['downtime']:.1f}s (qcow2), "
          f"{rows[raw.name]['downtime']:.1f}s (raw); full copy "
          f"{rows[qc.name]['fullCopySeconds']:.2f}s / {rows[raw.name]['fullCopySeconds']:.2f}s")
    assert rows[qc.name]["syncMode"] == "warm" and rows[qc.name]["fullCopySeconds"] > 0
    assert qc.state() == SHUT_OFF and raw.state() == SHUT_OFF
    vq = Path(plan.warm.volumes) / "vms" / f"{pq.name}-vda" / "disk.img"
    vr = Path(plan.warm.volumes) / "vms" / f"{pr.name}-vda" / "disk.img"
    assert same(qc.disk, "qcow2", vq) and same(raw.disk, "raw", vr)
    assert SHUTDOWN_TAG in vq.read_bytes()[SHUTDOWN_OFFSET:SHUTDOWN_OFFSET + 64]
    with plan.journal() as journal:
        sync = journal.get("cutover", f"{pq.key}/sync")
        assert sync is not None and sync.status == DONE
        d = sync.data["disks"]["vda"]
        assert d["source_sha256"] == d["volume_sha256"]
        assert 64 << 10 <= (sync.data["disks"]["vda"]["changed"]) <= 2 << 20  # a delta
    # nothing of vmmove's left on the host; the domain's own checkpoint kept
    assert checkpoints(qc) == ["owner-cp"]
    assert bitmaps(qc.disk) == ["owner-cp"]
    assert not scratch_dir(tag, pq.key).exists() and not scratch_dir(tag, pr.key).exists()

    # rollback: the sources run again; the target ran, so the next round must be full
    back = cli("rollback", str(plan_file), "--wave", "1", *kube, "-o", "json")
    assert back.exit_code == 0, back.stderr
    qc.wait_up(count=2)
    raw.wait_up(count=2)
    again = cli("cutover", str(plan_file), "--wave", "1", *kube, "-o", "json")
    assert again.exit_code != 0 and "needs a full round" in again.stderr
    r3 = cli("sync", str(plan_file), "--wave", "1", "-o", "json")
    assert r3.exit_code == 0, r3.stderr
    assert {r["kind"] for r in json.loads(r3.stdout)} == {"full"}
    write(qc, "write -P 0xc3 10M 128k")
    # a volume that went wrong outside the delta: the checksums differ, the target stays off
    with open(vq, "r+b") as fh:
        fh.seek(14 << 20)
        fh.write(b"\x99" * 4096)
    bad = cli("cutover", str(plan_file), "--wave", "1", *kube, "--shutdown-timeout", "120",
              "--verify-timeout", "60", "--no-guest-agent", "-o", "json")
    assert bad.exit_code != 0 and "guest-visible checksum" in bad.stderr
    assert "target was NOT started" in bad.stderr and "vmmove rollback" in bad.stderr
    vm = cluster.get(VMR, "vms", pq.name)
    assert vm is not None and vm["spec"]["runStrategy"] == "Halted"
    assert cli("rollback", str(plan_file), "--wave", "1", *kube).exit_code == 0
    qc.wait_up(count=3)
    raw.wait_up(count=3)
    full = cli("sync", str(plan_file), "--wave", "1", "--full", "-o", "json")
    assert full.exit_code == 0, full.stderr
    cut2 = cli("cutover", str(plan_file), "--wave", "1", *kube, "--shutdown-timeout", "120",
               "--verify-timeout", "60", "--no-guest-agent", "-o", "json")
    assert cut2.exit_code == 0, cut2.stderr
    assert same(qc.disk, "qcow2", vq) and same(raw.disk, "raw", vr)
    assert checkpoints(qc) == ["owner-cp"]
    with plan.journal() as journal:
        history = [h["status"] for h in journal.history(KIND_WARM)
                   if h["item"].startswith(pq.key + "/round/")]
        assert history.count("done") == 4
        cut_history = [h["item"].rsplit("/", 1)[-1] for h in journal.history("cutover")
                       if h["item"].startswith(pq.key + "/") and h["status"] == DONE]
        assert cut_history.count("sync") == 2 and cut_history.count("verify") == 2


def test_warm_faults(cli: Any, tmp_path: Path, libvirt_domains: DomainFactory,
                     s3_server: SeaweedFS, s3_bucket: str, s3_env: dict[str, str],
                     cluster: Cluster, controllers: Controllers) -> None:
    """A checkpoint deleted behind vmmove's back means a full round; a lost bitmap too; a
    host reboot (clean shutdown and start) keeps the chain; a disk resized between rounds
    is refused with the remedy; vmmove clean leaves only the domain's own checkpoint."""
    qc = boot_guest(libvirt_domains, "warmf")
    plan_file, _ = warm_plan(cli, tmp_path, [qc.name], s3_server, s3_bucket)
    plan = load_plan(plan_file)
    tag = plan_tag(plan.workdir)
    ok = cli("sync", str(plan_file), "--wave", "1", "-o", "json")
    assert ok.exit_code == 0, ok.stderr
    # deleted behind vmmove's back
    qc.dom.checkpointLookupByName(f"{PREFIX}{tag}-1", 0).delete(0)
    write(qc, "write -P 0xd4 7M 64k")
    r = cli("sync", str(plan_file), "--wave", "1", "-o", "json")
    assert r.exit_code == 0, r.stderr
    (row,) = json.loads(r.stdout)
    assert row["kind"] == "full" and "gone from the host" in row["disks"]["vda"]["reason"]
    assert f"{PREFIX}{tag}-2" in checkpoints(qc)
    # the host lost the bitmap (the checkpoint's metadata is still there): a full round
    import libvirt_qemu

    libvirt_qemu.qemuMonitorCommand(qc.dom, json.dumps({
        "execute": "block-dirty-bitmap-remove",
        "arguments": {"node": "libvirt-1-format", "name": f"{PREFIX}{tag}-2"}}), 0)
    lost = cli("sync", str(plan_file), "--wave", "1", "-o", "json")
    assert lost.exit_code == 0, lost.stderr
    (row,) = json.loads(lost.stdout)
    assert row["kind"] == "full" and "lost" in row["disks"]["vda"]["reason"], row
    # the host rebooted (a clean shutdown, then started): the bitmap persisted in the qcow2
    qc.dom.shutdown()
    for _ in range(600):
        if qc.state() == SHUT_OFF:
            break
        time.sleep(0.1)
    qc.dom.create()
    qc.wait_up(count=2)
    write(qc, "write -P 0xd5 11M 64k")
    again = cli("sync", str(plan_file), "--wave", "1", "-o", "json")
    assert again.exit_code == 0, again.stderr
    (row,) = json.loads(again.stdout)
    assert row["kind"] == "incremental" and row["changed"] < 4 << 20, row
    assert checkpoints(qc) == [f"{PREFIX}{tag}-4"]
    # resized between rounds: refused, with the remedy, nothing changed on the chain
    qc.dom.blockResize("vda", 32 << 20, 1)  # VIR_DOMAIN_BLOCK_RESIZE_BYTES
    bad = cli("sync", str(plan_file), "--wave", "1", "-o", "json")
    assert bad.exit_code != 0
    assert "resized from 16777216 to 33554432" in bad.stdout and "--full" in bad.stdout  # in its row
    assert f"{PREFIX}{tag}-4" in checkpoints(qc)
    status = cli("status", str(plan_file), "-o", "json")
    (vm,) = json.loads(status.stdout)["vms"]
    assert vm["state"] == "failed" and "resized" in vm["error"]
    # vmmove clean removes what vmmove left on the host (the domain's own checkpoint stays)
    qc.dom.checkpointCreateXML("<domaincheckpoint><name>owner-cp</name></domaincheckpoint>", 0)
    cleaned = cli("clean", str(plan_file), "--wave", "1", "--force", "--images", "-o", "json")
    assert cleaned.exit_code == 0, cleaned.stderr
    rows = json.loads(cleaned.stdout)
    assert any(r["what"] == "host" and f"{PREFIX}{tag}-" in r["where"] for r in rows), rows
    assert checkpoints(qc) == ["owner-cp"]
    assert not scratch_dir(tag, plan.wave(1)[0].key).exists()


def test_warm_killed_during_round_and_final_delta(
        cli: Any, tmp_path: Path, libvirt_domains: DomainFactory, s3_server: SeaweedFS,
        s3_bucket: str, s3_env: dict[str, str], cluster: Cluster, controllers: Controllers,
        kubevirt: KubeVirt) -> None:
    """SIGKILL inside a round (job running, its checkpoint made), of the qemu-nbd serving
    the final delta's bitmap, and of vmmove inside the final delta (source down): one line
    for the export's end; each rerun resumes, the chain stays consistent, the volume ends
    equal to the source, nothing is left on the host."""
    from tests.s3_support import subprocess_env
    from tests.test_cutover_faults import fault_while_paused, run_until_pause

    qc = boot_guest(libvirt_domains, "warmk")
    plan_file, _ = warm_plan(cli, tmp_path, [qc.name], s3_server, s3_bucket,
                             stage_with=cluster)
    kube = ["--kubeconfig", str(cluster.kubeconfig)]
    plan = load_plan(plan_file)
    (p,) = plan.wave(1)
    tag = plan_tag(plan.workdir)
    assert cli("sync", str(plan_file), "--wave", "1").exit_code == 0
    env = subprocess_env(s3_env)
    vmmove = [sys.executable, "-c", "from migrate.cli import run; run()"]

    write(qc, "write -P 0xe5 6M 128k")
    run_until_pause([*vmmove, "sync", str(plan_file), "--wave", "1"], env, "warm:round",
                    tmp_path / "kill1.log")
    assert f"{PREFIX}{tag}-2" in checkpoints(qc)  # made with the killed job
    with plan.journal() as journal:
        assert journal.get(KIND_WARM, p.key).data["checkpoint"] == f"{PREFIX}{tag}-1"
    rerun = cli("sync", str(plan_file), "--wave", "1", "-o", "json")
    assert rerun.exit_code == 0, rerun.stderr
    (row,) = json.loads(rerun.stdout)
    assert row["round"] == 2 and row["kind"] == "incremental" and row["changed"] >= 128 << 10
    assert sorted(c for c in checkpoints(qc) if c.startswith(PREFIX)) == [f"{PREFIX}{tag}-2"]

    write(qc, "write -P 0xf6 8M 64k")
    # the qemu-nbd serving the bitmap dies under the final delta: one line, no traceback
    # (a broken pipe once made click exit 1 without a word), the target never started
    def kill_export() -> None:
        (pid_file,) = scratch_dir(tag, p.key).glob("*.pid")
        os.kill(int(pid_file.read_text()), signal.SIGKILL)

    said = fault_while_paused(["cutover", str(plan_file), "--wave", "1", *kube,
                               "--no-guest-agent"], env, "warm:final", tmp_path, kill_export)
    errors = [ln for ln in said if ln.startswith("vmmove: error:")]  # the VM, the summary
    assert len(errors) == 2 and "Traceback" not in "\n".join(said), said
    assert f"{qc.name}/vda: the final delta failed: nbd+unix:///vda?socket=" in errors[0], said
    assert ": the server closed the connection; rerun vmmove cutover" in errors[0] or \
        ": connection reset; rerun vmmove cutover" in errors[0], said
    assert "source is STOPPED" in errors[0], said
    assert cluster.get(VMR, "vms", p.name)["spec"]["runStrategy"] == "Halted"
    run_until_pause([*vmmove, "cutover", str(plan_file), "--wave", "1", *kube,
                     "--no-guest-agent"], env, "warm:final", tmp_path / "kill2.log")
    assert qc.state() == SHUT_OFF
    done = cli("cutover", str(plan_file), "--wave", "1", *kube, "--no-guest-agent",
               "-o", "json")
    assert done.exit_code == 0, done.stderr
    vol = Path(plan.warm.volumes) / "vms" / f"{p.name}-vda" / "disk.img"
    assert same(qc.disk, "qcow2", vol)
    assert not [c for c in checkpoints(qc) if c.startswith(PREFIX)]
    assert not [b for b in bitmaps(qc.disk) if b.startswith(PREFIX)]
    assert not scratch_dir(tag, p.key).exists()
    leftovers = subprocess.run(["pgrep", "-f", str(scratch_dir(tag, p.key))],
                               capture_output=True, text=True).stdout
    assert not leftovers.strip()


@pytest.mark.parametrize("writer", ["worker", "s3"])
def test_warm_rounds_written_by_worker_jobs(
        cli: Any, tmp_path: Path, libvirt_domains: DomainFactory, s3_server: SeaweedFS,
        s3_bucket: str, s3_env: dict[str, str], cluster: Cluster, controllers: Controllers,
        kubevirt: KubeVirt, kubelet: Kubelet, writer: str) -> None:
    """warm.writer worker: every round's delta (and the final one, verified) is written
    into the PVC by `vmmove worker` run from a Job (the test kubelet runs it in a mount
    namespace), reading this host's TLS export; the VM stays Halted meanwhile.
    warm.writer s3: the delta goes to S3 as a qcow2 of the changed clusters, and the
    Job's worker merges it (qemu-img rebase -u, commit) from a presigned URL."""
    qc = boot_guest(libvirt_domains, "warmw")
    raw = boot_guest(libvirt_domains, "warmv", disk_format="raw")
    plan_file, _ = warm_plan(cli, tmp_path, [qc.name, raw.name], s3_server, s3_bucket,
                             stage_with=cluster)
    data = yaml.safe_load(plan_file.read_text())
    data["warm"]["writer"] = writer
    plan_file.write_text(yaml.safe_dump(data, sort_keys=False))
    plan = load_plan(plan_file)
    pq, pr = plan.wave(1)
    kube = ["--kubeconfig", str(cluster.kubeconfig)]
    pvc_q = kubelet.pvc(f"{pq.name}-vda") / "disk.img"
    pvc_r = kubelet.pvc(f"{pr.name}-vda") / "disk.img"

    r1 = cli("sync", str(plan_file), "--wave", "1", *kube, "-o", "json")
    assert r1.exit_code == 0, r1.stderr
    rounds = {r["vm"]: r for r in json.loads(r1.stdout)}
    assert {r["kind"] for r in rounds.values()} == {"full"}
    assert rounds[qc.name]["disks"]["vda"]["writer"] == writer
    if writer == "worker":
        assert rounds[qc.name]["disks"]["vda"]["read"] == 0  # no data through vmmove
    assert same(qc.disk, "qcow2", pvc_q) and same(raw.disk, "raw", pvc_r)

    write(qc, "write -P 0x71 6M 256k")
    write(raw, "write -P 0x71 6M 256k")
    r2 = cli("sync", str(plan_file), "--wave", "1", *kube, "-o", "json")
    assert r2.exit_code == 0, r2.stderr
    rounds = {r["vm"]: r for r in json.loads(r2.stdout)}
    assert {r["kind"] for r in rounds.values()} == {"incremental"}
    assert 256 << 10 <= rounds[qc.name]["changed"] <= 2 << 20
    # worker: the MiB compared with the volume, its four changed 64 KiB pieces written;
    # s3: the MiB whose hash changed, whole, as a qcow2 delta's clusters
    assert rounds[raw.name]["changed"] == (256 << 10 if writer == "worker" else 1 << 20)
    for pvc in (pvc_q, pvc_r):  # (a running qcow2's metadata may still sit in QEMU's cache)
        with open(pvc, "rb") as fh:
            fh.seek(6 << 20)
            assert fh.read(256 << 10) == b"\x71" * (256 << 10)
    assert same(raw.disk, "raw", pvc_r)

    write(qc, "write -P 0x72 9M 64k")
    cut = cli("cutover", str(plan_file), "--wave", "1", *kube, "--shutdown-timeout", "120",
              "--verify-timeout", "60", "--no-guest-agent", "-o", "json")
    assert cut.exit_code == 0, cut.stderr
    assert same(qc.disk, "qcow2", pvc_q) and same(raw.disk, "raw", pvc_r)
    with plan.journal() as journal:
        sync = journal.get("cutover", f"{pq.key}/sync")
        assert sync is not None and sync.data["mode"] == "warm"
        vda = sync.data["disks"]["vda"]
        assert vda["volume_sha256"].startswith("xxh3-1m:")  # (the form changed, issue 17)
        if writer == "s3":  # vmmove compared the source with what the worker reported
            assert vda["source_sha256"] == vda["volume_sha256"]
    if writer == "s3":  # no delta left in the bucket
        import boto3

        client = boto3.client("s3", endpoint_url=s3_server.endpoint)
        left = client.list_objects_v2(Bucket=s3_bucket, Prefix=f"{tmp_path.name}/warm/")
        assert left.get("KeyCount", 0) == 0, left
    assert not cluster.objects(JOB) and not [
        n for (_ns, n) in cluster.objects(SECRET) if n.startswith(("vmmove-warm-",
                                                                   "vmmove-merge-"))]
    assert not [c for c in checkpoints(qc) if c.startswith(PREFIX)]
