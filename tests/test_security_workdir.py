"""Issue 10, "Data loss" and "Files vmmove writes": the work folder never overlaps the
sources, outputs never replace what vmmove did not create, locks never follow links,
modes follow sensitivity, a full disk is one line.  The inputs of security cases 01, 07,
08, 11 and 13 (../shared/cases/security) rewritten in Python, with real qemu-img images.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from converters.convert import CONVERTED, FAILED, SKIPPED, ConvertOptions, convert_disks
from migrate.core.digest import file_checksum
from migrate.core.files import LockBusy, WriteError, run_lock
from migrate.core.serialize import atomic_write, load_inventory
from migrate.core.journal import Journal
from migrate.core.workdir import journal_path
from tests.conftest import Cli, qemu_img, qemu_io

MiB = 1 << 20


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def holds(image: Path, pattern: int, length: str = "1M", fmt: str = "qcow2") -> bool:
    """Whether ``image`` reads as ``pattern`` over its first ``length`` bytes (qemu-io)."""
    proc = subprocess.run(["qemu-io", "-f", fmt, "-c", f"read -P 0x{pattern:02x} 0 {length}",
                           str(image)], capture_output=True, text=True)
    return proc.returncode == 0 and "Pattern verification failed" not in proc.stdout \
        and "read " in proc.stdout


def image(path: Path, pattern: int | None = None, size: str = "16M",
          backing: Path | None = None, data: str = "1M") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = ["-b", str(backing), "-F", "qcow2"] if backing else []
    qemu_img("create", "-q", "-f", "qcow2", *extra, str(path), *([] if backing else [size]))
    if pattern is not None:
        qemu_io(str(path), f"write -P 0x{pattern:02x} 0 {data}", "qcow2")
    return path


def domain(path: Path, name: str, uuid: str, disk: Path) -> Path:
    path.write_text(
        f"<domain type='kvm'><name>{name}</name><uuid>{uuid}</uuid>"
        "<memory unit='MiB'>256</memory><vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os>"
        "<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source file='{disk}'/><target dev='vda' bus='virtio'/></disk></devices></domain>")
    return path


def scan(cli: Cli, out: Path, *xml: Path) -> Path:
    cli("scan", *map(str, xml), "--output-file", str(out), ok=True)
    return out


def uuid(n: int) -> str:
    return f"00000000-0000-0000-0000-{n:012x}"


# -- case 01: the work folder and the sources never overlap -----------------------------------


def test_a_work_folder_holding_sources_is_refused_and_no_source_is_touched(
        cli: Cli, tmp_path: Path) -> None:
    images = tmp_path / "images"
    # Bad luck names: web's disk is called like db's output and the other way round.
    web_disk = image(images / "db-vda.qcow2", 0x11)
    db_disk = image(images / "web-vda.qcow2", 0x22)
    inv = scan(cli, tmp_path / "inv.yaml",
               domain(tmp_path / "web.xml", "web", uuid(0xa), web_disk),
               domain(tmp_path / "db.xml", "db", uuid(0xb), db_disk))
    before = {p: sha256(p) for p in (web_disk, db_disk)}

    for work, verb in ((images, "is"), (tmp_path, "contains")):
        result = cli("convert", str(inv), "--batch", "--jobs", "1", "--to", str(work))
        assert result.exit_code == 2
        (line,) = result.stderr.splitlines()
        assert line == (f"vmmove: error: {work}: the work folder {verb} the folder of web/vda's "
                        f"source disk {web_disk}; convert into a folder of its own, outside "
                        "the sources' folders")
    assert {p: sha256(p) for p in before} == before
    assert holds(db_disk, 0x22) and holds(web_disk, 0x11)
    assert sorted(p.name for p in images.iterdir()) == ["db-vda.qcow2", "web-vda.qcow2"]

    # A folder of its own: both convert, each output holds its own VM's data.
    result = cli("convert", str(inv), "--batch", "--to", str(tmp_path / "w"), "-o", "json",
                 ok=True)
    outputs = {r["vm"]: Path(r["output"]) for r in json.loads(result.stdout)}
    assert holds(outputs["web"], 0x11) and holds(outputs["db"], 0x22)
    assert {p: sha256(p) for p in before} == before


def test_a_source_on_a_backing_file_in_its_own_folder_keeps_its_chain(
        cli: Cli, tmp_path: Path) -> None:
    """Case 01 B: the VM's own disk is ``b/solo-vda.qcow2`` on ``b/base.qcow2``."""
    base = image(tmp_path / "b" / "base.qcow2", size="64M")
    solo = image(tmp_path / "b" / "solo-vda.qcow2", backing=base)
    qemu_io(str(solo), "write -P 0x33 0 1M", "qcow2")
    inv = scan(cli, tmp_path / "solo.yaml", domain(tmp_path / "solo.xml", "solo", uuid(0xc), solo))
    before = sha256(solo)
    result = cli("convert", str(inv), "--batch", "--to", str(tmp_path / "b"))
    assert result.exit_code == 2 and "the work folder is the folder of solo/vda's" in result.stderr
    assert sha256(solo) == before
    info = json.loads(qemu_img("info", "--output=json", "-U", str(solo)).stdout)
    assert info["backing-filename"] == str(base)


