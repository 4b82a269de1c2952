"""libguestfs's ``guestfish`` as a library: one appliance, many commands, read-only.

A :class:`Fish` starts ``guestfish --listen`` on a VM's disks (``--ro``, each disk's format
pinned with ``--format``, never probed) and sends it one command at a time with
``guestfish --remote`` (argument lists, never a shell), so one appliance boot serves a whole
inspection.  Failures raise :class:`GuestfsError` naming the disk and what guestfish said.

The appliance runs ``LIBGUESTFS_BACKEND=direct`` (no libvirtd needed) and, unless the caller
set ``LIBGUESTFS_BACKEND_SETTINGS``, under TCG (``force_tcg``): on nested hosts KVM can abort
qemu (``kvm_buf_set_msrs`` assertion), and TCG is only a few seconds slower for the short
read-only work done here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from migrate.core.errors import VmmoveError

TIMEOUT = 600.0  # seconds for one command (appliance start under TCG included)
_PID = re.compile(r"GUESTFISH_PID=(\d+)")


class GuestfsError(VmmoveError):
    """libguestfs could not read the guest; the message names the disk."""


def libguestfs_env() -> dict[str, str]:
    """The environment every libguestfs tool runs with (see the module docstring)."""
    env = dict(os.environ)
    env.setdefault("LIBGUESTFS_BACKEND", "direct")
    env.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
    return env


def require(tool: str, package: str) -> str:
    """The path of ``tool``; :class:`GuestfsError` naming the package when it is missing."""
    path = shutil.which(tool)
    if path is None:
        raise GuestfsError(f"{tool} is not installed (apt-get install {package})")
    return path


class Fish:
    """One read-only guestfish appliance over ``disks`` (``(path, format)`` pairs)."""

    def __init__(self, disks: Sequence[tuple[str | os.PathLike[str], str]],
                 name: str | None = None) -> None:
        if not disks:
            raise GuestfsError("no disk to inspect")
        self.name = name or str(disks[0][0])
        self.exe = require("guestfish", "libguestfs-tools")
        self.env = libguestfs_env()
        args = [self.exe, "--listen", "--ro"]
        for path, fmt in disks:
            args += [f"--format={fmt}", "-a", str(path)]
        # the forked server keeps stderr open: it goes to a file, not a pipe we wait on
        with tempfile.TemporaryFile() as err:
            proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=err, text=True,
                                  env=self.env, timeout=TIMEOUT)
            err.seek(0)
            errors = err.read().decode(errors="replace")
        found = _PID.search(proc.stdout)
        if proc.returncode != 0 or not found:
            raise GuestfsError(f"{self.name}: guestfish did not start: "
                               f"{_last_line(errors) or proc.returncode}")
        self.pid = found.group(1)
        self.env["GUESTFISH_PID"] = self.pid
        try:
            self.call("run")
        except GuestfsError:
            self.close()
            raise

    def call(self, *args: str) -> str:
        """Run one guestfish command; its standard output."""
        proc = subprocess.run([self.exe, f"--remote={self.pid}", "--", *args],
                              capture_output=True, text=True, env=self.env, timeout=TIMEOUT,
                              errors="replace")
        if proc.returncode != 0:
            raise GuestfsError(f"{self.name}: guestfish {args[0]}: "
                               f"{_last_line(proc.stderr) or 'failed'}")
        return proc.stdout

    def lines(self, *args: str) -> list[str]:
        return [line for line in self.call(*args).splitlines() if line]

    def try_call(self, *args: str) -> str | None:
        """:meth:`call`, or None when the command fails (a file that is not there…)."""
        try:
            return self.call(*args)
        except GuestfsError:
            return None

    def exists(self, path: str) -> bool:
        return self.call("exists", path).strip() == "true"

    def read(self, path: str, limit: int = 1 << 20) -> str | None:
        """A guest text file (at most ``limit`` bytes), or None when absent/unreadable."""
        if not self.exists(path) or self.call("is-file", path, "followsymlinks:true").strip() \
                != "true":
            return None
        size = int(self.call("filesize", path).strip() or 0)
        if size > limit:
            return None
        return self.try_call("cat", path)

    def glob(self, pattern: str) -> list[str]:
        return self.lines("glob-expand", pattern)

    def download(self, path: str, dest: Path) -> Path:
        self.call("download", path, str(dest))
        return dest

    def close(self) -> None:
        subprocess.run([self.exe, f"--remote={self.pid}", "--", "exit"], capture_output=True,
                       env=self.env, timeout=60)

    def __enter__(self) -> Fish:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()
             and not line.startswith(("Do:", "  export", "and run", "  http", "You can",
                                      "into a bug", "To see full"))]
    return lines[-1].removeprefix("libguestfs: error: ") if lines else ""
