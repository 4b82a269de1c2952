"""Guest readiness, the fast parts: network configuration parsers, the initramfs lister,
Windows facts from real registry hives (made with hivexregedit), the one bus rule shared
by manifests and assessment, the KubeVirt-spec → libvirt-domain translation, the plan's
guest settings and the conversion decision."""

from __future__ import annotations

import gzip
import shutil
import stat
import subprocess
from dataclasses import replace
from pathlib import Path

import defusedxml.ElementTree as ET
import pytest
import yaml

from manifests.generate import GenerationContext, GenerationOptions, build_vm_manifests
from manifests.sources import SourceResolver
from migrate.assessment import assess
from migrate.guest import netconf
from migrate.guest.boottest import BOOTED, FAILED, judge
from migrate.guest.domain import DomainFiles, BootDisk, domain_xml
from migrate.guest.initramfs import InitramfsError, module_names
from migrate.guest.v2v import needs_conversion, pin_rules
from migrate.guest.windows import apply_facts, read_hive
from migrate.core.mapping import POD, NetworkMap, NetworkTarget, inspected_disk_bus
from migrate.core.model import GuestNetwork, GuestOS, Inspection, Inventory, Nic
from migrate.plan import PlanError, load_plan
from tests.assess_support import clean_vm
from tests.guest_support import _cpio
from tests.hive_support import make_hive

# -- network configuration -----------------------------------------------------------------


def test_debian_interfaces_static_and_dhcp() -> None:
    text = """auto lo
iface lo inet loopback
# the LAN
auto ens3
iface ens3 inet static
    address 192.168.10.5
    netmask 255.255.255.0
    gateway 192.168.10.1
    dns-nameservers 192.168.10.53 1.1.1.1
    hwaddress ether 52:54:00:AA:BB:CC
allow-hotplug ens4
iface ens4 inet dhcp
"""
    nets = netconf.parse_interfaces(text, "/etc/network/interfaces")
    assert nets == [
        GuestNetwork("ens3", "static", ["192.168.10.5/24"], "192.168.10.1",
                     ["192.168.10.53", "1.1.1.1"], "52:54:00:aa:bb:cc", "/etc/network/interfaces"),
        GuestNetwork("ens4", "dhcp", source="/etc/network/interfaces")]


def test_rhel_ifcfg_static() -> None:
    text = 'DEVICE=eth0\nBOOTPROTO=none\nIPADDR=10.0.0.7\nPREFIX=16\nGATEWAY=10.0.0.1\n' \
           'DNS1=10.0.0.2\nDNS2=10.0.0.3\nHWADDR="52:54:00:01:02:03"\nONBOOT=yes\n'
    (net,) = netconf.parse_ifcfg(text, "/etc/sysconfig/network-scripts/ifcfg-eth0")
    assert (net.interface, net.method, net.addresses, net.gateway, net.dns, net.mac) == (
        "eth0", "static", ["10.0.0.7/16"], "10.0.0.1", ["10.0.0.2", "10.0.0.3"],
        "52:54:00:01:02:03")
    (dhcp,) = netconf.parse_ifcfg("DEVICE=eth1\nBOOTPROTO=dhcp\n", "ifcfg-eth1")
    assert dhcp.method == "dhcp" and dhcp.addresses == []


def test_networkmanager_keyfile() -> None:
    text = """[connection]
id=Wired 1
type=ethernet
interface-name=enp1s0

[ethernet]
mac-address=52:54:00:0A:0B:0C

[ipv4]
method=manual
address1=172.16.0.9/24,172.16.0.1
dns=172.16.0.53;
"""
    (net,) = netconf.parse_keyfile(text, "/etc/NetworkManager/system-connections/w.nmconnection")
    assert (net.interface, net.method, net.addresses, net.gateway, net.dns, net.mac) == (
        "enp1s0", "static", ["172.16.0.9/24"], "172.16.0.1", ["172.16.0.53"],
        "52:54:00:0a:0b:0c")


