"""Staging benchmark against a local SeaweedFS: vmmove against what users do by hand.

    python bench/upload.py            # 2 GiB image; 20 GiB sparse vmdk holding 2 GiB; 3 reps
    python bench/upload.py --quick    # 512 MiB; 4 GiB vmdk holding 512 MiB; 2 reps
    python bench/upload.py --only 3   # one section

1. One image: boto3 ``upload_file`` with a default TransferConfig (what ``aws s3 cp``
   does) against ``vmmove upload DIR``.  Both run as fresh processes (interpreter start
   counted on both sides).  Prints MiB/s, the ratio (target >= 1.1x) and vmmove's peak RSS
   (limit 256 MiB).
2. Staging one disk, source to a verified object, a sparse vmdk: by hand ``qemu-img convert
   -O qcow2`` then ``upload_file``, against ``vmmove convert`` + ``vmmove upload`` (the
   default: verified in the stream), the two overlapped (``vmmove upload --follow``
   started together with ``vmmove convert``: the parts go while the qcow2 is written),
   the same with ``--verify=full`` (qemu-img compare too), and ``vmmove upload --as-is``
   (the single-file vmdk goes as it is, unverified; CDI converts it).  Then a modelled
   link: by hand, sequential and overlapped again with both sides capped at
   :data:`LINK` (boto3 ``TransferConfig(max_bandwidth=…)``, what ``aws configure set
   default.s3.max_bandwidth`` sets; vmmove ``--max-bandwidth``), because a local SeaweedFS
   on a small machine makes the upload CPU-bound and hides the overlap (``--no-link``
   skips it).  Prints each run, medians, ratios (target >= 1.3x), the load average, bytes
   sent against the disk's allocated bytes and the bytes vmmove read from the source
   (qemu-nbd's /proc/PID/io).
3. Verification cost: bare ``qemu-img convert -O qcow2`` against vmmove's conversion through
   its API (no interpreter start), verified in the stream (default; target <= 1.3x the bare
   conversion), ``--verify=full`` and ``--no-verify``; bytes read from the source.
4. To a verified PVC with CDI's importer played, per format vmmove produces: the staging
   (as in 2), then the importer: the object downloaded to a scratch file and ``qemu-img
   convert -O raw`` into the PVC file (qcow2, vmdk: CDI's scratch path), or streamed into
   the PVC file with holes kept (raw: no scratch); then, for vmmove, the PVC's guest view
   checked against the checksum the conversion recorded (sha256-1m).

Medians of the repetitions, each run printed; the machine is shared, so expect noise.
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
from migrate.core.records import KIND_CONVERT, KIND_UPLOAD  # noqa: E402
from tests.s3_support import SeaweedFS, subprocess_env, wait_peak_rss  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
VMMOVE = [sys.executable, "-c", "from migrate.cli import run; run()"]
BASELINE = """
import sys, boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
endpoint, bucket, key, path = sys.argv[1:5]
rate = int(sys.argv[5]) if len(sys.argv) > 5 else None  # aws configure set s3.max_bandwidth
client = boto3.client("s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}))
client.upload_file(path, bucket, key, Config=TransferConfig(max_bandwidth=rate))
"""
#: The link modelled in section 2: both sides capped at this rate (bytes/s), so that the
#: local SeaweedFS (CPU-bound on a small machine) does not hide what overlap buys.
LINK = 100 * MiB


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
                    env: dict[str, str], rate: int | None = None) -> float:
    seconds, _ = run([sys.executable, "-c", BASELINE, server.endpoint, bucket, key, str(path),
                      *([str(rate)] if rate else [])], env)
    return seconds


def run_together(cmds: list[list[str]], env: dict[str, str]) -> float:
    """Start processes together, wait for all; seconds until the last ended."""
    start = time.perf_counter()
    procs = []
    for cmd in cmds:
        err = tempfile.TemporaryFile()
        procs.append((subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                       cwd=ROOT), err, cmd))
    for proc, err, cmd in procs:
        proc.wait()
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{cmd[3:5]} failed ({proc.returncode}): "
                             f"{err.read().decode(errors='replace')[-2000:]}")
        err.close()
    return time.perf_counter() - start


def sent_bytes(workdir: Path) -> int:
    with Journal(journal_path(workdir)) as journal:
        return sum(int(s.data.get("sent", 0)) for s in journal.steps(KIND_UPLOAD))


def clear(server: SeaweedFS, bucket: str) -> None:
    """Delete the bucket's objects, then have SeaweedFS reclaim their space (a deleted
    object's bytes stay in its volume until a vacuum: a long run would fill the disk and
    the server then answers InternalError)."""
    client = server.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=obj["Key"])
    subprocess.run([server.binary, "shell", f"-master=127.0.0.1:{server.ports['master']}"],
                   input="lock\nvolume.vacuum -garbageThreshold 0.01\nunlock\n", text=True,
                   capture_output=True, timeout=600, check=False)


def cpu_seconds(pid: int | None = None) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` (/proc/PID/stat), or,
    without it, by this process's waited-for children (getrusage)."""
    if pid is None:
        import resource

        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_image(server: SeaweedFS, bucket: str, tmp: Path, size: int, reps: int,
                env: dict[str, str]) -> None:
    folder = tmp / "one"
    folder.mkdir()
    image = folder / "image.raw"
    random_fill(image, size)
    print(f"\n1. one {size / GiB:.1f} GiB image (random data) to S3, {reps} repetitions")
    base, mine, rss = [], [], []
    cpu: dict[str, list[tuple[float, float]]] = {"baseline": [], "vmmove": []}
    assert server.proc is not None
    for rep in range(reps):
        order = ("baseline", "vmmove") if rep % 2 == 0 else ("vmmove", "baseline")
        for who in order:
            client0, server0 = cpu_seconds(), cpu_seconds(server.proc.pid)
            if who == "baseline":
                base.append(baseline_upload(server, bucket, f"base-{rep}/image.raw", image, env))
            else:
                seconds, peak = run([*VMMOVE, "upload", str(folder), "--s3",
                                     f"s3://{bucket}/vmmove-{rep}", "--endpoint-url",
                                     server.endpoint, "--redo"], env)
                mine.append(seconds)
                rss.append(peak)
            cpu[who].append((cpu_seconds() - client0, cpu_seconds(server.proc.pid) - server0))
            clear(server, bucket)
        print(f"   rep {rep + 1}: upload_file {size / MiB / base[-1]:6.1f} MiB/s   "
              f"vmmove {size / MiB / mine[-1]:6.1f} MiB/s   (peak RSS {rss[-1] / MiB:.0f} MiB)")
    b, m = statistics.median(base), statistics.median(mine)
    print(f"   median: boto3 upload_file {size / MiB / b:.1f} MiB/s, vmmove upload "
          f"{size / MiB / m:.1f} MiB/s, ratio {b / m:.2f}x (target >= 1.1x); "
          f"vmmove peak RSS {max(rss) / MiB:.0f} MiB (limit 256)")
    gib = size / GiB
    for who, name in (("baseline", "upload_file"), ("vmmove", "vmmove")):
        client = statistics.median(c for c, _ in cpu[who]) / gib
        weed = statistics.median(w for _, w in cpu[who]) / gib
        print(f"   CPU per GiB, {name:11s}: client {client:.2f} s, SeaweedFS {weed:.2f} s")
    print(f"   ({os.cpu_count()} cores: the server's CPU per GiB bounds both clients' rate)")
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


