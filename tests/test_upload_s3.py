"""vmmove upload to S3, against a real SeaweedFS on loopback and real qemu-img images."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from migrate.clients.nbd import file_guest_checksum
from migrate.core import digest
from migrate.core.model import VM, Disk, Inventory, Source, SourceKind
from migrate.core.serialize import save_inventory
from migrate.core.journal import DONE, Journal
from migrate.core.workdir import disk_item, journal_path
from migrate.core.records import KIND_CONVERT, KIND_UPLOAD
from tests.conftest import Cli, qemu_img, qemu_io
from tests.s3_support import SECRET_KEY, SeaweedFS

MiB = 1 << 20


def make_qcow2(path: Path, virtual: str, writes: list[tuple[int, int, int]]) -> Path:
    """A qcow2 with ``(pattern, offset MiB, length MiB)`` regions written by qemu-io."""
    qemu_img("create", "-q", "-f", "qcow2", str(path), virtual)
    for pattern, offset, length in writes:
        qemu_io(str(path), f"write -P {pattern:#x} {offset}M {length}M", fmt="qcow2")
    return path


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def same_image(a: Path, b: Path) -> None:
    proc = subprocess.run(["qemu-img", "compare", str(a), str(b)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def converted_workdir(tmp_path: Path, disks: dict[str, Path | None],
                      form: str = digest.DEFAULT) -> tuple[Path, Path]:
    """An inventory with one VM ``web`` and a work folder whose journal records the
    conversions of the disks given a path (as vmmove convert records them, see
    migrate.core.workdir); a disk mapped to None is left unconverted.  ``form``: the
    file checksum's form; ``sha256`` writes the journal of a vmmove before issue 17
    (``sha256:`` file and ``sha256-1m:`` guest checksums)."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    vm = VM(name="web", uuid="6a1f0c2e-0000-4000-8000-00000000a001",
            source=Source(SourceKind.DOMAIN_XML, str(tmp_path / "web.xml")),
            disks=[Disk(target=t, bus="virtio", path=str(tmp_path / f"src-{t}.qcow2"),
                        format="qcow2") for t in disks])
    inventory = tmp_path / "inventory.yaml"
    save_inventory(Inventory(vms=[vm]), inventory)
    with Journal(journal_path(workdir)) as journal:
        for disk in vm.disks:
            image = disks[disk.target]
            if image is None:
                continue
            output = workdir / f"web-{disk.target}.qcow2"
            output.write_bytes(image.read_bytes())
            item = disk_item(vm, disk)
            journal.start(KIND_CONVERT, item, output=str(output), format="qcow2",
                          source=disk.path, virtual_size=64 * MiB)
            old = form == digest.SHA256
            guest = file_guest_checksum(output, "qcow2",
                                        form=digest.SHA256_1M if old else digest.DEFAULT)[0]
            journal.done(KIND_CONVERT, item, bytes=output.stat().st_size,
                         checksum=f"sha256:{sha256_of(output)}" if old
                         else digest.file_checksum(output, form),
                         guest_checksum=guest, verify="stream", verified=True,
                         allocated=output.stat().st_blocks * 512)
    return inventory, workdir


def upload_steps(workdir: Path) -> dict[str, object]:
    with Journal(journal_path(workdir)) as journal:
        return {s.item: s for s in journal.steps(KIND_UPLOAD)}


