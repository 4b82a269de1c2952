"""Mapping rules of the manifest generator, each checked on the objects it builds."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from manifests.generate import GenerationError, VmOverrides, build_vm_manifests, disk_request, quantity
from manifests.sources import SourceResolver
from manifests.validate import admission_errors
from migrate.core.mapping import StorageMap, StorageTarget, parse_network_target
from migrate.core.model import CpuTopology, Disk, Nic
from tests.manifests_support import (
    GiB,
    build,
    context,
    inventory,
    linux_bios_vm,
    multi_vm,
    networks,
    schema_validator,
    windows_efi_vm,
)


def domain(ms):  # type: ignore[no-untyped-def]
    return ms.virtual_machine["spec"]["template"]["spec"]["domain"]


def tspec(ms):  # type: ignore[no-untyped-def]
    return ms.virtual_machine["spec"]["template"]["spec"]


def test_linux_bios_vm_keeps_topology_memory_mac_and_boots_halted(shared: Path) -> None:
    ms = build(linux_bios_vm(), networks=networks(**{"network:default": "pod"}))
    vm = ms.virtual_machine
    assert vm["apiVersion"] == "kubevirt.io/v1" and vm["kind"] == "VirtualMachine"
    assert vm["metadata"]["name"] == "web01" and vm["metadata"]["namespace"] == "default"
    assert vm["spec"]["runStrategy"] == "Halted"
    d = domain(ms)
    assert d["cpu"] == {"sockets": 1, "cores": 2, "threads": 1}
    assert d["memory"] == {"guest": "4Gi"}
    assert d["machine"] == {"type": "q35"}
    assert d["firmware"]["bootloader"] == {"bios": {}}
    assert d["firmware"]["uuid"] == "c7a5fdbd-edaf-9455-926a-d65c16db1809"
    assert "clock" not in d and "features" not in d  # Linux on UTC: KubeVirt defaults
    assert d["devices"]["disks"] == [{"name": "vda", "disk": {"bus": "virtio"}, "bootOrder": 1}]
    assert d["devices"]["interfaces"] == [
        {"name": "nic0", "masquerade": {}, "model": "virtio", "macAddress": "52:54:00:12:34:56"}
    ]
    assert tspec(ms)["networks"] == [{"name": "nic0", "pod": {}}]
    assert tspec(ms)["volumes"] == [{"name": "vda", "dataVolume": {"name": "web01-vda"}}]
    (dv,) = vm["spec"]["dataVolumeTemplates"]
    assert dv["metadata"]["name"] == "web01-vda"
    assert dv["spec"]["source"] == {"http": {"url": "http://images.example.com/vm/web01.qcow2"}}
    assert dv["spec"]["storage"] == {"resources": {"requests": {"storage": "20Gi"}}}
    meta = vm["metadata"]
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "vmmove"
    assert meta["labels"]["vmmove.io/domain-uuid"] == "c7a5fdbd-edaf-9455-926a-d65c16db1809"
    assert meta["annotations"]["vmmove.io/source-uri"] == "qemu+ssh://kvm1.example.com/system"
    assert meta["annotations"]["vmmove.io/scanned-at"] == "2024-05-01T12:00:00Z"
    assert meta["annotations"]["vmmove.io/source-name"] == "web01"
    assert meta["annotations"]["vmmove.io/version"]
    assert schema_validator(shared).virtual_machine(vm) == []


def test_windows_efi_secure_boot_gets_smm_tpm_hyperv_and_local_clock(shared: Path) -> None:
    ms = build(windows_efi_vm(), timezone="Europe/Berlin")
    d = domain(ms)
    assert d["firmware"]["bootloader"] == {"efi": {"secureBoot": True}}
    assert d["features"]["smm"] == {"enabled": True}
    assert d["devices"]["tpm"] == {"persistent": True}
    assert any("TPM" in n and "not carried" in n for n in ms.notes)
    assert d["clock"]["timezone"] == "Europe/Berlin" and "utc" not in d["clock"]
    hv = d["features"]["hyperv"]
    assert hv["relaxed"] == {"enabled": True} and hv["spinlocks"]["spinlocks"] == 8191
    assert hv["synictimer"]["direct"] == {"enabled": True} and "evmcs" not in hv
    assert d["cpu"] == {"sockets": 2, "cores": 2, "threads": 1}
    disks = {x["name"]: x for x in d["devices"]["disks"]}
    assert disks["hda"]["disk"] == {"bus": "sata"}  # ide becomes sata
    assert disks["hda"]["bootOrder"] == 2  # the cdrom that had 1 is dropped; order kept
    assert disks["hdb"]["disk"] == {"bus": "scsi", "readonly": True}  # no read-only SATA disks
    assert "hdc" not in disks and any("cdrom dropped" in n for n in ms.notes)
    assert d["devices"]["interfaces"][0]["model"] == "e1000"
    assert d["devices"]["interfaces"][0]["bridge"] == {}
    assert "i440fx" in ms.virtual_machine["metadata"]["annotations"]["vmmove.io/notes"]
    assert ms.virtual_machine["metadata"]["annotations"]["vmmove.io/source-machine"] == "pc-i440fx-6.2"
    assert ms.name == "dc01-prod"
    # 60 GiB + 512 bytes rounds up to the next MiB
    sizes = {t["metadata"]["name"]: t["spec"]["storage"]["resources"]["requests"]["storage"]
             for t in ms.data_volumes}
    assert sizes == {"dc01-prod-hda": "61441Mi", "dc01-prod-hdb": "10Gi"}
    assert schema_validator(shared).virtual_machine(ms.virtual_machine) == []


def test_cdroms_with_media_are_kept_on_request_as_sata_cdroms() -> None:
    ms = build(windows_efi_vm(), keep_cdroms=True)
    disks = {x["name"]: x for x in domain(ms)["devices"]["disks"]}
    assert disks["hdc"] == {"name": "hdc", "cdrom": {"bus": "sata", "readonly": True}, "bootOrder": 1}
    assert disks["hda"]["bootOrder"] == 2


def test_localtime_without_timezone_is_utc_with_a_note_and_efi_without_secure_boot_says_so() -> None:
    vm = windows_efi_vm()
    vm.firmware.secure_boot = False
    vm.firmware.tpm_version = None
    ms = build(vm)
    d = domain(ms)
    assert d["clock"]["timezone"] == "UTC" and any("--timezone" in n for n in ms.notes)
    # secureBoot defaults to true in KubeVirt: it must be spelled out false, and no SMM then
    assert d["firmware"]["bootloader"] == {"efi": {"secureBoot": False}}
    assert "smm" not in d["features"] and "tpm" not in d["devices"]


def test_variable_and_named_timezone_clocks() -> None:
    vm = linux_bios_vm()
    vm.clock_offset = "timezone:America/New_York"
    assert domain(build(vm))["clock"] == {"timezone": "America/New_York"}
    vm.clock_offset = "variable"
    vm.metadata["clock_adjustment"] = "3600"
    assert domain(build(vm))["clock"] == {"utc": {"offsetSeconds": 3600}}


def test_multi_disk_multi_nic_vm(shared: Path) -> None:
    storage = StorageMap(
        StorageTarget("standard", "Filesystem", ("ReadWriteOnce",)),
        {"datastore:ssd1": StorageTarget("fast", "Block", ("ReadWriteMany",))},
    )
    nets = networks(**{"bridge:VM Network": "pod", "Storage": "multus:storage/san", "*": "multus:vms/heartbeat"})
    ms = build(multi_vm(), networks=nets, storage=storage)
    d = domain(ms)
    assert d["cpu"] == {"sockets": 2, "cores": 4, "threads": 1} and d["memory"]["guest"] == "16Gi"
    disks = d["devices"]["disks"]
    assert [x["name"] for x in disks] == ["scsi0-0", "scsi0-1", "scsi1-0"]
    assert all(x["disk"]["bus"] == "scsi" for x in disks)
    assert disks[0]["serial"] == "6000c29a1b2c" and disks[0]["bootOrder"] == 1
    assert disks[2]["shareable"] is True
    storages = {t["metadata"]["name"]: t["spec"]["storage"] for t in ms.data_volumes}
    assert storages["app-cluster-node-scsi0-1"]["storageClassName"] == "fast"
    assert storages["app-cluster-node-scsi0-1"]["volumeMode"] == "Block"
    assert storages["app-cluster-node-scsi0-0"]["storageClassName"] == "standard"
    assert storages["app-cluster-node-scsi0-0"]["accessModes"] == ["ReadWriteOnce"]
    ifaces = d["devices"]["interfaces"]
    assert [i["model"] for i in ifaces] == ["virtio", "e1000e", "virtio"]  # vmxnet3 becomes virtio
    assert any("vmxnet3" in n for n in ms.notes)
    assert [i["macAddress"] for i in ifaces] == ["00:50:56:aa:bb:01", "00:50:56:aa:bb:02", "00:50:56:aa:bb:03"]
    assert "masquerade" in ifaces[0] and "bridge" in ifaces[1] and "bridge" in ifaces[2]
    assert ifaces[2]["bootOrder"] == 2
    assert tspec(ms)["networks"] == [
        {"name": "nic0", "pod": {}},
        {"name": "nic1", "multus": {"networkName": "storage/san"}},
        {"name": "nic2", "multus": {"networkName": "vms/heartbeat"}},
    ]
    assert d["firmware"]["bootloader"] == {"efi": {"secureBoot": False}}
    assert schema_validator(shared).virtual_machine(ms.virtual_machine) == []


def test_unmapped_networks_are_one_error_listing_them_all() -> None:
    with pytest.raises(GenerationError) as exc:
        build(multi_vm(), networks=networks(Storage="pod"))
    msg = str(exc.value)
    assert "VM app-cluster-node" in msg and "bridge:VM Network" in msg and "bridge:Heartbeat" in msg
    assert "bridge:Storage" not in msg


def test_two_nics_on_the_pod_network_are_refused() -> None:
    with pytest.raises(GenerationError, match="more than one NIC maps to the pod network"):
        build(multi_vm(), networks=networks(**{"*": "pod"}))


def test_vcpu_count_is_kept_when_the_topology_disagrees() -> None:
    vm = linux_bios_vm()
    vm.vcpus, vm.topology = 6, CpuTopology(sockets=4, cores=2, threads=1)  # topology of max vcpus
    assert domain(build(vm))["cpu"] == {"sockets": 3, "cores": 2, "threads": 1}
    vm.vcpus, vm.topology = 5, CpuTopology(sockets=1, cores=4, threads=2)
    assert domain(build(vm))["cpu"] == {"sockets": 5, "cores": 1, "threads": 1}
    vm.topology = CpuTopology(sockets=0, cores=2, threads=1)
    assert domain(build(vm))["cpu"] == {"sockets": 5, "cores": 1, "threads": 1}
    vm.topology = None
    vm.vcpus = 3
    assert domain(build(vm))["cpu"] == {"sockets": 3, "cores": 1, "threads": 1}


def test_names_are_dns1123_unique_and_deterministic() -> None:
    a, b, c = linux_bios_vm(), linux_bios_vm(), linux_bios_vm()
    a.name, a.uuid = "Web01", "00000000-0000-0000-0000-000000000001"
    b.name, b.uuid = "web01", "00000000-0000-0000-0000-000000000002"
    c.name, c.uuid = "X" * 80, "00000000-0000-0000-0000-000000000003"
    inv = inventory(a, b, c)
    ctx = context(inv)
    names = [build_vm_manifests(v, ctx).name for v in inv.vms]
    assert names[1] == "web01" and names[0] != "web01" and names[0].startswith("web01-")
    assert len(names[2]) <= 63 and len(set(names)) == 3
    inv2 = inventory(c, b, a)  # another scan order gives the same names
    ctx2 = context(inv2)
    assert [build_vm_manifests(v, ctx2).name for v in (a, b, c)] == names
    assert build_vm_manifests(a, ctx).virtual_machine["metadata"]["annotations"]["vmmove.io/source-name"] == "Web01"
    dv_names = [t["metadata"]["name"] for t in build_vm_manifests(c, ctx).data_volumes]
    assert all(len(n) <= 63 for n in dv_names)


def test_overrides_from_a_plan_change_name_namespace_and_run_strategy() -> None:
    vm = linux_bios_vm()
    inv = inventory(vm)
    ctx = context(inv)
    ctx.overrides[vm.key] = VmOverrides(name="web-new", namespace="prod", run_strategy="Always")
    ms = build_vm_manifests(vm, ctx)
    assert (ms.name, ms.namespace) == ("web-new", "prod")
    assert ms.virtual_machine["spec"]["runStrategy"] == "Always"
    with pytest.raises(GenerationError, match="run strategy"):
        build(vm, run_strategy="Sometimes")


def test_disks_without_source_are_one_error_never_silently_blank() -> None:
    vm = multi_vm()
    with pytest.raises(GenerationError) as exc:
        build(vm, resolver=SourceResolver())
    msg = str(exc.value)
    for target in ("scsi0:0", "scsi0:1", "scsi1:0"):
        assert f"disk {target}: no transfer record" in msg
    assert "--blank app-cluster-node/scsi0:0" in msg
    ms = build(vm, resolver=SourceResolver(blank=frozenset(
        {"app-cluster-node/scsi0:0", "app-cluster-node/scsi0:1", f"{vm.uuid}/scsi1:0"})))
    assert [t["spec"]["source"] for t in ms.data_volumes] == [{"blank": {}}] * 3


def test_disk_sizes_round_up_and_quantities_are_exact() -> None:
    assert disk_request(1) == "1Mi" and disk_request(GiB) == "1Gi" and disk_request(GiB + 1) == "1025Mi"
    assert quantity(1536 * 1024**2) == "1536Mi" and quantity(4095) == "4095" and quantity(2048) == "2Ki"
    vm = linux_bios_vm()
    vm.disks[0].virtual_size = None
    with pytest.raises(GenerationError, match="virtual size unknown"):
        build(vm)


def test_unusual_devices_buses_and_models() -> None:
    vm = linux_bios_vm()
    vm.disks += [
        Disk(target="fda", device="floppy", bus="fdc", path="/f.img", virtual_size=1474560),
        Disk(target="sdb", device="lun", bus="scsi", source_type="block", path="/dev/sdb", virtual_size=GiB),
        Disk(target="xvdc", bus="xen", path="/x.img", virtual_size=GiB, serial="bad serial!"),
    ]
    vm.nics += [
        Nic(mac="52:54:00:00:00:02", model="vlance", type="bridge", network="br1"),
        Nic(mac="not-a-mac", model=None, type="bridge", network="br2"),
    ]
    with pytest.raises(GenerationError, match="disk sdb: no transfer record and no image file"):
        build(vm)
    ms = build(vm, SourceResolver(http_base="http://h", blank=frozenset({"web01/sdb"})))
    disks = {x["name"]: x for x in domain(ms)["devices"]["disks"]}
    assert set(disks) == {"vda", "sdb", "xvdc"}
    assert disks["sdb"] == {"name": "sdb", "disk": {"bus": "scsi"}}  # lun -> plain disk
    assert disks["xvdc"]["disk"]["bus"] == "virtio" and "serial" not in disks["xvdc"]
    ifaces = domain(ms)["devices"]["interfaces"]
    assert ifaces[1]["model"] == "pcnet" and ifaces[2]["model"] == "virtio"
    assert "macAddress" not in ifaces[2]
    notes = "\n".join(ms.notes)
    assert "floppy" in notes and "LUN" in notes and "serial" in notes and "malformed" in notes
    assert admission_errors(ms.virtual_machine) == []


def test_duplicate_boot_orders_are_renumbered_in_the_same_sequence() -> None:
    vm = multi_vm()
    vm.disks[1].boot_order = 1  # duplicate of disk 0
    ms = build(vm)
    d = domain(ms)
    orders = [x.get("bootOrder") for x in d["devices"]["disks"]] + [
        i.get("bootOrder") for i in d["devices"]["interfaces"]]
    assert orders == [1, 2, None, None, None, 3]


def test_vm_without_nics_gets_no_pod_interface_and_non_x86_is_refused() -> None:
    vm = linux_bios_vm()
    vm.nics = []
    d = domain(build(vm))
    assert d["devices"]["autoattachPodInterface"] is False and d["devices"]["interfaces"] == []
    vm.arch = "aarch64"
    with pytest.raises(GenerationError, match="VM web01: architecture aarch64"):
        build(vm)
    vm.arch, vm.memory = "x86_64", 0
    with pytest.raises(GenerationError, match="memory size unknown"):
        build(vm)


# -- the admission rules, each broken once ---------------------------------------------------


def _broken(change) -> list[str]:  # type: ignore[no-untyped-def]
    vm = copy.deepcopy(build(windows_efi_vm(), networks=networks(**{"*": "pod"})).virtual_machine)
    assert admission_errors(vm) == []
    change(vm)
    return admission_errors(vm)


def _d(vm):  # type: ignore[no-untyped-def]
    return vm["spec"]["template"]["spec"]["domain"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda vm: _d(vm)["features"].pop("smm"), "SecureBoot requires SMM"),
        (lambda vm: _d(vm)["features"].update(smm={"enabled": False}), "SecureBoot requires SMM"),
        (lambda vm: _d(vm)["machine"].update(type="pc-i440fx-6.2"), "machine.type"),
        (lambda vm: _d(vm)["devices"]["disks"][0]["disk"].update(bus="ide"), "bus 'ide'"),
        (lambda vm: _d(vm)["devices"]["disks"][0]["disk"].update(readonly=True), "sata hard-disks"),
        (lambda vm: _d(vm)["devices"]["disks"].append({"name": "extra", "disk": {"bus": "virtio"}}), "no volume"),
        (lambda vm: _d(vm)["devices"]["disks"].append({"name": "cd", "cdrom": {"bus": "virtio"}}), "for a cdrom"),
        (lambda vm: vm["spec"]["template"]["spec"]["volumes"].append(
            {"name": "orphan", "dataVolume": {"name": "x"}}), "no disk of that name"),
        (lambda vm: vm["spec"]["template"]["spec"]["networks"][0].update(name="other"), "no network of that name"),
        (lambda vm: vm["spec"]["template"]["spec"]["networks"].__setitem__(
            0, {"name": "nic0", "multus": {"networkName": "a/b"}}), "Masquerade interface only"),
        (lambda vm: _d(vm)["devices"]["interfaces"][0].update(model="vmxnet3"), "model 'vmxnet3'"),
        (lambda vm: _d(vm)["devices"]["interfaces"][0].update(macAddress="zz"), "malformed MAC"),
        (lambda vm: _d(vm)["devices"]["interfaces"][0].update(bootOrder=2), "already set"),
        (lambda vm: _d(vm)["features"]["hyperv"].pop("vpindex"), "requires"),
        (lambda vm: vm["spec"].update(runStrategy="Sometimes"), "runStrategy"),
        (lambda vm: vm["metadata"].update(name="DC01"), "DNS-1123"),
        (lambda vm: vm["spec"]["dataVolumeTemplates"][0]["spec"]["source"].update(blank={}), "exactly one source"),
        (lambda vm: vm["spec"].update(instancetype={"name": "u1.medium"}), "conflicts with spec.instancetype"),
        (lambda vm: _d(vm).pop("memory"), "no memory requested"),
    ],
)
def test_admission_rules_refuse_what_kubevirt_refuses(change, expected) -> None:  # type: ignore[no-untyped-def]
    errors = _broken(change)
    assert any(expected in e for e in errors), errors


def test_generator_refuses_a_vm_kubevirt_would_refuse() -> None:
    vm = multi_vm()
    vm.nics[0].mac = "02:00:00:00:00:00"  # reserved by the pod bridge: dropped, with a note
    ms = build(vm, networks=networks(**{"bridge:VM Network": "pod", "*": "multus:vms/x"}))
    assert "macAddress" not in domain(ms)["devices"]["interfaces"][0]
    assert any("reserved" in n for n in ms.notes)