def test_a_backing_file_inside_the_work_folder_fails_that_disk(tmp_path: Path, cli: Cli) -> None:
    work = tmp_path / "w"
    base = image(work / "base.qcow2", 0x44)
    top = image(tmp_path / "src" / "top.qcow2", backing=base)
    inv = load_inventory(scan(cli, tmp_path / "inv.yaml",
                              domain(tmp_path / "t.xml", "t", uuid(0xd), top)))
    before = sha256(base)
    (result,) = convert_disks(inv, [], work)
    assert result.status == FAILED
    assert result.error == (f"t/vda: backing file {base} is in the work folder {work}; "
                            "convert into a folder of its own")
    assert sha256(base) == before


@pytest.mark.parametrize("kind", ["hard link", "symlink", "foreign file"])
def test_an_output_name_taken_by_a_file_vmmove_did_not_create_is_left_alone(
        cli: Cli, tmp_path: Path, kind: str) -> None:
    src = image(tmp_path / "src" / "disk.qcow2", 0x55)
    inv = load_inventory(scan(cli, tmp_path / "inv.yaml",
                              domain(tmp_path / "v.xml", "v", uuid(0xe), src)))
    work = tmp_path / "w"
    work.mkdir()
    out = work / "v-vda.qcow2"
    if kind == "hard link":
        os.link(src, out)
        expected = f"v/vda: {out} is the source disk itself (same file); convert to another folder"
    elif kind == "symlink":
        out.symlink_to(src)
        expected = (f"v/vda: {out} is a symbolic link vmmove did not create; move it away or "
                    "convert to another folder")
    else:
        out.write_bytes(b"someone's notes\n")
        expected = (f"v/vda: {out} exists and vmmove did not create it (the work folder's "
                    "journal does not name it); move it away or convert to another folder")
    before = sha256(src), out.lstat().st_ino, sha256(out)
    (result,) = convert_disks(inv, [], work)
    assert (result.status, result.error) == (FAILED, expected)
    assert (sha256(src), out.lstat().st_ino, sha256(out)) == before
    assert not [p for p in work.iterdir() if p.name.endswith(".part")]
    # Its own output, made by vmmove, is replaced when the source changes.
    out.unlink()
    (first,) = convert_disks(inv, [], work)
    qemu_io(str(src), "write -P 0x66 0 1M", "qcow2")
    (again,) = convert_disks(inv, [], work)
    assert (first.status, again.status) == (CONVERTED, CONVERTED) and holds(out, 0x66)


