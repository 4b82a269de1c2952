"""The image chain of a host's shut-off disk, checked against libvirt's view before
qemu-nbd opens it (migrate/sources/host_chain.py): real qemu-img images; the "host" is
this machine (``LocalHost``: the same commands, without SSH)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from migrate.clients.ssh import LocalHost
from migrate.core.model import BackingFile, Disk
from migrate.sources.host_chain import HostChainError, host_chain


def qcow2(path: Path, backing: str | None = None, fmt: str = "raw") -> Path:
    args = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing:
        args += ["-b", backing, "-F", fmt]
    subprocess.run([*args, str(path), "4M"], check=True)
    return path


def test_agreeing_chain_is_pinned_layer_by_layer(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(b"\x42" * (4 << 20))
    mid = qcow2(tmp_path / "mid.qcow2", str(base))
    top = qcow2(tmp_path / "top.qcow2", "mid.qcow2", "qcow2")  # relative, as headers often are
    disk = Disk("vda", path=str(top), format="qcow2",
                backing_chain=[BackingFile(str(mid), "qcow2")])  # libvirt lists fewer layers
    chain = host_chain(LocalHost(), disk, "vm/vda")
    spec = chain.spec()
    assert spec["file"]["filename"] == str(top)
    assert spec["backing"]["file"]["filename"] == str(mid)
    assert spec["backing"]["backing"] == {"driver": "raw",
                                          "file": {"driver": "file", "filename": str(base)}}
    # what qemu opens from the pinned name is the chain's guest view: the base's bytes
    same = subprocess.run(["qemu-img", "compare", "-F", "raw", chain.qemu_name(), str(base)],
                          capture_output=True, text=True)
    assert same.returncode == 0, same.stdout + same.stderr


def test_headers_that_disagree_with_libvirt_are_refused(tmp_path: Path) -> None:
    real = qcow2(tmp_path / "real.qcow2")
    other = qcow2(tmp_path / "other.qcow2")
    top = qcow2(tmp_path / "top.qcow2", str(other), "qcow2")
    disk = Disk("vda", path=str(top), format="qcow2",
                backing_chain=[BackingFile(str(real), "qcow2")])
    with pytest.raises(HostChainError) as err:
        host_chain(LocalHost(), disk, "vm/vda")
    assert str(err.value) == (f"vm/vda: the image headers name backing file {other} where "
                              f"libvirt reports {real}: they disagree; nothing was opened")
    # libvirt names a layer the headers do not have
    alone = qcow2(tmp_path / "alone.qcow2")
    disk = Disk("vda", path=str(alone), format="qcow2",
                backing_chain=[BackingFile(str(real), "qcow2")])
    with pytest.raises(HostChainError, match="headers end at"):
        host_chain(LocalHost(), disk, "vm/vda")


def test_headers_naming_a_network_node_or_a_disk_without_format_are_refused(tmp_path: Path) -> None:
    top = tmp_path / "net.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b",
                    "nbd://192.0.2.1:10809/x", "-F", "raw", str(top), "4M"], check=True)
    with pytest.raises(HostChainError, match="not a file of the host"):
        host_chain(LocalHost(), Disk("vda", path=str(top), format="qcow2"), "vm/vda")
    base = qcow2(tmp_path / "b.qcow2")
    with pytest.raises(HostChainError, match="declares no format"):
        host_chain(LocalHost(), Disk("vda", path=str(base)), "vm/vda")
