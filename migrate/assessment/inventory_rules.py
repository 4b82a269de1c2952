"""Rules that look across the inventory: identity and Kubernetes names (MACs: nic_rules)."""

from __future__ import annotations

from collections.abc import Iterator

from migrate.assessment.concern import Severity
from migrate.assessment.registry import Context, Hit, rule
from migrate.core.model import VM
from migrate.core.naming import dns1123_label, is_dns1123_label

CRITICAL, WARNING, INFO = Severity.CRITICAL, Severity.WARNING, Severity.INFO


@rule(
    "duplicate-vm",
    CRITICAL,
    "Scan each source once, or remove the duplicate from the inventory (a clone needs its own "
    "UUID), then rerun.",
)
def duplicate_vm(vm: VM, ctx: Context) -> Iterator[Hit]:
    """Journals, plans and Kubernetes names key VMs by UUID (or name); two VMs with one key collide."""
    n = ctx.keys.get(vm.key, 0)
    if n > 1:
        what = "UUID" if vm.uuid else "name (and no UUID)"
        yield Hit(f"{n} VMs in the inventory share the {what} {vm.key}")


@rule(
    "vm-copies",
    WARNING,
    "Migrate the copy you mean (plan it by its key, uuid@source) and leave the others out of "
    "the plan; if several must run side by side, know that each keeps the source's firmware "
    "UUID, and change their hostnames, IPs and MACs.",
)
def vm_copies(vm: VM, ctx: Context) -> Iterator[Hit]:
    """VMs sharing a UUID (or name) from different sources are copies: each moves on its own, with that one identity."""
    others = [o for o in ctx.copies.get(vm.uuid or vm.name, []) if o.key != vm.key]
    if others:
        what = "UUID" if vm.uuid else "name (and no UUID)"
        where = ", ".join(sorted({_where(o) for o in others}))
        yield Hit(f"{len(others) + 1} VMs from different sources share the {what} {vm.uuid or vm.name}; "
                  f"this one ({_where(vm)}) is {vm.key}, the others are in {where}")


def _where(vm: VM) -> str:
    src = vm.source
    return f"{src.location}#{src.member}" if src.member else src.location


@rule(
    "name-not-dns1123",
    INFO,
    "Nothing to do; the new name is used for the VirtualMachine, its DataVolumes and images.",
)
def name_not_dns1123(vm: VM, ctx: Context) -> Iterator[Hit]:
    """Kubernetes object names must be DNS-1123 labels: lowercase, digits and '-', at most 63."""
    if not is_dns1123_label(vm.name):
        yield Hit(f"name {vm.name!r} is not a DNS-1123 label; the VM becomes {ctx.target(vm)!r}")


@rule(
    "name-collision",
    WARNING,
    "Nothing has to change, but rename a source VM first if you prefer a name without the "
    "hash suffix.",
)
def name_collision(vm: VM, ctx: Context) -> Iterator[Hit]:
    """Two source names that map to one DNS-1123 label cannot both have it; one gets a hash suffix."""
    base = dns1123_label(vm.name)
    others = sorted({o.name for o in ctx.bases.get(base, []) if o is not vm and o.key != vm.key})
    target = ctx.target(vm)
    if others and target != base:
        yield Hit(
            f"{vm.name!r} and {', '.join(repr(o) for o in others)} all map to {base!r}; "
            f"this VM becomes {target!r}"
        )
