"""One wave end to end: scan (libvirt test driver) → plan → convert (qemu-img) → upload
(SeaweedFS) → manifests → apply (kmock, with KubeVirt and CDI played), then the same run
killed at random points and rerun until it finishes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from migrate.plan import load_plan
from migrate.core.journal import DONE, Journal
from tests.kube_support import DV
from tests.plan_support import (
    NS,
    SECRET,
    VMR,
    Cluster,
    Controllers,
    cluster,  # noqa: F401
    controllers,  # noqa: F401
    make_images,
    write_node,
)
from tests.s3_support import SeaweedFS, subprocess_env

pytestmark = pytest.mark.slow


def scan_and_plan(cli: Any, tmp: Path, s3: SeaweedFS, bucket: str,
                  vms: dict[str, list[tuple[str, str, int]]]) -> Path:
    node = write_node(tmp / "node.xml", make_images(tmp / "images", vms))
    cli("scan", "-c", node, "--output-file", str(tmp / "inventory.yaml"), "-o", "json", ok=True)
    cli("plan", str(tmp / "inventory.yaml"), "--out", str(tmp / "plan.yaml"), "-n", "vms",
        "--network", "network:default=pod", "--s3", f"s3://{bucket}/wave",
        "--endpoint-url", s3.endpoint, "--by", "list", "--wave", ",".join(vms), ok=True)
    return tmp / "plan.yaml"


def history(journal: Journal, kind: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for h in journal.history(kind):
        out.setdefault(h["item"], []).append(h["status"])
    return out


def test_one_wave_end_to_end(cli: Any, tmp_path: Path, s3_server: SeaweedFS, s3_bucket: str,
                             s3_env: dict[str, str], cluster: Cluster,
                             controllers: Controllers) -> None:
    plan_file = scan_and_plan(cli, tmp_path, s3_server, s3_bucket, {
        "web": [("vda", "qcow2", 24), ("vdb", "raw", 8)], "db": [("vda", "qcow2", 16)]})
    plan = load_plan(plan_file)
    assert [p.vm.name for p in plan.wave(1)] == ["web", "db"]

    result = cli("migrate", str(plan_file), "--wave", "1", "--stage",
                 "--kubeconfig", str(cluster.kubeconfig), "-o", "json")
    assert result.exit_code == 0, result.stderr
    stages = json.loads(result.stdout)
    assert [(s["stage"], s["status"]) for s in stages] == [
        ("convert", "done"), ("inspect", "done"), ("guest", "done"), ("upload", "done"),
        ("manifests", "done"), ("apply", "done")]

    workdir = plan.workdir
    client = s3_server.client()
    with Journal(workdir / "vmmove-journal.sqlite") as journal:
        converts = {s.item: s for s in journal.steps("convert")}
        uploads = {s.item: s for s in journal.steps("upload")}
        imports = {s.item: s for s in journal.steps("import")}
        applies = {s.item: s for s in journal.steps("apply")}
        manifests = {s.item: s for s in journal.steps("manifests")}
        stage_steps = {s.item: s.status for s in journal.steps("stage")}
    items = {f"{p.key}/{d.target}" for p in plan.wave(1) for d in p.vm.disks}
    assert set(converts) == set(uploads) == set(imports) == items
    for item, step in converts.items():
        # files: every converted image exists with the recorded checksum
        out = Path(step.data["output"])
        assert step.status == DONE and out.is_file() and out.parent == workdir
        # objects: in the bucket, same size, checksum metadata equal to the journal's
        up = uploads[item]
        head = client.head_object(Bucket=s3_bucket, Key=up.data["key"])
        assert head["ContentLength"] == out.stat().st_size == up.bytes
        assert head["Metadata"]["checksum"] == step.checksum == up.checksum
        assert up.data["url"] == f"{s3_server.endpoint}/{s3_bucket}/{up.data['key']}"
        assert imports[item].status == DONE and imports[item].data["phase"] == "Succeeded"
    assert stage_steps == {f"wave-1/{s}": DONE for s in ("convert", "inspect", "guest",
                                                          "upload", "manifests", "apply")}
    # API objects: namespace, the S3 Secret, both VMs Halted; every DataVolume Succeeded
    assert cluster.get(NS, None, "vms") is not None
    secret_name = next(iter(uploads.values())).data["secret"]
    secret = cluster.get(SECRET, "vms", secret_name)
    assert secret and set(secret["data"]) == {"accessKeyId", "secretKey"}
    vms = cluster.objects(VMR)
    assert set(vms) == {("vms", "web"), ("vms", "db")}
    assert all(vm["spec"]["runStrategy"] == "Halted" for vm in vms.values())
    web_dvs = vms[("vms", "web")]["spec"]["dataVolumeTemplates"]
    assert [t["spec"]["source"]["s3"]["secretRef"] for t in web_dvs] == [secret_name] * 2
    dvs = cluster.objects(DV)
    assert len(dvs) == 3 and all(dv["status"]["phase"] == "Succeeded" for dv in dvs.values())
    assert all(applies[p.key].status == DONE for p in plan.wave(1))
    assert applies["namespace:vms"].status == DONE
    assert applies[f"secret:vms/{secret_name}"].status == DONE
    # the manifests written are the ones applied
    for p in plan.wave(1):
        written = yaml.safe_load(Path(manifests[p.key].data["file"]).read_text())
        assert written["spec"] == vms[("vms", p.name)]["spec"]
    # apply order: namespace, then the Secret, then the VMs
    paths = [a["path"] for a in cluster.applies]
    assert paths[0] == "/api/v1/namespaces/vms"
    assert paths[1] == f"/api/v1/namespaces/vms/secrets/{secret_name}"
    assert all("virtualmachines" in p for p in paths[2:4])

    status = json.loads(cli("status", str(plan_file), "-o", "json", ok=True).stdout)
    assert [(v["vm"], v["phase"], v["state"]) for v in status["vms"]] == [
        ("web", "imported", "idle"), ("db", "imported", "idle")]
    web = status["vms"][0]
    assert web["bytesMoved"] == sum(uploads[i].bytes for i in uploads if i.startswith(
        plan.wave(1)[0].key))

    # a rerun does nothing twice: no conversion, no upload, objects unchanged
    versions = {k: v["metadata"]["resourceVersion"] for k, v in vms.items()}
    again = cli("migrate", str(plan_file), "--wave", "1", "--stage",
                "--kubeconfig", str(cluster.kubeconfig), "-o", "json")
    assert again.exit_code == 0, again.stderr
    assert {k: v["metadata"]["resourceVersion"] for k, v in cluster.objects(VMR).items()} \
        == versions
    with Journal(workdir / "vmmove-journal.sqlite") as journal:
        for kind in ("convert", "upload"):
            assert all(h.count("running") == 1 for h in history(journal, kind).values()), kind
        assert {s.data["result"] for s in journal.steps("apply")} == {"unchanged"}


def _journal_state(workdir: Path) -> dict[str, Any]:
    path = workdir / "vmmove-journal.sqlite"
    if not path.is_file():
        return {}
    with Journal(path) as journal:
        return {"convert": history(journal, "convert"), "upload": history(journal, "upload")}


def test_migrate_killed_at_random_points_finishes(cli: Any, tmp_path: Path,
                                                  s3_server: SeaweedFS, s3_bucket: str,
                                                  s3_env: dict[str, str], cluster: Cluster,
                                                  controllers: Controllers) -> None:
    plan_file = scan_and_plan(cli, tmp_path, s3_server, s3_bucket, {
        "alpha": [("vda", "qcow2", 96), ("vdb", "qcow2", 48)], "beta": [("vda", "raw", 64)]})
    plan = load_plan(plan_file)
    controllers.interval = 0.2  # imports take a few seconds: kills can land in the watch
    env = subprocess_env(s3_server.env(tmp_path))
    env["KUBECONFIG"] = str(cluster.kubeconfig)
    env["PYTHONUNBUFFERED"] = "1"
    command = [sys.executable, "-c", "from migrate.cli import run; run()", "migrate", str(plan_file), "--wave", "1",
               "--stage"]
    rng = random.Random(int(os.environ.get("VMMOVE_KILL_SEED", "7")))
    kills, runs, finished = 0, 0, False
    while runs < 10:
        runs += 1
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True,
                                cwd=str(Path(__file__).resolve().parents[1]))
        if kills < 4:
            delay = rng.uniform(0.8, 4.0)
            try:
                out, err = proc.communicate(timeout=delay)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                kills += 1
                continue
        else:
            out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err.decode()[-2000:]
        finished = True
        break
    assert finished, f"not finished after {runs} runs"

    with Journal(plan.workdir / "vmmove-journal.sqlite") as journal:
        items = {f"{p.key}/{d.target}" for p in plan.wave(1) for d in p.vm.disks}
        for kind in ("convert", "upload", "import"):
            steps = {s.item: s for s in journal.steps(kind)}
            assert set(steps) == items and all(s.status == DONE for s in steps.values()), kind
        # nothing redone after it was done: no "running" after the first "done"
        for kind in ("convert", "upload"):
            for item, statuses in history(journal, kind).items():
                first_done = statuses.index("done")
                assert "running" not in statuses[first_done:], (kind, item, statuses)
        uploads = {s.item: s for s in journal.steps("upload")}
        converts = {s.item: s for s in journal.steps("convert")}
    client = s3_server.client()
    for item, up in uploads.items():
        head = client.head_object(Bucket=s3_bucket, Key=up.data["key"])
        assert head["Metadata"]["checksum"] == converts[item].checksum
    assert set(cluster.objects(VMR)) == {("vms", "alpha"), ("vms", "beta")}
    assert all(dv["status"]["phase"] == "Succeeded" for dv in cluster.objects(DV).values())
    # no half-written image left behind
    assert not [p for p in plan.workdir.iterdir() if p.name.endswith(".part")]
    with Journal(plan.workdir / "vmmove-journal.sqlite") as journal:
        stages = [f"{h['item'].split('/')[1]}:{h['status']}" for h in journal.history("stage")]
    print(f"kills={kills} runs={runs} stages={stages}")
