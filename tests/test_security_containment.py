"""Containment (issue 10, security cases 02, 03, 04, 05, 06, 09): an offline export leads
vmmove only to files inside itself, never to the network, and never quotes outside files.

Every case builds a hostile export with qemu-img/qemu-io next to a "host secret" file
outside it, runs the real ``vmmove scan``/``assess``/``convert`` (in process, through
click) and asserts what vmmove must do: one error line naming the VM, the disk and the
reference, no output image, no byte of the outside file anywhere.  The live libvirt case
runs against the real libvirtd (skipped where it cannot start).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from migrate.core.model import Inventory, SourceKind
from migrate.core.serialize import load_inventory, save_inventory
from migrate.sources.containment import Export, open_path, protocol_of
from tests.conftest import qemu_img, qemu_io
from tests.convert_support import assert_pattern, make_image
from tests.libvirtd_support import libvirt_domains  # noqa: F401
from tests.offline_support import ovf_text, tar_bytes

SECRET = "HOST-SECRET-LINE"
GNOME_QCOW = "http://www.gnome.org/~markmc/qcow-image-format.html"
VMDK_FLAT = "http://www.vmware.com/interfaces/specifications/vmdk.html#monolithicFlat"


# -- builders -------------------------------------------------------------------------------


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """500 recognisable lines in a file outside every export (as /etc/shadow would be)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = elsewhere / "host-secret.txt"
    path.write_text("".join(f"{SECRET}-{i}\n" for i in range(1, 501)))
    return path


def domain_xml(folder: Path, name: str, source: str, fmt: str = "qcow2", uuid_tail: str = "e2") -> Path:
    path = folder / f"{name}.xml"
    path.write_text(
        f"<domain type='kvm'><name>{name}</name><uuid>00000000-0000-0000-0000-0000000000{uuid_tail}</uuid>"
        "<memory unit='MiB'>256</memory><vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os><devices>"
        f"<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/><source file='{source}'/>"
        "<target dev='vda' bus='virtio'/></disk></devices></domain>")
    return path


def vmdk_descriptor(extent: str, parent: str | None = None, sectors: int = 64) -> str:
    hint = f'parentFileNameHint="{parent}"\n' if parent else ""
    return ("# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
            f'{hint}createType="monolithicFlat"\nRW {sectors} FLAT "{extent}" 0\n')


def vmx(folder: Path, name: str, disk: str) -> Path:
    path = folder / f"{name}.vmx"
    path.write_text(f'.encoding = "UTF-8"\ndisplayName = "{name}"\nmemsize = "256"\nnumvcpus = "1"\n'
                    'guestOS = "rhel8-64"\nscsi0.present = "TRUE"\nscsi0.virtualDev = "lsilogic"\n'
                    f'scsi0:0.present = "TRUE"\nscsi0:0.fileName = "{disk}"\n')
    return path


def ovf(href: str, fmt_uri: str = GNOME_QCOW, capacity_mib: int = 1, name: str = "appliance") -> str:
    return (ovf_text(disk_href=href, capacity=str(capacity_mib), name=name)
            .replace("http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized",
                     fmt_uri))


def secret_bytes_in(folder: Path) -> int:
    """Lines of the host secret in any image under ``folder`` (read back as raw by qemu-img)."""
    found = 0
    for image in folder.glob("*.qcow2") if folder.is_dir() else ():
        raw = image.with_suffix(".check.raw")
        qemu_img("convert", "-f", "qcow2", "-O", "raw", str(image), str(raw))
        found += raw.read_bytes().count(SECRET.encode())
        raw.unlink()
    return found


def scan_and_convert(cli, tmp_path: Path, *sources: str, tag: str = "x"):
    inv = tmp_path / f"inv-{tag}.yaml"
    scanned = cli("scan", *sources, "--output-file", str(inv))
    work = tmp_path / f"work-{tag}"
    converted = cli("convert", str(inv), "--batch", "--to", str(work)) if inv.exists() else None
    return scanned, converted, inv, work


