"""Benchmark: warm migration's final sync against a full copy (docs/warm-migration.md).

    python bench/warm.py            # a 3 GiB disk holding 2 GiB of data
    python bench/warm.py --quick    # a 384 MiB disk holding 256 MiB

For one disk, vmmove's own code paths (:mod:`converters.delta`, :mod:`migrate.clients`):

* **full copy**: the disk exported by ``qemu-nbd --read-only`` and every data extent
  written into a raw target (what round 1 of a warm migration, or a cold copy, moves);
* **bitmap final sync** (qcow2): after 1 %, 5 % and 20 % of the data changed (64 KiB
  writes at random offsets, recorded by a persistent dirty bitmap as a checkpoint's is),
  the disk exported with ``qemu-nbd -B`` and only the dirty extents copied — exactly the
  cutover's final delta of a stopped source;
* **hash final sync** (raw): the same changes on a raw copy of the disk; the whole disk
  read and hashed per MiB, only changed blocks written.

Targets (issue 15): after a 1 % change the bitmap sync takes ≤ 5 % of the full copy's
time, the hash sync ≤ 35 %.  Every target is checked equal to its source afterwards
(``qemu-img compare``).  Images live in bench/.data (gitignored) and are removed after.
The warm-vs-cold cutover downtime of the TCG guest is measured by the end-to-end tests
(``tests/test_warm_e2e.py`` prints it; ``tests/test_cutover_e2e.py`` the cold one).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from converters import delta  # noqa: E402
from migrate.clients.checkpoint import serve_stopped  # noqa: E402
from migrate.clients.nbdwire import (  # noqa: E402
    BASE_ALLOCATION,
    STATE_DIRTY,
    STATE_ZERO,
    NbdClient,
    dirty_context,
)

DATA = ROOT / "bench" / ".data"
PIECE = 64 << 10


def run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def fill(image: str, fmt: str, data: int) -> None:
    """``data`` bytes of non-zero data from offset 0 (a pattern per 64 MiB)."""
    step = 64 << 20
    cmds = []
    for i, off in enumerate(range(0, data, step)):
        cmds += ["-c", f"write -P {0x11 + i % 200} {off} {min(step, data - off)}"]
    run("qemu-io", "-f", fmt, *cmds, image)


def change(images: list[tuple[str, str]], data: int, fraction: float, seed: int) -> int:
    """Write ``fraction`` of ``data`` as 64 KiB pieces at random offsets of each image."""
    rng = random.Random(seed)
    count = max(1, int(data * fraction) // PIECE)
    offsets = sorted(rng.sample(range(data // PIECE), count))
    cmds = []
    for off in offsets:
        cmds += ["-c", f"write -P {0xa0 + seed % 50} {off * PIECE} {PIECE}"]
    for image, fmt in images:
        for i in range(0, len(cmds), 2000):
            run("qemu-io", "-f", fmt, *cmds[i:i + 2000], image)
    return count * PIECE


def full_copy(image: str, fmt: str, target: Path, folder: Path) -> float:
    t0 = time.monotonic()
    with serve_stopped(image, fmt, folder, "full") as ex, \
            NbdClient(ex.socket, ex.export, (BASE_ALLOCATION,)) as src:
        alloc = src.block_status(BASE_ALLOCATION)
        fd = delta.open_target(target, src.size, fresh=True)
        try:
            delta.copy_extents(src, [(e.offset, e.length) for e in alloc
                                     if not e.flags & STATE_ZERO], fd)
            os.fsync(fd)
        finally:
            os.close(fd)
    return time.monotonic() - t0


def bitmap_sync(image: str, bitmap: str, target: Path, folder: Path) -> tuple[float, int]:
    t0 = time.monotonic()
    ctx = dirty_context(bitmap)
    with serve_stopped(image, "qcow2", folder, "delta", bitmap) as ex, \
            NbdClient(ex.socket, ex.export, (ctx,)) as src:
        dirty = [(e.offset, e.length) for e in src.block_status(ctx) if e.flags & STATE_DIRTY]
        fd = delta.open_target(target, src.size)
        try:
            stats = delta.copy_extents(src, dirty, fd)
            os.fsync(fd)
        finally:
            os.close(fd)
    return time.monotonic() - t0, stats.changed


def hash_sync(image: str, target: Path, _folder: Path,
              old: list[bytes] | None) -> tuple[float, int, list[bytes]]:
    t0 = time.monotonic()
    with delta.FileReader(image) as src:  # a stopped raw disk here: read directly
        holes = src.holes()
        fd = delta.open_target(target, src.size, fresh=old is None)
        try:
            digests, stats = delta.hash_sync(src, src.size, old, fd, holes, old is None)
            os.fsync(fd)
        finally:
            os.close(fd)
    return time.monotonic() - t0, stats.changed, digests


def same(a: str, fmt: str, b: Path) -> bool:
    return subprocess.run(["qemu-img", "compare", "-q", "-f", fmt, "-F", "raw", a, str(b)],
                          capture_output=True).returncode == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    size, data = ((384 << 20, 256 << 20) if args.quick else (3 << 30, 2 << 30))
    work = DATA / f"warm-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    folder = work / "nbd"
    try:
        qcow, raw = str(work / "disk.qcow2"), str(work / "disk.raw")
        run("qemu-img", "create", "-f", "qcow2", qcow, str(size))
        fill(qcow, "qcow2", data)
        run("qemu-img", "convert", "-f", "qcow2", "-O", "raw", qcow, raw)
        tq, tr = work / "target-q.img", work / "target-r.img"
        full_copy(qcow, "qcow2", tq, folder)  # warm the page cache
        full = min(full_copy(qcow, "qcow2", tq, folder) for _ in range(2))
        _t, _n, digests = hash_sync(raw, tr, folder, None)
        print(f"disk: {size >> 20} MiB holding {data >> 20} MiB; full copy {full:.2f}s "
              f"({data / full / 2**20:.0f} MiB/s)")
        print(f"{'change':>7} {'bytes':>10} {'bitmap s':>9} {'bitmap %':>9} {'hash s':>8} "
              f"{'hash %':>7}")
        ok = True
        for i, fraction in enumerate((0.01, 0.05, 0.20)):
            bitmap = f"vmmove-bench-{i}"
            run("qemu-img", "bitmap", "--add", "--enable", "-f", "qcow2", qcow, bitmap)
            changed = change([(qcow, "qcow2"), (raw, "raw")], data, fraction, i + 1)
            tb, sent = bitmap_sync(qcow, bitmap, tq, folder)
            th, _hs, digests = hash_sync(raw, tr, folder, digests)
            run("qemu-img", "bitmap", "--remove", "-f", "qcow2", qcow, bitmap)
            good = same(qcow, "qcow2", tq) and same(raw, "raw", tr)
            ok = ok and good and sent >= changed
            rb, rh = 100 * tb / full, 100 * th / full
            print(f"{fraction:>7.0%} {changed:>10} {tb:>9.2f} {rb:>8.1f}% {th:>8.2f} "
                  f"{rh:>6.1f}%" + ("" if good else "  TARGET DIFFERS"))
            if fraction == 0.01:
                print(f"  targets after 1 %: bitmap {rb:.1f}% (≤ 5 %): "
                      f"{'met' if rb <= 5 else 'MISSED'}; hash {rh:.1f}% (≤ 35 %): "
                      f"{'met' if rh <= 35 else 'MISSED'}")
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
