"""Plans: generation by host/size/label/list, strict loading that lists every problem."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from migrate.plan import PlanError, generate_plan, group_vms, load_plan, save_plan
from migrate.core.serialize import save_inventory
from migrate.sources.libvirt_uri import scan_uri
from migrate.core.model import Inventory
from tests.conftest import FIXTURES, qemu_img

NODE_URI = f"test://{FIXTURES / 'libvirt' / 'node.xml'}"


@pytest.fixture(scope="module")
def inventory() -> Inventory:
    vms, errors = scan_uri(NODE_URI)
    assert not errors
    return Inventory(vms=vms, scanned_at="2026-01-01T00:00:00Z")


@pytest.fixture
def inv_file(tmp_path: Path, inventory: Inventory) -> Path:
    path = tmp_path / "inventory.yaml"
    save_inventory(inventory, path)
    return path


def write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


GOOD = {
    "apiVersion": "vmmove.io/v1alpha1",
    "kind": "Plan",
    "inventory": "inventory.yaml",
    "namespace": "vms",
    "networks": {"network:default": "pod", "network:prod": "multus:vms/prod"},
    "storage": {"storageClass": "ceph-rbd"},
    "transfer": {"s3": "s3://images/vms", "endpointUrl": "http://127.0.0.1:9000"},
    "defaults": {"runStrategy": "Halted"},
    "waves": [
        {"name": "first", "vms": ["web-01", {"vm": "legacy-i440fx", "targetName": "legacy",
                                            "runStrategy": "Always", "preference": "centos.7"}]},
        {"vms": [{"vm": "DB_Server.Prod", "namespace": "databases"},
                 {"vm": "gpu-worker", "skip": True, "note": "GPU passthrough"}]},
    ],
}


def test_a_good_plan_loads_with_overrides(tmp_path: Path, inv_file: Path) -> None:
    plan = load_plan(write(tmp_path / "plan.yaml", GOOD))
    assert plan.wave_numbers() == [1, 2]
    assert plan.workdir == tmp_path / "plan.work"
    assert plan.journal_path == tmp_path / "plan.work" / "vmmove-journal.sqlite"
    first = plan.wave(1)
    assert [(p.vm.name, p.name, p.namespace, p.run_strategy) for p in first] == [
        ("web-01", "web-01", "vms", None), ("legacy-i440fx", "legacy", "vms", "Always")]
    assert first[1].entry.preference == "centos.7"
    assert [p.vm.name for p in plan.wave(2)] == ["DB_Server.Prod"]
    assert [p.vm.name for p in plan.wave(2, include_skipped=True)] == ["DB_Server.Prod",
                                                                         "gpu-worker"]
    assert plan.wave(2)[0].name == "db-server-prod" and plan.wave(2)[0].namespace == "databases"
    assert plan.namespaces() == ["databases", "vms"]
    assert plan.transfer.backend == "s3" and plan.maps.storage.default.storage_class == "ceph-rbd"
    assert plan.planned("legacy") is first[1]  # by target name too
    with pytest.raises(Exception, match="no wave 3 .*waves 1-2"):
        plan.wave(3)
    plan.use_namespace("other")
    assert [p.namespace for p in plan.vms] == ["other", "other", "databases", "other"]


def test_every_problem_is_listed_at_once(tmp_path: Path, inv_file: Path, cli: Any) -> None:
    bad = json.loads(json.dumps(GOOD))
    bad["colour"] = "blue"  # unknown top-level key
    bad["networks"] = {"network:prod": "multus:vms/prod", "bridge:br0": "vlan7"}
    bad["transfer"]["s3"] = "http://not-s3"
    bad["transfer"]["speed"] = 3
    bad["defaults"]["runStrategy"] = "Sometimes"
    bad["waves"] = [
        {"name": "w1", "vms": ["web-01", "web-01-clone", "ghost",
                               {"vm": "legacy-i440fx", "targetName": "web-01", "cpu": 4}]},
        {"vms": ["web-01", {"vm": "app-multi", "targetName": "Not_DNS"}]},
        {"name": "empty", "vms": []},
    ]
    path = write(tmp_path / "plan.yaml", bad)
    with pytest.raises(PlanError) as info:
        load_plan(path)
    problems = info.value.problems
    text = "\n".join(problems)
    expected = [
        "unknown key 'colour'",
        "transfer: unknown key 'speed'",
        "'vlan7' is not 'pod' or 'multus:NAMESPACE/NAME'",
        "transfer.s3: 'http://not-s3' is not s3://BUCKET[/PREFIX]",
        "defaults.runStrategy: 'Sometimes' is not one of",
        "waves[1].vms[4]: unknown key 'cpu'",
        "waves[2].vms[2].targetName: 'Not_DNS' is not a DNS-1123 label",
        "waves[3].vms: expected a non-empty list",
        "waves[1] VM 'ghost': not in the inventory inventory.yaml",
        "waves[2] VM 'web-01': already planned in waves[1]",
        "target name vms/web-01: given to 2 VMs (web-01, legacy-i440fx)",
        "networks: 'network:default' is not mapped (used by web-01 nic0, web-01-clone nic0, "
        "legacy-i440fx nic0",
        "MAC 52:54:00:1a:00:01: used by web-01 nic0 and web-01-clone nic0",
    ]
    for fragment in expected:
        assert fragment in text, (fragment, problems)
    assert len(problems) >= len(expected)
    # the CLI says the same, lists them all and exits 2
    result = cli("plan", "--check", str(path))
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith(f"vmmove: error: {path}: {len(problems)} problems, "
                                    "nothing was run:")
    assert all(p in result.stderr for p in problems)


@pytest.mark.parametrize("text, message", [
    ("kind: Plan\nwaves: [\n", "not valid YAML at line"),
    ("- just\n- a list\n", "not a vmmove plan"),
    ("kind: Inventory\nwaves: [{vms: [a]}]\ninventory: inventory.yaml\n", "kind: expected 'Plan'"),
    ("kind: Plan\ninventory: missing.yaml\nwaves: [{vms: [a]}]\n", "missing.yaml"),
])
def test_unreadable_plans_are_one_clear_error(tmp_path: Path, inv_file: Path, text: str,
                                              message: str, cli: Any) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    result = cli("status", str(path))
    assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_grouping_by_host_size_label_and_list(inventory: Inventory) -> None:
    by_host = group_vms(inventory, "host")
    assert [(t, len(v)) for t, v in by_host] == [("host test:node.xml", 7)]
    by_size = group_vms(inventory, "size", max_vms=3)
    sizes = [vm.data_bytes() for _, members in by_size for vm in members]
    assert sizes == sorted(sizes) and [len(m) for _, m in by_size] == [3, 3, 1]
    budget = 150 * 1024**3
    capped = group_vms(inventory, "size", max_bytes=budget)
    assert all(sum(vm.data_bytes() for vm in m) <= budget or len(m) == 1 for _, m in capped)
    by_state = dict(group_vms(inventory, "label:state"))
    assert {vm.name for vm in by_state["state shutoff"]} == {"win2k22-sql", "legacy-i440fx"}
    listed = group_vms(inventory, "list", explicit=[["web-01", "app-multi"], ["win2k22-sql"]])
    assert [[vm.name for vm in m] for _, m in listed] == [["web-01", "app-multi"],
                                                          ["win2k22-sql"]]
    with pytest.raises(Exception, match="no VM 'nope'"):
        group_vms(inventory, "list", explicit=[["nope"]])
    with pytest.raises(Exception, match="in two waves"):
        group_vms(inventory, "list", explicit=[["web-01"], ["web-01"]])
    with pytest.raises(Exception, match="use host, size, list or label:KEY"):
        group_vms(inventory, "colour")


def test_generated_plan_lists_unmapped_networks_for_the_operator(
        tmp_path: Path, inventory: Inventory, inv_file: Path) -> None:
    out = tmp_path / "plan.yaml"
    data = generate_plan(inventory, inv_file, out, by="size", max_vms=4, namespace="vms",
                         networks={"network:default": "pod"},
                         transfer={"s3": "s3://b/p"})
    save_plan(data, out)
    text = out.read_text()
    assert text.startswith("# vmmove migration plan")
    raw = yaml.safe_load(text)
    assert raw["inventory"] == "inventory.yaml"
    assert raw["networks"]["network:default"] == "pod"
    assert raw["networks"]["bridge:br0"] is None  # for the operator to fill in
    with pytest.raises(PlanError) as info:
        load_plan(out)
    assert any("'bridge:br0' is not mapped" in p for p in info.value.problems)
    # the operator edits: maps the rest, skips the clone (MAC collision) and the GPU VM
    raw["networks"] = {"network:default": "pod", "*": "multus:vms/lan"}
    for wave in raw["waves"]:
        wave["vms"] = [{"vm": v, "skip": True} if v in ("web-01-clone", "gpu-worker") else v
                       for v in wave["vms"]]
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    plan = load_plan(out)
    assert sum(len(plan.wave(n)) for n in plan.wave_numbers()) == 5


def test_plan_cli_writes_checks_and_refuses_to_overwrite(tmp_path: Path, inv_file: Path,
                                                         cli: Any) -> None:
    out = tmp_path / "plan.yaml"
    result = cli("plan", str(inv_file), "--out", str(out), "--by", "list",
                 "--wave", "web-01,legacy-i440fx", "--wave", "DB_Server.Prod",
                 "--network", "network:default=pod", "--network", "network:prod=pod",
                 "--s3", "s3://images/vms", "--endpoint-url", "http://127.0.0.1:9000",
                 "-n", "vms", "--storage-class", "fast", "-o", "json")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["wave"], r["vm"], r["name"]) for r in rows] == [
        (1, "web-01", "web-01"), (1, "legacy-i440fx", "legacy-i440fx"),
        (2, "DB_Server.Prod", "db-server-prod")]
    assert "vmmove migrate" in result.stderr
    raw = yaml.safe_load(out.read_text())
    assert raw["transfer"] == {"s3": "s3://images/vms", "endpointUrl": "http://127.0.0.1:9000"}
    assert raw["storage"] == {"storageClass": "fast"}
    again = cli("plan", str(inv_file), "--out", str(out))
    assert again.exit_code == 2 and "exists; it may hold your edits" in again.stderr
    check = cli("plan", "--check", str(out), ok=True)
    assert "OK, 2 wave(s), 3 VM(s) to migrate" in check.stderr
    assert "legacy-i440fx" in check.stdout


def test_skip_blocked_plans_critical_vms_as_skipped(tmp_path: Path, inv_file: Path,
                                                     cli: Any) -> None:
    out = tmp_path / "plan.yaml"
    cli("plan", str(inv_file), "--out", str(out), "--network", "*=pod", "--skip-blocked")
    entries = [e for w in yaml.safe_load(out.read_text())["waves"] for e in w["vms"]]
    gpu = next(e for e in entries if isinstance(e, dict) and e["vm"] == "gpu-worker")
    assert gpu["skip"] is True and "pci-passthrough" in gpu["note"]


def test_check_warns_of_a_plan_with_no_transfer_target(tmp_path: Path, cli: Any) -> None:
    # an offline export planned warm with no --s3/--proxy: the check says what --stage would
    export = tmp_path / "export"
    export.mkdir()
    qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat",
             str(export / "x.vmdk"), "16M")
    (export / "vm1.vmx").write_text(
        'displayName = "vm1"\nmemSize = "256"\nguestOS = "debian11-64"\n'
        'scsi0.present = "TRUE"\nscsi0:0.present = "TRUE"\nscsi0:0.fileName = "x.vmdk"\n')
    inv = tmp_path / "inv.yaml"
    cli("scan", str(export / "vm1.vmx"), "--output-file", str(inv), ok=True)
    plan_file = tmp_path / "plan.yaml"
    cli("plan", str(inv), "--out", str(plan_file), "--warm", "--warm-volumes", "volumes",
        ok=True)
    line = ("transfer: no transfer target: set transfer.s3, transfer.uploadProxy or "
            "transfer.mode: direct (vmmove migrate --stage needs one; vmmove manifests "
            "--http-base/--blank does not)")
    checked = cli("plan", "--check", str(plan_file))
    assert checked.exit_code == 0  # a warning: manifests --http-base/--blank need no target
    assert checked.stderr.splitlines()[0] == f"vmmove: warning: {plan_file}: {line}", \
        checked.stderr
    staged = cli("migrate", str(plan_file), "--wave", "1", "--stage")
    assert staged.exit_code != 0 and "no transfer target" in staged.stderr
    data = yaml.safe_load(plan_file.read_text())
    data["transfer"] = {"s3": "s3://images/vms"}
    plan_file.write_text(yaml.safe_dump(data, sort_keys=False))
    assert "warning" not in cli("plan", "--check", str(plan_file), ok=True).stderr
