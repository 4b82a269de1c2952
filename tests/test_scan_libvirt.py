"""``vmmove scan`` against real libvirt: the test driver, then a real libvirtd (qemu:///system)."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest
import yaml

from migrate.core.model import PowerState, ScanError
from migrate.core.serialize import load_inventory
from migrate.clients.libvirt import is_local
from migrate.sources.libvirt_uri import scan_uri
from migrate.sources.scan import _guard, scan
from tests.conftest import FIXTURES, qemu_img, qemu_io
from tests.libvirtd_support import DomainSpec, libvirt_domains  # noqa: F401

NODE = FIXTURES / "libvirt" / "node.xml"
NODE_URI = f"test://{NODE}"
GiB = 1024**3


def by_name(vms):
    return {vm.name: vm for vm in vms}


# -------------------------------------------------------------- the fixture test node


def test_fixture_node_scans_every_domain_with_its_run_state() -> None:
    vms, errors = scan_uri(NODE_URI)
    assert errors == []
    vms_by = by_name(vms)
    assert [vm.name for vm in vms] == sorted(vms_by)  # stable order
    states = {name: vm.power_state for name, vm in vms_by.items()}
    assert states == {
        "web-01": PowerState.RUNNING,
        "win2k22-sql": PowerState.SHUTOFF,
        "app-multi": PowerState.PAUSED,
        "gpu-worker": PowerState.RUNNING,
        "legacy-i440fx": PowerState.SHUTOFF,
        "web-01-clone": PowerState.CRASHED,
        "DB_Server.Prod": PowerState.SUSPENDED,
    }
    assert vms_by["web-01"].snapshots == 1 and vms_by["win2k22-sql"].snapshots == 0
    assert all(vm.source.location == NODE_URI for vm in vms)


def test_fixture_node_sizes_come_from_storage_volumes() -> None:
    vms = by_name(scan_uri(NODE_URI)[0])
    web = vms["web-01"].disks[0]
    assert (web.format, web.virtual_size, web.allocated_size) == ("qcow2", 20 * GiB, 4300 * 1024**2)
    win = {d.target: d for d in vms["win2k22-sql"].disks}
    assert (win["hda"].virtual_size, win["hdb"].virtual_size, win["hdb"].format) == (60 * GiB, 200 * GiB, "raw")
    assert win["hdc"].device == "cdrom" and win["hdc"].virtual_size == 612 * 1024**2  # pool/volume form
    app = {d.target: d for d in vms["app-multi"].disks}
    assert (app["vdb"].source_type, app["vdb"].virtual_size) == ("volume", 100 * GiB)
    assert (app["sda"].source_type, app["sda"].virtual_size) == ("block", 30 * GiB)  # LVM pool
    assert app["sda"].controller_model == "virtio-scsi"
    legacy = vms["legacy-i440fx"].disks[0]
    assert [b.path for b in legacy.backing_chain] == ["/var/lib/libvirt/images/centos7-base.qcow2"]
    assert vms["app-multi"].data_bytes() == (9 + 100 + 30) * GiB
    assert not any(d.error for vm in vms.values() for d in vm.disks if d.device == "disk")


def test_fixture_node_has_the_cases_later_steps_need() -> None:
    vms = by_name(scan_uri(NODE_URI)[0])
    assert vms["win2k22-sql"].firmware.secure_boot and vms["win2k22-sql"].firmware.tpm_version == "2.0"
    assert [n.type for n in vms["app-multi"].nics] == ["network", "bridge", "direct"]
    assert any(d.kind == "pci-passthrough" for d in vms["gpu-worker"].devices)
    assert vms["legacy-i440fx"].machine.startswith("pc-i440fx")
    macs = [n.mac for vm in vms.values() for n in vm.nics]
    assert macs.count("52:54:00:1a:00:01") == 2  # the careless clone
    assert vms["DB_Server.Prod"].max_vcpus == 8 and vms["DB_Server.Prod"].vcpus == 2
    assert vms["win2k22-sql"].nics[0].attachment == "network:prod/vlan-20"


def test_quick_start_command_prints_a_table(cli, monkeypatch) -> None:
    monkeypatch.chdir(FIXTURES.parent)
    result = cli("scan", "-c", f"test://{os.getcwd()}/fixtures/libvirt/node.xml", ok=True)
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "NAME", "HOST/FILE", "STATE", "VCPUS", "MEMORY", "DISKS", "NICS", "OS", "FIRMWARE",
        "CONCERNS",
    ]
    # the node is named by its file, not by its whole URI on every row (issue 13)
    assert {line.split()[1] for line in lines[1:]} == {"node.xml"}
    assert max(len(line) for line in lines) <= 120
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert len(rows) == 7
    assert rows["win2k22-sql"][2:10] == ["shutoff", "4", "16.0G", "2", "260.0G", "1", "win2022", "efi+sb+tpm2.0"]
    assert rows["web-01"][2:10] == ["running", "2", "4.0G", "1", "20.0G", "1", "rhel9.2", "bios"]
    # The CONCERNS column is the assessment's summary: passthrough makes gpu-worker critical.
    assert " ".join(rows["gpu-worker"][10:]).startswith("3 critical")
    assert "critical" not in " ".join(rows["web-01"][10:])
    assert result.stderr == ""


def test_output_formats_and_output_file(cli, tmp_path: Path) -> None:
    as_json = cli("scan", "-c", NODE_URI, "-o", "json", ok=True)
    data = json.loads(as_json.stdout)
    assert len(data["vms"]) == 7 and data["errors"] == []
    assert data["vmmove_version"] and data["scanned_at"].endswith("Z")
    as_yaml = cli("scan", "-c", NODE_URI, "-o", "yaml", ok=True)
    assert yaml.safe_load(as_yaml.stdout)["vms"] == data["vms"]

    for name in ("inv.json", "inv.yaml"):
        out = tmp_path / "sub" / name
        cli("scan", "-c", NODE_URI, "--output-file", str(out), ok=True)
        inv = load_inventory(out)
        assert len(inv.vms) == 7 and inv.find("web-01") is not None
        assert out.read_text().lstrip().startswith("{") == name.endswith(".json")
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["inv.json", "inv.yaml"]  # no .part left


# ----------------------------------------------------- real images behind the test driver


def _node_with_disks(tmp_path: Path, disks: str, extra: str = "") -> str:
    node = tmp_path / "node.xml"
    node.write_text(
        "<node><domain type='kvm' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>"
        "<name>imgs</name><memory unit='MiB'>256</memory><os><type arch='x86_64'>hvm</type></os>"
        f"<devices>{disks}</devices><test:runstate>5</test:runstate></domain>{extra}</node>"
    )
    return f"test://{node}"


def test_local_images_are_probed_with_qemu_img(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "1G")
    overlay = tmp_path / "overlay.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(overlay))
    qemu_io(str(overlay), "write -P 0xab 0 2M", fmt="qcow2")
    vmdk = tmp_path / "data.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", str(vmdk), "300M")
    raw = tmp_path / "scratch.img"
    qemu_img("create", "-q", "-f", "raw", str(raw), "10M")
    undeclared = tmp_path / "undeclared.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(undeclared), "5M")
    uri = _node_with_disks(tmp_path, (
        f"<disk type='file'><driver name='qemu' type='qcow2'/><source file='{overlay}'/><target dev='vda'/></disk>"
        f"<disk type='file'><driver name='qemu' type='vmdk'/><source file='{vmdk}'/><target dev='vdb'/></disk>"
        f"<disk type='file'><driver name='qemu' type='raw'/><source file='{raw}'/><target dev='vdc'/></disk>"
        f"<disk type='file'><source file='{undeclared}'/><target dev='vdd'/></disk>"
        f"<disk type='file'><source file='{tmp_path}/gone.qcow2'/><target dev='vde'/></disk>"
    ))
    vms, errors = scan_uri(uri)
    assert errors == []  # the test driver's missing files are make-believe, not errors
    disks = {d.target: d for d in vms[0].disks}
    assert (disks["vda"].format, disks["vda"].virtual_size) == ("qcow2", GiB)
    assert disks["vda"].allocated_size and disks["vda"].allocated_size >= 2 * 1024**2
    assert [(b.path, b.format) for b in disks["vda"].backing_chain] == [(str(base), "qcow2")]
    assert (disks["vdb"].format, disks["vdb"].virtual_size) == ("vmdk", 300 * 1024**2)
    assert (disks["vdc"].format, disks["vdc"].virtual_size) == ("raw", 10 * 1024**2)
    assert (disks["vdd"].format, disks["vdd"].virtual_size) == ("qcow2", 5 * 1024**2)  # probed
    assert disks["vde"].virtual_size is None and disks["vde"].error == "no such file or device"


def test_a_disk_whose_declared_format_is_wrong_is_an_error(tmp_path: Path) -> None:
    raw = tmp_path / "really-raw.img"
    qemu_img("create", "-q", "-f", "raw", str(raw), "4M")
    xml = tmp_path / "vm.xml"
    xml.write_text(
        "<domain type='kvm'><name>liar</name><memory>65536</memory><os><type>hvm</type></os><devices>"
        f"<disk type='file'><driver name='qemu' type='qcow2'/><source file='{raw}'/><target dev='vda'/></disk>"
        "</devices></domain>"
    )
    inv = scan([], [str(xml)])
    assert len(inv.vms) == 1 and inv.vms[0].disks[0].error
    (err,) = inv.errors
    assert err.source == str(xml) and "VM 'liar': disk vda" in err.message and str(raw) in err.message


# ------------------------------------------------------------- unreachable and concurrent


class _SilentServer:
    """A TCP port that accepts connections and never answers: a hung libvirt host."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


