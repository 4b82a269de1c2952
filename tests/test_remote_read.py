"""Disks of a libvirt host reached only over ``qemu+ssh://`` (issue 14, section 1).

Real components: Debian's sshd on loopback (tests/sshd_support.py), the real libvirtd
reached through it, a running TCG guest that writes ticks without pause
(tests/guest_support.py), qemu-img/qemu-nbd/nbdcopy.  Nothing of vmmove runs on the
"host": vmmove reaches it with ssh and libvirt only.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from migrate.clients.nbd import file_guest_checksum
from migrate.core.journal import Journal
from migrate.core.workdir import journal_path
from tests.conftest import qemu_img, qemu_io
from tests.guest_support import TICK_OFFSET, TICK_SLOTS, boot_guest
from tests.libvirtd_support import DomainSpec, libvirt_domains  # noqa: F401
from tests.sshd_support import Sshd, host_tmp  # noqa: F401

pytestmark = [pytest.mark.libvirtd, pytest.mark.slow]

TICK = re.compile(rb"VMMOVE-TICK (\d+)")


def remote_uri(server: Sshd) -> str:
    """libvirt's +ssh transport does not read known_hosts (only +libssh does): libvirt is
    told no_verify=1, vmmove's own channels still check the host key against the file."""
    return server.libvirt_uri() + "&no_verify=1"


def scan(cli: Any, tmp: Path, uri: str, name: str) -> Path:
    inventory = tmp / "inventory.yaml"
    cli("scan", "-c", uri, "--output-file", str(inventory), "-o", "json")
    names = [vm["name"] for vm in yaml.safe_load(inventory.read_text())["vms"]]
    assert name in names
    return inventory


def serial_ticks(path: Path) -> list[int]:
    return [int(m) for m in TICK.findall(path.read_bytes())] if path.exists() else []


