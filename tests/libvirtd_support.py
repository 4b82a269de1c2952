"""A real libvirtd for tests: ``qemu:///system``, started on demand, domains cleaned up.

Import the fixtures into a test module (``from tests.libvirtd_support import libvirtd,
libvirt_domains``).  ``libvirtd`` (session) connects to a running daemon or starts
``virtlogd -d`` and ``libvirtd -d``; when that is impossible (not root, binaries missing,
no /dev/kvm needed: domains are type 'qemu', TCG) the test is skipped with the reason.
``libvirt_domains`` (per test) defines domains with unique names and, whatever the
test did, destroys and undefines every one of them afterwards.

The daemons are left running at the end: other test sessions may be using them, and a
daemon left behind costs nothing.  libvirt's ``default`` network is never started.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import pytest

URI = "qemu:///system"
NAME_PREFIX = "vmmove-test-"
START_TIMEOUT = 20.0


def _connect(libvirt: Any) -> Any | None:
    try:
        return libvirt.open(URI)
    except libvirt.libvirtError:
        return None


def _start_daemons() -> str | None:
    """Start virtlogd and libvirtd; the reason when they cannot be started."""
    if os.geteuid() != 0:
        return "not root: cannot start libvirtd for qemu:///system"
    for exe in ("virtlogd", "libvirtd"):
        if shutil.which(exe) is None:
            return f"{exe} not installed (apt install libvirt-daemon-system)"
    for args in (["virtlogd", "-d"], ["libvirtd", "-d"]):
        name = args[0]
        if subprocess.run(["pgrep", "-x", name], capture_output=True).returncode == 0:
            continue
        proc = subprocess.run(args, capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            return f"{name} -d failed: {proc.stderr.strip() or proc.returncode}"
    return None


@dataclass
class Libvirtd:
    """A read-write connection to the daemon, for test set-up (vmmove itself reads only)."""

    uri: str
    conn: Any

    def domain(self, name: str) -> Any:
        return self.conn.lookupByName(name)


@dataclass
class DomainSpec:
    """A minimal TCG domain definition; disks are ``(path, format, target, bus, device)``."""

    name: str
    memory_mib: int = 64
    vcpus: int = 1
    disks: list[tuple[str, str | None, str, str, str]] = field(default_factory=list)
    extra_devices: str = ""
    metadata: str = ""

    def xml(self) -> str:
        disks = []
        for path, fmt, target, bus, device in self.disks:
            driver = f"<driver name='qemu' type={quoteattr(fmt)}/>" if fmt else ""
            kind = "block" if path.startswith("/dev/") else "file"
            attr = "dev" if kind == "block" else "file"
            ro = "<readonly/>" if device == "cdrom" else ""
            disks.append(
                f"<disk type='{kind}' device='{device}'>{driver}"
                f"<source {attr}={quoteattr(path)}/>"
                f"<target dev={quoteattr(target)} bus={quoteattr(bus)}/>{ro}</disk>"
            )
        return (
            "<domain type='qemu'>"  # TCG: no /dev/kvm needed
            f"<name>{escape(self.name)}</name>"
            f"<metadata>{self.metadata}</metadata>"
            f"<memory unit='MiB'>{self.memory_mib}</memory>"
            f"<vcpu>{self.vcpus}</vcpu>"
            "<os><type arch='x86_64' machine='q35'>hvm</type></os>"
            f"<devices>{''.join(disks)}{self.extra_devices}</devices>"
            "</domain>"
        )


class DomainFactory:
    """Defines domains (and storage pools) for one test and removes them all afterwards."""

    def __init__(self, daemon: Libvirtd) -> None:
        self.daemon = daemon
        self.names: list[str] = []
        self.pools: list[str] = []
        self.dirs: list[Path] = []
        self.tag = uuid.uuid4().hex[:8]

    def image_dir(self) -> Path:
        """A folder the daemon's qemu user can read (pytest's tmp_path is private to root).

        Under /var/lib/libvirt/images when it exists, else /tmp; removed after the test.
        """
        parent = Path("/var/lib/libvirt/images")
        if not parent.is_dir():
            parent = Path(tempfile.gettempdir())
        path = Path(tempfile.mkdtemp(prefix=f"{NAME_PREFIX}{self.tag}-", dir=parent))
        path.chmod(0o755)
        self.dirs.append(path)
        return path

    def name(self, base: str) -> str:
        """A name unique to this test run (concurrent sessions share the daemon)."""
        return f"{NAME_PREFIX}{self.tag}-{base}"

    def define(self, spec: DomainSpec | str) -> Any:
        xml = spec.xml() if isinstance(spec, DomainSpec) else spec
        dom = self.daemon.conn.defineXML(xml)
        self.names.append(dom.name())
        return dom

    def start(self, dom: Any) -> None:
        dom.create()

    def define_pool(self, xml: str) -> Any:
        """Define and start a storage pool (e.g. a dir pool in tmp_path); removed afterwards."""
        pool = self.daemon.conn.storagePoolDefineXML(xml, 0)
        self.pools.append(pool.name())
        pool.create(0)
        return pool

    def cleanup(self) -> None:
        import libvirt

        flags = (
            libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
            | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA  # warm tests make checkpoints
        )
        for name in self.names:
            try:
                dom = self.daemon.conn.lookupByName(name)
            except libvirt.libvirtError:
                continue
            try:
                if dom.isActive():
                    dom.destroy()
            except libvirt.libvirtError:
                pass
            try:
                dom.undefineFlags(flags)
            except libvirt.libvirtError:
                dom.undefine()
        self.names.clear()
        for name in self.pools:
            try:
                pool = self.daemon.conn.storagePoolLookupByName(name)
            except libvirt.libvirtError:
                continue
            try:
                if pool.isActive():
                    pool.destroy()
                pool.undefine()
            except libvirt.libvirtError:
                pass
        self.pools.clear()
        for path in self.dirs:
            shutil.rmtree(path, ignore_errors=True)
        self.dirs.clear()


@pytest.fixture(scope="session")
def libvirtd() -> Iterator[Libvirtd]:
    """The system libvirtd, started when it is not running; skips with the reason if impossible."""
    libvirt = pytest.importorskip("libvirt")
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = _connect(libvirt)
    if conn is None:
        reason = _start_daemons()
        if reason:
            pytest.skip(f"no libvirtd: {reason}")
        deadline = time.monotonic() + START_TIMEOUT
        while conn is None and time.monotonic() < deadline:
            time.sleep(0.2)
            conn = _connect(libvirt)
        if conn is None:
            pytest.skip(f"libvirtd started but {URI} did not answer within {START_TIMEOUT:g} s")
    try:
        yield Libvirtd(URI, conn)
    finally:
        conn.close()


@pytest.fixture
def libvirt_domains(libvirtd: Libvirtd) -> Iterator[DomainFactory]:
    """Define domains in a test; every one is destroyed and undefined when the test ends."""
    factory = DomainFactory(libvirtd)
    try:
        yield factory
    finally:
        factory.cleanup()
