"""``vmmove status``: phases, states, timings and bytes from the plan's journal alone."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from migrate.core.model import Inventory
from migrate.plan import load_plan
from migrate.sources.libvirt_uri import scan_uri
from migrate.views.status import PHASES, plan_status
from migrate.core.workdir import disk_item
from tests.conftest import FIXTURES
from tests.plan_support import staged

NODE_URI = f"test://{FIXTURES / 'libvirt' / 'node.xml'}"


def test_phases_states_and_numbers(tmp_path: Path, cli: Any) -> None:
    assert PHASES == ("scanned", "converted", "uploaded", "precopy", "applied", "imported",
                      "cut over", "rolled back")
    vms, _ = scan_uri(NODE_URI)
    plan_file = staged(tmp_path, Inventory(vms=vms),
                       [["web-01", "legacy-i440fx", "DB_Server.Prod"], ["win2k22-sql"]])
    raw = yaml.safe_load(plan_file.read_text())
    raw["waves"][1]["vms"] = [{"vm": "win2k22-sql", "skip": True, "note": "later"}]
    plan_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    plan = load_plan(plan_file)
    web, legacy, db = plan.wave(1)
    with plan.journal() as journal:
        for p in (web, legacy):
            journal.start("apply", p.key)
            journal.done("apply", p.key, result="applied")
            item = disk_item(p.vm, p.vm.disks[0])
            journal.start("import", item)
        journal.done("import", disk_item(web.vm, web.vm.disks[0]), phase="Succeeded")
        journal.fail("import", disk_item(legacy.vm, legacy.vm.disks[0]),
                     "legacy-i440fx/vda: import failed: Error: no space left on device")
        journal.start("cutover", web.key)
        time.sleep(0.01)
        journal.done("cutover", web.key)
        journal.start("convert", disk_item(db.vm, db.vm.disks[0]), redo=True)  # running now

    statuses = {s.vm: s for s in plan_status(plan)}
    assert (statuses["web-01"].phase, statuses["web-01"].state) == ("cut over", "idle")
    assert (statuses["legacy-i440fx"].phase, statuses["legacy-i440fx"].state) == \
        ("applied", "failed")
    assert "no space left on device" in statuses["legacy-i440fx"].error
    assert statuses["DB_Server.Prod"].state == "running"
    assert statuses["DB_Server.Prod"].phase == "uploaded"  # uploads are done; a redo runs
    assert (statuses["win2k22-sql"].phase, statuses["win2k22-sql"].state) == ("skipped", "skipped")
    assert statuses["web-01"].bytes_moved == 1024 and statuses["web-01"].seconds is not None
    assert statuses["web-01"].steps["upload"].done == 1

    with plan.journal() as journal:
        time.sleep(0.01)
        journal.start("rollback", web.key)
        journal.done("rollback", web.key)
    out = json.loads(cli("status", str(plan_file), "--wave", "1", "-o", "json", ok=True).stdout)
    assert [(v["vm"], v["phase"]) for v in out["vms"]] == [
        ("web-01", "rolled back"), ("legacy-i440fx", "applied"), ("DB_Server.Prod", "uploaded")]
    assert out["journal"].endswith("vmmove-journal.sqlite")
    table = cli("status", str(plan_file), ok=True)
    assert "rolled back" in table.stdout and "no space left on device" in table.stdout
    assert "wave 2: 1 skipped" in table.stderr
    as_yaml = yaml.safe_load(cli("status", str(plan_file), "-o", "yaml", ok=True).stdout)
    assert len(as_yaml["vms"]) == 4


def test_precopy_rounds_of_an_offline_warm_vm_show_with_the_next_command(
        tmp_path: Path, cli: Any) -> None:
    """Two ``vmmove sync`` rounds of an offline (VMX) warm VM: status says precopy, counts
    the round bytes (6 MiB of data, the second round 0 B) and names the next command;
    report's SYNC column counts the rounds; once applied and imported the next command is
    the cutover with --source-powered-off (an export vmmove cannot stop)."""
    from tests.offline_support import vmx_export, warm_plan

    vmx, _, _ = vmx_export(tmp_path / "export")
    inventory, plan_file, _ = warm_plan(cli, vmx, tmp_path)
    plan = load_plan(plan_file)
    ref = f"{plan.path} --wave 1 app"
    before = json.loads(cli("status", str(plan_file), "-o", "json", ok=True).stdout)["vms"][0]
    assert (before["phase"], before["next"]) == ("scanned", f"vmmove migrate {ref} --stage")
    for _ in range(2):
        cli("sync", str(plan_file), "--wave", "1", ok=True)
    (vm,) = json.loads(cli("status", str(plan_file), "-o", "json", ok=True).stdout)["vms"]
    assert (vm["phase"], vm["state"], vm["bytesMoved"]) == ("precopy", "idle", 6 << 20)
    assert vm["warm"]["rounds"] == 2 and vm["seconds"] is not None
    assert vm["next"] == f"vmmove migrate {ref} --stage"
    table = cli("status", str(plan_file), ok=True)
    assert "precopy" in table.stdout and "6.0M" in table.stdout
    assert f"next: vmmove migrate {ref} --stage" in table.stdout
    assert "wave 1: 1 precopy" in table.stderr
    (row,) = json.loads(cli("report", str(plan_file), "-o", "json", ok=True).stdout)["vms"]
    assert (row["precopyRounds"], row["precopyBytes"]) == (2, 6 << 20)
    assert "precopy, 2 rounds" in cli("report", str(plan_file), ok=True).stdout

    (p,) = plan.wave(1)
    with plan.journal() as journal:  # as vmmove migrate --stage records them
        journal.start("apply", p.key)
        journal.done("apply", p.key, result="applied")
        journal.start("import", disk_item(p.vm, p.vm.disks[0]))
        journal.done("import", disk_item(p.vm, p.vm.disks[0]), phase="Succeeded")
    (vm,) = json.loads(cli("status", str(plan_file), "-o", "json", ok=True).stdout)["vms"]
    assert (vm["phase"], vm["next"]) == (
        "imported", f"vmmove cutover {ref} --source-powered-off")