# -- case 13: two inventories sharing one work folder -------------------------------------------


def test_two_inventories_with_a_vm_of_the_same_name_keep_both_outputs(
        cli: Cli, tmp_path: Path) -> None:
    invs = []
    for h in (1, 2):
        disk = image(tmp_path / f"host{h}" / "web.qcow2", 0x11 * h)
        xml = domain(tmp_path / f"host{h}" / "web.xml", "web", uuid(h), disk)
        invs.append(scan(cli, tmp_path / f"inv{h}.yaml", xml))
    work = tmp_path / "w"

    def convert(inv: Path) -> dict:
        result = cli("convert", str(inv), "--batch", "--to", str(work), "-o", "json", ok=True)
        (row,) = json.loads(result.stdout)
        return row

    first, second = convert(invs[0]), convert(invs[1])
    assert first["output"] == str(work / "web-vda.qcow2")
    assert Path(second["output"]).parent == work and second["output"] != first["output"]
    assert Path(second["output"]).name.startswith("web-vda-")
    assert holds(work / "web-vda.qcow2", 0x11) and holds(Path(second["output"]), 0x22)

    rerun = convert(invs[0])
    assert (rerun["status"], rerun["output"]) == (SKIPPED, first["output"])
    # (the form changed with issue 17: xxh3-1m, the output file's bytes)
    assert rerun["checksum"] == file_checksum(work / "web-vda.qcow2") == first["checksum"]
    assert convert(invs[1])["status"] == SKIPPED

    # A skip vouches for the file as it is now: the same size, other bytes = converted again.
    out = work / "web-vda.qcow2"
    with open(out, "r+b") as fh:
        fh.seek(out.stat().st_size - 1)
        last = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([last[0] ^ 0xFF]))
    redone = convert(invs[0])
    assert redone["status"] == CONVERTED and "changed since it was converted" in redone["note"]
    assert redone["checksum"] == first["checksum"] == file_checksum(out)
    # a journal written before issue 17 (sha256:) still vouches for a skip, in its own form
    with Journal(journal_path(work)) as journal:
        (item,) = [s.item for s in journal.steps("convert") if s.output == str(out)]
        journal.done("convert", item, checksum="sha256:" + sha256(out))
    old = convert(invs[0])
    assert old["status"] == SKIPPED and old["checksum"] == "sha256:" + sha256(out)


def test_the_same_uuid_from_another_source_is_refused_not_merged(cli: Cli, tmp_path: Path) -> None:
    invs = []
    for h in (1, 2):
        disk = image(tmp_path / f"host{h}" / "web.qcow2", 0x11 * h)
        invs.append(scan(cli, tmp_path / f"inv{h}.yaml",
                         domain(tmp_path / f"host{h}" / "web.xml", "web", uuid(7), disk)))
    work = tmp_path / "w"
    cli("convert", str(invs[0]), "--batch", "--to", str(work), ok=True)
    result = cli("convert", str(invs[1]), "--batch", "--to", str(work), "-o", "json")
    assert result.exit_code == 1
    (row,) = json.loads(result.stdout)
    assert row["status"] == FAILED
    assert row["error"] == (
        f"web/vda: the work folder's journal holds another VM under this key ({uuid(7)}/vda, "
        f"from {tmp_path / 'host1' / 'web.xml'}); convert it into a work folder of its own, "
        "or pass --redo to replace that VM's output")
    assert holds(work / "web-vda.qcow2", 0x11)


# -- case 07: locks never follow links ----------------------------------------------------------


