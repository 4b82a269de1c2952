"""``vmmove migrate PLAN --wave N --stage``: convert → inspect → guest → upload → manifests →
apply, resumable."""

from __future__ import annotations

import sys

from typing import Any

import click

from migrate.cli.apply import apply_options, outcome_rows
from migrate.cli.options import output_format
from migrate.errors import ProblemsError, UsageError, VmmoveError
from migrate.output import emit

HEADERS = ["STAGE", "STATUS", "TIME", "SUMMARY/ERROR"]


@click.command("migrate")
@click.argument("plan_file", metavar="PLAN", type=click.Path(dir_okay=False))
@click.argument("vms", nargs=-1, metavar="[VM]...")
@click.option("--wave", type=click.IntRange(min=1), required=True, metavar="N",
              help="The wave to migrate.")
@click.option("--stage", is_flag=True,
              help="Stage the wave: convert the disks, inspect the guests and convert those "
                   "that need it (virt-v2v), upload the disks, write the manifests, "
                   "apply them (VMs stay as the plan's runStrategy says, Halted by default) "
                   "and watch the imports.")
@click.option("--redo", is_flag=True,
              help="Convert and upload again what the journal records as done: the VMs "
                   "named (vmmove migrate PLAN --wave N --stage --redo web-01), or the "
                   "whole wave.")
@click.option("--dry-run", is_flag=True,
              help="Only list what --stage would run, in order, with time estimates from "
                   "the journal's measurements; nothing is converted, sent or applied.")
@apply_options
@output_format()
def migrate_cmd(plan_file: str, vms: tuple[str, ...], wave: int, stage: bool, redo: bool,
                dry_run: bool, kubeconfig: str | None,
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
    from migrate.cli._plan_stages import (
        KubeArgs,
        apply_errors,
        apply_summary,
        apply_wave,
        convert_wave,
        guest_stage,
        inspect_stage,
        manifests_wave,
        preflight_wave,
        upload_wave,
    )
    from migrate.kube import connect
    from migrate.pipeline import Stage, StageResult, run_stages
    from migrate.plan import PlanError, load_plan
    from migrate.progress import log

    if not stage:
        raise UsageError("migrate: say what to run: --stage (convert → inspect → guest → "
                         "upload → manifests → apply)")
    plan = load_plan(plan_file)
    if namespace:
        plan.use_namespace(namespace)
    if not plan.wave(wave):
        raise UsageError(f"{plan.path}: wave {wave} has no VM to migrate (all skipped)")
    if plan.transfer.backend is None:
        raise UsageError(f"{plan.path}: no transfer target: set transfer.s3 or "
                         "transfer.uploadProxy")
    redo_keys: bool | set[str] = redo
    if vms:
        if not redo:
            raise UsageError("migrate: VM names go with --redo (the VMs to do again)")
        from migrate.cutover import select_vms

        redo_keys = {p.key for p in select_vms(plan, wave, vms)}
    if dry_run:
        from migrate.dryrun import migrate_steps, show

        show(migrate_steps(plan, wave, redo_keys), output, f"migrate wave {wave}")
        return
    args = KubeArgs(kubeconfig, context, namespace)
    # every problem now, not one after hours of conversion
    problems, kube_client = preflight_wave(plan, wave, args,
                                           lambda: connect(kubeconfig, context))
    if problems:
        if kube_client is not None:
            kube_client.close()
        raise PlanError(plan.path, [f"wave {wave}: preflight: {p}" for p in problems])
    outcome_box: dict[str, Any] = {}

    def apply_stage() -> str:
        outcome = apply_wave(plan, wave, kube_client, force=force_conflicts, wait=wait,
                             timeout=timeout, max_restarts=max_restarts)
        outcome_box["outcome"] = outcome
        errors = apply_errors(outcome)
        if errors:
            raise ProblemsError(f"apply: {len(errors)} problem(s)", errors)
        return apply_summary(outcome)

    stages = [
        Stage("convert", lambda: convert_wave(plan, wave, redo=redo_keys)),
        Stage("inspect", lambda: inspect_stage(plan, wave, redo=redo_keys)),
        Stage("guest", lambda: guest_stage(plan, wave)),
        Stage("upload", lambda: upload_wave(plan, wave, args, redo=redo_keys)),
        Stage("manifests", lambda: manifests_wave(plan, wave)),
        Stage("apply", apply_stage),
    ]

    def report(result: StageResult) -> None:
        log(f"wave {wave}: {result.stage} {result.status} in {result.seconds:.1f}s"
            + (f": {result.summary}" if result.summary else ""))

    try:
        results = run_stages(plan, wave, stages, on_result=report)
    finally:
        kube_client.close()
    data = [{"stage": r.stage, "status": r.status, "seconds": round(r.seconds, 3),
             "summary": r.summary, "error": r.error} for r in results]
    rows = [[r.stage, r.status, f"{r.seconds:.1f}s", r.error or r.summary] for r in results]
    if output == "table":
        emit(data, output, HEADERS, rows)
        if "outcome" in outcome_box:
            _, objects = outcome_rows(wave, outcome_box["outcome"])
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