def test_unreachable_hosts_are_reported_and_the_others_still_scanned() -> None:
    hung = _SilentServer()
    try:
        uris = [
            f"qemu+tcp://127.0.0.1:{hung.port}/system",  # answers nothing
            "qemu+tcp://127.0.0.1:1/system",  # refused
            NODE_URI,
            "test:///no/such/node.xml",
            "nosuchdriver:///x",
            "qemu+ssh://nobody@host.invalid/system",
            "test:///default",
        ]
        started = time.monotonic()
        inv = scan(uris, [], timeout=3)
        elapsed = time.monotonic() - started
    finally:
        hung.close()
    assert elapsed < 10, elapsed  # bounded: the hung host costs the timeout, concurrently
    assert {vm.source.location for vm in inv.vms} == {NODE_URI, "test:///default"}
    assert len(inv.vms) == 8
    errors = {e.source: e.message for e in inv.errors}
    assert set(errors) == set(uris) - {NODE_URI, "test:///default"}
    assert errors[uris[0]] == "cannot connect: no answer within 3 s"
    assert "Connection refused" in errors[uris[1]]
    assert "no such node file" in errors[uris[3]]
    assert "unknown libvirt driver 'nosuchdriver'" in errors[uris[4]]  # named (issue 13)
    assert all("\n" not in m and m.startswith("cannot connect: ") for m in errors.values())