def test_inventory_disks_reach_s3_intact_with_url_secret_and_journal(
        cli: Cli, tmp_path: Path, s3_server: SeaweedFS, s3_bucket: str,
        s3_env: dict[str, str]) -> None:
    """A journal written by vmmove before issue 17 (``sha256:`` file checksums,
    ``sha256-1m:`` guest checksums) still uploads: the bytes sent are hashed in its form,
    verified against it and stored under both metadata keys (an older vmmove reads
    ``sha256``)."""
    small = make_qcow2(tmp_path / "small.qcow2", "64M", [(0xA1, 0, 2)])  # one PutObject
    big = make_qcow2(tmp_path / "big.qcow2", "64M", [(0xB2, 0, 9), (0xC3, 30, 12)])  # multipart
    inventory, workdir = converted_workdir(tmp_path, {"vda": big, "vdb": small}, digest.SHA256)

    result = cli("upload", str(inventory), "--workdir", str(workdir),
                 "--s3", f"s3://{s3_bucket}/vms/batch1", "--endpoint-url", s3_server.endpoint,
                 "-o", "json", ok=True)
    rows = {r["item"]: r for r in json.loads(result.stdout)}
    assert {r["status"] for r in rows.values()} == {"uploaded"}

    steps = upload_steps(workdir)
    vm_key = "6a1f0c2e-0000-4000-8000-00000000a001"
    for target, source in (("vda", big), ("vdb", small)):
        step = steps[f"{vm_key}/{target}"]
        assert step.status == DONE
        key = f"vms/batch1/web-{target}.qcow2"
        port = s3_server.endpoint.rsplit(":", 1)[1]
        assert step.data["backend"] == "s3"
        assert step.data["url"] == f"http://127.0.0.1:{port}/{s3_bucket}/{key}"
        assert step.data["size"] == source.stat().st_size
        assert step.checksum == f"sha256:{sha256_of(source)}"
        assert step.data["sent"] == source.stat().st_size
        fetched = tmp_path / f"fetched-{target}.qcow2"
        head = s3_server.download(s3_bucket, key, fetched)
        assert head["Metadata"]["sha256"] == sha256_of(source)
        assert head["Metadata"]["checksum"] == f"sha256:{sha256_of(source)}"
        assert head["ContentLength"] == source.stat().st_size
        same_image(source, fetched)
        assert sha256_of(fetched) == sha256_of(source)

    # The Secret manifest: named in the journal, mode 0600, the keys CDI's s3 source reads.
    secret_file = Path(steps[f"{vm_key}/vda"].data["secret_file"])
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = yaml.safe_load(secret_file.read_text())
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == steps[f"{vm_key}/vda"].data["secret"]
    assert base64.b64decode(secret["data"]["secretKey"]).decode() == SECRET_KEY
    assert base64.b64decode(secret["data"]["accessKeyId"]).decode() == s3_server.access_key

    # A rerun sends nothing: the objects are complete with the right size and checksum.
    again = cli("upload", str(inventory), "--workdir", str(workdir),
                "--s3", f"s3://{s3_bucket}/vms/batch1", "--endpoint-url", s3_server.endpoint,
                "-o", "json", ok=True)
    assert {(r["status"], r["sent"]) for r in json.loads(again.stdout)} == {("skipped", 0)}


