"""SIGKILL in the middle of ``vmmove convert --batch``, then the same command again."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from migrate.core.workdir import journal_path
from tests.convert_support import MiB, compare, disk, inventory_file, make_image, vm

DISKS = 6


def journal_rows(work: Path) -> dict[str, tuple[str, float | None]]:
    path = journal_path(work)
    if not path.exists():
        return {}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute("SELECT item, status, finished FROM steps WHERE kind='convert'")
        return {item: (status, finished) for item, status, finished in rows.fetchall()}
    except sqlite3.OperationalError:  # schema not created yet
        return {}
    finally:
        conn.close()


def qemu_img_children(work: Path) -> list[int]:
    """qemu-img processes still working on files in ``work``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"qemu-img") and any(
                str(work).encode() in arg for arg in cmdline):
            pids.append(int(entry.name))
    return pids


@pytest.mark.slow
def test_sigkill_mid_batch_then_rerun_finishes_without_redoing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    vms, images = [], []
    for i in range(DISKS):
        path, fmt = make_image(src, "vmdk", f"d{i}", size=128 * MiB,
                               pattern=[(0x10 + i, 0, 24 * MiB), (0x60 + i, 100 * MiB, 8 * MiB)])
        images.append(path)
        vms.append(vm(f"vm{i}", [disk("vda", path, fmt)]))
    inv = inventory_file(tmp_path, vms)
    work = tmp_path / "work"
    command = [sys.executable, "-c", "from migrate.cli import run; run()", "convert", str(inv),
               "--batch", "--jobs", "1", "--to", str(work), "-o", "json"]

    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=Path(__file__).resolve().parents[1])
    deadline = time.monotonic() + 60
    try:
        while True:
            assert proc.poll() is None, "the batch finished before it could be killed"
            assert time.monotonic() < deadline, "no disk finished within 60 s"
            rows = journal_rows(work)
            done = [i for i, (status, _) in rows.items() if status == "done"]
            if done and any(status == "running" for status, _ in rows.values()):
                break
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    before = journal_rows(work)
    finished_before = {i: f for i, (status, f) in before.items() if status == "done"}
    assert 1 <= len(finished_before) < DISKS
    # qemu-img children die with vmmove (parent-death signal): nothing writes on.
    deadline = time.monotonic() + 5
    while qemu_img_children(work):
        assert time.monotonic() < deadline, "qemu-img outlived the killed vmmove"
        time.sleep(0.05)

    rerun = subprocess.run(command, capture_output=True, text=True,
                           cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    after = journal_rows(work)
    assert all(status == "done" for status, _ in after.values()) and len(after) == DISKS
    # Disks finished before the kill were not converted again.
    for item, finished in finished_before.items():
        assert after[item][1] == finished, item
    for i, image in enumerate(images):
        assert compare(image, "vmdk", work / f"vm{i}-vda.qcow2", "qcow2") == 0
    assert not [p.name for p in work.iterdir() if p.name.endswith(".part")]
    assert '"status": "skipped"' in rerun.stdout


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    vms = []
    for i in range(3):
        path, fmt = make_image(src, "vmdk", f"d{i}", size=128 * MiB,
                               pattern=[(0x20 + i, 0, 32 * MiB)])
        vms.append(vm(f"vm{i}", [disk("vda", path, fmt)]))
    inv = inventory_file(tmp_path, vms)
    work = tmp_path / "work"
    command = [sys.executable, "-c", "from migrate.cli import run; run()", "convert", str(inv),
               "--batch", "--jobs", "1", "--to", str(work), "--compress"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    deadline = time.monotonic() + 60
    while not any(status == "running" for status, _ in journal_rows(work).values()):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted; rerun the same command to resume" in stderr
    rows = journal_rows(work)
    assert not any(status == "running" for status, _ in rows.values()), rows
    assert not [p.name for p in work.iterdir() if p.name.endswith(".part")]
    assert not qemu_img_children(work)
