"""Issue 14's "done when": from a machine that reaches the host only as ``qemu+ssh://``,
``vmmove migrate PLAN --wave 1 --stage`` stages a running VM and a shut-off VM, with the
S3 transfer and with transfer mode ``direct`` (in-cluster worker Jobs).

Real: sshd, libvirtd, a ticking TCG guest, qemu-nbd with TLS-PSK on the "host", SeaweedFS,
the kubernetes client against kmock; Jobs run as processes by tests/workers_support.py.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from migrate.clients.nbd import file_guest_checksum
from migrate.core.digest import file_checksum
from migrate.plan import load_plan
from migrate.core.journal import Journal
from tests.guest_support import boot_guest
from tests.kube_support import DV
from tests.libvirtd_support import libvirt_domains  # noqa: F401
from tests.plan_support import SECRET, VMR, Cluster, Controllers, cluster, controllers  # noqa: F401
from tests.s3_support import SeaweedFS
from tests.sshd_support import Sshd, host_tmp  # noqa: F401
from tests.test_remote_read import TICK, offline_vm, remote_uri, slots, wait_ticks
from tests.workers_support import JOB, Kubelet, kubelet  # noqa: F401

pytestmark = [pytest.mark.libvirtd, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _host_tmp(host_tmp: Path) -> Iterator[None]:
    yield
    assert [p.name for p in host_tmp.iterdir()] == []  # nothing left on the "host"


def plan_for(cli: Any, tmp: Path, uri: str, names: list[str], *extra: str) -> Path:
    inventory = tmp / "inventory.yaml"
    cli("scan", "-c", uri, "--output-file", str(inventory), "-o", "json")
    plan_file = tmp / "plan.yaml"
    cli("plan", str(inventory), "--out", str(plan_file), "-n", "vms", "--by", "list",
        "--wave", ",".join(names), *extra, ok=True)
    return plan_file


def stage(cli: Any, plan_file: Path, cluster: Cluster, *extra: str) -> Any:
    return cli("migrate", str(plan_file), "--wave", "1", "--stage", "--kubeconfig",
               str(cluster.kubeconfig), "-o", "json", *extra)


def steps(plan_file: Path, kind: str) -> dict[str, Any]:
    plan = load_plan(plan_file)
    with Journal(plan.journal_path) as journal:
        return {s.data.get("vm") or s.item: s for s in journal.steps(kind)}


def assert_point_in_time(found: dict[int, int]) -> int:
    point = max(found.values())
    expected = {s: max((i for i in range(1, point + 1) if i % 16 == s), default=0)
                for s in range(16)}
    assert found == expected
    return point


def test_stage_running_and_shut_off_vms_through_s3(
        cli, tmp_path: Path, sshd: Sshd, libvirt_domains, s3_server: SeaweedFS,
        s3_bucket: str, s3_env: dict[str, str], cluster: Cluster,
        controllers: Controllers) -> None:
    guest = boot_guest(libvirt_domains, "s3run", disk_mib=32, ticker=True, data_mib=8)
    cold, cold_disk = offline_vm(libvirt_domains, "s3cold")
    before = wait_ticks(guest.serial, 5)
    plan_file = plan_for(cli, tmp_path, remote_uri(sshd), [guest.name, cold],
                         "--s3", f"s3://{s3_bucket}/remote", "--endpoint-url",
                         s3_server.endpoint)
    result = stage(cli, plan_file, cluster)
    assert result.exit_code == 0, result.stderr
    assert [(s["stage"], s["status"]) for s in json.loads(result.stdout)] == [
        ("convert", "done"), ("inspect", "done"), ("guest", "done"), ("upload", "done"),
        ("manifests", "done"), ("apply", "done")]
    converts, uploads = steps(plan_file, "convert"), steps(plan_file, "upload")
    assert converts[guest.name].data["copy"] == "backup"
    assert converts[cold].data["copy"] == "qemu-nbd"
    assert converts[cold].data["guest_checksum"] == file_guest_checksum(cold_disk, "qcow2")[0]
    # what landed in S3 is the verified output, byte for byte
    client = s3_server.client()
    for name in (guest.name, cold):
        up = uploads[converts[name].item]
        fetched = tmp_path / f"fetched-{name}"
        fetched.write_bytes(client.get_object(Bucket=s3_bucket, Key=up.data["key"])["Body"].read())
        assert file_checksum(fetched) == converts[name].checksum  # (form: xxh3-1m, issue 17)
    output = Path(converts[guest.name].data["output"])
    assert assert_point_in_time(slots(output, "qcow2")) >= before
    assert len(cluster.objects(VMR)) == 2


def direct_plan(cli: Any, tmp: Path, sshd: Sshd, names: list[str], **workers: Any) -> Path:
    plan_file = plan_for(cli, tmp, remote_uri(sshd), names)
    data = yaml.safe_load(plan_file.read_text())
    data["transfer"] = {"mode": "direct"}
    data["workers"] = {"image": "localhost/vmmove-worker:test", "sourceAddress": "127.0.0.1",
                       "nodeSelector": {"vmmove.io/transfer": "true"},
                       "tolerations": [{"key": "dedicated", "operator": "Equal",
                                        "value": "transfer", "effect": "NoSchedule"}],
                       "network": "vms/transfer", **workers}
    plan_file.write_text(yaml.safe_dump(data, sort_keys=False))
    return plan_file


def test_stage_running_and_shut_off_vms_direct(
        cli, tmp_path: Path, sshd: Sshd, libvirt_domains, cluster: Cluster,
        controllers: Controllers, kubelet: Kubelet, shared: Path) -> None:
    guest = boot_guest(libvirt_domains, "dirun", disk_mib=32, ticker=True, data_mib=8)
    cold, cold_disk = offline_vm(libvirt_domains, "dicold")
    before = wait_ticks(guest.serial, 5)
    plan_file = direct_plan(cli, tmp_path, sshd, [guest.name, cold])
    jobs_seen: list[dict[str, Any]] = []
    secrets_seen: list[dict[str, Any]] = []

    def record(ns: str, job: str) -> None:
        body = cluster.get(JOB, ns, job)
        jobs_seen.append(body)
        secret = body["spec"]["template"]["spec"]["volumes"][1]["secret"]["secretName"]
        secrets_seen.append(cluster.get(SECRET, ns, secret))

    kubelet.before_start = record
    busy = socket.socket()  # the first port of workers.portRange is taken on the host
    busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        busy.bind(("0.0.0.0", 10809))
        busy.listen()
    except OSError:
        pass  # taken already (another session): the same case
    try:
        result = stage(cli, plan_file, cluster, "--max-inflight", "1")
    finally:
        busy.close()
    assert result.exit_code == 0, result.stderr
    ports = {int(j["spec"]["template"]["spec"]["containers"][0]["args"][1].split(":")[2]
                 .split("/")[0]) for j in jobs_seen}
    assert 10809 not in ports
    assert kubelet.max_running == 1  # --max-inflight 1: one worker at a time
    assert [(s["stage"], s["status"]) for s in json.loads(result.stdout)] == [
        ("convert", "done"), ("inspect", "done"), ("guest", "done"), ("upload", "done"),
        ("manifests", "done"), ("apply", "done")]
    uploads = steps(plan_file, "upload")
    # each PVC holds the verified disk: the shut-off one exactly, the running one at one
    # point in time after the ticks seen before staging
    cold_pvc = kubelet.pvc(uploads[cold].data["dv"]) / "disk.img"
    assert file_guest_checksum(cold_pvc)[0] == file_guest_checksum(cold_disk, "qcow2")[0] \
        == uploads[cold].checksum
    run_pvc = kubelet.pvc(uploads[guest.name].data["dv"]) / "disk.img"
    assert file_guest_checksum(run_pvc)[0] == uploads[guest.name].checksum
    assert assert_point_in_time(slots(run_pvc, "raw")) >= before
    assert sorted(p.name for p in run_pvc.parent.iterdir()) == ["disk.img"]
    # The Jobs and Secrets were strictly valid, placed as the plan says, and are gone.
    from manifests.validate import SchemaValidator
    from manifests.workers import validate_builtin

    def as_sent(body: dict[str, Any]) -> dict[str, Any]:
        clean = {k: v for k, v in body.items() if k != "status"}
        clean["metadata"] = {k: v for k, v in body["metadata"].items()
                             if k in ("name", "namespace", "labels", "annotations")}
        return clean

    failed_logs = [p.read_text()[-600:] for p in (kubelet.folder / "pods").glob("*/log")
                   if "Traceback" in p.read_text() or "error" in p.read_text()]
    assert len(jobs_seen) == 2, failed_logs  # one pod per Job: none failed
    for job, secret in zip(jobs_seen, secrets_seen):
        for body in (job, secret):
            validate_builtin(as_sent(body))
        pod = job["spec"]["template"]
        assert pod["spec"]["nodeSelector"] == {"vmmove.io/transfer": "true"}
        assert pod["spec"]["tolerations"][0]["value"] == "transfer"
        assert pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] == "vms/transfer"
        assert pod["spec"]["containers"][0]["image"] == "localhost/vmmove-worker:test"
        psk = secret["data"]["keys.psk"]
        assert psk not in json.dumps(job) and psk not in result.stderr
    assert cluster.objects(JOB) == {}
    assert not any(n.startswith("vmmove-psk") for _, n in cluster.objects(SECRET))
    # the VMs use the filled DataVolumes as they are (no import source)
    vms = cluster.objects(VMR)
    assert len(vms) == 2
    for (_, _), vm in vms.items():
        volumes = vm["spec"]["template"]["spec"]["volumes"]
        assert all("dataVolume" in v for v in volumes)
    dvs = cluster.objects(DV)
    assert len(dvs) == 2 and all("blank" in dv["spec"]["source"] for dv in dvs.values())
    validator = SchemaValidator(shared / "schemas")
    assert [validator.data_volume(as_sent(dv)) for dv in dvs.values()] == [[], []]


def test_direct_worker_pod_killed_is_retried_and_a_broken_job_fails_with_one_line(
        cli, tmp_path: Path, sshd: Sshd, libvirt_domains, cluster: Cluster,
        controllers: Controllers, kubelet: Kubelet) -> None:
    cold, cold_disk = offline_vm(libvirt_domains, "dikill", mib=512)
    from tests.conftest import qemu_io

    qemu_io(str(cold_disk), "write -P 0x77 8M 400M", "qcow2")
    plan_file = direct_plan(cli, tmp_path, sshd, [cold])
    killed: list[str] = []

    def kill_first(ns: str, job: str) -> None:
        if not killed:
            killed.append(job)
            import threading

            def later() -> None:
                kubelet.wait_running()
                kubelet.kill(job)

            threading.Thread(target=later, daemon=True).start()

    kubelet.before_start = kill_first
    result = stage(cli, plan_file, cluster)
    assert result.exit_code == 0, result.stderr
    up = steps(plan_file, "upload")[cold]
    assert up.status == "done" and up.data["attempts"] == 2
    pvc = kubelet.pvc(up.data["dv"])
    assert file_guest_checksum(pvc / "disk.img")[0] == up.checksum \
        == file_guest_checksum(cold_disk, "qcow2")[0]
    assert sorted(p.name for p in pvc.iterdir()) == ["disk.img"]

    # A Job whose Secret vanished: its pod cannot start; one line, nothing counted done.
    broken, _ = offline_vm(libvirt_domains, "dibroken", mib=8)
    (tmp_path / "p2").mkdir()
    plan2 = direct_plan(cli, tmp_path / "p2", sshd, [broken])

    def drop_secret(ns: str, job: str) -> None:
        body = cluster.get(JOB, ns, job)
        name = body["spec"]["template"]["spec"]["volumes"][1]["secret"]["secretName"]
        cluster.call(lambda: cluster.emulator.objects[SECRET, ns, name].delete())

    kubelet.before_start = drop_secret
    failed = stage(cli, plan2, cluster)
    assert failed.exit_code != 0
    lines = [ln for ln in failed.stderr.split("vmmove: error:", 1)[1].splitlines()
             if f"{broken}/vda" in ln]
    assert len(lines) == 1 and "CreateContainerConfigError" in lines[0], failed.stderr
    step = steps(plan2, "upload")[broken]
    assert step.status == "failed"
    assert cluster.objects(JOB) == {}
    # A worker that exits non-zero (wrong source address) fails after backoffLimit retries.
    data = yaml.safe_load(plan2.read_text())
    data["workers"].update(sourceAddress="nohost.invalid", backoffLimit=1)
    plan2.write_text(yaml.safe_dump(data, sort_keys=False))
    kubelet.before_start = None
    failed = stage(cli, plan2, cluster)
    assert failed.exit_code != 0
    lines = [ln for ln in failed.stderr.split("vmmove: error:", 1)[1].splitlines()
             if f"{broken}/vda" in ln]
    assert len(lines) == 1, failed.stderr
    assert "failed after 2 attempt(s)" in lines[0] and "cannot open the export" in lines[0]
    assert sorted(p.name for p in kubelet.pvc(step.data["dv"]).iterdir()) == ["disk.img"]
    assert steps(plan2, "upload")[broken].status == "failed"


def test_direct_into_a_block_volume(cli, tmp_path: Path, sshd: Sshd, libvirt_domains,
                                    cluster: Cluster, controllers: Controllers,
                                    kubelet: Kubelet) -> None:
    """volumeMode Block: the Job gets the PVC as a device (a loop device here)."""
    name, disk = offline_vm(libvirt_domains, "diblock", mib=24)
    plan_file = direct_plan(cli, tmp_path, sshd, [name])
    data = yaml.safe_load(plan_file.read_text())
    data["storage"] = {"volumeMode": "Block", "accessModes": ["ReadWriteOnce"]}
    plan_file.write_text(yaml.safe_dump(data, sort_keys=False))
    jobs: list[dict[str, Any]] = []
    kubelet.before_start = lambda ns, job: jobs.append(cluster.get(JOB, ns, job))
    result = stage(cli, plan_file, cluster)
    assert result.exit_code == 0, result.stderr
    container = jobs[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["volumeDevices"] == [{"name": "disk", "devicePath": "/run/vmmove/disk"}]
    assert "/run/vmmove/disk" in container["args"]
    up = steps(plan_file, "upload")[name]
    backing = kubelet.pvc(up.data["dv"]) / "block.img"
    assert file_guest_checksum(backing, "raw", 24 << 20)[0] == up.checksum \
        == file_guest_checksum(disk, "qcow2")[0]
