"""``vmmove apply PLAN``: put a wave's objects into the cluster and watch the imports."""

from __future__ import annotations

from typing import Any

import click

from migrate.cli.options import kube, output_format
from migrate.core.errors import VmmoveError
from migrate.core.output import emit, error_line

from migrate.views.outcome import outcome_rows

HEADERS = ["WAVE", "OBJECT", "RESULT", "DETAIL"]


def apply_options(f: Any) -> Any:
    """Options shared by ``apply`` and ``migrate``."""
    f = click.option("--max-restarts", type=click.IntRange(min=1), default=3,
                     show_default=True, metavar="N",
                     help="Call an import failed once its importer pod restarted N times.")(f)
    f = click.option("--timeout", type=click.FloatRange(min=1), default=3600.0,
                     show_default=True, metavar="SECONDS",
                     help="Stop watching the imports after this long (a rerun watches on).")(f)
    f = click.option("--wait/--no-wait", default=True, show_default=True,
                     help="Watch the DataVolumes' imports until they finish.")(f)
    f = click.option("--force-conflicts", is_flag=True,
                     help="Take over fields another field manager owns (kubectl's "
                          "--force-conflicts).")(f)
    return kube(f)


@click.command("apply")
@click.argument("plan_file", metavar="PLAN", type=click.Path(dir_okay=False))
@click.option("--wave", type=click.IntRange(min=1), default=None, metavar="N",
              help="Apply wave N only (default: every wave, in order, stopping at a failure).")
@click.option("--dry-run", type=click.Choice(["none", "client", "server"]), default="none",
              is_flag=False, flag_value="client", metavar="[=client|server]",
              help="--dry-run (= client): show what would be applied, contact nothing; "
                   "--dry-run=server: let the API server check everything and store nothing.")
@apply_options
@output_format()
def apply_cmd(plan_file: str, wave: int | None, dry_run: str, kubeconfig: str | None,
              context: str | None, namespace: str | None, force_conflicts: bool, wait: bool,
              timeout: float, max_restarts: int, output: str) -> None:
    """Apply a wave's Namespaces, Secrets and VirtualMachines, then watch the imports.

    \b
    vmmove apply plan.yaml --wave 1 --dry-run=server
    vmmove apply plan.yaml --wave 1 --context prod

    Server-side apply (field manager vmmove): a rerun changes nothing. The cluster must
    serve KubeVirt (kubevirt.io/v1) and CDI (cdi.kubevirt.io/v1beta1); the command says
    so in one line when it does not. Each disk's DataVolume is then watched (phase,
    progress) until it succeeds; a failed import is reported with the importer's reason.
    The manifests are made from the plan and the journal (what convert and upload
    recorded); -n replaces the plan's namespace for VMs without their own.
    """
    from migrate.views.bars import reporters
    from migrate.pipeline.stages import KubeArgs, apply_errors, apply_waves
    from migrate.plan import load_plan

    plan = load_plan(plan_file)
    if namespace:
        plan.use_namespace(namespace)
    numbers = [wave] if wave is not None else plan.wave_numbers()
    mode = None if dry_run == "none" else dry_run
    all_data: list[dict[str, Any]] = []
    all_rows: list[list[Any]] = []
    errors: list[str] = []
    for n, outcome in apply_waves(plan, numbers, KubeArgs(kubeconfig, context, namespace),
                                  dry_run=mode, force=force_conflicts, wait=wait,
                                  timeout=timeout, max_restarts=max_restarts,
                                  reporters=reporters()):
        data, rows = outcome_rows(n, outcome)
        all_data += data
        all_rows += rows
        errors = apply_errors(outcome)
    emit(all_data, output, HEADERS, all_rows)
    if errors:
        for e in errors:
            click.echo(error_line(e), err=True)
        raise VmmoveError(f"apply: {len(errors)} problem(s); fix them and rerun "
                          "(what is applied stays applied)")
    if mode:
        click.echo(f"dry run ({mode}): nothing was changed", err=True)


commands = [apply_cmd]
