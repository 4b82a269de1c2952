"""Issue 17: the default conversion reads the source once and is verified in the stream.

Real qemu-img/qemu-nbd images and a real SeaweedFS; the checksums the conversion records
are checked against independent computations (qemu-img's own raw conversion, the output
read back through qemu), not against themselves.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from converters.convert import CONVERTED, convert_disks
from converters.stream import FileTree
from migrate.clients.nbd import file_guest_checksum
from migrate.core import digest
from migrate.core.journal import Journal
from migrate.core.records import KIND_CONVERT
from migrate.core.workdir import journal_path
from tests.convert_support import (
    DATA_BYTES, compare, disk, inventory_file, make_image, mapped_data, vm,
)
from tests.conftest import qemu_img, qemu_io
from tests.s3_support import SeaweedFS

MiB = 1 << 20


def _step(workdir: Path, item: str) -> Any:
    with Journal(journal_path(workdir)) as journal:
        return journal.get(KIND_CONVERT, item)


def _independent_guest_checksum(src: Path, fmt: str, tmp: Path,
                                 form: str = digest.DEFAULT) -> str:
    """The guest view's checksum by another road: qemu-img convert to raw, then the raw
    file hashed (holes read as zeros)."""
    raw = tmp / f"{src.name}.independent.raw"
    subprocess.run(["qemu-img", "convert", "-f", fmt, "-O", "raw", str(src), str(raw)],
                   check=True)
    try:
        return digest.file_checksum(raw, form)
    finally:
        raw.unlink()


def _source_data(src: Path, fmt: str) -> int:
    """Bytes the source holds as data, rounded up to 64 KiB clusters (what may be read)."""
    return sum(-(-length // (64 * 1024)) * 64 * 1024 for _, length in mapped_data(src, fmt))


def test_in_stream_checksums_match_the_guest_view_and_the_output(tmp_path: Path) -> None:
    for kind in ("vmdk", "qcow2-chain", "vhdx", "raw"):
        (tmp_path / kind).mkdir()
        src, fmt = make_image(tmp_path / kind, kind)
        inv = [vm(f"s-{kind}", [disk("vda", src, fmt)])]
        (result,) = convert_disks(_inv(inv), [], tmp_path / f"w-{kind}")
        assert result.status == CONVERTED and result.verified, result.error
        out = Path(result.output)
        step = _step(tmp_path / f"w-{kind}", result.item)
        assert step.data["verify"] == "stream" and step.data["compare"] is None
        # the guest checksum taken as the source was read equals qemu's own reading of it
        expected = _independent_guest_checksum(src, fmt, tmp_path)
        assert step.data["guest_checksum"] == expected, kind
        assert step.data["guest_bytes"] == result.virtual_size
        assert expected.startswith("xxh3-1m:")
        # the file checksum is the output's bytes; the output reads back as the guest view
        assert step.checksum == digest.file_checksum(out)
        assert step.checksum.startswith("xxh3-1m:")
        assert file_guest_checksum(out, "qcow2")[0] == expected
        assert qemu_img("check", "-f", "qcow2", str(out)).returncode == 0
        assert compare(src, fmt, out, "qcow2") == 0
        # holes stay holes and allocated zeros are not written (as qemu-img convert does)
        data = sum(length for _, length in mapped_data(out, "qcow2"))
        assert DATA_BYTES <= data <= DATA_BYTES + MiB, kind


def _inv(vms: list) -> Any:
    from migrate.core.model import Inventory

    return Inventory(vms=vms)


def test_the_source_is_read_once(tmp_path: Path) -> None:
    """Bytes read from the source (asked over NBD, and what qemu-nbd read by /proc/PID/io)
    stay within its data plus a small overhead: no second pass (qemu-img compare read it
    all again)."""
    src, fmt = make_image(tmp_path, "vmdk", size=256 * MiB)
    qemu_io(str(src), "write -P 0x5a 100M 24M", fmt)  # more data than the metadata reads
    data = _source_data(src, fmt)
    (result,) = convert_disks(_inv([vm("once", [disk("vda", src, fmt)])]), [], tmp_path / "w")
    assert result.status == CONVERTED, result.error
    step = _step(tmp_path / "w", result.item)
    assert step.data["source_read"] <= data
    assert data <= step.data["source_read_server"] <= data + 4 * MiB


def test_allocated_zeros_are_read_but_not_written(tmp_path: Path) -> None:
    src = tmp_path / "thick.raw"
    with open(src, "wb") as fh:  # 16 MiB written as zeros (allocated), 2 MiB of data
        fh.write(bytes(16 * MiB))
        fh.write(b"\x77" * (2 * MiB))
        fh.truncate(64 * MiB)
    (result,) = convert_disks(_inv([vm("thick", [disk("vda", src, "raw")])]), [], tmp_path / "w")
    assert result.status == CONVERTED, result.error
    out = Path(result.output)
    assert sum(length for _, length in mapped_data(out, "qcow2")) == 2 * MiB
    assert out.stat().st_size < 3 * MiB
    assert compare(src, "raw", out, "qcow2") == 0
    # zero clusters skipped in the middle of a run: the file checksum is still its bytes
    step = _step(tmp_path / "w", result.item)
    assert step.checksum == digest.file_checksum(out)
    assert step.data["guest_checksum"] == digest.file_checksum(src)


@pytest.mark.parametrize("first_data", [3 * 64 * 1024, MiB, 2 * MiB + 5 * 64 * 1024])
@pytest.mark.parametrize("data_bytes", [0, 64 * 1024, MiB - 3 * 64 * 1024, 7 * MiB + 64 * 1024])
def test_file_tree_equals_the_file_read_back(tmp_path: Path, first_data: int,
                                             data_bytes: int) -> None:
    """FileTree (data hashed as written, the head at the end) gives the checksum of the
    whole file read back, wherever the data starts and ends against 1 MiB blocks."""
    rng = random.Random(first_data + data_bytes)
    head = os.urandom(first_data)
    data = os.urandom(data_bytes)
    tree = FileTree(first_data)
    pos = 0
    while pos < len(data):  # pieces of 64 KiB clusters, as the stream writes them
        n = min(rng.randrange(1, 40) * 64 * 1024, len(data) - pos)
        tree.data(data[pos:pos + n])
        pos += n
    path = tmp_path / "f"
    path.write_bytes(head + data)
    assert tree.finish(head) == digest.file_checksum(path)
    assert tree.end == first_data + data_bytes


def test_verify_full_still_runs_qemu_img_compare(tmp_path: Path, cli: Any) -> None:
    src, fmt = make_image(tmp_path, "vmdk")
    inv = inventory_file(tmp_path, [vm("full", [disk("vda", src, fmt)])])
    run = cli("-v", "convert", str(inv), "full", "--to", str(tmp_path / "w"), "--verify=full",
              ok=True)
    assert "qemu-img compare" in run.stderr and "qemu-nbd --read-only" in run.stderr
    step = _step(tmp_path / "w", _only_item(tmp_path / "w"))
    assert step.data["compare"] == "identical" and step.data["verify"] == "stream"
    # the default does not run it
    run = cli("-v", "convert", str(inv), "full", "--to", str(tmp_path / "w2"), ok=True)
    assert "qemu-img compare" not in run.stderr and "qemu-nbd --read-only" in run.stderr
    clash = cli("convert", str(inv), "full", "--to", str(tmp_path / "w3"), "--verify",
                "--no-verify")
    assert clash.exit_code == 2 and "--verify and --no-verify" in clash.stderr


def test_a_corrupted_output_is_caught_by_the_default_verification(
        tmp_path: Path, cli: Any, s3_server: SeaweedFS, s3_bucket: str,
        s3_env: dict[str, str]) -> None:
    src, fmt = make_image(tmp_path, "vmdk", size=64 * MiB)
    qemu_io(str(src), "write -P 0x3c 8M 16M", fmt)  # above one S3 part
    inv = inventory_file(tmp_path, [vm("bad", [disk("vda", src, fmt)])])
    work = tmp_path / "w"
    cli("convert", str(inv), "bad", "--to", str(work), ok=True)
    step = _step(work, _only_item(work))
    out = Path(step.output)
    with open(out, "r+b") as fh:  # one byte of guest data flips (size unchanged)
        fh.seek(out.stat().st_size - 4096)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    sent = cli("upload", str(inv), "--workdir", str(work), "--s3", f"s3://{s3_bucket}/c",
               "--endpoint-url", s3_server.endpoint)
    assert sent.exit_code != 0 and "does not match its recorded checksum" in sent.stderr
    client = s3_server.client()
    try:
        client.head_object(Bucket=s3_bucket, Key=f"c/{out.name}")
        raise AssertionError("a corrupted image was completed in S3")
    except botocore.exceptions.ClientError:
        pass
    # the conversion's rerun does not vouch for it either: it converts again
    again = cli("convert", str(inv), "bad", "--to", str(work), "-o", "json", ok=True)
    (row,) = json.loads(again.stdout)
    assert row["status"] == "converted" and "checksum" in (row.get("note") or "")
    fixed = _step(work, _only_item(work))
    assert fixed.checksum == step.checksum == digest.file_checksum(out)


def _only_item(work: Path) -> str:
    with Journal(journal_path(work)) as journal:
        (step,) = journal.steps(KIND_CONVERT)
        return step.item
