"""``vmmove convert``: turn source disks into images CDI imports (qcow2 or raw)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from migrate.cli.options import output_format, refuse_with_plan
from migrate.errors import UsageError, VmmoveError
from migrate.output import emit, error_line, human_size, rfc3339
from migrate.progress import ConvertProgress as BarProgress
from migrate.progress import disk_estimate as estimate

if TYPE_CHECKING:
    from converters.convert import DiskResult


def _rows(results: list[DiskResult]) -> list[list[Any]]:
    rows = []
    for r in results:
        detail = r.error or (Path(r.output).name if r.output else "") or r.note or ""
        if r.ok and r.note and r.output:
            detail = f"{Path(r.output).name} ({r.note})"
        rows.append([
            r.vm, r.disk, r.status, r.format if r.status != "ignored" else "-",
            human_size(r.virtual_size), human_size(r.allocated),
            {True: "yes", False: "no", None: "-"}[r.verified],
            f"{r.seconds:.2f}s" if r.seconds is not None else "-", detail])
    return rows


def _status(workdir: Path, inventory: str | None, vms: tuple[str, ...], output: str) -> None:
    from converters.convert import convert_status
    from migrate.serialize import load_inventory

    prefixes: list[str] | None = None
    if inventory and vms:
        inv = load_inventory(inventory)
        missing = [v for v in vms if inv.find(v) is None]
        if missing:
            raise UsageError(f"no such VM in the inventory: {', '.join(missing)}")
        prefixes = list(dict.fromkeys(vm.key for v in vms for vm in inv.find_all(v)))
    steps = convert_status(workdir, prefixes)
    data = [
        {"item": s.item, "vm": s.data.get("vm"), "disk": s.data.get("disk"), "status": s.status,
         "output": s.data.get("output"), "format": s.data.get("format"),
         "virtual_size": s.data.get("virtual_size"), "allocated": s.data.get("allocated"),
         "verified": s.data.get("verified"), "checksum": s.checksum,
         "started": rfc3339(s.started), "finished": rfc3339(s.finished),
         "seconds": s.data.get("seconds"),
         "error": s.error}
        for s in steps
    ]
    rows = [
        [d["vm"] or d["item"], d["disk"] or "", d["status"], d["format"] or "-",
         human_size(d["allocated"]), {True: "yes", False: "no", None: "-"}[d["verified"]],
         (d["checksum"] or "-")[:19],
         time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.finished)) if s.finished
         else "-", d["error"] or (Path(d["output"]).name if d["output"] else "")]
        for d, s in zip(data, steps)
    ]
    emit(data, output, ["VM", "DISK", "STATUS", "FORMAT", "ALLOCATED", "VERIFIED", "CHECKSUM",
                        "FINISHED", "OUTPUT/ERROR"], rows)


@click.command("convert")
@click.argument("inventory", required=False, type=click.Path(dir_okay=False))
@click.argument("vms", nargs=-1, metavar="[VM]...")
@click.option("--to", "workdir", required=False, type=click.Path(file_okay=False),
              metavar="DIR",
              help="Work folder: converted images and the journal (vmmove-journal.sqlite). "
                   "Required, except with a PLAN (its work folder).")
@click.option("--wave", type=click.IntRange(min=1), default=None, metavar="N",
              help="With a PLAN (from vmmove plan) instead of an INVENTORY: convert wave N, "
                   "with the plan's convert settings (format, compress, verify, jobs).")
@click.option("--batch", is_flag=True,
              help="Convert every disk of every VM in the inventory (no VM names needed).")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None, metavar="N",
              help="Disks converted at the same time (default: one per core, at most 4).")
@click.option("--format", "fmt", type=click.Choice(["qcow2", "raw"]), default="qcow2",
              show_default=True,
              help="Output format. qcow2 stores only allocated data, so it is smaller to move "
                   "and to import than raw, which CDI would also accept; raw outputs stay sparse.")
@click.option("--compress", is_flag=True,
              help="zstd-compress qcow2 clusters: smaller to upload, slower to convert.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Compare each output with its source (qemu-img compare) and record the "
                   "sha256 of the output in the journal.")
@click.option("--force-share", is_flag=True,
              help="Read disks of running VMs (qemu-img -U). The copy is not consistent: "
                   "shut the VM off, or use the staged cutover, for one that is.")
@click.option("--redo", is_flag=True,
              help="Convert again even disks the journal records as done.")
@click.option("--status", "show_status", is_flag=True,
              help="Show what the journal in DIR records (converted, verified, checksums, "
                   "errors) and exit; INVENTORY is then optional.")
@output_format()
def convert(inventory: str | None, vms: tuple[str, ...], workdir: str | None,
            wave: int | None, batch: bool, jobs: int | None, fmt: str, compress: bool, verify: bool, force_share: bool,
            redo: bool, show_status: bool, output: str) -> None:
    """Convert the disks of VMs in INVENTORY into images in DIR, for CDI to import.

    \b
    vmmove convert inventory.yaml web db --to /srv/vmmove     # two VMs
    vmmove convert inventory.yaml --batch --jobs 2 --to DIR   # every VM
    vmmove convert --status --to DIR                          # what is done
    vmmove convert --batch plan.yaml --wave 1                 # a wave of a plan

    Backing chains are flattened and holes stay holes. Sources are opened read-only and
    never written. Each output is written under a temporary name, verified, and renamed
    when complete; progress is journalled in DIR, so rerunning the same command after a
    crash or Ctrl-C skips finished disks and redoes partial ones. A disk that fails (bad
    image, missing file, no space) is reported and the others go on; the exit status is
    then non-zero.
    """
    from converters.convert import ConvertOptions, FAILED, convert_disks, select_disks
    from migrate.plan import is_plan_file
    from migrate.serialize import load_inventory

    plan_disks = None
    if inventory is not None and is_plan_file(inventory):
        from migrate.cli._plan_stages import plan_convert_args

        refuse_with_plan(inventory, ("workdir", "fmt", "compress", "verify", "force_share"))
        plan, plan_disks, plan_options = plan_convert_args(inventory, wave, vms)
        workdir = str(plan.workdir)
        batch, vms = True, ()
    elif wave is not None:
        raise UsageError("--wave goes with a PLAN (vmmove plan), not an inventory")
    if workdir is None:
        raise UsageError("convert needs --to DIR (the work folder)")
    folder = Path(workdir)
    if show_status:
        _status(folder, inventory, vms, output)
        return
    if inventory is None:
        raise UsageError("convert needs an INVENTORY (from vmmove scan), or --status")
    if not vms and not batch:
        raise UsageError("name the VMs to convert, or pass --batch for every VM in "
                         f"{inventory}")
    if vms and batch:
        raise UsageError("--batch converts every VM: pass VM names or --batch, not both")
    inv = load_inventory(inventory) if plan_disks is None else plan.inventory
    options = ConvertOptions(format=fmt, compress=compress, verify=verify,
                             force_share=force_share, redo=redo) if plan_disks is None \
        else plan_options
    options.redo = redo
    if jobs is not None:
        options.jobs = jobs
    pairs = select_disks(inv, vms, plan_disks)
    total = sum(estimate(d) for _, d in pairs if d.device in ("disk", "lun"))
    progress = BarProgress(total, sum(1 for _, d in pairs if d.device in ("disk", "lun")),
                           verify=options.verify)
    try:
        results = convert_disks(inv, vms, folder, options, progress, disks=plan_disks)
    finally:
        progress.close()
    for r in results:
        if r.status == FAILED:
            click.echo(error_line(r.error), err=True)
    emit([_result_data(r) for r in results], output,
         ["VM", "DISK", "STATUS", "FORMAT", "SIZE", "ALLOCATED", "VERIFIED", "TIME",
          "OUTPUT/ERROR"], _rows(results))
    failed = sum(1 for r in results if r.status == FAILED)
    if failed:
        raise VmmoveError(f"{failed} of {len(results)} disk(s) failed; fix them and rerun "
                          "(finished disks are not converted again)")


def _result_data(r: DiskResult) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(r)


commands = [convert]