def concerns(cli, inv: Path) -> dict[str, dict]:
    """``vmmove assess -o json`` of a one-VM inventory: its concerns by id."""
    (entry,) = json.loads(cli("assess", str(inv), "-o", "json").stdout).values()
    return {c["id"]: c for c in entry["concerns"]}


def error_lines(result) -> list[str]:
    return [ln for ln in result.stderr.splitlines() if ln.startswith("vmmove: error:")]


# -- case 02: a backing file outside the export ----------------------------------------------


def test_02_backing_file_outside_the_export_is_refused_by_scan_assess_and_convert(
        cli, tmp_path: Path, secret: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    disk = export / "disk.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", str(secret), "-F", "raw", str(disk), "1M")
    xml = domain_xml(export, "exported", str(disk))

    scanned, converted, inv, work = scan_and_convert(cli, tmp_path, str(xml))
    assert scanned.exit_code == 1
    [line] = error_lines(scanned)
    assert line == (f"vmmove: error: {xml}: VM 'exported': disk vda: backing file of {disk} "
                    f"'{secret}': outside the export {export}")
    (vm,) = load_inventory(inv).vms
    assert vm.disks[0].backing_chain == [] and "outside the export" in vm.disks[0].error

    assert concerns(cli, inv)["disk-unreadable"]["severity"] == "critical"

    assert converted is not None and converted.exit_code == 1
    assert "exported/vda: backing file of" in converted.stderr + converted.stdout
    assert not list(work.glob("*.qcow2")) and not list(work.glob(".*.part"))
    assert SECRET not in inv.read_text() + scanned.stderr + converted.stdout + converted.stderr


def test_02_assess_calls_a_recorded_outside_backing_file_critical(cli, tmp_path: Path) -> None:
    """An inventory (from an older scan, or edited) that records the chain: critical."""
    export = tmp_path / "export"
    export.mkdir()
    base, _ = make_image(export, "qcow2", "base")
    top = export / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(top))
    xml = domain_xml(export, "chained", str(top))
    inv = tmp_path / "inv.yaml"
    cli("scan", str(xml), "--output-file", str(inv), ok=True)
    data = load_inventory(inv)
    assert [b.path for b in data.vms[0].disks[0].backing_chain] == [str(base)]
    assert concerns(cli, inv)["backing-chain"]["severity"] == "info"
    data.vms[0].disks[0].backing_chain[0].path = "/etc/shadow"
    save_inventory(data, inv)
    found = concerns(cli, inv)
    assert found["backing-outside-export"]["severity"] == "critical"
    assert "/etc/shadow" in found["backing-outside-export"]["message"]
    assert "backing-chain" not in found


def test_02_variants_ovf_vmdk_parent_data_file_and_links(cli, tmp_path: Path, secret: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    # OVF href to a qcow2 inside the export whose backing file is outside
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", str(secret), "-F", "raw",
             str(export / "a.qcow2"), "1M")
    (export / "a.ovf").write_text(ovf("a.qcow2", name="ovfvm"))
    # .vmx -> .vmdk whose parentFileNameHint is a vmdk outside the export
    outside_vmdk = secret.parent / "parent.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", str(outside_vmdk), "1M")
    (export / "child-flat.vmdk").write_bytes(bytes(32768))
    (export / "child.vmdk").write_text(vmdk_descriptor("child-flat.vmdk", str(outside_vmdk)))
    vmx(export, "vmxvm", "child.vmdk")
    # qcow2 whose external data file is the host file
    sub = export / "df"
    sub.mkdir()
    data_file = sub / "d.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={sub / 'tmp.raw'},data_file_raw=on",
             str(data_file), "1M")
    qemu_img("amend", "-q", "-f", "qcow2", "-o", f"data_file={secret}", str(data_file))
    domain_xml(sub, "datafile", str(data_file), uuid_tail="d1")
    # a disk that is a symbolic link out of the export
    (export / "link.qcow2").symlink_to(secret)
    domain_xml(export, "linked", str(export / "link.qcow2"), fmt="raw", uuid_tail="d2")

    scanned, converted, inv, work = scan_and_convert(cli, tmp_path, str(export))
    lines = error_lines(scanned)
    assert scanned.exit_code == 1 and len(lines) == 4, lines
    by_vm = {vm: next(ln for ln in lines if f"VM '{vm}'" in ln)
             for vm in ("ovfvm", "vmxvm", "datafile", "linked")}
    assert f"backing file of {export / 'a.qcow2'} '{secret}': outside the export" in by_vm["ovfvm"]
    assert f"'{outside_vmdk}': outside the export {export}" in by_vm["vmxvm"]
    assert f"external data file of {data_file} '{secret}': outside the export" in by_vm["datafile"]
    assert f"'{export / 'link.qcow2'}': outside the export {export} (through a link, to {secret})" \
        in by_vm["linked"]
    assert converted is not None and converted.exit_code == 1
    assert not list(work.glob("*.qcow2")) and secret_bytes_in(work) == 0


