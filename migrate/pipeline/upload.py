"""Uploading converted images outside a plan (``vmmove upload INVENTORY|DIR``): which
images, which backend, the run lock, and the follow mode beside a running conversion.

Transfer backends (:mod:`converters.transfer`) move the bytes; this module composes them
with the journal's convert records, which is why it is in the pipeline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from migrate.core.errors import UsageError, VmmoveError

if TYPE_CHECKING:
    from converters.transfer.base import Backend, Subscriber, TransferItem, TransferResult
    from migrate.core.journal import Journal
    from migrate.core.model import VM, Disk, Inventory

#: File name endings ``vmmove upload DIR`` treats as disk images.
IMAGE_SUFFIXES = (".qcow2", ".qcow", ".raw", ".img", ".vmdk", ".vdi", ".vhd", ".vhdx", ".iso",
                  ".raw.gz", ".raw.xz", ".img.gz", ".img.xz", ".qcow2.gz", ".qcow2.xz")
#: Formats CDI imports as they are (it converts them itself; all but raw need scratch space).
AS_IS_FORMATS = {"raw", "qcow2", "vmdk", "vdi", "vpc", "vhdx"}
SINGLE_FILE_VMDK = {"monolithicSparse", "streamOptimized"}


@contextmanager
def upload_lock(journal_file: Path) -> Iterator[None]:
    """One upload run per work folder; a conversion may run beside it (its own lock)."""
    from migrate.core.files import LockBusy, run_lock

    try:
        with run_lock(f"{journal_file}.upload.lock",
                      f"{journal_file.parent}: another vmmove upload is running on this "
                      "work folder"):
            yield
    except LockBusy as exc:
        raise VmmoveError(exc.busy) from None


# -- what to upload -----------------------------------------------------------------------------
def folder_items(folder: Path, journal: Journal, need_info: bool) -> list[TransferItem]:
    """Every image file of a folder; checksums from the folder's convert records."""
    from converters.transfer.base import TransferItem
    from migrate.core.naming import dns1123_label
    from migrate.sources.containment import Export, open_path
    from migrate.core.journal import DONE
    from migrate.core.records import KIND_CONVERT

    converted = {
        str(Path(s.output).resolve()): s
        for s in journal.steps(KIND_CONVERT)
        if s.status == DONE and s.output
    }
    items = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if not path.name.lower().endswith(IMAGE_SUFFIXES):
            continue
        step = converted.get(str(path.resolve()))
        virtual = step.virtual_size if step else None
        fmt = step.format if step else None
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


def as_is_problem(vm: VM, disk: Disk) -> tuple[str | None, Any]:
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


def inventory_items(inv: Inventory, vms: tuple[str, ...], journal: Journal, as_is: bool,
                     follow: bool) -> tuple[list[TransferItem], list[tuple[str, str]]]:
    """Items for the converted disks; (item, reason) for the disks not ready."""
    from converters.transfer.base import TransferItem
    from migrate.core.naming import dns1123_label
    from migrate.core.journal import DONE, FAILED
    from migrate.core.workdir import disk_item, image_basename, target_names
    from migrate.core.records import KIND_CONVERT

    chosen = inv.select(vms)
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
            if step is not None and step.status == DONE and step.output:
                output = Path(step.output)
                if not output.is_file():
                    not_ready.append((label, f"converted image {output} is missing"))
                    continue
                items.append(TransferItem(
                    item=item, name=output.name, size=output.stat().st_size, path=output,
                    checksum=step.checksum, virtual_size=step.virtual_size,
                    format=step.format, dv_name=dv_name,
                    label=f"{label} ({output.name})"))
                continue
            if as_is and disk.path and disk.source_type == "file":
                problem, chain = as_is_problem(vm, disk)
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


