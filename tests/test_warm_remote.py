"""Warm migration of a VM on a remote KVM host, reached only as ``qemu+ssh://``.

Real components: sshd on loopback (tests/sshd_support.py), the system libvirtd behind it,
a running TCG guest on a qcow2 disk, libvirt checkpoints and pull backup jobs created over
the remote connection, the job's NBD export forwarded through SSH and its
``qemu:dirty-bitmap:`` context read over that forwarding, the final delta from the
persistent bitmap by ``qemu-nbd -B`` run on the host after a real ACPI shutdown; SeaweedFS
and kmock play storage and the cluster.  vmmove is only given the ``qemu+ssh://`` URI; the
test itself writes into the guest's disk through the local libvirt connection (as the
guest's own writes would go) and looks at the host's files directly.

Flow: scan → plan --warm → stage → sync (full) → guest writes → sync (incremental, delta ≈
the bytes written) → cutover (final delta) → volume equal to the source by ``qemu-img
compare`` → nothing of vmmove's left on the host.  Faults: the SSH connection cut during a
round or during the final delta, the host's ``qemu-nbd`` or vmmove itself killed during
the final delta → one clear line, and the rerun resumes; a bitmap or checkpoint lost on
the stopped host → the final delta copies the whole disk and says why.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from migrate.clients.checkpoint import PREFIX, plan_tag, scratch_dir
from migrate.plan import load_plan
from migrate.core.journal import DONE
from migrate.pipeline.warm import KIND_WARM
from tests.guest_support import SHUTDOWN_OFFSET, SHUTDOWN_TAG, KubeVirt, boot_guest, kubevirt  # noqa: F401
from tests.libvirtd_support import DomainFactory, libvirt_domains  # noqa: F401
from tests.plan_support import Cluster, Controllers, cluster, controllers  # noqa: F401
from tests.s3_support import SeaweedFS
from tests.sshd_support import Sshd, host_tmp  # noqa: F401
from tests.test_cutover_faults import fault_while_paused, run_until_pause
from tests.test_remote_read import remote_uri
from tests.test_warm_e2e import SHUT_OFF, bitmaps, checkpoints, same, write
from tests.workers_support import JOB, SECRET, Kubelet, kubelet  # noqa: F401

pytestmark = [pytest.mark.libvirtd, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _host_tmp(host_tmp: Path) -> Iterator[Path]:
    yield host_tmp
    assert [p.name for p in host_tmp.iterdir()] == []  # nothing left on the "host"


def remote_warm_plan(cli: Any, tmp: Path, sshd: Sshd, name: str, s3: SeaweedFS, bucket: str,
                     cluster: Cluster, *others: str) -> Path:
    """scan qemu+ssh:// → plan --warm (volumes beside the plan) → migrate --stage."""
    inventory = tmp / "inventory.yaml"
    cli("scan", "-c", remote_uri(sshd), "--output-file", str(inventory), "-o", "json", ok=True)
    plan_file = tmp / "plan.yaml"
    made = cli("plan", str(inventory), "--out", str(plan_file), "-n", "vms", "--s3",
               f"s3://{bucket}/{tmp.name}", "--endpoint-url", s3.endpoint, "--by", "list",
               "--wave", ",".join([name, *others]), "--warm", "--warm-volumes", "volumes",
               ok=True)
    assert f"warm {name}/vda: bitmap" in made.stderr
    assert load_plan(plan_file).wave(1)[0].vm.source.location.startswith("qemu+ssh://")
    staged = cli("migrate", str(plan_file), "--wave", "1", "--stage", "--kubeconfig",
                 str(cluster.kubeconfig), "-o", "json")
    assert staged.exit_code == 0, staged.stderr
    return plan_file


def host_leftovers(host_tmp: Path, tag: str) -> list[str]:
    """vmmove's folders on the "host", and any qemu-nbd still serving from them."""
    names = [p.name for p in host_tmp.iterdir()]
    procs = subprocess.run(["pgrep", "-af", f"qemu-nbd.*{host_tmp}"], capture_output=True,
                           text=True).stdout.strip()
    return names + ([procs] if procs else [])