def test_02_convert_rechecks_the_export_after_the_scan(cli, tmp_path: Path, secret: Path) -> None:
    """The inventory is clean but the export changed since: convert refuses, copies nothing."""
    export = tmp_path / "export"
    export.mkdir()
    base, _ = make_image(export, "qcow2-chain", "good")
    xml = domain_xml(export, "swapped", str(base))
    inv = tmp_path / "inv.yaml"
    cli("scan", str(xml), "--output-file", str(inv), ok=True)
    base.unlink()
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", str(secret), "-F", "raw", str(base), "64M")
    work = tmp_path / "work"
    result = cli("convert", str(inv), "--batch", "--to", str(work), ok=False)
    assert f"swapped/vda: backing file of {base} '{secret}': outside the export {export}" \
        in result.stdout + result.stderr
    assert not list(work.glob("*.qcow2"))


def test_a_chain_inside_the_export_is_converted_through_the_checked_chain(
        cli, tmp_path: Path) -> None:
    export = tmp_path / "export"
    (export / "base").mkdir(parents=True)
    top, _ = make_image(export, "qcow2-chain", "vm")
    # move the base into a subfolder and point the overlay at it relatively
    (export / "vm-base.qcow2").rename(export / "base" / "vm-base.qcow2")
    qemu_img("rebase", "-u", "-f", "qcow2", "-b", "base/vm-base.qcow2", "-F", "qcow2", str(top))
    xml = domain_xml(export, "inside", str(top))
    scanned, converted, inv, work = scan_and_convert(cli, tmp_path, str(xml))
    assert scanned.exit_code == 0, scanned.stderr
    assert converted is not None and converted.exit_code == 0, converted.stdout + converted.stderr
    (out,) = work.glob("*.qcow2")
    assert_pattern(out, "qcow2")
    chain = open_path(Export.of_descriptor(str(xml)), str(top), "qcow2")
    assert chain.qemu_name() == "json:" + json.dumps({
        "driver": "qcow2", "file": {"driver": "file", "filename": str(top)},
        "backing": {"driver": "qcow2",
                    "file": {"driver": "file", "filename": str(export / "base" / "vm-base.qcow2")},
                    "backing": None}}, separators=(",", ":"))


def sparse_vmdk_with_embedded_extent(path: Path, extent: Path) -> None:
    """A sparse VMDK (KDMV) whose header says capacity 0: qemu then reads its embedded
    descriptor as a descriptor file and opens the extent named there."""
    qemu_img("create", "-q", "-f", "vmdk", str(path), "1M")
    data = bytearray(path.read_bytes())
    (desc_offset,) = struct.unpack_from("<Q", data, 28)
    (desc_size,) = struct.unpack_from("<Q", data, 36)
    text = vmdk_descriptor(str(extent)).encode().ljust(desc_size * 512, b"\0")
    data[desc_offset * 512:(desc_offset + desc_size) * 512] = text
    struct.pack_into("<Q", data, 12, 0)
    path.write_bytes(bytes(data))


