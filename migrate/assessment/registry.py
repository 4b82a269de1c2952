"""The rule table: every assessment rule is a small function registered with :func:`rule`.

A rule looks at one VM (and, through :class:`Context`, at the rest of the inventory) and
yields a :class:`Hit` per thing it finds.  The id, severity and usual remediation live in
the table, not in the function, so that docs/assess.md and the tests can check every rule
and so that ids never drift.  The first docstring line of each rule says why KubeVirt
needs it; ``vmmove assess --list-rules`` prints it.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from migrate.assessment.concern import Concern, Severity
from migrate.core.model import VM, Inventory
from migrate.core.naming import dns1123_label
from migrate.core.workdir import target_names

_ID_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


@dataclass(frozen=True)
class Hit:
    """One finding of a rule; ``remediation`` overrides the rule's when the fix is specific."""

    message: str
    subject: str | None = None
    remediation: str | None = None


def normalize_mac(mac: str) -> str:
    """``52-54-00-AA-BB-CC`` and ``52:54:00:aa:bb:cc`` are the same address."""
    return mac.strip().lower().replace("-", ":")


@dataclass
class Context:
    """Facts about the whole inventory that single-VM rules need (names, MACs, keys)."""

    inventory: Inventory
    targets: dict[str, str] = field(default_factory=dict)  # VM.key -> Kubernetes name
    macs: dict[str, list[VM]] = field(default_factory=dict)  # MAC -> VMs using it (repeats)
    keys: Counter[str] = field(default_factory=Counter)  # VM.key -> how many VMs have it
    bases: dict[str, list[VM]] = field(default_factory=dict)  # DNS-1123 label -> VMs
    copies: dict[str, list[VM]] = field(default_factory=dict)  # UUID (or name) -> VMs keyed apart by source

    @classmethod
    def of(cls, inventory: Inventory) -> Context:
        macs: dict[str, list[VM]] = defaultdict(list)
        bases: dict[str, list[VM]] = defaultdict(list)
        copies: dict[str, list[VM]] = defaultdict(list)
        for vm in inventory.vms:
            if vm.instance:  # see migrate.core.model.distinguish
                copies[vm.uuid or vm.name].append(vm)
            for nic in vm.nics:
                if nic.mac:
                    macs[normalize_mac(nic.mac)].append(vm)
            bases[dns1123_label(vm.name)].append(vm)
        return cls(
            inventory=inventory,
            targets=target_names(inventory),
            macs=dict(macs),
            keys=Counter(vm.key for vm in inventory.vms),
            bases=dict(bases),
            copies=dict(copies),
        )

    def target(self, vm: VM) -> str:
        """The Kubernetes name ``vm`` gets, exactly as convert and manifests will name it."""
        return self.targets.get(vm.key) or dns1123_label(vm.name)


Check = Callable[[VM, Context], Iterable[Hit]]


@dataclass(frozen=True)
class Rule:
    id: str
    severity: Severity
    remediation: str
    check: Check

    @property
    def why(self) -> str:
        """The first line of the rule's docstring: why KubeVirt needs this check."""
        doc = (self.check.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    def run(self, vm: VM, ctx: Context) -> Iterator[Concern]:
        for hit in self.check(vm, ctx):
            yield Concern(
                id=self.id,
                severity=self.severity,
                message=hit.message,
                remediation=hit.remediation or self.remediation,
                subject=hit.subject,
            )


RULES: dict[str, Rule] = {}


def rule(id: str, severity: Severity, remediation: str) -> Callable[[Check], Check]:
    """Register ``check`` under a stable kebab-case ``id``; the function is returned as is."""
    assert _ID_RE.match(id), f"concern id {id!r} is not kebab-case"
    assert id not in RULES, f"two rules with id {id!r}"

    def register(check: Check) -> Check:
        assert check.__doc__, f"rule {id} needs a docstring saying why"
        RULES[id] = Rule(id, severity, remediation, check)
        return check

    return register
