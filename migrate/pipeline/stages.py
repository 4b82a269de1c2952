"""The stages of a plan wave, driving converters, transfer and manifests from a plan.

The runners of :data:`migrate.pipeline.itinerary.WAVE` (:data:`WAVE_RUNNERS`): each
function takes a loaded :class:`~migrate.plan.Plan` and a wave number, does its step for
that wave's VMs (skipped ones left out) in the plan's work folder and journal, and
returns a one-line summary, or raises :class:`VmmoveError` naming what failed.  All of
them are idempotent: the journal says what is already done.  ``vmmove migrate``,
``vmmove apply`` and the plan options of convert/upload/manifests share them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from migrate.core.errors import ProblemsError, UsageError, VmmoveError
from migrate.core.output import human_size
from migrate.core.progress import SILENT, Reporters
from migrate.plan import Plan, PlannedVM
from migrate.core.records import KIND_CONVERT, KIND_MANIFESTS, KIND_UPLOAD
from migrate.core.workdir import disk_item, image_basename

if TYPE_CHECKING:
    from converters.transfer.base import Backend, TransferItem
    from manifests.generate import ManifestSet
    from migrate.apply import Applied, ImportState, VmObjects
    from migrate.clients.cluster import Kube
    from migrate.core.mapping import StorageTarget


def data_disks(p: PlannedVM) -> list[Any]:
    return [d for d in p.vm.disks if d.device in ("disk", "lun")]


def wave_vms(plan: Plan, wave: int) -> list[PlannedVM]:
    vms = plan.wave(wave)
    if not vms:
        raise UsageError(f"{plan.path}: wave {wave} has no VM to migrate (all skipped)")
    return vms


# -- guest readiness (docs/guest-readiness.md) ----------------------------------------------


def inspect_stage(plan: Plan, wave: int, redo: bool = False) -> str:
    """Inspect the wave's staged guests; a note, not a failure, without libguestfs."""
    import shutil

    from migrate.pipeline.guest import inspect_summary, inspect_wave

    if plan.transfer.backend == "direct":
        return "inspect: skipped, transfer mode direct stages no local image to inspect"
    if shutil.which("guestfish") is None:
        return "inspect: skipped, libguestfs-tools is not installed (guests not inspected)"
    return inspect_summary(inspect_wave(plan, wave_vms(plan, wave), redo=redo))


def guest_stage(plan: Plan, wave: int) -> str:
    """Convert the wave's guests that need it (convert.guest), with virt-v2v."""
    from migrate.pipeline.guest import convert_wave as convert_guests

    if plan.transfer.backend == "direct":
        return "guest: skipped, transfer mode direct stages no local image to convert"
    return convert_guests(plan, wave_vms(plan, wave))


# -- convert ---------------------------------------------------------------------------------


def convert_options(plan: Plan, redo: bool = False) -> Any:
    """The ConvertOptions of the plan's ``convert`` section; a running VM's remedy names
    the plan setting (not a flag the plan's commands refuse)."""
    from converters.convert import ConvertOptions, plan_share_hint

    c = plan.convert
    options = ConvertOptions(format=c.format, compress=c.compress, verify=c.verify,
                             force_share=c.force_share, redo=redo,
                             share_hint=plan_share_hint(plan.path.name))
    if c.jobs:
        options.jobs = c.jobs
    return options


def convert_wave(plan: Plan, wave: int, redo: bool | set[str] = False,
                 reporters: Reporters = SILENT) -> str:
    """Convert every disk of the wave's VMs into the plan's work folder.  ``redo``: True
    converts every disk again, a set of VM keys those VMs' disks."""
    from converters.convert import FAILED, convert_disks
    from migrate.core.progress import disk_estimate as estimate

    vms = wave_vms(plan, wave)
    if plan.transfer.backend == "direct":
        return ("convert: nothing to convert here (transfer mode direct: in-cluster workers "
                "copy the disks from their hosts)")
    again = redo_items(redo, vms)
    # two batches when some VMs are redone: theirs with redo (the converter replaces its
    # own outputs), the others as usual
    batches = [(redo_flag, [(p.key, d.target) for p in vms for d in data_disks(p)
                            if (disk_item(p.vm, d) in again) == redo_flag])
               for redo_flag in (True, False)]
    disks = [d for p in vms for d in data_disks(p)]
    progress = reporters.convert(sum(estimate(d) for d in disks), len(disks),
                                 plan.convert.verify)
    results: list[Any] = []
    with _uploading_while_converting(plan, vms) as sent:
        try:
            for redo_flag, pairs in batches:
                if pairs:
                    results += convert_disks(plan.inventory, (), plan.workdir,
                                             convert_options(plan, redo=redo_flag), progress,
                                             disks=pairs)
        finally:
            progress.close()
    summary = disk_summary("convert", results, FAILED)
    uploaded = [r for r in sent if r.ok]
    if uploaded:
        summary += (f"; {len(uploaded)} image(s) sent to {plan.transfer.s3} while converted"
                    + (f" ({len(sent) - len(uploaded)} left to the upload phase)"
                       if len(uploaded) < len(sent) else ""))
    return summary


