"""Output an operator (or a program) can use: ``-o json|yaml`` on every command that prints
results, RFC 3339 times, and one clear line for the common mistakes."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from migrate.core.model import Inventory
from migrate.sources.libvirt_uri import scan_uri
from tests.conftest import FIXTURES
from tests.plan_support import make_images, staged, write_node
from tests.s3_support import SeaweedFS

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def _wave_plan(tmp_path: Path, cli: Any, *extra: str) -> Path:
    node = write_node(tmp_path / "node.xml", make_images(tmp_path / "images", {
        "one": [("vda", "qcow2", 8)], "two": [("vda", "raw", 4)]}))
    cli("scan", "-c", node, "--output-file", str(tmp_path / "inv.yaml"), "-o", "json", ok=True)
    plan_file = tmp_path / "plan.yaml"
    cli("plan", str(tmp_path / "inv.yaml"), "--out", str(plan_file), "--by", "list",
        "--wave", "one", "--wave", "two", "--network", "*=pod", *extra, ok=True)
    return plan_file


# -- common mistakes ------------------------------------------------------------------------------


def test_unknown_libvirt_driver_is_named_not_a_missing_ca_certificate(cli: Any) -> None:
    result = cli("scan", "-c", "bogus://x")
    assert result.exit_code != 0
    assert "unknown libvirt driver 'bogus'" in result.stderr, result.stderr
    assert "CA" not in result.stderr and result.stderr.count("\n") == 1


def test_test_uri_with_two_slashes_says_the_host_was_misread(cli: Any) -> None:
    result = cli("scan", "-c", "test://x/node.xml")
    assert result.exit_code != 0
    assert "no such node file /node.xml" not in result.stderr
    assert "'x' was read as a host name" in result.stderr and "test:///x/node.xml" in \
        result.stderr, result.stderr
    # the README's spelling still works
    cli("scan", "-c", f"test://{FIXTURES}/libvirt/node.xml", ok=True)


def test_an_inventory_given_where_a_plan_goes(tmp_path: Path, cli: Any) -> None:
    inv = tmp_path / "inventory.yaml"
    cli("scan", "-c", f"test://{FIXTURES}/libvirt/node.xml", "-o", "yaml", "--output-file",
        str(inv), ok=True)
    for args in (["status", str(inv)], ["report", str(inv)], ["plan", "--check", str(inv)],
                 ["runbook", str(inv), "--out", str(tmp_path / "rb")]):
        result = cli(*args)
        assert result.exit_code == 2, (args, result.stderr)
        assert result.stderr.count("\n") == 1, result.stderr
        assert "this is an inventory" in result.stderr and "make a plan with `vmmove plan" \
            in result.stderr, result.stderr


def test_a_plan_given_where_an_inventory_goes(tmp_path: Path, cli: Any) -> None:
    plan_file = _wave_plan(tmp_path, cli)
    for args in (["assess", str(plan_file)],
                 ["manifests", str(plan_file), "--out", str(tmp_path / "m")]):
        result = cli(*args)
        assert result.exit_code != 0 and result.stderr.count("\n") == 1, result.stderr
        assert "this is a plan (vmmove plan), not an inventory" in result.stderr
        assert "inv.yaml" in result.stderr


# -- -o json|yaml -----------------------------------------------------------------------------


def test_manifests_of_a_plan_need_no_inventory_and_honour_vm_and_output(
        tmp_path: Path, cli: Any) -> None:
    vms, _ = scan_uri(f"test://{FIXTURES}/libvirt/node.xml")
    plan_file = staged(tmp_path, Inventory(vms=vms), [["web-01", "legacy-i440fx"]])
    one = cli("manifests", "--plan", str(plan_file), "--vm", "web-01", "-o", "yaml", ok=True)
    doc = yaml.safe_load(one.stdout)
    assert doc["kind"] == "VirtualMachine" and doc["metadata"]["name"] == "web-01"
    assert not (tmp_path / "plan.work" / "manifests").exists() or \
        not list((tmp_path / "plan.work" / "manifests").rglob("*.yaml"))
    both = cli("manifests", "--plan", str(plan_file), "-o", "json", ok=True)
    listed = json.loads(both.stdout)
    assert listed["kind"] == "List"
    assert sorted(i["metadata"]["name"] for i in listed["items"]) == ["legacy-i440fx", "web-01"]
    missing = cli("manifests", "--plan", str(plan_file), "--vm", "nope")
    assert missing.exit_code == 2 and "no VM named nope" in missing.stderr
    written = cli("manifests", "--plan", str(plan_file), "--vm", "legacy-i440fx", ok=True)
    assert "legacy-i440fx" in written.stdout and "web-01" not in written.stdout


def test_upload_of_a_wave_prints_json_and_status_times_are_rfc3339(
        tmp_path: Path, cli: Any, s3_server: SeaweedFS, s3_bucket: str,
        s3_env: dict[str, str]) -> None:
    plan_file = _wave_plan(tmp_path, cli, "--s3", f"s3://{s3_bucket}/p", "--endpoint-url",
                           s3_server.endpoint)
    cli("convert", "--batch", str(plan_file), "--wave", "1", ok=True)
    result = cli("upload", str(plan_file), "--wave", "1", "-o", "json", ok=True)
    records = json.loads(result.stdout)
    assert [(r["vm"], r["disk"], r["status"]) for r in records] == [("one", "vda", "done")]
    record = records[0]
    assert record["backend"] == "s3" and record["key"].startswith("p/")
    assert record["checksum"].startswith("xxh3-1m:") and RFC3339.match(record["finished"])
    assert "uploaded" in result.stderr  # the summary line goes to stderr
    as_yaml = cli("upload", str(plan_file), "--wave", "1", "-o", "yaml", ok=True)
    assert yaml.safe_load(as_yaml.stdout)[0]["status"] == "done"

    status = json.loads(cli("status", str(plan_file), "-o", "json", ok=True).stdout)
    convert = status["vms"][0]["steps"]["convert"]
    assert RFC3339.match(convert["started"]) and RFC3339.match(convert["finished"])
    started = datetime.fromisoformat(convert["started"].replace("Z", "+00:00"))
    assert abs(started.timestamp() - datetime.now().timestamp()) < 600
    assert status["vms"][1]["steps"]["convert"]["started"] is None
    steps = json.loads(cli("convert", "--status", "--to", str(tmp_path / "plan.work"),
                           "-o", "json").stdout or "[]")
    assert all(RFC3339.match(s["finished"]) for s in steps if s["finished"])


# -- the scan table ------------------------------------------------------------------------------


def test_scan_table_names_hosts_shortly_with_a_legend(tmp_path: Path, cli: Any) -> None:
    first = write_node(tmp_path / "a" / "node.xml", make_images(tmp_path / "ia", {
        "alpha": [("vda", "qcow2", 1)]}))
    second = write_node(tmp_path / "b" / "node.xml", make_images(tmp_path / "ib", {
        "beta": [("vda", "qcow2", 1)]}))
    result = cli("scan", "-c", first, "-c", second, ok=True)
    rows = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()[1:]}
    # two nodes with the same file name: told apart by their folders, never the whole URI
    assert rows["alpha"] != rows["beta"]
    assert all(not label.startswith("test:") for label in rows.values())
    legend = dict(line.split(": ", 1) for line in result.stderr.splitlines())
    assert legend[rows["alpha"]] == first and legend[rows["beta"]] == second


# -- --dry-run and -v ------------------------------------------------------------------------------


def test_migrate_dry_run_lists_the_steps_in_order_with_measured_estimates(
        tmp_path: Path, cli: Any, monkeypatch: Any) -> None:
    plan_file = _wave_plan(tmp_path, cli, "--s3", "s3://images/w", "--endpoint-url",
                           "http://127.0.0.1:9")
    cli("convert", "--batch", str(plan_file), "--wave", "1", ok=True)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    result = cli("migrate", str(plan_file), "--wave", "1", "--stage", "--dry-run", "-o", "json",
                 ok=True)
    steps = json.loads(result.stdout)
    assert [(s["order"], s["vm"], s["step"]) for s in steps] == [
        (1, "one", "convert"), (2, "one", "upload"), (3, "one", "manifests"),
        (4, "one", "apply"), (5, "one", "import")]
    convert, upload = steps[0], steps[1]
    assert convert["state"] == "done before (skipped)" and convert["seconds"] is None
    assert upload["state"] == "to do" and "s3://images/w" in upload["what"]
    assert upload["seconds"] > 0 and "assumed" in upload["basis"]
    # the import estimate uses nothing measured either; the convert rate is measured now
    table = cli("migrate", str(plan_file), "--wave", "2", "--stage", "--dry-run", ok=True)
    assert "convert measured at" in table.stdout and "dry run, nothing was done" in table.stderr
    # nothing ran: no upload record, no manifests folder, the cluster never asked
    status = json.loads(cli("status", str(plan_file), "-o", "json", ok=True).stdout)
    assert [v["phase"] for v in status["vms"]] == ["converted", "scanned"]
    assert not (tmp_path / "plan.work" / "manifests").exists()


def test_cutover_dry_run_stops_nothing(tmp_path: Path, cli: Any) -> None:
    vms, _ = scan_uri(f"test://{FIXTURES}/libvirt/node.xml")
    plan_file = staged(tmp_path, Inventory(vms=vms), [["web-01", "legacy-i440fx"]])
    result = cli("cutover", str(plan_file), "--wave", "1", "--dry-run", "-o", "yaml", ok=True)
    steps = yaml.safe_load(result.stdout)
    assert [(s["vm"], s["step"]) for s in steps] == [
        (vm, step) for vm in ("web-01", "legacy-i440fx")
        for step in ("preflight", "stop", "sync", "start", "verify")]
    sync = steps[2]
    assert sync["what"].startswith("verify:") and sync["seconds"] > 0
    assert all(s["state"] == "to do" for s in steps)
    table = cli("cutover", str(plan_file), "--wave", "1", "--dry-run", "--jobs", "1", ok=True)
    assert "with --jobs 1" in table.stderr and "nothing was done" in table.stderr
    # the domains are untouched: web-01 still running on the node
    again = scan_uri(f"test://{FIXTURES}/libvirt/node.xml")[0]
    assert {v.name: v.power_state.value for v in again}["web-01"] == "running"


def test_verbose_logs_commands_underneath_never_passwords(tmp_path: Path, cli: Any) -> None:
    plan_file = _wave_plan(tmp_path, cli)
    result = cli("-v", "convert", "--batch", str(plan_file), "--wave", "2", ok=True)
    traced = [Path(t.split(" ", 1)[0]).name + " " + t.split(" ", 1)[1] for t in
              (ln.split(" + ", 1)[1] for ln in result.stderr.splitlines() if " + " in ln)]
    # issue 17: the default conversion reads the source once through qemu-nbd and is
    # verified in the stream (qemu-img compare only with --verify=full)
    assert any(t.startswith("qemu-nbd --read-only") and "two-vda.raw" in t for t in traced), \
        traced
    assert any(t.startswith("qemu-img measure") for t in traced), traced
    quiet = cli("convert", "--batch", str(plan_file), "--wave", "2", ok=True)
    assert "qemu-img" not in quiet.stderr
    scanned = cli("-v", "scan", "-c", "qemu+tcp://admin:s3cret@127.0.0.1:1/system")
    assert "libvirt.openAuth('qemu+tcp://admin:***@127.0.0.1:1/system" in scanned.stderr
    assert "s3cret" not in scanned.stderr


def test_a_missing_input_file_is_one_line_exit_2_in_one_wording(tmp_path: Path,
                                                                  cli: Any) -> None:
    """scan of a missing export prints its one error line (no "No VMs found." beside it);
    a missing inventory or plan exits 2 with ``<path>: no such file or directory``, the
    file checked before the VM names."""
    missing = tmp_path / "exp" / "vm1" / "vm1.vmx"
    scanned = cli("scan", str(missing))
    assert scanned.exit_code == 1
    assert scanned.stderr == f"vmmove: error: {missing}: no such file or directory\n"
    for args, name in ((["convert", "inv.yml", "--to", str(tmp_path / "out")], "inv.yml"),
                       (["convert", "plan.yml", "app", "--to", "out"], "plan.yml"),
                       (["status", str(tmp_path / "plan.yaml")], str(tmp_path / "plan.yaml")),
                       (["report", str(tmp_path / "plan.yaml")], str(tmp_path / "plan.yaml"))):
        result = cli(*args)
        assert (result.exit_code, result.stderr) == (
            2, f"vmmove: error: {name}: no such file or directory\n"), args


def test_apply_dry_run_is_a_flag_and_its_hint_names_the_right_commands(
        tmp_path: Path, cli: Any) -> None:
    plan_file = _wave_plan(tmp_path, cli)
    result = cli("apply", str(plan_file), "--wave", "1", "--dry-run")
    assert result.exit_code == 1 and "requires an argument" not in result.stderr
    assert ("disk vda: no transfer record in " in result.stderr
            and "send the disk first (vmmove migrate PLAN --wave N --stage, or vmmove upload), "
            "or write the manifests with vmmove manifests --http-base URL or --blank one/vda"
            in result.stderr), result.stderr
    served = cli("apply", str(plan_file), "--wave", "1", "--dry-run=server",  # asks the API
                 "--kubeconfig", str(tmp_path / "none"))
    assert served.exit_code == 1 and "none: no kubeconfig here" in served.stderr
    assert "'maybe' is not one of 'none', 'client', 'server'" in cli(
        "apply", str(plan_file), "--dry-run=maybe").stderr


def test_a_failed_disk_or_round_is_said_once_on_stderr_and_in_its_row(
        tmp_path: Path, cli: Any) -> None:
    """convert and sync: the error in the table row (stdout); on stderr once (so it is seen
    when the table goes to a file), then the summary line, never the same text twice."""
    from tests.offline_support import vmx_export, warm_plan

    vmx, _, flat = vmx_export(tmp_path / "export")
    inventory, plan_file, _ = warm_plan(cli, vmx, tmp_path)
    flat.unlink()
    for args, summary in (
            (["convert", str(inventory), "app", "--to", str(tmp_path / "work")],
             "1 of 1 disk(s) failed"),
            (["sync", str(plan_file), "--wave", "1"], "sync: 1 round(s) failed")):
        result = cli(*args)
        assert result.exit_code == 1, result.stderr
        assert "app-flat.vmdk" in result.stdout, result.stdout
        lines = result.stderr.splitlines()  # progress lines, then the summary
        assert sum("app-flat.vmdk" in line for line in lines) == 1, result.stderr
        assert lines[-1].startswith(f"vmmove: error: {summary}") and "rerun" in lines[-1], lines
        assert not any("Traceback" in line for line in lines), lines


def test_namespace_option_says_what_it_does_and_does_it(tmp_path: Path, cli: Any) -> None:
    """plan -n writes the plan's namespace:; sync (like apply/migrate/cutover) -n replaces
    it for one run, the plan file unchanged; manifests --plan ignores -n."""
    from tests.offline_support import vmx_export, warm_plan

    for command in ("sync", "cutover", "apply", "migrate", "rollback"):
        assert "instead of the plan's namespace:" in " ".join(
            cli(command, "--help", ok=True).stdout.split()), command
    assert "written as the plan's namespace:" in " ".join(
        cli("plan", "--help", ok=True).stdout.split())
    assert "With --plan the plan's namespace: (and its VM entries') is used and -n is " \
        "ignored" in " ".join(cli("manifests", "--help", ok=True).stdout.split())
    vmx, _, _ = vmx_export(tmp_path / "export")
    inventory, plan_file, _ = warm_plan(cli, vmx, tmp_path)
    assert yaml.safe_load(plan_file.read_text())["namespace"] == "vms"
    cli("sync", str(plan_file), "--wave", "1", "-n", "other", ok=True)
    assert [p.relative_to(tmp_path / "volumes").parts[0]
            for p in (tmp_path / "volumes").glob("*/*/disk.img")] == ["other"]
    assert yaml.safe_load(plan_file.read_text())["namespace"] == "vms"


def test_a_broken_pipe_of_vmmove_s_own_gives_one_line_and_a_closed_stdout_none() -> None:
    """click takes any EPIPE for its own stdout and exits 1 without a word; vmmove tells a
    pipe or connection of its own (an NBD socket, a child's stdin) from its output's reader."""
    import subprocess
    import sys

    import click
    from click.testing import CliRunner

    from migrate.cli import VmmoveGroup

    @click.command("boom")
    def boom() -> None:
        raise BrokenPipeError(32, "Broken pipe")

    class Group(VmmoveGroup):
        def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
            return boom if cmd_name == "boom" else None

    result = CliRunner().invoke(Group("vmmove"),
                                ["boom"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "vmmove: error: a connection or pipe vmmove was using closed unexpectedly (Broken "
        "pipe); rerun the same command to resume"]

    # the reader of vmmove's own output went away (`vmmove … | head`): quiet, as click does
    proc = subprocess.Popen([sys.executable, "-c", "from migrate.cli import run; run()",
                             "scan", "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert b"Traceback" not in err and b"vmmove: error" not in err
