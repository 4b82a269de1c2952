"""Benchmark: checking a plan for 2,000 VMs (target: the checks add under 0.5 s).

    python bench/plan.py            # 2,000 VMs, 5 repetitions
    python bench/plan.py --quick    # 400 VMs, 3 repetitions

Every command that takes a plan reads it and runs every check (unknown keys, inventory
lookups, networks, names, MAC collisions) before doing anything, so this is a fixed cost
of each ``migrate``/``apply``/``status``.  Times are medians of the repetitions: the
baseline, measured in the same run, is loading the inventory alone (``load_inventory``),
which every plan load includes; the ratio says what the plan's checks add on top.  Plan
generation (``vmmove plan --by size``) and ``vmmove status`` over an empty journal are
timed too.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from migrate.core.model import Inventory  # noqa: E402
from migrate.plan import generate_plan, load_plan, save_plan  # noqa: E402
from migrate.core.serialize import load_inventory, save_inventory  # noqa: E402
from migrate.sources.libvirt_uri import scan_uri  # noqa: E402
from migrate.views.status import plan_status  # noqa: E402

NODE = Path(__file__).resolve().parents[1] / "fixtures" / "libvirt" / "node.xml"


def big_inventory(count: int) -> Inventory:
    """``count`` VMs cloned from the fixture node, with unique names, UUIDs and MACs."""
    seeds, _ = scan_uri(f"test://{NODE}")
    seeds = [vm for vm in seeds if vm.name in ("web-01", "legacy-i440fx", "DB_Server.Prod")]
    vms = []
    for i in range(count):
        vm = copy.deepcopy(seeds[i % len(seeds)])
        vm.name = f"{vm.name}-{i:05d}"
        vm.uuid = f"00000000-0000-4000-8000-{i:012x}"
        for j, nic in enumerate(vm.nics):
            nic.mac = f"52:54:{(i >> 16) & 0xff:02x}:{(i >> 8) & 0xff:02x}:{i & 0xff:02x}:{j:02x}"
        vms.append(vm)
    return Inventory(vms=vms)


def median(fn, reps: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="400 VMs, 3 repetitions")
    args = parser.parse_args()
    count, reps = (400, 3) if args.quick else (2000, 5)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        inv = big_inventory(count)
        inv_file = folder / "inventory.json"
        save_inventory(inv, inv_file)
        plan_file = folder / "plan.yaml"
        gen = median(lambda: generate_plan(inv, inv_file, plan_file, by="size", max_vms=50,
                                           namespace="vms", networks={"*": "pod"},
                                           transfer={"s3": "s3://b/p"}), reps)
        save_plan(generate_plan(inv, inv_file, plan_file, by="size", max_vms=50,
                                namespace="vms", networks={"*": "pod"},
                                transfer={"s3": "s3://b/p"}), plan_file)
        base = median(lambda: load_inventory(inv_file), reps)
        plan_load = median(lambda: load_plan(plan_file), reps)
        plan = load_plan(plan_file)
        status = median(lambda: plan_status(plan), reps)
    print(f"VMs: {count}, waves: {len(plan.waves)}, repetitions: {reps} (medians)")
    print(f"baseline load_inventory:      {base:8.3f} s")
    checks = plan_load - base
    print(f"load_plan (inventory+checks): {plan_load:8.3f} s  ratio {plan_load / base:5.2f}x"
          f"  checks alone {checks:6.3f} s  target < 0.5 s: "
          f"{'met' if checks < 0.5 else 'MISSED'}")
    print(f"generate_plan --by size:      {gen:8.3f} s")
    print(f"status (empty journal):       {status:8.3f} s")


if __name__ == "__main__":
    main()
