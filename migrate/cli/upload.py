"""``vmmove upload``: put converted images where CDI fills PVCs from (S3 or the upload proxy)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from migrate.cli.options import aws, kube, output_format, refuse_with_plan
from migrate.errors import UsageError, VmmoveError
from migrate.output import emit, error_line, human_size
from migrate.progress import UploadProgress as BarProgress

if TYPE_CHECKING:
    from converters.transfer.base import Backend, TransferItem, TransferResult
    from migrate.model import VM, Disk, Inventory
    from migrate.state import Journal

#: File name endings ``vmmove upload DIR`` treats as disk images.
IMAGE_SUFFIXES = (".qcow2", ".qcow", ".raw", ".img", ".vmdk", ".vdi", ".vhd", ".vhdx", ".iso",
                  ".raw.gz", ".raw.xz", ".img.gz", ".img.xz", ".qcow2.gz", ".qcow2.xz")
#: Formats CDI imports as they are (it converts them itself; all but raw need scratch space).
AS_IS_FORMATS = {"raw", "qcow2", "vmdk", "vdi", "vpc", "vhdx"}
SINGLE_FILE_VMDK = {"monolithicSparse", "streamOptimized"}

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)(?:/s)?\s*$", re.I)


def parse_rate(text: str | None) -> int | None:
    """``50MB/s``, ``100M``, ``1.5GiB`` → bytes (binary units, as the aws cli reads them)."""
    if not text:
        return None
    m = _SIZE_RE.match(text)
    if not m:
        raise UsageError(f"{text}: not a size or rate (examples: 50MB/s, 100M, 1G)")
    scale = 1024 ** " kmgt".index((m.group(2) or " ").lower())
    return int(float(m.group(1)) * scale)


def _destination(r: TransferResult) -> str:
    if r.url:
        return r.url
    if r.dv:
        return f"{r.namespace}/{r.dv}"
    return "-"


@contextmanager
def _upload_lock(journal_file: Path) -> Iterator[None]:
    """One upload run per work folder; a conversion may run beside it (its own lock)."""
    from migrate.files import LockBusy, run_lock

    try:
        with run_lock(f"{journal_file}.upload.lock",
                      f"{journal_file.parent}: another vmmove upload is running on this "
                      "work folder"):
            yield
    except LockBusy as exc:
        raise VmmoveError(str(exc).split(" (pid")[0]) from None


# -- what to upload -----------------------------------------------------------------------------
def _folder_items(folder: Path, journal: Journal, need_info: bool) -> list[TransferItem]:
    """Every image file of a folder; checksums from the folder's convert records."""
    from converters.transfer.base import TransferItem
    from migrate.naming import dns1123_label
    from migrate.sources.containment import Export, open_path
    from migrate.state import DONE
    from migrate.workdir import KIND_CONVERT

    converted = {
        str(Path(s.data["output"]).resolve()): s
        for s in journal.steps(KIND_CONVERT)
        if s.status == DONE and s.data.get("output")
    }
    items = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if not path.name.lower().endswith(IMAGE_SUFFIXES):
            continue
        step = converted.get(str(path.resolve()))
        virtual = step.data.get("virtual_size") if step else None
        fmt = step.data.get("format") if step else None
        if need_info and virtual is None:
            try:  # read as an export: no header may lead outside the folder or to the network
                chain = open_path(Export.of_descriptor(str(path)), str(path), None)
                virtual, fmt = chain.virtual_size, chain.format
            except VmmoveError:
                virtual = None
        stem = path.name.split(".")[0] or path.name
        items.append(TransferItem(
            item=path.name, name=path.name, size=path.stat().st_size, path=path,
            checksum=step.checksum if step else None, virtual_size=virtual, format=fmt,
            dv_name=dns1123_label(stem)))
    if not items:
        raise UsageError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES[:6])}, …)")
    return items


def _as_is_problem(vm: VM, disk: Disk) -> tuple[str | None, Any]:
    """Why a source disk cannot go to CDI unconverted (None when it can), and its checked
    chain (:func:`converters.convert.source_chain`: contained, headers never followed)."""
    from converters.convert import source_chain

    try:
        chain = source_chain(vm, disk)
    except VmmoveError as exc:
        return str(exc), None
    if chain.top.real is None:
        return "inside an OVA archive: convert it", chain
    if chain.format not in AS_IS_FORMATS:
        return f"format {chain.format} is not one CDI imports", chain
    if len(chain.layers) > 1:
        return "has a backing file (CDI refuses those): convert it", chain
    if chain.top.data_file is not None:
        return "has an external data file: convert it", chain
    if chain.format == "vmdk":
        specific = (chain.top.info.get("format-specific") or {}).get("data") or {}
        create_type = specific.get("create-type")
        if create_type not in SINGLE_FILE_VMDK:
            return f"vmdk {create_type or '?'} is not a single-file vmdk: convert it", chain
    return None, chain