def cut_ssh_while_paused(sshd: Sshd, args: list[str], env: dict[str, str], point: str,
                         tmp: Path, ready: Callable[[], bool], hold: bool = False) -> list[str]:
    """:func:`fault_while_paused` whose fault is a network cut: ``ready()`` checked, every
    SSH session of ``sshd`` killed (libvirt's tunnel and the NBD forwardings).  ``hold``:
    the network stays down until the child has ended (the listener stopped: no new
    connection gets an answer either)."""
    def cut() -> None:
        assert ready()
        if hold:
            os.kill(sshd.proc.pid, signal.SIGSTOP)
        assert sshd.drop_connections() >= 2  # libvirt's tunnel and the NBD forwarding

    try:
        return fault_while_paused(args, env, point, tmp, cut)
    finally:
        if hold:
            os.kill(sshd.proc.pid, signal.SIGCONT)

def test_warm_remote_host_end_to_end(cli: Any, tmp_path: Path, sshd: Sshd,
                                     _host_tmp: Path, libvirt_domains: DomainFactory,
                                     s3_server: SeaweedFS, s3_bucket: str,
                                     s3_env: dict[str, str], cluster: Cluster,
                                     controllers: Controllers, kubevirt: KubeVirt) -> None:
    qc = boot_guest(libvirt_domains, "wrem", disk_mib=32)
    raw = boot_guest(libvirt_domains, "wrer", disk_format="raw")  # the hash method
    # a checkpoint of the domain's own: vmmove must never touch it
    qc.dom.checkpointCreateXML("<domaincheckpoint><name>owner-cp</name></domaincheckpoint>", 0)
    plan_file = remote_warm_plan(cli, tmp_path, sshd, qc.name, s3_server, s3_bucket, cluster,
                                 raw.name)
    plan = load_plan(plan_file)
    p, pr = plan.wave(1)
    tag = plan_tag(plan.workdir)
    kube = ["--kubeconfig", str(cluster.kubeconfig)]

    r1 = cli("sync", str(plan_file), "--wave", "1", "-o", "json")
    assert r1.exit_code == 0, r1.stderr
    row, hrow = json.loads(r1.stdout)
    assert row["kind"] == "full" and row["disks"]["vda"]["method"] == "bitmap"
    assert hrow["kind"] == "full" and hrow["disks"]["vda"]["method"] == "hash"
    full_bytes = row["changed"]
    assert full_bytes >= 1 << 20  # the guest's data (1 MiB at 4 MiB, markers)
    assert sorted(checkpoints(qc)) == sorted(["owner-cp", f"{PREFIX}{tag}-1"])
    assert host_leftovers(_host_tmp, tag) == []  # between rounds: only the checkpoint

    # the guest writes a pattern: the next round carries about those bytes
    write(qc, "write -P 0xa7 6M 384k")
    write(raw, "write -P 0xa7 6M 384k")
    r2 = cli("sync", str(plan_file), "--wave", "1", "-o", "json")
    assert r2.exit_code == 0, r2.stderr
    row, hrow = json.loads(r2.stdout)
    # hash: the whole disk read through the forwarded export; of the changed MiB only the
    # 64 KiB pieces that differ from the volume are written (384 KiB)
    assert hrow["kind"] == "incremental" and 384 << 10 <= hrow["changed"] <= 1 << 20, hrow
    assert hrow["disks"]["vda"]["read"] <= 16 << 20
    print(f"remote warm: full round {full_bytes} B, incremental round {row['changed']} B "
          f"for 384 KiB written, {row['seconds']:.2f}s")
    assert row["kind"] == "incremental" and row["round"] == 2
    assert 384 << 10 <= row["changed"] <= 1 << 20, row  # 64 KiB bitmap granularity
    vol = Path(plan.warm.volumes) / "vms" / f"{p.name}-vda" / "disk.img"
    with open(vol, "rb") as fh:
        fh.seek(6 << 20)
        assert fh.read(384 << 10) == b"\xa7" * (384 << 10)
    assert sorted(checkpoints(qc)) == sorted(["owner-cp", f"{PREFIX}{tag}-2"])

    # after the last round: the final delta must carry this and the shutdown marker
    write(qc, "write -P 0xb8 9M 64k")
    write(raw, "write -P 0xb8 9M 64k")
    cut = cli("cutover", str(plan_file), "--wave", "1", *kube, "--shutdown-timeout", "120",
              "--verify-timeout", "60", "--no-guest-agent", "-o", "json")
    assert cut.exit_code == 0, cut.stderr
    crow, hcrow = json.loads(cut.stdout)
    assert crow["syncMode"] == "warm" and hcrow["syncMode"] == "warm"
    print(f"remote warm cutover downtime {crow['downtime']:.1f}s (qcow2), "
          f"{hcrow['downtime']:.1f}s (raw); full copy {crow['fullCopySeconds']:.2f}s")
    assert qc.state() == SHUT_OFF and raw.state() == SHUT_OFF
    assert same(qc.disk, "qcow2", vol)
    assert same(raw.disk, "raw", Path(plan.warm.volumes) / "vms" / f"{pr.name}-vda" / "disk.img")
    assert SHUTDOWN_TAG in vol.read_bytes()[SHUTDOWN_OFFSET:SHUTDOWN_OFFSET + 64]
    with plan.journal() as journal:
        print("cutover steps (s): " + ", ".join(
            f"{s.item.rsplit('/', 1)[-1]} {(s.finished or 0) - (s.started or 0):.1f}"
            for s in journal.steps("cutover", prefix=f"{p.key}/")))
        sync = journal.get("cutover", f"{p.key}/sync")
        assert sync is not None and sync.status == DONE
        vda = sync.data["disks"]["vda"]
        assert vda["source_sha256"] == vda["volume_sha256"]
        assert not vda["full"] and 64 << 10 <= vda["changed"] <= 2 << 20  # a delta
    # nothing of vmmove's on the host: no checkpoint, no bitmap, no scratch, no qemu-nbd
    assert checkpoints(qc) == ["owner-cp"]
    assert bitmaps(qc.disk) == ["owner-cp"]
    assert host_leftovers(_host_tmp, tag) == []
    assert not scratch_dir(tag, p.key).exists()  # and nothing on this machine's side
    assert not scratch_dir(tag, pr.key).exists()