@contextmanager
def _uploading_while_converting(plan: Plan, vms: list[PlannedVM]) -> Iterator[list[Any]]:
    """With an S3 transfer target: while the block runs (the convert phase), a thread
    sends each disk a stream conversion writes as it grows
    (:func:`migrate.pipeline.upload.upload_while_converting`); yields the list its results
    land in (filled when the block ends).  Other targets: nothing (the upload proxy
    imports a finished image; direct mode stages nothing), or a target not usable now
    (the upload phase says why)."""
    import threading

    from migrate.pipeline.upload import upload_while_converting

    backend = backend_for(plan) if plan.transfer.backend == "s3" else None
    try:
        if backend is not None:
            backend.prepare()
    except VmmoveError:
        backend = None
    if backend is None:
        yield []
        return
    converting = threading.Event()
    converting.set()
    wanted = {disk_item(p.vm, d) for p in vms for d in data_disks(p)}
    sent: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            sent.extend(upload_while_converting(plan.inventory, plan.journal_path, backend,
                                                wanted, converting))
        except BaseException as exc:  # reported below; the upload phase sends the images
            errors.append(exc)

    thread = threading.Thread(target=run, name="upload-while-converting", daemon=True)
    thread.start()
    try:
        yield sent
    finally:
        converting.clear()
        thread.join()
    if errors and not isinstance(errors[0], VmmoveError):
        raise errors[0]


def disk_summary(step: str, results: list[Any], failed_status: str = "failed") -> str:
    """``STEP: 2 converted, 1 skipped``, or :class:`VmmoveError` listing each failed disk."""
    failed = [r for r in results if r.status == failed_status]
    if failed:
        raise ProblemsError(f"{step}: {len(failed)} of {len(results)} disk(s) failed",
                            [str(r.error) for r in failed])
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    return f"{step}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def convert_selection(inventory: Any, vms: tuple[str, ...], folder: Path, options: Any,
                      disks: list[tuple[str, str]] | None,
                      reporters: Reporters = SILENT) -> list[Any]:
    """``vmmove convert``: the disks of ``vms`` (or ``disks``, (vm key, target) pairs) of
    ``inventory`` into ``folder``; one result per disk, failures among them."""
    from converters.convert import convert_disks, select_disks
    from migrate.core.progress import disk_estimate

    data = [d for _, d in select_disks(inventory, vms, disks) if d.device in ("disk", "lun")]
    progress = reporters.convert(sum(disk_estimate(d) for d in data), len(data),
                                 options.verify)
    try:
        return convert_disks(inventory, vms, folder, options, progress, disks=disks)
    finally:
        progress.close()


# -- upload ----------------------------------------------------------------------------------


@dataclass
class KubeArgs:
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None


def backend_for(plan: Plan, kube: KubeArgs | None = None,
                namespace: str | None = None, storage: StorageTarget | None = None) -> Backend:
    """The transfer backend the plan names (S3 or the CDI upload proxy).

    ``storage``: the plan's storage map resolved for the disks this backend fills through
    the upload proxy (their DataVolumes are the VMs' disks); ``transfer.storageClass``
    still names the class when set."""
    t = plan.transfer
    if t.s3:
        from converters.transfer.s3 import S3Backend, S3Options

        return S3Backend(S3Options(url=t.s3, workdir=plan.workdir, endpoint_url=t.endpoint_url,
                                   profile=t.profile, region=t.region,
                                   secret_name=t.secret_name, secret_namespace=None,
                                   workers=t.parallel))
    if t.upload_proxy:
        from converters.transfer.uploadproxy import ProxyOptions, UploadProxyBackend

        k = kube or KubeArgs()
        s = storage or plan.maps.storage.default
        return UploadProxyBackend(ProxyOptions(
            url=t.upload_proxy, kubeconfig=k.kubeconfig, context=k.context,
            namespace=namespace or k.namespace or plan.namespace, insecure=t.insecure,
            storage_class=t.storage_class or s.storage_class, volume_mode=s.volume_mode,
            access_modes=s.access_modes, force_bind=t.force_bind,
            insecure_hint=f"transfer.insecure: true in {plan.path.name}"))
    raise UsageError(f"{plan.path}: no transfer target: set transfer.s3 (s3://BUCKET/PREFIX) "
                     "or transfer.uploadProxy (https://…)")


