"""``vmmove apply``: server-side apply to a Kubernetes API on loopback (kmock, the real
client, a real kubeconfig), KubeVirt/CDI played, retries, faults and clear errors."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from migrate.pipeline.wave import plan_lock
from migrate.plan import load_plan
from migrate.sources.libvirt_uri import scan_uri
from migrate.core.journal import DONE, FAILED
from migrate.core.model import Inventory
from migrate.core.workdir import disk_item
from tests.conftest import FIXTURES
from tests.kube_support import DV
from tests.plan_support import (
    NS,
    SECRET,
    VMR,
    Cluster,
    SECRET_NAME,
    Controllers,
    Script,
    cluster,  # noqa: F401
    controllers,  # noqa: F401
    staged,
)

NODE_URI = f"test://{FIXTURES / 'libvirt' / 'node.xml'}"


@pytest.fixture(scope="module")
def inventory() -> Inventory:
    vms, _ = scan_uri(NODE_URI)
    return Inventory(vms=vms)


def apply(cli: Any, plan: Path, cluster: Cluster, *args: str) -> Any:
    return cli("apply", str(plan), "--kubeconfig", str(cluster.kubeconfig), "--timeout", "30",
               *args)


def test_apply_creates_in_order_watches_imports_and_rerun_changes_nothing(
        tmp_path: Path, inventory: Inventory, cli: Any, cluster: Cluster,
        controllers: Controllers) -> None:
    plan_file = staged(tmp_path, inventory)
    result = apply(cli, plan_file, cluster, "--wave", "1", "-o", "json")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["kind"], r["name"], r["result"]) for r in rows] == [
        ("Namespace", "vms", "applied"), ("Secret", SECRET_NAME, "applied"),
        ("VirtualMachine", "web-01", "applied"), ("VirtualMachine", "legacy-i440fx", "applied"),
        ("DataVolume", "web-01-vda", "imported"), ("DataVolume", "legacy-i440fx-vda",
                                                    "imported")]
    # every apply request: server-side apply, field manager vmmove, namespace → Secret → VMs
    applies = cluster.applies
    assert [a["path"] for a in applies] == [
        "/api/v1/namespaces/vms", f"/api/v1/namespaces/vms/secrets/{SECRET_NAME}",
        "/apis/kubevirt.io/v1/namespaces/vms/virtualmachines/web-01",
        "/apis/kubevirt.io/v1/namespaces/vms/virtualmachines/legacy-i440fx"]
    assert {a["manager"] for a in applies} == {"vmmove"}
    assert cluster.get(SECRET, "vms", SECRET_NAME)["data"]["secretKey"] == \
        base64.b64encode(b"key").decode()
    # CDI's part: each DataVolume went through the import phases
    assert controllers.phases["web-01-vda"] == ["Pending", "ImportScheduled",
                                                 "ImportInProgress", "Succeeded"]
    plan = load_plan(plan_file)
    with plan.journal() as journal:
        steps = {(s.kind, s.item): s for s in journal.steps()}
        for p in plan.wave(1):
            assert steps[("apply", p.key)].status == DONE
            assert steps[("apply", p.key)].data["uid"]
            item = disk_item(p.vm, p.vm.disks[0])
            assert steps[("import", item)].status == DONE
            assert steps[("import", item)].data["phase"] == "Succeeded"
    versions = {k: v["metadata"]["resourceVersion"] for k, v in cluster.objects(VMR).items()}

    again = apply(cli, plan_file, cluster, "--wave", "1", "-o", "json")
    assert again.exit_code == 0, again.stderr
    assert {r["result"] for r in json.loads(again.stdout) if r["kind"] != "DataVolume"} == \
        {"unchanged"}
    assert {k: v["metadata"]["resourceVersion"]
            for k, v in cluster.objects(VMR).items()} == versions
    status = json.loads(cli("status", str(plan_file), "-o", "json", ok=True).stdout)
    assert {v["phase"] for v in status["vms"]} == {"imported"}


def test_dry_runs_change_nothing(tmp_path: Path, inventory: Inventory, cli: Any,
                                 cluster: Cluster) -> None:
    plan_file = staged(tmp_path, inventory)
    client = apply(cli, plan_file, cluster, "--dry-run", "client", "-o", "json")
    assert client.exit_code == 0, client.stderr
    assert {r["result"] for r in json.loads(client.stdout)} == {"dry-run"}
    assert cluster.applies == []  # nothing sent at all
    server = apply(cli, plan_file, cluster, "--dry-run", "server")
    assert server.exit_code == 0, server.stderr
    assert "nothing was changed" in server.stderr
    assert len(cluster.applies) == 4 and all(a["dryRun"] for a in cluster.applies)
    assert cluster.objects(VMR) == {} and cluster.get(NS, None, "vms") is None
    with load_plan(plan_file).journal() as journal:
        assert journal.steps("apply") == [] and journal.steps("import") == []


def test_failed_import_is_reported_with_the_importers_reason(
        tmp_path: Path, inventory: Inventory, cli: Any, cluster: Cluster,
        controllers: Controllers) -> None:
    plan_file = staged(tmp_path, inventory)
    reason = "Unable to connect to s3 data source: NoSuchKey: The specified key does not exist"
    controllers.failures["legacy-i440fx-vda"] = Script(fail_reason="Error", fail_message=reason)
    result = apply(cli, plan_file, cluster, "--wave", "1")
    assert result.exit_code == 1
    line = next(x for x in result.stderr.splitlines()
                if x.startswith("vmmove: error: ") and "legacy-i440fx-vda" in x)
    assert "import failed: Error: " + reason in line and "restarted 3 times" in line
    plan = load_plan(plan_file)
    legacy = plan.planned("legacy-i440fx")
    with plan.journal() as journal:
        step = journal.get("import", disk_item(legacy.vm, legacy.vm.disks[0]))
        assert step.status == FAILED and reason in step.error
    status = json.loads(cli("status", str(plan_file), "-o", "json", ok=True).stdout)
    by_vm = {v["vm"]: v for v in status["vms"]}
    assert by_vm["web-01"]["phase"] == "imported"
    assert (by_vm["legacy-i440fx"]["phase"], by_vm["legacy-i440fx"]["state"]) == \
        ("applied", "failed")
    assert reason in by_vm["legacy-i440fx"]["error"]


def test_failed_phase_ends_the_watch_at_once(tmp_path: Path, inventory: Inventory, cli: Any,
                                             cluster: Cluster, controllers: Controllers) -> None:
    plan_file = staged(tmp_path, inventory, [["web-01"]])
    controllers.failures["web-01-vda"] = Script(fail_reason="ImportFailed",
                                                fail_message="qcow2 image has a backing file",
                                                fail_phase=True)
    result = apply(cli, plan_file, cluster)
    assert result.exit_code == 1
    assert "import failed: ImportFailed: qcow2 image has a backing file" in result.stderr


def test_conflict_and_server_error_are_retried(tmp_path: Path, inventory: Inventory,
                                              cli: Any, cluster: Cluster,
                                              controllers: Controllers) -> None:
    plan_file = staged(tmp_path, inventory, [["web-01"]])
    cluster.inject("PATCH", "virtualmachines/web-01$", 409,
                   message="Operation cannot be fulfilled: the object has been modified")
    cluster.inject("PATCH", "secrets/", 500, message="etcdserver: request timed out")
    result = apply(cli, plan_file, cluster, "--no-wait")
    assert result.exit_code == 0, result.stderr
    faults = cluster.call(lambda: list(cluster.emulator.faults))
    assert [f.hits for f in faults] == [1, 1]
    assert cluster.get(VMR, "vms", "web-01") is not None


def test_persistent_conflict_names_force_conflicts(tmp_path: Path, inventory: Inventory,
                                                   cli: Any, cluster: Cluster) -> None:
    plan_file = staged(tmp_path, inventory, [["web-01"]])
    cluster.inject("PATCH", "virtualmachines/web-01$", 409, times=100,
                   message='Apply failed with 1 conflict: conflict with "kubectl-edit": '
                           ".spec.runStrategy")
    result = apply(cli, plan_file, cluster, "--no-wait")
    assert result.exit_code == 1
    assert "conflict with \"kubectl-edit\": .spec.runStrategy" in result.stderr
    assert "--force-conflicts" in result.stderr
    cluster.call(lambda: cluster.emulator.faults.clear())
    forced = apply(cli, plan_file, cluster, "--no-wait", "--force-conflicts")
    assert forced.exit_code == 0, forced.stderr
    assert cluster.applies[-1]["force"] == "true"


def test_missing_crds_unreachable_api_and_wrong_context(tmp_path: Path, inventory: Inventory,
                                                        cli: Any) -> None:
    plan_file = staged(tmp_path, inventory, [["web-01"]])
    (tmp_path / "bare").mkdir()
    bare = Cluster(tmp_path / "bare", kubevirt=False, cdi=False)
    try:
        result = apply(cli, plan_file, bare)
        assert result.exit_code == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "does not serve kubevirt.io/v1 VirtualMachine (KubeVirt is " \
            "not installed" in lines[0] and "cdi.kubevirt.io/v1beta1 DataVolume (CDI" in lines[0]
        wrong = cli("apply", str(plan_file), "--kubeconfig", str(bare.kubeconfig),
                    "--context", "prod")
        assert wrong.exit_code == 1
        assert wrong.stderr.strip() == (f"vmmove: error: {bare.kubeconfig}: no context "
                                        "'prod' (contexts: test)")
        url = bare.url
    finally:
        bare.stop()
    gone = cli("apply", str(plan_file), "--kubeconfig", str(bare.kubeconfig))
    assert gone.exit_code == 1
    assert gone.stderr.strip() == (f"vmmove: error: cannot reach the Kubernetes API at {url} "
                                   "(context test): connection refused")
    missing = cli("apply", str(plan_file), "--kubeconfig", str(tmp_path / "nope.yaml"))
    assert "nope.yaml: no kubeconfig here" in missing.stderr


def test_cut_over_vms_are_not_applied_again(tmp_path: Path, inventory: Inventory, cli: Any,
                                            cluster: Cluster) -> None:
    plan_file = staged(tmp_path, inventory)
    plan = load_plan(plan_file)
    web = plan.planned("web-01")
    with plan.journal() as journal:
        journal.start("cutover", web.key)
        journal.done("cutover", web.key)
    result = apply(cli, plan_file, cluster, "--no-wait", "-o", "json")
    assert result.exit_code == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["web-01"]["result"] == "skipped" and "cut over" in rows["web-01"]["error"]
    assert set(cluster.objects(VMR)) == {("vms", "legacy-i440fx")}
    status = {v["vm"]: v["phase"] for v in json.loads(
        cli("status", str(plan_file), "-o", "json", ok=True).stdout)["vms"]}
    assert status["web-01"] == "cut over"


def test_a_second_run_on_the_same_plan_is_refused(tmp_path: Path, inventory: Inventory,
                                                   cli: Any, cluster: Cluster) -> None:
    plan_file = staged(tmp_path, inventory)
    with plan_lock(load_plan(plan_file)):
        result = apply(cli, plan_file, cluster, "--no-wait")
    assert result.exit_code == 1
    assert "another vmmove run is working on this plan" in result.stderr
    assert cluster.applies == []


def test_waiting_for_first_consumer_is_not_a_failure(tmp_path: Path, inventory: Inventory,
                                                     cli: Any, cluster: Cluster,
                                                     controllers: Controllers) -> None:
    plan_file = staged(tmp_path, inventory, [["web-01"]])
    controllers.hold.add("web-01-vda")
    result = cli("apply", str(plan_file), "--kubeconfig", str(cluster.kubeconfig), "-o", "json",
                 "--timeout", "5")
    # held Pending: nothing decided when time is up; a rerun keeps watching
    assert result.exit_code == 1 and "still Pending after 5s" in result.stderr
    cluster.status_patch(DV, "vms", "web-01-vda", {"status": {"phase": "WaitForFirstConsumer"}})
    again = cli("apply", str(plan_file), "--kubeconfig", str(cluster.kubeconfig), "-o", "json")
    assert again.exit_code == 0, again.stderr
    dv = [r for r in json.loads(again.stdout) if r["kind"] == "DataVolume"][0]
    assert dv["result"] == "waiting" and dv["phase"] == "WaitForFirstConsumer"