def test_esx_credentials_come_from_the_environment_and_failures_are_clean(monkeypatch) -> None:
    uri = "esx://root@127.0.0.1:1/?no_verify=1"
    monkeypatch.delenv("VMMOVE_LIBVIRT_PASSWORD", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", "/nonexistent")  # no libvirt auth.conf either
    vms, (err,) = scan_uri(uri, timeout=10)
    assert vms == [] and err.source == uri and "authentication failed" in err.message
    monkeypatch.setenv("VMMOVE_LIBVIRT_PASSWORD", "secret")
    vms, (err,) = scan_uri(uri, timeout=10)
    # with a password the driver gets as far as the (closed) port
    assert vms == [] and "authentication" not in err.message and "secret" not in err.message


def test_cli_reports_unreachable_hosts_on_stderr_and_exits_1(cli, tmp_path: Path) -> None:
    out = tmp_path / "inv.yaml"
    result = cli("scan", "-c", "qemu+tcp://127.0.0.1:1/system", "-c", NODE_URI,
                 "--output-file", str(out), "--connect-timeout", "5", ok=False)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"vmmove: error: qemu+tcp://127.0.0.1:1/system: cannot connect: unable to connect to server "
        "at '127.0.0.1:1': Connection refused"]
    assert len(result.stdout.splitlines()) == 8
    inv = load_inventory(out)  # what did scan is still written
    assert len(inv.vms) == 7 and [e.source for e in inv.errors] == ["qemu+tcp://127.0.0.1:1/system"]


def test_locality_of_uris() -> None:
    assert is_local("qemu:///system") and is_local("test:///default") and is_local("qemu+unix:///system")
    assert not is_local("qemu+ssh://root@kvm1/system") and not is_local("esx://vc.example/")
    assert not is_local("qemu+tcp://kvm1/system")


# ------------------------------------------------------------------- files and folders


