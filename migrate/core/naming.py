"""Kubernetes names for VMs and disks (DNS-1123 labels).

KubeVirt objects need lowercase DNS-1123 labels of at most 63 characters; source VMs are
named anything (``Web Server (prod)``, ``DC01``, ``ünïcode``).  The rule, documented for
users in docs/mapping.md:

1. transliterate to ASCII, lowercase, every run of other characters becomes one ``-``,
   leading and trailing ``-`` are dropped; an empty result becomes ``vm``;
2. longer than the limit: cut, and end with ``-`` plus 6 hex digits of the SHA-1 of the
   original name, so distinct long names stay distinct;
3. collisions within an inventory: a name that needed no change keeps it; every other
   member of the collision gets the same hash suffix, so the result does not depend on
   the order the VMs were scanned in.  When several VMs have that same unchanged name
   (copies of one VM from different files: different keys, one name), none keeps it:
   each gets a suffix from its name and key.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable

MAX_LABEL = 63
_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
#: Kubernetes label values and the name part of label/annotation keys (apimachinery
#: validation: IsValidLabelValue, IsQualifiedName) and DNS-1123 subdomains (key prefixes).
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def is_qualified_name(key: str) -> bool:
    """A valid label or annotation key: ``[prefix/]name``, prefix a DNS-1123 subdomain of
    at most 253 characters, name at most 63 (Kubernetes IsQualifiedName)."""
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not DNS_SUBDOMAIN.match(prefix)):
        return False
    return len(name) <= 63 and bool(LABEL_NAME.match(name))


def is_label_value(value: str) -> bool:
    """A valid label value: empty, or at most 63 alphanumerics, '-', '_', '.' inside."""
    return len(value) <= 63 and bool(LABEL_VALUE.match(value))


def is_dns1123_label(name: str) -> bool:
    return len(name) <= MAX_LABEL and bool(_LABEL_RE.match(name))


def _suffix(original: str) -> str:
    return hashlib.sha1(original.encode("utf-8")).hexdigest()[:6]


def _with_suffix(base: str, original: str, limit: int) -> str:
    suffix = _suffix(original)
    head = base[: limit - len(suffix) - 1].rstrip("-")
    return f"{head}-{suffix}" if head else f"vm-{suffix}"


def dns1123_label(name: str, limit: int = MAX_LABEL) -> str:
    """The DNS-1123 label a single name becomes (rules 1 and 2)."""
    if is_dns1123_label(name) and len(name) <= limit:
        return name
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    base = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-") or "vm"
    if len(base) > limit:
        return _with_suffix(base, name, limit)
    return base


def assign_names(names: Iterable[tuple[str, str]], limit: int = MAX_LABEL) -> dict[str, str]:
    """Target names for ``(key, original name)`` pairs, unique and order-independent (rule 3)."""
    # One name per key: a key repeated (two scans of one VM) must not count as a collision,
    # or every repeat would push the suffix loop below further, without end.
    pairs = list({key: original for key, original in reversed(list(names))}.items())
    groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for key, original in pairs:
        groups[dns1123_label(original, limit)].append((key, original))
    result: dict[str, str] = {}
    taken = set(groups)
    for base, members in groups.items():
        if len(members) == 1:
            result[members[0][0]] = base
            continue
        keepers = sum(1 for _, original in members if original == base)
        for key, original in members:
            if original == base and keepers == 1:
                result[key] = base
                continue
            candidate = _with_suffix(base, f"{original}\0{key}", limit)
            while candidate in taken:  # astronomically rare; stay deterministic anyway
                candidate = _with_suffix(candidate, f"{original}\0{key}", limit)
            taken.add(candidate)
            result[key] = candidate
    return result