def transfer_items(plan: Plan, vms: list[PlannedVM]) -> tuple[list[TransferItem], list[str]]:
    """Items for the converted disks of ``vms``; the disks not converted yet, by name."""
    from converters.transfer.base import TransferItem
    from migrate.pipeline.guest import staged_image
    from migrate.core.naming import dns1123_label
    from migrate.core.journal import DONE

    items: list[TransferItem] = []
    missing: list[str] = []
    with plan.journal() as journal:
        for p in vms:
            for disk in data_disks(p):
                item = disk_item(p.vm, disk)
                label = f"{p.vm.name}/{disk.target}"
                step = journal.get(KIND_CONVERT, item)
                output = Path(step.output or "") if step and step.status == DONE \
                    else None
                checksum = step.checksum if step else None
                # a guest converted by virt-v2v (migrate.guest) replaces the staged image
                staged = staged_image(journal, item) if output is not None else None
                if staged is not None:
                    output, _, checksum = staged
                if output is None or not output.is_file():
                    missing.append(label + (" (converted image missing)" if output else ""))
                    continue
                items.append(TransferItem(
                    item=item, name=output.name, size=output.stat().st_size, path=output,
                    checksum=checksum,
                    virtual_size=step.virtual_size if step else None,
                    format=step.format if step else None,
                    dv_name=dns1123_label(image_basename(p.name, disk)),
                    label=f"{label} ({output.name})"))
    return items, missing


def redo_items(redo: bool | set[str], vms: list[PlannedVM]) -> set[str]:
    """The disk items to do again: every disk of ``vms`` (``redo`` True), those of the
    VMs whose keys ``redo`` holds, or none."""
    if not redo:
        return set()
    return {disk_item(p.vm, d) for p in vms for d in data_disks(p)
            if redo is True or p.key in redo}


def upload_wave(plan: Plan, wave: int, kube: KubeArgs | None = None,
                redo: bool | set[str] = False, reporters: Reporters = SILENT) -> str:
    """Send the wave's converted images to the plan's transfer target (each where the
    plan says now: a done transfer to another target is sent again).  ``redo``: True for
    every VM, or the keys of the VMs to send again."""
    from converters.transfer.base import run_transfers

    from migrate.core.journal import DONE

    vms = wave_vms(plan, wave)
    if plan.transfer.backend == "direct":
        return direct_wave(plan, wave, kube, redo=redo)
    items, missing = transfer_items(plan, vms)
    if missing:
        raise VmmoveError(f"upload: {len(missing)} disk(s) not converted yet "
                          f"({', '.join(missing)}); run the convert step first")
    namespaces = {p.namespace for p in vms}
    backend = backend_for(plan, kube, namespace=sorted(namespaces)[0])
    if plan.transfer.upload_proxy and len(namespaces) > 1:
        raise UsageError(f"{plan.path}: wave {wave}: the upload proxy fills DataVolumes in "
                         "one namespace; this wave spans " + ", ".join(sorted(namespaces)))
    with plan.journal() as journal:
        # Done before with the same bytes to the same target: not even asked again.
        done = {
            i.item for i in items
            if i.item not in redo_items(redo, vms)
            and (s := journal.get(KIND_UPLOAD, i.item)) is not None and s.status == DONE
            and s.checksum == i.checksum and s.target == backend.target_of(i)}
    todo = [i for i in items if i.item not in done]
    if not todo:
        return f"upload: {len(items)} image(s) uploaded before, nothing to send"
    groups: list[tuple[Backend, list[TransferItem]]] = [(backend, todo)]
    if plan.transfer.upload_proxy:
        # The proxy's DataVolumes become the VMs' disks: each gets the storage the plan's
        # map gives its disk, as a dataVolumeTemplate would (one backend per setting).
        disks = {disk_item(p.vm, d): d for p in vms for d in data_disks(p)}
        by_target: dict[Any, list[TransferItem]] = {}
        for i in todo:
            by_target.setdefault(plan.maps.storage.resolve(disks[i.item]), []).append(i)
        groups = [(backend_for(plan, kube, namespace=sorted(namespaces)[0], storage=target),
                   group) for target, group in by_target.items()]
    for b, _ in groups:
        b.prepare()
    bars = reporters.upload(sum(i.size for i in todo), len(todo))
    results: list[Any] = []
    try:
        with plan.journal() as journal:
            for b, group in groups:
                # redo: each item's earlier transfer forgotten (its measurement kept)
                results += run_transfers(b, group, journal, bars,  # type: ignore[arg-type]
                                         redo=bool(redo))
    finally:
        bars.close()
    failed = [r for r in results if not r.ok]
    if failed:
        raise ProblemsError(f"upload: {len(failed)} of {len(results)} image(s) failed",
                            [str(r.error) for r in failed])
    sent = sum(r.sent for r in results)
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    if done:
        counts["done before"] = len(done)
    return (f"upload to {backend.describe()}: "
            + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            + f", {human_size(sent)} sent")


