"""OVA archives: read in place through qemu json: filenames, manifests verified, hostile members refused."""

from __future__ import annotations

import gzip
import subprocess
import tarfile
from pathlib import Path

import pytest

from migrate.clients.imageinfo import image_info
from migrate.core.model import SourceKind
from migrate.core.errors import SourceError
from migrate.sources.ova import read_ova
from tests.conftest import qemu_img
from tests.offline_support import make_vmdk, manifest, ovf_text, tar_bytes


@pytest.fixture(scope="module")
def vmdk(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    folder = tmp_path_factory.mktemp("vmdk")
    path = make_vmdk(folder, "disk1.vmdk")
    return path, path.read_bytes()


def _ova(tmp_path: Path, members: list, name: str = "app.ova") -> Path:
    path = tmp_path / name
    path.write_bytes(tar_bytes(members))
    return path


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_ova_with_disk_before_descriptor_reads_in_place_and_converts_identically(
        tmp_path: Path, vmdk: tuple[Path, bytes]) -> None:
    disk_path, disk = vmdk
    ovf = ovf_text(disk_size=len(disk)).encode()
    mf = manifest({"app.ovf": ovf, "disk1.vmdk": disk})
    ova = _ova(tmp_path, [("disk1.vmdk", disk), ("app.ovf", ovf), ("app.mf", mf)])
    before = _listing(tmp_path)

    [vm] = read_ova(str(ova))

    assert _listing(tmp_path) == before  # nothing extracted anywhere
    assert vm.source.kind is SourceKind.OVA and vm.source.location == str(ova)
    assert vm.source.member == "app.ovf"
    assert vm.metadata["ova.manifest"] == "app.mf: 2 digests verified"
    [d] = vm.disks
    assert d.path.startswith("json:") and d.format == "vmdk" and d.error is None
    assert d.virtual_size == 64 * 1024**2 and d.allocated_size == len(disk)
    assert image_info(d.path).virtual_size == 64 * 1024**2

    out = tmp_path / "out.qcow2"
    qemu_img("convert", "-O", "qcow2", d.path, str(out))
    proc = subprocess.run(["qemu-img", "compare", "-f", "vmdk", "-F", "qcow2", str(disk_path),
                           str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ova_without_manifest_and_with_tag_style_sha1_manifest(
        tmp_path: Path, vmdk: tuple[Path, bytes]) -> None:
    _, disk = vmdk
    ovf = ovf_text(disk_size=len(disk)).encode()
    plain = _ova(tmp_path, [("app.ovf", ovf), ("disk1.vmdk", disk)], "plain.ova")
    [vm] = read_ova(str(plain))
    assert vm.metadata["ova.manifest"] == "none" and vm.disks[0].virtual_size == 64 * 1024**2

    mf = manifest({"app.ovf": ovf, "disk1.vmdk": disk}, algo="SHA1", tag_style=True)
    tagged = _ova(tmp_path, [("app.ovf", ovf), ("app.mf", mf), ("disk1.vmdk", disk)], "t.ova")
    [vm] = read_ova(str(tagged))
    assert vm.metadata["ova.manifest"].endswith("2 digests verified")


def test_ova_wrong_disk_checksum_keeps_the_vm_with_that_disks_error(
        tmp_path: Path, vmdk: tuple[Path, bytes]) -> None:
    # issue 12 kind 9: a bad disk member never drops the VM (it used to refuse the archive)
    _, disk = vmdk
    ovf = ovf_text(disk_size=len(disk)).encode()
    mf = manifest({"app.ovf": ovf, "disk1.vmdk": disk[:-1] + b"\x01"}, algo="SHA512")
    ova = _ova(tmp_path, [("disk1.vmdk", disk), ("app.ovf", ovf), ("app.mf", mf)])
    [vm] = read_ova(str(ova))
    [d] = vm.disks
    assert "\n" not in d.error
    assert d.error.startswith("SHA512 checksum mismatch for disk1.vmdk (manifest app.mf says")
    assert vm.metadata["ova.manifest"] == "app.mf: 1 digests verified"


def test_ova_wrong_descriptor_checksum_is_one_clear_error(
        tmp_path: Path, vmdk: tuple[Path, bytes]) -> None:
    _, disk = vmdk
    ovf = ovf_text(disk_size=len(disk)).encode()
    mf = manifest({"app.ovf": ovf + b" ", "disk1.vmdk": disk})
    ova = _ova(tmp_path, [("disk1.vmdk", disk), ("app.ovf", ovf), ("app.mf", mf)])
    with pytest.raises(SourceError) as err:
        read_ova(str(ova))
    message = str(err.value)
    assert "\n" not in message and str(ova) in message
    assert "SHA256 checksum mismatch for app.ovf" in message


def test_manifest_naming_a_missing_member_is_a_problem_line(tmp_path: Path) -> None:
    ovf = ovf_text(disk_size=None).encode()
    mf = manifest({"app.ovf": ovf, "ghost.vmdk": b"x"})
    ova = _ova(tmp_path, [("app.ovf", ovf), ("app.mf", mf)])
    [vm] = read_ova(str(ova))
    assert vm.metadata["ova.manifest.problems"] == "app.mf lists 'ghost.vmdk', which the archive lacks"


def _link(name: str, kind: bytes, target: str = "disk1.vmdk") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize("member, expected", [
    (("../evil.vmdk", b"x"), "climbs out of the archive"),
    (("sub/../../evil.vmdk", b"x"), "climbs out of the archive"),
    (("/abs/evil.vmdk", b"x"), "absolute path"),
    (_link("evil-sym", tarfile.SYMTYPE, "/etc/passwd"), "is a symbolic link"),
    (_link("evil-hard", tarfile.LNKTYPE), "is a hard link"),
    (_link("evil-dev", tarfile.CHRTYPE), "device or FIFO"),
    (_link("evil-fifo", tarfile.FIFOTYPE), "device or FIFO"),
    (("disk1.vmdk", b"again"), "appears twice"),
])
def test_hostile_members_are_refused_and_nothing_is_written(
        tmp_path: Path, vmdk: tuple[Path, bytes], member, expected: str) -> None:
    _, disk = vmdk
    ovf = ovf_text(disk_size=len(disk)).encode()
    inner = tmp_path / "inner"
    inner.mkdir()
    ova = _ova(inner, [("app.ovf", ovf), ("disk1.vmdk", disk), member])
    before = _listing(tmp_path)
    with pytest.raises(SourceError) as err:
        read_ova(str(ova))
    assert expected in str(err.value) and str(ova) in str(err.value)
    assert "\n" not in str(err.value)
    assert _listing(tmp_path) == before
    assert not Path("/abs/evil.vmdk").exists()


@pytest.mark.parametrize("cut", ["mid-disk", "mid-header", "first-block"])
def test_truncated_archives_are_refused(tmp_path: Path, vmdk: tuple[Path, bytes], cut: str) -> None:
    _, disk = vmdk
    ovf = ovf_text(disk_size=len(disk)).encode()
    data = tar_bytes([("app.ovf", ovf), ("disk1.vmdk", disk)])
    disk_header = 512 + (len(ovf) + 511) // 512 * 512
    length = {"mid-disk": disk_header + 512 + len(disk) // 2, "mid-header": disk_header + 100,
              "first-block": 300}[cut]
    ova = tmp_path / "cut.ova"
    ova.write_bytes(data[:length])
    with pytest.raises(SourceError) as err:
        read_ova(str(ova))
    assert str(ova) in str(err.value) and "\n" not in str(err.value)
    assert any(word in str(err.value) for word in ("truncated", "damaged", "not a readable tar",
                                                    "empty archive", "no .ovf"))


def test_compressed_not_an_archive_and_no_descriptor(tmp_path: Path) -> None:
    ovf = ovf_text().encode()
    gz = tmp_path / "gz.ova"
    gz.write_bytes(gzip.compress(tar_bytes([("app.ovf", ovf)])))
    with pytest.raises(SourceError, match="compressed archive"):
        read_ova(str(gz))
    junk = tmp_path / "junk.ova"
    junk.write_bytes(b"this is not a tar archive at all" * 40)
    with pytest.raises(SourceError, match="junk.ova"):
        read_ova(str(junk))
    nodesc = _ova(tmp_path, [("disk1.vmdk", b"x" * 10)], "nodesc.ova")
    with pytest.raises(SourceError, match="no .ovf descriptor"):
        read_ova(str(nodesc))


def test_descriptor_and_member_sizes_must_agree(tmp_path: Path, vmdk: tuple[Path, bytes]) -> None:
    # issue 12 kind 9: the VM stays, the disk carries the mismatch
    _, disk = vmdk
    ovf = ovf_text(disk_size=len(disk) + 7).encode()
    ova = _ova(tmp_path, [("app.ovf", ovf), ("disk1.vmdk", disk)])
    [vm] = read_ova(str(ova))
    assert vm.disks[0].error == (f"disk1.vmdk is {len(disk)} bytes in the archive but the "
                                 f"descriptor says ovf:size {len(disk) + 7} (truncated or replaced)")


def test_disk_missing_from_archive_still_lists_the_vm(tmp_path: Path) -> None:
    ovf = ovf_text(disk_size=None).encode()
    ova = _ova(tmp_path, [("app.ovf", ovf)])
    [vm] = read_ova(str(ova))
    [d] = vm.disks
    assert d.path == f"{ova}#disk1.vmdk" and d.virtual_size == 64 * 1024**2
    assert "not in the archive" in d.error


def test_hostile_descriptor_inside_an_ova(tmp_path: Path) -> None:
    lol = ('<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">]>')
    ovf = ovf_text(doctype=lol, name="&lol2;").encode()
    ova = _ova(tmp_path, [("app.ovf", ovf)])
    with pytest.raises(SourceError, match=r"app\.ova: app\.ovf: XML entity declarations are refused"):
        read_ova(str(ova))