def growing_items(inv: Inventory, vms: tuple[str, ...], journal: Journal,
                  idle: float) -> list[TransferItem]:
    """Items for the disks a stream conversion is writing right now (their convert step
    running with a ``growing`` field, :mod:`converters.watermark`): ``path`` the temporary
    file, ``size`` its bound, ``growth`` following it through the journal."""
    from converters.transfer.base import TransferItem
    from converters.watermark import JournalGrowth, active
    from migrate.core.journal import RUNNING
    from migrate.core.naming import dns1123_label
    from migrate.core.records import KIND_CONVERT
    from migrate.core.workdir import disk_item, image_basename, target_names

    names = target_names(inv)
    items = []
    for vm in inv.select(vms):
        for disk in vm.disks:
            step = journal.get(KIND_CONVERT, disk_item(vm, disk))
            growing = step.growing if step is not None else None
            if step is None or step.status != RUNNING or not growing or not step.output:
                continue
            output = Path(step.output)
            items.append(TransferItem(
                item=step.item, name=output.name, size=int(growing["bound"]),
                path=Path(growing["temp"]), virtual_size=step.virtual_size,
                format=step.format, dv_name=dns1123_label(image_basename(names[vm.key], disk)),
                label=f"{vm.name}/{disk.target} ({output.name})",
                growth=active(growing["temp"])  # converting in this process
                or JournalGrowth(journal, step.item, growing["temp"], idle)))
    return items


def backend_for_options(s3: str | None, proxy: str | None, workdir: Path,
                        kw: dict[str, Any]) -> Backend:
    """The backend ``vmmove upload`` options name: S3 (``s3``) or the upload proxy
    (``proxy``); ``kw`` holds the other options by name (``max_bandwidth`` and ``size`` in
    bytes).  UsageError unless exactly one destination is given."""
    if bool(s3) == bool(proxy):
        raise UsageError("choose one destination: --s3 s3://bucket/prefix or "
                         "--cdi-uploadproxy URL")
    if s3:
        from converters.transfer.s3 import S3Backend, S3Options

        return S3Backend(S3Options(
            url=s3, workdir=workdir, endpoint_url=kw["endpoint_url"], profile=kw["profile"],
            region=kw["region"], secret_name=kw["secret_name"],
            secret_namespace=kw["namespace"], workers=kw["parallel"],
            max_bandwidth=kw["max_bandwidth"]))
    from converters.transfer.uploadproxy import ProxyOptions, UploadProxyBackend

    assert proxy
    return UploadProxyBackend(ProxyOptions(
        url=proxy, kubeconfig=kw["kubeconfig"], context=kw["context"],
        namespace=kw["namespace"], insecure=kw["insecure"], storage_class=kw["storage_class"],
        access_mode=kw["access_mode"], volume_mode=kw["volume_mode"],
        size=kw["size"], force_bind=kw["force_bind"],
        wait_timeout=kw["wait_timeout"]))

def upload_images(source: str, vms: tuple[str, ...], workdir: str | None, s3: str | None,
                  proxy: str | None, as_is: bool, follow: bool, redo: bool,
                  progress_factory: Callable[[int, int], Subscriber],
                  kw: dict[str, Any]) -> list[TransferResult]:
    """``vmmove upload INVENTORY|DIR``: send converted images (or, ``as_is``, source images
    CDI imports itself) to S3 or the upload proxy; one result per image.

    With an INVENTORY the images are the outputs the work folder's convert records name
    (disks not converted yet are refused and listed, or awaited with ``follow``); with a
    DIR every image file in it.  ``progress_factory(total bytes, images)`` makes the
    subscriber (closed here).  Raises :class:`UsageError` for a bad request.
    """
    from converters.transfer.base import run_transfers
    from migrate.core.journal import Journal
    from migrate.core.serialize import load_inventory
    from migrate.core.workdir import journal_path

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
    backend = backend_for_options(s3, proxy, folder, kw)
    jf = journal_path(folder)
    with Journal(jf) as journal, upload_lock(jf):
        if inv is None:
            items = folder_items(src, journal, need_info=bool(proxy))
            pending: list[tuple[str, str]] = []
        else:
            items, pending = inventory_items(inv, vms, journal, as_is, follow)
            if pending and not follow:
                listed = "; ".join(f"{label}: {why}" for label, why in pending)
                raise UsageError(f"{len(pending)} disk(s) not ready to upload ({listed}); run "
                                 "vmmove convert first (or --follow while it runs)")
        backend.prepare()
        total = sum(i.size for i in items)
        progress = progress_factory(total, len(items) + len(pending))
        results: list[TransferResult] = []
        try:
            results += run_transfers(backend, items, journal, progress, redo=redo)
            if inv is not None and follow:
                results += follow_conversions(inv, vms, journal, backend, progress, redo,
                                              {i.item for i in items}, kw["wait_timeout"])
        finally:
            close = getattr(progress, "close", None)
            if close is not None:
                close()
    return results


