"""``vmmove worker``: the in-cluster side of the ``direct`` transfer mode (migrate/worker.py)."""

from __future__ import annotations

import json

import click


@click.command("worker")
@click.option("--source", required=True, metavar="URL",
              help="The host's export: nbds://USER@HOST:PORT/EXPORT (TLS-PSK).")
@click.option("--psk-file", required=True, type=click.Path(dir_okay=False),
              help="The PSK file (USER:HEX), mounted from the Job's Secret.")
@click.option("--dest", required=True, type=click.Path(),
              help="The PVC: its block device, or disk.img at a Filesystem PVC's root.")
@click.option("--size", required=True, type=click.IntRange(min=1), help="Disk size in bytes.")
@click.option("--result", type=click.Path(dir_okay=False),
              help="Where to write the JSON result (the container's terminationMessagePath).")
def worker_cmd(source: str, psk_file: str, dest: str, size: int, result: str | None) -> None:
    """Write one disk from a source host's NBD export into a PVC, verified (run by the
    Jobs of transfer mode direct; see docs/remote-hosts.md)."""
    from migrate.worker import run_worker

    click.echo(json.dumps(run_worker(source, psk_file, dest, size, result)))


commands = [worker_cmd]