def test_a_lock_file_planted_as_a_symlink_is_never_written_through(
        cli: Cli, tmp_path: Path) -> None:
    victim = tmp_path / "elsewhere" / "victim.conf"
    victim.parent.mkdir()
    victim.write_text("IMPORTANT FILE\nsecond line\n")
    src = image(tmp_path / "src" / "d.qcow2")
    inv = scan(cli, tmp_path / "inv.yaml", domain(tmp_path / "vm.xml", "v", uuid(0xE7), src))
    shared = tmp_path / "shared-work"
    shared.mkdir()
    shared.chmod(0o777)  # pre-created by someone else
    lock = shared / "vmmove-journal.sqlite.lock"
    lock.symlink_to(victim)
    result = cli("convert", str(inv), "--batch", "--to", str(shared))
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"vmmove: error: {lock}: the lock file is a symbolic link; remove it (vmmove never "
        "writes through a link) and rerun"]
    assert victim.read_text() == "IMPORTANT FILE\nsecond line\n"
    assert lock.is_symlink()


@pytest.mark.parametrize("name", ["vmmove-journal.sqlite.lock", "vmmove-plan.lock",
                                  "vmmove-journal.sqlite.upload.lock"])
def test_every_run_lock_refuses_symlinks_and_hard_links(tmp_path: Path, name: str) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    lock = tmp_path / name
    lock.symlink_to(victim)
    with pytest.raises(WriteError, match="is a symbolic link"):
        with run_lock(lock, "busy"):
            pass
    lock.unlink()
    os.link(victim, lock)
    with pytest.raises(WriteError, match="not a plain file of its own .hard-linked."):
        with run_lock(lock, "busy"):
            pass
    assert victim.read_text() == "keep\n"
    lock.unlink()
    with run_lock(lock, "busy") as fd:
        assert os.pread(fd, 32, 0) == f"{os.getpid()}\n".encode()
        assert stat.S_IMODE(lock.stat().st_mode) == 0o600
        with pytest.raises(LockBusy, match=rf"^busy \(pid {os.getpid()}\)$"):
            with run_lock(lock, "busy"):
                pass


def test_a_journal_name_planted_as_a_link_to_a_source_is_refused(tmp_path: Path) -> None:
    src = image(tmp_path / "src" / "d.qcow2", 0x77)
    before = sha256(src), mode(src)
    work = tmp_path / "w"
    work.mkdir()
    os.link(src, work / "vmmove-journal.sqlite")
    with pytest.raises(WriteError, match="not a plain file of its own"):
        Journal(work / "vmmove-journal.sqlite")
    (work / "vmmove-journal.sqlite").unlink()
    (work / "vmmove-journal.sqlite").symlink_to(src)
    with pytest.raises(WriteError, match="is a symbolic link"):
        Journal(work / "vmmove-journal.sqlite")
    assert (sha256(src), mode(src)) == before