# -- transfer mode direct --------------------------------------------------------------------


def direct_wave(plan: Plan, wave: int, kube: KubeArgs | None = None,
                redo: bool | set[str] = False, max_inflight: int | None = None) -> str:
    """Have in-cluster worker Jobs write the wave's disks from their hosts
    (converters/transfer/direct.py); one line per failed disk."""
    from converters.transfer.direct import DirectDisk, DirectTransfer
    from migrate.clients.cluster import connect
    from migrate.core.progress import log

    vms = wave_vms(plan, wave)
    disks = [DirectDisk(p.vm, d, p.name, p.namespace) for p in vms for d in data_disks(p)]
    settings = plan.workers
    if max_inflight:
        settings.max_inflight = max_inflight
    k = kube or KubeArgs()
    client = connect(k.kubeconfig, k.context, check=False)
    try:
        with plan.journal() as journal:
            results = DirectTransfer(client, journal, plan.maps.storage, settings, redo=redo,
                                     on_event=log).run(disks)
    finally:
        client.close()
    return disk_summary("direct (in-cluster workers)", results)


# -- preflight -------------------------------------------------------------------------------


def _reachable(url: str, timeout: float = 5.0) -> str | None:
    """None when a TCP connection to ``url``'s host and port opens, else why not."""
    import socket
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=timeout):
            return None
    except OSError as exc:
        return f"cannot reach {parts.hostname}:{port} ({exc.strerror or exc})"


def preflight_wave(plan: Plan, wave: int, kube: KubeArgs,
                   connect_kube: Any) -> tuple[list[str], Any]:
    """Everything the wave will need, checked before the first byte is converted, every
    problem reported (not only the first): the cluster (reachable, KubeVirt and CDI
    served: ``connect_kube()``), the transfer target (S3: credentials, bucket, a probe
    object put and deleted; upload proxy: reachable), every source disk as the
    conversion reads it, and the work folder's free space against ``qemu-img measure``.
    Returns ``(problems, the Kube client or None)``."""
    from converters.convert import preflight_disks

    problems: list[str] = []
    client = None
    try:
        client = connect_kube()
    except VmmoveError as exc:
        problems.append(f"cluster: {exc}")
    t = plan.transfer
    if t.backend == "direct":  # nothing converted or sent from here: the workers copy
        return problems, client
    try:
        backend = backend_for(plan, kube)
        if t.s3:
            backend.probe()  # type: ignore[attr-defined]
        elif t.upload_proxy:
            why = _reachable(t.upload_proxy)
            if why:
                problems.append(f"transfer.uploadProxy {t.upload_proxy}: {why}")
    except VmmoveError as exc:
        problems.append(f"transfer: {exc}")
    vms = wave_vms(plan, wave)
    pairs = [(p.key, d.target) for p in vms for d in data_disks(p)]
    if plan.journal_path.is_file():  # disks uploaded already need no conversion
        with plan.journal() as journal:
            pairs = [(p.key, d.target) for p in vms for d in data_disks(p)
                     if not journal.is_done(KIND_UPLOAD, disk_item(p.vm, d))]
    if pairs:
        found, _, _ = preflight_disks(plan.inventory, plan.workdir, convert_options(plan),
                                      pairs)
        problems += [f"convert: {p}" for p in found]
    return problems, client


# -- manifests -------------------------------------------------------------------------------


def elsewhere(plan: Plan, vms: list[PlannedVM]) -> list[str]:
    """The disks of ``vms`` whose recorded upload went to another target than the plan's
    (a one-off ``vmmove upload`` elsewhere, or the plan's target changed since), one
    problem each: their manifests would import from the wrong place."""
    from converters.transfer.base import TransferError
    from migrate.core.naming import dns1123_label
    from migrate.core.journal import DONE

    if plan.transfer.backend is None or not plan.journal_path.is_file():
        return []
    try:
        by_ns = {ns: backend_for(plan, namespace=ns) for ns in {p.namespace for p in vms}}
    except (TransferError, UsageError):
        return []  # the transfer step reports a target it cannot use
    problems = []
    with plan.journal() as journal:
        for p in vms:
            for d in data_disks(p):
                step = journal.get(KIND_UPLOAD, disk_item(p.vm, d))
                if step is None or step.status != DONE or not step.has_target:
                    continue
                want = by_ns[p.namespace].target_for(
                    str(step.name or ""),
                    dns1123_label(image_basename(p.name, d)))
                if step.target != want:
                    got = step.target
                    problems.append(
                        f"{p.vm.name}/{d.target}: uploaded to "
                        + "/".join(str(v) for k, v in got.items() if k != "backend")
                        + ", not to the plan's target; run vmmove upload "
                        f"{plan.path.name} --wave {p.wave} to send it there")
    return problems