def test_an_old_journal_keeps_old_objects_and_refuses_a_changed_image(
        cli: Cli, tmp_path: Path, s3_server: SeaweedFS, s3_bucket: str,
        s3_env: dict[str, str]) -> None:
    """Under a journal of vmmove before issue 17: an object an older vmmove completed (its
    checksum in ``x-amz-meta-sha256`` only) is recognised and not sent again; an image that
    changed since its ``sha256:`` checksum was recorded is refused, sent in parts or in one
    PutObject, and no object is completed for it."""
    big = make_qcow2(tmp_path / "big.qcow2", "64M", [(0xB2, 0, 9), (0xC3, 30, 12)])
    other = make_qcow2(tmp_path / "other.qcow2", "64M", [(0xD4, 0, 10)])
    small = make_qcow2(tmp_path / "small.qcow2", "64M", [(0xA1, 0, 2)])
    inventory, workdir = converted_workdir(
        tmp_path, {"vda": big, "vdb": other, "vdc": small}, digest.SHA256)
    client = s3_server.client()
    kept = workdir / "web-vda.qcow2"
    client.put_object(Bucket=s3_bucket, Key="old/web-vda.qcow2", Body=kept.read_bytes(),
                      Metadata={"sha256": sha256_of(kept)})
    for target in ("vdb", "vdc"):  # one byte of each changes after the conversion
        changed = workdir / f"web-{target}.qcow2"
        with open(changed, "r+b") as fh:
            fh.seek(changed.stat().st_size - 100)
            byte = fh.read(1)
            fh.seek(-1, 1)
            fh.write(bytes([byte[0] ^ 0x01]))
    assert (workdir / "web-vdb.qcow2").stat().st_size > 8 * MiB > (
        workdir / "web-vdc.qcow2").stat().st_size  # multipart, and one PutObject
    sent = cli("upload", str(inventory), "--workdir", str(workdir), "--s3",
               f"s3://{s3_bucket}/old", "--endpoint-url", s3_server.endpoint)
    assert sent.exit_code != 0
    errors = [ln for ln in sent.stderr.splitlines() if ln.startswith("vmmove: error: web/")]
    assert [ln.split()[2] for ln in errors] == ["web/vdb", "web/vdc"], sent.stderr
    assert all("does not match its recorded checksum sha256:" in ln for ln in errors)
    steps = {s.item.rsplit("/", 1)[1]: s for s in upload_steps(workdir).values()}
    assert steps["vda"].status == DONE and steps["vda"].data["sent"] == 0
    assert steps["vda"].checksum == f"sha256:{sha256_of(kept)}"
    for target in ("vdb", "vdc"):
        assert steps[target].status != DONE
        with pytest.raises(Exception, match="404|Not Found"):
            client.head_object(Bucket=s3_bucket, Key=f"old/web-{target}.qcow2")
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_folder_upload_hashes_while_sending_and_stores_the_checksum(
        cli: Cli, tmp_path: Path, s3_server: SeaweedFS, s3_bucket: str,
        s3_env: dict[str, str]) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    image = make_qcow2(folder / "db-disk.qcow2", "128M", [(0x11, 0, 10), (0x22, 100, 14)])
    raw = folder / "tiny.raw"
    raw.write_bytes(os.urandom(300_000))
    (folder / "notes.txt").write_text("not an image")

    result = cli("upload", str(folder), "--s3", f"s3://{s3_bucket}",
                 "--endpoint-url", s3_server.endpoint, "--parallel", "3", ok=True)
    assert "db-disk.qcow2" in result.stdout and "tiny.raw" in result.stdout
    assert "notes.txt" not in result.stdout
    steps = upload_steps(folder)
    assert set(steps) == {"db-disk.qcow2", "tiny.raw"}
    for name, path in (("db-disk.qcow2", image), ("tiny.raw", raw)):
        # nothing recorded: the default form (the assertion changed with the form only)
        assert steps[name].checksum == digest.file_checksum(path)
        assert steps[name].checksum.startswith("xxh3-1m:")
        head = s3_server.client().head_object(Bucket=s3_bucket, Key=name)
        assert head["Metadata"]["checksum"] == steps[name].checksum
        assert "sha256" not in head["Metadata"]
    fetched = tmp_path / "back.qcow2"
    s3_server.download(s3_bucket, "db-disk.qcow2", fetched)
    same_image(image, fetched)


def test_disks_not_converted_are_refused_and_listed(
        cli: Cli, tmp_path: Path, s3_server: SeaweedFS, s3_bucket: str,
        s3_env: dict[str, str]) -> None:
    image = make_qcow2(tmp_path / "a.qcow2", "16M", [(0x33, 0, 1)])
    inventory, workdir = converted_workdir(tmp_path, {"vda": image, "vdb": None, "vdc": None})
    result = cli("upload", str(inventory), "--workdir", str(workdir),
                 "--s3", f"s3://{s3_bucket}", "--endpoint-url", s3_server.endpoint, ok=False)
    assert "web/vdb: not converted yet" in result.stderr
    assert "web/vdc: not converted yet" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert s3_server.client().list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 0