def test_02_a_sparse_vmdk_whose_embedded_descriptor_names_a_host_file_is_refused(
        cli, tmp_path: Path, secret: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    disk = export / "vm.vmdk"
    sparse_vmdk_with_embedded_extent(disk, secret)
    # control: qemu-img left alone does open the host file as the disk's data
    info = json.loads(qemu_img("info", "--output=json", "-f", "vmdk", str(disk)).stdout)
    assert info["format-specific"]["data"]["extents"][0]["filename"] == str(secret)
    vmx(export, "sparse", "vm.vmdk")
    scanned, converted, inv, work = scan_and_convert(cli, tmp_path, str(export))
    [line] = error_lines(scanned)
    assert line == (f"vmmove: error: {export / 'sparse.vmx'}: VM 'sparse': disk sda: disk {disk}: "
                    "sparse VMDK with capacity 0 and an embedded descriptor naming other files: "
                    "not supported")
    assert converted is not None and converted.exit_code == 1
    assert not list(work.glob("*.qcow2")) and secret_bytes_in(work) == 0


# -- case 03: OVA members' own backing files and extents -------------------------------------


def test_03_ova_members_cannot_reach_host_files(cli, tmp_path: Path, secret: Path) -> None:
    def pad(data: bytes) -> bytes:
        return data + bytes(-len(data) % 512)

    a = tmp_path / "a"
    a.mkdir()
    member = a / "disk1.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", str(secret), "-F", "raw", str(member), "1M")
    (tmp_path / "a.ova").write_bytes(tar_bytes([
        ("a.ovf", ovf("disk1.qcow2").encode()), ("disk1.qcow2", pad(member.read_bytes()))]))
    descriptor = vmdk_descriptor(str(secret)).encode()
    (tmp_path / "b.ova").write_bytes(tar_bytes([
        ("b.ovf", ovf("disk1.vmdk", VMDK_FLAT).encode()), ("disk1.vmdk", pad(descriptor))]))

    for case, expected in (("a", f"backing file of {tmp_path / 'a.ova'}:disk1.qcow2 '{secret}': "
                                 f"an absolute path, not a member of the archive {tmp_path / 'a.ova'}"),
                           ("b", f"extent '{secret}' of {tmp_path / 'b.ova'}:disk1.vmdk: a VMDK "
                                 "inside an OVA must be one file")):
        scanned, converted, inv, work = scan_and_convert(cli, tmp_path, str(tmp_path / f"{case}.ova"),
                                                         tag=case)
        [line] = error_lines(scanned)
        assert scanned.exit_code == 1 and "VM 'appliance': disk sda: " in line and expected in line
        assert converted is not None and converted.exit_code == 1
        assert expected in converted.stdout + converted.stderr
        assert not list(work.glob("*.qcow2")) and secret_bytes_in(work) == 0


# -- case 04: descriptor paths outside the export folder ---------------------------------------


@pytest.mark.parametrize("extent", ["../../elsewhere/host-secret.txt", "ABSOLUTE", "/dev/zero"])
def test_04_vmdk_extents_outside_the_export_are_refused(cli, tmp_path: Path, secret: Path,
                                                        extent: str) -> None:
    vm1 = tmp_path / "exports" / "vm1"
    vm1.mkdir(parents=True)
    extent = str(secret) if extent == "ABSOLUTE" else extent
    (vm1 / "vm1.vmdk").write_text(vmdk_descriptor(extent))
    vmx(vm1, "vm1", "vm1.vmdk")
    scanned, converted, inv, work = scan_and_convert(cli, tmp_path, str(tmp_path / "exports"))
    [line] = error_lines(scanned)
    assert line == (f"vmmove: error: {vm1 / 'vm1.vmx'}: VM 'vm1': disk sda: extent of "
                    f"{vm1 / 'vm1.vmdk'} '{extent}': outside the export {vm1}")
    assert converted is not None and converted.exit_code == 1
    assert not list(work.glob("*.qcow2")) and secret_bytes_in(work) == 0


