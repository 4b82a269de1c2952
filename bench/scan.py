"""Benchmark: ``vmmove scan`` of 1,000 domains against a bare libvirt-python loop.

A libvirt test-driver node with N domains (two disks on files that do not exist, one
disk in a storage pool, two NICs, varied firmware and run states) is generated in a temp
folder.  Both sides open their own connection, so the node file parse counts for both:

* baseline: ``openReadOnly`` + ``listAllDomains`` + ``XMLDesc(INACTIVE)`` per domain;
* vmmove: :func:`migrate.sources.scan.scan` on the same URI (states, snapshots, volume
  sizes, full mapping to the model, inventory);
* for scale: the bare loop plus a stock defusedxml parse of every XML, no mapping;
* also shown: the whole CLI (``vmmove scan -c URI -o json``) in a fresh process.

Targets: vmmove under 2 s and at most 1.2x the baseline.  Medians of repetitions, wall
and CPU time (CPU time of this process is steadier on a shared, loaded machine).

    python bench/scan.py            # 1,000 domains, 7 repetitions
    python bench/scan.py --quick    # 1,000 domains, 3 repetitions, no CLI run
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET_SECONDS = 2.0
TARGET_RATIO = 1.2


def node_xml(count: int) -> str:
    """A node file with ``count`` domains, a pool holding one volume per domain, a network."""
    domains = []
    volumes = []
    for i in range(count):
        efi = i % 3 == 0
        os_el = (
            "<os firmware='efi'><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>"
            if efi
            else "<os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type><boot dev='hd'/></os>"
        )
        state = (1, 5, 5, 3)[i % 4]
        domains.append(
            "<domain type='kvm' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>"
            f"<name>bench-{i:04d}</name>"
            f"<uuid>00000000-0000-4000-8000-{i:012x}</uuid>"
            "<metadata><libosinfo:libosinfo xmlns:libosinfo='http://libosinfo.org/xmlns/libvirt/domain/1.0'>"
            f"<libosinfo:os id='http://redhat.com/rhel/9.{i % 4}'/></libosinfo:libosinfo></metadata>"
            f"<memory unit='MiB'>{1024 * (1 + i % 8)}</memory><vcpu>{1 + i % 4}</vcpu>{os_el}"
            "<features><acpi/><apic/></features><cpu mode='host-model'/><clock offset='utc'/>"
            "<devices>"
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
            f"<source file='/srv/bench/vm{i:04d}-os.qcow2'/><target dev='vda' bus='virtio'/></disk>"
            "<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
            f"<source file='/srv/bench/vm{i:04d}-data.raw'/><target dev='vdb' bus='virtio'/></disk>"
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
            f"<source file='/var/lib/libvirt/images/vm{i:04d}-pool.qcow2'/><target dev='vdc' bus='virtio'/></disk>"
            "<disk type='file' device='cdrom'><target dev='sda' bus='sata'/><readonly/></disk>"
            f"<interface type='network'><mac address='52:54:00:{i >> 8 & 255:02x}:{i & 255:02x}:01'/>"
            "<source network='default'/><model type='virtio'/></interface>"
            f"<interface type='bridge'><mac address='52:54:00:{i >> 8 & 255:02x}:{i & 255:02x}:02'/>"
            "<source bridge='br0'/><model type='e1000'/></interface>"
            "<serial type='pty'/><channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
            "<graphics type='vnc' autoport='yes'/><video><model type='virtio'/></video>"
            "<memballoon model='virtio'/>"
            "</devices>"
            f"<test:runstate>{state}</test:runstate>"
            "</domain>"
        )
        volumes.append(
            f"<volume type='file'><name>vm{i:04d}-pool.qcow2</name><capacity unit='GiB'>{10 + i % 50}</capacity>"
            "<allocation unit='GiB'>2</allocation><target><format type='qcow2'/></target></volume>"
        )
    return (
        "<node>"
        + "".join(domains)
        + "<network><name>default</name><bridge name='virbr0'/><forward/>"
        "<ip address='192.168.122.1' netmask='255.255.255.0'/></network>"
        "<pool type='dir'><name>default</name><target><path>/var/lib/libvirt/images</path></target>"
        + "".join(volumes)
        + "</pool></node>"
    )


def bare_loop(uri: str) -> int:
    import libvirt

    conn = libvirt.openReadOnly(uri)
    try:
        n = 0
        for dom in conn.listAllDomains(0):
            dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            n += 1
        return n
    finally:
        conn.close()


def parse_floor(uri: str) -> int:
    """The bare loop plus a stock defusedxml parse of each XML: what any safe reader pays."""
    import defusedxml.ElementTree as SafeET
    import libvirt

    conn = libvirt.openReadOnly(uri)
    try:
        n = 0
        for dom in conn.listAllDomains(0):
            SafeET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            n += 1
        return n
    finally:
        conn.close()


def vmmove_scan(uri: str) -> int:
    from migrate.sources.scan import scan

    inv = scan([uri], [])
    assert not inv.errors, inv.errors[:3]
    return len(inv.vms)


def median_time(fn: Callable[[], object], reps: int) -> tuple[float, float, object]:
    """Median wall time and median CPU time of this process (both sides run in-process:
    the test driver lives inside libvirt.so), and the last result."""
    walls, cpus = [], []
    result = None
    for _ in range(reps):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        cpus.append(time.process_time() - cpu)
        walls.append(time.perf_counter() - wall)
    return statistics.median(walls), statistics.median(cpus), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, no CLI run")
    parser.add_argument("--domains", type=int, default=1000, help="domains in the node (default 1000)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 7, --quick 3)")
    args = parser.parse_args()
    reps = args.reps or (3 if args.quick else 7)

    import libvirt

    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    with tempfile.TemporaryDirectory(prefix="vmmove-bench-") as tmp:
        node = Path(tmp) / "node.xml"
        node.write_text(node_xml(args.domains))
        uri = f"test://{node}"
        # warm both paths once (imports, page cache), then interleave the measurements
        bare_loop(uri)
        vmmove_scan(uri)
        base_t, base_cpu, n_base = median_time(lambda: bare_loop(uri), reps)
        floor_t, floor_cpu, _ = median_time(lambda: parse_floor(uri), reps)
        scan_t, scan_cpu, n_scan = median_time(lambda: vmmove_scan(uri), reps)
        assert n_base == n_scan == args.domains, (n_base, n_scan)
        cli_t = None
        if not args.quick:
            def cli() -> None:
                subprocess.run([sys.executable, "-c", "from migrate.cli import run; run()", "scan", "-c", uri, "-o", "json"],
                               check=True, stdout=subprocess.DEVNULL)
            cli_t, _, _ = median_time(cli, max(3, reps // 2))

    ratio = scan_t / base_t
    cpu_ratio = scan_cpu / base_cpu
    load = os.getloadavg()[0]
    print(f"domains: {args.domains}   repetitions: {reps} (medians)   cpus: {os.cpu_count()}   load: {load:.1f}")
    print(f"bare libvirt loop (open + listAllDomains + XMLDesc): {base_t:.3f} s wall, {base_cpu:.3f} s cpu")
    print(f"vmmove scan (scan() in-process, same URI):          {scan_t:.3f} s wall, {scan_cpu:.3f} s cpu")
    print(f"ratio vmmove / bare: {ratio:.2f}x wall, {cpu_ratio:.2f}x cpu   (target <= {TARGET_RATIO}x)")
    print(f"for scale: bare loop + defusedxml.fromstring of each XML (no mapping): {floor_t:.3f} s wall, "
          f"{floor_cpu:.3f} s cpu = {floor_t / base_t:.2f}x wall, {floor_cpu / base_cpu:.2f}x cpu")
    print(f"per domain (wall): bare {1e6 * base_t / args.domains:.0f} us, vmmove {1e6 * scan_t / args.domains:.0f} us")
    if cli_t is not None:
        print(f"whole CLI in a fresh process (vmmove scan -c URI -o json): {cli_t:.3f} s")
    ok = scan_t < TARGET_SECONDS and ratio <= TARGET_RATIO
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