def wait_ticks(path: Path, count: int, timeout: float = 120.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ticks = serial_ticks(path)
        if len(ticks) >= count:
            return max(ticks)
        time.sleep(0.1)
    raise AssertionError(f"the guest wrote fewer than {count} ticks in {timeout:.0f}s")


def slots(image: Path, fmt: str) -> dict[int, int]:
    """Tick number found in each slot of an image's guest view (0: none)."""
    raw = image.parent / f".{image.name}.slots.raw"
    qemu_img("convert", "-U", "-f", fmt, "-O", "raw", str(image), str(raw))
    out = {}
    with open(raw, "rb") as fh:
        for slot in range(TICK_SLOTS):
            fh.seek(TICK_OFFSET + slot * (1 << 20))
            m = TICK.match(fh.read(32))
            out[slot] = int(m.group(1)) if m else 0
    raw.unlink()
    return out


@pytest.fixture(autouse=True)
def _host_tmp(host_tmp: Path) -> Path:
    return host_tmp


def host_folders() -> set[str]:
    """vmmove's folders on the "host" (this test's VMMOVE_HOST_TMPDIR)."""
    parent = os.environ["VMMOVE_HOST_TMPDIR"]
    return {p for p in os.listdir(parent) if p.startswith("vmmove.")}


def convert_step(work: Path, vm: str) -> Any:
    with Journal(journal_path(work)) as journal:
        return next(s for s in journal.steps("convert") if s.data.get("vm") == vm)


@pytest.mark.parametrize("where", ["ssh", "local"])
def test_running_vm_is_copied_at_one_point_in_time(cli, tmp_path: Path, sshd: Sshd,
                                                   libvirt_domains, where: str) -> None:
    """Over qemu+ssh://, and for a VM of this machine's qemu:///system: a backup job, no
    --inconsistent-copy needed, never qemu-img -U."""
    guest = boot_guest(libvirt_domains, f"pit{where[0]}", disk_mib=32, ticker=True,
                       data_mib=8)
    uri = remote_uri(sshd) if where == "ssh" else "qemu:///system"
    inventory = scan(cli, tmp_path, uri, guest.name)
    before = wait_ticks(guest.serial, 5)  # written before the job begins: must be there
    folders = host_folders()
    work = tmp_path / "work"
    result = cli("convert", str(inventory), guest.name, "--to", str(work), "-o", "json")
    assert result.exit_code == 0, result.stderr
    after = max(serial_ticks(guest.serial))

    output = work / f"{guest.name}-vda.qcow2"
    found = slots(output, "qcow2")
    point = max(found.values())
    assert point >= before, (point, before)
    # One moment's state: every slot holds the last tick up to that point, none later.
    expected = {s: max((i for i in range(1, point + 1) if i % TICK_SLOTS == s), default=0)
                for s in range(TICK_SLOTS)}
    assert found == expected
    # The guest kept writing during the copy: those ticks are absent from the copy.
    assert after > point
    later = slots(guest.disk, "qcow2")
    assert max(later.values()) > point

    step = convert_step(work, guest.name)
    assert step.status == "done" and step.data["copy"] == "backup"
    assert step.data["guest_checksum"] == file_guest_checksum(output, "qcow2")[0]
    assert step.data["guest_bytes"] == 32 << 20
    # issue 17: the export is read once (over SSH too), verified in the stream
    assert step.data["verify"] == "stream" and step.data["source_read"] <= 32 << 20
    assert "crash-consistent" in step.data["copy_note"]  # this guest has no agent
    # Nothing left behind: no job on the domain, no folder on the host, no bitmap.
    with pytest.raises(Exception):
        guest.dom.backupGetXMLDesc(0)
    assert host_folders() == folders == set()
    info = json.loads(qemu_img("info", "-U", "--output=json", str(guest.disk)).stdout)
    assert not info.get("format-specific", {}).get("data", {}).get("bitmaps")


def offline_vm(libvirt_domains, name: str, mib: int = 64) -> tuple[str, Path]:
    folder = libvirt_domains.image_dir()
    disk = folder / f"{name}.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(disk), f"{mib}M")
    for offset, pattern in ((0, "0x11"), (mib // 2, "0x22"), (mib - 1, "0x33")):
        qemu_io(str(disk), f"write -P {pattern} {offset}M 512k", "qcow2")
    disk.chmod(0o644)
    vm_name = libvirt_domains.name(name)
    libvirt_domains.define(DomainSpec(vm_name, disks=[(str(disk), "qcow2", "vda", "virtio",
                                                       "disk")]))
    return vm_name, disk


def sha256(path: Path) -> str:
    return subprocess.run(["sha256sum", str(path)], capture_output=True, text=True,
                          check=True).stdout.split()[0]


def test_shut_off_vm_is_read_through_qemu_nbd_and_source_unchanged(
        cli, tmp_path: Path, sshd: Sshd, libvirt_domains) -> None:
    name, disk = offline_vm(libvirt_domains, "cold")
    uri = remote_uri(sshd)
    inventory = scan(cli, tmp_path, uri, name)
    source_sum, folders = sha256(disk), host_folders()
    work = tmp_path / "work"
    result = cli("convert", str(inventory), name, "--to", str(work), "--format", "raw")
    assert result.exit_code == 0, result.stderr
    output = work / f"{name}-vda.raw"
    assert file_guest_checksum(output)[0] == file_guest_checksum(disk, "qcow2")[0]
    # holes stay holes: 1.5 MiB of data in a 64 MiB disk
    assert os.stat(output).st_blocks * 512 < 8 << 20
    step = convert_step(work, name)
    assert step.data["copy"] == "qemu-nbd" and step.data["guest_checksum"]
    assert sha256(disk) == source_sum
    assert host_folders() == folders
    assert subprocess.run(["pgrep", "-f", f"qemu-nbd.*{disk}"]).returncode == 1


def test_bad_ssh_credentials_fail_with_one_line(cli, tmp_path: Path, sshd: Sshd,
                                                libvirt_domains) -> None:
    name, _ = offline_vm(libvirt_domains, "nokey", mib=4)
    inventory = scan(cli, tmp_path, remote_uri(sshd), name)
    data = yaml.safe_load(inventory.read_text())
    wrong = tmp_path / "other_known_hosts"
    wrong.write_text(f"[127.0.0.1]:{sshd.port} ssh-ed25519 "
                     "AAAAC3NzaC1lZDI1NTE5AAAAIGq3bKqOdw2Cw3cP5Xq0f8c0N7pLFqzq1v8rC2l5x0aZ\n")
    for vm in data["vms"]:
        vm["source"]["location"] = vm["source"]["location"].replace(
            str(sshd.known_hosts).replace("/", "%2F"), str(wrong).replace("/", "%2F")).replace(
            str(sshd.known_hosts), str(wrong))
    inventory.write_text(yaml.safe_dump(data))
    result = cli("convert", str(inventory), name, "--to", str(tmp_path / "w"))
    assert result.exit_code != 0
    line = [ln for ln in result.stdout.splitlines() if ln.startswith(f"{name} ")][0]  # its row
    assert f"{name}/vda" in line and "Host key verification failed" in line
    assert not list((tmp_path / "w").glob("*.qcow2"))


# -- faults during the copy --------------------------------------------------------------------


def when_copying(work: Path, action: Any, min_bytes: int = 4 << 20) -> threading.Thread:
    """Run ``action`` once a partial output in ``work`` holds ``min_bytes``."""

    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            parts = list(work.glob(".*.part")) if work.is_dir() else []
            if any(p.stat().st_blocks * 512 >= min_bytes for p in parts if p.exists()):
                action()
                return
            time.sleep(0.005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("fault", ["ssh-dropped", "job-aborted", "guest-shut-down"])
def test_fault_during_the_copy_fails_with_one_line_and_resumes(
        cli, tmp_path: Path, sshd: Sshd, libvirt_domains, fault: str) -> None:
    guest = boot_guest(libvirt_domains, f"f{fault[:3]}", disk_mib=400, data_mib=384)
    inventory = scan(cli, tmp_path, remote_uri(sshd), guest.name)
    work = tmp_path / "work"
    action = {"ssh-dropped": sshd.drop_connections,
              "job-aborted": guest.dom.abortJob,
              "guest-shut-down": guest.dom.destroy}[fault]
    watcher = when_copying(work, action)
    result = cli("convert", str(inventory), guest.name, "--to", str(work))
    watcher.join(5)
    assert result.exit_code != 0, "the fault did not hit the copy"
    lines = [ln for ln in result.stdout.splitlines()  # the error in the disk's row
             if ln.startswith(f"{guest.name} ") and f"{guest.name}/vda: " in ln]
    assert len(lines) == 1, result.stdout
    # and once on stderr (the progress log's failed line)
    assert result.stderr.count(lines[0].split(f"{guest.name}/vda: ", 1)[1].strip()) == 1, \
        result.stderr
    assert {"ssh-dropped": "SSH connection", "job-aborted": "backup job was ended",
            "guest-shut-down": "VM shut down during the copy"}[fault] in lines[0]
    assert not list(work.glob("*.qcow2")) and not list(work.glob(".*.part"))
    assert convert_step(work, guest.name).status == "failed"
    # Rerun: a new copy (point in time again, or the shut-off disk), verified, done.
    again = cli("convert", str(inventory), guest.name, "--to", str(work))
    assert again.exit_code == 0, again.stderr
    step = convert_step(work, guest.name)
    assert step.status == "done" and step.data["guest_checksum"]
    assert step.data["copy"] == ("qemu-nbd" if fault == "guest-shut-down" else "backup")
