"""The inventory as a table (``vmmove scan``): one row per VM, with the assessment's
summary and a short name for each source."""

from __future__ import annotations

from typing import Any

from migrate.core.model import VM, Inventory
from migrate.core.output import human_size

TABLE_HEADERS = [
    "NAME", "HOST/FILE", "STATE", "VCPUS", "MEMORY", "DISKS", "NICS", "OS", "FIRMWARE", "CONCERNS",
]


def _disks(vm: VM) -> str:
    data = [d for d in vm.disks if d.device in ("disk", "lun")]
    if not data:
        return "0"
    sizes = [d.virtual_size for d in data]
    total = human_size(sum(s for s in sizes if s)) if any(sizes) else "?"
    if any(s is None for s in sizes) and any(sizes):
        total += "+?"
    return f"{len(data)} {total}"


def _os(vm: VM) -> str:
    g = vm.guest_os
    if g is not None:
        if g.distro and g.version:
            return f"{g.distro}{g.version}"
        if g.name or g.distro or g.family:
            return (g.name or g.distro or g.family or "").replace(" ", "-")
        if g.id:
            return g.id
    return "-"


def _firmware(vm: VM) -> str:
    fw = vm.firmware
    text = fw.type
    if fw.secure_boot:
        text += "+sb"
    if fw.tpm_version:
        text += f"+tpm{fw.tpm_version}"
    return text


def table_row(vm: VM, concerns: str = "", source: str | None = None) -> list[str]:
    """One table row; the column order is TABLE_HEADERS (``concerns``: the assessment
    summary; ``source``: the short name of where the VM was read, see ``source_labels``)."""
    return [
        vm.name,
        source if source is not None else vm.source.location,
        vm.power_state.value,
        str(vm.vcpus),
        human_size(vm.memory),
        _disks(vm),
        str(len(vm.nics)),
        _os(vm),
        _firmware(vm),
        concerns,
    ]


def inventory_table(inv: Inventory) -> tuple[list[list[Any]], list[tuple[str, str]]]:
    """The rows (:data:`TABLE_HEADERS`) of every VM, and the legend of the short source
    names (label, location) used in them."""
    from migrate.assessment import summaries
    from migrate.sources.scan import source_labels

    concerns = summaries(inv)
    labels, legend = source_labels(inv.vms)
    return [table_row(vm, concerns[vm.key], labels[vm.key]) for vm in inv.vms], legend