def follow_conversions(inv: Inventory, vms: tuple[str, ...], journal: Journal, backend: Backend,
            progress: Subscriber, redo: bool, seen: set[str],
            idle_limit: float) -> list[TransferResult]:
    """Upload disks as their conversions finish, until none is left in progress.

    Gives up when the convert journal has not moved for ``idle_limit`` seconds (no
    conversion running), naming the disks still waiting."""
    from converters.transfer.base import FAILED, TransferResult, transfer_one
    from migrate.core.progress import log
    from migrate.core.records import KIND_CONVERT

    results: list[TransferResult] = []
    reported: set[str] = set()
    last_change, last_seen = time.monotonic(), None
    logged: list[str] = []
    while True:
        items, pending = inventory_items(inv, vms, journal, False, True)
        fresh = [i for i in items if i.item not in seen]
        if not fresh and getattr(backend, "follows_growth", False):
            # none finished: send one being written as it grows (S3: parts in any order)
            fresh = [i for i in growing_items(inv, vms, journal, idle_limit)
                     if i.item not in seen][:1]
        for item in fresh:
            seen.add(item.item)
            progress.grow(item.size)
            result = transfer_one(backend, item, journal, progress, redo=redo)
            results.append(result)
            if not result.ok:
                reported.add(item.label.split(" (")[0])  # its conversion's failure said it
        waiting = []
        for label, why in pending:
            if why.startswith("conversion failed") or "missing" in why:
                if label not in reported:
                    reported.add(label)
                    results.append(TransferResult(label, backend.name, FAILED, 0,
                                                  error=f"{label}: {why}"))
            elif label not in reported:  # (a failed follow of its conversion: said)
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


def upload_while_converting(inv: Inventory, journal_file: Path, backend: Backend,
                            wanted: set[str], converting: Any,
                            idle: float = 300.0) -> list[TransferResult]:
    """Send each disk of ``wanted`` (convert items) that a stream conversion is writing,
    as it grows (``backend`` follows growing files: S3), while ``converting`` (a
    :class:`threading.Event`) is set; then return.  One transfer at a time (memory:
    parts in flight × part size); each recorded in the journal as any upload, so the
    transfer phase after finds it done and sends nothing again.  A failed one is
    returned failed (that phase sends it again)."""
    from converters.transfer.base import Subscriber, transfer_one
    from migrate.core.journal import Journal
    from migrate.core.progress import log

    results: list[TransferResult] = []
    seen: set[str] = set()
    with Journal(journal_file) as journal:
        while True:
            fresh = [i for i in growing_items(inv, (), journal, idle)
                     if i.item in wanted and i.item not in seen]
            if not fresh:
                if not converting.is_set():
                    return results
                time.sleep(0.2)
                continue
            item = fresh[0]
            seen.add(item.item)
            log(f"{item.label}: sending to {backend.describe()} while it is converted")
            result = transfer_one(backend, item, journal, Subscriber())
            if not result.ok:
                log(f"{result.error} (the upload phase sends it again)")
            results.append(result)
