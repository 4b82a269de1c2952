"""``vmmove worker``: the in-cluster side of the ``direct`` transfer mode (migrate/worker.py)."""

from __future__ import annotations

import json

import click


@click.command("worker")
@click.option("--source", metavar="URL",
              help="The host's export: nbds://USER@HOST:PORT/EXPORT (TLS-PSK).")
@click.option("--psk-file", type=click.Path(dir_okay=False),
              help="The PSK file (USER:HEX), mounted from the Job's Secret.")
@click.option("--dest", required=True, type=click.Path(),
              help="The PVC: its block device, or disk.img at a Filesystem PVC's root.")
@click.option("--size", required=True, type=click.IntRange(min=1), help="Disk size in bytes.")
@click.option("--result", type=click.Path(dir_okay=False),
              help="Where to write the JSON result (the container's terminationMessagePath).")
@click.option("--extents", "extents", type=click.Path(dir_okay=False), default=None,
              help="Warm round: write only these extents (JSON data/zero runs) in place.")
@click.option("--compare", is_flag=True,
              help="Warm round: stream the export, write the MiB blocks that differ.")
@click.option("--verify", is_flag=True,
              help="Warm final delta: then compare the export's and the volume's guest-view "
                   "checksums.")
@click.option("--checksum-form", "form", default=None, metavar="FORM",
              help="The guest-view checksum form to compute and report: xxh3-1m (default) or "
                   "sha256-1m (migrate/core/digest.py).")
@click.option("--merge-url-file", type=click.Path(dir_okay=False), default=None,
              help="Warm round, S3 mode: merge the qcow2 delta at this file's presigned URL "
                   "into the volume (no --source).")
def worker_cmd(source: str | None, psk_file: str | None, dest: str, size: int,
               result: str | None, extents: str | None, compare: bool, verify: bool,
               form: str | None, merge_url_file: str | None) -> None:
    """Write one disk from a source host's NBD export into a PVC, verified (run by the
    Jobs of transfer mode direct; see docs/remote-hosts.md). With --extents or --compare,
    a warm round's delta in place (docs/warm-migration.md)."""
    from migrate.core import digest
    from migrate.core.errors import UsageError
    from migrate.worker import run_delta, run_merge, run_worker

    form = form or digest.DEFAULT
    if merge_url_file:
        click.echo(json.dumps(run_merge(merge_url_file, dest, size, verify=verify,
                                        result=result, form=form)))
        return
    if not source or not psk_file:
        raise UsageError("worker: --source and --psk-file are required (except with "
                         "--merge-url-file)")
    if extents or compare:
        click.echo(json.dumps(run_delta(source, psk_file, dest, size, extents_file=extents,
                                        compare=compare, verify=verify, result=result,
                                        form=form)))
        return
    click.echo(json.dumps(run_worker(source, psk_file, dest, size, result, form)))


commands = [worker_cmd]
