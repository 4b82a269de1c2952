"""Manifests for VMs of an inventory outside a plan (``vmmove manifests INVENTORY``):
maps, generation options and the work folder's records composed into manifest sets."""

from __future__ import annotations

from typing import TYPE_CHECKING

from migrate.core.errors import UsageError, VmmoveError

if TYPE_CHECKING:
    from manifests.generate import ManifestSet


def _check_options(namespace: str, timezone: str | None, blank: tuple[str, ...]) -> None:
    """Refuse a namespace that is no DNS-1123 label, an unknown time zone, a --blank item
    that is not VM/DISK (:class:`UsageError` naming the option)."""
    from migrate.core.naming import is_dns1123_label

    if not is_dns1123_label(namespace):
        raise UsageError(f"--namespace {namespace!r} is not a DNS-1123 label")
    if timezone:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise UsageError(f"--timezone {timezone!r} is not a known time zone "
                             "(e.g. Europe/Berlin)") from None
    for item in blank:
        if "/" not in item:
            raise UsageError(f"--blank {item!r}: expected VM/DISK, e.g. web/vdb")


def inventory_manifest_sets(
    inventory: str, vms: tuple[str, ...], *, namespace: str, workdir: str | None,
    http_base: str | None, blank: tuple[str, ...], map_file: str | None,
    network_pairs: tuple[str, ...], storage_class: str | None, volume_mode: str | None,
    access_modes: tuple[str, ...], run_strategy: str, keep_cdroms: bool,
    timezone: str | None, preference: str, preferences_file: str | None,
    instancetype: str, instancetypes_file: str | None, schemas: str | None,
    one: str | None = None,
) -> tuple[list[ManifestSet], list[str], int]:
    """The manifest set of every selected VM of ``inventory`` (``vms``: names or UUIDs;
    all when empty), each disk's source from the work folder's records, ``http_base`` or
    blank; ``schemas``: also validated against the KubeVirt/CDI schemas in that folder.
    ``one``: the output format that prints a single VM (refused for several, and its
    refusal raised as :class:`VmmoveError`).  Returns the sets that can be written, one
    line per VM refused (it cannot get manifests, or fails the schemas), and how many VMs
    were selected; nothing is written here.
    """
    from manifests.generate import GenerationContext, GenerationOptions, build_all
    from manifests.preferences import Catalog

    _check_options(namespace, timezone, blank)
    from manifests.sources import SourceResolver
    from migrate.core.mapping import Maps, NetworkMap, StorageMap, load_maps
    from migrate.core.serialize import load_inventory
    from migrate.core.workdir import target_names

    inv = load_inventory(inventory)
    selected = inv.vms
    if vms:
        missing = [r for r in vms if inv.find(r) is None]
        if missing:
            raise UsageError(f"{inventory}: no VM named {', '.join(missing)}")
        picked = {id(vm) for r in vms for vm in inv.find_all(r)}
        selected = [vm for vm in inv.vms if id(vm) in picked]
    if one is not None and len(selected) != 1:
        raise UsageError(f"-o {one} prints one VM; {len(selected)} selected (use --vm NAME)")
    maps = load_maps(map_file) if map_file else Maps()
    networks = maps.networks.merged(NetworkMap.from_options(network_pairs))
    given = {"storageClass": storage_class, "volumeMode": volume_mode, "accessModes": list(access_modes)}
    cli_storage = StorageMap.from_data({k: v for k, v in given.items() if v}, "command line")
    storage = maps.storage.with_default(cli_storage.default)
    options = GenerationOptions(
        namespace=namespace,
        run_strategy=run_strategy,
        networks=networks,
        storage=storage,
        keep_cdroms=keep_cdroms,
        preference=preference,
        instancetype=instancetype,
        timezone=timezone,
    )
    ctx = GenerationContext(
        options=options,
        sources=SourceResolver.from_workdir(workdir, http_base, set(blank)),
        names=target_names(inv),
        catalog=Catalog.load(preferences_file, instancetypes_file),
        scanned_at=inv.scanned_at,
    )
    sets, failed = build_all(selected, ctx)
    refused = [str(e) for e in failed]
    if schemas:
        from manifests.validate import SchemaValidator

        validator = SchemaValidator(schemas)
        valid = []
        for s in sets:
            errors = validator.virtual_machine(s.virtual_machine)
            if errors:
                refused.append(f"VM {s.name}: schema validation failed: " + "; ".join(errors[:5]))
            else:
                valid.append(s)
        sets = valid
    if one is not None and refused:
        raise VmmoveError(refused[0])
    return sets, refused, len(selected)
