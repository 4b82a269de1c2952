"""vmmove convert: every source format, sparse outputs, journal, resume, bad input, space."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from migrate.core.digest import file_checksum
from converters.convert import (
    CONVERTED,
    FAILED,
    IGNORED,
    SKIPPED,
    VERIFIED,
    ConvertOptions,
    convert_disks,
)
from migrate.core.model import Disk, Inventory, PowerState, Source, SourceKind
from migrate.core.serialize import load_inventory
from migrate.core.journal import DONE, Journal
from migrate.core.progress import Subscriber
from migrate.core.workdir import journal_path
from migrate.core.records import KIND_CONVERT
from tests.conftest import small_tmpfs
from tests.convert_support import (
    DATA_BYTES,
    MiB,
    assert_pattern,
    compare,
    disk,
    inventory_file,
    make_image,
    mapped_data,
    sha256,
    vm,
)

KINDS = ["raw", "qcow2", "vmdk", "vmdk-stream", "vhdx", "vdi", "vpc", "qcow2-chain"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    folder = tmp_path_factory.mktemp("sources")
    return {kind: make_image(folder, kind) for kind in KINDS}


def source_files(sources: dict[str, tuple[Path, str]]) -> list[Path]:
    files = [path for path, _ in sources.values()]
    return files + [p.with_name(p.stem + "-base.qcow2") for p in files if "chain" in p.name]


def every_format_inventory(sources: dict[str, tuple[Path, str]]) -> Inventory:
    vms = []
    for kind, (path, fmt) in sources.items():
        # The VDI leaves its format unknown: it is probed, then passed with -f.
        vms.append(vm(f"vm-{kind}", [disk("vda", path, None if kind == "vdi" else fmt),
                                     Disk(target="hdc", device="cdrom")]))
    return Inventory(vms=vms)


@pytest.mark.parametrize("out_fmt", ["qcow2", "raw"])
def test_every_source_format_converts_sparse_verified_and_sources_untouched(
    sources: dict[str, tuple[Path, str]], tmp_path: Path, out_fmt: str
) -> None:
    before = {p: (sha256(p), p.stat().st_mtime_ns) for p in source_files(sources)}
    inv = every_format_inventory(sources)
    results = convert_disks(inv, [], tmp_path, ConvertOptions(format=out_fmt, jobs=2))

    assert [r.status for r in results if r.disk == "hdc"] == [IGNORED] * len(KINDS)
    converted = [r for r in results if r.disk == "vda"]
    assert all(r.status == CONVERTED for r in converted), [r.error for r in converted]
    with Journal(journal_path(tmp_path)) as journal:
        for r, (kind, (src, fmt)) in zip(converted, sources.items()):
            out = Path(r.output)
            assert out == tmp_path / f"vm-{kind}-vda.{out_fmt}"
            assert compare(src, fmt, out, out_fmt) == 0
            assert_pattern(out, out_fmt)
            # Sparse stays sparse: data only where data was written (VDI: 1 MiB blocks).
            data = sum(length for _, length in mapped_data(out, out_fmt))
            assert DATA_BYTES <= data <= DATA_BYTES + MiB, kind
            assert out.stat().st_blocks * 512 <= DATA_BYTES + 2 * MiB, kind
            # The journal holds what upload and manifests read.
            step = journal.get(KIND_CONVERT, r.item)
            assert step and step.status == DONE
            assert step.data["output"] == str(out) and step.data["format"] == out_fmt
            assert step.data["source"] == str(src) and step.data["verified"] is True
            assert step.data["virtual_size"] == r.virtual_size >= 64 * MiB
            assert step.data["allocated"] == out.stat().st_blocks * 512
            assert step.checksum == file_checksum(out) == r.checksum
            assert step.checksum.startswith("xxh3-1m:")
            assert step.data["source_format"] == fmt and step.data["probed"] == (kind == "vdi")
    # Sources were opened read-only: not a byte, not a timestamp changed.
    assert {p: (sha256(p), p.stat().st_mtime_ns) for p in before} == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_zstd_compressed_qcow2(sources: dict[str, tuple[Path, str]], tmp_path: Path) -> None:
    src, fmt = sources["vmdk"]
    inv = Inventory(vms=[vm("z", [disk("vda", src, fmt)])])
    (result,) = convert_disks(inv, [], tmp_path, ConvertOptions(compress=True))
    assert result.status == CONVERTED and result.verified
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", result.output],
                                     capture_output=True, text=True).stdout)
    assert info["format-specific"]["data"]["compression-type"] == "zstd"
    assert compare(src, fmt, result.output, "qcow2") == 0
    # The pattern compresses to almost nothing.
    assert Path(result.output).stat().st_blocks * 512 < DATA_BYTES / 4


def test_rerun_skips_done_disks_redoes_partial_and_changed_ones(tmp_path: Path) -> None:
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    a, _ = make_image(src_dir, "qcow2", "a")
    b, _ = make_image(src_dir, "vmdk", "b")
    c, _ = make_image(src_dir, "raw", "c")
    inv = Inventory(vms=[vm("web", [disk("vda", a, "qcow2"), disk("vdb", b, "vmdk")]),
                         vm("db", [disk("vda", c, "raw")], uuid="1111-db")])
    work = tmp_path / "work"
    first = convert_disks(inv, [], work)
    assert [r.status for r in first] == [CONVERTED] * 3
    with Journal(journal_path(work)) as journal:
        finished = {s.item: s.finished for s in journal.steps(KIND_CONVERT)}
        # Simulate a crash in the middle of web/vdb: running in the journal, a partial
        # temporary file, no output.
        journal.start(KIND_CONVERT, "web/vdb")
    Path(first[1].output).unlink()
    stale = work / f".{Path(first[1].output).name}.4242-deadbeef.part"
    stale.write_bytes(b"half an image")

    second = convert_disks(inv, [], work)
    assert [r.status for r in second] == [SKIPPED, CONVERTED, SKIPPED]
    assert not stale.exists()
    with Journal(journal_path(work)) as journal:
        again = {s.item: s.finished for s in journal.steps(KIND_CONVERT)}
        assert again["web/vda"] == finished["web/vda"]
        assert again["1111-db/vda"] == finished["1111-db/vda"]
        assert again["web/vdb"] > finished["web/vdb"]
    assert compare(b, "vmdk", second[1].output, "qcow2") == 0

    # The source of db/vda changes (e.g. the VM ran again): it is converted again.
    time.sleep(0.01)
    subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x77 0 64k", str(c)], check=True,
                   capture_output=True)
    third = convert_disks(inv, ["db"], work)
    assert third[0].status == CONVERTED and "changed" in (third[0].note or "")
    assert compare(c, "raw", third[0].output, "qcow2") == 0


def test_no_verify_then_verify_checks_without_converting_again(tmp_path: Path) -> None:
    src, fmt = make_image(tmp_path, "vhdx")
    inv = Inventory(vms=[vm("v", [disk("sda", src, fmt)])])
    (fast,) = convert_disks(inv, [], tmp_path / "w", ConvertOptions(verify=False))
    assert fast.status == CONVERTED and fast.verified is False and fast.checksum is None
    mtime = Path(fast.output).stat().st_mtime_ns
    (checked,) = convert_disks(inv, [], tmp_path / "w", ConvertOptions(verify=True))
    assert checked.status == VERIFIED and checked.verified is True
    assert checked.checksum == file_checksum(fast.output)
    assert Path(fast.output).stat().st_mtime_ns == mtime


def test_plan_wave_api_converts_exactly_the_listed_disks(tmp_path: Path) -> None:
    a, _ = make_image(tmp_path, "raw", "a")
    b, _ = make_image(tmp_path, "raw", "b")
    inv = Inventory(vms=[vm("one", [disk("vda", a, "raw"), disk("vdb", b, "raw")]),
                         vm("two", [disk("vda", a, "raw")], uuid="uuid-two")])
    results = convert_disks(inv, [], tmp_path / "w", disks=[("one", "vdb"), ("uuid-two", "vda")])
    assert [(r.vm, r.disk, r.status) for r in results] == [
        ("one", "vdb", CONVERTED), ("two", "vda", CONVERTED)]


def test_bad_inputs_fail_their_disk_only(cli, tmp_path: Path) -> None:
    good, _ = make_image(tmp_path, "qcow2", "good")
    corrupt = tmp_path / "corrupt.vmdk"
    corrupt.write_bytes(os.urandom(256 * 1024))
    trunc_q, _ = make_image(tmp_path, "qcow2", "truncq")
    os.truncate(trunc_q, trunc_q.stat().st_size // 2)
    trunc_v, _ = make_image(tmp_path, "vmdk", "truncv")
    os.truncate(trunc_v, trunc_v.stat().st_size // 2)
    weird, _ = make_image(tmp_path, "raw", "weird")
    inv = inventory_file(tmp_path, [
        vm("good", [disk("vda", good, "qcow2")]),
        vm("corrupt", [disk("vda", corrupt, None)]),
        vm("truncq", [disk("vda", trunc_q, "qcow2")]),
        vm("truncv", [disk("vda", trunc_v, "vmdk")]),
        vm("unknown", [disk("vda", weird, "floppyfmt")]),
        vm("missing", [disk("vda", tmp_path / "gone.qcow2", "qcow2")]),
        vm("nosource", [disk("vda", None, None, source_type="none")]),
        vm("netdisk", [disk("vda", "pool/img", "raw", source_type="network", protocol="rbd")]),
    ])
    work = tmp_path / "work"
    result = cli("convert", str(inv), "--batch", "--to", str(work), "-o", "json")
    assert result.exit_code == 1
    rows = {r["vm"]: r for r in json.loads(result.stdout)}
    assert rows["good"]["status"] == CONVERTED
    expected = {
        "corrupt": "corrupt.vmdk: not a valid vmdk image",
        "truncq": "truncq.qcow2: corrupt image",
        "truncv": "truncv.vmdk: image check failed",
        "unknown": "unknown image format 'floppyfmt'",
        "missing": "gone.qcow2: source image not found",
        "nosource": "nosource/vda: the disk has no source file",
        "netdisk": "netdisk/vda: network disks (rbd) cannot be read",
    }
    for name, text in expected.items():
        assert rows[name]["status"] == FAILED and text in rows[name]["error"], rows[name]
        assert rows[name]["error"].startswith(f"{name}/vda: ")
        # in its row (stdout) and once on stderr, where it is seen when stdout is a file
        assert result.stderr.count(rows[name]["error"]) == 1, result.stderr
    assert "7 of 8 disk(s) failed" in result.stderr
    assert sorted(p.name for p in work.iterdir() if p.suffix in (".qcow2", ".raw", ".part")) == [
        "good-vda.qcow2"]
    # --status shows all of it from the journal.
    status = json.loads(cli("convert", "--status", "--to", str(work), "-o", "json",
                            ok=True).stdout)
    assert {s["vm"]: s["status"] for s in status} == {
        "good": "done", **{name: "failed" for name in expected}}


def test_running_vm_is_refused_unless_inconsistent_copy(cli, tmp_path: Path) -> None:
    src, _ = make_image(tmp_path, "qcow2", "live")
    inv = inventory_file(tmp_path, [vm("live", [disk("vda", src, "qcow2")], PowerState.RUNNING)])
    refused = cli("convert", str(inv), "live", "--to", str(tmp_path / "w"), ok=False)
    assert "live/vda: VM is running" in refused.stdout
    assert "consistent copy needs the VM shut off, or the staged cutover" in refused.stdout
    assert "--inconsistent-copy" in refused.stdout
    ok = cli("convert", str(inv), "live", "--to", str(tmp_path / "w"), "--inconsistent-copy",
             ok=True)
    assert "converted" in ok.stdout


def test_disk_locked_by_another_process_is_refused_unless_force_share(tmp_path: Path) -> None:
    src, _ = make_image(tmp_path, "qcow2", "locked")
    inv = Inventory(vms=[vm("locked", [disk("vda", src, "qcow2")])])  # inventory says shutoff
    holder = subprocess.Popen(["qemu-io", "-f", "qcow2", "-c", "sleep 600000", str(src)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(["qemu-img", "info", str(src)], capture_output=True).returncode == 0:
            assert time.monotonic() < deadline, "qemu-io never took the image lock"
            time.sleep(0.05)
        (refused,) = convert_disks(inv, [], tmp_path / "w")
        assert refused.status == FAILED
        assert "in use" in refused.error and "staged cutover" in refused.error
        (copied,) = convert_disks(inv, [], tmp_path / "w", ConvertOptions(force_share=True))
        assert copied.status == CONVERTED and copied.verified
    finally:
        holder.kill()
        holder.wait()


def test_an_ova_disk_converts_in_place_but_json_names_from_elsewhere_are_refused(
        tmp_path: Path) -> None:
    # A vmdk read in place inside an OVA (tar) through the json: window vmmove builds;
    # the very same json: name in a domain XML (any source but that archive) is refused.
    from migrate.sources.ova import read_ova
    from tests.offline_support import ovf_text, tar_bytes

    inner, _ = make_image(tmp_path, "vmdk-stream", "inner")
    archive = tmp_path / "appliance.ova"
    archive.write_bytes(tar_bytes([("appliance.ovf", ovf_text("disk1.vmdk").encode()),
                                   ("disk1.vmdk", inner.read_bytes())]))
    (ova_vm,) = read_ova(str(archive))
    window = ova_vm.disks[0].path
    assert window.startswith("json:") and ova_vm.disks[0].error is None
    forged = vm("xml", [disk("disk0", window, "vmdk")])
    forged.source = Source(SourceKind.DOMAIN_XML, str(tmp_path / "xml.xml"))
    inv = Inventory(vms=[ova_vm, forged])
    converted, refused = convert_disks(inv, [], tmp_path / "w")
    assert converted.status == CONVERTED and converted.verified, converted.error
    assert_pattern(converted.output, "qcow2")
    assert refused.status == FAILED and "a json: name, not a file in the export" in refused.error
    assert not list((tmp_path / "w").glob("xml-*"))


def test_second_convert_on_the_same_folder_is_refused(cli, tmp_path: Path) -> None:
    src, _ = make_image(tmp_path, "raw", "r")
    inv = inventory_file(tmp_path, [vm("r", [disk("vda", src, "raw")])])
    work = tmp_path / "w"
    with Journal(journal_path(work)) as other, other.exclusive():
        result = cli("convert", str(inv), "--batch", "--to", str(work), ok=False)
    assert "another vmmove convert is working in this folder" in result.stderr


def test_cli_usage_and_status_table(cli, tmp_path: Path) -> None:
    src, _ = make_image(tmp_path, "raw", "r")
    inv = inventory_file(tmp_path, [vm("r", [disk("vda", src, "raw")])])
    work = tmp_path / "w"
    assert "name the VMs to convert, or pass --batch" in cli(
        "convert", str(inv), "--to", str(work), ok=False).stderr
    assert "no such VM in the inventory: nope" in cli(
        "convert", str(inv), "nope", "--to", str(work), ok=False).stderr
    assert "--compress needs --format qcow2" in cli(
        "convert", str(inv), "--batch", "--format", "raw", "--compress", "--to", str(work),
        ok=False).stderr
    assert "nothing converted yet" in cli("convert", "--status", "--to", str(work),
                                          ok=False).stderr
    out = cli("convert", str(inv), "r", "--to", str(work), "--format", "raw", "-o", "yaml",
              ok=True).stdout
    assert "status: converted" in out
    table = cli("convert", "--status", "--to", str(work), ok=True).stdout
    assert table.splitlines()[0].split()[:4] == ["VM", "DISK", "STATUS", "FORMAT"]
    assert "r-vda.raw" in table and "xxh3-1m:" in table
    help_text = " ".join(cli("convert", "--help", ok=True).stdout.split())
    assert "only allocated data" in help_text and "--force-share" in help_text


def test_full_target_folder_fails_the_disk_that_does_not_fit(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "small", "12M") as mnt:
        small_a, _ = make_image(tmp_path, "vmdk", "small-a")
        big, _ = make_image(tmp_path, "vmdk", "big",
                            pattern=[(0x5A, 0, 16 * MiB)])
        small_b, _ = make_image(tmp_path, "vmdk", "small-b")
        inv = Inventory(vms=[vm("a", [disk("vda", small_a, "vmdk")]),
                             vm("big", [disk("vda", big, "vmdk")]),
                             vm("b", [disk("vda", small_b, "vmdk")])])
        results = convert_disks(inv, [], mnt, ConvertOptions(jobs=1))
        assert [r.status for r in results] == [CONVERTED, FAILED, CONVERTED]
        assert f"not enough space in {mnt}" in results[1].error
        assert "qemu-img measure" in results[1].error
        names = sorted(p.name for p in mnt.iterdir())
        assert [n for n in names if n.endswith((".qcow2", ".part"))] == [
            "a-vda.qcow2", "b-vda.qcow2"]


def test_no_space_while_writing_is_an_error_for_that_disk(tmp_path: Path) -> None:
    """The measure check can be beaten by other writers: qemu-img's ENOSPC is handled too."""
    with small_tmpfs(tmp_path / "small", "12M") as mnt:
        big, _ = make_image(tmp_path, "vmdk", "big", pattern=[(0x5A, 0, 16 * MiB)])
        inv = Inventory(vms=[vm("big", [disk("vda", big, "vmdk")])])
        (result,) = convert_disks(inv, [], mnt, ConvertOptions(check_space=False))
        assert result.status == FAILED and "No space left on device" in result.error
        assert not [p for p in mnt.iterdir() if p.name.endswith((".part", ".qcow2"))]


