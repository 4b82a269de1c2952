"""``vmmove inspect PLAN --wave N [VM…]``: what is inside each staged guest (libguestfs)."""

from __future__ import annotations

import click

from migrate.cli.options import output_format
from migrate.output import emit

HEADERS = ["VM", "OS", "BOOT", "DRIVERS MISSING", "AGENTS", "STATIC IP", "NOTE"]


@click.command("inspect")
@click.argument("plan_file", metavar="PLAN", type=click.Path(dir_okay=False))
@click.argument("vms", nargs=-1, metavar="[VM]...")
@click.option("--wave", type=click.IntRange(min=1), required=True, metavar="N",
              help="The wave whose staged guests are inspected (all unless VMs are named).")
@click.option("--redo", is_flag=True, help="Inspect again guests inspected before.")
@output_format()
def inspect_cmd(plan_file: str, vms: tuple[str, ...], wave: int, redo: bool,
                output: str) -> None:
    """Read each staged guest read-only with libguestfs and record what it holds — OS,
    boot loader and EFI needs, drivers for virtio/SATA/virtio-net, agents, foreign tools,
    device names in fstab, network configuration — in the journal and the inventory.

    \b
    vmmove inspect plan.yaml --wave 1
    vmmove inspect plan.yaml --wave 1 web-01 -o json

    Runs on the images `vmmove migrate --stage` (or `vmmove convert`) staged, never on the
    sources. Assess, the manifests (disk bus, NIC model) and the guest conversion then use
    these facts.
    """
    from migrate.cutover import select_vms
    from migrate.guest.stage import inspect_wave
    from migrate.pipeline import plan_lock
    from migrate.plan import load_plan

    plan = load_plan(plan_file)
    chosen = select_vms(plan, wave, vms)
    with plan_lock(plan):
        results = inspect_wave(plan, chosen, redo=redo)
    from migrate.serialize import to_data

    data = [{"vm": p.vm.name, "key": p.key, "inspection": to_data(r)}
            for p, r in zip(chosen, results)]
    rows = []
    for p, r in zip(chosen, results):
        missing = sorted(k for k, v in r.drivers.items() if v is False)
        static = [f"{n.interface}={','.join(n.addresses)}" for n in r.network
                  if n.method == "static" and n.addresses]
        os_name = r.product_name or r.distro or "-"
        boot = (r.bootloader or "-") + (" efi" if r.efi else "")
        rows.append([p.vm.name, os_name, boot, ", ".join(missing) or "-",
                     ", ".join(r.agents) or "-", " ".join(static) or "-", r.error or ""])
    emit(data, output, HEADERS, rows)


commands = [inspect_cmd]