def test_warm_remote_ssh_cut_during_a_round(cli: Any, tmp_path: Path, sshd: Sshd,
                                            _host_tmp: Path, libvirt_domains: DomainFactory,
                                            s3_server: SeaweedFS, s3_bucket: str,
                                            s3_env: dict[str, str], cluster: Cluster,
                                            controllers: Controllers) -> None:
    """The SSH connection is cut while a round's job runs (its checkpoint made, its export
    forwarded): one line naming the cut; the rerun ends the stale job, drops the stale
    checkpoint and runs the round again from the journal's checkpoint; clean leaves the
    host as it was."""
    from tests.s3_support import subprocess_env

    qc = boot_guest(libvirt_domains, "wcut")
    plan_file = remote_warm_plan(cli, tmp_path, sshd, qc.name, s3_server, s3_bucket, cluster)
    plan = load_plan(plan_file)
    (p,) = plan.wave(1)
    tag = plan_tag(plan.workdir)
    assert cli("sync", str(plan_file), "--wave", "1").exit_code == 0
    write(qc, "write -P 0xc9 5M 128k")

    said = cut_ssh_while_paused(
        sshd, ["sync", str(plan_file), "--wave", "1"], subprocess_env(s3_env), "warm:round",
        tmp_path, lambda: checkpoints(qc).count(f"{PREFIX}{tag}-2") == 1)  # made over SSH
    errors = [ln for ln in said if qc.name in ln]  # (then sync's summary line)
    assert len(errors) == 1 and len(said) == 2, said
    assert f"{qc.name}: the SSH connection to root@127.0.0.1:{sshd.port} was lost during " \
           "round 2; rerun vmmove sync" in errors[0], errors
    with plan.journal() as journal:
        state = journal.get(KIND_WARM, p.key)
        assert state is not None and state.data["checkpoint"] == f"{PREFIX}{tag}-1"
        assert journal.get(KIND_WARM, f"{p.key}/round/2").status == "failed"

    rerun = cli("sync", str(plan_file), "--wave", "1", "-o", "json")
    assert rerun.exit_code == 0, rerun.stderr
    (row,) = json.loads(rerun.stdout)
    # resumed from checkpoint 1: incremental, carrying the write made before the cut
    assert row["round"] == 2 and row["kind"] == "incremental", row
    assert 128 << 10 <= row["changed"] <= 1 << 20, row
    assert sorted(c for c in checkpoints(qc) if c.startswith(PREFIX)) == [f"{PREFIX}{tag}-2"]
    vol = Path(plan.warm.volumes) / "vms" / f"{p.name}-vda" / "disk.img"
    with open(vol, "rb") as fh:
        fh.seek(5 << 20)
        assert fh.read(128 << 10) == b"\xc9" * (128 << 10)

    cleaned = cli("clean", str(plan_file), "--wave", "1", "--force", "--images", "-o", "json")
    assert cleaned.exit_code == 0, cleaned.stderr
    assert checkpoints(qc) == [] and not [b for b in bitmaps(qc.disk) if b.startswith(PREFIX)]
    assert host_leftovers(_host_tmp, tag) == []