def test_wrong_credentials_and_missing_bucket_fail_clearly(
        cli: Cli, tmp_path: Path, s3_server: SeaweedFS, s3_bucket: str,
        s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "x.raw").write_bytes(b"\x01" * 4096)

    missing = cli("upload", str(folder), "--s3", "s3://no-such-bucket-vmmove/p",
                  "--endpoint-url", s3_server.endpoint, ok=False)
    assert missing.stderr.strip() == "vmmove: error: s3://no-such-bucket-vmmove: no such bucket"

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-right-secret")
    denied = cli("upload", str(folder), "--s3", f"s3://{s3_bucket}/p",
                 "--endpoint-url", s3_server.endpoint, ok=False)
    assert denied.stderr.startswith(f"vmmove: error: s3://{s3_bucket}: access denied")
    assert "not-the-right-secret" not in denied.stderr + denied.stdout
    assert len(denied.stderr.strip().splitlines()) == 1

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    none = cli("upload", str(folder), "--s3", f"s3://{s3_bucket}/p",
               "--endpoint-url", s3_server.endpoint, ok=False)
    assert "no AWS credentials" in none.stderr
    nope = cli("upload", str(folder), "--s3", f"s3://{s3_bucket}/p", "--profile", "nope",
               "--endpoint-url", s3_server.endpoint, ok=False)
    assert "AWS profile 'nope' not found" in nope.stderr


def test_profile_from_shared_credentials_file(
        cli: Cli, tmp_path: Path, s3_server: SeaweedFS, s3_bucket: str,
        s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    Path(s3_env["AWS_SHARED_CREDENTIALS_FILE"]).write_text(
        f"[migration]\naws_access_key_id = {s3_server.access_key}\n"
        f"aws_secret_access_key = {SECRET_KEY}\n")
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "p.raw").write_bytes(os.urandom(70_000))
    cli("upload", str(folder), "--s3", f"s3://{s3_bucket}/prof", "--profile", "migration",
        "--endpoint-url", s3_server.endpoint, ok=True)
    body = s3_server.client().get_object(Bucket=s3_bucket, Key="prof/p.raw")["Body"].read()
    assert body == (folder / "p.raw").read_bytes()


def test_secret_key_appears_only_in_the_secret_manifest(
        cli: Cli, tmp_path: Path, s3_server: SeaweedFS, s3_bucket: str,
        s3_env: dict[str, str]) -> None:
    image = make_qcow2(tmp_path / "s.qcow2", "32M", [(0x44, 0, 9)])
    inventory, workdir = converted_workdir(tmp_path, {"vda": image})
    outputs = []
    for fmt in ("table", "json", "yaml"):
        r = cli("upload", str(inventory), "--workdir", str(workdir), "--s3",
                f"s3://{s3_bucket}/sec", "--endpoint-url", s3_server.endpoint, "-o", fmt,
                "--redo", ok=True)
        outputs.append(r.stdout + r.stderr)
    encoded = base64.b64encode(SECRET_KEY.encode()).decode()
    for text in outputs:
        assert SECRET_KEY not in text and encoded not in text
    holders = []
    for path in workdir.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            if SECRET_KEY.encode() in blob or encoded.encode() in blob:
                holders.append(path.name)
    secret_files = [p.name for p in workdir.glob("*.secret.yaml")]
    assert holders == secret_files and len(secret_files) == 1


