"""A remote host's image chain, read on the host and checked against libvirt's view.

``qemu-nbd IMAGE`` on a host would follow whatever backing files the image headers name
(a header may name another file, a ``json:`` node or a network URL).  Before vmmove opens
a disk of a shut-off VM on a host (``qemu-nbd --read-only``, with ``-B BITMAP`` for a warm
final delta), :func:`host_chain` walks the chain one layer at a time on the host with
``qemu-img info`` (which never opens a backing file), over the same SSH connection:

* every layer is a plain file or block device of the host (no protocol, no ``json:``),
  with a declared format (libvirt's, or the header's ``backing-filename-format``; an
  undeclared format is never probed), no external data file, at most
  :data:`~migrate.sources.containment.MAX_CHAIN` layers and no loop;
* the top is the file libvirt names for the disk, and every backing layer libvirt lists
  (the scan's ``backing_chain``) is the file the headers name at that depth (same real
  path on the host, same format); libvirt may list fewer layers.

The result's :meth:`~migrate.sources.containment.Chain.qemu_name` is a ``json:`` filename
that pins every layer, so what ``qemu-nbd`` opens is exactly what was checked.  Errors are
:class:`HostChainError`, one line naming the disk and the disagreement.
"""

from __future__ import annotations

import json

from migrate.clients import ssh
from migrate.core.errors import VmmoveError
from migrate.core.model import Disk
from migrate.sources.containment import (
    BACKING_FORMATS,
    MAX_CHAIN,
    Chain,
    Layer,
    protocol_of,
)


class HostChainError(VmmoveError):
    """The image chain on the host cannot be opened safely, or disagrees with libvirt."""


#: On the host: the real path and kind of "$1", then (a regular file or block device
#: only: never a FIFO that would block) ``qemu-img info`` of it in format "$2", which
#: reads the header alone (it never opens a backing file).  One SSH round trip per layer.
_LAYER = r'''r=$(realpath -e -- "$1") || exit 3
t=$(stat -L -c %F -- "$r") || exit 3
printf '%s\n%s\n' "$r" "$t"
case "$t" in "regular file"|"regular empty file"|"block special file") ;; *) exit 4;; esac
[ -n "$2" ] || exit 0
exec qemu-img info -U --output=json -f "$2" -- "$r"
'''


def _layer(target: ssh.HostTarget, path: str, fmt: str | None,
           label: str) -> tuple[str, str, dict[str, object]]:
    """(real path, qemu file driver, ``qemu-img info`` when ``fmt``) of ``path`` on the
    host; :class:`HostChainError` naming the disk, or the ssh failure."""
    proc = ssh.run(target, ["sh", "-c", _LAYER, "sh", path, fmt or ""], check=False,
                   timeout=60)
    if proc.returncode == 255 and isinstance(target, ssh.SshTarget):
        ssh.run(target, ["true"])  # raises the ssh failure itself, one line
    out = proc.stdout.decode(errors="replace")
    head = out.split("\n", 2)
    if proc.returncode == 3 or len(head) < 2:
        raise HostChainError(f"{label}: {path} does not exist on {target.label}")
    real, kind = head[0], head[1].strip()
    if proc.returncode == 4:
        raise HostChainError(f"{label}: {path} on {target.label} is a {kind}, not an image")
    if proc.returncode != 0:
        said = [ln.strip() for ln in proc.stderr.decode(errors="replace").splitlines()
                if ln.strip()]
        raise HostChainError(f"{label}: qemu-img info {path} on {target.label} failed: "
                             f"{said[-1] if said else proc.returncode}")
    driver = "host_device" if kind == "block special file" else "file"
    return real, driver, (dict(json.loads(head[2])) if fmt else {})


def host_chain(target: ssh.HostTarget, disk: Disk, label: str) -> Chain:
    """The disk's checked chain on the host (see the module docstring); raises
    :class:`HostChainError` or :class:`~migrate.clients.ssh.SshError`."""
    if not disk.path or disk.source_type not in ("file", "block", "volume"):
        raise HostChainError(f"{label}: {disk.source_type} disk has no image file on the "
                             "host to export")
    if not disk.format:  # never guess: a qcow2 read as raw would copy its metadata
        raise HostChainError(f"{label}: libvirt declares no format for {disk.path} "
                             "(<driver type=…> in the domain XML); set it and rescan")
    layers: list[Layer] = []
    path, fmt = disk.path, disk.format.lower()
    seen: set[str] = set()
    while True:
        depth = len(layers)
        if depth >= MAX_CHAIN:
            raise HostChainError(f"{label}: more than {MAX_CHAIN} backing layers on "
                                 f"{target.label}")
        if protocol_of(path) is not None:
            raise HostChainError(f"{label}: the image headers name {path[:80]} as a backing "
                                 "file: not a file of the host (vmmove opens none)")
        real, driver, info = _layer(target, path, fmt, label)
        if real in seen:
            raise HostChainError(f"{label}: the backing chain of {disk.path} loops at {path}")
        seen.add(real)
        if depth:  # libvirt's view of this depth, when it gives one
            said = disk.backing_chain[depth - 1] if depth - 1 < len(disk.backing_chain) \
                else None
            if said is not None and said.path:
                want, _, _ = _layer(target, said.path, None, label)
                if want != real:
                    raise HostChainError(
                        f"{label}: the image headers name backing file {path} where libvirt "
                        f"reports {said.path}: they disagree; nothing was opened")
                if said.format and said.format.lower() != fmt:
                    raise HostChainError(
                        f"{label}: backing file {path} is {fmt} in the image headers but "
                        f"{said.format} for libvirt: they disagree; nothing was opened")
        data = (info.get("format-specific") or {}).get("data")  # type: ignore[union-attr]
        if isinstance(data, dict) and data.get("data-file"):
            raise HostChainError(f"{label}: {path} keeps its data in an external file "
                                 f"({data['data-file']}): not supported on remote hosts")
        layers.append(Layer(path, real, {"driver": driver, "filename": real}, fmt,
                            info=info))
        backing = info.get("full-backing-filename") or info.get("backing-filename")
        if not backing or fmt not in BACKING_FORMATS:
            break
        nxt = str(info.get("backing-filename-format") or "").lower()
        depth_said = disk.backing_chain[depth] if depth < len(disk.backing_chain) else None
        if not nxt and depth_said is not None and depth_said.format:
            nxt = depth_said.format.lower()
        if not nxt:
            raise HostChainError(f"{label}: backing file {backing} of {path} has no declared "
                                 "format (neither the header nor libvirt says; never probed)")
        path, fmt = str(backing), nxt
    if len(disk.backing_chain) > len(layers) - 1 and \
            any(b.path for b in disk.backing_chain[len(layers) - 1:]):
        extra = next(b.path for b in disk.backing_chain[len(layers) - 1:] if b.path)
        raise HostChainError(f"{label}: libvirt reports backing file {extra} but the image "
                             f"headers end at {layers[-1].name}; nothing was opened")
    return Chain(layers)