@pytest.mark.parametrize("href", ["../elsewhere/other-vm.qcow2", "ABSOLUTE", "FILE-URL",
                                  "%2e%2e/elsewhere/other-vm.qcow2"])
def test_04_ovf_hrefs_outside_the_export_are_refused(cli, tmp_path: Path, secret: Path,
                                                     href: str) -> None:
    other = secret.parent / "other-vm.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(other), "16M")
    qemu_io(str(other), "write -P 0x5e 0 2M", "qcow2")
    href = {"ABSOLUTE": str(other), "FILE-URL": f"file://{other}"}.get(href, href)
    export = tmp_path / "ovfexport"
    export.mkdir()
    (export / "app.ovf").write_text(ovf(href, capacity_mib=16, name="app"))
    scanned, converted, inv, work = scan_and_convert(cli, tmp_path, str(export))
    [line] = error_lines(scanned)
    assert line.startswith(f"vmmove: error: {export / 'app.ovf'}: VM 'app': disk sda: href ")
    assert ("outside the export" in line) or ("a file: name" in line), line
    assert converted is not None and converted.exit_code == 1
    assert not list(work.glob("*.qcow2"))


# -- case 05: protocol names in descriptor paths ----------------------------------------------


@pytest.mark.parametrize("source", [
    'json:{"driver": "raw", "file": {"driver": "file", "filename": "SECRET"}}',
    "nbd://127.0.0.1:1/x", "http://127.0.0.1:1/disk.img", "ssh://host/disk.img",
    "file:SECRET", "gluster://h/v/img"])
def test_05_protocol_names_in_a_domain_xml_are_refused(cli, tmp_path: Path, secret: Path,
                                                       source: str) -> None:
    source = source.replace("SECRET", str(secret))
    xml = domain_xml(tmp_path, "jsonvm", source.replace('"', "&quot;"), fmt="raw")
    scanned, converted, inv, work = scan_and_convert(cli, tmp_path, str(xml))
    [line] = error_lines(scanned)
    proto = protocol_of(source)
    assert line.startswith(f"vmmove: error: {xml}: VM 'jsonvm': disk vda: ")
    assert f"is a {proto}: name, not a file in the export; refused" in line
    assert converted is not None and converted.exit_code == 1
    assert f"a {proto}: name, not a file in the export" in converted.stdout + converted.stderr
    assert not list(work.glob("*.qcow2")) and secret_bytes_in(work) == 0


def test_05_a_json_name_written_into_an_inventory_is_refused_by_convert(
        cli, tmp_path: Path, secret: Path) -> None:
    """Not only scan: an inventory edited to hold a json: name never reaches qemu-img."""
    export = tmp_path / "export"
    export.mkdir()
    disk, _ = make_image(export, "raw", "fine")
    xml = domain_xml(export, "edited", str(disk), fmt="raw")
    inv = tmp_path / "inv.yaml"
    cli("scan", str(xml), "--output-file", str(inv), ok=True)
    data = load_inventory(inv)
    data.vms[0].disks[0].path = ('json:{"driver":"raw","file":{"driver":"file","filename":"'
                                 f'{secret}"}}}}')
    save_inventory(data, inv)
    work = tmp_path / "work"
    result = cli("convert", str(inv), "--batch", "--to", str(work), ok=False)
    assert "edited/vda: file 'json:" in result.stdout + result.stderr
    assert not list(work.glob("*.qcow2"))


# -- case 06: no network from offline input ---------------------------------------------------


