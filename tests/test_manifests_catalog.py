"""Preferences, instancetypes, the maps, and the strictness of the schema validation."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from manifests import preferences as prefs
from manifests.generate import GenerationError, build_vm_manifests
from manifests.validate import SchemaError, SchemaValidator, as_data_volume, strict_schema
from migrate.core.mapping import MappingError, NetworkMap, StorageMap, load_maps, parse_network_target
from migrate.core.model import Disk, GuestOS, Nic
from tests.manifests_support import build, context, inventory, linux_bios_vm, multi_vm, schema_validator, windows_efi_vm

BUNDLE = "schemas/common-instancetypes-v1.7.0"


def _catalog(shared: Path) -> prefs.Catalog:
    return prefs.Catalog.load(
        shared / BUNDLE / "common-clusterpreferences-bundle.yaml",
        shared / BUNDLE / "common-clusterinstancetypes-bundle.yaml",
    )


def test_every_preference_name_vmmove_can_emit_exists_in_the_bundle(shared: Path) -> None:
    names = set(_catalog(shared).preferences)
    assert len(names) == 54
    assert prefs.PREFERENCE_NAMES <= names, prefs.PREFERENCE_NAMES - names


@pytest.mark.parametrize(
    ("guest", "expected"),
    [
        (GuestOS(id="http://microsoft.com/win/2k22", family="windows"), "windows.2k22"),
        (GuestOS(id="windows2019srvNext-64", family="windows"), "windows.2k22"),  # VMware
        (GuestOS(id="windows9Server64Guest", family="windows"), "windows.2k16"),  # OVF
        (GuestOS(id="windows7srv-64", family="windows"), "windows.2k8"),
        (GuestOS(id="windows9-64", family="windows"), "windows.10"),
        (GuestOS(id="http://microsoft.com/win/11", family="windows"), "windows.11"),
        (GuestOS(name="Microsoft Windows XP Professional", family="windows"), "windows.xp"),
        (GuestOS(family="windows"), None),
        (GuestOS(id="http://redhat.com/rhel/9.2", family="linux"), "rhel.9"),
        (GuestOS(id="rhel8_64Guest", family="linux"), "rhel.8"),
        (GuestOS(id="centos7-64", family="linux"), "rhel.7"),
        (GuestOS(id="http://centos.org/centos-stream/9", family="linux"), "centos.stream9"),
        (GuestOS(id="ubuntu64Guest", family="linux"), "ubuntu"),
        (GuestOS(id="http://debian.org/debian/12", family="linux"), "debian"),
        (GuestOS(id="sles15_64Guest", family="linux"), "sles"),
        (GuestOS(id="http://fedoraproject.org/fedora/39"), "fedora"),
        (GuestOS(id="otherLinux64Guest", family="linux"), "linux"),
        (GuestOS(id="freebsd64Guest", family="bsd"), None),
        (None, None),
    ],
)
def test_auto_preference_from_the_guest_os(guest: GuestOS | None, expected: str | None) -> None:
    assert prefs.auto_preference(guest) == expected


def test_preference_auto_checks_requirements_and_keeps_explicit_cpu_memory(shared: Path) -> None:
    cat = _catalog(shared)
    vm = linux_bios_vm()  # rhel.9 needs 1 vCPU, 1.5Gi, amd64
    inv = inventory(vm)
    ctx = context(inv, preference="auto")
    ctx.catalog = cat
    ms = build_vm_manifests(vm, ctx)
    assert ms.virtual_machine["spec"]["preference"] == {"kind": "VirtualMachineClusterPreference", "name": "rhel.9"}
    d = ms.virtual_machine["spec"]["template"]["spec"]["domain"]
    assert d["cpu"] == {"sockets": 1, "cores": 2, "threads": 1} and d["memory"] == {"guest": "4Gi"}
    assert d["devices"]["tpm"] == {"enabled": False}  # a preference must not add a TPM the source lacked
    assert schema_validator(shared).virtual_machine(ms.virtual_machine) == []
    vm.memory = 1024**3  # below rhel.9's 1.5Gi: no preference, a note
    ms = build_vm_manifests(vm, ctx)
    assert "preference" not in ms.virtual_machine["spec"]
    assert any("requires 1.5Gi" in n for n in ms.notes)
    win = windows_efi_vm()  # windows.2k22 needs 1 socket: 2 sockets fine
    ctxw = context(inventory(win), preference="auto")
    ctxw.catalog = cat
    assert build_vm_manifests(win, ctxw).virtual_machine["spec"]["preference"]["name"] == "windows.2k22"
    ctxw.options.preference = "windows.11"  # needs 2 vCPU as sockets and 4Gi: 2 sockets, 8Gi pass
    assert build_vm_manifests(win, ctxw).virtual_machine["spec"]["preference"]["name"] == "windows.11"
    win.topology.sockets, win.topology.cores = 1, 4
    with pytest.raises(GenerationError, match="preference windows.11: preference requires 2 vCPU as sockets"):
        build_vm_manifests(win, ctxw)
    ctxw.options.preference = "no.such"
    with pytest.raises(GenerationError, match="no.such is not in the given preferences"):
        build_vm_manifests(win, ctxw)


def test_instancetype_only_on_an_exact_match_and_then_without_cpu_memory(shared: Path) -> None:
    cat = _catalog(shared)
    vm = linux_bios_vm()
    vm.vcpus, vm.topology, vm.memory = 1, None, 4 * 1024**3  # u1.medium: 1 vCPU, 4Gi
    ctx = context(inventory(vm), instancetype="auto", preference="auto")
    ctx.catalog = cat
    ms = build_vm_manifests(vm, ctx)
    spec = ms.virtual_machine["spec"]
    assert spec["instancetype"] == {"kind": "VirtualMachineClusterInstancetype", "name": "u1.medium"}
    d = spec["template"]["spec"]["domain"]
    assert "cpu" not in d and "memory" not in d
    assert schema_validator(shared).virtual_machine(ms.virtual_machine) == []
    vm.memory = 3 * 1024**3  # nothing matches exactly: explicit cpu/memory stay
    ms = build_vm_manifests(vm, ctx)
    assert "instancetype" not in ms.virtual_machine["spec"]
    assert ms.virtual_machine["spec"]["template"]["spec"]["domain"]["memory"] == {"guest": "3Gi"}
    ctx.options.instancetype = "u1.medium"
    with pytest.raises(GenerationError, match="does not match 1 vCPU / 3Gi exactly"):
        build_vm_manifests(vm, ctx)
    ctx.catalog = prefs.Catalog()
    with pytest.raises(GenerationError, match="needs the cluster's instancetypes"):
        build_vm_manifests(vm, ctx)


def test_bundles_as_kubectl_lists_are_read_too(tmp_path: Path, shared: Path) -> None:
    docs = [d for d in yaml.safe_load_all((shared / BUNDLE / "common-clusterinstancetypes-bundle.yaml").read_text()) if d]
    listed = tmp_path / "list.yaml"
    listed.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": docs}))
    assert len(prefs.Catalog.load(instancetypes=listed).instancetypes) == 65
    with pytest.raises(prefs.CatalogError, match="no VirtualMachineClusterPreference"):
        prefs.Catalog.load(preferences=listed)


# -- schema strictness -------------------------------------------------------------------------


def test_strict_schema_refuses_unknown_fields_and_reads_nullable(shared: Path) -> None:
    validator = schema_validator(shared)
    good = build(linux_bios_vm()).virtual_machine
    assert validator.virtual_machine(good) == []
    bad = copy.deepcopy(good)
    bad["spec"]["template"]["spec"]["domain"]["devices"]["disks"][0]["disk"]["buss"] = "virtio"
    assert any("'buss' was unexpected" in e for e in validator.virtual_machine(bad))
    bad = copy.deepcopy(good)
    bad["spec"]["dataVolumeTemplates"][0]["spec"]["storage"]["size"] = "1Gi"
    errors = validator.virtual_machine(bad)
    assert any("'size' was unexpected" in e for e in errors)
    assert any("as DataVolume" in e for e in errors)  # checked against the CDI CRD too
    bad = copy.deepcopy(good)
    bad["spec"]["runStrategy"] = 3
    assert any("runStrategy" in e for e in validator.virtual_machine(bad))
    # metadata of a dataVolumeTemplate is nullable and keeps unknown fields
    assert strict_schema({"type": "object", "nullable": True, "properties": {"a": {"type": "string"}},
                          "x-kubernetes-preserve-unknown-fields": True}) == {
        "type": ["object", "null"], "properties": {"a": {"type": "string"}}}
    dv = as_data_volume(good["spec"]["dataVolumeTemplates"][0], good)
    assert dv["metadata"]["namespace"] == "default" and validator.data_volume(dv) == []
    with pytest.raises(SchemaError, match="expected the ../shared/schemas folder"):
        SchemaValidator(shared)


# -- maps -------------------------------------------------------------------------------------


def test_network_map_matching_order_and_target_syntax() -> None:
    m = NetworkMap({"bridge:br0": parse_network_target("pod"), "VM Network": parse_network_target("multus:a/b"),
                    "*": parse_network_target("multus:lan")})
    assert str(m.resolve(Nic(type="bridge", network="br0"))) == "pod"
    assert str(m.resolve(Nic(type="bridge", network="VM Network"))) == "multus:a/b"
    assert str(m.resolve(Nic(type="network", network="other"))) == "multus:lan"
    assert NetworkMap().resolve(Nic(network="x")) is None
    assert str(NetworkMap.from_options(["network:default=pod"]).resolve(Nic(network="default"))) == "pod"
    for bad in ("bridge", "multus:", "multus:A/b", "multus:a/b/c", "host"):
        with pytest.raises(MappingError):
            parse_network_target(bad)
    with pytest.raises(MappingError, match="expected SOURCE=TARGET"):
        NetworkMap.from_options(["pod"])


def test_storage_map_overrides_and_file_errors(tmp_path: Path) -> None:
    f = tmp_path / "m.yaml"
    f.write_text("storage:\n  storageClass: std\n  accessModes: ReadWriteOnce\n  overrides:\n"
                 "    'pool:ssd': {storageClass: fast}\n    'dir:/var/lib/libvirt/images/': {volumeMode: Block}\n")
    sm = load_maps(f).storage
    assert sm.resolve(Disk(target="vda", pool="ssd", path="/pools/ssd/a")).storage_class == "fast"
    t = sm.resolve(Disk(target="vda", path="/var/lib/libvirt/images/sub/a.qcow2"))
    assert (t.storage_class, t.volume_mode, t.access_modes) == ("std", "Block", ("ReadWriteOnce",))
    assert sm.resolve(Disk(target="vda", path="/elsewhere/a")).volume_mode is None
    for text, message in [
        ("netwroks: {}\n", "unknown key(s) netwroks"),
        ("storage: {volumeMode: block}\n", "volumeMode: 'block' is not one of Block, Filesystem"),
        ("storage: {overrides: {'vg:x': {}}}\n", "keys are pool:NAME"),
        ("storage: {accessModes: [RWX]}\n", "accessModes"),
        ("networks: [pod]\n", "expected a mapping"),
        ("networks: {a: b: c}\n", "not valid YAML"),
    ]:
        f.write_text(text)
        with pytest.raises(MappingError) as exc:
            load_maps(f)
        assert message in str(exc.value) and str(f) in str(exc.value)
    with pytest.raises(MappingError, match="none.yaml: no such file or directory"):
        load_maps(tmp_path / "none.yaml")
    assert StorageMap.from_data(None, "x").resolve(Disk(target="a")).storage_class is None


def test_windows_nic_without_model_gets_e1000_and_linux_gets_virtio() -> None:
    vm = windows_efi_vm()
    vm.nics = [Nic(mac="52:54:00:00:00:09", type="bridge", network="br0")]
    assert build(vm).virtual_machine["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][0]["model"] == "e1000"
    vm = multi_vm()
    vm.nics[0].model = None
    assert build(vm).virtual_machine["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][0]["model"] == "virtio"
