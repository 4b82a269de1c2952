"""The plan's ``workers`` section: how transfer mode ``direct`` runs its in-cluster Jobs.

.. code-block:: yaml

    transfer: {mode: direct}
    workers:
      image: registry.example/vmmove-worker:0.1   # default: DEFAULT_IMAGE
      nodeSelector: {vmmove.io/transfer: "true"}
      tolerations: [{key: dedicated, operator: Equal, value: transfer, effect: NoSchedule}]
      network: migration/transfer-net             # Multus NetworkAttachmentDefinition
      sourceAddress: 10.0.0.5                     # what workers dial (default: URI host)
      portRange: [10809, 10908]                   # TCP ports qemu-nbd may use on hosts
      maxInflight: 4                              # disks at once per wave
      maxInflightPerHost: 2                       # disks at once per source host
      backoffLimit: 3                             # pod retries per Job

Problems are reported through the plan's collector, one per bad key (docs/remote-hosts.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_IMAGE = "ghcr.io/vmmove/vmmove-worker:latest"
WORKER_KEYS = ("image", "nodeSelector", "tolerations", "network", "sourceAddress",
               "portRange", "maxInflight", "maxInflightPerHost", "backoffLimit")
_NET = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}


@dataclass
class WorkerSettings:
    image: str = DEFAULT_IMAGE
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    network: str | None = None
    source_address: str | None = None
    port_range: tuple[int, int] = (10809, 10908)
    max_inflight: int = 4
    max_inflight_per_host: int = 2
    backoff_limit: int = 3


def parse_workers(sec: Any, add: Callable[[str, str], None]) -> WorkerSettings:
    """The ``workers`` mapping (None: defaults); ``add(where, problem)`` for each problem."""
    w = WorkerSettings()
    if sec is None:
        return w
    if not isinstance(sec, dict):
        add("workers", "expected a mapping")
        return w
    for key in sorted(set(map(str, sec)) - set(WORKER_KEYS)):
        add(f"workers.{key}", f"unknown key (allowed: {', '.join(WORKER_KEYS)})")
    image = sec.get("image", w.image)
    if not isinstance(image, str) or not image or any(c.isspace() for c in image):
        add("workers.image", f"{image!r} is not an image reference")
    else:
        w.image = image
    sel = sec.get("nodeSelector") or {}
    if not isinstance(sel, dict) or not all(isinstance(v, str) for v in sel.values()):
        add("workers.nodeSelector", "expected a mapping of label to string value")
    else:
        w.node_selector = {str(k): v for k, v in sel.items()}
    tol = sec.get("tolerations") or []
    if not isinstance(tol, list) or not all(isinstance(t, dict) and set(t) <= _TOLERATION_KEYS
                                            for t in tol):
        add("workers.tolerations", "expected a list of {key, operator, value, effect, "
                                   "tolerationSeconds} mappings")
    else:
        w.tolerations = tol
    net = sec.get("network")
    if net is not None and not (isinstance(net, str) and _NET.match(net)):
        add("workers.network", f"{net!r} is not NAMESPACE/NAME of a Multus network")
    else:
        w.network = net
    addr = sec.get("sourceAddress")
    if addr is not None and not isinstance(addr, str):
        add("workers.sourceAddress", "expected a host name or address")
    else:
        w.source_address = addr
    ports = sec.get("portRange", list(w.port_range))
    if not (isinstance(ports, list) and len(ports) == 2 and all(isinstance(p, int) for p in ports)
            and 1024 <= ports[0] <= ports[1] <= 65535):
        add("workers.portRange", f"{ports!r} is not [LOW, HIGH] within 1024-65535")
    else:
        w.port_range = (ports[0], ports[1])
    for key, attr, low in (("maxInflight", "max_inflight", 1),
                           ("maxInflightPerHost", "max_inflight_per_host", 1),
                           ("backoffLimit", "backoff_limit", 0)):
        value = sec.get(key, getattr(w, attr))
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            add(f"workers.{key}", f"{value!r} is not an integer ≥ {low}")
        else:
            setattr(w, attr, value)
    return w