def test_netplan_and_networkd() -> None:
    plan = yaml.safe_dump({"network": {"version": 2, "ethernets": {
        "eth0": {"addresses": ["10.9.0.4/24"], "routes": [{"to": "default", "via": "10.9.0.1"}],
                 "nameservers": {"addresses": ["10.9.0.53"]},
                 "match": {"macaddress": "52:54:00:DE:AD:01"}},
        "eth1": {"dhcp4": True}}}})
    nets = netconf.parse_netplan(plan, "/etc/netplan/50.yaml")
    assert [(n.interface, n.method, n.addresses, n.gateway, n.dns, n.mac) for n in nets] == [
        ("eth0", "static", ["10.9.0.4/24"], "10.9.0.1", ["10.9.0.53"], "52:54:00:de:ad:01"),
        ("eth1", "dhcp", [], None, [], None)]
    (net,) = netconf.parse_networkd(
        "[Match]\nName=ens5\n\n[Network]\nAddress=10.3.0.2/24\nGateway=10.3.0.1\nDNS=10.3.0.9\n",
        "/etc/systemd/network/10-ens5.network")
    assert (net.interface, net.method, net.addresses, net.gateway, net.dns) == (
        "ens5", "static", ["10.3.0.2/24"], "10.3.0.1", ["10.3.0.9"])


# -- initramfs -----------------------------------------------------------------------------


def _archive(paths: list[str]) -> bytes:
    f = stat.S_IFREG | 0o644
    return _cpio([(p, f, b"x") for p in paths])


def test_initramfs_modules_behind_an_early_microcode_archive() -> None:
    early = _archive(["kernel/x86/microcode/GenuineIntel.bin"])
    main = gzip.compress(_archive([
        "usr/lib/modules/6.1.0-28-amd64/kernel/drivers/block/virtio_blk.ko",
        "usr/lib/modules/6.1.0-28-amd64/kernel/drivers/ata/ahci.ko.xz",
        "usr/lib/modules/6.1.0-28-amd64/kernel/drivers/scsi/virtio_scsi.ko.zst",
        "usr/bin/busybox"]))
    assert module_names(early + b"\0" * 512 + main) == {"virtio_blk", "ahci", "virtio_scsi"}


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd is not installed")
def test_initramfs_zstd_segment() -> None:
    raw = _archive(["lib/modules/6/kernel/drivers/net/virtio_net.ko"])
    packed = subprocess.run(["zstd", "-q", "-c"], input=raw, capture_output=True,
                            check=True).stdout
    assert module_names(packed) == {"virtio_net"}


def test_initramfs_garbage_is_one_clear_error() -> None:
    with pytest.raises(InitramfsError, match="initrd.img: unknown data at byte 0"):
        module_names(b"not an archive at all", "initrd.img")


# -- Windows: real hives made by hivexregedit ----------------------------------------------

SYSTEM_REG = r"""[HKEY_LOCAL_MACHINE\SYSTEM\Select]
"Current"=dword:00000002

[HKEY_LOCAL_MACHINE\SYSTEM\ControlSet002]

[HKEY_LOCAL_MACHINE\SYSTEM\ControlSet002\Services]

[HKEY_LOCAL_MACHINE\SYSTEM\ControlSet002\Services\storahci]
"Start"=dword:00000000

[HKEY_LOCAL_MACHINE\SYSTEM\ControlSet002\Services\netkvm]
"Start"=dword:00000003

[HKEY_LOCAL_MACHINE\SYSTEM\ControlSet002\Services\VMTools]
"Start"=dword:00000002

[HKEY_LOCAL_MACHINE\SYSTEM\ControlSet002\Services\QEMU-GA]
"Start"=dword:00000002

[HKEY_LOCAL_MACHINE\SYSTEM\ControlSet002\Services\Tcpip]

[HKEY_LOCAL_MACHINE\SYSTEM\ControlSet002\Services\Tcpip\Parameters]
"Hostname"="WIN-DB01"

[HKEY_LOCAL_MACHINE\SYSTEM\ControlSet002\Services\Tcpip\Parameters\Interfaces]

[HKEY_LOCAL_MACHINE\SYSTEM\ControlSet002\Services\Tcpip\Parameters\Interfaces\{5d6f1a2b-0000-4000-8000-000000000001}]
"EnableDHCP"=dword:00000000
"IPAddress"=hex(7):31,00,30,00,2e,00,31,00,2e,00,32,00,2e,00,33,00,00,00,00,00
"SubnetMask"=hex(7):32,00,35,00,35,00,2e,00,32,00,35,00,35,00,2e,00,32,00,35,00,35,00,2e,00,30,00,00,00,00,00
"DefaultGateway"=hex(7):31,00,30,00,2e,00,31,00,2e,00,32,00,2e,00,31,00,00,00,00,00
"NameServer"="10.1.2.53,10.1.2.54"

[HKEY_LOCAL_MACHINE\SYSTEM\ControlSet002\Services\Tcpip\Parameters\Interfaces\{5d6f1a2b-0000-4000-8000-000000000002}]
"EnableDHCP"=dword:00000001

"""
SOFTWARE_REG = r"""[HKEY_LOCAL_MACHINE\SOFTWARE\Microsoft]

[HKEY_LOCAL_MACHINE\SOFTWARE\Microsoft\Windows NT]

[HKEY_LOCAL_MACHINE\SOFTWARE\Microsoft\Windows NT\CurrentVersion]
"ProductName"="Windows Server 2022 Standard"

"""


