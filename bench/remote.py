"""Remote hosts (issue 14): copying a disk from a ``qemu+ssh://`` host, and direct mode.

    python bench/remote.py            # a 4 GiB qcow2 disk holding 2 GiB of data; 2 reps
    python bench/remote.py --quick    # 1 GiB disk holding 256 MiB; 1 rep

Needs root (sshd on loopback, libvirtd, qemu-nbd); the "host" is this machine reached
through a private sshd on 127.0.0.1, so the wire is loopback and SSH's cipher is the cost.

1. Remote copy of a shut-off VM's disk, operator machine in the path:
   * vmmove: ``convert`` of the VM scanned through ``qemu+ssh://`` (qemu-nbd on the host,
     the socket forwarded over SSH, ``qemu-img convert`` to qcow2), with and without the
     guest-view checksums on both ends (``--no-verify``);
   * by hand: ``ssh host cat disk.qcow2 > copy.qcow2`` (the whole file, holes included);
   * local: ``qemu-img convert`` of the same file on the host itself (no SSH).
   Prints seconds, MiB/s of guest data, ratios, and the bytes that crossed SSH (sshd's
   write counters) against the image's allocated bytes.
2. Direct mode against the S3 path, "PVC holds the verified disk", every pass counted:
   * direct: ``qemu-nbd`` with TLS-PSK started on the host over SSH + ``vmmove worker``
     (nbdcopy into ``disk.img``, guest-view sha256 of export and PVC);
   * S3: vmmove convert (as in 1, verified) + ``vmmove upload`` to SeaweedFS + what CDI's
     importer does (download the object, ``qemu-img convert -O raw`` into ``disk.img``).

Medians of the repetitions; the machine is shared, so expect noise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import libvirt  # noqa: E402

from migrate.clients import nbd, ssh  # noqa: E402
from migrate.worker import run_worker  # noqa: E402
from tests.libvirtd_support import DomainSpec  # noqa: E402
from tests.s3_support import SeaweedFS, subprocess_env  # noqa: E402
from tests.sshd_support import running_sshd  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
VMMOVE = [sys.executable, "-c", "from migrate.cli import run; run()"]


def sh(cmd: list[str], env: dict[str, str] | None = None, **kw) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed: {proc.stderr[-1500:]}")
    return time.perf_counter() - start


class SshdBytes:
    """Bytes sshd's session processes wrote (to sockets: what went over the wire)."""

    def __init__(self, listener: int) -> None:
        self.listener = listener
        self.seen: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        out = subprocess.run(["pgrep", "-P", str(self.listener)], capture_output=True,
                             text=True).stdout.split()
        for pid in map(int, out):
            try:
                text = Path(f"/proc/{pid}/io").read_text()
            except OSError:
                continue
            wchar = int(next(ln.split()[1] for ln in text.splitlines()
                             if ln.startswith("wchar:")))
            self.seen[pid] = max(self.seen.get(pid, 0), wchar)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self._sample()

    def __enter__(self) -> SshdBytes:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def total(self) -> int:
        return sum(self.seen.values())


def make_disk(folder: Path, virtual: int, data: int) -> Path:
    disk = folder / "bench.qcow2"
    sh(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), str(virtual)])
    # random data in 64 MiB runs spread over the disk (holes between them)
    runs, step = data // (64 * MiB), virtual // max(1, data // (64 * MiB))
    with tempfile.NamedTemporaryFile(dir=folder) as chunk:
        chunk.write(os.urandom(64 * MiB))
        chunk.flush()
        for i in range(runs):
            sh(["qemu-io", "-f", "qcow2", "-c",
                f"write -s {chunk.name} {i * step} {64 * MiB}", str(disk)])
    disk.chmod(0o644)
    return disk


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def median(values: list[float]) -> float:
    return statistics.median(values)


def bench_copy(uri: str, target: ssh.SshTarget, listener: int, vm: str, disk: Path,
               data: int, tmp: Path, reps: int, env: dict[str, str]) -> dict[str, float]:
    inventory = tmp / "inventory.yaml"
    sh([*VMMOVE, "scan", "-c", uri, "--output-file", str(inventory), "-o", "json"], env,
       cwd=ROOT)
    times: dict[str, list[float]] = {"vmmove": [], "vmmove-noverify": [], "ssh-cat": [],
                                     "local": []}
    wire: dict[str, int] = {}
    for rep in range(reps):
        for name, extra in (("vmmove", []), ("vmmove-noverify", ["--no-verify"])):
            work = tmp / f"w-{name}-{rep}"
            with SshdBytes(listener) as counter:
                times[name].append(sh([*VMMOVE, "convert", str(inventory), vm, "--to",
                                       str(work), *extra], env, cwd=ROOT))
            wire[name] = counter.total
        out = tmp / f"cat-{rep}.qcow2"
        with SshdBytes(listener) as counter, open(out, "wb") as fh:
            start = time.perf_counter()
            subprocess.run(target.argv(["cat", str(disk)]), stdout=fh, check=True)
            times["ssh-cat"].append(time.perf_counter() - start)
        wire["ssh-cat"] = counter.total
        out.unlink()
        local = tmp / f"local-{rep}.qcow2"
        times["local"].append(sh(["qemu-img", "convert", "-f", "qcow2", "-O", "qcow2",
                                  str(disk), str(local)]))
        local.unlink()
    med = {k: median(v) for k, v in times.items()}
    alloc = allocated(disk)
    print(f"\n1. remote copy of a shut-off disk ({data // MiB} MiB of data, "
          f"{alloc / MiB:.0f} MiB allocated, over SSH on loopback)")
    print(f"  {'method':34} {'seconds':>8} {'MiB/s':>8} {'ratio':>7} {'wire MiB':>9} "
          f"{'wire/alloc':>10}")
    labels = {"vmmove": "vmmove convert (verified both ends)",
              "vmmove-noverify": "vmmove convert --no-verify",
              "ssh-cat": "ssh host cat disk > copy",
              "local": "local qemu-img convert (no SSH)"}
    for key, label in labels.items():
        w = wire.get(key)
        print(f"  {label:34} {med[key]:8.2f} {data / MiB / med[key]:8.1f} "
              f"{med['ssh-cat'] / med[key]:6.2f}x "
              f"{(w / MiB if w else 0):9.0f} {(w / alloc if w else 0):10.2f}")
    print("  ratio: ssh-cat time / method time (>1: faster than the by-hand copy)")
    return med