def build_manifests(plan: Plan, vms: list[PlannedVM]) -> list[ManifestSet]:
    """The VirtualMachines (with DataVolume templates) and Secrets of ``vms``; refused
    (every problem listed) when a disk's upload went elsewhere than the plan says."""
    stale = elsewhere(plan, vms)
    if stale:
        raise ProblemsError(f"manifests: {len(stale)} disk(s) not at the plan's transfer "
                            "target", stale)
    from manifests.generate import GenerationContext, GenerationOptions, VmOverrides, build_all
    from manifests.sources import SourceResolver
    from migrate.core.workdir import target_names

    d = plan.defaults
    options = GenerationOptions(namespace=plan.namespace, run_strategy=d.run_strategy,
                                networks=plan.maps.networks, storage=plan.maps.storage,
                                keep_cdroms=d.keep_cdroms, preference=d.preference,
                                instancetype=d.instancetype, timezone=d.timezone)
    names = {**target_names(plan.inventory), **plan.names()}
    overrides = {p.key: VmOverrides(
        name=p.name, namespace=p.namespace, run_strategy=p.entry.run_strategy,
        preference=p.entry.preference, instancetype=p.entry.instancetype,
        memory=p.entry.memory, cpu_model=p.entry.cpu_model,
        disk_bus={t: o["bus"] for t, o in p.entry.disks.items() if "bus" in o},
        disk_size={t: o["size"] for t, o in p.entry.disks.items() if "size" in o},
        nic_mac={i: o["mac"] for i, o in p.entry.nics.items() if "mac" in o},
        nic_model={i: o["model"] for i, o in p.entry.nics.items() if "model" in o},
        labels=p.entry.labels, annotations=p.entry.annotations,
        node_selector=p.entry.node_selector, affinity=p.entry.affinity) for p in vms}
    ctx = GenerationContext(options=options, sources=SourceResolver.from_workdir(plan.workdir),
                            names=names, overrides=overrides,
                            scanned_at=plan.inventory.scanned_at)
    sets, failed = build_all([p.vm for p in vms], ctx)
    if failed:
        raise ProblemsError(f"manifests: {len(failed)} of {len(vms)} VM(s) cannot get "
                            "manifests", [str(e) for e in failed])
    return sets


def manifests_wave(plan: Plan, wave: int) -> str:
    """Write the wave's manifests under ``<workdir>/manifests`` and journal them."""
    from manifests.kustomize import write_tree
    from migrate.apply import digest

    vms = wave_vms(plan, wave)
    sets = build_manifests(plan, vms)
    write_tree(sets, plan.manifests_dir)
    with plan.journal() as journal:
        for s in sets:
            journal.start(KIND_MANIFESTS, s.vm_key)
            journal.done(KIND_MANIFESTS, s.vm_key, checksum=digest(s.virtual_machine),
                         name=s.name, namespace=s.namespace,
                         file=str(plan.manifests_dir / s.namespace / f"{s.name}.yaml"),
                         secrets=[x["metadata"]["name"] for x in s.secrets],
                         notes=len(s.notes))
    return f"manifests: {len(sets)} VirtualMachine(s) in {plan.manifests_dir}"


# -- apply -----------------------------------------------------------------------------------


def vm_objects(plan: Plan, sets: list[ManifestSet]) -> list[VmObjects]:
    """What apply sends for each VM, and which DataVolume fills which disk."""
    from migrate.apply import ImportItem, VmObjects
    from migrate.core.journal import DONE

    by_key = {p.key: p for p in plan.vms}
    out: list[VmObjects] = []
    with plan.journal() as journal:
        uploads = {s.dv: s.item for s in journal.steps(KIND_UPLOAD)
                   if s.status == DONE and s.dv}
    for s in sets:
        p = by_key[s.vm_key]
        targets = {d.target: disk_item(p.vm, d) for d in p.vm.disks}
        imports: list[ImportItem] = []
        spec = s.virtual_machine["spec"]
        templates = {t["metadata"]["name"]: t for t in spec.get("dataVolumeTemplates") or []}
        for vol in spec["template"]["spec"].get("volumes") or []:
            dv = (vol.get("dataVolume") or {}).get("name")
            if not dv:
                continue
            if dv in templates:
                target = templates[dv]["metadata"].get("annotations", {}).get(
                    "vmmove.io/source-disk")
                item = targets.get(target or "")
            else:
                item = uploads.get(dv)
            if item is None:
                continue
            imports.append(ImportItem(item, f"{p.vm.name}/{item.rsplit('/', 1)[-1]}", dv,
                                      s.namespace))
        out.append(VmObjects(s.vm_key, p.vm.name, s.virtual_machine, list(s.secrets), imports))
    return out


