"""``vmmove clean``: staged images and S3 objects of cut-over VMs go; sources never do."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from migrate.core.records import KIND_CLEAN, KIND_CONVERT, KIND_CUTOVER, KIND_UPLOAD
from migrate.plan import load_plan
from migrate.core.journal import Journal
from tests.plan_support import make_images, write_node
from tests.s3_support import SeaweedFS


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _exists(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError:
        return False
    return True


def test_clean_removes_what_cut_over_vms_staged_and_nothing_else(
        tmp_path: Path, cli: Any, s3_server: SeaweedFS, s3_bucket: str,
        s3_env: dict[str, str]) -> None:
    node = write_node(tmp_path / "node.xml", make_images(tmp_path / "images", {
        "one": [("vda", "qcow2", 8), ("vdb", "raw", 4)], "two": [("vda", "qcow2", 4)]}))
    sources = sorted((tmp_path / "images").iterdir())
    before = {p: _digest(p) for p in sources}
    cli("scan", "-c", node, "--output-file", str(tmp_path / "inv.yaml"), ok=True)
    plan_file = tmp_path / "plan.yaml"
    cli("plan", str(tmp_path / "inv.yaml"), "--out", str(plan_file), "--network", "*=pod",
        "--s3", f"s3://{s3_bucket}/w", "--endpoint-url", s3_server.endpoint, ok=True)
    cli("convert", "--batch", str(plan_file), "--wave", "1", ok=True)
    cli("upload", str(plan_file), "--wave", "1", ok=True)
    plan = load_plan(plan_file)
    one, two = plan.planned("one"), plan.planned("two")
    with plan.journal() as journal:
        # "one" is cut over: the record vmmove cutover leaves when it is done
        journal.start(KIND_CUTOVER, one.key, downtime=12.5)
        journal.done(KIND_CUTOVER, one.key, downtime=12.5)
        images = {s.item: Path(s.data["output"]) for s in journal.steps(KIND_CONVERT)}
        keys = {s.item: s.data["key"] for s in journal.steps(KIND_UPLOAD)}
    client = s3_server.client()

    dry = cli("clean", str(plan_file), "--dry-run", "-o", "json", ok=True)
    would = json.loads(dry.stdout)
    assert sorted((r["vm"], r["disk"], r["what"], r["result"]) for r in would) == [
        ("one", "vda", "image", "would remove"), ("one", "vda", "s3", "would remove"),
        ("one", "vdb", "image", "would remove"), ("one", "vdb", "s3", "would remove")]
    assert "clean (dry run): 4 would be removed" in dry.stderr
    assert "nothing was removed" in dry.stderr
    assert all(p.is_file() for p in images.values())  # nothing removed, nothing journalled
    assert all(_exists(client, s3_bucket, k) for k in keys.values())
    with plan.journal() as journal:
        assert list(journal.steps(KIND_CLEAN)) == []

    result = cli("clean", str(plan_file), "-o", "json", ok=True)
    removed = json.loads(result.stdout)
    assert [r["bytes"] for r in removed] == [r["bytes"] for r in would]  # as announced
    assert sorted((r["vm"], r["disk"], r["what"], r["result"]) for r in removed) == [
        ("one", "vda", "image", "removed"), ("one", "vda", "s3", "removed"),
        ("one", "vdb", "image", "removed"), ("one", "vdb", "s3", "removed")]
    assert all(r["bytes"] > 0 for r in removed)
    assert "kept: two: uploaded, not cut over" in result.stderr
    for item in (f"{one.key}/vda", f"{one.key}/vdb"):
        assert not images[item].exists() and not _exists(client, s3_bucket, keys[item])
    assert images[f"{two.key}/vda"].is_file() and _exists(client, s3_bucket,
                                                          keys[f"{two.key}/vda"])
    with Journal(plan.journal_path) as journal:
        record = journal.get(KIND_CLEAN, f"{one.key}/vda")
    assert record is not None and record.status == "done"
    assert record.data["removed"][0]["s3"] == f"s3://{s3_bucket}/{keys[f'{one.key}/vda']}"

    again = json.loads(cli("clean", str(plan_file), "-o", "json", ok=True).stdout)
    assert {r["result"] for r in again} == {"already gone"}

    # on request: the other VM's images only; its S3 object stays
    forced = json.loads(cli("clean", str(plan_file), "--images", "--force", "--wave", "1",
                            "-o", "json", ok=True).stdout)
    assert ("two", "image", "removed") in {(r["vm"], r["what"], r["result"]) for r in forced}
    assert not images[f"{two.key}/vda"].exists()
    assert _exists(client, s3_bucket, keys[f"{two.key}/vda"])
    assert {p: _digest(p) for p in sources} == before  # the sources, byte for byte


def test_clean_never_removes_a_file_outside_the_work_folder(tmp_path: Path, cli: Any) -> None:
    node = write_node(tmp_path / "node.xml", make_images(tmp_path / "images", {
        "one": [("vda", "qcow2", 4)]}))
    source = next((tmp_path / "images").iterdir())
    cli("scan", "-c", node, "--output-file", str(tmp_path / "inv.yaml"), ok=True)
    plan_file = tmp_path / "plan.yaml"
    cli("plan", str(tmp_path / "inv.yaml"), "--out", str(plan_file), "--network", "*=pod",
        ok=True)
    cli("convert", "--batch", str(plan_file), "--wave", "1", ok=True)
    plan = load_plan(plan_file)
    with plan.journal() as journal:
        (step,) = journal.steps(KIND_CONVERT)
        # a journal that names the source as the output (edited, or a bug elsewhere)
        journal.update(KIND_CONVERT, step.item, output=str(source))
    result = json.loads(cli("clean", str(plan_file), "--force", "-o", "json", ok=True).stdout)
    assert [(r["result"], r["why"]) for r in result] == [
        ("kept", f"outside the work folder {plan.workdir}")]
    assert source.is_file()
    no_s3 = cli("clean", str(plan_file), "--s3")
    assert no_s3.exit_code == 2 and "no S3 transfer target" in no_s3.stderr


@pytest.mark.parametrize("flag", ["--images", "--s3"])
def test_clean_of_a_plan_with_nothing_done_removes_nothing(tmp_path: Path, cli: Any,
                                                           flag: str) -> None:
    node = write_node(tmp_path / "node.xml", make_images(tmp_path / "images", {
        "one": [("vda", "qcow2", 4)]}))
    cli("scan", "-c", node, "--output-file", str(tmp_path / "inv.yaml"), ok=True)
    plan_file = tmp_path / "plan.yaml"
    cli("plan", str(tmp_path / "inv.yaml"), "--out", str(plan_file), "--network", "*=pod",
        "--s3", "s3://b/p", "--endpoint-url", "http://127.0.0.1:9", ok=True)
    result = cli("clean", str(plan_file), flag, ok=True)
    assert "kept: one: scanned, not cut over" in result.stderr
    assert "clean: 0 removed" in result.stderr
