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

from migrate.clients.nbd import file_sha256, new_psk
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
    expected = file_sha256(tls_export.image, "qcow2")[0]
    result = json.loads(out.stdout)
    assert result == json.loads(result_file.read_text())
    assert result["checksum"] == expected == file_sha256(pvc / "disk.img")[0]
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
        assert json.loads(out.stdout)["checksum"] == file_sha256(tls_export.image, "qcow2")[0]
    finally:
        subprocess.run(["losetup", "-d", device], check=True)
    with open(backing, "rb") as fh:
        fh.seek(47 << 20)
        assert fh.read(4) == b"\x43" * 4
