"""vmmove's NBD client when the server goes away under it: a real ``qemu-nbd`` on a UNIX
socket, killed (SIGKILL) or stopped (SIGSTOP) between or during reads.  The client must
raise :class:`NbdWireError` naming the export it was opened with and what happened, never
a raw ``BrokenPipeError``/``ConnectionResetError``/``TimeoutError``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any
from pathlib import Path

import pytest

from migrate.clients.nbdwire import BASE_ALLOCATION, NbdClient, NbdWireError
from tests.offline_support import warm_plan
from tests.conftest import qemu_img, qemu_io

MiB = 1 << 20
CLOSED = ("the server closed the connection", "connection reset")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``qemu-nbd`` (read-only, export ``vda``) of a 16 MiB raw image with data at 0."""
    image = tmp_path / "d.raw"
    qemu_img("create", "-q", "-f", "raw", str(image), "16M")
    qemu_io(str(image), "write -P 0x5a 0 1M", fmt="raw")
    sock = str(tmp_path / "vda.sock")
    proc = subprocess.Popen(["qemu-nbd", "--read-only", "--persistent", "--format=raw",
                             f"--socket={sock}", "--export-name=vda", str(image)],
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not os.path.exists(sock):
        assert proc.poll() is None and time.monotonic() < deadline, "qemu-nbd did not start"
        time.sleep(0.01)
    try:
        yield proc, sock
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        proc.wait()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_server_killed_between_reads(server: tuple[subprocess.Popen[bytes], str]) -> None:
    proc, sock = server
    with NbdClient(sock, "vda", (BASE_ALLOCATION,)) as client:
        assert client.pread(0, 4) == b"\x5a" * 4
        _kill(proc)
        with pytest.raises(NbdWireError) as err:
            client.pread(MiB, 64 << 10)
        assert str(err.value) in [f"nbd+unix:///vda?socket={sock}: {w}" for w in CLOSED]
        with pytest.raises(NbdWireError) as err:  # block status too: the same one line
            client.block_status(BASE_ALLOCATION)
        assert str(err.value).startswith(f"nbd+unix:///vda?socket={sock}: ")
        assert str(err.value).split(": ", 1)[1] in CLOSED


def test_server_killed_while_a_read_waits(server: tuple[subprocess.Popen[bytes], str]) -> None:
    """The read's request is sent to a stopped server, which is then killed."""
    proc, sock = server
    client = NbdClient(sock, "vda")
    proc.send_signal(signal.SIGSTOP)
    caught: list[BaseException] = []

    def read() -> None:
        try:
            client.pread(0, 8 * MiB)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            caught.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.3)  # the request is in the server's socket by now
    _kill(proc)
    reader.join(30)
    client.close()  # the server is gone: closing says nothing
    assert not reader.is_alive()
    assert len(caught) == 1 and isinstance(caught[0], NbdWireError), caught
    assert str(caught[0]) in [f"nbd+unix:///vda?socket={sock}: {w}" for w in CLOSED]


def test_a_server_that_does_not_answer_times_out(
        server: tuple[subprocess.Popen[bytes], str]) -> None:
    proc, sock = server
    with NbdClient(sock, "vda", timeout=0.5) as client:
        proc.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(NbdWireError) as err:
            client.pread(0, 4)
        assert 0.4 < time.monotonic() - started < 10
        assert str(err.value) == f"nbd+unix:///vda?socket={sock}: timed out after 0.5 s"
        _kill(proc)


def test_sync_names_the_vm_and_disk_when_qemu_nbd_dies_during_a_round(
        cli: Any, tmp_path: Path) -> None:
    """`vmmove sync` of an offline VMX whose sparse VMDK is read through qemu-nbd: the
    server is killed while the round holds its connection (the warm:final test pause);
    the round fails with one line naming the VM, the disk and what happened."""
    from tests.test_cutover_faults import fault_while_paused

    export = tmp_path / "export"
    export.mkdir()
    disk = export / "app.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=monolithicSparse", str(disk), "8M")
    qemu_io(str(disk), "write -P 0x5a 0 1M", fmt="vmdk")
    (export / "app.vmx").write_text(
        'config.version = "8"\nvirtualHW.version = "19"\ndisplayName = "app"\n'
        'guestOS = "debian11-64"\nmemSize = "256"\nscsi0.present = "TRUE"\n'
        'scsi0.virtualDev = "pvscsi"\nscsi0:0.present = "TRUE"\nscsi0:0.fileName = "app.vmdk"\n')
    _, plan, _ = warm_plan(cli, export / "app.vmx", tmp_path)
    killed: list[int] = []

    def kill_qemu_nbd() -> None:  # the qemu-nbd serving this test's disk, by its pid
        for entry in Path("/proc").iterdir():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[0].endswith(b"qemu-nbd") and str(export).encode() in b" ".join(argv):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    lines = fault_while_paused(["sync", str(plan), "--wave", "1"], env, "warm:final",
                               tmp_path, kill_qemu_nbd)
    assert len(killed) == 1
    # stderr: the VM's line (also its row, and kept for vmmove status), then the summary
    assert "Traceback" not in "\n".join(lines), lines
    assert len(lines) == 2 and lines[1].startswith("vmmove: error: sync: 1 round(s) failed")
    assert lines[0].startswith("vmmove: error: app/sda: the round failed: nbd+unix:///sda"), lines
    (vm,) = json.loads(cli("status", str(plan), "-o", "json").stdout)["vms"]
    line = vm["error"]
    assert vm["state"] == "failed" and line.startswith(
        "app/sda: the round failed: nbd+unix:///sda?socket="), vm
    assert line.endswith(("the server closed the connection; rerun vmmove sync",
                          "connection reset; rerun vmmove sync")), line
