"""The qemu-img wrapper against real qemu-img on images made here."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from converters import qemuimg
from tests.convert_support import (
    DATA_BYTES,
    MiB,
    PATTERN,
    VIRTUAL,
    assert_pattern,
    make_image,
    mapped_data,
)


def test_progress_parser_reads_carriage_return_reports_split_anywhere() -> None:
    stream = b"    (0.00/100%)\r    (1.56/100%)\r    (50.00/100%)\r    (100.00/100%)\r\n"
    # Deliver it in awkward 3-byte pieces: reports straddle reads.
    src = io.BytesIO(stream)
    seen: list[float] = []
    qemuimg.parse_progress(lambda: src.read(3), seen.append)
    assert seen == pytest.approx([0.0, 0.0156, 0.5, 1.0])


def test_measure_counts_allocated_data_not_virtual_size(tmp_path: Path) -> None:
    image, fmt = make_image(tmp_path, "vmdk")
    m = qemuimg.measure(str(image), fmt, "qcow2")
    assert DATA_BYTES <= m.required < DATA_BYTES + 2 * MiB
    assert m.fully_allocated >= VIRTUAL


def test_convert_reports_progress_and_flattens(tmp_path: Path) -> None:
    image, fmt = make_image(tmp_path, "qcow2-chain")
    out = tmp_path / "out.qcow2"
    seen: list[float] = []
    qemuimg.convert(str(image), fmt, str(out), "qcow2", on_progress=seen.append)
    assert seen and seen[-1] == 1.0 and seen == sorted(seen)
    info = qemuimg.compare(str(image), fmt, str(out), "qcow2")
    assert info.identical
    assert_pattern(out, "qcow2")
    # Flattened: the output has no backing file, and holds the data of both layers.
    assert "backing" not in qemuimg._run(["info", "-f", "qcow2", str(out)], str(out))
    assert sum(length for _, length in mapped_data(out, "qcow2")) == DATA_BYTES


def test_compare_tells_identical_different_and_error(tmp_path: Path) -> None:
    a, _ = make_image(tmp_path, "qcow2", "a")
    b, _ = make_image(tmp_path, "qcow2", "b", pattern=PATTERN[:2])
    assert qemuimg.compare(str(a), "qcow2", str(a), "qcow2").identical
    diff = qemuimg.compare(str(a), "qcow2", str(b), "qcow2")
    assert not diff.identical and "mismatch" in diff.message.lower()
    with pytest.raises(qemuimg.QemuImgError, match="nope.qcow2"):
        qemuimg.compare(str(tmp_path / "nope.qcow2"), "qcow2", str(a), "qcow2")


def test_map_shows_holes(tmp_path: Path) -> None:
    image, fmt = make_image(tmp_path, "vdi")
    extents = qemuimg.image_map(str(image), fmt)
    # VDI allocates whole 1 MiB blocks: the 512 KiB run occupies one block.
    assert DATA_BYTES <= qemuimg.data_bytes(extents) <= DATA_BYTES + MiB
    assert sum(e.length for e in extents) == VIRTUAL
    assert any(not e.data for e in extents)


def test_errors_name_the_image_and_say_why(tmp_path: Path) -> None:
    junk = tmp_path / "junk.qcow2"
    junk.write_bytes(b"QFI\xfb" + b"\xff" * 508)  # a qcow2 magic and a broken header
    with pytest.raises(qemuimg.QemuImgError, match=r"junk\.qcow2: "):
        qemuimg.measure(str(junk), "qcow2")
    with pytest.raises(qemuimg.QemuImgError, match="compression needs qcow2"):
        qemuimg.convert_args("a", "raw", "b", "raw", compress="zstd")


def test_convert_never_goes_through_a_shell(tmp_path: Path) -> None:
    # A file name full of shell syntax is just a file name.
    image, fmt = make_image(tmp_path, "raw", "x; touch pwned $(id)")
    out = tmp_path / "o ut`.raw"
    qemuimg.convert(str(image), fmt, str(out), "raw")
    assert qemuimg.compare(str(image), fmt, str(out), "raw").identical
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_canceller_stops_a_running_conversion(tmp_path: Path) -> None:
    image, fmt = make_image(tmp_path, "qcow2", size=VIRTUAL)
    canceller = qemuimg.Canceller()
    canceller.cancel()  # cancelled before start: the child is killed as soon as it runs
    with pytest.raises(qemuimg.QemuImgError, match="stopped"):
        qemuimg.convert(str(image), fmt, str(tmp_path / "o.qcow2"), "qcow2",
                        canceller=canceller)