def test_windows_facts_from_registry_hives(tmp_path: Path) -> None:
    system = make_hive(tmp_path / "SYSTEM", r"HKEY_LOCAL_MACHINE\SYSTEM", SYSTEM_REG)
    software = make_hive(tmp_path / "SOFTWARE", r"HKEY_LOCAL_MACHINE\SOFTWARE", SOFTWARE_REG)
    result = Inspection(os_type="windows")
    apply_facts(result, read_hive(system), read_hive(software))
    # ControlSet002 is current: its services, not ControlSet001's
    assert result.drivers == {"viostor": False, "vioscsi": False, "netkvm": True,
                              "storahci": True}
    assert result.agents == ["qemu-guest-agent"]
    assert result.foreign_tools == ["vmware-tools"]
    assert result.hostname == "WIN-DB01"
    assert result.product_name == "Windows Server 2022 Standard"
    static, dhcp = result.network
    assert (static.method, static.addresses, static.gateway, static.dns) == (
        "static", ["10.1.2.3/24"], "10.1.2.1", ["10.1.2.53", "10.1.2.54"])
    assert dhcp.method == "dhcp" and dhcp.interface.endswith("0002}")
    # the one bus rule: no viostor -> sata (storahci ships with Windows); netkvm -> virtio NIC
    vm = clean_vm()
    assert inspected_disk_bus("virtio", vm.disks[0], result).value == "sata"
    assert needs_conversion(result, "virtio") == (
        True, "the guest lacks viostor, which its virtio boot disk needs")


# -- the bus rule, manifests and assessment together ---------------------------------------


def _manifest_buses(vm: object) -> tuple[list[str], list[str]]:
    inv = Inventory(vms=[vm])  # type: ignore[list-item]
    options = GenerationOptions(networks=NetworkMap({"*": NetworkTarget(POD)}))
    ctx = GenerationContext.for_inventory(inv, options=options,
                                          sources=SourceResolver(http_base="http://x"))
    spec = build_vm_manifests(vm, ctx).virtual_machine["spec"]["template"]["spec"]  # type: ignore[arg-type]
    disks = [d["disk"]["bus"] for d in spec["domain"]["devices"]["disks"]]
    nics = [i.get("model") for i in spec["domain"]["devices"]["interfaces"]]
    return disks, nics


@pytest.mark.parametrize(("drivers", "disk_bus", "nic_model", "concerns"), [
    ({"virtio_blk": True, "virtio_scsi": True, "virtio_net": True, "ahci": True},
     "virtio", "virtio", set()),
    ({"virtio_blk": False, "virtio_scsi": False, "virtio_net": False, "ahci": True},
     "sata", "e1000e", {"guest-virtio-missing"}),
    ({"virtio_blk": False, "virtio_scsi": False, "virtio_net": False, "ahci": False},
     "sata", "e1000e", {"guest-virtio-missing", "guest-no-boot-driver"}),
    ({}, "virtio", "virtio", set()),  # nothing learnt: the hypervisor's choice stands
])
def test_manifests_and_assessment_share_the_inspected_bus(
        drivers: dict[str, bool], disk_bus: str, nic_model: str, concerns: set[str]) -> None:
    vm = clean_vm()
    vm.inspection = Inspection(os_type="linux", drivers=drivers)
    disks, nics = _manifest_buses(vm)
    assert (disks, nics) == ([disk_bus], [nic_model])
    found = assess(Inventory(vms=[vm]), [vm])[vm.key]
    assert {c.id for c in found if c.id.startswith("guest-")} == concerns
    for c in found:
        if c.id == "guest-virtio-missing":
            assert f"uses {disk_bus}" in c.message


