"""Each assessment rule, positive and negative, from model objects; cross-VM rules; ordering."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from migrate.assessment import (
    RULES,
    Concern,
    Severity,
    assess,
    assess_vm,
    run_rule,
    summaries,
    summary,
    worst,
)
from migrate.core.model import (
    VM,
    BackingFile,
    Device,
    Disk,
    GuestNetwork,
    GuestOS,
    Inspection,
    Inventory,
    Nic,
    PowerState,
    Source,
    SourceKind,
    Tuning,
)
from migrate.core.naming import dns1123_label
from migrate.core.workdir import target_names
from tests.assess_support import GiB, clean_vm

DOCS = Path(__file__).resolve().parents[1] / "docs" / "assess.md"
Mutation = Callable[[VM], None]


def disk0(**kw: object) -> Mutation:
    def m(vm: VM) -> None:
        vm.disks[0] = replace(vm.disks[0], **kw)

    return m


def nic0(**kw: object) -> Mutation:
    def m(vm: VM) -> None:
        vm.nics[0] = replace(vm.nics[0], **kw)

    return m


def attrs(**kw: object) -> Mutation:
    def m(vm: VM) -> None:
        for k, v in kw.items():
            setattr(vm, k, v)

    return m


def add_device(kind: str, model: str | None = None, **details: str) -> Mutation:
    return lambda vm: vm.devices.append(Device(kind=kind, model=model, details=dict(details)))


def add_disk(**kw: object) -> Mutation:
    return lambda vm: vm.disks.append(Disk(**kw))  # type: ignore[arg-type]


def device_model(kind: str, model: str) -> Mutation:
    def m(vm: VM) -> None:
        for d in vm.devices:
            if d.kind == kind:
                d.model = model

    return m


def firmware(**kw: object) -> Mutation:
    return lambda vm: setattr(vm, "firmware", replace(vm.firmware, **kw))


def tuning(**kw: object) -> Mutation:
    return lambda vm: setattr(vm, "tuning", replace(vm.tuning, **kw))


def guest(**kw: object) -> Mutation:
    return lambda vm: setattr(vm, "guest_os", GuestOS(**kw))  # type: ignore[arg-type]


def inspected(**kw: object) -> Mutation:
    """What vmmove inspect found inside the guest (migrate.guest.inspect)."""
    return lambda vm: setattr(vm, "inspection", Inspection(os_type="linux", **kw))  # type: ignore[arg-type]


def offline(descriptor: str) -> Mutation:
    """The VM as read from an offline domain XML file (its export: that file's folder)."""
    return lambda vm: setattr(vm, "source", Source(SourceKind.DOMAIN_XML, descriptor))


def both(*ms: Mutation) -> Mutation:
    def m(vm: VM) -> None:
        for x in ms:
            x(vm)

    return m


# (rule id, mutation of the clean VM that must raise it, text the message must hold, subject)
POSITIVE: list[tuple[str, Mutation, str, str | None]] = [
    ("container", attrs(hypervisor="lxc", os_type="exe"), "container", None),
    ("xen-pv", attrs(hypervisor="xen", os_type="xen"), "Xen paravirtualised", None),
    ("xen-hvm", attrs(hypervisor="xen", os_type="hvm"), "Xen HVM", None),
    ("arch-unsupported", attrs(arch="aarch64"), "aarch64", None),
    ("arch-i686", attrs(arch="i686"), "32-bit (i686) guest", None),
    ("machine-i440fx", attrs(machine="pc-i440fx-2.9"), "pc-i440fx-2.9", None),
    ("machine-other", attrs(machine="vmx-13"), "vmx-13 becomes q35", None),
    ("vm-running", attrs(power_state=PowerState.RUNNING), "running", None),
    ("vm-suspended", attrs(power_state=PowerState.SUSPENDED), "suspended", None),
    ("vm-crashed", attrs(power_state=PowerState.CRASHED), "crashed", None),
    ("guest-os-unknown", attrs(guest_os=None), "guest OS", None),
    ("guest-windows", guest(id="http://microsoft.com/win/2k22", name="Windows Server 2022"), "Windows Server 2022", None),
    ("clock-localtime", attrs(clock_offset="localtime"), "local time", None),
    ("clock-variable", attrs(clock_offset="variable"), "variable", None),
    ("numa", tuning(numa_nodes=2), "2 guest NUMA", None),
    ("cpu-pinning", tuning(cpu_pinning=True), "pinning", None),
    ("hugepages", tuning(hugepages=True), "hugepage", None),
    ("hotplug-memory", attrs(max_memory=8 * GiB), "8192 MiB", None),
    ("hotplug-vcpus", attrs(max_vcpus=8), "8 vCPUs", None),
    ("memory-unknown", attrs(memory=0), "memory", None),
    ("memory-high", attrs(memory=512 * GiB), "512 GiB", None),
    ("vcpus-high", attrs(vcpus=96), "96 vCPUs", None),
    ("snapshots", attrs(snapshots=3), "3 snapshot", None),
    ("secure-boot", firmware(secure_boot=True), "secure boot", None),
    ("tpm", firmware(tpm_version="2.0", tpm_model="tpm-crb"), "TPM 2.0 (tpm-crb)", "tpm"),
    ("tpm-version", firmware(tpm_version="1.2", tpm_model="tpm-tis"), "1.2 becomes TPM 2.0", "tpm"),
    ("disk-unreadable", disk0(error="Permission denied"), "Permission denied", "vda"),
    ("disk-no-source", disk0(path=None), "no source", "vda"),
    ("disk-size-unknown", disk0(virtual_size=None), "size of disk vda", "vda"),
    ("backing-chain", disk0(backing_chain=[BackingFile("/img/mid.qcow2"), BackingFile("/img/base.qcow2")]), "/img/base.qcow2", "vda"),
    ("backing-outside-export", both(offline("/exports/web/web.xml"), disk0(
        path="/exports/web/web.qcow2", backing_chain=[BackingFile("/exports/web/mid.qcow2"),
                                                      BackingFile("/etc/shadow")])),
     "backing file /etc/shadow, outside its export", "vda"),
    ("disk-shareable", disk0(shareable=True), "shared", "vda"),
    ("disk-network", disk0(source_type="network", protocol="rbd", path="pool/img", hosts=["mon1:6789"]), "rbd:pool/img on mon1:6789", "vda"),
    ("disk-block", disk0(source_type="block", path="/dev/vg0/web"), "/dev/vg0/web", "vda"),
    ("disk-vhost", disk0(source_type="vhostuser", path="/run/vhost-blk.sock"), "vhostuser disk (/run/vhost-blk.sock)", "vda"),
    ("disk-lun", disk0(device="lun", source_type="block", path="/dev/sdb", bus="scsi"), "LUN", "vda"),
    ("disk-block", disk0(source_type="nvme", path="0000:02:00.0"), "host NVMe namespace 0000:02:00.0", "vda"),
    ("disk-dir", disk0(source_type="dir", path="/srv/share"), "/srv/share", "vda"),
    ("disk-bus-ide", disk0(bus="ide", target="hda"), "hda on IDE becomes sata", "hda"),
    ("disk-bus-other", disk0(bus="nvme"), "bus nvme becomes virtio", "vda"),  # Linux: the mapping's rule 3
    ("disk-rdm", disk0(layout="rdm-physical", path="/vmfs/db_1.vmdk"), "physical (pass-through) raw device map", "vda"),
    ("disk-vsan", disk0(layout="vsan", path="/exp/db_2.vmdk"), "vSAN object descriptor", "vda"),
    ("cdrom-passthrough", add_disk(target="sdb", device="lun", source_type="block", layout="host-cdrom", path="/vmfs/devices/cdrom/mpx.vmhba0:C0:T0:L0"), "host CD-ROM drive /vmfs/devices/cdrom/mpx.vmhba0:C0:T0:L0", "sdb"),
    ("initramfs-hostonly", both(attrs(hypervisor="vmware"), guest(id="centos7-64", name="CentOS 7 (64-bit)", family="linux", distro="centos")), "CentOS 7 (64-bit) guest from VMware", None),
    ("scsi-controller", disk0(bus="scsi", target="sda", controller_model="lsilogic"), "lsilogic", "sda"),
    ("cdrom", add_disk(target="sdb", device="cdrom", bus="sata", path="/iso/rhel.iso"), "/iso/rhel.iso", "sdb"),
    ("floppy", add_disk(target="fda", device="floppy", bus="fdc", path="/img/fd.img"), "floppy fda", "fda"),
    ("no-disks", attrs(disks=[]), "no disks", None),
    ("nic-model", nic0(model="vmxnet3"), "vmxnet3 becomes virtio", "52:54:00:00:00:01"),
    ("nic-no-network", nic0(type="user", network=None), "user-mode", "52:54:00:00:00:01"),
    ("pci-passthrough", add_device("pci-passthrough", address="0000:3b:00.0"), "0000:3b:00.0", "0000:3b:00.0"),
    ("usb-passthrough", add_device("usb-passthrough", vendor="0x046d", product="0xc52b"), "0x046d:0xc52b", "0x046d:0xc52b"),
    ("mdev-passthrough", add_device("mdev", uuid="c2177883-f1bb-47f0-914d-32a22e3a8804"), "c2177883", "c2177883-f1bb-47f0-914d-32a22e3a8804"),
    ("scsi-passthrough", add_device("scsi-passthrough", address="scsi_host0:0:0:0"), "scsi_host0", "scsi_host0:0:0:0"),
    ("filesystem-share", add_device("filesystem", "mount", source_dir="/srv/data", target_dir="data"), "/srv/data", "/srv/data"),
    ("graphics-spice", device_model("graphics", "spice"), "SPICE", "spice"),
    ("graphics-other", device_model("graphics", "sdl"), "sdl display", "sdl"),
    ("video-model", device_model("video", "qxl"), "qxl", "qxl"),
    ("watchdog-model", device_model("watchdog", "ib700"), "ib700 watchdog becomes i6300esb", "ib700"),
    ("sound-model", device_model("sound", "es1370"), "es1370", "es1370"),
    ("serial-extra", add_device("serial", "isa-serial", port="1"), "serial port 1", "serial1"),
    ("device-dropped", add_device("parallel"), "parallel port", "parallel"),
    ("name-not-dns1123", attrs(name="Web Server (prod)"), "'web-server-prod'", None),
    ("guest-virtio-missing", inspected(drivers={"virtio_blk": False, "ahci": True}),
     "initramfs lacks virtio_blk: disk vda uses sata", "vda"),
    ("guest-no-boot-driver", inspected(drivers={"virtio_blk": False, "ahci": False}),
     "lacks both virtio_blk and ahci", None),
    ("guest-static-ip", inspected(network=[GuestNetwork("eth0", "static", ["10.1.2.3/24"],
                                                        source="/etc/network/interfaces")]),
     "static IP 10.1.2.3/24 on eth0", "eth0"),
    ("guest-device-names", inspected(device_names=["/etc/fstab: /dev/sda1 on /"]),
     "/dev/sda1 on /", None),
    ("guest-foreign-tools", inspected(foreign_tools=["open-vm-tools"]), "open-vm-tools", None),
    ("guest-efi-on-bios", both(firmware(type="bios"), inspected(efi=True)), "EFI system partition",
     None),
    ("guest-inspect-failed", inspected(error="drivers unknown: no initramfs"), "no initramfs",
     None),
]

# (rule id, a near miss that must NOT raise it)
NEGATIVE: list[tuple[str, Mutation]] = [
    # a chain inside the export, and a live libvirt host's own chain, are not outside
    ("backing-outside-export", both(offline("/exports/web/web.xml"), disk0(
        backing_chain=[BackingFile("/exports/web/base/base.qcow2")]))),
    ("backing-outside-export", disk0(backing_chain=[BackingFile("/var/lib/libvirt/base.qcow2")])),
    ("container", attrs(hypervisor="kvm", os_type="hvm")),
    ("xen-pv", attrs(hypervisor="xen", os_type="hvm")),
    ("xen-hvm", attrs(hypervisor="qemu")),
    ("arch-unsupported", attrs(arch="i686")),
    ("arch-unsupported", attrs(arch=None)),
    ("arch-i686", attrs(arch="x86_64")),
    ("machine-i440fx", attrs(machine="pc-q35-rhel8.6.0")),
    ("machine-i440fx", attrs(machine="q35")),
    ("machine-other", attrs(machine="pc-i440fx-2.9")),
    ("machine-other", attrs(machine=None)),
    ("vm-running", attrs(power_state=PowerState.UNKNOWN)),
    ("vm-suspended", attrs(power_state=PowerState.PAUSED)),
    ("guest-os-unknown", guest(id="rhel9_64Guest")),
    ("guest-windows", guest(id="darwin16_64Guest", name="Apple macOS 10.12")),
    ("guest-windows", guest(family="linux", name="Ubuntu (Win compat tools)")),
    ("clock-localtime", attrs(clock_offset="timezone:Europe/Paris")),
    ("clock-variable", attrs(clock_offset="localtime")),
    ("numa", tuning(numa_nodes=0, cpu_mode="host-passthrough")),
    ("hotplug-memory", attrs(max_memory=2 * GiB)),
    ("hotplug-vcpus", attrs(max_vcpus=2)),
    ("memory-high", attrs(memory=256 * GiB)),
    ("vcpus-high", attrs(vcpus=64)),
    ("tpm", firmware(tpm_version=None, tpm_model=None)),
    ("tpm-version", firmware(tpm_version="2.0", tpm_model="tpm-crb")),
    ("disk-unreadable", add_disk(target="sdc", device="cdrom", path="/iso/gone.iso", error="No such file")),
    ("disk-no-source", add_disk(target="sdc", device="cdrom", source_type="none")),
    ("disk-no-source", disk0(source_type="network", protocol="nbd", path=None, hosts=["nbd1:10809"])),
    ("disk-no-source", disk0(source_type="volume", path=None, pool="default", volume="web.qcow2")),
    ("disk-size-unknown", disk0(virtual_size=None, error="Permission denied")),
    ("disk-size-unknown", disk0(virtual_size=None, path=None)),
    ("disk-bus-ide", add_disk(target="hdc", device="cdrom", bus="ide", source_type="none")),
    ("disk-block", disk0(source_type="volume", pool="default", volume="web.qcow2")),
    ("disk-vhost", disk0(source_type="network", protocol="nbd", hosts=["h:10809"])),
    ("disk-bus-other", disk0(bus="sata")),
    ("disk-rdm", disk0(device="lun", source_type="block", path="/dev/sdb")),
    ("disk-vsan", disk0(layout="multi-file")),
    ("cdrom-passthrough", add_disk(target="sdb", device="cdrom", source_type="block", path="/dev/sr0")),
    ("initramfs-hostonly", attrs(hypervisor="kvm")),
    ("initramfs-hostonly", both(attrs(hypervisor="vmware"), guest(id="ubuntu-64", family="linux", distro="ubuntu"))),
    ("disk-bus-other", disk0(bus="usb")),
    ("disk-bus-other", disk0(bus="ide")),
    ("scsi-controller", disk0(bus="scsi", controller_model="virtio-scsi")),
    ("scsi-controller", disk0(bus="sata", controller_model="lsilogic")),
    ("no-disks", attrs(disks=[Disk(target="sda", device="lun", source_type="block", path="/dev/sdb")])),
    ("nic-model", nic0(model="e1000e")),
    ("nic-model", nic0(model="vlance")),
    ("nic-model", nic0(model="rtl8139")),
    ("nic-model", nic0(model=None)),
    ("nic-no-network", nic0(type="bridge", network="br0")),
    ("graphics-other", device_model("graphics", "spice")),
    ("video-model", device_model("video", "bochs")),
    ("sound-model", device_model("sound", "ac97")),
    ("device-dropped", add_device("rng", "virtio")),
    ("name-not-dns1123", attrs(name="db-01")),
]


def test_the_clean_vm_raises_no_concern_at_all() -> None:
    assert assess_vm(clean_vm()) == []
    assert summary([]) == "ready"


@pytest.mark.parametrize(("rule_id", "mutate", "text", "subject"), POSITIVE, ids=[p[0] for p in POSITIVE])
def test_rule_raises_its_concern(rule_id: str, mutate: Mutation, text: str, subject: str | None) -> None:
    vm = clean_vm()
    assert run_rule(rule_id, vm) == []  # negative: the clean VM
    mutate(vm)
    found = run_rule(rule_id, vm)
    assert len(found) == 1, found
    (c,) = found
    assert c.id == rule_id and c.severity is RULES[rule_id].severity
    assert text in c.message, c.message
    assert c.subject == subject
    assert c.remediation
    # the full assessment reports it too, with the same text
    assert c in assess_vm(vm)


@pytest.mark.parametrize(("rule_id", "mutate"), NEGATIVE, ids=[n[0] for n in NEGATIVE])
def test_rule_stays_silent_on_a_near_miss(rule_id: str, mutate: Mutation) -> None:
    vm = clean_vm()
    mutate(vm)
    assert run_rule(rule_id, vm) == []


def test_every_rule_has_a_positive_test_a_docstring_and_a_doc_entry() -> None:
    tested = {p[0] for p in POSITIVE} | {"duplicate-vm", "name-collision", "mac-duplicate", "vm-copies"}
    assert set(RULES) == tested
    doc = DOCS.read_text(encoding="utf-8")
    for rule in RULES.values():
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", rule.id)
        assert rule.why and rule.remediation, rule.id
        assert f"`{rule.id}`" in doc, f"docs/assess.md does not explain {rule.id}"
        row = next(line for line in doc.splitlines() if line.startswith(f"| `{rule.id}`"))
        assert f"| {rule.severity.value} |" in row, f"docs/assess.md gives {rule.id} another severity"


def test_required_concerns_have_the_severity_the_issue_asks_for() -> None:
    critical = {"pci-passthrough", "usb-passthrough", "mdev-passthrough", "disk-no-source",
                "disk-unreadable", "xen-pv", "container", "arch-unsupported"}
    for rule_id in critical:
        assert RULES[rule_id].severity is Severity.CRITICAL, rule_id
    assert RULES["backing-chain"].severity is Severity.INFO
    assert RULES["backing-outside-export"].severity is Severity.CRITICAL


# -- cross-inventory rules ----------------------------------------------------------------


def test_duplicate_macs_are_found_across_the_inventory_whatever_their_spelling() -> None:
    a = clean_vm("a", uuid="u-a", mac="52:54:00:AA:00:01")
    b = clean_vm("b", uuid="u-b", mac="52-54-00-aa-00-01")
    c = clean_vm("c", uuid="u-c", mac="52:54:00:aa:00:02")
    inv = Inventory(vms=[a, b, c])
    result = assess(inv)
    assert [x.message for x in result["u-a"] if x.id == "mac-duplicate"] == [
        "MAC 52:54:00:AA:00:01 is also used by VM b"
    ]
    assert [x.subject for x in result["u-b"] if x.id == "mac-duplicate"] == ["52-54-00-aa-00-01"]
    assert not any(x.id == "mac-duplicate" for x in result["u-c"])
    # alone, a VM has no duplicate
    assert run_rule("mac-duplicate", a) == []


def test_a_mac_repeated_inside_one_vm_is_a_duplicate_too() -> None:
    vm = clean_vm()
    vm.nics.append(Nic(mac="52:54:00:00:00:01", model="virtio", network="other"))
    found = run_rule("mac-duplicate", vm)
    assert len(found) == 2
    assert all("another NIC of this VM" in c.message for c in found)


def test_name_collisions_show_the_name_later_steps_will_use() -> None:
    kept = clean_vm("web-server", uuid="u1", mac="52:54:00:00:00:01")
    renamed = clean_vm("Web Server", uuid="u2", mac="52:54:00:00:00:02")
    other = clean_vm("WEB_SERVER", uuid="u3", mac="52:54:00:00:00:03")
    inv = Inventory(vms=[renamed, kept, other])
    names = target_names(inv)
    result = assess(inv)
    assert not any(c.id.startswith("name-") for c in result["u1"])  # valid names are kept
    for key in ("u2", "u3"):
        vm = inv.find(key)
        assert vm is not None
        ids = {c.id: c for c in result[key]}
        assert names[key] != "web-server" and names[key].startswith("web-server-")
        assert f"becomes {names[key]!r}" in ids["name-not-dns1123"].message
        assert f"this VM becomes {names[key]!r}" in ids["name-collision"].message
        assert ids["name-collision"].severity is Severity.WARNING
    # without the others there is nothing to collide with
    assert run_rule("name-collision", renamed) == []
    assert dns1123_label(renamed.name) in run_rule("name-not-dns1123", renamed)[0].message


def test_vms_sharing_a_key_are_critical_and_share_one_entry() -> None:
    a = clean_vm("a", uuid="same", mac="52:54:00:00:00:01")
    b = clean_vm("b", uuid="same", mac="52:54:00:00:00:02")
    b.snapshots = 1
    result = assess(Inventory(vms=[a, b]))
    assert list(result) == ["same"]
    ids = [c.id for c in result["same"]]
    assert ids.count("duplicate-vm") == 1 and "snapshots" in ids
    assert result["same"][0].severity is Severity.CRITICAL
    nameless = [clean_vm("x", uuid=None, mac="52:54:00:00:00:03"), clean_vm("x", uuid=None, mac="52:54:00:00:00:04")]
    (only,) = assess(Inventory(vms=nameless)).values()
    assert "name (and no UUID) x" in next(c.message for c in only if c.id == "duplicate-vm")


def test_assess_vm_with_an_inventory_that_does_not_hold_the_vm_still_sees_both() -> None:
    inv = Inventory(vms=[clean_vm("a", uuid="u-a")])
    stranger = clean_vm("b", uuid="u-b")  # same MAC as a
    assert [c.id for c in assess_vm(stranger, inv)] == ["mac-duplicate"]


# -- severity, ordering, summary ------------------------------------------------------------


def test_severity_orders_by_weight_not_alphabetically() -> None:
    assert Severity.CRITICAL > Severity.WARNING > Severity.INFO
    assert Severity.INFO < Severity.CRITICAL and Severity.WARNING >= Severity.WARNING
    assert sorted([Severity.WARNING, Severity.CRITICAL, Severity.INFO]) == [
        Severity.INFO, Severity.WARNING, Severity.CRITICAL
    ]
    assert max(Severity) is Severity.CRITICAL
    assert Severity("warning") is Severity.WARNING
    # a plain string is read as a severity, never compared as text ("info" > "critical")
    assert Severity.INFO < "warning" and Severity.CRITICAL > "info"  # type: ignore[operator]
    with pytest.raises(TypeError):
        _ = Severity.INFO < "urgent"  # type: ignore[operator]
    with pytest.raises(TypeError):
        _ = Severity.INFO < 3  # type: ignore[operator]


def test_concerns_come_most_serious_first_and_summaries_count_them() -> None:
    vm = clean_vm()
    both(
        attrs(power_state=PowerState.RUNNING, snapshots=1),
        add_device("pci-passthrough", address="0000:01:00.0"),
        disk0(backing_chain=[BackingFile("/b.qcow2")]),
    )(vm)
    found = assess_vm(vm)
    ranks = [c.severity.rank for c in found]
    assert ranks == sorted(ranks, reverse=True)
    assert found[0].id == "pci-passthrough"
    assert worst(found) is Severity.CRITICAL and worst([]) is None
    assert summary(found) == "1 critical, 2 warning"
    info_only = [Concern("cdrom", Severity.INFO, "m", "r")] * 2
    assert summary(info_only) == "ready (2 info)"
    assert summaries(Inventory(vms=[vm, clean_vm("b", uuid="u-b", mac="52:54:00:00:00:09")])) == {
        vm.key: "1 critical, 2 warning",
        "u-b": "ready",
    }


def test_concern_to_data_is_plain() -> None:
    c = Concern("tpm", Severity.WARNING, "msg", "fix", "tpm")
    assert c.to_data() == {"id": "tpm", "severity": "warning", "message": "msg", "remediation": "fix", "subject": "tpm"}


def test_a_windows_vm_from_vmware_collects_the_expected_concerns() -> None:
    vm = clean_vm("DC01")
    both(
        attrs(machine="vmx-14", clock_offset="localtime"),
        guest(id="windows2019srv_64Guest"),
        disk0(bus="scsi", target="scsi0:0", controller_model="lsisas1068"),
        nic0(model="vmxnet3"),
    )(vm)
    by_id = {c.id: c for c in assess_vm(vm)}
    assert set(by_id) == {"machine-other", "clock-localtime", "guest-windows", "scsi-controller",
                          "nic-model", "name-not-dns1123"}
    assert "virtio (or e1000e)" in by_id["nic-model"].message
    assert "virtio-scsi (or sata)" in by_id["scsi-controller"].message
    assert "Windows guest" in by_id["clock-localtime"].message
    assert "'dc01'" in by_id["name-not-dns1123"].message


def test_unused_model_fields_do_not_trip_rules() -> None:
    vm = clean_vm()
    vm.tuning = Tuning(cpu_mode="host-passthrough", cpu_model="Skylake")
    vm.devices.append(Device(kind="rng", model="virtio"))
    vm.devices.append(Device(kind="input", model="tablet"))
    assert assess_vm(vm) == []


def test_many_vms_sharing_one_key_are_assessed_quickly_and_keep_a_plain_name() -> None:
    """Two scans of one source repeat every key; naming once looped without end on that."""
    vms = [clean_vm("Guest 1", uuid="same-uuid", mac=f"52:54:00:00:01:{i:02x}") for i in range(40)]
    result = assess(Inventory(vms=vms))
    assert list(result) == ["same-uuid"]
    assert target_names(Inventory(vms=vms)) == {"same-uuid": "guest-1"}
    assert "'guest-1'" in next(c.message for c in result["same-uuid"] if c.id == "name-not-dns1123")


# -- libvirt's own test corpus, read by the real domain XML reader ----------------------------

CORPUS_EXPECTED = {
    "hostdev-pci-address.xml": "pci-passthrough",
    "hostdev-usb-address.xml": "usb-passthrough",
    "hostdev-mdev-precreated.xml": "mdev-passthrough",
    "hostdev-scsi-boot.xml": "scsi-passthrough",
    "disk-drive-network-rbd-auth.xml": "disk-network",
    "disk-drive-network-nbd-unix.xml": "disk-network",
    "disk-scsi-lun-passthrough.xml": "disk-lun",
    "disk-drive-shared.xml": "disk-shareable",
    "disk-backing-chains.xml": "backing-outside-export",  # an offline XML naming /tmp/… files
    "fs9p.xml": "filesystem-share",
    "disk-scsi-megasas.xml": "scsi-controller",
    "aarch64-acpi-uefi.xml": "arch-unsupported",
    "watchdog-diag288.xml": "watchdog-model",
    "tpm-passthrough.xml": "tpm-version",
    "hugepages-memaccess.xml": "hugepages",
    "cpu-numa-disjoint.xml": "numa",
    "clock-localtime.xml": "clock-localtime",
    "clock-variable.xml": "clock-variable",
    "bios-nvram-secure.xml": "secure-boot",
    "graphics-spice-agent-file-xfer.xml": "graphics-spice",
    "disk-drive-network-iscsi-lun.xml": "disk-lun",
}


def test_the_libvirt_corpus_is_assessed_whole_and_raises_what_each_file_holds(shared: Path) -> None:
    from migrate.core.errors import SourceError
    from migrate.sources.domxml import read_domain_xml

    folder = shared / "corpus" / "libvirt-xml" / "qemuxml2argvdata"
    vms: list[VM] = []
    for path in sorted(folder.glob("*.xml")):
        try:
            vms.append(read_domain_xml(str(path)))
        except SourceError:
            continue  # the corpus' deliberate negatives; the reader's tests cover them
    assert len(vms) > 700
    result = assess(Inventory(vms=vms))  # 600 of them are "QEMUGuest1" with one UUID
    assert all(isinstance(c, Concern) for cs in result.values() for c in cs)
    by_file = {Path(vm.source.location).name: vm for vm in vms}
    for name, rule_id in CORPUS_EXPECTED.items():
        found = assess_vm(by_file[name])
        assert rule_id in {c.id for c in found}, (name, [c.id for c in found])
    # x86_64 files with nothing host-bound raise no critical concern
    plain = assess_vm(by_file["minimal.xml"])
    assert worst(plain) is not Severity.CRITICAL, plain