def _inventory_items(inv: Inventory, vms: tuple[str, ...], journal: Journal, as_is: bool,
                     follow: bool) -> tuple[list[TransferItem], list[tuple[str, str]]]:
    """Items for the converted disks; (item, reason) for the disks not ready."""
    from converters.transfer.base import TransferItem
    from migrate.naming import dns1123_label
    from migrate.state import DONE, FAILED
    from migrate.guest.stage import staged_image
    from migrate.workdir import KIND_CONVERT, disk_item, image_basename, target_names

    if vms:
        missing = [v for v in vms if inv.find(v) is None]
        if missing:
            raise UsageError(f"no such VM in the inventory: {', '.join(missing)}")
        chosen = list({id(vm): vm for v in vms for vm in inv.find_all(v)}.values())
    else:
        chosen = list(inv.vms)
    names = target_names(inv)
    items: list[TransferItem] = []
    not_ready: list[tuple[str, str]] = []
    for vm in chosen:
        for disk in vm.disks:
            if disk.device not in ("disk", "lun"):
                continue
            item = disk_item(vm, disk)
            label = f"{vm.name}/{disk.target}"
            dv_name = dns1123_label(image_basename(names[vm.key], disk))
            step = journal.get(KIND_CONVERT, item)
            if step is not None and step.status == DONE and step.data.get("output"):
                # a guest converted by virt-v2v (migrate.guest) replaces the staged image
                output, _, checksum = staged_image(journal, item) or (
                    Path(step.data["output"]), None, step.checksum)
                if not output.is_file():
                    not_ready.append((label, f"converted image {output} is missing"))
                    continue
                items.append(TransferItem(
                    item=item, name=output.name, size=output.stat().st_size, path=output,
                    checksum=checksum, virtual_size=step.data.get("virtual_size"),
                    format=step.data.get("format"), dv_name=dv_name,
                    label=f"{label} ({output.name})"))
                continue
            if as_is and disk.path and disk.source_type == "file":
                problem, chain = _as_is_problem(vm, disk)
                if problem is None:
                    path = Path(disk.path)
                    real = Path(chain.top.real)  # the checked file, links resolved
                    items.append(TransferItem(
                        item=item, name=f"{image_basename(names[vm.key], disk)}{path.suffix}",
                        size=real.stat().st_size, path=real, virtual_size=chain.virtual_size,
                        format=chain.format, dv_name=dv_name, label=f"{label} ({path.name})"))
                    continue
                not_ready.append((label, problem))
                continue
            if step is not None and step.status == FAILED:
                not_ready.append((label, f"conversion failed: {step.error}"))
            elif step is not None:
                not_ready.append((label, "conversion in progress" if follow
                                  else f"conversion {step.status}"))
            else:
                not_ready.append((label, "not converted yet"))
    return items, not_ready


def _backend(s3: str | None, proxy: str | None, workdir: Path, kw: dict[str, Any]) -> Backend:
    if bool(s3) == bool(proxy):
        raise UsageError("choose one destination: --s3 s3://bucket/prefix or "
                         "--cdi-uploadproxy URL")
    if s3:
        from converters.transfer.s3 import S3Backend, S3Options

        return S3Backend(S3Options(
            url=s3, workdir=workdir, endpoint_url=kw["endpoint_url"], profile=kw["profile"],
            region=kw["region"], secret_name=kw["secret_name"],
            secret_namespace=kw["namespace"], workers=kw["parallel"],
            max_bandwidth=parse_rate(kw["max_bandwidth"])))
    from converters.transfer.uploadproxy import ProxyOptions, UploadProxyBackend

    assert proxy
    return UploadProxyBackend(ProxyOptions(
        url=proxy, kubeconfig=kw["kubeconfig"], context=kw["context"],
        namespace=kw["namespace"], insecure=kw["insecure"], storage_class=kw["storage_class"],
        access_mode=kw["access_mode"], volume_mode=kw["volume_mode"],
        size=parse_rate(kw["size"]), force_bind=kw["force_bind"],
        wait_timeout=kw["wait_timeout"]))


def _rows(results: list[TransferResult]) -> list[list[Any]]:
    return [[r.item, r.backend, r.status, human_size(r.size), human_size(r.sent),
             f"{r.seconds:.1f}s", r.error or _destination(r)] for r in results]