def test_inspected_facts_replace_the_hostonly_guess() -> None:
    """A RHEL guest from VMware is *guessed* to have a host-only initramfs; once inspected,
    the facts speak instead (docs/guest-readiness.md)."""
    vm = clean_vm()
    vm.hypervisor = "vmware"
    vm.guest_os = GuestOS(family="linux", distro="rhel", name="Red Hat Enterprise Linux 9")
    ids = lambda: {c.id for c in assess(Inventory(vms=[vm]), [vm])[vm.key]}  # noqa: E731
    assert "initramfs-hostonly" in ids()
    vm.inspection = Inspection(os_type="linux", drivers={"virtio_blk": True, "ahci": True})
    assert "initramfs-hostonly" not in ids() and "guest-virtio-missing" not in ids()
    vm.inspection = Inspection(os_type="linux", drivers={"virtio_blk": False, "ahci": True})
    assert "initramfs-hostonly" not in ids() and "guest-virtio-missing" in ids()


def test_scsi_kept_when_the_guest_has_virtio_scsi_only() -> None:
    vm = clean_vm()
    disk = replace(vm.disks[0], bus="scsi", target="sda")
    ins = Inspection(os_type="linux", drivers={"virtio_blk": False, "virtio_scsi": True})
    assert inspected_disk_bus("scsi", disk, ins).value == "scsi"
    assert inspected_disk_bus("sata", disk, Inspection(
        os_type="linux", drivers={"virtio_blk": True})).value == "virtio"


# -- the domain KubeVirt's virt-launcher would define --------------------------------------


def _spec(efi: dict | None = None, buses: tuple[str, ...] = ("virtio",)) -> dict:
    domain = {"cpu": {"sockets": 1, "cores": 2, "threads": 1}, "memory": {"guest": "1Gi"},
              "devices": {"disks": [{"name": f"d{i}", "disk": {"bus": b}, **(
                  {"bootOrder": 1} if i == 0 else {})} for i, b in enumerate(buses)],
                  "interfaces": [{"name": "default", "model": "e1000e",
                                  "macAddress": "52:54:00:00:00:09", "masquerade": {}}]}}
    if efi is not None:
        domain["firmware"] = {"bootloader": {"efi": efi}}
    return {"template": {"spec": {"domain": domain}}}


def test_domain_mirrors_the_spec(tmp_path: Path) -> None:
    files = DomainFiles(tmp_path / "console.log", tmp_path / "bios.log", tmp_path / "nv.fd",
                        {"d0": BootDisk(tmp_path / "a.qcow2"), "d1": BootDisk(tmp_path / "b.qcow2"),
                         "d2": BootDisk(tmp_path / "c.qcow2")})
    root = ET.fromstring(domain_xml("t", _spec(buses=("sata", "scsi", "virtio")), files))
    assert root.get("type") == "qemu"
    assert root.find("os/type").get("machine") == "q35"
    assert root.find("memory").text == "1024" and root.find("vcpu").text == "2"
    topo = root.find("cpu/topology")
    assert (topo.get("sockets"), topo.get("cores"), topo.get("threads")) == ("1", "2", "1")
    targets = [(d.find("target").get("dev"), d.find("target").get("bus"))
               for d in root.findall("devices/disk")]
    assert targets == [("sda", "sata"), ("sdb", "scsi"), ("vda", "virtio")]
    assert root.find("devices/disk/boot").get("order") == "1"
    assert root.find("devices/controller[@model='virtio-scsi']") is not None
    nic = root.find("devices/interface")
    assert nic.find("model").get("type") == "e1000e" and nic.find("link").get("state") == "down"
    assert nic.find("mac").get("address") == "52:54:00:00:00:09"
    assert root.find("devices/channel/target").get("name") == "org.qemu.guest_agent.0"
    assert root.find("os/loader") is None  # BIOS: SeaBIOS, with its debug console captured
    assert "isa-debugcon" in ET.tostring(root).decode()


