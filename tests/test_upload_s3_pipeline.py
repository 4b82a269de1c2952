"""convert → upload with the real ``vmmove convert``: the journal hand-over between them,
``--follow`` overlapping an upload with a conversion running beside it, and ``--as-is``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from migrate.core.model import VM, Disk, Inventory, Source, SourceKind
from migrate.core.serialize import save_inventory
from migrate.core.journal import DONE, Journal
from migrate.core.workdir import journal_path
from migrate.core.records import KIND_CONVERT, KIND_UPLOAD
from tests.conftest import Cli, qemu_img, qemu_io
from tests.s3_support import SeaweedFS, subprocess_env
from tests.test_upload_s3 import same_image, sha256_of

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("converters.convert", reason="vmmove convert is not in this checkout")


def inventory_of(tmp_path: Path, sources: dict[str, Path]) -> Path:
    vm = VM(name="app", uuid="7b2e0f10-0000-4000-8000-0000000000a2",
            source=Source(SourceKind.VMX, str(tmp_path / "app.vmx")),
            disks=[Disk(target=t, bus="scsi", path=str(p), format=qemu_format(p))
                   for t, p in sources.items()])
    path = tmp_path / "inventory.yaml"
    save_inventory(Inventory(vms=[vm]), path)
    return path


def qemu_format(path: Path) -> str:
    return json.loads(qemu_img("info", "--output=json", str(path)).stdout)["format"]


def vmdk_with_data(path: Path, virtual: str, writes: list[str]) -> Path:
    raw = path.with_suffix(".raw")
    qemu_img("create", "-q", "-f", "raw", str(raw), virtual)
    for w in writes:
        qemu_io(str(raw), w, fmt="raw")
    qemu_img("convert", "-f", "raw", "-O", "vmdk", str(raw), str(path))
    raw.unlink()
    return path


def test_follow_uploads_each_disk_as_its_conversion_finishes(
        cli: Cli, tmp_path: Path, s3_server: SeaweedFS, s3_bucket: str,
        s3_env: dict[str, str]) -> None:
    src = {t: vmdk_with_data(tmp_path / f"{t}.vmdk", "96M",
                             [f"write -P {0x20 + i:#x} {8 * i}M 12M"])
           for i, t in enumerate(("sda", "sdb"))}
    inventory = inventory_of(tmp_path, src)
    work = tmp_path / "work"
    convert = subprocess.Popen(
        [sys.executable, "-c", "from migrate.cli import run; run()", "convert", str(inventory),
         "--batch", "--jobs", "1", "--to", str(work)],
        env=subprocess_env(s3_env), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        work.mkdir(exist_ok=True)
        result = cli("upload", str(inventory), "--workdir", str(work), "--follow",
                     "--wait-timeout", "120", "--s3", f"s3://{s3_bucket}/app",
                     "--endpoint-url", s3_server.endpoint, "-o", "json", ok=True)
    finally:
        out, err = convert.communicate(timeout=120)
    assert convert.returncode == 0, err
    rows = json.loads(result.stdout)
    assert sorted(r["status"] for r in rows) == ["uploaded", "uploaded"]
    with Journal(journal_path(work)) as journal:
        converts = {s.item: s for s in journal.steps(KIND_CONVERT)}
        uploads = {s.item: s for s in journal.steps(KIND_UPLOAD)}
    assert set(converts) == set(uploads) and len(uploads) == 2
    for item, up in uploads.items():
        assert up.status == DONE
        assert up.checksum == converts[item].checksum  # the conversion's sha256, confirmed
        output = Path(converts[item].data["output"])
        fetched = tmp_path / f"fetched-{output.name}"
        s3_server.download(s3_bucket, f"app/{output.name}", fetched)
        assert sha256_of(fetched) == sha256_of(output)
        same_image(src[item.rsplit("/", 1)[1]], fetched)


def test_as_is_sends_a_single_file_vmdk_without_converting(
        cli: Cli, tmp_path: Path, s3_server: SeaweedFS, s3_bucket: str,
        s3_env: dict[str, str]) -> None:
    vmdk = vmdk_with_data(tmp_path / "data.vmdk", "512M", ["write -P 0x41 100M 20M"])
    backed = tmp_path / "child.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(vmdk), "-F", "vmdk", str(backed))
    inventory = inventory_of(tmp_path, {"sda": vmdk, "sdb": backed})
    work = tmp_path / "work"
    work.mkdir()
    refused = cli("upload", str(inventory), "--workdir", str(work), "--as-is", "--s3",
                  f"s3://{s3_bucket}/asis", "--endpoint-url", s3_server.endpoint, ok=False)
    assert "app/sdb: has a backing file" in refused.stderr

    result = cli("upload", str(inventory), "sda", "--workdir", str(work), "--as-is",
                 "--s3", f"s3://{s3_bucket}/asis", "--endpoint-url", s3_server.endpoint,
                 "-o", "json", ok=False)  # "sda" is not a VM name
    assert "no such VM in the inventory: sda" in result.stderr
    inventory = inventory_of(tmp_path, {"sda": vmdk})
    result = cli("upload", str(inventory), "--workdir", str(work), "--as-is",
                 "--s3", f"s3://{s3_bucket}/asis", "--endpoint-url", s3_server.endpoint,
                 "-o", "json", ok=True)
    (row,) = json.loads(result.stdout)
    assert row["sent"] == vmdk.stat().st_size < 24 << 20  # allocated data + metadata only
    assert row["url"].endswith(f"/{s3_bucket}/asis/app-sda.vmdk")
    fetched = tmp_path / "fetched.vmdk"
    s3_server.download(s3_bucket, "asis/app-sda.vmdk", fetched)
    same_image(vmdk, fetched)
