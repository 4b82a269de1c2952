"""Progress of conversion and verification: tqdm bars on a terminal, log lines in a pipe.

The terminal case runs ``vmmove convert`` under a real pseudo-terminal with Python
warnings turned into errors, so tqdm's "clamping frac to range [0, 1]" (a bar driven past
its total) would fail the command.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

from tests.conftest import ROOT
from tests.convert_support import MiB, disk, inventory_file, vm
from tests.s3_support import SeaweedFS

WARN = ["-W", "error"]
RUN = "from migrate.cli import run; run()"


def _env() -> dict[str, str]:
    # TQDM_MININTERVAL=0: every update redraws, so a bar past its total is always drawn
    env = dict(os.environ, PYTHONPATH=str(ROOT), TERM="xterm", TQDM_MININTERVAL="0")
    env.pop("PYTHONWARNINGS", None)
    return env


def _raw_disk(folder: Path, name: str, mib: int) -> Path:
    """A sparse raw image with 64 KiB of data at every MiB: qemu-img reports its progress
    in many small steps (a few tiny extents give only 0 % and 100 %)."""
    path = folder / f"{name}.img"
    with open(path, "wb") as fh:
        fh.truncate(mib * MiB)
        for i in range(mib):
            fh.seek(i * MiB)
            fh.write(bytes([i % 255 + 1]) * 65536)
    return path


def _convert_args(tmp_path: Path) -> list[str]:
    # Six disks of different sizes converted two at a time: the overall bar sums many
    # fractional updates of disks that finish out of order.  (Adding float deltas drove
    # these bars past their totals: tqdm warned "clamping frac to range [0, 1]".)
    disks = [disk(f"vd{c}", _raw_disk(tmp_path, c, 100 + 17 * i), "raw",
                  allocated_size=(100 + 17 * i) * 65536 + i * 4099)
             for i, c in enumerate("abcdef")]
    inv = inventory_file(tmp_path, [vm("web", disks)])
    return ["convert", str(inv), "--batch", "--jobs", "2", "--to", str(tmp_path / "work")]


def run_in_terminal(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    """``vmmove ARGS`` with stdout and stderr on a pseudo-terminal, warnings as errors."""
    leader, follower = pty.openpty()
    # a terminal 160 columns wide (a new pty is 0x0, where tqdm draws nothing)
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    proc = subprocess.Popen([sys.executable, *WARN, "-c", RUN, *args],
                            stdin=follower, stdout=follower, stderr=follower,
                            env={**_env(), **(env or {})},
                            close_fds=True)
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        if not ready:
            proc.kill()
            break
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the terminal's last writer is gone
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return proc.wait(timeout=60), b"".join(chunks).decode(errors="replace")


def test_terminal_convert_shows_verify_bars_and_no_tqdm_warning(tmp_path: Path) -> None:
    code, screen = run_in_terminal(_convert_args(tmp_path))
    assert code == 0, screen
    assert "TqdmWarning" not in screen and "clamping frac" not in screen, screen
    # each disk had a verification bar of its own, after its conversion bar
    for target in ("vda", "vdb", "vdc", "vdd", "vde", "vdf"):
        assert f"web/{target} convert" in screen, screen
        assert f"web/{target} verify" in screen, screen
    assert "6 disk(s): 100%" in screen, screen


def test_piped_convert_logs_verification_progress(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-W", "error", "-c", RUN, *_convert_args(tmp_path)],
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    for target in ("vda", "vdb", "vdc", "vdd", "vde", "vdf"):
        mine = [ln.split(" ", 1)[1] for ln in lines if f" web/{target}: " in ln]
        kinds = [ln.split(": ", 1)[1].split(" ")[0] for ln in mine]
        # converting, then verifying, then the result line, in that order
        assert kinds.index("converting") < kinds.index("verifying") < kinds.index("converted"), mine
    assert "\r" not in proc.stderr  # no bar drawn into a pipe


def test_a_failed_disk_is_reported_once_in_a_pipe(tmp_path: Path) -> None:
    good = _raw_disk(tmp_path, "good", 8)
    bad = tmp_path / "bad.qcow2"
    bad.write_bytes(b"QFI\xfb" + b"\0" * 60)  # a qcow2 header cut short
    inv = inventory_file(tmp_path, [vm("web", [disk("vda", good, "raw"),
                                               disk("vdb", bad, "qcow2")])])
    proc = subprocess.run([sys.executable, "-c", RUN, "convert", str(inv), "--batch", "--to",
                           str(tmp_path / "work")], capture_output=True, text=True,
                          env=_env(), timeout=300)
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if "web/vdb" in ln]
    # stderr says it once: the progress log's line names the disk and the reason (so it is
    # there when stdout, the results table, goes to a file), then the summary line
    said = [ln.split(" ", 1)[1] for ln in errors if not ln.startswith("vmmove:")]
    assert len(said) == 1 and said[0].startswith("failed: web/vdb: "), proc.stderr
    assert "qcow2" in said[0] or "header" in said[0] or "image" in said[0], said
    assert not [ln for ln in errors if ln.startswith("vmmove: error: web/vdb")]
    rows = [ln for ln in proc.stdout.splitlines() if "web/vdb: " in ln]
    assert len(rows) == 1 and rows[0].startswith("web "), proc.stdout
    assert proc.stderr.splitlines()[-1].startswith("vmmove: error: 1 of 2 disk(s) failed")


def test_terminal_upload_of_a_wave_draws_bars_within_their_totals(
        tmp_path: Path, s3_server: SeaweedFS, s3_bucket: str) -> None:
    # several images, one larger than a multipart part: many progress callbacks per image
    disks = [disk(f"vd{c}", _raw_disk(tmp_path, c, mib), "raw")
             for c, mib in (("a", 40), ("b", 12), ("c", 24))]
    inv = inventory_file(tmp_path, [vm("web", disks)])
    plan_file = tmp_path / "plan.yaml"
    run = [sys.executable, "-c", RUN]
    subprocess.run([*run, "plan", str(inv), "--out", str(plan_file), "--network", "*=pod",
                    "--s3", f"s3://{s3_bucket}/t", "--endpoint-url", s3_server.endpoint],
                   check=True, capture_output=True, env=_env())
    subprocess.run([*run, "convert", "--batch", str(plan_file), "--wave", "1"], check=True,
                   capture_output=True, env=_env())
    code, screen = run_in_terminal(["upload", str(plan_file), "--wave", "1"],
                                   s3_server.env(tmp_path))
    assert code == 0, screen
    assert "TqdmWarning" not in screen and "clamping frac" not in screen, screen
    assert "upload 3 image(s): 100%" in screen and "web/vda" in screen, screen
