"""``vmmove plan``: write a migration plan from an inventory, or check one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from migrate.cli.options import output_format
from migrate.cli.types import QUANTITY
from migrate.core.errors import UsageError
from migrate.core.output import emit, escape, human_size

HEADERS = ["WAVE", "WAVE NAME", "VM", "TARGET", "NAMESPACE", "DISKS", "DATA", "NOTE"]


def _rows(plan: Any) -> tuple[list[dict[str, Any]], list[list[Any]]]:
    data, rows = [], []
    names = {w.number: w.name for w in plan.waves}
    for p in plan.vms:
        disks = [d for d in p.vm.disks if d.device in ("disk", "lun")]
        note = "skip" + (f": {p.entry.note}" if p.entry.note else "") if p.skip else \
            (p.entry.note or "")
        data.append({"wave": p.wave, "waveName": names[p.wave], "vm": p.vm.name, "key": p.key,
                     "name": p.name, "namespace": p.namespace, "disks": len(disks),
                     "dataBytes": p.vm.data_bytes(), "skip": p.skip, "note": p.entry.note})
        rows.append([p.wave, names[p.wave], p.vm.name, p.name, p.namespace, len(disks),
                     human_size(p.vm.data_bytes()), note])
    return data, rows


@click.command("plan")
@click.argument("inventory", required=False, type=click.Path(dir_okay=False))
@click.option("--out", "out", type=click.Path(dir_okay=False), metavar="PLAN",
              help="Write the plan here (YAML), for you to review and edit.")
@click.option("--check", "check", type=click.Path(dir_okay=False), metavar="PLAN",
              help="Check an existing plan instead: list every problem, or its waves.")
@click.option("--by", default="host", show_default=True, metavar="host|size|list|label:KEY",
              help="How VMs are put in waves: by source host, by size (smallest first), an "
                   "explicit list (--wave), or a label (label:KEY for a metadata key; "
                   "label:os, label:state, label:source-kind).")
@click.option("--wave", "waves", multiple=True, metavar="VM,VM,…",
              help="With --by list: the VMs of one wave (repeat for each wave, in order).")
@click.option("--max-vms", type=click.IntRange(min=1), default=None, metavar="N",
              help="At most N VMs per wave (big groups are split; --by size: default 10).")
@click.option("--max-size", type=QUANTITY, default=None, metavar="SIZE",
              help="At most SIZE of disk data per wave, e.g. 500Gi (splits big groups).")
@click.option("-n", "--namespace", default="default", show_default=True,
              help="Namespace of the VirtualMachines, written as the plan's namespace: (a VM "
                   "entry may override it; -n of apply/migrate/sync/cutover replaces it for "
                   "one run).")
@click.option("--network", "network_pairs", multiple=True, metavar="SOURCE=TARGET",
              help="Map a source network (network:default, bridge:br0, a port group, *) to "
                   "'pod' or 'multus:NAMESPACE/NAME' (repeatable). Networks left unmapped "
                   "are listed in the plan as null, for you to fill in.")
@click.option("--map", "map_file", type=click.Path(dir_okay=False), default=None,
              help="YAML file with 'networks' and 'storage' maps to copy into the plan.")
@click.option("--storage-class", default=None, help="StorageClass of every DataVolume.")
@click.option("--s3", "s3", default=None, metavar="s3://BUCKET/PREFIX",
              help="Transfer target: this S3 bucket/prefix.")
@click.option("--endpoint-url", default=None, metavar="URL",
              help="S3-compatible endpoint, e.g. http://minio:9000.")
@click.option("--profile", default=None, help="AWS shared-config profile for the S3 target.")
@click.option("--region", default=None, help="S3 region.")
@click.option("--cdi-uploadproxy", "proxy", default=None, metavar="URL",
              help="Transfer target: CDI's upload proxy at URL (instead of S3).")
@click.option("--run-strategy", default="Halted", show_default=True,
              type=click.Choice(["Halted", "Always", "Manual", "RerunOnFailure", "Once"]),
              help="Default spec.runStrategy; Halted leaves starting the VM to the cutover.")
@click.option("--preference", default="none", show_default=True, metavar="auto|none|NAME",
              help="Default VirtualMachineClusterPreference.")
@click.option("--stage-running", is_flag=True,
              help="Stage VMs while they run (convert.forceShare: true): their disks are "
                   "read with qemu-img -U, and the cutover's final sync copies them again "
                   "with the VM off. Without it a running VM is refused at convert time.")
@click.option("--skip-blocked", is_flag=True,
              help="Plan VMs with critical assessment concerns as skip: true, with the "
                   "concerns as the note.")
@click.option("--workdir", default=None, metavar="DIR",
              help="Work folder of the plan (images and journal), relative to the plan file "
                   "(default: <plan name>.work beside it).")
@click.option("--force", is_flag=True, help="Overwrite an existing plan file.")
@click.option("--warm", is_flag=True,
              help="Mark the VMs for warm migration (precopy rounds with vmmove sync, a "
                   "final delta at cutover); says which method each disk gets.")
@click.option("--warm-volumes", default=None, metavar="DIR",
              help="With --warm: where the target volumes are written "
                   "(DIR/<namespace>/<DataVolume>/disk.img), relative to the plan file.")
@output_format()
def plan_cmd(inventory: str | None, out: str | None, check: str | None, by: str,
             waves: tuple[str, ...], max_vms: int | None, max_size: int | None,
             namespace: str, network_pairs: tuple[str, ...], map_file: str | None,
             storage_class: str | None, s3: str | None, endpoint_url: str | None,
             profile: str | None, region: str | None, proxy: str | None, run_strategy: str,
             preference: str, stage_running: bool, skip_blocked: bool, workdir: str | None,
             force: bool, warm: bool, warm_volumes: str | None, output: str) -> None:
    """Put the VMs of INVENTORY into waves, in a plan file you edit and then run.

    \b
    vmmove plan inventory.yaml --out plan.yaml --by host -n vms --network '*=pod' \\
        --s3 s3://images/vms --endpoint-url http://minio:9000
    vmmove plan inventory.yaml --out plan.yaml --by list --wave web-01,db --wave app
    vmmove plan --check plan.yaml

    The plan names the inventory, a work folder (its journal records every step),
    network and storage maps, the transfer target, and per-VM overrides (targetName,
    namespace, runStrategy, preference, instancetype, memory, cpuModel, disks, nics,
    labels, annotations, nodeSelector, affinity, skip). It is checked whenever it is
    used: unknown keys, VMs missing from the inventory, unmapped networks, duplicate
    target names and MAC collisions are all listed at once; --check adds the
    assessment's critical concerns. See docs/plan.md.
    """
    from migrate.plan import PlanError, check_plan, critical_problems, load_plan, \
        transfer_warnings

    if check:
        if inventory or out:
            raise UsageError("--check PLAN takes no INVENTORY and no --out")
        plan = check_plan(check)
        for warning in transfer_warnings(plan):
            click.echo(f"vmmove: warning: {check}: {warning}", err=True)
        data, rows = _rows(plan)
        emit(data, output, HEADERS, rows)
        skipped = sum(1 for p in plan.vms if p.skip)
        click.echo(f"{check}: OK, {len(plan.waves)} wave(s), {len(plan.vms) - skipped} VM(s) "
                   f"to migrate, {skipped} skipped", err=True)
        return
    if not inventory or not out:
        raise UsageError("plan: give INVENTORY and --out PLAN (or --check PLAN)")
    if Path(out).exists() and not force:
        raise UsageError(f"{out}: exists; it may hold your edits (use --force to overwrite)")
    from migrate.pipeline.planning import write_plan

    if warm_volumes and not warm:
        raise UsageError("--warm-volumes goes with --warm")
    inv = write_plan(inventory, out, by=by, waves=waves, max_vms=max_vms, max_size=max_size,
                     namespace=namespace, network_pairs=network_pairs, map_file=map_file,
                     storage_class=storage_class, s3=s3, endpoint_url=endpoint_url,
                     profile=profile, region=region, proxy=proxy, run_strategy=run_strategy,
                     preference=preference, skip_blocked=skip_blocked, workdir=workdir,
                     stage_running=stage_running)
    if warm:
        _warm_section(out, warm_volumes)
    try:
        plan = load_plan(out, inventory=inv)
        problems = critical_problems(plan)
    except PlanError as exc:
        problems = exc.problems
    if problems:
        click.echo(f"{out}: written; {len(problems)} thing(s) to settle before it runs:",
                   err=True)
        for problem in problems:
            click.echo(f"  - {escape(problem)}", err=True)
        return
    rows_data, rows = _rows(plan)
    emit(rows_data, output, HEADERS, rows)
    if warm:
        _warm_methods(plan)
    click.echo(f"{out}: written, {len(plan.waves)} wave(s); review it, then "
               f"vmmove migrate {out} --wave 1 --stage", err=True)


def _warm_section(out: str, volumes: str | None) -> None:
    """Add the ``warm`` section (``--warm``) to the plan just written."""
    import yaml

    from migrate.plan import save_plan

    data = yaml.safe_load(Path(out).read_text(encoding="utf-8"))
    data["warm"] = {"default": True, **({"volumes": volumes} if volumes else {}),
                    "maxRoundAge": 3600}
    save_plan(data, out)


def _warm_methods(plan: Any) -> None:
    """Say, per disk of each warm VM, which change-tracking method it gets (stderr)."""
    from migrate.pipeline.warm import data_disks, disk_method, is_warm

    for p in plan.vms:
        if p.skip or not is_warm(plan, p):
            continue
        for d in data_disks(p.vm):
            method, why = disk_method(p.vm, d)
            click.echo(f"warm {p.vm.name}/{d.target}: {method} ({why})", err=True)


commands = [plan_cmd]
