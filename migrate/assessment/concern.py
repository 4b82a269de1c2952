"""What an assessment says about a VM: concerns, each with a severity and a remediation."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


class Severity(str, Enum):
    """How much a concern stands in the way: ``critical`` > ``warning`` > ``info``.

    Ordered by weight, not alphabetically (a plain ``str`` enum would sort ``critical``
    first and ``warning`` last), so ``max()`` and ``>=`` mean "at least as serious".
    """

    INFO = "info"  # something changes on the way; nothing to do
    WARNING = "warning"  # works, but check or act before cutover
    CRITICAL = "critical"  # cannot move as is

    @property
    def rank(self) -> int:
        return _RANK[self]

    @staticmethod
    def _other(other: object) -> Severity:
        """A severity to compare with; plain strings are read as severities, not text."""
        if isinstance(other, Severity):
            return other
        if isinstance(other, str):
            try:
                return Severity(other)
            except ValueError:
                pass
        raise TypeError(f"cannot compare a severity with {other!r}")

    def __lt__(self, other: object) -> bool:
        return self.rank < self._other(other).rank

    def __le__(self, other: object) -> bool:
        return self.rank <= self._other(other).rank

    def __gt__(self, other: object) -> bool:
        return self.rank > self._other(other).rank

    def __ge__(self, other: object) -> bool:
        return self.rank >= self._other(other).rank


_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}


@dataclass(frozen=True)
class Concern:
    """One thing about a VM that needs attention (or at least a mention) before it moves.

    ``id`` is stable and kebab-case (``pci-passthrough``): plans and runbooks refer to it.
    ``subject`` names the disk, NIC or device the concern is about, or is ``None`` when
    it is about the whole VM.
    """

    id: str
    severity: Severity
    message: str
    remediation: str
    subject: str | None = None

    def to_data(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "severity": self.severity.value,
            "message": self.message,
            "remediation": self.remediation,
            "subject": self.subject,
        }


def worst(concerns: list[Concern]) -> Severity | None:
    """The most serious severity among ``concerns``, ``None`` when there are none."""
    return max((c.severity for c in concerns), default=None)


def summary(concerns: list[Concern]) -> str:
    """A short cell for tables: ``2 critical, 1 warning``, ``ready`` or ``ready (3 info)``."""
    counts = {s: 0 for s in Severity}
    for c in concerns:
        counts[c.severity] += 1
    parts = [
        f"{counts[s]} {s.value}" for s in (Severity.CRITICAL, Severity.WARNING) if counts[s]
    ]
    if parts:
        return ", ".join(parts)
    info = counts[Severity.INFO]
    return f"ready ({info} info)" if info else "ready"
