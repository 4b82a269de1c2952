"""``vmmove migrate PLAN --wave N --stage``: the wave itinerary (convert → … → apply), resumable."""

from __future__ import annotations

import sys

from typing import Any

import click

from migrate.cli.apply import apply_options
from migrate.views.outcome import outcome_rows, stage_rows
from migrate.cli.options import output_format, wave_vms
from migrate.core.errors import ProblemsError, UsageError, VmmoveError
from migrate.core.output import emit

HEADERS = ["STAGE", "STATUS", "TIME", "SUMMARY/ERROR"]


@click.command("migrate")
@wave_vms("The wave to migrate.")
@click.option("--stage", is_flag=True,
              help="Stage the wave: convert the disks (with an S3 target each is uploaded "
                   "while it is converted), inspect (and with virt-v2v convert) the "
                   "guests, upload the disks, write the manifests, apply them (VMs stay as the "
                   "plan's runStrategy says, Halted by default) and watch the imports.")
@click.option("--redo", is_flag=True,
              help="Convert and upload again what the journal records as done: the VMs "
                   "named (vmmove migrate PLAN --wave N --stage --redo web-01), or the "
                   "whole wave.")
@click.option("--dry-run", is_flag=True,
              help="Only list what --stage would run, in order, with time estimates from "
                   "the journal's measurements; nothing is converted, sent or applied.")
@click.option("--max-inflight", type=click.IntRange(min=1), metavar="N",
              help="Transfer mode direct: at most N worker Jobs at once in this wave "
                   "(default: the plan's workers.maxInflight; per source host: "
                   "workers.maxInflightPerHost).")
@apply_options
@output_format()
def migrate_cmd(plan_file: str, vms: tuple[str, ...], wave: int, stage: bool, redo: bool,
                dry_run: bool, max_inflight: int | None, kubeconfig: str | None,
                context: str | None, namespace: str | None, force_conflicts: bool,
                wait: bool, timeout: float, max_restarts: int, output: str) -> None:
    """Run one wave of a plan end to end.

    \b
    vmmove migrate plan.yaml --wave 1 --stage
    vmmove migrate plan.yaml --wave 1 --stage --context prod --no-wait
    vmmove migrate plan.yaml --wave 1 --stage --dry-run      # what would run, how long
    vmmove migrate plan.yaml web-01 --wave 1 --stage --redo  # convert and send web-01 again

    Every step records its progress in the plan's journal and skips what is done, so
    after a failure, a crash, SIGKILL or Ctrl-C the same command resumes: converted disks
    are not converted again, S3 uploads continue from the parts stored, applying again
    changes nothing. Two runs on one plan at once are refused. Before any disk is
    converted everything the wave needs is checked and every problem listed: the
    cluster (KubeVirt and CDI served), the S3 bucket (a probe object written and
    deleted) or the upload proxy, each source disk, and the work folder's free space.
    """
    from migrate.core.progress import log
    from migrate.views.bars import reporters
    from migrate.pipeline.stages import KubeArgs, stage_wave, wave_to_stage

    if not stage:
        raise UsageError("migrate: say what to run: --stage (convert → inspect → guest → "
                         "upload → manifests → apply)")
    plan, redo_keys = wave_to_stage(plan_file, wave, vms, redo, namespace, max_inflight)
    if dry_run:
        from migrate.views.dryrun import migrate_steps, show

        show(migrate_steps(plan, wave, redo_keys), output, f"migrate wave {wave}")
        return
    def report(result: Any) -> None:
        log(f"wave {wave}: {result.stage} {result.status} in {result.seconds:.1f}s"
            + (f": {result.summary}" if result.summary else ""))

    results, outcome = stage_wave(plan, wave, KubeArgs(kubeconfig, context, namespace),
                                  redo=redo_keys, force=force_conflicts, wait=wait,
                                  timeout=timeout, max_restarts=max_restarts, on_result=report,
                                  reporters=reporters())
    data, rows = stage_rows(results)
    if output == "table":
        emit(data, output, HEADERS, rows)
        if outcome is not None:
            _, objects = outcome_rows(wave, outcome)
            click.echo("", err=True)
            emit(None, "table", ["WAVE", "OBJECT", "RESULT", "DETAIL"], objects,
                 out=sys.stderr)
    else:
        emit(data, output)
    failed = [r for r in results if r.status == "failed"]
    if failed and failed[0].problems and failed[0].head:
        raise ProblemsError(f"wave {wave}: {failed[0].stage} failed (fix it and rerun the "
                            f"same command to resume): {failed[0].head}", failed[0].problems)
    if failed:
        raise VmmoveError(f"wave {wave}: {failed[0].stage} failed (fix it and rerun the same "
                          f"command to resume): {failed[0].error}")
    click.echo(f"wave {wave} staged: see vmmove status {plan_file}", err=True)


commands = [migrate_cmd]
