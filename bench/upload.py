"""Upload speed against a local SeaweedFS: vmmove against what users do by hand.

    python bench/upload.py            # 2 GiB image; 20 GiB sparse vmdk holding 2 GiB; 3 reps
    python bench/upload.py --quick    # 512 MiB; 4 GiB vmdk holding 512 MiB; 2 reps

1. One image: boto3 ``upload_file`` with a default TransferConfig (what ``aws s3 cp``
   does) against ``vmmove upload DIR``.  Both run as fresh processes (interpreter start
   counted on both sides).  Prints MiB/s, the ratio (target ≥ 1.0x) and vmmove's peak RSS.
2. Staging one disk, source to object, a sparse vmdk: by hand ``qemu-img convert -O qcow2``
   then ``upload_file``, against vmmove: ``vmmove convert`` + ``vmmove upload`` (verified
   conversion, the default), and ``vmmove upload --as-is`` (the single-file vmdk goes as it
   is; CDI converts it on import).  Prints times, ratios (target ≥ 1.2x) and bytes sent
   against the disk's allocated bytes.

Medians of the repetitions; the machine is shared, so expect noise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from migrate.core.model import VM, Disk, Inventory, Source, SourceKind  # noqa: E402
from migrate.core.serialize import save_inventory  # noqa: E402
from migrate.core.journal import Journal  # noqa: E402
from migrate.core.workdir import journal_path  # noqa: E402
from migrate.core.records import KIND_UPLOAD
from tests.s3_support import SeaweedFS, subprocess_env, wait_peak_rss  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
VMMOVE = [sys.executable, "-c", "from migrate.cli import run; run()"]
BASELINE = """
import sys, boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
endpoint, bucket, key, path = sys.argv[1:5]
client = boto3.client("s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}))
client.upload_file(path, bucket, key, Config=TransferConfig())
"""


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Run a process; (seconds, its own peak RSS in bytes: VmHWM, see wait_peak_rss)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err_file:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err_file,
                                cwd=ROOT)
        peak = wait_peak_rss(proc, timeout=3600)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            err_file.seek(0)
            err = err_file.read().decode(errors="replace")
            raise SystemExit(f"{cmd[:4]} failed ({proc.returncode}): {err[-2000:]}")
    return seconds, peak


def random_fill(path: Path, size: int, offset: int = 0) -> None:
    with open(path, "r+b" if path.exists() else "wb") as fh:
        fh.seek(offset)
        left = size
        while left:
            n = min(64 * MiB, left)
            fh.write(os.urandom(n))
            left -= n


def baseline_upload(server: SeaweedFS, bucket: str, key: str, path: Path,
                    env: dict[str, str]) -> float:
    seconds, _ = run([sys.executable, "-c", BASELINE, server.endpoint, bucket, key, str(path)],
                     env)
    return seconds


def sent_bytes(workdir: Path) -> int:
    with Journal(journal_path(workdir)) as journal:
        return sum(int(s.data.get("sent", 0)) for s in journal.steps(KIND_UPLOAD))


def clear(server: SeaweedFS, bucket: str) -> None:
    client = server.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=obj["Key"])


def bench_image(server: SeaweedFS, bucket: str, tmp: Path, size: int, reps: int,
                env: dict[str, str]) -> None:
    folder = tmp / "one"
    folder.mkdir()
    image = folder / "image.raw"
    random_fill(image, size)
    print(f"\n1. one {size / GiB:.1f} GiB image (random data) to S3, {reps} repetitions")
    base, mine, rss = [], [], []
    for rep in range(reps):
        order = ("baseline", "vmmove") if rep % 2 == 0 else ("vmmove", "baseline")
        for who in order:
            if who == "baseline":
                base.append(baseline_upload(server, bucket, f"base-{rep}/image.raw", image, env))
            else:
                seconds, peak = run([*VMMOVE, "upload", str(folder), "--s3",
                                     f"s3://{bucket}/vmmove-{rep}", "--endpoint-url",
                                     server.endpoint, "--redo"], env)
                mine.append(seconds)
                rss.append(peak)
            clear(server, bucket)
        print(f"   rep {rep + 1}: upload_file {size / MiB / base[-1]:6.1f} MiB/s   "
              f"vmmove {size / MiB / mine[-1]:6.1f} MiB/s   (peak RSS {rss[-1] / MiB:.0f} MiB)")
    b, m = statistics.median(base), statistics.median(mine)
    print(f"   median: boto3 upload_file {size / MiB / b:.1f} MiB/s, vmmove upload "
          f"{size / MiB / m:.1f} MiB/s, ratio {b / m:.2f}x (target >= 1.0x); "
          f"vmmove peak RSS {max(rss) / MiB:.0f} MiB (limit 256)")
    image.unlink()


def make_vmdk(tmp: Path, virtual: int, data: int) -> Path:
    raw = tmp / "src.raw"
    with open(raw, "wb") as fh:
        fh.truncate(virtual)
    chunks = 16
    step = virtual // chunks
    for i in range(chunks):
        random_fill(raw, data // chunks, i * step)
    vmdk = tmp / "src.vmdk"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", str(raw), str(vmdk)],
                   check=True)
    raw.unlink()
    return vmdk


def bench_disk(server: SeaweedFS, bucket: str, tmp: Path, virtual: int, data: int, reps: int,
               env: dict[str, str]) -> None:
    print(f"\n2. staging one disk: a {virtual / GiB:.0f} GiB sparse vmdk holding "
          f"{data / GiB:.1f} GiB, source to object, {reps} repetitions")
    vmdk = make_vmdk(tmp, virtual, data)
    allocated = os.stat(vmdk).st_blocks * 512
    vm = VM(name="bench", uuid="00000000-0000-4000-8000-00000000be0c",
            source=Source(SourceKind.VMX, str(tmp / "bench.vmx")),
            disks=[Disk(target="sda", bus="scsi", path=str(vmdk), format="vmdk",
                        virtual_size=virtual, allocated_size=allocated)])
    inventory = tmp / "inventory.yaml"
    save_inventory(Inventory(vms=[vm]), inventory)
    times: dict[str, list[float]] = {"hand": [], "convert+upload": [], "as-is": []}
    sent: dict[str, int] = {}
    for rep in range(reps):
        for who in ("hand", "convert+upload", "as-is")[:: 1 if rep % 2 == 0 else -1]:
            work = tmp / f"work-{who}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            start = time.perf_counter()
            if who == "hand":
                out = work / "disk.qcow2"
                subprocess.run(["qemu-img", "convert", "-f", "vmdk", "-O", "qcow2", str(vmdk),
                                str(out)], check=True)
                baseline_upload(server, bucket, f"hand-{rep}/disk.qcow2", out, env)
                sent[who] = out.stat().st_size
            elif who == "convert+upload":
                run([*VMMOVE, "convert", str(inventory), "bench", "--to", str(work)], env)
                run([*VMMOVE, "upload", str(inventory), "--workdir", str(work), "--s3",
                     f"s3://{bucket}/vm-{rep}", "--endpoint-url", server.endpoint], env)
                sent[who] = sent_bytes(work)
            else:
                run([*VMMOVE, "upload", str(inventory), "--workdir", str(work), "--as-is",
                     "--s3", f"s3://{bucket}/asis-{rep}", "--endpoint-url", server.endpoint],
                    env)
                sent[who] = sent_bytes(work)
            times[who].append(time.perf_counter() - start)
            shutil.rmtree(work, ignore_errors=True)
            clear(server, bucket)
        print("   rep {}: ".format(rep + 1)
              + "   ".join(f"{k} {v[-1]:.1f}s" for k, v in times.items()))
    hand = statistics.median(times["hand"])
    print(f"   medians: by hand (qemu-img convert -O qcow2, then upload_file) {hand:.1f}s")
    for who in ("convert+upload", "as-is"):
        t = statistics.median(times[who])
        print(f"            vmmove {who:<15} {t:.1f}s  ratio {hand / t:.2f}x (target >= 1.2x)")
    print(f"   bytes sent: disk allocated {allocated / MiB:.0f} MiB; "
          + ", ".join(f"{k} {v / MiB:.0f} MiB" for k, v in sent.items()))
    vmdk.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 repetitions")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--only", choices=["1", "2"], default=None)
    args = parser.parse_args()
    reps = args.reps or (2 if args.quick else 3)
    size = 512 * MiB if args.quick else 2 * GiB
    virtual, data = (4 * GiB, 512 * MiB) if args.quick else (20 * GiB, 2 * GiB)
    with tempfile.TemporaryDirectory(prefix="vmmove-bench-") as name:
        tmp = Path(name)
        server = SeaweedFS(tmp / "s3")
        server.start()
        try:
            env = subprocess_env(server.env(tmp))
            bucket = server.new_bucket()
            print(f"SeaweedFS {server.endpoint}; {os.cpu_count()} cores")
            if args.only in (None, "1"):
                bench_image(server, bucket, tmp, size, reps, env)
            if args.only in (None, "2"):
                bench_disk(server, bucket, tmp, virtual, data, reps, env)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