def test_warm_remote_rounds_written_by_worker_jobs(
        cli: Any, tmp_path: Path, sshd: Sshd, _host_tmp: Path, libvirt_domains: DomainFactory,
        s3_server: SeaweedFS, s3_bucket: str, s3_env: dict[str, str], cluster: Cluster,
        controllers: Controllers, kubevirt: KubeVirt, kubelet: Kubelet) -> None:
    """warm.writer worker (direct mode): each round's delta goes from the host's TLS-PSK
    re-export of its backup job (the final one: of ``qemu-nbd -B`` on the host) straight
    into the PVC by a worker Job; the PSK only in a Secret and a 0600 file on the host."""
    qc = boot_guest(libvirt_domains, "wrwk")
    plan_file = remote_warm_plan(cli, tmp_path, sshd, qc.name, s3_server, s3_bucket, cluster)
    data = yaml.safe_load(plan_file.read_text())
    data["warm"]["writer"] = "worker"
    plan_file.write_text(yaml.safe_dump(data, sort_keys=False))
    plan = load_plan(plan_file)
    (p,) = plan.wave(1)
    kube = ["--kubeconfig", str(cluster.kubeconfig)]
    pvc = kubelet.pvc(f"{p.name}-vda") / "disk.img"
    urls: list[str] = []
    psks: list[str] = []
    modes: list[int] = []

    def record(ns: str, job: str) -> None:
        import base64

        body = cluster.get(JOB, ns, job)
        urls.append(body["spec"]["template"]["spec"]["containers"][0]["args"][1])
        secret = body["spec"]["template"]["spec"]["volumes"][1]["secret"]["secretName"]
        psk = base64.b64decode(cluster.get(SECRET, ns, secret)["data"]["keys.psk"]).decode()
        psks.append(psk.split(":", 1)[1].strip())
        assert psks[-1] not in json.dumps(body)
        # on the host: the key in a 0600 file of vmmove's folder, in no process's argv
        modes.extend(f.stat().st_mode & 0o777 for f in _host_tmp.rglob("keys.psk"))
        procs = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert psks[-1] not in procs

    kubelet.before_start = record

    r1 = cli("sync", str(plan_file), "--wave", "1", *kube, "-o", "json")
    assert r1.exit_code == 0, r1.stderr
    (row,) = json.loads(r1.stdout)
    assert row["kind"] == "full" and row["disks"]["vda"]["writer"] == "worker"
    assert row["disks"]["vda"]["read"] == 0  # no data through vmmove
    assert urls and urls[-1].startswith("nbds://vmmove@127.0.0.1:")
    write(qc, "write -P 0x5c 6M 256k")
    r2 = cli("sync", str(plan_file), "--wave", "1", *kube, "-o", "json")
    assert r2.exit_code == 0, r2.stderr
    (row,) = json.loads(r2.stdout)
    assert row["kind"] == "incremental" and 256 << 10 <= row["changed"] <= 2 << 20, row
    with open(pvc, "rb") as fh:
        fh.seek(6 << 20)
        assert fh.read(256 << 10) == b"\x5c" * (256 << 10)

    write(qc, "write -P 0x5d 9M 64k")
    cut = cli("cutover", str(plan_file), "--wave", "1", *kube, "--shutdown-timeout", "120",
              "--verify-timeout", "60", "--no-guest-agent", "-o", "json")
    assert cut.exit_code == 0, cut.stderr
    assert same(qc.disk, "qcow2", pvc)
    assert len(psks) == 3 and modes and set(modes) == {0o600}
    for said in (r1.stderr, r2.stderr, cut.stderr):
        assert not any(psk in said for psk in psks)
    assert not cluster.objects(JOB) and not [
        n for (_ns, n) in cluster.objects(SECRET) if n.startswith("vmmove-warm-")]
    assert not [c for c in checkpoints(qc) if c.startswith(PREFIX)]
    assert not [b for b in bitmaps(qc.disk) if b.startswith(PREFIX)]