# -- case 08: modes follow sensitivity, not the umask -------------------------------------------


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_files_are_0600_shared_files_follow_the_umask(cli: Cli, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    src = image(tmp_path / "src" / "d.qcow2")
    monkeypatch.chdir(tmp_path)
    with umask(0o022):
        scan(cli, Path("inv.yaml"), domain(tmp_path / "vm.xml", "v", uuid(0xE8), src))
        cli("convert", "inv.yaml", "--batch", "--to", "w022", ok=True)
    with umask(0o000):
        cli("convert", "inv.yaml", "--batch", "--to", "w000", ok=True)
        cli("plan", "inv.yaml", "--out", "plan.yaml", "-n", "vms", "--s3", "s3://b/p",
            "--endpoint-url", "http://127.0.0.1:9", ok=True)
        cli("runbook", "plan.yaml", "--out", "runbooks/new", ok=True)
        atomic_write("secret.yaml", "kind: Secret\n", private=True)
    for work in ("w022", "w000"):
        w = tmp_path / work
        assert mode(w) == 0o700, work
        journal = w / "vmmove-journal.sqlite"
        assert mode(w / "v-vda.qcow2") == mode(journal) == 0o600, work
        for extra in (Path(f"{journal}-wal"), Path(f"{journal}-shm"), Path(f"{journal}.lock")):
            assert not extra.exists() or mode(extra) == 0o600, extra
    assert mode(tmp_path / "inv.yaml") == 0o644  # umask 022
    assert mode(tmp_path / "plan.yaml") == 0o664  # umask 000: everything but o+w
    assert mode(tmp_path / "runbooks") == mode(tmp_path / "runbooks" / "new") == 0o775
    assert {mode(p) for p in (tmp_path / "runbooks" / "new").iterdir()} == {0o664}
    assert mode(tmp_path / "secret.yaml") == 0o600
    # Nothing vmmove made is world-writable.
    for path in [tmp_path / "w000", tmp_path / "runbooks", *tmp_path.glob("w000/*"),
                 *tmp_path.glob("runbooks/**/*"), tmp_path / "plan.yaml"]:
        assert not mode(path) & 0o002, path


def test_a_journal_keeps_its_records_and_becomes_private(tmp_path: Path) -> None:
    """A journal written by an earlier vmmove (0644) stays readable and is made 0600."""
    path = tmp_path / "w" / "vmmove-journal.sqlite"
    with Journal(path) as journal:
        journal.done("convert", "u/vda", checksum="sha256:ab", output="/x")
    path.chmod(0o644)
    with Journal(path) as journal:
        assert journal.get("convert", "u/vda").checksum == "sha256:ab"
    assert mode(path) == 0o600


# -- case 11: a full disk is one line naming the file written -----------------------------------


@contextmanager
def tmpfs(where: Path, size: str, fill: bool = False) -> Iterator[Path]:
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        if fill:
            subprocess.run(["dd", "if=/dev/zero", f"of={where / 'filler'}", "bs=4k"],
                           capture_output=True)
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_full_disk_is_one_line_naming_the_file_and_leaves_nothing(cli: Cli,
                                                                    tmp_path: Path) -> None:
    src = image(tmp_path / "src" / "d.qcow2", 0x5A, size="128M", data="40M")
    xml = domain(tmp_path / "vm.xml", "v", uuid(0xEB), src)
    inv = scan(cli, tmp_path / "inv.yaml", xml)
    with tmpfs(tmp_path / "full", "1M", fill=True) as full:
        before = sorted(full.iterdir())
        result = cli("convert", str(inv), "--batch", "--to", str(full / "w"))
        assert result.exit_code == 1
        journal = full / "w" / "vmmove-journal.sqlite"
        assert result.stderr.splitlines() == [
            f"vmmove: error: {journal}: cannot write the journal: No space left on device "
            "(free space, or use another work folder)"]
        assert not journal.exists()
        result = cli("scan", str(xml), "--output-file", str(full / "inv.yaml"))
        assert result.exit_code == 1
        assert result.stderr.splitlines()[-1] == (
            f"vmmove: error: {full / 'inv.yaml'}: cannot write: No space left on device "
            "(free space, or write somewhere else)")
        result = cli("plan", str(inv), "--out", str(full / "plan.yaml"), "-n", "vms",
                     "--s3", "s3://b/p", "--endpoint-url", "http://127.0.0.1:9")
        assert result.exit_code == 1
        assert result.stderr.splitlines() == [
            f"vmmove: error: {full / 'plan.yaml'}: cannot write: No space left on device "
            "(free space, or write somewhere else)"]
        assert sorted(p for p in full.iterdir() if p.name != "w") == before
    # Full while qemu-img writes (the space check beaten): the output is named, not the source.
    with tmpfs(tmp_path / "small", "12M") as small:
        (result,) = convert_disks(load_inventory(inv), [], small / "w",
                                  ConvertOptions(check_space=False))
        assert result.status == FAILED
        assert result.error == (f"v/vda: {small / 'w' / 'v-vda.qcow2'}: cannot write: No space "
                                "left on device (free space, or write somewhere else)")
        assert str(src) not in result.error
        assert [p.name for p in (small / "w").iterdir()
                if not p.name.startswith("vmmove-journal")] == []
