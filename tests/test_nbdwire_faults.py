"""vmmove's NBD client when the server goes away under it: a real ``qemu-nbd`` on a UNIX
socket, killed (SIGKILL) or stopped (SIGSTOP) between or during reads.  The client must
raise :class:`NbdWireError` naming the export it was opened with and what happened, never
a raw ``BrokenPipeError``/``ConnectionResetError``/``TimeoutError``."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from migrate.clients.nbdwire import BASE_ALLOCATION, NbdClient, NbdWireError
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
