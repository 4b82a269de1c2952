"""``vmmove assess`` on real inventory files: output formats, selection, exit codes, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from migrate.assessment import RULES
from migrate.core.model import Device, Inventory, PowerState, ScanError
from migrate.core.serialize import save_inventory
from migrate.core.workdir import target_names
from tests.assess_support import clean_vm
from tests.conftest import FIXTURES


def blocked_vm():  # one critical, one warning
    vm = clean_vm("Web Server", uuid="u-web", mac="52:54:00:00:00:01")
    vm.devices.append(Device(kind="pci-passthrough", details={"address": "0000:3b:00.0"}))
    vm.power_state = PowerState.RUNNING
    return vm


def warned_vm():  # one warning only
    vm = clean_vm("db01", uuid="u-db", mac="52:54:00:00:00:02")
    vm.snapshots = 2
    return vm


def ready_vm():
    return clean_vm("cache", uuid="u-cache", mac="52:54:00:00:00:03")


@pytest.fixture
def inv_file(tmp_path: Path) -> Path:
    path = tmp_path / "inv.json"
    save_inventory(Inventory(vms=[blocked_vm(), warned_vm(), ready_vm()]), path)
    return path


def test_table_lists_concerns_and_a_summary_per_vm_and_exits_3_on_critical(cli, inv_file: Path) -> None:
    r = cli("assess", str(inv_file))
    assert r.exit_code == 3, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["VM", "SEVERITY", "ID", "MESSAGE"]
    rows = [line for line in lines if line.startswith(("Web Server", "db01"))]
    assert any("critical" in x and "pci-passthrough" in x and "0000:3b:00.0" in x for x in rows)
    assert any("warning" in x and "vm-running" in x for x in rows)
    assert any(x.startswith("db01") and "snapshots" in x for x in rows)
    assert "REMEDIATION" not in r.stdout
    summary = lines[lines.index("") + 1 :]
    assert summary[0].split() == ["VM", "TARGET", "SUMMARY"]
    assert summary[1].split() == ["Web", "Server", "web-server", "1", "critical,", "1", "warning"]
    assert summary[2].split() == ["db01", "db01", "1", "warning"]
    assert summary[3].split() == ["cache", "cache", "ready"]
    assert r.stderr == ""


def test_wide_adds_the_remediation_column(cli, inv_file: Path) -> None:
    r = cli("assess", str(inv_file), "--wide", "--fail-on", "never", ok=True)
    assert r.stdout.splitlines()[0].split() == ["VM", "SEVERITY", "ID", "MESSAGE", "REMEDIATION"]
    assert RULES["pci-passthrough"].remediation in r.stdout


@pytest.mark.parametrize(
    ("fail_on", "vms", "code"),
    [
        ("critical", ["Web Server"], 3),
        ("critical", ["db01"], 0),
        ("warning", ["db01"], 3),
        ("warning", ["cache"], 0),
        ("never", ["Web Server"], 0),
        ("never", [], 0),
        ("warning", [], 3),
    ],
)
def test_exit_code_follows_fail_on(cli, inv_file: Path, fail_on: str, vms: list[str], code: int) -> None:
    r = cli("assess", str(inv_file), *vms, "--fail-on", fail_on, "-o", "json")
    assert r.exit_code == code, (r.stdout, r.stderr)
    assert set(json.loads(r.stdout)) == set(vms or ["Web Server", "db01", "cache"])


def test_json_output_holds_target_names_and_every_concern(cli, inv_file: Path) -> None:
    r = cli("assess", str(inv_file), "-o", "json")
    assert r.exit_code == 3
    data = json.loads(r.stdout)
    assert list(data) == ["Web Server", "db01", "cache"]
    web = data["Web Server"]
    assert web["target"] == "web-server" == target_names(Inventory(vms=[blocked_vm(), warned_vm(), ready_vm()]))["u-web"]
    assert web["uuid"] == "u-web" and web["source"] == "test:///default"
    assert web["summary"] == "1 critical, 1 warning"
    assert [c["id"] for c in web["concerns"]] == ["pci-passthrough", "vm-running", "name-not-dns1123"]
    first = web["concerns"][0]
    assert first == {
        "id": "pci-passthrough",
        "severity": "critical",
        "message": "PCI host device 0000:3b:00.0 is passed through",
        "remediation": RULES["pci-passthrough"].remediation,
        "subject": "0000:3b:00.0",
    }
    assert data["cache"] == {"target": "cache", "key": "u-cache", "uuid": "u-cache", "source": "test:///default", "summary": "ready", "concerns": []}


def test_yaml_output_and_selection_by_uuid(cli, inv_file: Path, tmp_path: Path) -> None:
    yaml_inv = tmp_path / "inv.yaml"
    save_inventory(Inventory(vms=[blocked_vm(), warned_vm()]), yaml_inv)
    r = cli("assess", str(yaml_inv), "u-db", "-o", "yaml", ok=True)
    data = yaml.safe_load(r.stdout)
    assert list(data) == ["db01"]
    assert [c["id"] for c in data["db01"]["concerns"]] == ["snapshots"]


def test_cross_vm_rules_see_the_whole_inventory_when_one_vm_is_selected(cli, tmp_path: Path) -> None:
    a = clean_vm("a", uuid="u-a", mac="52:54:00:00:00:0a")
    b = clean_vm("b", uuid="u-b", mac="52:54:00:00:00:0A")
    path = tmp_path / "inv.json"
    save_inventory(Inventory(vms=[a, b]), path)
    data = json.loads(cli("assess", str(path), "a", "-o", "json", ok=True).stdout)
    assert [c["id"] for c in data["a"]["concerns"]] == ["mac-duplicate"]
    assert "VM b" in data["a"]["concerns"][0]["message"]


def test_vms_sharing_a_name_are_told_apart(cli, tmp_path: Path) -> None:
    path = tmp_path / "inv.json"
    save_inventory(
        Inventory(vms=[clean_vm("web", uuid="u1", mac="52:54:00:00:00:01"), clean_vm("web", uuid="u2", mac="52:54:00:00:00:02")]),
        path,
    )
    data = json.loads(cli("assess", str(path), "web", "-o", "json", "--fail-on", "never", ok=True).stdout)
    assert set(data) == {"web (u1)", "web (u2)"}
    assert {d["target"] for d in data.values()} == set(target_names(Inventory(vms=[clean_vm("web", uuid="u1"), clean_vm("web", uuid="u2")])).values())


def test_unknown_vm_names_are_a_usage_error_naming_them(cli, inv_file: Path) -> None:
    r = cli("assess", str(inv_file), "db01", "nope", "ghost")
    assert r.exit_code == 2
    assert r.stdout == ""
    (line,) = r.stderr.splitlines()
    assert line.startswith("vmmove: error: ") and str(inv_file) in line
    assert "'nope', 'ghost'" in line and "Web Server, db01, cache" in line


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not valid JSON/YAML"),
        ("[1, 2]", "not a vmmove inventory"),
        ('{"vms": [{"name": "x"}]}', "source"),
        ('{"vms": [], "bogus": 1}', "unknown field(s) bogus"),
    ],
)
def test_a_bad_inventory_file_gives_one_error_line(cli, tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    r = cli("assess", str(path))
    assert r.exit_code == 1
    assert r.stdout == ""
    (line,) = r.stderr.splitlines()
    assert line.startswith(f"vmmove: error: {path}: ") and problem in line


def test_a_missing_inventory_file_is_an_error_not_a_traceback(cli, tmp_path: Path) -> None:
    r = cli("assess", str(tmp_path / "absent.json"))
    assert r.exit_code == 2  # a usage error, as for a missing plan (one code, one wording)
    assert r.stderr.splitlines() == [f"vmmove: error: {tmp_path / 'absent.json'}: no such file or directory"]


def test_scan_errors_in_the_inventory_are_noted(cli, tmp_path: Path) -> None:
    path = tmp_path / "inv.yaml"
    save_inventory(Inventory(vms=[ready_vm()], errors=[ScanError("/x/broken.vmx", "not a VMX file")]), path)
    r = cli("assess", str(path), ok=True)
    assert "cache" in r.stdout and "ready" in r.stdout
    assert "1 source(s) the scan could not read" in r.stderr


def test_empty_inventory_is_fine(cli, tmp_path: Path) -> None:
    path = tmp_path / "inv.json"
    save_inventory(Inventory(), path)
    assert json.loads(cli("assess", str(path), "-o", "json", ok=True).stdout) == {}
    r = cli("assess", str(path), ok=True)
    assert r.stdout == "" and r.stderr == f"No VMs in {path}.\n"


def test_help_documents_exit_codes_and_list_rules_needs_no_inventory(cli) -> None:
    r = cli("assess", "--help", ok=True)
    for text in ("--fail-on", "--wide", "Exit codes", "3  a concern at or above --fail-on"):
        assert text in r.stdout
    r = cli("assess", "--list-rules", ok=True)
    ids = [line.split()[0] for line in r.stdout.splitlines()[1:]]
    assert ids == list(RULES)
    assert "critical" in r.stdout and RULES["machine-i440fx"].why in r.stdout


# -- end to end: scan the fixture libvirt node, then assess what it found ---------------------

FIXTURE_EXPECTED = {  # VM -> concern ids it must raise (the fixture may grow; these must stay)
    "gpu-worker": {"pci-passthrough", "usb-passthrough", "numa", "cpu-pinning", "hugepages", "vm-running"},
    "win2k22-sql": {"guest-windows", "tpm", "clock-localtime", "disk-bus-ide", "secure-boot", "graphics-spice", "video-model", "cdrom"},
    "legacy-i440fx": {"machine-i440fx", "backing-chain", "video-model", "sound-model", "cdrom"},
    "web-01": {"vm-running", "snapshots", "mac-duplicate"},
    "web-01-clone": {"vm-crashed", "mac-duplicate"},
    "DB_Server.Prod": {"vm-suspended", "name-not-dns1123", "hotplug-memory", "hotplug-vcpus"},
    "app-multi": {"vm-running", "nic-no-network", "disk-block"},
}


def test_scan_of_the_fixture_node_then_assess(cli, tmp_path: Path) -> None:
    node = FIXTURES / "libvirt" / "node.xml"
    if not node.is_file():
        pytest.skip(f"{node} is absent")
    inv = tmp_path / "inv.json"
    cli("scan", "-c", f"test://{node}", "-o", "json", "--output-file", str(inv), ok=True)

    r = cli("assess", str(inv), "-o", "json")
    assert r.exit_code == 3, r.stderr  # gpu-worker passes host devices through
    data = json.loads(r.stdout)
    for vm, ids in FIXTURE_EXPECTED.items():
        assert ids <= {c["id"] for c in data[vm]["concerns"]}, (vm, data[vm]["concerns"])
    critical = {vm: [c["id"] for c in d["concerns"] if c["severity"] == "critical"] for vm, d in data.items()}
    assert {vm for vm, ids in critical.items() if ids} == {"gpu-worker"}
    assert sorted(critical["gpu-worker"]) == ["pci-passthrough", "pci-passthrough", "usb-passthrough"]
    assert data["DB_Server.Prod"]["target"] == "db-server-prod"
    assert "'db-server-prod'" in next(c["message"] for c in data["DB_Server.Prod"]["concerns"] if c["id"] == "name-not-dns1123")
    assert [c["subject"] for c in data["win2k22-sql"]["concerns"] if c["id"] == "disk-bus-ide"] == ["hda", "hdb"]
    dup = next(c for c in data["web-01"]["concerns"] if c["id"] == "mac-duplicate")
    assert "web-01-clone" in dup["message"]

    # the others are ready enough to go on with the default threshold
    r = cli("assess", str(inv), *[vm for vm in FIXTURE_EXPECTED if vm != "gpu-worker"], "-o", "json")
    assert r.exit_code == 0, r.stdout
    r = cli("assess", str(inv), "web-01", "--fail-on", "warning")
    assert r.exit_code == 3 and "mac-duplicate" in r.stdout
