"""``vmmove sync``: precopy rounds of warm VMs while their sources run."""

from __future__ import annotations

import re
import time

import click

from migrate.cli.options import kube as kube_options
from migrate.cli.options import output_format
from migrate.errors import UsageError, VmmoveError
from migrate.output import emit, error_line, human_size

HEADERS = ["VM", "ROUND", "KIND", "CHANGED", "SECONDS", "DISKS", "ERROR"]
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_every(text: str) -> float:
    """``--every``: ``90s``, ``30m``, ``2h``, ``1d`` or plain seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise UsageError(f"--every {text!r}: expected a duration such as 30m, 2h or 90s")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


@click.command("sync")
@click.argument("plan_file", metavar="PLAN", type=click.Path(dir_okay=False))
@click.argument("vms", nargs=-1, metavar="[VM]...")
@click.option("--wave", type=click.IntRange(min=1), required=True, metavar="N",
              help="The wave whose warm VMs get a round (all of them unless VMs are named).")
@click.option("--full", is_flag=True, help="Copy every disk in full this round.")
@click.option("--every", metavar="DURATION",
              help="Repeat rounds (30m, 2h, 90s) until --until or Ctrl-C.")
@click.option("--until", "until", metavar="TIME",
              help="With --every: start no round after TIME (ISO 8601, or HH:MM).")
@kube_options
@output_format()
def sync_cmd(plan_file: str, vms: tuple[str, ...], wave: int, full: bool, every: str | None,
             until: str | None, kubeconfig: str | None, context: str | None,
             namespace: str | None, output: str) -> None:
    """Run a precopy round for the warm VMs of a wave while their sources keep running.

    \b
    vmmove sync plan.yaml --wave 1
    vmmove sync plan.yaml --wave 1 web-01 --every 30m --until 02:00

    The first round copies each disk in full into its target volume; later rounds copy
    only what changed since the previous one (bitmap disks: the host's dirty bitmap;
    hash disks: blocks whose hash changed). Each round is journalled with its changed
    bytes and duration; `vmmove status` shows the last round's age and delta and the
    predicted final-sync time. With warm.writer worker the deltas are written by worker
    Jobs in the cluster (--kubeconfig).
    """
    from migrate.cutover import parse_at, select_vms
    from migrate.pipeline import plan_lock
    from migrate.plan import load_plan
    from migrate.progress import log
    from migrate.warm import Warm, is_warm

    plan = load_plan(plan_file)
    if namespace:
        plan.use_namespace(namespace)
    chosen = select_vms(plan, wave, vms)
    cold = [p.vm.name for p in chosen if not is_warm(plan, p)]
    if vms and cold:
        raise UsageError(f"{plan.path}: {', '.join(cold)} not warm (plan --warm, or "
                         "warm: true in its entry)")
    chosen = [p for p in chosen if is_warm(plan, p)]
    if not chosen:
        raise UsageError(f"{plan.path}: wave {wave} has no warm VM (plan --warm)")
    interval = parse_every(every) if every else None
    if until and interval is None:
        raise UsageError("--until goes with --every")
    deadline = parse_at(until).timestamp() if until else None
    kube = None
    if plan.warm.writer in ("worker", "s3"):
        from migrate.kube import connect

        kube = connect(kubeconfig, context)
    data, rows, errors = [], [], []
    try:
        first = True
        while True:
            started = time.time()
            with plan_lock(plan):
                with plan.journal() as journal:
                    warm = Warm(plan, journal, log, kube)
                    for p in chosen:
                        try:
                            r = warm.sync(p, full=full and first)
                        except VmmoveError as exc:
                            msg = str(exc) if str(exc).startswith(p.vm.name) else \
                                f"{p.vm.name}: {exc}"
                            errors.append(msg)
                            data.append({"vm": p.vm.name, "error": msg})
                            rows.append([p.vm.name, "-", "failed", "-", "-", "-", msg[:120]])
                            continue
                        data.append(r.to_data())
                        rows.append([r.vm, str(r.round), r.kind, human_size(r.changed),
                                     f"{r.seconds:.1f}",
                                     " ".join(f"{d.target}:{d.method}" for d in r.disks), ""])
            first = False
            if interval is None:
                break
            wake = started + interval
            if deadline is not None and wake > deadline:
                break
            log(f"next round at {time.strftime('%H:%M:%S', time.localtime(wake))}")
            time.sleep(max(0.0, wake - time.time()))
    finally:
        if kube is not None:
            kube.close()
    emit(data, output, HEADERS, rows)
    if errors:
        for e in errors:
            click.echo(error_line(e), err=True)
        raise VmmoveError(f"sync: {len(errors)} round(s) failed; fix the cause and rerun "
                          "(a rerun resumes from the last finished round)")


commands = [sync_cmd]
