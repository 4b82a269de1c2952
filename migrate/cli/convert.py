"""``vmmove convert``: turn source disks into images CDI imports (qcow2 or raw)."""

from __future__ import annotations

from pathlib import Path

import click

from migrate.cli.options import output_format, refuse_with_plan
from migrate.core.workdir import JOURNAL_NAME
from migrate.core.errors import UsageError, VmmoveError
from migrate.core.output import emit

from migrate.views.results import convert_data, convert_rows


def _status(workdir: Path, inventory: str | None, vms: tuple[str, ...], output: str) -> None:
    from migrate.views.convert import STATUS_HEADERS, convert_records

    data, rows = convert_records(workdir, inventory, vms)
    emit(data, output, STATUS_HEADERS, rows)


@click.command("convert")
@click.argument("inventory", required=False, type=click.Path(dir_okay=False))
@click.argument("vms", nargs=-1, metavar="[VM]...")
@click.option("--to", "workdir", required=False, type=click.Path(file_okay=False),
              metavar="DIR",
              help=f"Work folder: converted images and the journal ({JOURNAL_NAME}). "
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
@click.option("--verify", "verify_mode", type=click.Choice(["stream", "full"]),
              is_flag=False, flag_value="stream", default=None, metavar="[stream|full]",
              help="How outputs are verified (default: stream): the source is read once and "
                   "checksummed as it is copied (the guest view's and the output's xxh3-1m, "
                   "both recorded in the journal); full also runs qemu-img compare, "
                   "which reads the source again.")
@click.option("--no-verify", "no_verify", is_flag=True,
              help="Plain qemu-img convert: no checksums, nothing verified.")
@click.option("--inconsistent-copy", "--force-share", "force_share", is_flag=True,
              help="Read disks of running VMs while they write (qemu-img -U locally, "
                   "qemu-nbd --force-share on a remote host that cannot run a backup job). "
                   "The copy is never one moment's state: shut the VM off, or use the staged "
                   "cutover, for one that is. (--force-share is its old name.) Running VMs "
                   "of qemu+ssh:// hosts and qemu:///system are copied consistently without "
                   "it (backup API).")
@click.option("--redo", is_flag=True,
              help="Convert again even disks the journal records as done.")
@click.option("--status", "show_status", is_flag=True,
              help="Show what the journal in DIR records (converted, verified, checksums, "
                   "errors) and exit; INVENTORY is then optional.")
@output_format()
def convert(inventory: str | None, vms: tuple[str, ...], workdir: str | None,
            wave: int | None, batch: bool, jobs: int | None, fmt: str, compress: bool, verify_mode: str | None, no_verify: bool,
            force_share: bool,
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
    from converters.convert import FAILED, ConvertOptions
    from migrate.pipeline.stages import convert_selection
    from migrate.views.bars import reporters
    from migrate.plan import is_plan_file
    from migrate.core.serialize import load_inventory

    plan_disks = None
    if inventory is not None and is_plan_file(inventory):
        from migrate.pipeline.stages import plan_convert_args

        refuse_with_plan(inventory, ("workdir", "fmt", "compress", "verify_mode", "no_verify",
                                     "force_share"))
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
    inv = load_inventory(inventory) if plan_disks is None else plan.inventory  # file first
    if not vms and not batch:
        raise UsageError("name the VMs to convert, or pass --batch for every VM in "
                         f"{inventory}")
    if vms and batch:
        raise UsageError("--batch converts every VM: pass VM names or --batch, not both")
    if no_verify and verify_mode:
        raise UsageError("--verify and --no-verify: choose one")
    options = ConvertOptions(format=fmt, compress=compress, verify=not no_verify,
                             verify_full=verify_mode == "full", force_share=force_share,
                             redo=redo) if plan_disks is None else plan_options
    options.redo = redo
    if jobs is not None:
        options.jobs = jobs
    results = convert_selection(inv, vms, folder, options, plan_disks, reporters())
    emit([convert_data(r) for r in results], output,
         ["VM", "DISK", "STATUS", "FORMAT", "SIZE", "ALLOCATED", "VERIFIED", "TIME",
          "OUTPUT/ERROR"], convert_rows(results))
    failed = sum(1 for r in results if r.status == FAILED)
    if failed:
        raise VmmoveError(f"{failed} of {len(results)} disk(s) failed; fix them and rerun "
                          "(finished disks are not converted again)")


commands = [convert]