def test_inventory_written_by_scan_is_accepted(tmp_path: Path) -> None:
    # A round trip through the inventory file keeps everything convert needs.
    src, _ = make_image(tmp_path, "vdi", "x")
    path = inventory_file(tmp_path, [vm("x", [disk("vda", src, "vdi")])])
    inv = load_inventory(path)
    (result,) = convert_disks(inv, ["x"], tmp_path / "w")
    assert result.status == CONVERTED
    conn = sqlite3.connect(journal_path(tmp_path / "w"))
    assert conn.execute("SELECT status FROM steps WHERE kind='convert'").fetchall() == [("done",)]
    conn.close()


class Recorder(Subscriber):
    """A progress subscriber (the one protocol) that keeps every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, object]] = []

    def on_queued(self, job, total: float, already: float = 0) -> None:
        self.calls.append(("queued", job.item, total))

    def on_phase(self, job, phase: str, total: float) -> None:
        self.calls.append(("phase", job.item, (phase, total)))

    def on_progress(self, job, amount, note=None) -> None:
        self.calls.append(("progress", job.item, amount))

    def on_done(self, job, result) -> None:
        self.calls.append(("done", job.item, result.status))


def test_progress_subscribers_see_every_disk(tmp_path: Path) -> None:
    a, _ = make_image(tmp_path, "vmdk", "a")
    b, _ = make_image(tmp_path, "qcow2", "b")
    inv = Inventory(vms=[vm("p", [disk("vda", a, "vmdk"), disk("vdb", b, "qcow2")])])
    first = Recorder()
    convert_disks(inv, [], tmp_path / "w", ConvertOptions(jobs=2), first)
    for item in ("p/vda", "p/vdb"):
        mine = [c for c in first.calls if c[1] == item]
        assert mine[0][0] == "queued" and mine[0][2] >= DATA_BYTES
        # conversion: amounts in bytes that add up to the bytes to write, all forward
        verify_at = next(i for i, c in enumerate(mine) if c[0] == "phase")
        converted = [c[2] for c in mine[1:verify_at]]
        assert all(c[0] == "progress" for c in mine[1:verify_at])
        assert all(x > 0 for x in converted)
        assert sum(converted) == pytest.approx(mine[0][2])
        # verification (compare + checksum) is a phase of its own, after conversion, that
        # reports its own progress up to its total
        phase, total = mine[verify_at][2]
        assert phase == "verify" and total > 0
        checked = [c[2] for c in mine[verify_at + 1:-1]]
        assert checked and all(x > 0 for x in checked)
        assert sum(checked) == pytest.approx(total)
        assert mine[-1] == ("done", item, CONVERTED)
    again = Recorder()
    convert_disks(inv, [], tmp_path / "w", ConvertOptions(jobs=2), again)
    assert sorted(again.calls) == [("done", "p/vda", SKIPPED), ("done", "p/vdb", SKIPPED)]