def cutover_args(plan_file: Path, cluster: Cluster) -> list[str]:
    return ["cutover", str(plan_file), "--wave", "1", "--kubeconfig", str(cluster.kubeconfig),
            "--shutdown-timeout", "120", "--verify-timeout", "60", "--no-guest-agent"]


def cut_over_and_clean(qc: Any, vol: Path, host_tmp: Path, tag: str) -> None:
    """The end state of a finished remote warm cutover: the volume equal to the source
    (``qemu-img compare``), no vmmove checkpoint or bitmap, no scratch folder, no
    qemu-nbd of vmmove's on the host."""
    assert qc.state() == SHUT_OFF
    assert same(qc.disk, "qcow2", vol)
    assert not [c for c in checkpoints(qc) if c.startswith(PREFIX)]
    assert not [b for b in bitmaps(qc.disk) if b.startswith(PREFIX)]
    assert host_leftovers(host_tmp, tag) == []


def test_warm_remote_ssh_cut_during_the_final_delta(
        cli: Any, tmp_path: Path, sshd: Sshd, _host_tmp: Path, libvirt_domains: DomainFactory,
        s3_server: SeaweedFS, s3_bucket: str, s3_env: dict[str, str], cluster: Cluster,
        controllers: Controllers, kubevirt: KubeVirt) -> None:
    """The network to the host goes down while the cutover's final delta reads the
    stopped disk (``qemu-nbd -B`` on the host, forwarded here), the source already shut
    down: one line naming the cut and the rerun, the target never started, the export
    left serving on the host; the rerun of ``vmmove cutover`` stops it, exports again and
    ends with the volume equal to the source and nothing of vmmove's on the host."""
    from tests.plan_support import VMR
    from tests.s3_support import subprocess_env

    qc = boot_guest(libvirt_domains, "wfcut")
    plan_file = remote_warm_plan(cli, tmp_path, sshd, qc.name, s3_server, s3_bucket, cluster)
    plan = load_plan(plan_file)
    (p,) = plan.wave(1)
    tag = plan_tag(plan.workdir)
    assert cli("sync", str(plan_file), "--wave", "1").exit_code == 0
    write(qc, "write -P 0x3c 7M 192k")  # after the last round: the final delta carries it

    said = cut_ssh_while_paused(sshd, cutover_args(plan_file, cluster),
                                subprocess_env(s3_env), "warm:final", tmp_path,
                                lambda: qc.state() == SHUT_OFF,  # inside the downtime
                                hold=True)  # nothing can be stopped on the host either
    errors = [ln for ln in said if ln.startswith("vmmove: error:")]  # the VM, the summary
    assert len(errors) == 2 and sum("SSH connection" in ln for ln in said) == 1, said
    assert f"{qc.name}: the SSH connection to root@127.0.0.1:{sshd.port} was lost during " \
           f"the final delta; rerun vmmove cutover (it resumes from checkpoint {PREFIX}" \
           f"{tag}-1)" in errors[0], errors
    assert "Traceback" not in "\n".join(said)
    vm = cluster.get(VMR, "vms", p.name)
    assert vm is not None and vm["spec"]["runStrategy"] == "Halted"  # never started
    with plan.journal() as journal:
        step = journal.get("cutover", f"{p.key}/sync")
        assert step is not None and step.status == "failed"
        assert journal.get("cutover", f"{p.key}/start") is None
    left = host_leftovers(_host_tmp, tag)
    assert any("qemu-nbd" in x and "--bitmap=" in x for x in left), left  # still serving

    done = cli(*cutover_args(plan_file, cluster), "-o", "json")
    assert done.exit_code == 0, done.stderr
    (row,) = json.loads(done.stdout)
    assert row["syncMode"] == "warm"
    vol = Path(plan.warm.volumes) / "vms" / f"{p.name}-vda" / "disk.img"
    cut_over_and_clean(qc, vol, _host_tmp, tag)
    with open(vol, "rb") as fh:
        fh.seek(7 << 20)
        assert fh.read(192 << 10) == b"\x3c" * (192 << 10)


