"""Guest readiness end to end on real Debian guests built from Debian packages
(tests/guest_image.py): scan (libvirt test driver) → plan → convert → boot-test → migrate
--stage (inspect, guest conversion with virt-v2v, upload to SeaweedFS, manifests, apply on
kmock) → boot-test, under the real libvirtd with TCG.

* the host-only variant (initramfs without virtio) fails on virtio with the initramfs
  shell, which cutover's preflight then refuses; inspected, it gets sata and boots;
  converted by virt-v2v it gets virtio back and boots; its static IP is captured and its
  interface name pinned to the MAC; the source's bytes never change;
* the virtio variant is inspected (OS facts, drivers present), needs no conversion and
  boots on virtio.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from migrate.core.serialize import load_inventory
from migrate.core.journal import DONE, FAILED, Journal
from tests import guest_image
from tests.guest_support import KubeVirt, kubevirt  # noqa: F401
from tests.plan_support import (
    Cluster,
    Controllers,
    NodeVm,
    cluster,  # noqa: F401
    controllers,  # noqa: F401
    write_node,
)
from tests.s3_support import SeaweedFS

pytestmark = pytest.mark.slow
MAC = "52:54:00:aa:07:01"


@pytest.fixture(scope="session")
def guest_images() -> dict[str, Path]:
    """The two cached Debian images; built here (as root) when .ci/run has not."""
    if not guest_image.is_built():
        missing = guest_image.missing_tools()
        if missing:
            pytest.skip(f"no Debian guest images: {', '.join(missing)} not installed")
        if os.geteuid() != 0:
            pytest.skip("no Debian guest images: building them needs root (chroot)")
        guest_image.build()
    for tool in ("virt-v2v-in-place", "nbdkit"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install virt-v2v nbdkit)")
    return guest_image.paths()


def _sha(path: Path) -> str:
    """The file checksum vmmove records (the form changed with issue 17: xxh3-1m)."""
    from migrate.core.digest import file_checksum

    return file_checksum(path)


def _plan(cli: Any, tmp: Path, s3: SeaweedFS, bucket: str, name: str, image: Path,
          **convert: Any) -> tuple[Path, Path]:
    """A VM whose disk is a copy of ``image`` (the source), scanned and planned."""
    source = tmp / "images" / f"{name}.qcow2"
    source.parent.mkdir(parents=True)
    subprocess.run(["cp", "--reflink=auto", str(image), str(source)], check=True)
    node = write_node(tmp / "node.xml", [NodeVm(name, [("vda", str(source), "qcow2")], MAC)])
    cli("scan", "-c", node, "--output-file", str(tmp / "inventory.yaml"), "-o", "json", ok=True)
    cli("plan", str(tmp / "inventory.yaml"), "--out", str(tmp / "plan.yaml"), "-n", "vms",
        "--network", "network:default=pod", "--s3", f"s3://{bucket}/guest",
        "--endpoint-url", s3.endpoint, "--by", "list", "--wave", name, ok=True)
    _edit(tmp / "plan.yaml", convert)
    return tmp / "plan.yaml", source


def _edit(plan_file: Path, convert: dict[str, Any]) -> None:
    data = yaml.safe_load(plan_file.read_text())
    data["convert"] = {**(data.get("convert") or {}), **convert}
    data["bootTest"] = {"timeout": 240, "accel": "tcg"}
    plan_file.write_text(yaml.safe_dump(data, sort_keys=False))


def _boot(cli: Any, plan_file: Path) -> tuple[int, dict[str, Any]]:
    result = cli("boot-test", str(plan_file), "--wave", "1", "-o", "json")
    (row,) = json.loads(result.stdout)
    return result.exit_code, row


def _stage(cli: Any, plan_file: Path, cluster: Cluster) -> dict[str, str]:
    result = cli("migrate", str(plan_file), "--wave", "1", "--stage", "--kubeconfig",
                 str(cluster.kubeconfig), "-o", "json")
    assert result.exit_code == 0, result.stderr
    return {s["stage"]: s["summary"] for s in json.loads(result.stdout)}


def _manifest_buses(workdir: Path, name: str) -> list[str]:
    vm = yaml.safe_load((workdir / "manifests" / "vms" / f"{name}.yaml").read_text())
    if isinstance(vm, list) or "spec" not in vm:  # a multi-document file: the VirtualMachine
        vm = next(d for d in yaml.safe_load_all((workdir / "manifests" / "vms" /
                                                 f"{name}.yaml").read_text())
                  if d.get("kind") == "VirtualMachine")
    disks = vm["spec"]["template"]["spec"]["domain"]["devices"]["disks"]
    return [d["disk"]["bus"] for d in disks]


def test_hostonly_guest_fails_on_virtio_then_sata_then_converted(
        cli: Any, tmp_path: Path, s3_server: SeaweedFS, s3_bucket: str, s3_env: dict[str, str],
        cluster: Cluster, controllers: Controllers, libvirtd: Any,  # noqa: F811
        kubevirt: KubeVirt, guest_images: dict[str, Path]) -> None:  # noqa: F811
    name = "deb-hostonly"
    plan_file, source = _plan(cli, tmp_path, s3_server, s3_bucket, name,
                              guest_images["hostonly"], guest="never")
    source_sum = _sha(source)
    workdir = tmp_path / "plan.work"

    # 1. staged as the hypervisor describes it (virtio): the initramfs cannot find its root
    cli("convert", str(plan_file), "--wave", "1", ok=True)
    code, row = _boot(cli, plan_file)
    assert code == 1 and row["verdict"] == "failed", row
    assert row["reason"].startswith("initramfs shell: root device not found"), row
    assert row["buses"] == {"rootdisk": "virtio"} or set(row["buses"].values()) == {"virtio"}
    assert "Dropping to a shell" in Path(row["console"]).read_text()
    # ... and cutover's preflight refuses it (with every other reason), unless told not to
    cut = cli("cutover", str(plan_file), "--wave", "1", "--kubeconfig", str(cluster.kubeconfig))
    assert cut.exit_code != 0 and "last boot test failed: failed: initramfs shell" in cut.stderr
    cut = cli("cutover", str(plan_file), "--wave", "1", "--kubeconfig", str(cluster.kubeconfig),
              "--skip-boot-test")
    assert cut.exit_code != 0 and "last boot test" not in cut.stderr

    # 2. migrate --stage inspects it: no virtio_blk, so the manifest puts the disk on sata
    stages = _stage(cli, plan_file, cluster)
    assert stages["inspect"] == "inspect: 1 of 1 guest(s) inspected"
    assert stages["guest"] == "guest: 1 skipped"
    ins = load_inventory(tmp_path / "inventory.yaml").vms[0].inspection
    assert ins is not None
    assert (ins.os_type, ins.distro, ins.arch, ins.hostname, ins.bootloader, ins.efi) == (
        "linux", "debian", "x86_64", guest_image.HOSTNAME, "grub2", False)
    assert ins.version and ins.version.startswith("12.")
    assert ins.drivers == {"virtio_blk": False, "virtio_scsi": False, "virtio_net": False,
                           "ahci": True}
    (net,) = ins.network
    assert (net.interface, net.method, net.addresses, net.gateway, net.dns, net.source) == (
        "eth0", "static", [guest_image.STATIC_IP], guest_image.GATEWAY, [guest_image.DNS],
        "/etc/network/interfaces")
    assert _manifest_buses(workdir, name) == ["sata"]
    code, row = _boot(cli, plan_file)
    assert code == 0 and row["verdict"] == "booted", row
    assert row["reason"] == "login prompt on the serial console"
    assert set(row["buses"].values()) == {"sata"}

    # 3. converted (a copy of the staged image, by virt-v2v): virtio again, and it boots
    _edit(plan_file, {"guest": "auto", "preserveStaticIPs": True})
    stages = _stage(cli, plan_file, cluster)
    assert stages["guest"] == "guest: 1 converted"
    with Journal(workdir / "vmmove-journal.sqlite") as journal:
        (guest,) = journal.steps("guest")
        (convert,) = journal.steps("convert")
        (upload,) = journal.steps("upload")
        inspect = journal.get("inspect", guest.item.rsplit("/", 1)[0])
    assert guest.status == DONE and guest.data["status"] == "converted"
    assert guest.data["reason"] == "the guest lacks virtio_blk, which its virtio boot disk needs"
    assert guest.data["pinned"] == [f"eth0={MAC}"]
    assert any(c.startswith("Converting") for c in guest.data["changes"])
    converted = Path(guest.data["output"])
    assert guest.checksum == _sha(converted) == upload.checksum
    assert convert.checksum == _sha(Path(convert.data['output']))  # staged copy as it was
    assert inspect is not None and inspect.data["inspection"]["drivers"]["virtio_blk"] is True
    assert _manifest_buses(workdir, name) == ["virtio"]
    rule = subprocess.run(["guestfish", "--ro", "--format=qcow2", "-a", str(converted), "-m",
                           "/dev/sda1", "cat", "/etc/udev/rules.d/70-vmmove-net.rules"],
                          capture_output=True, text=True,
                          env={**os.environ, "LIBGUESTFS_BACKEND": "direct",
                               "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"})
    assert f'ATTR{{address}}=="{MAC}", NAME="eth0"' in rule.stdout, rule.stderr
    code, row = _boot(cli, plan_file)
    assert code == 0 and row["verdict"] == "booted" and set(row["buses"].values()) == {"virtio"}
    with Journal(workdir / "vmmove-journal.sqlite") as journal:
        history = [h["status"] for h in journal.history("boot-test")]
    assert history == ["running", FAILED, "running", DONE, "running", DONE]
    assert _sha(source) == source_sum  # the source was only ever read


def test_virtio_guest_is_inspected_and_boots_on_virtio(
        cli: Any, tmp_path: Path, s3_server: SeaweedFS, s3_bucket: str, s3_env: dict[str, str],
        cluster: Cluster, controllers: Controllers, libvirtd: Any,  # noqa: F811
        guest_images: dict[str, Path]) -> None:
    name = "deb-virtio"
    plan_file, source = _plan(cli, tmp_path, s3_server, s3_bucket, name,
                              guest_images["virtio"], guest="auto")
    source_sum = _sha(source)
    stages = _stage(cli, plan_file, cluster)
    assert stages["guest"] == "guest: 1 skipped"
    ins = load_inventory(tmp_path / "inventory.yaml").vms[0].inspection
    assert ins is not None and ins.drivers == {
        "virtio_blk": True, "virtio_scsi": True, "virtio_net": True, "ahci": True}
    assert ins.kernel and ins.initramfs == f"/boot/initrd.img-{ins.kernel}"
    assert [n.addresses for n in ins.network] == [[guest_image.STATIC_IP]]
    with Journal(tmp_path / "plan.work" / "vmmove-journal.sqlite") as journal:
        (guest,) = journal.steps("guest")
    assert guest.data["reason"] == "the guest has virtio_blk for its virtio boot disk"
    assert _manifest_buses(tmp_path / "plan.work", name) == ["virtio"]
    code, row = _boot(cli, plan_file)
    assert code == 0 and row["verdict"] == "booted", row
    assert row["accel"] == "tcg" and row["firmware"] == "bios"
    assert _sha(source) == source_sum