@dataclass
class ApplyOutcome:
    applied: list[Applied]
    imports: list[ImportState]

    @property
    def ok(self) -> bool:
        return all(a.ok for a in self.applied) and all(
            s.outcome in ("imported", "waiting") for s in self.imports)


def apply_wave(plan: Plan, wave: int, kube: Kube | None, *, dry_run: str | None = None,
               force: bool = False, wait: bool = True, timeout: float = 3600.0,
               max_restarts: int = 3, sets: list[ManifestSet] | None = None,
               on_applied: Any = None, reporters: Reporters = SILENT) -> ApplyOutcome:
    """Apply the wave's objects (namespaces, Secrets, VMs), then watch the imports."""
    from migrate.apply import apply_objects, watch_imports

    vms = wave_vms(plan, wave)
    sets = sets if sets is not None else build_manifests(plan, vms)
    objects = vm_objects(plan, sets)
    with plan.journal() as journal:
        applied = apply_objects(kube, objects, journal if not dry_run else None,
                                dry_run=dry_run, force=force, on_applied=on_applied)
        states: list[ImportState] = []
        if wait and not dry_run and kube is not None and all(a.ok for a in applied):
            active = {a.item for a in applied if a.result in ("applied", "unchanged")}
            items = [i for o in objects if o.key in active for i in o.imports]
            if items:
                states = watch_imports(kube, items, journal, timeout=timeout,
                                       max_restarts=max_restarts,
                                       progress=reporters.imports())
    return ApplyOutcome(applied, states)


def apply_summary(outcome: ApplyOutcome) -> str:
    counts: dict[str, int] = {}
    for a in outcome.applied:
        counts[a.result] = counts.get(a.result, 0) + 1
    text = "apply: " + ", ".join(f"{n} {r}" for r, n in sorted(counts.items()))
    if outcome.imports:
        imp: dict[str, int] = {}
        for s in outcome.imports:
            imp[str(s.outcome)] = imp.get(str(s.outcome), 0) + 1
        text += "; imports: " + ", ".join(f"{n} {o}" for o, n in sorted(imp.items()))
    return text


def apply_errors(outcome: ApplyOutcome) -> list[str]:
    errors = [str(a.error) for a in outcome.applied if not a.ok]
    for s in outcome.imports:
        if s.outcome == "failed":
            errors.append(f"{s.item.label}: DataVolume {s.item.namespace}/{s.item.dv} import "
                          f"failed: {s.reason}")
        elif s.outcome == "timeout":
            errors.append(f"{s.item.label}: DataVolume {s.item.namespace}/{s.item.dv}: "
                          f"{s.reason}")
    return errors


# -- plan arguments for the single-step commands -------------------------------------------------


def plan_convert_args(plan_file: str, wave: int | None, vms: tuple[str, ...]) -> tuple[
        Plan, list[tuple[str, str]], Any]:
    """For ``vmmove convert PLAN --wave N [VM…]``: the plan, its (vm key, disk) pairs and
    the ConvertOptions of its ``convert`` section."""
    from migrate.plan import load_plan

    plan = load_plan(plan_file)
    if wave is None:
        raise UsageError(f"{plan_file} is a plan: say which wave to convert (--wave N)")
    chosen = wave_vms(plan, wave)
    if vms:
        unknown = [v for v in vms if not any(v in (p.vm.name, p.vm.uuid, p.name)
                                             for p in chosen)]
        if unknown:
            raise UsageError(f"not in wave {wave} of {plan_file}: {', '.join(unknown)}")
        chosen = [p for p in chosen if {p.vm.name, p.vm.uuid, p.name} & set(vms)]
    options = convert_options(plan)
    return plan, [(p.key, d.target) for p in chosen for d in data_disks(p)], options