def source_read(workdir: Path) -> int | None:
    """Bytes qemu-nbd read from the source for the conversion (journal, /proc/PID/io)."""
    with Journal(journal_path(workdir)) as journal:
        steps = journal.steps(KIND_CONVERT)
    reads = [s.data.get("source_read_server") for s in steps]
    return sum(reads) if reads and None not in reads else None


def disk_inventory(tmp: Path, vmdk: Path, virtual: int) -> Path:
    allocated = os.stat(vmdk).st_blocks * 512
    vm = VM(name="bench", uuid="00000000-0000-4000-8000-00000000be0c",
            source=Source(SourceKind.VMX, str(tmp / "bench.vmx")),
            disks=[Disk(target="sda", bus="scsi", path=str(vmdk), format="vmdk",
                        virtual_size=virtual, allocated_size=allocated)])
    inventory = tmp / "inventory.yaml"
    save_inventory(Inventory(vms=[vm]), inventory)
    return inventory


STAGINGS = ("hand", "vmmove", "vmmove overlapped", "vmmove --verify=full", "as-is")
#: The link-modelled variant: both sides capped at :data:`LINK`.
CAPPED = ("hand capped", "vmmove capped", "vmmove overlapped capped")


def stage(who: str, rep: int, server: SeaweedFS, bucket: str, vmdk: Path, inventory: Path,
          work: Path, env: dict[str, str]) -> tuple[float, str, str, int, int | None]:
    """Stage the disk one way; (seconds, object key, object format, bytes sent, bytes read
    from the source or None)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    start = time.perf_counter()
    read = None
    rate = LINK if who.endswith(" capped") else None
    cap = ["--max-bandwidth", str(rate)] if rate else []
    if who.startswith("hand"):
        out = work / "disk.qcow2"
        subprocess.run(["qemu-img", "convert", "-f", "vmdk", "-O", "qcow2", str(vmdk),
                        str(out)], check=True)
        key = f"hand-{rep}/disk.qcow2"
        baseline_upload(server, bucket, key, out, env, rate)
        return time.perf_counter() - start, key, "qcow2", out.stat().st_size, None
    prefix = f"{who.removesuffix(' capped').split()[-1].strip('-=')}-{rep}"
    if "overlapped" in who:  # vmmove upload --follow started together with vmmove convert
        run_together([[*VMMOVE, "upload", str(inventory), "--workdir", str(work), "--follow",
                       "--s3", f"s3://{bucket}/{prefix}", "--endpoint-url", server.endpoint,
                       *cap],
                      [*VMMOVE, "convert", str(inventory), "bench", "--to", str(work)]], env)
        read, fmt = source_read(work), "qcow2"
    elif who == "as-is":
        run([*VMMOVE, "upload", str(inventory), "--workdir", str(work), "--as-is",
             "--s3", f"s3://{bucket}/{prefix}", "--endpoint-url", server.endpoint], env)
        fmt = "vmdk"
    else:
        extra = ["--verify=full"] if "full" in who else []
        extra += ["--format", "raw"] if "raw" in who else []
        run([*VMMOVE, "convert", str(inventory), "bench", "--to", str(work), *extra], env)
        run([*VMMOVE, "upload", str(inventory), "--workdir", str(work), "--s3",
             f"s3://{bucket}/{prefix}", "--endpoint-url", server.endpoint, *cap], env)
        read = source_read(work)
        fmt = "raw" if "raw" in who else "qcow2"
    seconds = time.perf_counter() - start
    with Journal(journal_path(work)) as journal:
        (step,) = journal.steps(KIND_UPLOAD)
    return seconds, str(step.data["key"]), fmt, sent_bytes(work), read


def bench_disk(server: SeaweedFS, bucket: str, tmp: Path, virtual: int, data: int, reps: int,
               env: dict[str, str], capped: bool = True) -> None:
    print(f"\n2. staging one disk: a {virtual / GiB:.0f} GiB sparse vmdk holding "
          f"{data / GiB:.1f} GiB, source to object, {reps} repetitions")
    vmdk = make_vmdk(tmp, virtual, data)
    allocated = os.stat(vmdk).st_blocks * 512
    inventory = disk_inventory(tmp, vmdk, virtual)
    ways = STAGINGS + (() if capped is False else CAPPED)
    times: dict[str, list[float]] = {k: [] for k in ways}
    sent: dict[str, int] = {}
    read: dict[str, int | None] = {}
    load = os.getloadavg()[0]
    for rep in range(reps):
        for who in ways[:: 1 if rep % 2 == 0 else -1]:
            seconds, _key, _fmt, sent[who], read[who] = stage(
                who, rep, server, bucket, vmdk, inventory, tmp / "work", env)
            times[who].append(seconds)
            clear(server, bucket)
        print("   rep {}: ".format(rep + 1)
              + "   ".join(f"{k} {v[-1]:.1f}s" for k, v in times.items()))
    for group, base in ((STAGINGS, "hand"), (CAPPED if capped is not False else (), "hand capped")):
        if not group:
            continue
        hand = statistics.median(times[base])
        print(f"   medians: {base} (qemu-img convert -O qcow2, then upload_file"
              + (f", max_bandwidth {LINK / MiB:.0f} MiB/s" if "capped" in base else "")
              + f") {hand:.1f}s")
        for who in group[1:]:
            t = statistics.median(times[who])
            print(f"            {who:<26} {t:.1f}s  ratio {hand / t:.2f}x (target >= 1.3x)")
    print(f"   load average (1 min) {load:.2f} before, {os.getloadavg()[0]:.2f} after; "
          f"{os.cpu_count()} cores")
    print(f"   bytes sent: disk allocated {allocated / MiB:.0f} MiB; "
          + ", ".join(f"{k} {v / MiB:.0f} MiB" for k, v in sent.items()))
    print("   bytes read from the source by qemu-nbd: "
          + ", ".join(f"{k} {v / MiB:.0f} MiB" for k, v in read.items() if v is not None)
          + " (--verify=full: qemu-img compare reads it all again besides)")
    shutil.rmtree(tmp / "work", ignore_errors=True)
    vmdk.unlink()


def bench_verify(tmp: Path, virtual: int, data: int, reps: int) -> None:
    """Section 3: vmmove's verified conversion against a bare qemu-img convert."""
    from converters.convert import ConvertOptions, convert_disks
    from migrate.core.serialize import load_inventory

    print(f"\n3. verification cost: a {virtual / GiB:.0f} GiB sparse vmdk holding "
          f"{data / GiB:.1f} GiB to qcow2, {reps + 1} repetitions (API, no interpreter start)")
    vmdk = make_vmdk(tmp, virtual, data)
    inventory = load_inventory(disk_inventory(tmp, vmdk, virtual))
    kinds = {"bare qemu-img convert": None,
             "bare, then fsync": None,
             "vmmove (verified in the stream)": ConvertOptions(),
             "vmmove --verify=full": ConvertOptions(verify_full=True),
             "vmmove --no-verify": ConvertOptions(verify=False)}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    read = None
    names = list(kinds)
    for rep in range(reps + 1):
        for name in names[:: 1 if rep % 2 == 0 else -1]:
            work = tmp / "verify"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            start = time.perf_counter()
            options = kinds[name]
            if options is None:
                subprocess.run(["qemu-img", "convert", "-f", "vmdk", "-O", "qcow2", str(vmdk),
                                str(work / "out.qcow2")], check=True)
                if "fsync" in name:  # as durable as vmmove's verified output
                    fd = os.open(work / "out.qcow2", os.O_RDONLY)
                    os.fsync(fd)
                    os.close(fd)
            else:
                options.redo = True
                (result,) = convert_disks(inventory, [], work, options)
                assert result.ok, result.error
            seconds = time.perf_counter() - start
            if name.startswith("vmmove (verified"):
                read = source_read(work)
            shutil.rmtree(work, ignore_errors=True)
            if rep == 0:
                continue  # the first round warms the page cache for all
            times[name].append(seconds)
        if rep:
            print(f"   rep {rep}: " + "   ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()))
    bare = statistics.median(times[names[0]])
    durable = statistics.median(times[names[1]])
    print(f"   medians: bare qemu-img convert {bare:.2f}s; then fsync {durable:.2f}s (qemu-img "
          "convert writes with cache=unsafe and never flushes; vmmove fsyncs a verified output "
          "before its journal says done)")
    for name in names[2:]:
        t = statistics.median(times[name])
        print(f"            {name:<32} {t:.2f}s  = {t / bare:.2f}x the bare conversion, "
              f"{t / durable:.2f}x made durable" + (" (target <= 1.3x)" if "stream" in name else ""))
    allocated = os.stat(vmdk).st_blocks * 512
    print(f"   source: {allocated / MiB:.0f} MiB allocated; read by vmmove (qemu-nbd, "
          f"/proc/PID/io) {read / MiB if read else 0:.0f} MiB = {read / allocated if read else 0:.2f}x; "
          "qemu-img compare (--verify=full) reads it once more")
    vmdk.unlink()


def import_like_cdi(server: SeaweedFS, bucket: str, key: str, fmt: str, pvc: Path,
                    scratch: Path) -> None:
    """What CDI's importer does with an S3 object: raw streams into the PVC (holes kept);
    qcow2/vmdk go to a scratch volume first, then ``qemu-img convert -O raw`` into the PVC."""
    client = server.client()
    if fmt == "raw":
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        zero = bytes(1 << 16)
        with open(pvc, "wb") as fh:
            pos = 0
            for chunk in body.iter_chunks(8 * MiB):
                for at in range(0, len(chunk), 1 << 16):
                    piece = chunk[at:at + (1 << 16)]
                    if piece != zero[:len(piece)]:
                        fh.seek(pos + at)
                        fh.write(piece)
                pos += len(chunk)
            fh.truncate(pos)
        return
    client.download_file(bucket, key, str(scratch))
    subprocess.run(["qemu-img", "convert", "-f", fmt, "-O", "raw", str(scratch), str(pvc)],
                   check=True)
    scratch.unlink()


def bench_pvc(server: SeaweedFS, bucket: str, tmp: Path, virtual: int, data: int, reps: int,
              env: dict[str, str]) -> None:
    """Section 4: end to end, source to a verified PVC, CDI's importer played."""
    from migrate.clients.nbd import file_guest_checksum

    print(f"\n4. to a verified PVC, CDI's importer played: a {virtual / GiB:.0f} GiB sparse "
          f"vmdk holding {data / GiB:.1f} GiB, {reps} repetitions")
    vmdk = make_vmdk(tmp, virtual, data)
    inventory = disk_inventory(tmp, vmdk, virtual)
    ways = ("hand", "vmmove", "vmmove overlapped", "vmmove --format raw", "as-is")
    times: dict[str, list[tuple[float, float, float]]] = {k: [] for k in ways}
    for rep in range(reps):
        for who in ways[:: 1 if rep % 2 == 0 else -1]:
            work = tmp / "work"
            staged, key, fmt, _sent, _read = stage(who, rep, server, bucket, vmdk, inventory,
                                                   work, env)
            pvc = tmp / "pvc.raw"
            start = time.perf_counter()
            import_like_cdi(server, bucket, key, fmt, pvc, tmp / "scratch")
            imported = time.perf_counter() - start
            start = time.perf_counter()
            if who.startswith("vmmove"):
                with Journal(journal_path(work)) as journal:
                    (step,) = journal.steps(KIND_CONVERT)
                want = step.data.get("guest_checksum") or \
                    file_guest_checksum(step.output, fmt)[0]
                got = file_guest_checksum(pvc, "raw", virtual)[0]
                if got != want:
                    raise SystemExit(f"{who}: the PVC differs from the source ({got} != {want})")
            checked = time.perf_counter() - start
            times[who].append((staged, imported, checked))
            pvc.unlink()
            shutil.rmtree(work, ignore_errors=True)
            clear(server, bucket)
        print(f"   rep {rep + 1}: " + "   ".join(f"{k} {sum(v[-1]):.1f}s" for k, v in times.items()))
    hand = statistics.median(sum(t) for t in times["hand"])
    print(f"   medians (staging + import + PVC check): by hand {hand:.1f}s "
          f"({statistics.median(t[0] for t in times['hand']):.1f} + "
          f"{statistics.median(t[1] for t in times['hand']):.1f}, unverified)")
    for who in ways[1:]:
        parts = [statistics.median(t[i] for t in times[who]) for i in range(3)]
        total = statistics.median(sum(t) for t in times[who])
        note = "unverified: no checksum of the guest data" if who == "as-is" else "verified"
        print(f"            {who:<22} {total:.1f}s ({parts[0]:.1f} + {parts[1]:.1f} + "
              f"{parts[2]:.1f}) ratio {hand / total:.2f}x, {note}")
    vmdk.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 repetitions")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--only", choices=["1", "2", "3", "4"], default=None)
    parser.add_argument("--no-link", action="store_true",
                        help="section 2 without the link-modelled (capped) runs")
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
                bench_disk(server, bucket, tmp, virtual, data, reps, env,
                           capped=not args.no_link)
            if args.only in (None, "3"):
                bench_verify(tmp, virtual, data, reps)
            if args.only in (None, "4"):
                bench_pvc(server, bucket, tmp, virtual, data, reps, env)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
