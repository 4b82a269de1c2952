"""``vmmove worker`` run directly against a real TLS-PSK NBD export (qemu-nbd)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from migrate.clients.nbd import file_guest_checksum, new_psk
from tests.conftest import qemu_img, qemu_io
from tests.sshd_support import free_port


@dataclass
class Export:
    url: str  # nbds://vmmove@127.0.0.1:PORT/disk
    psk_file: Path
    image: Path
    size: int


@pytest.fixture
def tls_export(tmp_path: Path) -> Iterator[Export]:
    image = tmp_path / "src.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(image), "48M")
    for offset, pattern in ((0, "0x41"), (20, "0x42"), (47, "0x43")):
        qemu_io(str(image), f"write -P {pattern} {offset}M 256k", "qcow2")
    keys = tmp_path / "psk"
    keys.mkdir(mode=0o700)
    (keys / "keys.psk").write_bytes(new_psk())
    port = free_port()
    pid = tmp_path / "qemu-nbd.pid"
    subprocess.run(["qemu-nbd", "--read-only", "--persistent", "--fork", f"--pid-file={pid}",
                    "--export-name=disk", "--bind=127.0.0.1", f"--port={port}",
                    f"--object=tls-creds-psk,id=tls0,endpoint=server,dir={keys}",
                    "--tls-creds=tls0", "--format=qcow2", str(image)], check=True)
    try:
        yield Export(f"nbds://vmmove@127.0.0.1:{port}/disk", keys / "keys.psk", image,
                     48 << 20)
    finally:
        os.kill(int(pid.read_text()), 15)
        time.sleep(0.1)


def test_worker_writes_disk_img_verified_and_sparse(cli, tmp_path: Path,
                                                    tls_export: Export) -> None:
    pvc = tmp_path / "pvc"
    pvc.mkdir()
    (pvc / "disk.img").write_bytes(b"")  # CDI's blank disk.img is replaced whole
    result_file = tmp_path / "result"
    out = cli("worker", "--source", tls_export.url, "--psk-file", str(tls_export.psk_file),
              "--dest", str(pvc / "disk.img"), "--size", str(tls_export.size), "--result",
              str(result_file), ok=True)
    expected = file_guest_checksum(tls_export.image, "qcow2")[0]
    result = json.loads(out.stdout)
    assert result == json.loads(result_file.read_text())
    assert result["checksum"] == expected == file_guest_checksum(pvc / "disk.img")[0]
    assert expected.startswith("xxh3-1m:")
    assert result["bytes"] == 48 << 20 == os.stat(pvc / "disk.img").st_size
    assert os.stat(pvc / "disk.img").st_blocks * 512 < 4 << 20  # holes stay holes
    assert sorted(p.name for p in pvc.iterdir()) == ["disk.img"]


def test_worker_failures_are_one_line_and_leave_nothing(cli, tmp_path: Path,
                                                        tls_export: Export) -> None:
    pvc = tmp_path / "pvc"
    pvc.mkdir()
    dest = str(pvc / "disk.img")
    wrong_key = tmp_path / "wrong.psk"
    wrong_key.write_bytes(new_psk())
    cases = {
        "missing PSK": (["--psk-file", str(tmp_path / "absent.psk")], "PSK file missing"),
        "wrong PSK": (["--psk-file", str(wrong_key)], "cannot open the export"),
        "plain NBD": (["--source", tls_export.url.replace("nbds:", "nbd:")],
                      "the worker reads only over TLS"),
        "wrong path": (["--dest", str(tmp_path / "nopvc" / "disk.img")],
                       "is the PVC mounted there?"),
        "wrong size": (["--size", str(tls_export.size - 512)], "the export holds"),
    }
    for name, (change, message) in cases.items():
        args = {"--source": tls_export.url, "--psk-file": str(tls_export.psk_file),
                "--dest": dest, "--size": str(tls_export.size)}
        args.update(dict(zip(change[::2], change[1::2])))
        result = cli("worker", *[x for kv in args.items() for x in kv])
        assert result.exit_code != 0, name
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (name, result.stderr)
        assert list(pvc.iterdir()) == [], name


def test_worker_writes_a_block_device(cli, tmp_path: Path, tls_export: Export) -> None:
    if os.geteuid() != 0:
        pytest.skip("loop devices need root")
    backing = tmp_path / "block.img"
    with open(backing, "wb") as fh:
        fh.truncate(64 << 20)  # a Block PVC is usually larger than the disk
    loop = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True,
                          text=True)
    if loop.returncode != 0:
        pytest.skip(f"no loop device: {loop.stderr.strip()}")
    device = loop.stdout.strip()
    try:
        out = cli("worker", "--source", tls_export.url, "--psk-file",
                  str(tls_export.psk_file), "--dest", device, "--size",
                  str(tls_export.size), ok=True)
        assert json.loads(out.stdout)["checksum"] == file_guest_checksum(tls_export.image,
                                                                         "qcow2")[0]
    finally:
        subprocess.run(["losetup", "-d", device], check=True)
    with open(backing, "rb") as fh:
        fh.seek(47 << 20)
        assert fh.read(4) == b"\x43" * 4


def test_worker_applies_a_warm_delta_in_place(cli, tmp_path: Path, tls_export: Export) -> None:
    """The warm round's worker: --extents writes only the listed runs (and zeros), in place;
    --compare writes only the MiB blocks that differ; --verify checks the whole volume."""
    from migrate.clients.nbd import file_guest_checksum as sha

    dest = tmp_path / "pvc" / "disk.img"
    dest.parent.mkdir()
    base = tmp_path / "base.raw"  # the volume after an earlier round: the source, then changed
    qemu_img("convert", "-q", "-f", "qcow2", "-O", "raw", str(tls_export.image), str(base))
    body = bytearray(base.read_bytes())
    body[20 << 20:(20 << 20) + 4096] = b"\xff" * 4096  # stale data, as before the last round
    body[30 << 20:(30 << 20) + 100] = b"\xee" * 100  # stale, where the source reads zeros
    dest.write_bytes(bytes(body))
    runs = tmp_path / "extents.json"
    runs.write_text(json.dumps({"data": [[20 << 20, 64 << 10]], "zero": [[30 << 20, 4096]]}))
    args = ["--source", tls_export.url, "--psk-file", str(tls_export.psk_file), "--dest",
            str(dest), "--size", str(tls_export.size)]
    out = json.loads(cli("worker", *args, "--extents", str(runs), "--verify", ok=True).stdout)
    assert out["changed"] == (64 << 10) + 4096
    assert out["checksum"] == sha(tls_export.image, "qcow2")[0] == sha(dest)[0]
    # compare mode: one differing block somewhere the extents would not say; only its
    # differing 64 KiB piece is written (the whole MiB before issue 15's hash work)
    with open(dest, "r+b") as fh:
        fh.seek(47 << 20)
        fh.write(b"\x00" * 10)
    out = json.loads(cli("worker", *args, "--compare", "--verify", ok=True).stdout)
    assert out["changed"] == 64 << 10 and out["checksum"] == sha(dest)[0]
    # the form asked (a source checksum recorded as sha256-1m by an older vmmove)
    out = json.loads(cli("worker", *args, "--compare", "--verify", "--checksum-form",
                         "sha256-1m", ok=True).stdout)
    assert out["changed"] == 0
    assert out["checksum"] == sha(tls_export.image, "qcow2", form="sha256-1m")[0] \
        == sha(dest, form="sha256-1m")[0] and out["checksum"].startswith("sha256-1m:")
    odd = cli("worker", *args, "--compare", "--checksum-form", "md5", ok=False)
    assert "--checksum-form 'md5'" in odd.stderr and len(odd.stderr.strip().splitlines()) == 1
    # bad input: one line, nothing written
    runs.write_text(json.dumps({"data": [[47 << 20, 8 << 20]]}))
    bad = cli("worker", *args, "--extents", str(runs), ok=False)
    assert "outside the disk" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    both = cli("worker", *args, "--extents", str(runs), "--compare", ok=False)
    assert "exactly one of --extents FILE and --compare" in both.stderr