def _data(r: TransferResult) -> dict[str, Any]:
    return {"item": r.item, "status": r.status, "checksum": r.checksum,
            "seconds": round(r.seconds, 3), "error": r.error, **r.journal_data()}


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
@click.option("--max-bandwidth", default=None, metavar="RATE",
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
@click.option("--size", default=None, metavar="SIZE",
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
                   "running beside this) and upload each as soon as it is done.")
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
    already stored and skips objects already complete with the right size and sha256.
    S3 credentials are read the aws-cli way and written only into a Secret manifest
    (mode 0600) in the work folder, for CDI's s3 source.
    """
    from converters.transfer.base import run_transfers
    from migrate.serialize import load_inventory
    from migrate.state import Journal
    from migrate.plan import is_plan_file
    from migrate.workdir import journal_path

    if is_plan_file(source):
        from migrate.cli._plan_stages import KubeArgs, plan_upload

        if vms:
            raise UsageError("with a PLAN, the wave says which VMs to upload (--wave N)")
        refuse_with_plan(source, PLAN_DECIDES)
        summary = plan_upload(source, wave, KubeArgs(kw["kubeconfig"], kw["context"],
                                                     kw["namespace"]), redo)
        if output == "table":
            click.echo(summary)
            return
        from migrate.cli._plan_stages import wave_upload_records
        from migrate.plan import load_plan

        click.echo(summary, err=True)
        assert wave is not None  # plan_upload refused a missing --wave
        emit(wave_upload_records(load_plan(source), wave), output)
        return
    if wave is not None:
        raise UsageError("--wave goes with a PLAN (vmmove plan) as SOURCE")
    src = Path(source)
    if src.is_dir():
        if vms:
            raise UsageError("VM names go with an INVENTORY, not with a folder of images")
        if follow or as_is:
            raise UsageError("--follow and --as-is go with an INVENTORY")
        folder = Path(workdir) if workdir else src
        inv = None
    else:
        if not workdir:
            raise UsageError(f"{source}: an INVENTORY needs --workdir DIR (where vmmove "
                             "convert put the images)")
        folder = Path(workdir)
        jf = journal_path(folder)
        if not jf.is_file() and not (as_is or follow):
            raise UsageError(f"{folder}: no vmmove journal here ({jf.name}); run vmmove "
                             "convert --to DIR first")
        inv = load_inventory(source)
    backend = _backend(s3, proxy, folder, kw)
    jf = journal_path(folder)
    with Journal(jf) as journal, _upload_lock(jf):
        if inv is None:
            items = _folder_items(src, journal, need_info=bool(proxy))
            pending: list[tuple[str, str]] = []
        else:
            items, pending = _inventory_items(inv, vms, journal, as_is, follow)
            if pending and not follow:
                listed = "; ".join(f"{label}: {why}" for label, why in pending)
                raise UsageError(f"{len(pending)} disk(s) not ready to upload ({listed}); run "
                                 "vmmove convert first (or --follow while it runs)")
        backend.prepare()
        total = sum(i.size for i in items)
        progress = BarProgress(total, len(items) + len(pending))
        results: list[TransferResult] = []
        try:
            results += run_transfers(backend, items, journal, progress, redo=redo)
            if inv is not None and follow:
                results += _follow(inv, vms, journal, backend, progress, redo,
                                   {i.item for i in items}, kw["wait_timeout"])
        finally:
            progress.close()
    for r in results:
        if not r.ok:
            click.echo(error_line(r.error), err=True)
    emit([_data(r) for r in results], output,
         ["ITEM", "BACKEND", "STATUS", "SIZE", "SENT", "TIME", "DESTINATION/ERROR"],
         _rows(results))
    failed = sum(1 for r in results if not r.ok)
    if failed:
        raise VmmoveError(f"{failed} of {len(results)} image(s) failed; fix and rerun "
                          "(finished ones are skipped, S3 uploads resume)")


def _follow(inv: Inventory, vms: tuple[str, ...], journal: Journal, backend: Backend,
            progress: BarProgress, redo: bool, seen: set[str],
            idle_limit: float) -> list[TransferResult]:
    """Upload disks as their conversions finish, until none is left in progress.

    Gives up when the convert journal has not moved for ``idle_limit`` seconds (no
    conversion running), naming the disks still waiting."""
    from converters.transfer.base import FAILED, TransferResult, transfer_one
    from migrate.progress import log
    from migrate.workdir import KIND_CONVERT

    results: list[TransferResult] = []
    reported: set[str] = set()
    last_change, last_seen = time.monotonic(), None
    logged: list[str] = []
    while True:
        items, pending = _inventory_items(inv, vms, journal, False, True)
        fresh = [i for i in items if i.item not in seen]
        for item in fresh:
            seen.add(item.item)
            progress.grow(item.size)
            results.append(transfer_one(backend, item, journal, progress, redo=redo))
        waiting = []
        for label, why in pending:
            if why.startswith("conversion failed") or "missing" in why:
                if label not in reported:
                    reported.add(label)
                    results.append(TransferResult(label, backend.name, FAILED, 0,
                                                  error=f"{label}: {why}"))
            else:
                waiting.append(label)
        if not waiting:
            return results
        marker = max((st.updated for st in journal.steps(KIND_CONVERT)), default=0.0)
        if fresh or marker != last_seen:
            last_change, last_seen = time.monotonic(), marker
        elif time.monotonic() - last_change > idle_limit:
            raise VmmoveError(f"no conversion progressed for {idle_limit:.0f}s; still waiting "
                              f"for {', '.join(waiting)} (is vmmove convert running?)")
        if waiting != logged:
            logged = waiting
            log(f"waiting for {len(waiting)} conversion(s): {', '.join(waiting[:4])}")
        time.sleep(0.5)


commands = [upload]
