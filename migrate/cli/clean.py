"""``vmmove clean PLAN``: remove staged images and S3 objects of VMs that are cut over."""

from __future__ import annotations

import click

from migrate.cli.options import output_format
from migrate.core.errors import UsageError, VmmoveError
from migrate.core.output import emit, error_line, human_size

HEADERS = ["VM", "DISK", "WHAT", "WHERE", "SIZE", "RESULT", "WHY"]


@click.command("clean")
@click.argument("plan_file", metavar="PLAN", type=click.Path(dir_okay=False))
@click.option("--wave", type=click.IntRange(min=1), default=None, metavar="N",
              help="Only the VMs of wave N (default: every wave).")
@click.option("--images", is_flag=True,
              help="Remove the converted images in the work folder.")
@click.option("--s3", "s3", is_flag=True,
              help="Remove the uploaded objects from the plan's S3 bucket.")
@click.option("--force", is_flag=True,
              help="Also VMs that are not cut over (their staging is then done anew).")
@click.option("--dry-run", is_flag=True,
              help="List what would be removed (result: would remove), remove nothing.")
@output_format()
def clean_cmd(plan_file: str, wave: int | None, images: bool, s3: bool, force: bool,
              dry_run: bool, output: str) -> None:
    """Remove what staging left for VMs that are cut over: the converted images in the
    work folder (--images) and the objects in S3 (--s3); both when neither is given.

    \b
    vmmove clean plan.yaml --wave 1
    vmmove clean plan.yaml --images
    vmmove clean plan.yaml --wave 2 --s3 --force     # a wave given up
    vmmove clean plan.yaml --dry-run                  # what would go, nothing removed

    Only files and objects the journal records for a disk are removed; sources are never
    touched (an image outside the work folder, or any VM's source disk, is kept). Each
    removal is journalled (kind clean).
    """
    from migrate.pipeline.clean import FAILED, clean_plan
    from migrate.views.status import plan_status
    from migrate.plan import load_plan

    plan = load_plan(plan_file)
    if not images and not s3:
        images, s3 = True, plan.transfer.s3 is not None
    elif s3 and plan.transfer.s3 is None:
        raise UsageError(f"{plan_file}: --s3: the plan has no S3 transfer target "
                         "(transfer.s3)")
    phases = {s.key: s.phase for s in plan_status(plan, wave)}
    removals, passed = clean_plan(plan, wave, images, s3, force, phases, dry_run)
    for line in passed:
        click.echo(f"kept: {line}", err=True)
    emit([r.to_data() for r in removals], output, HEADERS,
         [[r.vm, r.disk, r.what, r.where, human_size(r.bytes), r.result, r.why]
          for r in removals])
    done = [r for r in removals if r.result == ("would remove" if dry_run else "removed")]
    freed = human_size(sum(r.bytes or 0 for r in done))
    click.echo(f"clean (dry run): {len(done)} would be removed, {freed} would be freed; "
               "nothing was removed" if dry_run else
               f"clean: {len(done)} removed, {freed} freed", err=True)
    failed = [r for r in removals if r.result == FAILED]
    for r in failed:
        click.echo(error_line(f"{r.vm}/{r.disk}: {r.where}: {r.why}"), err=True)
    if failed:
        raise VmmoveError(f"clean: {len(failed)} removal(s) failed; rerun to retry")


commands = [clean_cmd]
