"""Readiness assessment: what stands between each scanned VM and KubeVirt.

Every rule lives in one of the ``*_rules`` modules and registers itself in
:data:`RULES` (see :mod:`migrate.assessment.registry`).  The concern ids are stable;
plans and runbooks refer to them, and docs/assess.md explains each one.
"""

from __future__ import annotations

from migrate.assessment import (  # noqa: F401  (importing registers the rules, in this order)
    inventory_rules,
    platform_rules,
    disk_rules,
    nic_rules,
    device_rules,
    guest_rules,
)
from collections.abc import Iterable

from migrate.assessment.concern import Concern, Severity, summary, worst
from migrate.assessment.registry import RULES, Context, Rule
from migrate.core.model import VM, Inventory

__all__ = [
    "RULES",
    "Concern",
    "Context",
    "Rule",
    "Severity",
    "assess",
    "assess_vm",
    "run_rule",
    "summaries",
    "summary",
    "worst",
]


def _context(vm: VM, inventory: Inventory | None) -> Context:
    if inventory is None:
        return Context.of(Inventory(vms=[vm]))
    if not any(v is vm for v in inventory.vms):
        inventory = Inventory(vms=[*inventory.vms, vm])
    return Context.of(inventory)


def _ordered(concerns: list[Concern]) -> list[Concern]:
    """Most serious first; within a severity, in rule-table order (``sorted`` is stable)."""
    return sorted(concerns, key=lambda c: -c.severity.rank)


def assess_vm(vm: VM, inventory: Inventory | None = None, *, context: Context | None = None) -> list[Concern]:
    """The concerns of one VM; cross-VM rules (MACs, names) look at ``inventory``."""
    ctx = context or _context(vm, inventory)
    return _ordered([c for r in RULES.values() for c in r.run(vm, ctx)])


def assess(
    inventory: Inventory, vms: Iterable[VM] | None = None, *, context: Context | None = None
) -> dict[str, list[Concern]]:
    """Concerns of every VM (or of ``vms`` only), keyed by :attr:`VM.key`, in inventory order.

    Cross-VM rules always look at the whole inventory.  VMs that share a key (the
    ``duplicate-vm`` concern) share one entry holding the concerns of all of them, each
    concern once.
    """
    ctx = context or Context.of(inventory)
    result: dict[str, list[Concern]] = {}
    for vm in inventory.vms if vms is None else vms:
        found = assess_vm(vm, context=ctx)
        if vm.key in result:
            seen = set(result[vm.key])
            result[vm.key] = _ordered(result[vm.key] + [c for c in found if c not in seen])
        else:
            result[vm.key] = found
    return result


def run_rule(rule_id: str, vm: VM, inventory: Inventory | None = None) -> list[Concern]:
    """The concerns one rule raises for ``vm``: for testing a rule alone, and for plans."""
    return list(RULES[rule_id].run(vm, _context(vm, inventory)))


def summaries(inventory: Inventory) -> dict[str, str]:
    """:func:`summary` of every VM, keyed by :attr:`VM.key`: the column ``vmmove scan`` shows."""
    return {key: summary(concerns) for key, concerns in assess(inventory).items()}