def test_domain_efi_secure_boot_gets_smm_and_the_secboot_build(tmp_path: Path) -> None:
    files = DomainFiles(tmp_path / "c", tmp_path / "b", tmp_path / "nv.fd",
                        {"d0": BootDisk(tmp_path / "a.qcow2")})
    root = ET.fromstring(domain_xml("t", _spec(efi={}), files))  # KubeVirt: secureBoot default true
    loader = root.find("os/loader")
    assert loader.get("secure") == "yes" and loader.text.endswith("secboot.fd")
    assert root.find("features/smm").get("state") == "on"
    root = ET.fromstring(domain_xml("t", _spec(efi={"secureBoot": False}), files))
    assert root.find("os/loader").get("secure") == "no" and root.find("features/smm") is None


def test_console_verdicts() -> None:
    assert judge("Debian GNU/Linux 12 web ttyS0\n\nweb login: ", "", None)[0] == BOOTED
    assert judge("...\nREADY-42\n", "", "READY-42") == (BOOTED, "marker 'READY-42' on the "
                                                               "serial console")
    verdict = judge("Gave up waiting for root file system device.\nALERT!  UUID=1234 does "
                    "not exist.  Dropping to a shell!\n", "", None)
    assert verdict is not None and verdict[0] == FAILED and verdict[1].startswith("initramfs shell")
    assert judge("", "Booting from Hard Disk...\nNo bootable device.\n", None)[1].startswith(
        "no bootable device")
    assert judge("[  OK  ] dracut-initqueue[312]: Warning: dracut-initqueue timeout - starting "
                 "timeout scripts\n", "", None)[1].startswith("dracut emergency shell")
    assert judge("Kernel panic - not syncing: VFS: Unable to mount root fs\n", "",
                 None)[1].startswith("kernel panic")
    assert judge("Loading Linux ...\n", "", None) is None


# -- plan settings and the conversion decision ---------------------------------------------


def test_plan_guest_settings_are_checked(tmp_path: Path) -> None:
    from tests.plan_support import staged

    plan_file = staged(tmp_path, Inventory(vms=[clean_vm("web-01")]), [["web-01"]])
    data = yaml.safe_load(plan_file.read_text())
    data["convert"] = {"guest": "sometimes", "preserveStaticIPs": True}
    data["bootTest"] = {"timeout": 0, "accel": "hvf", "marker": "UP"}
    plan_file.write_text(yaml.safe_dump(data))
    with pytest.raises(PlanError) as err:
        load_plan(plan_file)
    assert err.value.problems == [
        "convert.guest: 'sometimes' is not one of auto, never, always",
        "bootTest.timeout: must be more than 0 seconds",
        "bootTest.accel: 'hvf' is not one of auto, kvm, tcg"]
    data["convert"]["guest"] = "never"
    data["bootTest"] = {"timeout": 90, "marker": "UP"}
    plan_file.write_text(yaml.safe_dump(data))
    plan = load_plan(plan_file)
    assert (plan.convert.guest, plan.convert.preserve_static_ips, plan.boot_test.timeout,
            plan.boot_test.marker, plan.boot_test.accel) == ("never", True, 90.0, "UP", "auto")


def test_conversion_decision_and_mac_pinning() -> None:
    hostonly = Inspection(os_type="linux", drivers={"virtio_blk": False, "ahci": True},
                          network=[GuestNetwork("eth0", "static", ["10.1.2.3/24"])])
    assert needs_conversion(hostonly, "virtio") == (
        True, "the guest lacks virtio_blk, which its virtio boot disk needs")
    assert needs_conversion(hostonly, "sata")[0] is False
    assert needs_conversion(hostonly, "virtio", "never") == (False, "convert.guest is never")
    assert needs_conversion(None, "virtio")[0] is False
    assert needs_conversion(Inspection(os_type="linux"), "sata", "always")[0] is True
    vm = clean_vm()
    assert pin_rules(vm, hostonly.network) == [("eth0", "52:54:00:00:00:01")]
    vm.nics.append(Nic(mac="52:54:00:00:00:02"))  # two NICs, no MAC in the config: unknown
    assert pin_rules(vm, hostonly.network) == []
    pinned = [GuestNetwork("ens3", "static", ["10.0.0.2/24"], mac="52:54:00:00:00:02")]
    assert pin_rules(vm, pinned) == [("ens3", "52:54:00:00:00:02")]
