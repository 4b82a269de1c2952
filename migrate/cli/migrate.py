"""``vmmove migrate PLAN --wave N --stage``: convert → inspect → guest → upload → manifests →
apply, resumable."""

from __future__ import annotations

import sys

from typing import Any

import click

from migrate.cli.apply import apply_options, outcome_rows
from migrate.cli.options import output_format
from migrate.errors import UsageError, VmmoveError
from migrate.output import emit

HEADERS = ["STAGE", "STATUS", "TIME", "SUMMARY/ERROR"]


@click.command("migrate")
@click.argument("plan_file", metavar="PLAN", type=click.Path(dir_okay=False))
@click.option("--wave", type=click.IntRange(min=1), required=True, metavar="N",
              help="The wave to migrate.")
@click.option("--stage", is_flag=True,
              help="Stage the wave: convert the disks, inspect the guests and convert those "
                   "that need it (virt-v2v), upload the disks, write the manifests, "
                   "apply them (VMs stay as the plan's runStrategy says, Halted by default) "
                   "and watch the imports.")
@click.option("--redo", is_flag=True,
              help="Convert and upload again what the journal records as done.")
@apply_options
@output_format()
def migrate_cmd(plan_file: str, wave: int, stage: bool, redo: bool, kubeconfig: str | None,
                context: str | None, namespace: str | None, force_conflicts: bool,
                wait: bool, timeout: float, max_restarts: int, output: str) -> None:
    """Run one wave of a plan end to end.

    \b
    vmmove migrate plan.yaml --wave 1 --stage
    vmmove migrate plan.yaml --wave 1 --stage --context prod --no-wait

    Every step records its progress in the plan's journal and skips what is done, so
    after a failure, a crash, SIGKILL or Ctrl-C the same command resumes: converted disks
    are not converted again, S3 uploads continue from the parts stored, applying again
    changes nothing. Two runs on one plan at once are refused. The cluster is checked
    (reachable, KubeVirt and CDI served) before any disk is converted.
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
        upload_wave,
    )
    from migrate.kube import connect
    from migrate.pipeline import Stage, StageResult, run_stages
    from migrate.plan import load_plan
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
    kube_client = connect(kubeconfig, context)  # fail now, not after hours of conversion
    outcome_box: dict[str, Any] = {}

    def apply_stage() -> str:
        outcome = apply_wave(plan, wave, kube_client, force=force_conflicts, wait=wait,
                             timeout=timeout, max_restarts=max_restarts)
        outcome_box["outcome"] = outcome
        errors = apply_errors(outcome)
        if errors:
            raise VmmoveError("apply: " + " | ".join(errors))
        return apply_summary(outcome)

    args = KubeArgs(kubeconfig, context, namespace)
    stages = [
        Stage("convert", lambda: convert_wave(plan, wave, redo=redo)),
        Stage("inspect", lambda: inspect_stage(plan, wave, redo=redo)),
        Stage("guest", lambda: guest_stage(plan, wave)),
        Stage("upload", lambda: upload_wave(plan, wave, args, redo=redo)),
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
    if failed:
        raise VmmoveError(f"wave {wave}: {failed[0].stage} failed; fix it and rerun the same "
                          f"command to resume ({failed[0].error})")
    click.echo(f"wave {wave} staged: see vmmove status {plan_file}", err=True)


commands = [migrate_cmd]
