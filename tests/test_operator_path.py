"""The operator's main path (issue 13): remedies that exist, preflight before the first byte,
transfers that know their target, plan --check with the assessment, rollback of a wave never
cut over, and numbers that stay true across reruns, rehearsals and rollbacks."""

from __future__ import annotations

import ast
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from migrate.plan import load_plan
from migrate.core.journal import DONE
from tests.conftest import ROOT
from tests.guest_support import KubeVirt, kubevirt  # noqa: F401
from tests.plan_support import (
    Cluster,
    Controllers,
    cluster,  # noqa: F401
    controllers,  # noqa: F401
    make_images,
    write_node,
)
from tests.s3_support import SeaweedFS
from tests.test_migrate_e2e import scan_and_plan

FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _node(tmp: Path, vms: dict[str, list[tuple[str, str, int]]], running: bool = False) -> str:
    made = make_images(tmp / "images", vms)
    uri = write_node(tmp / "node.xml", made)
    if running:  # the test driver's run state: 1 = running
        for f in (tmp / "domains").glob("*.xml"):
            f.write_text(f.read_text().replace("<test:runstate>5<", "<test:runstate>1<"))
    return uri


def _scan(cli: Any, tmp: Path, uri: str) -> Path:
    inventory = tmp / "inventory.yaml"
    cli("scan", "-c", uri, "--output-file", str(inventory), "-o", "json", ok=True)
    return inventory


# -- 1. staging a running VM is a plan setting; remedies name what exists -----------------------


def test_staging_running_vms_is_a_plan_flag(cli: Any, tmp_path: Path) -> None:
    inventory = _scan(cli, tmp_path, _node(tmp_path, {"live": [("vda", "qcow2", 4)]},
                                           running=True))
    assert yaml.safe_load(inventory.read_text())["vms"][0]["power_state"] == "running"
    plan = tmp_path / "plan.yaml"
    cli("plan", str(inventory), "--out", str(plan), "--network", "*=pod", ok=True)
    assert yaml.safe_load(plan.read_text())["convert"]["forceShare"] is False
    refused = cli("convert", str(plan), "--wave", "1")
    assert refused.exit_code != 0
    # the remedy (in the disk's row) names the plan setting and the plan flag, never a flag
    # convert refuses here
    assert "convert.forceShare: true in plan.yaml" in refused.stdout
    assert "vmmove plan --stage-running" in refused.stdout
    assert "--force-share" not in refused.stdout

    staged = tmp_path / "staged.yaml"
    cli("plan", str(inventory), "--out", str(staged), "--network", "*=pod", "--stage-running",
        "--s3", "s3://images/vms", ok=True)
    assert yaml.safe_load(staged.read_text())["convert"]["forceShare"] is True
    cli("plan", "--check", str(staged), ok=True)
    cli("convert", str(staged), "--wave", "1", ok=True)
    with load_plan(staged).journal() as journal:
        (step,) = journal.steps("convert")
    assert step.status == DONE and step.data["force_share"] is True


def _commands() -> dict[str, set[str]]:
    from migrate.cli import _discover

    return {name: {o for p in cmd.params
                   for o in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])]}
            for name, cmd in _discover().items()}


def _texts(node: ast.AST) -> list[str]:
    if isinstance(node, ast.JoinedStr):
        return ["".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)]
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    return []


