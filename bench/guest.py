"""Benchmark: the time guest readiness adds per VM, on the real Debian test guests.

What a wave pays per VM for guest readiness, next to the copy it already makes:

* baseline: ``qemu-img convert`` of the image to qcow2 (what staging a disk costs anyway);
* inspection: :func:`migrate.guest.inspect.inspect_disks` (one libguestfs appliance, TCG);
* boot test: :func:`migrate.guest.boottest.boot_test` until the login prompt (or the
  failure verdict), TCG unless ``--accel kvm``;
* guest conversion: :func:`migrate.guest.v2v.convert_guest` (virt-v2v-in-place on a copy),
  for the host-only variant, the one that needs it.

The images are tests/guest_image.py's (built, and timed, when missing).  One run each (they
take tens of seconds; repetitions add little but time), wall clock.

    python bench/guest.py               # both variants, conversion included
    python bench/guest.py --quick       # virtio variant only: inspect + boot test
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from migrate.guest.boottest import boot_test  # noqa: E402
from migrate.guest.inspect import inspect_disks  # noqa: E402
from migrate.guest.v2v import convert_guest  # noqa: E402
from migrate.core.model import VM, Nic, Source, SourceKind  # noqa: E402
from tests import guest_image  # noqa: E402


def spec(bus: str) -> dict:
    return {"template": {"spec": {"domain": {
        "cpu": {"sockets": 1, "cores": 1, "threads": 1}, "memory": {"guest": "1Gi"},
        "devices": {"disks": [{"name": "rootdisk", "disk": {"bus": bus}, "bootOrder": 1}],
                    "interfaces": [{"name": "default", "model": "virtio", "masquerade": {}}]}}}}}


def timed(label: str, fn, results: dict) -> object:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    value = fn()
    results[label] = round(time.monotonic() - started, 1)
    print(f"{label:38s} {results[label]:7.1f} s", file=sys.stderr)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--accel", default="tcg", choices=["tcg", "kvm", "auto"])
    args = parser.parse_args()
    results: dict[str, float] = {}
    if not guest_image.is_built():
        timed("image build (both variants)", guest_image.build, results)
    images = guest_image.paths()
    variants = ["virtio"] if args.quick else ["virtio", "hostonly"]
    with tempfile.TemporaryDirectory(prefix="vmmove-bench-guest-") as tmp:
        work = Path(tmp)
        for variant in variants:
            staged = work / f"{variant}.qcow2"
            timed(f"{variant}: qemu-img convert (baseline)", lambda: subprocess.run(
                ["qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", str(images[variant]),
                 str(staged)], check=True), results)
            ins = timed(f"{variant}: inspection", lambda: inspect_disks(
                [(str(staged), "qcow2")]), results)
            bus = "virtio" if variant == "virtio" else "sata"
            result = timed(f"{variant}: boot test ({bus})", lambda: boot_test(
                variant, spec(bus), {"rootdisk": (str(staged), "qcow2")}, work / "boot",
                timeout=600, accel=args.accel), results)
            print(f"    verdict: {result.verdict} ({result.reason})", file=sys.stderr)  # type: ignore[attr-defined]
            if variant == "hostonly":
                result = timed("hostonly: boot test (virtio, fails)", lambda: boot_test(
                    variant, spec("virtio"), {"rootdisk": (str(staged), "qcow2")},
                    work / "boot", timeout=600, accel=args.accel), results)
                print(f"    verdict: {result.verdict} ({result.reason})", file=sys.stderr)  # type: ignore[attr-defined]
                vm = VM("bench", Source(SourceKind.LIBVIRT, "test:///"),
                        nics=[Nic(mac="52:54:00:00:00:01")])
                conv = timed("hostonly: virt-v2v conversion", lambda: convert_guest(
                    vm, staged, "qcow2", ins, preserve_static_ips=True), results)  # type: ignore[arg-type]
                result = timed("hostonly: boot test after v2v (virtio)", lambda: boot_test(
                    variant, spec("virtio"), {"rootdisk": (conv.output, "qcow2")},  # type: ignore[attr-defined]
                    work / "boot", timeout=600, accel=args.accel), results)
                print(f"    verdict: {result.verdict} ({result.reason})", file=sys.stderr)  # type: ignore[attr-defined]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