def bench_direct(target: ssh.SshTarget, disk: Path, size: int, data: int, tmp: Path,
                 reps: int, env: dict[str, str], server: SeaweedFS, bucket: str,
                 inventory_vm: tuple[Path, str], copy_seconds: float) -> None:
    direct: list[float] = []
    for rep in range(reps):
        pvc = tmp / f"pvc-direct-{rep}"
        pvc.mkdir()
        psk = tmp / f"psk-{rep}"
        start = time.perf_counter()
        export = nbd.serve_remote(target, str(disk), "qcow2", "vda", port=10809 + rep,
                                  bind="127.0.0.1")
        try:
            psk.write_bytes(export.psk or b"")
            run_worker(f"nbds://vmmove@127.0.0.1:{10809 + rep}/vda", str(psk),
                       str(pvc / "disk.img"), size)
        finally:
            export.stop()
        direct.append(time.perf_counter() - start)
        (pvc / "disk.img").unlink()
    inventory, vm = inventory_vm
    s3: list[float] = []
    for rep in range(reps):
        work = tmp / f"s3-{rep}"
        start = time.perf_counter()
        sh([*VMMOVE, "convert", str(inventory), vm, "--to", str(work)], env, cwd=ROOT)
        sh([*VMMOVE, "upload", str(inventory), vm, "--workdir", str(work), "--s3",
            f"s3://{bucket}/bench{rep}", "--endpoint-url", server.endpoint], env, cwd=ROOT)
        image = next(work.glob("*.qcow2"))
        downloaded = tmp / f"import-{rep}.qcow2"
        client = server.client()
        client.download_file(bucket, f"bench{rep}/{image.name}", str(downloaded))
        pvc = tmp / f"pvc-s3-{rep}"
        pvc.mkdir()
        sh(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(downloaded),
            str(pvc / "disk.img")])
        s3.append(time.perf_counter() - start)
        downloaded.unlink()
        (pvc / "disk.img").unlink()
    d, s = median(direct), median(s3)
    print(f"\n2. start → PVC holds the verified disk ({data // MiB} MiB of data in "
          f"{size // MiB} MiB)")
    print(f"  direct (qemu-nbd TLS on the host + vmmove worker):       {d:8.2f} s")
    print(f"  S3 (convert + upload + importer download + convert):     {s:8.2f} s")
    print(f"  ratio S3/direct: {s / d:.2f}x  (remote copy alone took {copy_seconds:.2f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repetition")
    parser.add_argument("--reps", type=int, default=None)
    args = parser.parse_args()
    reps = args.reps or (1 if args.quick else 2)
    virtual, data = (1 * GiB, 256 * MiB) if args.quick else (4 * GiB, 2 * GiB)
    conn = libvirt.open("qemu:///system")
    folder = Path(tempfile.mkdtemp(prefix="vmmove-bench-", dir="/var/lib/libvirt/images"))
    folder.chmod(0o755)
    name = f"vmmove-bench-{os.getpid()}"
    dom = None
    try:
        disk = make_disk(folder, virtual, data)
        dom = conn.defineXML(DomainSpec(name, disks=[(str(disk), "qcow2", "vda", "virtio",
                                                      "disk")]).xml())
        with running_sshd() as server, tempfile.TemporaryDirectory(
                prefix="vmmove-bench-") as tmpname:
            tmp = Path(tmpname)
            uri = server.libvirt_uri() + "&no_verify=1"
            target = ssh.SshTarget.from_uri(uri)
            assert target is not None
            s3 = SeaweedFS(tmp / "s3")
            s3.start()
            try:
                env = subprocess_env(s3.env(tmp))
                print(f"{os.cpu_count()} cores; host = sshd on 127.0.0.1:{server.port}")
                med = bench_copy(uri, target, server.proc.pid, name, disk, data, tmp, reps,
                                 env)
                bench_direct(target, disk, virtual, data, tmp, reps, env, s3,
                             s3.new_bucket(), (tmp / "inventory.yaml", name), med["vmmove"])
            finally:
                s3.stop()
    finally:
        if dom is not None:
            dom.undefine()
        subprocess.run(["rm", "-rf", str(folder)])
        conn.close()


if __name__ == "__main__":
    main()
