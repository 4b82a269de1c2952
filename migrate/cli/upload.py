"""``vmmove upload``: put converted images where CDI fills PVCs from (S3 or the upload proxy).

Option parsing and rendering; the work is :func:`migrate.pipeline.upload.upload_images`
(or, with a PLAN, :func:`migrate.pipeline.stages.plan_upload`).
"""

from __future__ import annotations

from typing import Any

import click

from migrate.cli.options import aws, kube, output_format, refuse_with_plan
from migrate.cli.types import SIZE
from migrate.core.errors import UsageError, VmmoveError
from migrate.core.output import emit, error_line

from migrate.views.results import transfer_data, transfer_rows


#: Options a plan decides itself (its work folder and transfer section).
PLAN_DECIDES = ("workdir", "s3", "secret_name", "parallel", "max_bandwidth", "profile",
                "endpoint_url", "region", "proxy", "insecure", "storage_class", "access_mode",
                "volume_mode", "size", "force_bind", "wait_timeout", "as_is", "follow")


@click.command("upload")
@click.argument("source", type=click.Path(exists=True), metavar="INVENTORY|DIR")
@click.argument("vms", nargs=-1, metavar="[VM]...")
@click.option("--workdir", type=click.Path(file_okay=False), metavar="DIR",
              help="Work folder of vmmove convert (its journal says which image is whose). "
                   "Required with an INVENTORY; defaults to DIR itself for a folder.")
@click.option("--s3", "s3", metavar="s3://BUCKET/PREFIX",
              help="Upload to S3 (AWS or any S3-compatible server) under this bucket/prefix.")
@click.option("--secret-name", default=None, metavar="NAME",
              help="Name of the Secret manifest holding the S3 credentials for CDI "
                   "(default vmmove-s3-<hash of endpoint and key id>).")
@click.option("--parallel", type=click.IntRange(1, 64), default=8, show_default=True,
              help="S3 parts sent at the same time (memory stays under ~100 MiB of parts).")
@click.option("--max-bandwidth", type=SIZE, default=None, metavar="RATE",
              help="Cap the S3 send rate, e.g. 50MB/s (like the aws cli's max_bandwidth).")
@aws
@click.option("--cdi-uploadproxy", "proxy", metavar="URL",
              help="Upload through CDI's upload proxy at URL into upload DataVolumes, as "
                   "virtctl image-upload does.")
@click.option("--insecure", is_flag=True,
              help="Accept the upload proxy's certificate without verification (self-signed).")
@click.option("--storage-class", default=None, help="DataVolume storage class (upload proxy).")
@click.option("--access-mode", default=None,
              type=click.Choice(["ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany",
                                 "ReadWriteOncePod"]),
              help="DataVolume access mode (default: the storage profile's).")
@click.option("--volume-mode", default=None, type=click.Choice(["Filesystem", "Block"]),
              help="DataVolume volume mode (default: the storage profile's).")
@click.option("--size", type=SIZE, default=None, metavar="SIZE",
              help="DataVolume size, e.g. 20Gi (default: the image's virtual size).")
@click.option("--force-bind", is_flag=True,
              help="Bind the PVC at once even with a WaitForFirstConsumer storage class.")
@click.option("--wait-timeout", type=float, default=300.0, show_default=True, metavar="SECONDS",
              help="How long to wait for each DataVolume phase (UploadReady, Succeeded), "
                   "and with --follow for the conversions to make progress.")
@kube
@click.option("--as-is", "as_is", is_flag=True,
              help="Disks without a conversion: upload the source image itself when CDI can "
                   "import it (raw, qcow2 without backing file, single-file vmdk, vdi, vhd, "
                   "vhdx); CDI converts it on import (needs scratch space).")
@click.option("--follow", is_flag=True,
              help="With an INVENTORY: wait for disks still being converted (vmmove convert "
                   "running beside this) and upload each as soon as it is done; with --s3, "
                   "a disk's parts go while its stream conversion writes it.")
@click.option("--redo", is_flag=True, help="Upload again images the journal records as done.")
@click.option("--wave", type=click.IntRange(min=1), default=None, metavar="N",
              help="With a PLAN (vmmove plan) as SOURCE: upload wave N to the plan's transfer "
                   "target, from its work folder.")
@output_format()
def upload(source: str, vms: tuple[str, ...], workdir: str | None, s3: str | None,
           proxy: str | None, as_is: bool, follow: bool, redo: bool, wave: int | None,
           output: str, **kw: Any) -> None:
    """Upload converted images to S3 or through CDI's upload proxy.

    \b
    vmmove upload inventory.yaml --workdir W --s3 s3://images/vms --endpoint-url http://minio:9000
    vmmove upload inventory.yaml web --workdir W --cdi-uploadproxy https://cdi-uploadproxy -n vms
    vmmove upload ./images --s3 s3://images/vms --profile backup
    vmmove upload plan.yaml --wave 1

    With an INVENTORY, the images are the outputs vmmove convert recorded in the work
    folder's journal (disks not converted yet are refused and listed); with a DIR, every
    image file in it.  Each upload is journalled (kind upload), so vmmove manifests knows
    where each disk went, and a rerun resumes an interrupted S3 upload from the parts
    already stored and skips objects already complete with the right size and checksum.
    S3 credentials are read the aws-cli way and written only into a Secret manifest
    (mode 0600) in the work folder, for CDI's s3 source.
    """
    from migrate.views.bars import UploadBars, reporters
    from migrate.pipeline.upload import upload_images
    from migrate.plan import is_plan_file

    if is_plan_file(source):
        from migrate.pipeline.stages import KubeArgs, plan_upload

        if vms:
            raise UsageError("with a PLAN, the wave says which VMs to upload (--wave N)")
        refuse_with_plan(source, PLAN_DECIDES)
        summary = plan_upload(source, wave, KubeArgs(kw["kubeconfig"], kw["context"],
                                                     kw["namespace"]), redo, reporters())
        if output == "table":
            click.echo(summary)
            return
        from migrate.pipeline.stages import wave_upload_records
        from migrate.plan import load_plan

        click.echo(summary, err=True)
        assert wave is not None  # plan_upload refused a missing --wave
        emit(wave_upload_records(load_plan(source), wave), output)
        return
    if wave is not None:
        raise UsageError("--wave goes with a PLAN (vmmove plan) as SOURCE")
    results = upload_images(source, vms, workdir, s3, proxy, as_is, follow, redo,
                            UploadBars, kw)
    for r in results:
        if not r.ok:
            click.echo(error_line(r.error), err=True)
    emit([transfer_data(r) for r in results], output,
         ["ITEM", "BACKEND", "STATUS", "SIZE", "SENT", "TIME", "DESTINATION/ERROR"],
         transfer_rows(results))
    failed = sum(1 for r in results if not r.ok)
    if failed:
        raise VmmoveError(f"{failed} of {len(results)} image(s) failed; fix and rerun "
                          "(finished ones are skipped, S3 uploads resume)")


commands = [upload]
