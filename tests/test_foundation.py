"""The model, its serialisation, the journal, naming and qemu-img info."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest
import yaml

from migrate.clients.imageinfo import ImageError, image_info
from migrate.core.model import (
    BackingFile,
    CpuTopology,
    Device,
    Disk,
    Firmware,
    GuestOS,
    Inventory,
    Nic,
    PowerState,
    ScanError,
    Source,
    SourceKind,
    Tuning,
    VM,
)
from migrate.core.naming import assign_names, dns1123_label, is_dns1123_label
from migrate.core.serialize import (
    InventoryError,
    from_data,
    load_inventory,
    save_inventory,
    to_data,
)
from migrate.core.journal import DONE, FAILED, RUNNING, Journal, JournalLocked
from tests.conftest import qemu_img


def full_vm() -> VM:
    return VM(
        name="Web Server",
        uuid="4dea22b3-1d52-d8f3-2516-782e98ab3fa0",
        source=Source(SourceKind.LIBVIRT, "test:///default"),
        hypervisor="kvm",
        os_type="hvm",
        arch="x86_64",
        machine="pc-i440fx-7.2",
        power_state=PowerState.RUNNING,
        vcpus=4,
        topology=CpuTopology(sockets=1, cores=2, threads=2),
        memory=2 * 1024**3,
        firmware=Firmware(type="efi", secure_boot=True, tpm_version="2.0", tpm_model="tpm-crb"),
        clock_offset="localtime",
        disks=[
            Disk(
                target="vda",
                bus="virtio",
                path="/var/lib/libvirt/images/web.qcow2",
                format="qcow2",
                virtual_size=10 * 1024**3,
                allocated_size=1234567,
                backing_chain=[BackingFile("/base.qcow2", "qcow2")],
                boot_order=1,
            ),
            Disk(target="hdc", device="cdrom", bus="ide", readonly=True, source_type="none"),
        ],
        nics=[Nic(mac="52:54:00:aa:bb:cc", model="virtio", type="network", network="default")],
        devices=[Device(kind="pci-passthrough", details={"address": "0000:01:00.0"})],
        guest_os=GuestOS(id="http://microsoft.com/win/2k22", family="windows", version="2022"),
        tuning=Tuning(numa_nodes=2, cpu_pinning=True),
        snapshots=2,
        features=["acpi", "apic", "smm"],
        metadata={"owner": "ops"},
    )


def test_inventory_round_trips_through_json_and_yaml_without_loss(tmp_path: Path) -> None:
    inv = Inventory(
        vms=[full_vm()],
        errors=[ScanError("bad.ovf", "not XML")],
        scanned_at="2026-11-23T10:00:00Z",
        vmmove_version="0.1.0",
    )
    for name in ("inv.json", "inv.yaml"):
        save_inventory(inv, tmp_path / name)
        assert load_inventory(tmp_path / name) == inv
    assert json.loads((tmp_path / "inv.json").read_text())["vms"][0]["power_state"] == "running"
    assert yaml.safe_load((tmp_path / "inv.yaml").read_text())["vms"][0]["memory"] == 2 * 1024**3
    assert not list(tmp_path.glob(".*part")), "no temporary files are left behind"


def test_unknown_fields_and_wrong_types_are_refused_with_their_path(tmp_path: Path) -> None:
    data = to_data(Inventory(vms=[full_vm()]))
    data["vms"][0]["disks"][0]["colour"] = "red"
    with pytest.raises(InventoryError, match=r"inventory\.vms\[0\]\.disks\[0\]: unknown field\(s\) colour"):
        from_data(Inventory, data, "inventory")
    data = to_data(Inventory(vms=[full_vm()]))
    data["vms"][0]["power_state"] = "exploded"
    with pytest.raises(InventoryError, match="power_state: 'exploded' is not one of"):
        from_data(Inventory, data, "inventory")
    bad = tmp_path / "broken.yaml"
    bad.write_text("vms: [\n")
    with pytest.raises(InventoryError, match="broken.yaml: not valid JSON/YAML"):
        load_inventory(bad)
    with pytest.raises(InventoryError, match="missing.yaml: no such file or directory"):
        load_inventory(tmp_path / "missing.yaml")


def test_journal_records_resumes_and_keeps_history(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as j:
        j.start("convert", "vm1/vda", source="/a.vmdk")
        j.update("convert", "vm1/vda", bytes=100, part="/out.part")
        assert j.get("convert", "vm1/vda").status == RUNNING
        j.fail("convert", "vm1/vda", "disk full")
        j.start("convert", "vm1/vda")  # a retry clears the error, keeps the data
        step = j.get("convert", "vm1/vda")
        assert step.error is None and step.data == {"source": "/a.vmdk", "part": "/out.part"}
        j.done("convert", "vm1/vda", bytes=4096, checksum="sha256:ab")
    with Journal(tmp_path / "j.sqlite") as j:  # reopened: everything persisted
        step = j.get("convert", "vm1/vda")
        assert step.status == DONE and step.bytes == 4096 and step.checksum == "sha256:ab"
        assert step.duration is not None and step.duration >= 0
        assert [h["status"] for h in j.history("convert", "vm1/vda")] == [
            RUNNING, FAILED, RUNNING, DONE,
        ]
        assert j.is_done("convert", "vm1/vda") and not j.is_done("convert", "vm1/vdb")
        assert [s.item for s in j.steps(prefix="vm1/")] == ["vm1/vda"]


def _try_lock(path: str, queue: "multiprocessing.Queue[str]") -> None:
    try:
        with Journal(path) as j, j.exclusive():
            queue.put("locked")
    except JournalLocked as exc:
        queue.put(str(exc))


def test_a_second_process_cannot_run_on_a_held_journal(tmp_path: Path) -> None:
    path = str(tmp_path / "plan.sqlite")
    ctx = multiprocessing.get_context("spawn")
    with Journal(path) as j, j.exclusive():
        queue = ctx.Queue()
        proc = ctx.Process(target=_try_lock, args=(path, queue))
        proc.start()
        proc.join(30)
        assert "another vmmove run is using this journal" in queue.get(timeout=5)
    queue = ctx.Queue()
    proc = ctx.Process(target=_try_lock, args=(path, queue))
    proc.start()
    proc.join(30)
    assert queue.get(timeout=5) == "locked"


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("web01", "web01"),
        ("Web Server (prod)", "web-server-prod"),
        ("DC01.corp.example.com", "dc01-corp-example-com"),
        ("Ünïcødé_VM", "unicde-vm"),
        ("---", "vm"),
    ],
)
def test_dns1123_label(name: str, label: str) -> None:
    assert dns1123_label(name) == label
    assert is_dns1123_label(dns1123_label(name))


def test_long_names_and_collisions_are_unique_and_order_independent() -> None:
    long_a, long_b = "x" * 70 + "a", "x" * 70 + "b"
    assert len(dns1123_label(long_a)) <= 63 and dns1123_label(long_a) != dns1123_label(long_b)
    pairs = [("1", "web"), ("2", "Web"), ("3", "WEB ")]
    names = assign_names(pairs)
    assert names["1"] == "web"
    assert len(set(names.values())) == 3 and all(is_dns1123_label(n) for n in names.values())
    assert assign_names(list(reversed(pairs))) == names


def test_image_info_reads_format_sizes_and_backing_chain(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    qemu_img("create", "-f", "raw", str(base), "64M")
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", str(base), "-F", "raw", str(top))
    info = image_info(str(top))
    assert info.format == "qcow2" and info.virtual_size == 64 * 1024**2
    assert info.backing_chain == [BackingFile(str(base), "raw")]
    junk = tmp_path / "junk.qcow2"
    junk.write_bytes(b"QFI\xfb" + os.urandom(100))
    with pytest.raises(ImageError, match="junk.qcow2"):
        image_info(str(junk), fmt="qcow2")
