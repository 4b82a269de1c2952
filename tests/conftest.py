"""Shared test fixtures: the ../shared data folder, the CLI, scratch images."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from migrate.cli import main
# The session fixtures (SeaweedFS, libvirtd, sshd) are imported here only: a test module
# importing one defines a fixture of its own, and so started (and kept) its own server.
from tests.libvirtd_support import libvirtd  # noqa: F401
from tests.s3_support import s3_bucket, s3_env, s3_server  # noqa: F401
from tests.sshd_support import sshd  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared() -> Path:
    """``../shared`` beside the project (schemas and corpus); skip where it is absent."""
    if not (SHARED / "README.md").is_file():
        pytest.skip(f"{SHARED} is absent: the shared schemas/corpus are not beside this checkout")
    return SHARED


class Cli:
    """Runs ``vmmove`` in-process through click, with stdout and stderr kept apart."""

    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: str, input: str | None = None, ok: bool | None = None) -> Result:
        result = self.runner.invoke(main, list(args), input=input, catch_exceptions=False)
        if ok is True:
            assert result.exit_code == 0, (result.stdout, result.stderr)
        elif ok is False:
            assert result.exit_code != 0, (result.stdout, result.stderr)
        return result


@pytest.fixture
def cli() -> Cli:
    return Cli()


def qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    """Run qemu-img for test set-up; fail the test with its stderr when it fails."""
    proc = subprocess.run(["qemu-img", *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc


def qemu_io(image: str, command: str, fmt: str | None = None) -> None:
    """Write test data into an image with qemu-io (e.g. ``write -P 0xab 1M 64k``)."""
    args = ["qemu-io"]
    if fmt:
        args += ["-f", fmt]
    proc = subprocess.run([*args, "-c", command, image], capture_output=True, text=True)
    assert proc.returncode == 0 and "error" not in proc.stdout.lower(), proc.stdout + proc.stderr


@contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real file system of ``size`` (``12M``) mounted at ``path`` for the block, for
    out-of-space cases; skip the test (saying why) where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
