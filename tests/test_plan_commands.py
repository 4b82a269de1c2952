"""The single-step commands driven by a plan: convert --batch PLAN --wave N, upload PLAN
--wave N, manifests INVENTORY --plan PLAN, and status along the way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from migrate.plan import load_plan
from migrate.core.journal import DONE, Journal
from migrate.core.model import Inventory
from migrate.sources.libvirt_uri import scan_uri
from tests.plan_support import make_images, staged, write_node
from tests.s3_support import SeaweedFS


def test_convert_a_wave_of_a_plan(tmp_path: Path, cli: Any) -> None:
    node = write_node(tmp_path / "node.xml", make_images(tmp_path / "images", {
        "one": [("vda", "qcow2", 8)], "two": [("vda", "raw", 4), ("vdb", "qcow2", 4)]}))
    cli("scan", "-c", node, "--output-file", str(tmp_path / "inv.yaml"), "-o", "json", ok=True)
    plan_file = tmp_path / "plan.yaml"
    cli("plan", str(tmp_path / "inv.yaml"), "--out", str(plan_file), "--by", "list",
        "--wave", "one", "--wave", "two", "--network", "*=pod", ok=True)
    raw = yaml.safe_load(plan_file.read_text())
    raw["convert"] = {"format": "raw", "verify": True}
    plan_file.write_text(yaml.safe_dump(raw, sort_keys=False))

    status = json.loads(cli("status", str(plan_file), "-o", "json", ok=True).stdout)
    assert {v["phase"] for v in status["vms"]} == {"scanned"}
    needs_wave = cli("convert", "--batch", str(plan_file))
    assert needs_wave.exit_code == 2 and "--wave N" in needs_wave.stderr
    result = cli("convert", "--batch", str(plan_file), "--wave", "2", "-o", "json")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["vm"], r["disk"], r["status"], r["format"]) for r in rows] == [
        ("two", "vda", "converted", "raw"), ("two", "vdb", "converted", "raw")]
    plan = load_plan(plan_file)
    assert all(Path(r["output"]).parent == plan.workdir for r in rows)
    with Journal(plan.journal_path) as journal:
        assert {s.item.split("/")[1] for s in journal.steps("convert")} == {"vda", "vdb"}
        assert all(s.status == DONE for s in journal.steps("convert"))
    status = json.loads(cli("status", str(plan_file), "-o", "json", ok=True).stdout)
    assert [(v["vm"], v["phase"]) for v in status["vms"]] == [("one", "scanned"),
                                                             ("two", "converted")]
    assert status["vms"][1]["steps"]["convert"]["done"] == 2
    # wave 1 is still to do; the table says so
    table = cli("status", str(plan_file), ok=True)
    assert "wave 1: 1 scanned" in table.stderr and "wave 2: 1 converted" in table.stderr


def test_manifests_from_a_plan(tmp_path: Path, cli: Any) -> None:
    vms, _ = scan_uri(f"test://{Path(__file__).resolve().parents[1]}/fixtures/libvirt/node.xml")
    plan_file = staged(tmp_path, Inventory(vms=vms), [["web-01"], ["legacy-i440fx"]])
    raw = yaml.safe_load(plan_file.read_text())
    raw["waves"][0]["vms"] = [{"vm": "web-01", "targetName": "www", "runStrategy": "Always"}]
    plan_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    wrong = cli("manifests", str(tmp_path / "other.yaml"), "--plan", str(plan_file))
    assert wrong.exit_code == 2 and "the plan" in wrong.stderr
    result = cli("manifests", str(tmp_path / "inventory.yaml"), "--plan", str(plan_file),
                 "--wave", "1")
    assert result.exit_code == 0, result.stderr
    folder = load_plan(plan_file).manifests_dir
    vm = yaml.safe_load((folder / "vms" / "www.yaml").read_text())
    assert vm["metadata"]["name"] == "www" and vm["spec"]["runStrategy"] == "Always"
    template = vm["spec"]["dataVolumeTemplates"][0]
    assert template["spec"]["source"]["s3"]["url"].endswith("/images/vms/web-01-vda.qcow2")
    assert (folder / "vms" / "secret-vmmove-s3-test.yaml").is_file()
    assert not (folder / "vms" / "legacy-i440fx.yaml").exists()


def test_upload_a_wave_of_a_plan(tmp_path: Path, cli: Any, s3_server: SeaweedFS,
                                 s3_bucket: str, s3_env: dict[str, str]) -> None:
    node = write_node(tmp_path / "node.xml", make_images(tmp_path / "images", {
        "one": [("vda", "qcow2", 8)], "two": [("vda", "qcow2", 4)]}))
    cli("scan", "-c", node, "--output-file", str(tmp_path / "inv.yaml"), "-o", "json", ok=True)
    plan_file = tmp_path / "plan.yaml"
    cli("plan", str(tmp_path / "inv.yaml"), "--out", str(plan_file), "--by", "list",
        "--wave", "one", "--wave", "two", "--network", "*=pod", "--s3", f"s3://{s3_bucket}/p",
        "--endpoint-url", s3_server.endpoint, ok=True)
    early = cli("upload", str(plan_file), "--wave", "1")
    assert early.exit_code == 1 and "one/vda" in early.stderr and "not converted" in early.stderr
    # transfer flags with a plan are refused, not silently ignored: the plan decides them
    clash = cli("upload", str(plan_file), "--wave", "1", "--insecure", "--s3", "s3://other/x")
    assert clash.exit_code == 2 and clash.stderr.count("\n") == 1
    assert "--s3, --insecure: set by the plan" in clash.stderr
    refused = cli("convert", "--batch", str(plan_file), "--wave", "1", "--to", str(tmp_path / "x"),
                  "--no-verify")
    assert refused.exit_code == 2 and "--to, --no-verify: set by the plan" in refused.stderr
    assert not (tmp_path / "x").exists()
    cli("convert", "--batch", str(plan_file), "--wave", "1", ok=True)
    result = cli("upload", str(plan_file), "--wave", "1")
    assert result.exit_code == 0, result.stderr
    assert "1 uploaded" in result.stdout
    plan = load_plan(plan_file)
    one = plan.planned("one")
    with Journal(plan.journal_path) as journal:
        step = journal.get("upload", f"{one.key}/vda")
        converted = journal.get("convert", f"{one.key}/vda")
    assert step.status == DONE and step.checksum == converted.checksum
    head = s3_server.client().head_object(Bucket=s3_bucket, Key=step.data["key"])
    assert head["ContentLength"] == Path(converted.data["output"]).stat().st_size
    again = cli("upload", str(plan_file), "--wave", "1", ok=True)
    assert "uploaded before, nothing to send" in again.stdout
    status = json.loads(cli("status", str(plan_file), "-o", "json", ok=True).stdout)
    assert [(v["vm"], v["phase"]) for v in status["vms"]] == [("one", "uploaded"),
                                                             ("two", "scanned")]
    assert status["vms"][0]["bytesMoved"] == head["ContentLength"]