def test_folder_walk_dispatch_and_errors(tmp_path: Path, cli) -> None:
    tree = tmp_path / "tree"
    (tree / "b-sub").mkdir(parents=True)
    (tree / ".hidden").mkdir()
    img = tree / "disk.qcow2"  # inside the export: a domain XML names only files beside it
    qemu_img("create", "-q", "-f", "qcow2", str(img), "64M")
    vm_xml = (
        "<domain type='kvm'><name>{name}</name><memory>65536</memory><os><type>hvm</type></os><devices>"
        "<disk type='file'><driver name='qemu' type='qcow2'/><source file='{path}'/><target dev='vda'/></disk>"
        "</devices></domain>"
    )
    (tree / "a.xml").write_text(vm_xml.format(name="a", path=img))
    (tree / "b-sub" / "c.XML").write_text(vm_xml.format(name="c", path=tree / "b-sub" / "missing.qcow2"))
    (tree / "b-sub" / "d.xml").write_text("<network><name>n</name></network>")
    (tree / "b-sub" / "broken.xml").write_text("<domain><name>x")
    (tree / "notes.txt").write_text("ignored in a walk")
    (tree / "disk.vmdk").write_bytes(b"ignored")
    (tree / ".hidden" / "z.xml").write_text("<junk")
    (tree / ".partial.xml.part").write_text("<junk")
    explicit = tmp_path / "readme.txt"
    explicit.write_text("explicit")

    inv = scan([], [str(tree), str(explicit), str(tmp_path / "nothing-here")])
    assert [vm.name for vm in inv.vms] == ["a", "c"]
    assert inv.vms[0].disks[0].virtual_size == 64 * 1024**2 and inv.vms[0].disks[0].format == "qcow2"
    errors = [(os.path.relpath(e.source, tmp_path), e.message) for e in inv.errors]
    assert errors[0] == ("tree/b-sub/broken.xml", errors[0][1]) and "malformed XML" in errors[0][1]
    assert errors[1][0] == "tree/b-sub/c.XML" and "missing.qcow2: no such file or device" in errors[1][1]
    assert errors[2] == ("tree/b-sub/d.xml", "not a libvirt domain XML (root element <network>)")
    assert errors[3][0] == "readme.txt" and "unknown kind of file" in errors[3][1]
    assert errors[4] == ("nothing-here", "no such file or directory")
    assert len(errors) == 5

    # the same through the CLI: one stderr line per problem, exit 1, inventory still written
    out = tmp_path / "inv.json"
    result = cli("scan", str(tree), "--output-file", str(out), "-o", "json", ok=False)
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 3
    assert all(line.startswith(f"vmmove: error: {tree}") for line in result.stderr.splitlines())
    assert [vm["name"] for vm in json.loads(result.stdout)["vms"]] == ["a", "c"]
    assert len(load_inventory(out).errors) == 3


def test_results_do_not_depend_on_concurrency() -> None:
    corpus_like = [str(FIXTURES / "libvirt" / "domains")]
    one = scan([NODE_URI, "test:///default"], corpus_like, jobs=1)
    many = scan([NODE_URI, "test:///default"], corpus_like, jobs=6)
    assert [vm.name for vm in one.vms] == [vm.name for vm in many.vms]
    assert [str(e) for e in one.errors] == [str(e) for e in many.errors]


def test_a_reader_bug_still_becomes_one_line() -> None:
    def broken():
        raise KeyError("boom\nsecond line")

    vms, (err,) = _guard("/x/file.ova", broken)
    assert vms == [] and err == ScanError("/x/file.ova", "unexpected KeyError: 'boom\\nsecond line'")


def test_default_uri_only_without_paths_or_uris(cli, tmp_path: Path) -> None:
    f = tmp_path / "vm.xml"
    f.write_text("<domain><name>solo</name><memory>1024</memory></domain>")
    result = cli("scan", str(f), "-o", "json", ok=True)
    assert [vm["source"]["location"] for vm in json.loads(result.stdout)["vms"]] == [str(f)]
    assert "qemu:///system" in cli("scan", "--help").stdout


# ----------------------------------------------------------------- a real libvirtd


def _ours(inv, factory):
    names = set(factory.names)
    return {vm.name: vm for vm in inv.vms if vm.name in names}


