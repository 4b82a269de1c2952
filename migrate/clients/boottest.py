"""The boot test's libvirt side: run a transient domain until a verdict (docs/guest-readiness.md).

:mod:`migrate.guest.boottest` makes the overlays and the domain XML and judges what the
guest prints; this module is the part that talks to libvirt: it connects through
:func:`migrate.clients.libvirt.connect` (read-write: it starts a domain), starts the
domain with ``createXML`` (*transient*: it vanishes when destroyed), asks ``decide`` for a
verdict every :data:`POLL` seconds, pings the guest agent (``guest-ping`` through
``libvirt_qemu``), takes a screenshot of the display when the guest did not boot, and
always destroys the domain.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migrate.clients.libvirt import connect, lib
from migrate.core.errors import VmmoveError

BOOTED, FAILED, TIMEOUT = "booted", "failed", "timeout"
_SHOT_TYPES = {"image/png": "png", "image/x-portable-pixmap": "ppm"}
POLL = 0.5


class BootTestError(VmmoveError):
    """The boot test could not run (not: the guest did not boot — that is a verdict)."""


@dataclass
class DomainRun:
    """What one transient run gave: the verdict, its reason, the seconds from start to the
    verdict, and the screenshot file (None when the guest booted or none could be taken)."""

    verdict: str
    reason: str
    seconds: float
    screenshot: str | None = None


def _agent_ping(libvirt: Any, dom: Any) -> bool:
    import libvirt_qemu

    if "state='connected'" not in dom.XMLDesc(0):
        return False
    try:
        libvirt_qemu.qemuAgentCommand(dom, '{"execute":"guest-ping"}', 2, 0)
        return True
    except libvirt.libvirtError:
        return False


def _screenshot(libvirt: Any, conn: Any, dom: Any, folder: Path) -> str | None:
    """The display as libvirt gives it (PNG or PPM, by its MIME type), or None."""
    part = folder / "screenshot.part"
    try:
        stream = conn.newStream(0)
        mime = dom.screenshot(stream, 0, 0)
        with open(part, "wb") as fh:
            stream.recvAll(lambda _st, data, f: f.write(data), fh)
        stream.finish()
        dest = folder / f"screenshot.{_SHOT_TYPES.get(mime, 'img')}"
        os.replace(part, dest)
        return str(dest)
    except (libvirt.libvirtError, OSError):
        part.unlink(missing_ok=True)
        return None


def run_transient(uri: str, xml: str, folder: Path, timeout: float,
                  decide: Callable[[], tuple[str, str] | None]) -> DomainRun:
    """Start the domain ``xml`` under ``uri`` and watch it until ``decide()`` gives
    ``(verdict, reason)``, the guest agent answers (booted), the domain stops by itself
    (``decide()``'s verdict, else failed) or ``timeout`` seconds pass (timeout); the
    screenshot of a guest that did not boot goes to ``folder``.  Raises
    :class:`BootTestError` (or the connection's :class:`~migrate.core.errors.ConnectError`)
    when the domain cannot be started."""
    libvirt = lib()
    conn = connect(uri, readonly=False)
    try:
        started = time.monotonic()
        try:
            dom = conn.createXML(xml, 0)
        except libvirt.libvirtError as exc:
            raise BootTestError(f"libvirt cannot start the test domain: "
                                f"{exc.get_error_message()}") from None
        verdict: tuple[str, str] | None = None
        screenshot = None
        try:
            next_agent = started + 5.0
            while verdict is None:
                verdict = decide()
                if verdict is not None:
                    break
                now = time.monotonic()
                if now >= next_agent:
                    next_agent = now + 2.0
                    if _agent_ping(libvirt, dom):
                        verdict = (BOOTED, "the guest agent answers")
                        break
                try:
                    active = dom.isActive()
                except libvirt.libvirtError:
                    active = False
                if not active:
                    verdict = decide() or \
                        (FAILED, "the guest stopped by itself before it was up")
                    break
                if now - started > timeout:
                    verdict = (TIMEOUT, f"no login prompt, marker or guest agent within "
                                        f"{timeout:.0f}s")
                    break
                time.sleep(POLL)
            if verdict[0] != BOOTED:
                screenshot = _screenshot(libvirt, conn, dom, folder)
        finally:
            try:
                dom.destroy()
            except libvirt.libvirtError:
                pass
        return DomainRun(verdict[0], verdict[1], round(time.monotonic() - started, 2),
                         screenshot)
    finally:
        conn.close()