def test_warm_remote_killed_during_the_final_delta(
        cli: Any, tmp_path: Path, sshd: Sshd, _host_tmp: Path, libvirt_domains: DomainFactory,
        s3_server: SeaweedFS, s3_bucket: str, s3_env: dict[str, str], cluster: Cluster,
        controllers: Controllers, kubevirt: KubeVirt) -> None:
    """The host's ``qemu-nbd -B`` killed under the final delta: one line, the target
    never started.  Then SIGKILL of vmmove while the rerun's final delta reads the disk
    leaves ``qemu-nbd -B`` serving on the host (it holds the image); the next rerun of
    ``vmmove cutover`` stops it, exports again, and ends with the volume equal to the
    source and nothing of vmmove's on the host."""
    from tests.plan_support import VMR
    from tests.s3_support import subprocess_env

    qc = boot_guest(libvirt_domains, "wfkill")
    plan_file = remote_warm_plan(cli, tmp_path, sshd, qc.name, s3_server, s3_bucket, cluster)
    plan = load_plan(plan_file)
    (p,) = plan.wave(1)
    tag = plan_tag(plan.workdir)
    assert cli("sync", str(plan_file), "--wave", "1").exit_code == 0
    write(qc, "write -P 0x4d 5M 128k")

    def kill_host_export() -> None:
        (pid_file,) = _host_tmp.rglob("qemu-nbd.pid")
        os.kill(int(pid_file.read_text()), signal.SIGKILL)

    said = fault_while_paused(cutover_args(plan_file, cluster), subprocess_env(s3_env),
                              "warm:final", tmp_path, kill_host_export)
    errors = [ln for ln in said if ln.startswith("vmmove: error:")]  # the VM, the summary
    assert len(errors) == 2 and errors[0].startswith(
        f"vmmove: error: {qc.name}/vda: the final delta failed: nbd+unix:///vda?socket="), said
    assert ": the server closed the connection; rerun vmmove cutover" in errors[0] or \
        ": connection reset; rerun vmmove cutover" in errors[0], said
    assert "Traceback" not in "\n".join(said) and "source is STOPPED" in errors[0], said
    print(errors[0])
    vm = cluster.get(VMR, "vms", p.name)
    assert vm is not None and vm["spec"]["runStrategy"] == "Halted"  # never started

    run_until_pause([sys.executable, "-c", "from migrate.cli import run; run()",
                     *cutover_args(plan_file, cluster)], subprocess_env(s3_env), "warm:final",
                    tmp_path / "kill.log")
    assert qc.state() == SHUT_OFF
    left = host_leftovers(_host_tmp, tag)
    assert any("qemu-nbd" in x and "--bitmap=" in x for x in left), left  # still serving

    done = cli(*cutover_args(plan_file, cluster), "-o", "json")
    assert done.exit_code == 0, done.stderr
    vol = Path(plan.warm.volumes) / "vms" / f"{p.name}-vda" / "disk.img"
    cut_over_and_clean(qc, vol, _host_tmp, tag)
    with plan.journal() as journal:
        vda = journal.get("cutover", f"{p.key}/sync").data["disks"]["vda"]
        assert not vda["full"] and 128 << 10 <= vda["changed"] <= 2 << 20, vda  # a delta