class Listener:
    """A TCP listener on 127.0.0.1 that records every connection made to it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.hits: list[bytes] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            conn.settimeout(1)
            try:
                data = conn.recv(100)
            except OSError:
                data = b""
            self.hits.append(data[:40])
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


def test_06_scan_and_convert_open_no_network_connection(cli, tmp_path: Path,
                                                        listener: Listener) -> None:
    port = listener.port
    export = tmp_path / "export"
    export.mkdir()
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", f"http://127.0.0.1:{port}/base.img",
             "-F", "raw", str(export / "a.qcow2"), "1M")
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", f"nbd://127.0.0.1:{port}/x",
             "-F", "raw", str(export / "b.qcow2"), "1M")
    domain_xml(export, "a", str(export / "a.qcow2"), uuid_tail="61")
    domain_xml(export, "b", str(export / "b.qcow2"), uuid_tail="62")
    nbd = json.dumps({"driver": "raw", "file": {"driver": "nbd", "server": {
        "type": "inet", "host": "127.0.0.1", "port": str(port)}}}).replace('"', "&quot;")
    domain_xml(export, "c", f"json:{nbd}", fmt="raw", uuid_tail="63")
    (export / "d-flat.vmdk").write_bytes(bytes(32768))
    (export / "d.vmdk").write_text(vmdk_descriptor(f"nbd://127.0.0.1:{port}/x"))
    vmx(export, "d", "d.vmdk")
    (export / "e.ovf").write_text(ovf(f"http://127.0.0.1:{port}/e.qcow2", name="e"))
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b",
             f'json:{{"driver":"raw","file":{{"driver":"http","url":"http://127.0.0.1:{port}/f"}}}}',
             "-F", "raw", str(export / "f.qcow2"), "1M")
    domain_xml(export, "f", str(export / "f.qcow2"), uuid_tail="66")

    scanned, converted, inv, work = scan_and_convert(cli, tmp_path, str(export))
    lines = error_lines(scanned)
    assert len(lines) == 6, lines
    assert all(("name, not a file in the export" in ln) or ("is a URL" in ln) for ln in lines), lines
    assert converted is not None and converted.exit_code == 1
    assert listener.hits == []
    # control: qemu-img left to follow the header does connect, so the listener can see it
    subprocess.run(["qemu-img", "info", "--backing-chain", str(export / "a.qcow2")],
                   capture_output=True, timeout=60)
    assert listener.hits and listener.hits[0].startswith(b"HEAD /base.img")


# -- case 09: error lines never quote files outside the export ---------------------------------


def test_09_error_lines_never_quote_outside_files(cli, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shadow = elsewhere / "shadow"
    shadow.write_text("root:$y$j9T$FAKEHASHFAKEHASH$abcdefghijklmnop:19000:0:99999:7:::\n")
    export = tmp_path / "export"
    export.mkdir()
    (export / "vm.vmx").write_text('.encoding = "UTF-8"\ndisplayName = "ph"\nmemsize = "256"\n'
                                   'scsi0.present = "TRUE"\nscsi0:0.present = "TRUE"\n'
                                   'scsi0:0.fileName = "disk.vmdk"\n')
    (export / "disk.vmdk").write_text(vmdk_descriptor("disk-flat.vmdk", str(shadow), sectors=16))
    (export / "disk-flat.vmdk").write_bytes(bytes(8192))
    export2 = tmp_path / "export2"
    export2.mkdir()
    (export2 / "evil.vmx").symlink_to(shadow)
    export3 = tmp_path / "export3"
    export3.mkdir()
    (export3 / "junk.vmx").write_text('displayName = "j"\nSECRET-LOOKING TEXT\n')

    inv = tmp_path / "inv.yaml"
    a = cli("scan", str(export), "--output-file", str(inv))
    b = cli("scan", str(export2))
    c = cli("scan", str(export3))
    assert error_lines(a) == [f"vmmove: error: {export / 'vm.vmx'}: VM 'ph': disk sda: parent of "
                              f"{export / 'disk.vmdk'} '{shadow}': outside the export {export}"]
    assert error_lines(b) == [f"vmmove: error: {export2 / 'evil.vmx'}: a link to a file outside "
                              "the scanned folder; not read"]
    assert error_lines(c) == [f"vmmove: error: {export3 / 'junk.vmx'}: line 2: expected "
                              'key = "value"']
    everything = a.stdout + a.stderr + b.stdout + b.stderr + c.stdout + c.stderr + inv.read_text()
    assert "FAKEHASH" not in everything and "SECRET-LOOKING" not in everything


# -- live libvirt: the host's chain is trusted, the headers must agree -------------------------


@pytest.mark.libvirtd
def test_live_libvirt_headers_must_agree_with_libvirts_chain(libvirt_domains) -> None:
    from converters.convert import FAILED, convert_disks
    from migrate.sources.libvirt_uri import scan_uri

    f = libvirt_domains
    images = f.image_dir()
    base_a, _ = make_image(images, "qcow2", "base-a")
    base_b, _ = make_image(images, "qcow2", "base-b")
    tops = {}
    for name, claimed in (("agree", base_a), ("disagree", base_b)):
        top = images / f"{name}.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", "-b", str(base_a), "-F", "qcow2", str(top))
        tops[name] = f.define(
            "<domain type='qemu'>"
            f"<name>{f.name(name)}</name><memory unit='MiB'>64</memory>"
            "<os><type arch='x86_64' machine='q35'>hvm</type></os><devices>"
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
            f"<source file='{top}'/><backingStore type='file'><format type='qcow2'/>"
            f"<source file='{claimed}'/><backingStore/></backingStore>"
            "<target dev='vda' bus='virtio'/></disk></devices></domain>")
    vms, errors = scan_uri("qemu:///system")
    mine = {vm.name: vm for vm in vms if vm.name in (f.name("agree"), f.name("disagree"))}
    agree, disagree = mine[f.name("agree")], mine[f.name("disagree")]
    assert [b.path for b in agree.disks[0].backing_chain] == [str(base_a)]
    assert agree.disks[0].error is None
    [line] = [e.message for e in errors if f.name("disagree") in e.message]
    assert line.endswith(f"the image headers name backing file {base_a} where libvirt reports "
                         f"{base_b}: they disagree")
    assert disagree.disks[0].error and "disagree" in disagree.disks[0].error
    assert agree.source.kind is SourceKind.LIBVIRT

    # convert re-reads the headers: a base swapped since the scan is refused there too
    work = images / "work"
    qemu_img("rebase", "-u", "-f", "qcow2", "-b", str(base_b), "-F", "qcow2",
             str(images / "agree.qcow2"))
    (result,) = convert_disks(Inventory(vms=[agree]), [], work)
    assert result.status == FAILED and "they disagree" in (result.error or "")
    assert not list(work.glob("*.qcow2"))
    assert os.path.exists(base_a) and os.path.exists(base_b)


# -- upload --as-is sends a source file itself: the same containment -----------------------------


def test_upload_as_is_sends_only_a_checked_file_of_the_export(tmp_path: Path, secret: Path) -> None:
    from migrate.pipeline.upload import as_is_problem as _as_is_problem
    from migrate.core.model import VM, Disk, Source

    export = tmp_path / "export"
    export.mkdir()
    clean, _ = make_image(export, "raw", "clean")
    (export / "link.img").symlink_to(secret)
    chained, _ = make_image(export, "qcow2-chain", "chained")
    hostile = export / "hostile.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", str(secret), "-F", "raw", str(hostile), "1M")

    def check(path: Path, fmt: str):
        vm = VM(name="v", source=Source(SourceKind.DOMAIN_XML, str(export / "v.xml")),
                disks=[Disk(target="vda", path=str(path), format=fmt)])
        return _as_is_problem(vm, vm.disks[0])

    problem, chain = check(clean, "raw")
    assert problem is None and chain.top.real == str(clean) and chain.virtual_size == 64 * 1024**2
    problem, _ = check(export / "link.img", "raw")
    assert problem == (f"file '{export / 'link.img'}': outside the export {export} "
                       f"(through a link, to {secret})")
    assert check(chained, "qcow2")[0] == "has a backing file (CDI refuses those): convert it"
    assert check(hostile, "qcow2")[0] == (f"backing file of {hostile} '{secret}': outside the "
                                          f"export {export}")