def plan_manifest_sets(plan_file: str, inventory: str | None, wave: int | None,
                       vms: tuple[str, ...] = ()) -> tuple[Plan, list[ManifestSet]]:
    """For ``vmmove manifests --plan PLAN [INVENTORY] [--wave N] [--vm NAME…]``: the
    manifests of the plan's VMs (one wave or every wave, narrowed to ``vms`` by source or
    target name or UUID) with the plan's namespace, maps, defaults and per-VM overrides.

    INVENTORY is optional (the plan names its own); when given it must be the plan's.
    """
    from migrate.plan import load_plan

    plan = load_plan(plan_file)
    if inventory is not None and Path(inventory).absolute() != plan.inventory_path:
        raise UsageError(f"{inventory}: the plan {plan_file} is about {plan.inventory_path}; "
                         "give that inventory, or none")
    numbers = [wave] if wave is not None else plan.wave_numbers()
    planned = [p for n in numbers for p in plan.wave(n)]
    if vms:
        missing = [ref for ref in vms if not any(ref in (p.vm.name, p.name, p.vm.uuid, p.key)
                                                 for p in planned)]
        if missing:
            where = f"wave {wave} of {plan_file}" if wave is not None else plan_file
            raise UsageError(f"{where}: no VM named {', '.join(missing)}")
        planned = [p for p in planned if {p.vm.name, p.name, p.vm.uuid, p.key} & set(vms)]
    if not planned:
        raise UsageError(f"{plan_file}: no VM to write manifests for (all skipped)")
    return plan, build_manifests(plan, planned)


def plan_manifests(plan_file: str, inventory: str | None, wave: int | None,
                   out: str | None, vms: tuple[str, ...] = ()
                   ) -> tuple[list[tuple[str, str, str]], str]:
    """Write :func:`plan_manifest_sets` under ``out`` (default the plan's
    ``<workdir>/manifests``); returns the written rows and the folder."""
    from manifests.kustomize import write_tree

    plan, sets = plan_manifest_sets(plan_file, inventory, wave, vms)
    folder = Path(out) if out else plan.manifests_dir
    return write_tree(sets, folder), str(folder)


#: Upload record fields shown by ``upload PLAN --wave N -o json|yaml`` (never credentials:
#: the Secret's name is shown, not its file or contents).
UPLOAD_FIELDS = ("backend", "url", "key", "bucket", "dv", "namespace", "size", "sent",
                 "seconds", "secret")


def wave_upload_records(plan: Plan, wave: int) -> list[dict[str, Any]]:
    """Where each disk of the wave stands in the journal's upload records, for ``-o``:
    item, VM, disk, status (``not uploaded`` without a record), checksum, times (RFC 3339)
    and the :data:`UPLOAD_FIELDS` the record has."""
    from migrate.core.output import rfc3339

    records = []
    with plan.journal() as journal:
        for p in wave_vms(plan, wave):
            for disk in data_disks(p):
                item = disk_item(p.vm, disk)
                step = journal.get(KIND_UPLOAD, item)
                record: dict[str, Any] = {"item": item, "vm": p.vm.name, "disk": disk.target,
                                          "status": step.status if step else "not uploaded"}
                if step is not None:
                    record.update(step.fields(UPLOAD_FIELDS))
                    record.update(checksum=step.checksum, started=rfc3339(step.started),
                                  finished=rfc3339(step.finished), error=step.error)
                records.append(record)
    return records


def plan_upload(plan_file: str, wave: int | None, kube: KubeArgs, redo: bool,
                reporters: Reporters = SILENT) -> str:
    """For ``vmmove upload PLAN --wave N``: the wave's converted images to the plan's
    transfer target; returns the summary line."""
    from migrate.pipeline.wave import plan_lock
    from migrate.plan import load_plan

    plan = load_plan(plan_file)
    if wave is None:
        raise UsageError(f"{plan_file} is a plan: say which wave to upload (--wave N)")
    if kube.namespace:
        plan.use_namespace(kube.namespace)
    with plan_lock(plan):
        return upload_wave(plan, wave, kube, redo=redo, reporters=reporters)


# -- the wave itinerary, run ------------------------------------------------------------------


def wave_runners(plan: Plan, wave: int, kube: Kube, kube_args: KubeArgs, *,
                 redo: bool | set[str],
                 force: bool, wait: bool, timeout: float, max_restarts: int,
                 outcome_box: dict[str, Any], reporters: Reporters = SILENT) -> dict[str, Any]:
    """The function that runs each phase of :data:`~migrate.pipeline.itinerary.WAVE` for
    ``wave``, by phase name (each returns its one-line summary or raises VmmoveError);
    the apply phase leaves its :class:`ApplyOutcome` in ``outcome_box["outcome"]``."""

    def apply_stage() -> str:
        outcome = apply_wave(plan, wave, kube, force=force, wait=wait, timeout=timeout,
                             max_restarts=max_restarts, reporters=reporters)
        outcome_box["outcome"] = outcome
        errors = apply_errors(outcome)
        if errors:
            raise ProblemsError(f"apply: {len(errors)} problem(s)", errors)
        return apply_summary(outcome)

    return {
        "convert": lambda: convert_wave(plan, wave, redo=redo, reporters=reporters),
        "inspect": lambda: inspect_stage(plan, wave, redo=redo),
        "guest": lambda: guest_stage(plan, wave),
        "upload": lambda: upload_wave(plan, wave, kube_args, redo=redo, reporters=reporters),
        "manifests": lambda: manifests_wave(plan, wave),
        "apply": apply_stage,
    }


