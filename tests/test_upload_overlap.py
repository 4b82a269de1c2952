"""Issue 17: an S3 upload that follows a stream conversion while it writes its qcow2.

Real qemu-nbd conversions (converters/stream.py) and a real SeaweedFS.  The in-process
tests replay a finished conversion's watermark by hand, so that "a part was sent before
the conversion finished" and "a byte changed between write and send" are deterministic;
the CLI tests run ``vmmove upload --follow`` and ``vmmove convert`` as two processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from converters.stream import convert_stream
from converters.transfer.base import FAILED, SKIPPED, UPLOADED, Subscriber, TransferItem, transfer_one
from converters.transfer.s3 import S3Backend, S3Options
from converters.watermark import Growth, Watermark
from migrate.core import digest
from migrate.core.journal import DONE, Journal
from migrate.core.records import KIND_CONVERT, KIND_UPLOAD
from migrate.core.workdir import journal_path
from tests.conftest import qemu_img
from tests.plan_support import cluster, controllers  # noqa: F401 - fixtures
from tests.s3_support import SeaweedFS, subprocess_env

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[1]
PART = 5 * MiB


def _raw(path: Path, size: int, writes: list[tuple[int, bytes]]) -> Path:
    with open(path, "wb") as fh:
        for offset, data in writes:
            fh.seek(offset)
            fh.write(data)
        fh.truncate(size)
    return path


def _converted(tmp_path: Path) -> tuple[Path, Growth]:
    """A stream conversion of a raw source with data, allocated zeros (skipped: the file
    ends shorter than its bound) and holes; the file and its final watermark."""
    src = _raw(tmp_path / "src.raw", 96 * MiB, [
        (0, bytes(range(256)) * (18 * MiB // 256)),
        (18 * MiB, bytes(6 * MiB)),  # allocated, all zeros
        (40 * MiB, b"\x5c" * (14 * MiB + 4096))])
    out = tmp_path / "out.qcow2"
    out.touch()
    seen = Watermark(str(out))
    result = convert_stream(str(src), "raw", str(out), label=str(src), watermark=seen)
    seen.finish(str(out), result.size, result.checksum)
    g = seen.state
    assert g.first_data == result.first_data and g.size == out.stat().st_size
    assert g.bound is not None and g.size < g.bound  # the zero clusters were skipped
    assert result.checksum == digest.file_checksum(out)
    return out, g


def _backend(server: SeaweedFS, bucket: str, workdir: Path) -> S3Backend:
    backend = S3Backend(S3Options(url=f"s3://{bucket}/grow", workdir=workdir,
                                  endpoint_url=server.endpoint, part_size=PART, workers=2))
    backend.prepare()
    return backend


def _uploads_left(server: SeaweedFS, bucket: str) -> list[Any]:
    return server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def _parts(server: SeaweedFS, bucket: str) -> int:
    client = server.client()
    return sum(len(client.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])
                   .get("Parts", []))
               for u in _uploads_left(server, bucket))


def _follow(backend: S3Backend, out: Path, journal: Journal, wm: Watermark,
            bound: int) -> tuple[threading.Thread, list[Any]]:
    item = TransferItem(item="web/vda", name="web-vda.qcow2", size=bound, path=out,
                        growth=wm, label="web/vda (web-vda.qcow2)")
    box: list[Any] = []
    thread = threading.Thread(
        target=lambda: box.append(transfer_one(backend, item, journal, Subscriber())))
    thread.start()
    return thread, box


def _until(check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_parts_go_while_the_file_is_written_and_the_object_is_the_file(
        tmp_path: Path, s3_server: SeaweedFS, s3_bucket: str, s3_env: dict[str, str]) -> None:
    out, final = _converted(tmp_path)
    assert final.first_data is not None and final.bound is not None and final.size
    backend = _backend(s3_server, s3_bucket, tmp_path)
    wm = Watermark(str(out))
    with Journal(tmp_path / "journal.db") as journal:
        thread, box = _follow(backend, out, journal, wm, final.bound)
        wm.plan(final.first_data, final.bound)
        wm.advance(final.first_data + 3 * PART + 100)
        # parts wholly behind first_data and below the written offset go at once
        _until(lambda: _parts(s3_server, s3_bucket) >= 2)
        assert thread.is_alive() and not box  # still waiting for the rest of the file
        wm.finish(str(out), final.size, str(final.checksum))
        thread.join(60)
        (result,) = box
        assert result.status == UPLOADED, result.error
        assert result.checksum == final.checksum and result.size == final.size
        assert result.sent == final.size
        step = journal.get(KIND_UPLOAD, "web/vda")
        assert step.status == DONE and step.checksum == final.checksum
        assert step.s3_state["upload_id"] is None and step.s3_state["growing"] is True

        fetched = tmp_path / "fetched.qcow2"
        head = s3_server.download(s3_bucket, "grow/web-vda.qcow2", fetched)
        assert fetched.read_bytes() == out.read_bytes()
        assert head["ContentLength"] == final.size
        assert qemu_img("check", "-f", "qcow2", str(fetched)).returncode == 0
        assert _uploads_left(s3_server, s3_bucket) == []

        # the finished file, offered again (the wave's transfer phase): nothing sent
        again = transfer_one(backend, TransferItem(
            item="web/vda", name="web-vda.qcow2", size=final.size, path=out,
            checksum=final.checksum), journal, Subscriber())
        assert (again.status, again.sent) == (SKIPPED, 0), again.error


def test_a_byte_changed_between_write_and_send_is_refused(
        tmp_path: Path, s3_server: SeaweedFS, s3_bucket: str, s3_env: dict[str, str]) -> None:
    out, final = _converted(tmp_path)
    assert final.first_data is not None and final.bound is not None and final.size
    with open(out, "r+b") as fh:  # the written data, changed before the uploader reads it
        fh.seek(final.first_data + PART + 12345)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0xFF]))
    backend = _backend(s3_server, s3_bucket, tmp_path)
    wm = Watermark(str(out))
    with Journal(tmp_path / "journal.db") as journal:
        thread, box = _follow(backend, out, journal, wm, final.bound)
        wm.plan(final.first_data, final.bound)
        wm.advance(final.size)
        wm.finish(str(out), final.size, str(final.checksum))
        thread.join(60)
        (result,) = box
        step = journal.get(KIND_UPLOAD, "web/vda")
    assert result.status == FAILED
    assert "\n" not in result.error
    assert result.error.startswith("web/vda (web-vda.qcow2): the bytes sent do not match "
                                   f"the conversion's checksum {final.checksum[:20]}")
    assert step.s3_state["upload_id"] is None
    assert _uploads_left(s3_server, s3_bucket) == []
    assert "Contents" not in s3_server.client().list_objects_v2(Bucket=s3_bucket)


def test_a_conversion_that_fails_midway_leaves_nothing_in_s3(
        tmp_path: Path, s3_server: SeaweedFS, s3_bucket: str, s3_env: dict[str, str]) -> None:
    out, final = _converted(tmp_path)
    assert final.first_data is not None and final.bound is not None
    backend = _backend(s3_server, s3_bucket, tmp_path)
    wm = Watermark(str(out))
    with Journal(tmp_path / "journal.db") as journal:
        thread, box = _follow(backend, out, journal, wm, final.bound)
        wm.plan(final.first_data, final.bound)
        wm.advance(final.first_data + 2 * PART + 1)
        _until(lambda: _parts(s3_server, s3_bucket) >= 1)
        wm.fail("conversion failed: src.raw: reading failed: Input/output error")
        thread.join(60)
        (result,) = box
        step = journal.get(KIND_UPLOAD, "web/vda")
    assert result.status == FAILED
    assert result.error == ("web/vda (web-vda.qcow2): conversion failed: src.raw: reading "
                            "failed: Input/output error; the upload was aborted")
    assert step.s3_state["upload_id"] is None
    assert _uploads_left(s3_server, s3_bucket) == []
    assert "Contents" not in s3_server.client().list_objects_v2(Bucket=s3_bucket)


# -- two processes: vmmove upload --follow started first, then vmmove convert ---------------


def _inventory(tmp_path: Path, src: Path) -> Path:
    from migrate.core.model import VM, Disk, Inventory, Source, SourceKind
    from migrate.core.serialize import save_inventory

    vm = VM(name="app", uuid="7b2e0f10-0000-4000-8000-0000000000b7",
            source=Source(SourceKind.DOMAIN_XML, str(tmp_path / "app.xml")),
            disks=[Disk(target="vda", bus="virtio", path=str(src), format="raw")])
    path = tmp_path / "inventory.yaml"
    save_inventory(Inventory(vms=[vm]), path)
    return path


def _vmmove(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", "from migrate.cli import run; run()", *args],
                            env=subprocess_env(env), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _growing(work: Path, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if journal_path(work).is_file():
            with Journal(journal_path(work)) as journal:
                steps = journal.steps(KIND_CONVERT)
            if steps and steps[0].data.get("growing"):
                return dict(steps[0].data["growing"])
        time.sleep(0.02)
    raise AssertionError("the conversion never journalled its growing file")


@pytest.mark.slow
def test_follow_sends_while_vmmove_convert_runs_in_another_process(
        tmp_path: Path, s3_server: SeaweedFS, s3_bucket: str, s3_env: dict[str, str]) -> None:
    # 200 L2 tables: the metadata region (first_data, ~13 MiB) spans more than one 8 MiB
    # part; 256 MiB of data keeps the conversion running while the follower joins.
    writes = [(i * 512 * MiB, b"\x33" * 65536) for i in range(200)]
    writes.append((8 * MiB, os.urandom(MiB) * 256))
    src = _raw(tmp_path / "big.raw", 100 << 30, writes)
    inventory = _inventory(tmp_path, src)
    work = tmp_path / "work"
    upload = _vmmove(["upload", str(inventory), "--workdir", str(work), "--follow",
                      "--wait-timeout", "60", "--s3", f"s3://{s3_bucket}/app",
                      "--endpoint-url", s3_server.endpoint, "-o", "json"], s3_env)
    time.sleep(1.0)  # the follower is up and waiting before the conversion starts
    convert = _vmmove(["convert", str(inventory), "--batch", "--to", str(work)], s3_env)
    try:
        _, cerr = convert.communicate(timeout=180)
        uout, uerr = upload.communicate(timeout=180)
    finally:
        for proc in (convert, upload):
            if proc.poll() is None:
                proc.kill()
    assert convert.returncode == 0, cerr
    assert upload.returncode == 0, uerr
    (row,) = json.loads(uout)
    with Journal(journal_path(work)) as journal:
        (conv,) = journal.steps(KIND_CONVERT)
        (up,) = journal.steps(KIND_UPLOAD)
    assert row["status"] == "uploaded" and up.status == DONE
    assert up.s3_state["growing"] is True  # sent as it was written, not after
    assert conv.data["growing"]["first_data"] > up.s3_state["part_size"]  # metadata > 1 part
    assert up.checksum == conv.checksum
    output = Path(conv.data["output"])
    fetched = tmp_path / "fetched.qcow2"
    s3_server.download(s3_bucket, f"app/{output.name}", fetched)
    assert digest.file_checksum(fetched) == digest.file_checksum(output) == conv.checksum
    assert qemu_img("check", "-f", "qcow2", str(fetched)).returncode == 0
    assert subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(src),
                           str(fetched)], capture_output=True).returncode == 0
    assert _uploads_left(s3_server, s3_bucket) == []


@pytest.mark.slow
def test_a_killed_conversion_aborts_the_follower_with_one_line(
        tmp_path: Path, s3_server: SeaweedFS, s3_bucket: str, s3_env: dict[str, str]) -> None:
    src = _raw(tmp_path / "big.raw", 2 << 30, [(0, os.urandom(MiB) * 768)])
    inventory = _inventory(tmp_path, src)
    work = tmp_path / "work"
    upload = _vmmove(["upload", str(inventory), "--workdir", str(work), "--follow",
                      "--wait-timeout", "60", "--s3", f"s3://{s3_bucket}/app",
                      "--endpoint-url", s3_server.endpoint], s3_env)
    convert = _vmmove(["convert", str(inventory), "--batch", "--to", str(work)], s3_env)
    try:
        _growing(work)
        _until(lambda: _uploads_left(s3_server, s3_bucket) != [], 60)
        convert.send_signal(signal.SIGKILL)
        convert.wait(30)
        _, err = upload.communicate(timeout=120)
    finally:
        for proc in (convert, upload):
            if proc.poll() is None:
                proc.kill()
    assert upload.returncode != 0
    lines = [ln for ln in err.splitlines() if ln.startswith("vmmove: error: app/vda")]
    assert len(lines) == 1, err  # (besides the progress lines)
    assert f"its conversion stopped (vmmove process {convert.pid} ended mid-way)" in lines[0]
    assert "the upload was aborted" in lines[0]
    assert _uploads_left(s3_server, s3_bucket) == []
    assert "Contents" not in s3_server.client().list_objects_v2(Bucket=s3_bucket)


# -- vmmove migrate PLAN --wave N --stage with an S3 target ---------------------------------


@pytest.mark.slow
def test_stage_sends_each_disk_while_it_is_converted(
        cli: Any, tmp_path: Path, s3_server: SeaweedFS, s3_bucket: str,
        s3_env: dict[str, str], cluster: Any, controllers: Any) -> None:
    from migrate.plan import load_plan
    from tests.conftest import qemu_io
    from tests.plan_support import make_images, write_node

    made = make_images(tmp_path / "images", {"big": [("vda", "raw", 512)]})
    qemu_io(made[0].disks[0][1], "write -P 0x5a 8M 320M", "raw")  # long enough to follow
    node = write_node(tmp_path / "node.xml", made)
    cli("scan", "-c", node, "--output-file", str(tmp_path / "inventory.yaml"), "-o", "json",
        ok=True)
    cli("plan", str(tmp_path / "inventory.yaml"), "--out", str(tmp_path / "plan.yaml"),
        "-n", "vms", "--network", "network:default=pod", "--s3", f"s3://{s3_bucket}/wave",
        "--endpoint-url", s3_server.endpoint, "--by", "list", "--wave", "big", ok=True)
    result = cli("migrate", str(tmp_path / "plan.yaml"), "--wave", "1", "--stage",
                 "--kubeconfig", str(cluster.kubeconfig), "-o", "json")
    assert result.exit_code == 0, result.stderr
    stages = {s["stage"]: s for s in json.loads(result.stdout)}
    assert all(s["status"] == "done" for s in stages.values()), stages
    assert "1 image(s) sent to s3://" in stages["convert"]["summary"], stages["convert"]
    assert stages["upload"]["summary"] == "upload: 1 image(s) uploaded before, nothing to send"
    plan = load_plan(tmp_path / "plan.yaml")
    with Journal(plan.journal_path) as journal:
        (conv,) = journal.steps(KIND_CONVERT)
        (up,) = journal.steps(KIND_UPLOAD)
        runs = [h["status"] for h in journal.history(KIND_UPLOAD)]
    assert up.status == DONE and up.s3_state["growing"] is True
    assert up.checksum == conv.checksum and runs.count("running") == 1
    output = Path(conv.output)
    fetched = tmp_path / "fetched.qcow2"
    s3_server.download(s3_bucket, up.data["key"], fetched)
    assert fetched.read_bytes() == output.read_bytes()
    assert qemu_img("check", "-f", "qcow2", str(fetched)).returncode == 0
    assert _uploads_left(s3_server, s3_bucket) == []


def test_an_upload_left_by_a_crash_is_aborted_and_started_over(
        tmp_path: Path, s3_server: SeaweedFS, s3_bucket: str, s3_env: dict[str, str]) -> None:
    out, final = _converted(tmp_path)
    assert final.first_data is not None and final.bound is not None and final.size
    backend = _backend(s3_server, s3_bucket, tmp_path)
    key = "grow/web-vda.qcow2"
    stale = s3_server.client().create_multipart_upload(Bucket=s3_bucket, Key=key)["UploadId"]
    wm = Watermark(str(out))
    with Journal(tmp_path / "journal.db") as journal:
        # what a killed follower left: its UploadId in the upload step's resume state
        journal.update(KIND_UPLOAD, "web/vda", s3={"bucket": s3_bucket, "key": key,
                                                   "upload_id": stale, "growing": True})
        thread, box = _follow(backend, out, journal, wm, final.bound)
        wm.plan(final.first_data, final.bound)
        wm.finish(str(out), final.size, str(final.checksum))
        thread.join(60)
        (result,) = box
    assert result.status == UPLOADED, result.error
    assert _uploads_left(s3_server, s3_bucket) == []  # the stale one aborted, the new one done
    fetched = tmp_path / "fetched.qcow2"
    s3_server.download(s3_bucket, key, fetched)
    assert fetched.read_bytes() == out.read_bytes()