def test_warm_remote_lost_bitmap_means_a_full_final_copy(
        cli: Any, tmp_path: Path, sshd: Sshd, _host_tmp: Path, libvirt_domains: DomainFactory,
        s3_server: SeaweedFS, s3_bucket: str, s3_env: dict[str, str], cluster: Cluster,
        controllers: Controllers, kubevirt: KubeVirt) -> None:
    """Behind vmmove's back, after the sources shut down: one disk's bitmap is removed
    from its qcow2 (``qemu-img bitmap --remove``, libvirt's checkpoint left), the other
    VM's checkpoint is deleted from libvirt (``checkpoint-delete --metadata``, the bitmap
    left in the qcow2).  The final delta of each copies the whole disk (never a silent
    skip), journals why, and ends with the volume equal to the source."""
    import libvirt

    lb = boot_guest(libvirt_domains, "wflb")
    lc = boot_guest(libvirt_domains, "wflc")
    plan_file = remote_warm_plan(cli, tmp_path, sshd, lb.name, s3_server, s3_bucket, cluster,
                                 lc.name)
    plan = load_plan(plan_file)
    pb, pc = plan.wave(1)
    tag = plan_tag(plan.workdir)
    assert cli("sync", str(plan_file), "--wave", "1").exit_code == 0
    write(lb, "write -P 0x6e 6M 64k")  # the lost bitmap would have carried these
    write(lc, "write -P 0x6e 6M 64k")
    cp = f"{PREFIX}{tag}-1"
    for g in (lb, lc):
        g.dom.shutdown()
    for g in (lb, lc):
        deadline = time.monotonic() + 120
        while g.state() != SHUT_OFF:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    subprocess.run(["qemu-img", "bitmap", "--remove", "-f", "qcow2", str(lb.disk), cp],
                   check=True)
    lc.dom.checkpointLookupByName(cp, 0).delete(
        libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
    assert cp in checkpoints(lb) and cp not in bitmaps(lb.disk)
    assert cp not in checkpoints(lc) and cp in bitmaps(lc.disk)

    cut = cli(*cutover_args(plan_file, cluster), "-o", "json")
    assert cut.exit_code == 0, cut.stderr
    assert f"{lb.name}/vda: bitmap {cp} lost" in cut.stderr, cut.stderr
    assert f"{lc.name}: checkpoint {cp} is gone from the host (deleted behind vmmove's " \
           "back): the whole disks are copied" in cut.stderr, cut.stderr
    with plan.journal() as journal:
        for p, why in ((pb, f"bitmap {cp} lost"), (pc, f"checkpoint {cp} is gone")):
            vda = journal.get("cutover", f"{p.key}/sync").data["disks"]["vda"]
            assert vda["full"] and why in vda["reason"], vda  # the whole disk, and why
            assert vda["source_sha256"] == vda["volume_sha256"]
            final = journal.get(KIND_WARM, p.key).data["final"]["disks"]["vda"]
            assert final["full"] and why in final["reason"], final
    for g, p in ((lb, pb), (lc, pc)):
        vol = Path(plan.warm.volumes) / "vms" / f"{p.name}-vda" / "disk.img"
        cut_over_and_clean(g, vol, _host_tmp, tag)
        assert SHUTDOWN_TAG in vol.read_bytes()[SHUTDOWN_OFFSET:SHUTDOWN_OFFSET + 64]
