"""Warm migration's parts on real files and a real qemu-nbd (no libvirtd): deltas, block
hashes, dirty-bitmap reads, methods per disk, the plan's warm section, the status outlook,
and `vmmove sync` rounds of an offline VMX source whose flat VMDK changes between rounds."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from converters import delta
from migrate.clients import nbd
from migrate.clients.checkpoint import ours, plan_tag, serve_stopped
from migrate.clients.nbdwire import (
    BASE_ALLOCATION,
    STATE_DIRTY,
    STATE_ZERO,
    NbdClient,
    NbdWireError,
    dirty_context,
)
from migrate.core.model import VM, Disk, Source, SourceKind
from migrate.plan import PlanError, load_plan
from migrate.pipeline.warm import BITMAP, HASH, _split, disk_method, outlook
from tests.offline_support import warm_plan
from tests.conftest import qemu_img, qemu_io

MiB = 1 << 20


def test_copy_extents_writes_only_the_extents_and_zeros(tmp_path: Path) -> None:
    src = tmp_path / "src.raw"
    src.write_bytes(os.urandom(4 * MiB))
    dst = tmp_path / "dst.raw"
    dst.write_bytes(b"\xee" * (4 * MiB))
    with delta.FileReader(src) as reader:
        fd = delta.open_target(dst, reader.size)
        try:
            stats = delta.copy_extents(reader, [(MiB, 4096), (MiB + 2048, 8192)], fd,
                                       zero=[(3 * MiB, 512)])
        finally:
            os.close(fd)
    body, want = dst.read_bytes(), src.read_bytes()
    assert stats.extents == 1 and stats.read == 2048 + 8192
    assert body[MiB:MiB + 10240] == want[MiB:MiB + 10240]
    assert body[3 * MiB:3 * MiB + 512] == bytes(512)
    assert body[:MiB] == b"\xee" * MiB  # untouched outside the extents


def test_hash_sync_sends_only_changed_blocks_and_keeps_hashes(tmp_path: Path) -> None:
    src = tmp_path / "src.raw"
    with open(src, "wb") as fh:
        fh.write(os.urandom(3 * MiB))
        fh.truncate(8 * MiB + 123)  # a hole, and a last partial block
    dst = tmp_path / "vol" / "disk.img"
    dst.parent.mkdir()
    store = delta.BlockHashes(tmp_path / "h" / "vda.hashes")
    with delta.FileReader(src) as reader:
        assert store.load(reader.size) is None
        fd = delta.open_target(dst, reader.size, fresh=True)
        digests, first = delta.hash_sync(reader, reader.size, None, fd, reader.holes(),
                                         zeroed=True)
        os.close(fd)
    store.save(digests)
    assert dst.read_bytes() == src.read_bytes()
    (tmp_path / "first.raw").write_bytes(src.read_bytes())
    assert first.read == 3 * MiB + 123  # the hole was hashed without reading it
    assert first.changed == 3 * MiB + 123  # nor written
    with open(src, "r+b") as fh:  # two bytes in block 1, one in block 6 (inside the hole)
        fh.seek(MiB + 5)
        fh.write(b"ab")
        fh.seek(6 * MiB)
        fh.write(b"z")
    with delta.FileReader(src) as reader:
        old = store.load(reader.size)
        assert old is not None and len(old) == 9
        fd = delta.open_target(dst, reader.size)
        _new, second = delta.hash_sync(reader, reader.size, old, fd, reader.holes())
        os.close(fd)
    # only the 64 KiB pieces holding a changed byte are written, not their whole MiB
    assert second.changed == 2 * delta.SUB and second.extents == 2
    assert dst.read_bytes() == src.read_bytes()
    # the pass's digests give the guest-view checksum a second read would (xxh3-1m)
    assert first.checksum == nbd.file_guest_checksum(tmp_path / "first.raw")[0]
    assert second.checksum == nbd.file_guest_checksum(src)[0] != first.checksum
    assert second.checksum.startswith("xxh3-1m:")
    with delta.FileReader(src) as reader:  # no target: only hashed
        again, third = delta.hash_sync(reader, reader.size, None, None, reader.holes())
    assert again == _new and third.checksum == second.checksum and third.changed == 0
    assert store.load(7 * MiB) is None  # recorded for another size: not used
    # an older vmmove's layout (SHA-256 only, no header) is not used either: a full round
    store.path.write_bytes(b"\0" * 32 * 9)
    assert store.load(8 * MiB + 123) is None
    # nor the issue-15 layout (XXH3-128 and SHA-256 per block, for a sha256-1m checksum)
    store.path.write_bytes(b"vmmove-hashes xxh3-128+sha256 1MiB\n" + b"\0" * 48 * 9)
    assert store.load(8 * MiB + 123) is None


def test_differing_pieces_are_merged_runs_of_64k() -> None:
    sub = delta.SUB
    want = bytearray(b"\x01" * MiB)
    have = bytes(want)
    want[5] = 2  # piece 0
    want[sub + 9] = 2  # piece 1: merged with piece 0
    want[7 * sub] = 2  # piece 7
    assert delta.differing_pieces(bytes(want), have) == [(0, 2 * sub), (7 * sub, sub)]
    assert delta.differing_pieces(have, have) == []
    # a target shorter than the block (a short read) differs where it has no bytes
    assert delta.differing_pieces(have, have[:MiB - sub]) == [(MiB - sub, sub)]


def test_merge_and_split_extents() -> None:
    assert delta.merge_extents([(10, 5), (0, 4), (4, 2), (20, 0)]) == [(0, 6), (10, 5)]
    data, zero = _split([(0, 100), (200, 50)], [(50, 20), (190, 300)])
    assert data == [(0, 50), (70, 30)] and zero == [(50, 20), (200, 50)]


def test_nbd_client_reads_ranges_allocation_and_a_dirty_bitmap(tmp_path: Path) -> None:
    """A qcow2 with a persistent bitmap (what a libvirt checkpoint leaves), written after
    the bitmap started, exported with qemu-nbd -B: exactly the written clusters are dirty."""
    image = tmp_path / "d.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(image), "32M")
    qemu_io(str(image), "write -P 0x11 0 2M", fmt="qcow2")
    qemu_img("bitmap", "--add", "--enable", "-f", "qcow2", str(image), "vmmove-abcd1234-1")
    qemu_io(str(image), "write -P 0x22 8M 128k", fmt="qcow2")
    with serve_stopped(str(image), "qcow2", tmp_path / "nbd", "vda", "vmmove-abcd1234-1") as ex:
        ctx = dirty_context("vmmove-abcd1234-1")
        with NbdClient(ex.socket, ex.export, (BASE_ALLOCATION, ctx)) as c:
            assert c.size == 32 * MiB
            dirty = [(e.offset, e.length) for e in c.block_status(ctx) if e.flags & STATE_DIRTY]
            assert dirty == [(8 * MiB, 128 << 10)]
            alloc = c.block_status(BASE_ALLOCATION)
            assert sum(e.length for e in alloc) == 32 * MiB
            assert all(e.flags & STATE_ZERO for e in alloc if e.offset >= 9 * MiB)
            assert c.pread(8 * MiB - 2, 4) == b"\0\0\x22\x22"
            assert c.pread(0, 3 * MiB)[:2 * MiB] == b"\x11" * (2 * MiB)
        with pytest.raises(NbdWireError, match="qemu:dirty-bitmap:other"):
            NbdClient(ex.socket, ex.export, (dirty_context("other"),))
    assert not (tmp_path / "nbd" / "vda.pid").exists()  # qemu-nbd stopped
    with pytest.raises(Exception, match="bitmap nope"):
        with serve_stopped(str(image), "qcow2", tmp_path / "nbd", "vda", "nope"):
            pass


def test_methods_per_disk() -> None:
    live = Source(SourceKind.LIBVIRT, "qemu:///system")
    vmx = Source(SourceKind.VMX, "/exports/a.vmx")
    assert disk_method(VM("a", live), Disk("vda", path="/x.qcow2", format="qcow2"))[0] == BITMAP
    assert disk_method(VM("a", live), Disk("vdb", path="/x.img", format="raw"))[0] == HASH
    assert disk_method(VM("a", live), Disk("vdc", source_type="block", path="/dev/vg/l",
                                           format="raw"))[0] == HASH
    method, why = disk_method(VM("a", vmx), Disk("scsi0:0", path="/e/a.vmdk", format="vmdk"))
    assert method == HASH and "offline vmx" in why


def test_checkpoint_names_are_per_plan() -> None:
    tag = plan_tag("/work/a")
    assert tag != plan_tag("/work/b") and len(tag) == 8
    assert ours(f"vmmove-{tag}-3", tag)
    assert not ours(f"vmmove-{plan_tag('/work/b')}-3", tag) and not ours("backup-1", tag)
    assert not ours(f"vmmove-{tag}-3x", tag)


def test_outlook_predicts_from_the_change_rate() -> None:
    st = {"round": 2, "sizes": {"vda": 100 * MiB},
          "history": [{"round": 1, "at": 1000.0, "changed": 100 * MiB, "seconds": 10.0,
                       "read": 100 * MiB},
                      {"round": 2, "at": 1100.0, "changed": 10 * MiB, "seconds": 1.0,
                       "read": 10 * MiB}]}
    got = outlook(st, [BITMAP], now=1150.0)
    # 10 MiB per 100 s → 5 MiB expected after 50 s, at 10 MiB/s: 0.5 s + 1 s overhead
    assert got == {"rounds": 2, "age": 50.0, "delta": 10 * MiB, "expected": 5 * MiB,
                   "predicted": 1.5}
    assert outlook(st, [HASH], now=1150.0)["predicted"] == pytest.approx(11.5)
    assert outlook({}, [BITMAP])["predicted"] is None


def test_plan_warm_section_is_checked(tmp_path: Path) -> None:
    inv = tmp_path / "inventory.yaml"
    inv.write_text(yaml.safe_dump({"vms": []}))
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({
        "apiVersion": "vmmove.io/v1alpha1", "kind": "Plan", "inventory": "inventory.yaml",
        "warm": {"default": "yes", "maxRoundAge": -1, "other": 1}, "waves": []}))
    with pytest.raises(PlanError) as err:
        load_plan(plan)
    text = "\n".join(err.value.problems)
    assert "warm.default: expected bool" in text and "warm.maxRoundAge: must be" in text
    assert "warm: unknown key 'other'" in text


def _flat_vmx(folder: Path) -> tuple[Path, Path]:
    disk = folder / "app.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", str(disk), "8M")
    flat = folder / "app-flat.vmdk"
    with open(flat, "r+b") as fh:
        fh.write(b"\x5a" * (3 * MiB))
    vmx = folder / "app.vmx"
    vmx.write_text('config.version = "8"\nvirtualHW.version = "19"\ndisplayName = "app"\n'
                   'guestOS = "debian11-64"\nmemSize = "256"\nscsi0.present = "TRUE"\n'
                   'scsi0.virtualDev = "pvscsi"\nscsi0:0.present = "TRUE"\n'
                   'scsi0:0.fileName = "app.vmdk"\n')
    return vmx, flat


def test_sync_rounds_of_an_offline_vmx_source_whose_flat_vmdk_changes(
        cli: Any, tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    vmx, flat = _flat_vmx(export)
    _, plan_file, made = warm_plan(cli, vmx, tmp_path)
    assert "warm app/" in made.stderr and ": hash (offline vmx source" in made.stderr
    first = cli("sync", str(plan_file), "--wave", "1", "-o", "json")
    assert first.exit_code == 0, first.stderr
    (r1,) = json.loads(first.stdout)
    assert r1["kind"] == "full" and r1["round"] == 1
    (volume,) = (tmp_path / "volumes" / "vms").glob("*/disk.img")
    assert volume.read_bytes() == flat.read_bytes()
    with open(flat, "r+b") as fh:  # the export is refreshed: 4 KiB changed at 5 MiB
        fh.seek(5 * MiB)
        fh.write(b"\xa5" * 4096)
    second = cli("sync", str(plan_file), "--wave", "1", "-o", "json")
    assert second.exit_code == 0, second.stderr
    (r2,) = json.loads(second.stdout)
    assert r2["kind"] == "incremental" and r2["changed"] == delta.SUB  # 4 KiB: one piece
    assert volume.read_bytes() == flat.read_bytes()
    proc = subprocess.run(["qemu-img", "compare", "-f", "vmdk", "-F", "raw", str(export / "app.vmdk"),
                           str(volume)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
    status = json.loads(cli("status", str(plan_file), "-o", "json", ok=True).stdout)
    (vm,) = status["vms"]
    assert vm["warm"]["rounds"] == 2 and vm["warm"]["delta"] == delta.SUB


def test_a_flat_vmdk_is_read_directly_only_when_its_extent_is_the_whole_file(
        tmp_path: Path) -> None:
    """One FLAT/VMFS extent at offset 0, exactly the disk's size, inside the export: read
    as a raw file; any other layout is read through qemu (never guessed)."""
    from converters.convert import DiskError, source_chain
    from migrate.pipeline.warm import flat_extent

    export = tmp_path / "export"
    export.mkdir()
    vmx, flat = _flat_vmx(export)
    descriptor = export / "app.vmdk"
    text = descriptor.read_bytes().split(b"\0", 1)[0].decode()
    vm = VM("app", Source(SourceKind.VMX, str(vmx)),
            disks=[Disk("sda", path=str(descriptor), format="vmdk", virtual_size=8 * MiB)])
    (disk,) = vm.disks

    def direct(body: str) -> str | None:
        descriptor.write_text(body)
        return flat_extent(vm, disk, source_chain(vm, disk))

    line = 'RW 16384 FLAT "app-flat.vmdk" 0'
    assert line in text  # as qemu-img writes it
    assert direct(text) == str(flat)
    assert direct(text.replace(line, 'RW 16384 VMFS "app-flat.vmdk"')) == str(flat)  # ESXi
    # an offset into the file, two extents, a flat file longer than the disk: through qemu
    assert direct(text.replace(line, 'RW 14336 FLAT "app-flat.vmdk" 2048')) is None
    # an extent reaching past the file's end (qemu would read zeros there): refused
    with pytest.raises(DiskError, match="'app-flat.vmdk' is 8388608 bytes, the descriptor "
                       r"declares 9437184 bytes \(16384 sectors at offset 2048\): truncated"):
        direct(text.replace(line, 'RW 16384 FLAT "app-flat.vmdk" 2048'))
    assert direct(text.replace(line, 'RW 8192 FLAT "app-flat.vmdk" 0\n'
                                     'RW 8192 FLAT "app-flat.vmdk" 8192')) is None
    with open(flat, "ab") as fh:
        fh.write(b"\0" * 512)
    assert direct(text) is None


def test_sync_every_until_repeats_rounds(cli: Any, tmp_path: Path) -> None:
    import datetime

    export = tmp_path / "export"
    export.mkdir()
    vmx, _flat = _flat_vmx(export)
    _, plan_file, _ = warm_plan(cli, vmx, tmp_path)
    until = (datetime.datetime.now().astimezone() + datetime.timedelta(seconds=1.5))
    out = cli("sync", str(plan_file), "--wave", "1", "--every", "1s", "--until",
              until.isoformat(timespec="milliseconds"), "-o", "json", ok=True)
    rounds = json.loads(out.stdout)
    assert [r["round"] for r in rounds] == [1, 2]
    assert [r["kind"] for r in rounds] == ["full", "incremental"] and rounds[1]["changed"] == 0
    bad = cli("sync", str(plan_file), "--wave", "1", "--every", "soon", ok=False)
    assert "--every 'soon'" in bad.stderr
    assert "--until goes with --every" in cli("sync", str(plan_file), "--wave", "1",
                                              "--until", "02:00", ok=False).stderr


def test_cutover_preflight_wants_a_recent_round(tmp_path: Path) -> None:
    from migrate.core.model import Inventory
    from migrate.core.journal import Journal
    from migrate.pipeline.warm import KIND_WARM, preflight_problems

    vm = VM("web", Source(SourceKind.LIBVIRT, "qemu:///system"), uuid="u-1",
            disks=[Disk("vda", path="/x.qcow2", format="qcow2", virtual_size=MiB)])
    inv = tmp_path / "inventory.yaml"
    inv.write_text("vms: []\n")
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump({
        "apiVersion": "vmmove.io/v1alpha1", "kind": "Plan", "inventory": "inventory.yaml",
        "warm": {"default": True, "maxRoundAge": 600}, "waves": [{"name": "w", "vms": ["web"]}]}))
    plan = load_plan(plan_file, inventory=Inventory(vms=[vm]))
    (p,) = plan.wave(1)
    with Journal(tmp_path / "j.sqlite") as journal:
        assert "without a precopy round" in preflight_problems(plan, p, journal)[0]
        journal.update(KIND_WARM, p.key, round=2, last_at=1000.0)
        (old,) = preflight_problems(plan, p, journal, now=1000.0 + 601)
        assert "601s old (warm.maxRoundAge 600s)" in old and f"vmmove sync {plan.path}" in old
        assert preflight_problems(plan, p, journal, now=1000.0 + 599) == []
        journal.update(KIND_WARM, p.key, full_reason="rolled back after the target started")
        assert "needs a full round (rolled back" in preflight_problems(plan, p, journal,
                                                                       now=1001.0)[0]


def test_offline_rounds_leave_no_scratch_folder(cli: Any, tmp_path: Path) -> None:
    from migrate.clients.checkpoint import SCRATCH_ROOT, plan_tag

    export = tmp_path / "export"
    export.mkdir()
    vmx, _flat = _flat_vmx(export)
    _, plan_file, _ = warm_plan(cli, vmx, tmp_path)
    cli("sync", str(plan_file), "--wave", "1", ok=True)
    tag = plan_tag(load_plan(plan_file).workdir)
    assert not list(SCRATCH_ROOT.glob(f"vmmove-{tag}-*"))


def test_the_warm_cutover_itinerary_is_declared_beside_the_cold_one() -> None:
    """Same phases and journal names as the cold cutover; the sync phase moves the final
    delta, the preflight asks for a recent round; the cutover state machine picks it."""
    from migrate.pipeline.itinerary import (CUTOVER, PRECOPY, WARM_CUTOVER,
                                            cutover_itinerary)

    assert WARM_CUTOVER.names == CUTOVER.names
    assert cutover_itinerary(True) is WARM_CUTOVER and cutover_itinerary(False) is CUTOVER
    assert "final delta" in WARM_CUTOVER.phase("sync").text
    assert "final delta" not in CUTOVER.phase("sync").text
    assert "maxRoundAge" in WARM_CUTOVER.phase("preflight").text
    assert WARM_CUTOVER.phase("stop") == CUTOVER.phase("stop")
    assert PRECOPY.names == ("round",)