def _run_upload(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    from tests.s3_support import subprocess_env

    return subprocess.Popen([sys.executable, "-c", "from migrate.cli import run; run()", "upload", *args],
                            env=subprocess_env(env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])


def _parts_stored(server: SeaweedFS, bucket: str, key: str) -> int:
    client = server.client(retries=1)
    try:
        uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    except Exception:
        return 0
    count = 0
    for up in uploads:
        if up["Key"] == key:
            parts = client.list_parts(Bucket=bucket, Key=key, UploadId=up["UploadId"])
            count = max(count, len(parts.get("Parts", [])))
    return count


def _wait_parts(server: SeaweedFS, bucket: str, key: str, n: int, proc: subprocess.Popen[str],
                timeout: float = 60) -> None:
    import time

    deadline = time.monotonic() + timeout
    while _parts_stored(server, bucket, key) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no {n} parts of {key} after {timeout}s"
        time.sleep(0.1)


@pytest.mark.slow
def test_killed_upload_resumes_sending_only_missing_parts(
        cli: Cli, tmp_path: Path, s3_server: SeaweedFS, s3_bucket: str,
        s3_env: dict[str, str]) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    image = make_qcow2(folder / "big.qcow2", "256M",
                       [(0x51, 0, 30), (0x62, 64, 30), (0x73, 200, 36)])
    size = image.stat().st_size
    assert size > 90 * MiB
    key = "resume/big.qcow2"
    args = [str(folder), "--s3", f"s3://{s3_bucket}/resume", "--endpoint-url",
            s3_server.endpoint, "--parallel", "2", "--max-bandwidth", "24MB/s"]
    proc = _run_upload(args, s3_env)
    _wait_parts(s3_server, s3_bucket, key, 3, proc)
    proc.kill()
    proc.wait()

    with Journal(journal_path(folder)) as journal:
        step = journal.get(KIND_UPLOAD, "big.qcow2")
    assert step is not None and step.status != DONE and step.data["s3"]["upload_id"]
    stored = _parts_stored(s3_server, s3_bucket, key)
    assert stored >= 3

    result = cli("upload", *args[:-2], "-o", "json", ok=True)
    (row,) = json.loads(result.stdout)
    assert row["status"] == "resumed"
    part = step.data["s3"]["part_size"]
    assert row["sent"] <= size - stored * part, (row["sent"], size, stored)
    assert row["checksum"] == digest.file_checksum(image)
    fetched = tmp_path / "fetched.qcow2"
    head = s3_server.download(s3_bucket, key, fetched)
    assert head["Metadata"]["checksum"] == digest.file_checksum(image)
    assert sha256_of(fetched) == sha256_of(image)
    same_image(image, fetched)
    assert s3_server.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


@pytest.mark.slow
def test_server_restart_during_upload_is_retried_to_completion(
        tmp_path: Path, s3_env: dict[str, str]) -> None:
    from tests.s3_support import PeakRss, subprocess_env

    server = SeaweedFS(tmp_path / "private-s3")
    server.start()
    try:
        bucket = server.new_bucket()
        folder = tmp_path / "images"
        folder.mkdir()
        image = make_qcow2(folder / "r.qcow2", "128M", [(0x81, 0, 30), (0x92, 64, 34)])
        key = "r.qcow2"
        env = server.env(tmp_path)
        logs = tmp_path / "uploader.log"
        with open(logs, "w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-c", "from migrate.cli import run; run()", "upload",
                 str(folder), "--s3", f"s3://{bucket}", "--endpoint-url", server.endpoint,
                 "--parallel", "2", "--max-bandwidth", "16MB/s"],
                env=subprocess_env(env), stdout=log, stderr=log,
                cwd=Path(__file__).resolve().parents[1])
            rss = PeakRss(proc)
            _wait_parts(server, bucket, key, 2, proc)
            assert proc.poll() is None  # still uploading when the server goes away
            server.stop()
            server.start()
            peak = rss.wait(timeout=240)
        assert proc.returncode == 0, logs.read_text()
        assert 0 < peak < 256 * MiB, f"uploader peak RSS {peak / MiB:.0f} MiB"
        fetched = tmp_path / "fetched.qcow2"
        head = server.download(bucket, key, fetched)
        assert head["Metadata"]["checksum"] == digest.file_checksum(image)
        same_image(image, fetched)
    finally:
        server.stop()


def test_part_size_grows_to_stay_within_ten_thousand_parts() -> None:
    from converters.transfer.s3 import part_size_for

    assert part_size_for(100 * MiB) == 8 * MiB
    for size in (80 * 1024 * MiB, 1024 * 1024 * MiB, 5 * 1024 * 1024 * MiB):
        part = part_size_for(size)
        assert -(-size // part) <= 10_000 and part >= 8 * MiB