@pytest.mark.libvirtd
def test_real_libvirtd_sizes_and_formats_come_from_the_images(libvirt_domains, tmp_path: Path, cli) -> None:
    out = tmp_path / "inv.yaml"
    tmp_path = libvirt_domains.image_dir()
    qcow = tmp_path / "os.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(qcow), "2G")
    qemu_io(str(qcow), "write -P 0x11 0 3M", fmt="qcow2")
    vmdk = tmp_path / "data.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", str(vmdk), "512M")
    raw = tmp_path / "swap.raw"
    qemu_img("create", "-q", "-f", "raw", str(raw), "128M")
    f = libvirt_domains
    multi = f.name("multi")
    f.define(DomainSpec(multi, disks=[
        (str(qcow), "qcow2", "vda", "virtio", "disk"),
        (str(vmdk), "vmdk", "sda", "sata", "disk"),
        (str(raw), "raw", "vdb", "virtio", "disk"),
    ], metadata="<libosinfo:libosinfo xmlns:libosinfo='http://libosinfo.org/xmlns/libvirt/domain/1.0'>"
                "<libosinfo:os id='http://debian.org/debian/12'/></libosinfo:libosinfo>"))
    broken = f.name("missing-disk")
    f.define(DomainSpec(broken, disks=[(str(tmp_path / "gone.qcow2"), "qcow2", "vda", "virtio", "disk")]))

    result = cli("scan", "-c", "qemu:///system", "--output-file", str(out), ok=False)
    assert result.exit_code == 1
    mine = [line for line in result.stderr.splitlines() if broken in line]
    assert mine == [f"vmmove: error: qemu:///system: domain '{broken}': disk vda: "
                    f"{tmp_path}/gone.qcow2: no such file or device"]
    vms = _ours(load_inventory(out), f)
    vm = vms[multi]
    assert vm.hypervisor == "qemu" and vm.power_state is PowerState.SHUTOFF
    assert vm.guest_os and vm.guest_os.distro == "debian"
    disks = {d.target: d for d in vm.disks}
    assert (disks["vda"].format, disks["vda"].virtual_size) == ("qcow2", 2 * GiB)
    assert disks["vda"].allocated_size >= 3 * 1024**2
    assert (disks["sda"].format, disks["sda"].virtual_size, disks["sda"].bus) == ("vmdk", 512 * 1024**2, "sata")
    assert (disks["vdb"].format, disks["vdb"].virtual_size) == ("raw", 128 * 1024**2)
    assert vms[broken].disks[0].error == "no such file or device"


@pytest.mark.libvirtd
def test_real_libvirtd_running_domain_is_read_shared(libvirt_domains) -> None:
    disk = libvirt_domains.image_dir() / "run.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(disk), "256M")
    f = libvirt_domains
    dom = f.define(DomainSpec(f.name("running"), disks=[(str(disk), "qcow2", "vda", "virtio", "disk")]))
    f.start(dom)  # qemu now holds the image's write lock: plain qemu-img info would fail
    vms, errors = scan_uri("qemu:///system")
    mine = [vm for vm in vms if vm.name == dom.name()]
    assert [e for e in errors if dom.name() in e.message] == []
    assert mine[0].power_state is PowerState.RUNNING
    assert (mine[0].disks[0].format, mine[0].disks[0].virtual_size) == ("qcow2", 256 * 1024**2)


@pytest.mark.libvirtd
def test_real_libvirtd_volume_sizes_come_from_the_pool(libvirt_domains) -> None:
    pool_dir = libvirt_domains.image_dir()
    qemu_img("create", "-q", "-f", "qcow2", str(pool_dir / "vol.qcow2"), "3G")
    f = libvirt_domains
    pool = f.define_pool(
        f"<pool type='dir'><name>{f.name('pool')}</name><target><path>{pool_dir}</path></target></pool>")
    dom = f.define(
        "<domain type='qemu'>"
        f"<name>{f.name('vol')}</name><memory unit='MiB'>64</memory>"
        "<os><type arch='x86_64' machine='q35'>hvm</type></os><devices>"
        f"<disk type='volume' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source pool='{pool.name()}' volume='vol.qcow2'/><target dev='vda' bus='virtio'/></disk>"
        "</devices></domain>"
    )
    vms, _errors = scan_uri("qemu:///system")
    (vm,) = [v for v in vms if v.name == dom.name()]
    d = vm.disks[0]
    assert (d.source_type, d.pool, d.format, d.virtual_size) == ("volume", pool.name(), "qcow2", 3 * GiB)
    assert d.allocated_size is not None and d.allocated_size < GiB
