"""Making a plan (``vmmove plan INVENTORY --out PLAN``): the inventory, the maps and
transfer target given, and (``skip_blocked``) the assessment composed into a plan file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from migrate.core.errors import UsageError
from migrate.core.model import Inventory


def write_plan(inventory: str, out: str, *, by: str, waves: tuple[str, ...],
               max_vms: int | None, max_size: int | None, namespace: str,
               network_pairs: tuple[str, ...], map_file: str | None,
               storage_class: str | None, s3: str | None, endpoint_url: str | None,
               profile: str | None, region: str | None, proxy: str | None,
               run_strategy: str, preference: str, skip_blocked: bool,
               workdir: str | None, stage_running: bool = False) -> Inventory:
    """Write the plan file ``out`` for ``inventory`` (atomically) and return the inventory
    read.  ``max_size`` in bytes; ``skip_blocked``: VMs with a critical assessment concern
    are planned with ``skip``; ``stage_running``: running VMs are staged (forceShare).  Raises :class:`UsageError` for contradictory options."""
    from migrate.plan import generate_plan, save_plan

    from migrate.core.mapping import load_maps
    from migrate.core.serialize import load_inventory

    inv = load_inventory(inventory)
    networks: dict[str, str] = {}
    storage: dict[str, Any] | None = None
    if map_file:
        import yaml

        load_maps(map_file)  # checked before it is copied
        raw = yaml.safe_load(Path(map_file).read_text(encoding="utf-8")) or {}
        networks.update({str(k): str(v) for k, v in (raw.get("networks") or {}).items()})
        storage = raw.get("storage")
    for pair in network_pairs:
        source, sep, target = pair.rpartition("=")
        if not sep or not source:
            raise UsageError(f"--network {pair!r}: expected SOURCE=TARGET, e.g. "
                             "network:default=pod")
        networks[source] = target
    if storage_class:
        storage = {**(storage or {}), "storageClass": storage_class}
    if s3 and proxy:
        raise UsageError("choose one transfer target: --s3 or --cdi-uploadproxy")
    transfer: dict[str, Any] | None = None
    if s3:
        transfer = {"s3": s3}
        for key, value in (("endpointUrl", endpoint_url), ("profile", profile),
                           ("region", region)):
            if value:
                transfer[key] = value
    elif proxy:
        transfer = {"uploadProxy": proxy}
    skip = None
    if skip_blocked:
        from migrate.assessment import Severity, assess

        concerns = assess(inv)

        def skip(vm: Any) -> str | None:
            critical = list(dict.fromkeys(c.id for c in concerns.get(vm.key, [])
                                         if c.severity == Severity.CRITICAL))
            return f"critical: {', '.join(critical)}" if critical else None

    explicit = [[n.strip() for n in w.split(",") if n.strip()] for w in waves]
    if waves and by != "list":
        raise UsageError("--wave lists go with --by list")
    data = generate_plan(inv, inventory, out, by=by, explicit=explicit, max_vms=max_vms,
                         max_bytes=max_size, namespace=namespace, networks=networks,
                         storage=storage, transfer=transfer,
                         defaults={"runStrategy": run_strategy, "preference": preference},
                         skip=skip, workdir=workdir, stage_running=stage_running)
    save_plan(data, out)
    return inv
