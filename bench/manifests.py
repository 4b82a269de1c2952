"""Benchmark: manifests for 1,000 VMs (target: under 1 s).

    python bench/manifests.py            # 1,000 VMs, 5 repetitions
    python bench/manifests.py --quick    # 200 VMs, 3 repetitions

Times, as medians of the repetitions: generation (build + admission checks), rendering the
YAML in memory (these two are "manifests for 1,000 VMs", the target), and writing the tree
(one atomically written, fsynced file per VM: bound by the disk, printed apart).  The
baseline, measured in the same run, is writing the same VMs as an inventory file
(``save_inventory``): the ratio says how much more manifests cost than the inventory the
pipeline already writes.  With ``--schemas DIR`` the strict schema validation is timed too
(optional in the command, so not part of the target).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from manifests.generate import build_all  # noqa: E402
from manifests.kustomize import to_yaml, write_tree  # noqa: E402
from migrate.core.serialize import save_inventory  # noqa: E402
from tests.manifests_support import context, inventory, linux_bios_vm, multi_vm, windows_efi_vm  # noqa: E402


def make_inventory(n: int):  # type: ignore[no-untyped-def]
    makers = (linux_bios_vm, windows_efi_vm, multi_vm)
    vms = []
    for i in range(n):
        vm = makers[i % 3]()
        vms.append(replace(vm, name=f"{vm.name}-{i:05d}", uuid=f"00000000-0000-4000-8000-{i:012d}"))
    return inventory(*vms)


CPU: list[float] = []  # process CPU time of the last median_time call's repetitions


def median_time(fn, reps: int) -> float:  # type: ignore[no-untyped-def]
    """Median wall time; the median CPU time goes to CPU[0] (the machine is shared: CPU time
    shows what the work costs when other processes compete for the 2 cores)."""
    times, cpu = [], []
    for _ in range(reps):
        start, cstart = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cstart)
    CPU[:] = [statistics.median(cpu)]
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="200 VMs, 3 repetitions")
    ap.add_argument("--vms", type=int, default=None, help="number of VMs (default 1000, 200 with --quick)")
    ap.add_argument("--schemas", default=None, help="also time strict schema validation (../shared/schemas)")
    args = ap.parse_args()
    n = args.vms or (200 if args.quick else 1000)
    reps = 3 if args.quick else 5
    inv = make_inventory(n)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        baseline = median_time(lambda: save_inventory(inv, out / "inventory.yaml"), reps)

        def generate():  # type: ignore[no-untyped-def]
            sets, failed = build_all(inv.vms, context(inv))
            assert not failed, failed[:3]
            return sets

        gen = median_time(generate, reps)
        gen_cpu = CPU[0]
        sets = generate()
        render = median_time(lambda: [to_yaml(s.virtual_machine) for s in sets], reps)
        render_cpu = CPU[0]
        write = median_time(lambda: write_tree(sets, out / "tree"), reps)
        total = median_time(lambda: write_tree(generate(), out / "tree2"), reps)
        files = len(list((out / "tree").rglob("*.yaml")))

    print(f"manifests for {n} VMs ({files} files), median of {reps}:")
    cpu = gen + render
    print(f"  generate (build + admission checks)  {gen:7.3f} s   (CPU {gen_cpu:.3f} s)")
    print(f"  render YAML (in memory)              {render:7.3f} s   (CPU {render_cpu:.3f} s)")
    print(f"  manifests = generate + render        {cpu:7.3f} s   target < 1 s per 1,000 VMs: "
          f"{'OK' if cpu * 1000 / n < 1 else 'MISSED'} ({cpu * 1000 / n:.3f} s per 1,000; CPU time {(gen_cpu + render_cpu) * 1000 / n:.3f} s)")
    print(f"  render + write tree (atomic, fsync)  {write:7.3f} s   ({write / files * 1000:.2f} ms per file)")
    print(f"  total with files                     {total:7.3f} s")
    print(f"  baseline: save_inventory YAML        {baseline:7.3f} s   ratio total/baseline {total / baseline:.2f}")
    if args.schemas:
        from manifests.validate import SchemaValidator

        validator = SchemaValidator(args.schemas)
        check = median_time(lambda: [validator.virtual_machine(s.virtual_machine) for s in sets], max(1, reps // 2))
        print(f"  strict schema validation (optional)  {check:7.3f} s")


if __name__ == "__main__":
    main()
