"""The assessment of an inventory as ``vmmove assess`` shows it: the selected VMs with
their concerns, a unique label for each, and the sources the scan could not read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from migrate.core.errors import UsageError


@dataclass
class AssessmentView:
    results: list[tuple[Any, list[Any]]]  # (VM, its concerns), one per VM key
    context: Any  # migrate.assessment.Context of the whole inventory
    label: Callable[[Any], str]  # the VM's name, with its key when names repeat
    unread: int  # sources that gave no VM at all


def select(inventory: Any, path: str, refs: tuple[str, ...]) -> list[Any]:
    """The VMs named (by name, UUID or key) on the command line, all of them when none is named."""
    if not refs:
        return list(inventory.vms)
    unknown = [r for r in refs if not any(r in (vm.name, vm.uuid, vm.key) for vm in inventory.vms)]
    if unknown:
        names = [vm.name for vm in inventory.vms]
        known = ", ".join(names[:10]) + (f", … ({len(names)} in all)" if len(names) > 10 else "")
        raise UsageError(
            f"{path}: no VM named {', '.join(repr(u) for u in unknown)} in the inventory"
            f" (it has: {known or 'no VMs'})"
        )
    return [vm for vm in inventory.vms if vm.name in refs or vm.uuid in refs or vm.key in refs]


def assessment_view(path: str, refs: tuple[str, ...]) -> AssessmentView:
    """Assess the VMs named by ``refs`` (all when empty) of the inventory at ``path``;
    rules across VMs still look at the whole inventory."""
    from migrate.assessment import Context, assess
    from migrate.core.serialize import load_inventory

    inv = load_inventory(path)
    selected = select(inv, path, refs)
    ctx = Context.of(inv)
    first: dict[str, Any] = {}  # VM.key -> the VM that stands for it
    for vm in selected:
        first.setdefault(vm.key, vm)
    results = [(first[key], concerns)
               for key, concerns in assess(inv, selected, context=ctx).items()]
    # Sources that gave no VM at all; a disk problem of a listed VM is assessed with the VM.
    unread = {e.source for e in inv.errors} - {vm.source.location for vm in inv.vms}
    name_counts: dict[str, int] = {}
    for vm, _ in results:
        name_counts[vm.name] = name_counts.get(vm.name, 0) + 1

    def label(vm: Any) -> str:
        return vm.name if name_counts[vm.name] == 1 else f"{vm.name} ({vm.key})"

    return AssessmentView(results, ctx, label, len(unread))
