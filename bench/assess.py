"""Benchmark: assessing a 10,000-VM inventory against loading that inventory.

Every vmmove step starts by loading the inventory file (:func:`load_inventory`: JSON
parse plus the typed rebuild of every VM), so that is the baseline: assessment should
cost no more than reading the file did.  The inventory is synthetic and varied so that
most rules fire somewhere: i440fx and VMware machines, IDE and LSI Logic disks, vmxnet3
NICs, passthrough devices, backing chains, Windows guests, names that need mapping and
collide, MAC addresses repeated across VMs, and 600 VMs sharing one UUID (two scans of
one host).

* baseline: ``load_inventory(file)``;
* vmmove: ``assess(inventory)`` (every rule, cross-VM context built once);
* also shown: ``vmmove assess FILE -o json --fail-on never`` in a fresh process (not with
  ``--quick``), which is load + assess + output + interpreter start.

Target: assess at most 1.0x the load.  Medians of repetitions, wall and CPU time.

    python bench/assess.py            # 10,000 VMs, 7 repetitions, plus the CLI
    python bench/assess.py --quick    # 2,000 VMs, 3 repetitions, no CLI run
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from migrate.assessment import assess  # noqa: E402
from migrate.core.model import (  # noqa: E402
    VM,
    BackingFile,
    Device,
    Disk,
    Firmware,
    GuestOS,
    Inventory,
    Nic,
    PowerState,
    Source,
    SourceKind,
    Tuning,
)
from migrate.core.serialize import load_inventory, save_inventory  # noqa: E402

TARGET_RATIO = 1.0
GiB = 1024**3


def make_vm(i: int) -> VM:
    windows = i % 5 == 0
    machine = ("pc-q35-7.2", "pc-i440fx-2.9", "vmx-13", "pc")[i % 4]
    disks = [
        Disk(
            target="sda" if i % 3 == 0 else "vda",
            bus=("virtio", "ide", "scsi")[i % 3],
            controller_model="lsilogic" if i % 3 == 2 else None,
            path=f"/srv/vm{i}/os.qcow2",
            format="qcow2",
            virtual_size=(20 + i % 40) * GiB,
            allocated_size=(i % 20 + 1) * GiB,
            backing_chain=[BackingFile("/srv/base.qcow2", "qcow2")] if i % 7 == 0 else [],
        ),
        Disk(target="vdb", bus="virtio", path=f"/srv/vm{i}/data.raw", format="raw", virtual_size=None if i % 11 == 0 else 100 * GiB),
        Disk(target="hdc", device="cdrom", bus="ide", source_type="none"),
    ]
    if i % 13 == 0:
        disks.append(Disk(target="vdc", source_type="network", protocol="rbd", path=f"pool/vm{i}", hosts=["mon1:6789"]))
    nics = [
        Nic(mac=f"52:54:00:{i >> 8 & 255:02x}:{i & 255:02x}:01", model=("virtio", "e1000", "vmxnet3")[i % 3], network="default"),
        Nic(mac=f"52:54:00:{(i % 500) >> 8 & 255:02x}:{i % 500 & 255:02x}:02", model="virtio", type="bridge", network="br0"),
    ]
    devices = [Device("graphics", "spice" if i % 2 else "vnc"), Device("video", ("qxl", "virtio", "cirrus")[i % 3])]
    if i % 97 == 0:
        devices.append(Device("pci-passthrough", "pci", {"address": f"0000:{i % 256:02x}:00.0"}))
    if i % 50 == 0:
        devices += [Device("serial", "pty", {"port": "0"}), Device("serial", "pty", {"port": "1"})]
    name = (f"web-{i:05d}", f"Web {i:05d}", f"DB_Server.{i % 300}", f"app{i}")[i % 4]
    return VM(
        name=name,
        uuid="00000000-0000-4000-8000-000000000000" if i < 600 else f"00000000-0000-4000-8000-{i:012x}",
        source=Source(SourceKind.LIBVIRT, f"qemu+ssh://kvm{i % 20}/system"),
        hypervisor="kvm",
        os_type="hvm",
        arch="x86_64",
        machine=machine,
        power_state=(PowerState.RUNNING, PowerState.SHUTOFF)[i % 2],
        vcpus=1 + i % 8,
        memory=(1 + i % 32) * GiB,
        max_memory=64 * GiB if i % 17 == 0 else None,
        firmware=Firmware(type="efi", secure_boot=True, tpm_version="2.0", tpm_model="tpm-crb") if windows else Firmware(),
        clock_offset="localtime" if windows else "utc",
        disks=disks,
        nics=nics,
        devices=devices,
        guest_os=GuestOS(id="http://microsoft.com/win/2k22", family="windows") if windows else (None if i % 9 == 0 else GuestOS(family="linux", distro="rhel", version="9")),
        tuning=Tuning(numa_nodes=2, cpu_pinning=True) if i % 23 == 0 else Tuning(),
        snapshots=i % 3,
    )


def timed(fn: Callable[[], object], reps: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``reps`` calls."""
    walls, cpus = [], []
    for _ in range(reps):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 VMs, 3 repetitions, no CLI run")
    parser.add_argument("--vms", type=int, default=None, help="inventory size (default 10,000; 2,000 with --quick)")
    parser.add_argument("--reps", type=int, default=None)
    args = parser.parse_args()
    count = args.vms or (2000 if args.quick else 10000)
    reps = args.reps or (3 if args.quick else 7)

    with tempfile.TemporaryDirectory(prefix="vmmove-bench-assess-") as tmp:
        path = Path(tmp) / "inventory.json"
        save_inventory(Inventory(vms=[make_vm(i) for i in range(count)]), path)
        inv = load_inventory(path)
        result = assess(inv)
        concerns = sum(len(c) for c in result.values())
        ids = {c.id for cs in result.values() for c in cs}
        print(f"{count} VMs ({path.stat().st_size / 2**20:.1f} MiB JSON): {concerns} concerns, {len(ids)} distinct ids")

        base_wall, base_cpu = timed(lambda: load_inventory(path), reps)
        wall, cpu = timed(lambda: assess(inv), reps)
        print(f"baseline load_inventory : {base_wall:7.3f} s wall  {base_cpu:7.3f} s cpu")
        print(f"assess                  : {wall:7.3f} s wall  {cpu:7.3f} s cpu  ({wall / count * 1e6:.0f} µs/VM)")
        ratio = cpu / base_cpu
        print(f"ratio assess/load (cpu) : {ratio:7.2f}x  (wall {wall / base_wall:.2f}x; target <= {TARGET_RATIO:.1f}x)")

        if not args.quick:
            cmd = [sys.executable, "-c", "from migrate.cli import run; run()"]
            cmd += ["assess", str(path), "-o", "json", "--fail-on", "never"]
            cli_wall, _ = timed(lambda: subprocess.run(cmd, check=True, capture_output=True), max(1, reps // 2))
            print(f"vmmove assess CLI       : {cli_wall:7.3f} s wall (fresh process, JSON output)")
    ok = ratio <= TARGET_RATIO
    print("target met" if ok else "target MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