def redo_scope(plan: Plan, wave: int, vms: tuple[str, ...], redo: bool) -> bool | set[str]:
    """What ``--redo`` does again: the whole wave (True), nothing (False), or the keys of
    the VMs named (which must be in the wave, and go with ``--redo``)."""
    if not vms:
        return redo
    if not redo:
        raise UsageError("migrate: VM names go with --redo (the VMs to do again)")
    from migrate.pipeline.cutover import select_vms

    return {p.key for p in select_vms(plan, wave, vms)}


def wave_to_stage(plan_file: str, wave: int, vms: tuple[str, ...], redo: bool,
                  namespace: str | None, max_inflight: int | None) -> tuple[Plan, bool | set[str]]:
    """The plan ``vmmove migrate --stage`` stages wave ``wave`` of (its namespace and
    ``workers.maxInflight`` as given) and what ``--redo`` does again (:func:`redo_scope`);
    :class:`UsageError` for a wave with no VM or a plan with no transfer target."""
    from migrate.plan import load_plan

    plan = load_plan(plan_file)
    if max_inflight:
        plan.workers.max_inflight = max_inflight
    if namespace:
        plan.use_namespace(namespace)
    if not plan.wave(wave):
        raise UsageError(f"{plan.path}: wave {wave} has no VM to migrate (all skipped)")
    if plan.transfer.backend is None:
        raise UsageError(f"{plan.path}: no transfer target: set transfer.s3, "
                         "transfer.uploadProxy or transfer.mode: direct")
    return plan, redo_scope(plan, wave, vms, redo)


def stage_wave(plan: Plan, wave: int, kube_args: KubeArgs, *, redo: bool | set[str],
               force: bool,
               wait: bool, timeout: float, max_restarts: int, on_result: Any = None,
               reporters: Reporters = SILENT) -> tuple[list[Any], ApplyOutcome | None]:
    """``vmmove migrate PLAN --wave N --stage``: every phase of the wave itinerary in
    order under the plan lock, stopping at the first that fails; the stage results and
    the apply outcome (None when apply did not run).  ``redo``: True for every VM, or the
    keys of the VMs to convert and send again.  Everything the wave needs is checked
    first (:func:`preflight_wave`) and every problem raised at once as
    :class:`~migrate.plan.PlanError`: no disk is converted for a wave that cannot land."""
    from migrate.clients.cluster import connect
    from migrate.pipeline.itinerary import WAVE
    from migrate.pipeline.wave import Stage, run_stages
    from migrate.plan import PlanError

    # every problem now, not one after hours of conversion
    problems, kube = preflight_wave(plan, wave, kube_args,
                                    lambda: connect(kube_args.kubeconfig, kube_args.context))
    if problems:
        if kube is not None:
            kube.close()
        raise PlanError(plan.path, [f"wave {wave}: preflight: {p}" for p in problems])
    box: dict[str, Any] = {}
    try:
        runners = wave_runners(plan, wave, kube, kube_args, redo=redo, force=force,
                               wait=wait, timeout=timeout, max_restarts=max_restarts,
                               outcome_box=box, reporters=reporters)
        stages = [Stage(phase.name, runners[phase.name]) for phase in WAVE.phases]
        results = run_stages(plan, wave, stages, on_result=on_result)
    finally:
        kube.close()
    return results, box.get("outcome")


def apply_waves(plan: Plan, numbers: list[int], kube_args: KubeArgs, *, dry_run: str | None,
                force: bool, wait: bool, timeout: float, max_restarts: int,
                reporters: Reporters = SILENT) -> list[tuple[int, ApplyOutcome]]:
    """``vmmove apply PLAN [--wave N]``: apply each wave of ``numbers`` (skipping empty
    ones) under the plan lock and watch its imports; stops after the first wave with a
    problem (:func:`apply_errors`).  ``dry_run`` ``client`` contacts no cluster."""
    from migrate.clients.cluster import connect
    from migrate.pipeline.wave import plan_lock

    for n in numbers:
        plan.wave(n)  # an unknown wave fails before anything is contacted
    outcomes: list[tuple[int, ApplyOutcome]] = []
    kube = None if dry_run == "client" else connect(kube_args.kubeconfig, kube_args.context)
    try:
        with plan_lock(plan):
            for n in numbers:
                if not plan.wave(n):
                    continue
                outcome = apply_wave(plan, n, kube, dry_run=dry_run, force=force, wait=wait,
                                     timeout=timeout, max_restarts=max_restarts,
                                     reporters=reporters)
                outcomes.append((n, outcome))
                if apply_errors(outcome):
                    break
    finally:
        if kube is not None:
            kube.close()
    return outcomes