def error_messages(path: Path) -> list[tuple[str, int]]:
    """Every error text of a module: the strings of each ``raise``, of ``*_HINT`` constants
    and of what ``*hint`` functions return (how remedies are written in this code)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        value = None
        if isinstance(node, ast.Raise) and node.exc is not None:
            value = node.exc
        elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id.endswith("HINT") for t in node.targets):
            value = node.value
        elif isinstance(node, ast.FunctionDef) and node.name.endswith("hint"):
            value = node
        if value is not None:
            out.append((" ".join(t for sub in ast.walk(value) for t in _texts(sub)),
                        node.lineno))
    return out


def test_every_remedy_in_an_error_names_an_option_that_exists() -> None:
    commands = _commands()
    every = set().union(*commands.values())
    files = sorted((ROOT / "migrate").rglob("*.py")) + sorted((ROOT / "converters").rglob("*.py"))
    wrong, checked = [], 0
    for path in files:
        for text, line in error_messages(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            for m in re.finditer(r"vmmove ([a-z]+)\b(.*?)(?=vmmove |[;()`]|$)", text):
                if m.group(1) in commands:
                    for flag in FLAG.findall(m.group(2)):
                        checked += 1
                        if flag not in commands[m.group(1)]:
                            wrong.append(f"{where}: vmmove {m.group(1)} has no {flag}")
            for flag in FLAG.findall(text):
                checked += 1
                if flag not in every:
                    wrong.append(f"{where}: no command has {flag}")
    assert checked > 50  # the scan found the remedies it is about
    assert wrong == []


# -- 5. plan --check includes the assessment's criticals ----------------------------------------


def test_plan_check_reports_critical_concerns(cli: Any, tmp_path: Path) -> None:
    from tests.conftest import FIXTURES

    node = f"test://{FIXTURES / 'libvirt' / 'node.xml'}"
    inventory = _scan(cli, tmp_path, node)
    plan = tmp_path / "plan.yaml"
    cli("plan", str(inventory), "--out", str(plan), "--network", "*=pod", "--by", "list",
        "--wave", "gpu-worker", ok=True)
    checked = cli("plan", "--check", str(plan))
    assert checked.exit_code != 0
    assert "VM 'gpu-worker': critical pci-passthrough" in checked.stderr
    assert "--skip-blocked" in checked.stderr
    # planned skip: true with the reason, as --skip-blocked writes it: the check passes
    skipped = tmp_path / "skipped.yaml"
    cli("plan", str(inventory), "--out", str(skipped), "--network", "*=pod", "--by", "list",
        "--wave", "gpu-worker", "--skip-blocked", ok=True)
    ok = cli("plan", "--check", str(skipped), ok=True)
    assert "0 VM(s) to migrate, 1 skipped" in ok.stderr


# -- 7. rollback of a wave never cut over ---------------------------------------------------------


def test_rollback_of_a_wave_never_cut_over_has_nothing_to_do(cli: Any, tmp_path: Path) -> None:
    inventory = _scan(cli, tmp_path, _node(tmp_path, {"a": [("vda", "qcow2", 4)],
                                                      "b": [("vda", "raw", 4)]}))
    plan = tmp_path / "plan.yaml"
    cli("plan", str(inventory), "--out", str(plan), "--network", "*=pod", ok=True)
    # no cluster is asked (this kubeconfig does not exist), nothing is journalled
    result = cli("rollback", str(plan), "--wave", "1", "--kubeconfig",
                 str(tmp_path / "absent"), "-o", "json")
    assert result.exit_code == 0, result.stderr
    assert {r["status"] for r in json.loads(result.stdout)} == {"nothing to roll back"}
    assert "wave 1: nothing to roll back" in result.stderr
    status = json.loads(cli("status", str(plan), "-o", "json", ok=True).stdout)
    assert {v["phase"] for v in status["vms"]} == {"scanned"}
    journal = load_plan(plan).journal_path
    if journal.is_file():
        with load_plan(plan).journal() as j:
            assert j.steps("rollback") == []


# -- 2. preflight before the first byte -----------------------------------------------------------


def test_migrate_preflight_lists_every_problem_before_converting(
        cli: Any, tmp_path: Path, s3_server: SeaweedFS, s3_bucket: str,
        s3_env: dict[str, str], cluster: Cluster) -> None:
    plan_file = scan_and_plan(cli, tmp_path, s3_server, s3_bucket,
                              {"one": [("vda", "qcow2", 4)], "two": [("vda", "qcow2", 4)]})
    plan = load_plan(plan_file)
    data = yaml.safe_load(plan_file.read_text())
    data["transfer"]["s3"] = "s3://no-such-bucket-here/wave"
    plan_file.write_text(yaml.safe_dump(data, sort_keys=False))
    Path(plan.wave(1)[1].vm.disks[0].path).unlink()  # one source image gone
    result = cli("migrate", str(plan_file), "--wave", "1", "--stage", "--kubeconfig",
                 str(tmp_path / "no-kubeconfig"))
    assert result.exit_code != 0
    err = result.stderr
    assert "3 problems, nothing was run" in err
    assert "preflight: cluster:" in err
    assert "preflight: transfer: s3://no-such-bucket-here: no such bucket" in err
    assert "preflight: convert:" in err and "source image not found" in err
    assert not plan.journal_path.is_file() or not load_plan(plan_file).journal().steps(
        "convert")

    # wrong credentials: refused by the probe (a real put), before any conversion
    data["transfer"]["s3"] = f"s3://{s3_bucket}/wave"
    plan_file.write_text(yaml.safe_dump(data, sort_keys=False))
    s3_env_bad = {"AWS_SECRET_ACCESS_KEY": "wrong"}
    import os

    old = os.environ["AWS_SECRET_ACCESS_KEY"]
    os.environ.update(s3_env_bad)
    try:
        denied = cli("migrate", str(plan_file), "--wave", "1", "--stage", "--kubeconfig",
                     str(cluster.kubeconfig))
    finally:
        os.environ["AWS_SECRET_ACCESS_KEY"] = old
    assert denied.exit_code != 0
    assert "access denied" in denied.stderr and "1 problem, nothing was run" not in \
        denied.stderr.replace("2 problems", "")
    # the probe object is put and deleted: nothing of it stays in the bucket
    listed = s3_server.client().list_objects_v2(Bucket=s3_bucket, Prefix="wave/")
    assert [o["Key"] for o in listed.get("Contents", [])] == []


# -- 3. the journal records where things went; --redo VM -----------------------------------------


def test_a_new_transfer_target_is_a_new_transfer_and_redo_one_vm(
        cli: Any, tmp_path: Path, s3_server: SeaweedFS, s3_bucket: str,
        s3_env: dict[str, str], cluster: Cluster, controllers: Controllers) -> None:
    plan_file = scan_and_plan(cli, tmp_path, s3_server, s3_bucket,
                              {"web": [("vda", "qcow2", 8)], "db": [("vda", "qcow2", 8)]})
    kube = ["--kubeconfig", str(cluster.kubeconfig)]
    cli("migrate", str(plan_file), "--wave", "1", "--stage", *kube, ok=True)
    plan = load_plan(plan_file)
    web, db = plan.wave(1)
    with plan.journal() as journal:
        first = {s.item: s for s in journal.steps("upload")}
    item = f"{web.key}/vda"
    assert first[item].data["target"] == {"backend": "s3", "endpoint": s3_server.endpoint,
                                          "bucket": s3_bucket, "key": "wave/web-vda.qcow2"}
    rate = json.loads(cli("report", str(plan_file), "-o", "json", ok=True).stdout)[
        "throughput"]["upload"]

    # the plan's target changes: the next upload sends there, the manifests follow
    data = yaml.safe_load(plan_file.read_text())
    data["transfer"]["s3"] = f"s3://{s3_bucket}/moved"
    plan_file.write_text(yaml.safe_dump(data, sort_keys=False))
    out = cli("upload", str(plan_file), "--wave", "1", ok=True)
    assert "nothing to send" not in out.stderr + out.stdout
    with plan.journal() as journal:
        moved = {s.item: s for s in journal.steps("upload")}
    assert moved[item].data["key"] == "moved/web-vda.qcow2"
    s3_server.client().head_object(Bucket=s3_bucket, Key="moved/web-vda.qcow2")
    cli("manifests", str(plan.inventory_path), "--plan", str(plan_file), "--wave", "1", ok=True)
    written = yaml.safe_load((plan.manifests_dir / "vms" / f"{web.name}.yaml").read_text())
    urls = [t["spec"]["source"]["s3"]["url"] for t in written["spec"]["dataVolumeTemplates"]]
    assert urls == [f"{s3_server.endpoint}/{s3_bucket}/moved/web-vda.qcow2"]

    # a one-off upload elsewhere does not silently re-point the plan's manifests
    cli("upload", str(plan.inventory_path), "web", "--workdir", str(plan.workdir), "--s3",
        f"s3://{s3_bucket}/oneoff", "--endpoint-url", s3_server.endpoint, ok=True)
    refused = cli("manifests", str(plan.inventory_path), "--plan", str(plan_file))
    assert refused.exit_code != 0
    assert (f"web/vda: uploaded to {s3_server.endpoint}/{s3_bucket}/oneoff/web-vda.qcow2, "
            "not to the plan's target") in refused.stderr
    cli("upload", str(plan_file), "--wave", "1", ok=True)
    cli("manifests", str(plan.inventory_path), "--plan", str(plan_file), ok=True)
    written = yaml.safe_load((plan.manifests_dir / "vms" / f"{web.name}.yaml").read_text())
    assert written["spec"]["dataVolumeTemplates"][0]["spec"]["source"]["s3"]["url"] == urls[0]

    # an upload found there already is not a measurement: the rate stays the measured one
    with plan.journal() as journal:
        sent = journal.get("upload", item)
    again = cli("upload", str(plan_file), "--wave", "1", "--redo", ok=True)
    assert "skipped" in again.stderr + again.stdout
    after = json.loads(cli("report", str(plan_file), "-o", "json", ok=True).stdout)[
        "throughput"]["upload"]
    assert after["bytesPerSecond"] < 50 * rate["bytesPerSecond"]
    with plan.journal() as journal:
        redone = journal.get("upload", item)
    assert (redone.started, redone.finished) == (sent.started, sent.finished)

    # --redo VM: only that VM is converted and sent again
    with plan.journal() as journal:
        runs = {i: [h["status"] for h in journal.history("convert", i)].count("running")
                for i in (item, f"{db.key}/vda")}
    cli("migrate", str(plan_file), "web", "--wave", "1", "--stage", "--redo", *kube, ok=True)
    with plan.journal() as journal:
        assert [h["status"] for h in journal.history("convert", item)].count("running") == \
            runs[item] + 1
        assert [h["status"] for h in journal.history("convert", f"{db.key}/vda")].count(
            "running") == runs[f"{db.key}/vda"]
    named = cli("migrate", str(plan_file), "web", "--wave", "1", "--stage", *kube)
    assert named.exit_code != 0 and "VM names go with --redo" in named.stderr


# -- Numbers that stay true ---------------------------------------------------------------------


def test_apply_rerun_keeps_the_measured_import_time(
        cli: Any, tmp_path: Path, s3_server: SeaweedFS, s3_bucket: str,
        s3_env: dict[str, str], cluster: Cluster, controllers: Controllers) -> None:
    plan_file = scan_and_plan(cli, tmp_path, s3_server, s3_bucket, {"app": [("vda", "qcow2", 4)]})
    kube = ["--kubeconfig", str(cluster.kubeconfig)]
    cli("migrate", str(plan_file), "--wave", "1", "--stage", *kube, ok=True)
    plan = load_plan(plan_file)
    with plan.journal() as journal:
        (first,) = journal.steps("import")
    time.sleep(1.5)
    cli("apply", str(plan_file), "--wave", "1", *kube, ok=True)
    with plan.journal() as journal:
        (again,) = journal.steps("import")
    assert again.status == DONE
    assert (again.started, again.finished) == (first.started, first.finished)


def test_runbook_after_cutover_and_rollback_keeps_the_measurements(
        cli: Any, tmp_path: Path, s3_server: SeaweedFS, s3_bucket: str,
        s3_env: dict[str, str], cluster: Cluster, controllers: Controllers,
        kubevirt: KubeVirt) -> None:
    plan_file = scan_and_plan(cli, tmp_path, s3_server, s3_bucket, {"app": [("vda", "qcow2", 4)]})
    kube = ["--kubeconfig", str(cluster.kubeconfig)]
    cli("migrate", str(plan_file), "--wave", "1", "--stage", *kube, ok=True)
    cli("cutover", str(plan_file), "--wave", "1", *kube, ok=True)
    book = tmp_path / "book"

    def estimates() -> list[str]:
        cli("runbook", str(plan_file), "--out", str(book), ok=True)
        text = (book / "wave-1.md").read_text()
        return [line for line in text.splitlines()
                if line.startswith("| app |") or "rate:" in line or "window" in line]

    before = estimates()
    report = json.loads(cli("report", str(plan_file), "-o", "json", ok=True).stdout)
    (cut,) = report["vms"]
    assert cut["cutover"] == "done" and cut["downtime"] > 0
    cli("rollback", str(plan_file), "--wave", "1", *kube, ok=True)
    assert estimates() == before  # not the defaults: the cutover's measurements stay
    back = json.loads(cli("report", str(plan_file), "-o", "json", ok=True).stdout)
    (vm,) = back["vms"]
    assert vm["cutover"] == "rolled back"
    assert vm["downtime"] == cut["downtime"] and vm["bootSeconds"] == cut["bootSeconds"]
    assert back["throughput"]["bootSeconds"] == report["throughput"]["bootSeconds"]
    status = json.loads(cli("status", str(plan_file), "-o", "json", ok=True).stdout)
    (st,) = status["vms"]
    assert st["phase"] == "rolled back" and st["steps"]["cutover"]["done"] == 1
    # the next cutover starts from the preflight again
    again = cli("cutover", str(plan_file), "--wave", "1", *kube, "-o", "json")
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)[0]["status"] == "done"


# -- 4. batch output: one line per problem, no cell over the terminal ------------------------------


def test_table_cells_fit_the_terminal_and_stay_on_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from migrate.core.errors import ProblemsError
    from migrate.core.output import table

    error = str(ProblemsError("convert: 2 of 2 disk(s) failed", ["a: " + "x" * 300, "b: gone"]))
    assert error.splitlines()[1:] == ["  - a: " + "x" * 300, "  - b: gone"]
    monkeypatch.setenv("COLUMNS", "80")
    lines = table(["STAGE", "ERROR"], [["convert", error], ["upload", "y" * 500]]).splitlines()
    assert len(lines) == 3  # one line per row: the multi-line error stays on its row
    assert "convert: 2 of 2 disk(s) failed:\\n  - a: xxx" in lines[1]
    assert all(len(cell.strip()) <= 80 for line in lines for cell in line.split("  "))
    assert lines[2].endswith("…")
    monkeypatch.delenv("COLUMNS")  # not a terminal: a file gets every character
    assert "y" * 500 in table(["STAGE", "ERROR"], [["upload", "y" * 500]])


# -- 6. remedies that exist: per-VM plan overrides ----------------------------------------------


def _plan_settings() -> tuple[set[str], dict[str, tuple[str, ...]]]:
    from migrate import plan as p

    words = set(p.TOP_KEYS) | set(p.VM_KEYS) | set(p.DISK_KEYS) | set(p.NIC_KEYS)
    sections = {"convert": p.CONVERT_KEYS, "defaults": p.DEFAULT_KEYS,
                "transfer": p.TRANSFER_KEYS}
    return words, sections


def test_every_remediation_names_only_settings_the_plan_accepts() -> None:
    from migrate.assessment import RULES

    words, sections = _plan_settings()
    device = re.compile(r"^((vd|sd|hd)[a-z]|nic[0-9]+)$")
    wrong, named = [], 0
    for rule in RULES.values():
        text = rule.remediation
        if "plan" not in text:
            continue
        found = 0
        for dotted in re.findall(r"\b([a-z]+\.[a-zA-Z]+)\b", text):
            section, key = dotted.split(".")
            if section in sections:
                found += 1
                if key not in sections[section]:
                    wrong.append(f"{rule.id}: {dotted} is not a plan setting")
        for key in re.findall(r"[({,]\s*([a-z][a-zA-Z0-9]*):", text):
            found += 1
            if key not in words and not device.match(key):
                wrong.append(f"{rule.id}: {key}: is not a plan key")
        for word in re.findall(r"\b(preference|nodeSelector|networks|skip: true|plan it by its key)\b", text):
            found += 1
        if "plan's network map" in text:
            found += 1
        if not found:
            wrong.append(f"{rule.id}: mentions the plan but names no setting of it: {text}")
        named += found
    assert named >= 10
    assert wrong == []


OVERRIDES = {
    "memory": "3Gi", "cpuModel": "Skylake-Server",
    "disks": {"vda": {"bus": "sata", "size": "64Mi"}},
    "nics": {"nic0": {"mac": "52:54:00:12:34:56", "model": "e1000e"}},
    "labels": {"team": "db"}, "annotations": {"example.com/owner": "ops"},
    "nodeSelector": {"kubernetes.io/hostname": "node-1"},
    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "gpu", "operator": "In", "values": ["yes"]}]}]}}},
}


def test_per_vm_overrides_reach_the_manifests(cli: Any, tmp_path: Path) -> None:
    inventory = _scan(cli, tmp_path, _node(tmp_path, {"db": [("vda", "qcow2", 4)]}))
    plan_file = tmp_path / "plan.yaml"
    cli("plan", str(inventory), "--out", str(plan_file), "-n", "vms", "--network", "*=pod",
        "--s3", "s3://images/vms", ok=True)
    data = yaml.safe_load(plan_file.read_text())
    data["waves"][0]["vms"] = [{"vm": "db", **OVERRIDES}]
    plan_file.write_text(yaml.safe_dump(data, sort_keys=False))
    cli("plan", "--check", str(plan_file), ok=True)
    plan = load_plan(plan_file)
    (p,) = plan.wave(1)
    with plan.journal() as journal:  # as if converted and uploaded
        journal.start("upload", f"{p.key}/vda")
        journal.done("upload", f"{p.key}/vda", backend="s3", url="http://s3:9000/b/db-vda.qcow2",
                     size=1024, sent=1024, key="db-vda.qcow2")
    cli("manifests", str(inventory), "--plan", str(plan_file), ok=True)
    vm = yaml.safe_load((plan.manifests_dir / "vms" / "db.yaml").read_text())
    tspec = vm["spec"]["template"]["spec"]
    domain = tspec["domain"]
    assert domain["memory"]["guest"] == "3Gi" and domain["cpu"]["model"] == "Skylake-Server"
    assert domain["devices"]["disks"][0]["disk"]["bus"] == "sata"
    (iface,) = domain["devices"]["interfaces"]
    assert iface["macAddress"] == "52:54:00:12:34:56" and iface["model"] == "e1000e"
    (dv,) = vm["spec"]["dataVolumeTemplates"]
    assert dv["spec"]["storage"]["resources"]["requests"]["storage"] == "64Mi"
    assert vm["metadata"]["labels"]["team"] == "db"
    assert vm["spec"]["template"]["metadata"]["labels"]["team"] == "db"
    assert vm["metadata"]["annotations"]["example.com/owner"] == "ops"
    assert tspec["nodeSelector"] == {"kubernetes.io/hostname": "node-1"}
    assert tspec["affinity"] == OVERRIDES["affinity"]

    # strictly validated: every wrong override is listed at once
    data["waves"][0]["vms"] = [{"vm": "db", "memory": "lots", "cpuModel": "bad model!",
                                "disks": {"vdz": {"bus": "ide"}, "vda": {"size": "1Mi",
                                                                         "speed": 1}},
                                "nics": {"nic3": {"mac": "zz"}, "eth0": {}},
                                "labels": {"vmmove.io/vm": "x", "bad key!": "v"},
                                "affinity": {"nodeAfinity": {}}}]
    plan_file.write_text(yaml.safe_dump(data, sort_keys=False))
    bad = cli("plan", "--check", str(plan_file))
    assert bad.exit_code != 0
    for expected in ("memory: 'lots' is not a size", "cpuModel: 'bad model!'",
                     "disks.vdz.bus: 'ide' is not one of virtio, sata, scsi, usb",
                     "unknown key 'speed'", "nics.nic3.mac: 'zz' is not a usable MAC",
                     "eth0: NICs are named nic0", "vmmove.io/ keys are vmmove's own",
                     "'bad key!' is not a valid key", "unknown key 'nodeAfinity'",
                     "disks.vdz: the VM has no such disk", "disks.vda.size: 1048576 bytes is "
                     "smaller than the disk", "nics.nic3: the VM has 1 NIC(s)"):
        assert expected in bad.stderr, expected


def test_preflight_checks_the_upload_proxy_and_the_work_folders_space(cli: Any,
                                                                     tmp_path: Path) -> None:
    from tests.conftest import qemu_io, small_tmpfs

    inventory = _scan(cli, tmp_path, _node(tmp_path, {"big": [("vda", "qcow2", 32)]}))
    image = yaml.safe_load(inventory.read_text())["vms"][0]["disks"][0]["path"]
    qemu_io(image, "write -P 0x77 0 24M", "qcow2")  # 24 MiB of data to convert
    # a real 8 MiB file system as the work folder
    with small_tmpfs(tmp_path / "small", "8M") as small:
        plan_file = tmp_path / "plan.yaml"
        cli("plan", str(inventory), "--out", str(plan_file), "-n", "vms", "--network", "*=pod",
            "--cdi-uploadproxy", "https://127.0.0.1:9", "--workdir", str(small), ok=True)
        result = cli("migrate", str(plan_file), "--wave", "1", "--stage", "--kubeconfig",
                     str(tmp_path / "absent"))
        assert result.exit_code != 0
        err = result.stderr
        assert "3 problems, nothing was run" in err
        assert "preflight: cluster:" in err
        assert ("preflight: transfer.uploadProxy https://127.0.0.1:9: cannot reach "
                "127.0.0.1:9") in err
        assert re.search(r"preflight: convert: \S+: not enough space: the 1 image\(s\) to "
                         r"convert need 2\d\.\dM \(qemu-img measure\), [0-9.]+M is free", err)
        assert list(small.iterdir()) == []  # nothing written
