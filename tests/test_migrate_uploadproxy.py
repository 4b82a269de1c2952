"""One wave end to end through CDI's upload proxy: scan (libvirt test driver, real qemu-img
images) → ``vmmove plan --cdi-uploadproxy`` → ``vmmove migrate --stage`` against kmock with
KubeVirt's and CDI's parts played (tests/plan_support.py) and CDI's upload side played on
the same API (tests/kube_support.py: upload DataVolumes, tokens, an HTTPS upload proxy with
a self-signed certificate)."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from manifests.validate import SchemaValidator
from migrate.core.digest import file_checksum
from migrate.plan import load_plan
from migrate.core.journal import DONE, Journal
from tests.kube_support import DV, Cdi
from tests.plan_support import (
    VMR,
    Cluster,
    Controllers,
    cluster,  # noqa: F401
    controllers,  # noqa: F401
    make_images,
    write_node,
)

pytestmark = pytest.mark.slow

VMS = {"web": [("vda", "qcow2", 24), ("vdb", "raw", 8)], "db": [("vda", "qcow2", 16)]}


@pytest.fixture
def proxy(cluster: Cluster, tmp_path: Path) -> Iterator[Cdi]:
    """CDI's upload side (DataVolume phases, tokens, the HTTPS proxy) on the apply cluster."""
    folder = tmp_path / "cdi"
    folder.mkdir()
    sim = Cdi(cluster, folder)
    try:
        yield sim
    finally:
        sim.stop()


def history(journal: Journal, kind: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for h in journal.history(kind):
        out.setdefault(h["item"], []).append(h["status"])
    return out


def migrate(cli: Any, plan_file: Path, cluster: Cluster, ok: bool = True) -> Any:
    result = cli("migrate", str(plan_file), "--wave", "1", "--stage",
                 "--kubeconfig", str(cluster.kubeconfig), "-o", "json")
    assert (result.exit_code == 0) == ok, result.stderr
    return result


def test_one_wave_through_the_upload_proxy(cli: Any, tmp_path: Path, shared: Path,
                                          cluster: Cluster, controllers: Controllers,
                                          proxy: Cdi) -> None:
    nodes = make_images(tmp_path / "images", VMS)
    node = write_node(tmp_path / "node.xml", nodes)
    sources = {(vm.name, target): (path, fmt) for vm in nodes for target, path, fmt in vm.disks}
    cli("scan", "-c", node, "--output-file", str(tmp_path / "inventory.yaml"), "-o", "json",
        ok=True)
    plan_file = tmp_path / "plan.yaml"
    cli("plan", str(tmp_path / "inventory.yaml"), "--out", str(plan_file), "-n", "vms",
        "--network", "network:default=pod", "--cdi-uploadproxy", proxy.proxy_url,
        "--storage-class", "fast-ssd", "--by", "list", "--wave", ",".join(VMS), ok=True)
    plan = load_plan(plan_file)
    assert plan.transfer.backend == "upload" and plan.transfer.upload_proxy == proxy.proxy_url

    # The proxy's certificate is self-signed: refused until the plan says to accept it,
    # and the error says how, in the plan's words (migrate has no --insecure).
    refused = migrate(cli, plan_file, cluster, ok=False)
    assert "TLS failed" in refused.stderr and "transfer.insecure" in refused.stderr
    assert not [r for r in proxy.proxy_requests if r.method == "POST"]
    data = yaml.safe_load(plan_file.read_text())
    data["transfer"]["insecure"] = True
    plan_file.write_text(yaml.safe_dump(data, sort_keys=False))
    assert load_plan(plan_file).transfer.insecure is True

    result = migrate(cli, plan_file, cluster)
    stages = {s["stage"]: s for s in json.loads(result.stdout)}
    assert [(s, v["status"]) for s, v in stages.items()] == [
        ("convert", "done"), ("inspect", "done"), ("guest", "done"), ("upload", "done"),
        ("manifests", "done"), ("apply", "done")]

    with Journal(plan.workdir / "vmmove-journal.sqlite") as journal:
        converts = {s.item: s for s in journal.steps("convert")}
        uploads = {s.item: s for s in journal.steps("upload")}
        imports = {s.item: s for s in journal.steps("import")}
        applies = {s.item: s for s in journal.steps("apply")}
    disks = {f"{p.key}/{d.target}": (p, d) for p in plan.wave(1) for d in p.vm.disks}
    assert set(converts) == set(uploads) == set(imports) == set(disks)

    # The bytes the proxy received are the converted images, which hold the source disks.
    dv_names = set()
    for item, (p, d) in disks.items():
        up = uploads[item]
        assert up.status == DONE and up.data["backend"] == "upload"
        assert up.data["namespace"] == "vms" and up.data["proxy"] == proxy.proxy_url
        dv = up.data["dv"]
        dv_names.add(dv)
        converted = Path(converts[item].data["output"])
        received = proxy.received[dv]
        assert file_checksum(received) == file_checksum(converted) == converts[item].checksum \
            == up.checksum
        source, fmt = sources[(p.vm.name, d.target)]
        compare = subprocess.run(["qemu-img", "compare", "-f", fmt, "-F",
                                  converts[item].data["format"], source, str(received)],
                                 capture_output=True, text=True)
        assert compare.returncode == 0, compare.stdout + compare.stderr
        assert imports[item].status == DONE and imports[item].data["dv"] == dv
        assert imports[item].data["phase"] == "Succeeded"
    posts = [r for r in proxy.proxy_requests if r.method == "POST"]
    assert len(posts) == len(disks) and all(r.status == 200 for r in posts)

    # The DataVolumes on the API are the upload ones; no import DataVolume beside them.
    dvs = proxy.api.objects(DV)
    assert {name for _, name in dvs} == dv_names and len(dvs) == len(disks)
    assert all(dv["spec"]["source"] == {"upload": {}} and dv["status"]["phase"] == "Succeeded"
               for dv in dvs.values())
    # the plan's storage map holds for the disks that arrive through the proxy too
    assert {dv["spec"]["storage"].get("storageClassName") for dv in dvs.values()} == {"fast-ssd"}
    validator = SchemaValidator(shared / "schemas")
    assert all(validator.data_volume(dv) == [] for dv in dvs.values())
    assert controllers.created == []

    # The VMs reference them by name, with no template, and pass the strict schemas.
    vms = cluster.objects(VMR)
    assert set(vms) == {("vms", "web"), ("vms", "db")}
    for p in plan.wave(1):
        vm = vms[("vms", p.name)]
        assert not vm["spec"].get("dataVolumeTemplates")
        volumes = {v["dataVolume"]["name"] for v in vm["spec"]["template"]["spec"]["volumes"]
                   if "dataVolume" in v}
        assert volumes == {uploads[i].data["dv"] for i, (q, _) in disks.items() if q is p}
        assert vm["spec"]["runStrategy"] == "Halted"
        assert validator.virtual_machine(vm) == [], p.name
        assert applies[p.key].status == DONE

    # Apply found the DataVolumes already Succeeded: it did not sit waiting for an import.
    assert "3 imported" in stages["apply"]["summary"]
    assert stages["apply"]["seconds"] < 10

    status = json.loads(cli("status", str(plan_file), "-o", "json", ok=True).stdout)
    assert [(v["vm"], v["phase"]) for v in status["vms"]] == [("web", "imported"),
                                                              ("db", "imported")]
    assert status["vms"][0]["bytesMoved"] == sum(
        uploads[i].bytes for i, (p, _) in disks.items() if p.vm.name == "web")

    # A rerun changes nothing and sends nothing.
    requests, tokens = len(proxy.proxy_requests), len(proxy.token_requests)
    versions = {k: v["metadata"]["resourceVersion"] for k, v in vms.items()}
    dv_versions = {k: v["metadata"].get("resourceVersion") for k, v in dvs.items()}
    again = migrate(cli, plan_file, cluster)
    assert all(s["status"] == "done" for s in json.loads(again.stdout))
    assert (len(proxy.proxy_requests), len(proxy.token_requests)) == (requests, tokens)
    assert {k: v["metadata"]["resourceVersion"] for k, v in cluster.objects(VMR).items()} \
        == versions
    assert {k: v["metadata"].get("resourceVersion")
            for k, v in proxy.api.objects(DV).items()} == dv_versions
    assert controllers.created == []
    with Journal(plan.workdir / "vmmove-journal.sqlite") as journal:
        assert all(h.count("running") == 1 for h in history(journal, "convert").values())
        for item, statuses in history(journal, "upload").items():
            # refused (TLS) in the first run, done in the second, not started again after
            assert statuses.count("done") == 1 and statuses[-1] == "done", (item, statuses)
        assert {s.data["result"] for s in journal.steps("apply")} == {"unchanged"}


@contextmanager
def staging(plan_file: Path, cluster: Cluster) -> Iterator[subprocess.Popen[bytes]]:
    """``vmmove migrate PLAN --wave 1 --stage`` in its own process group, SIGKILLed (with
    its qemu-img children) when the block ends."""
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    proc = subprocess.Popen([sys.executable, "-c", "from migrate.cli import run; run()",
                             "migrate", str(plan_file), "--wave", "1", "--stage"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True,
                            cwd=str(Path(__file__).resolve().parents[1]))
    try:
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


class SlowAnswerCdi(Cdi):
    """CDI whose proxy, having stored the bytes and marked the DataVolume Succeeded, is
    slow to answer the POST: the moment a killed vmmove leaves no record of the upload."""

    def __post_init__(self) -> None:
        self.stored = threading.Event()
        self.delay = 30.0
        super().__post_init__()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        base: Any = super()._handler()
        cdi = self

        class Slow(base):  # type: ignore[misc, valid-type]
            def _answer(self, status: int, text: str = "") -> None:
                if self.command == "POST" and status == 200 and not cdi.stored.is_set():
                    cdi.stored.set()
                    time.sleep(cdi.delay)
                super()._answer(status, text)

        return Slow


def test_killed_after_the_proxy_took_the_bytes_resumes(cli: Any, tmp_path: Path,
                                                       cluster: Cluster,
                                                       controllers: Controllers,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "cdi"
    folder.mkdir()
    slow = SlowAnswerCdi(cluster, folder)
    try:
        node = write_node(tmp_path / "node.xml",
                          make_images(tmp_path / "images", {"app": [("vda", "qcow2", 8),
                                                                    ("vdb", "qcow2", 8)]}))
        cli("scan", "-c", node, "--output-file", str(tmp_path / "inventory.yaml"), ok=True)
        plan_file = tmp_path / "plan.yaml"
        cli("plan", str(tmp_path / "inventory.yaml"), "--out", str(plan_file), "-n", "vms",
            "--network", "network:default=pod", "--cdi-uploadproxy", slow.proxy_url, ok=True)
        # The proxy's certificate trusted as a CA (OpenSSL's SSL_CERT_FILE), not skipped.
        monkeypatch.setenv("SSL_CERT_FILE", str(slow.cert))
        assert load_plan(plan_file).transfer.insecure is False
        with staging(plan_file, cluster):
            assert slow.stored.wait(60), "the first image never reached the proxy"
        slow.delay = 0.0
        (first,) = [dv for (_, dv), obj in slow.api.objects(DV).items()
                    if obj["status"]["phase"] == "Succeeded"]
        with Journal(load_plan(plan_file).workdir / "vmmove-journal.sqlite") as journal:
            killed = {s.data.get("dv"): s.status for s in journal.steps("upload")}
        assert killed[first] == "running"  # CDI has the bytes; the journal does not know

        result = migrate(cli, plan_file, cluster)
        assert all(s["status"] == "done" for s in json.loads(result.stdout))
        posts = [r for r in slow.proxy_requests if r.method == "POST"]
        # vmmove never had the proxy's answer for the first image: nothing tells it that CDI
        # holds all of it, so the DataVolume is made again and the image sent again.
        assert [r.status for r in posts] == [200, 200, 200]
        assert posts[0].sha256 == posts[1].sha256 or posts[0].sha256 == posts[2].sha256
        plan = load_plan(plan_file)
        with Journal(plan.workdir / "vmmove-journal.sqlite") as journal:
            converts = {s.item: s for s in journal.steps("convert")}
            uploads = {s.item: s for s in journal.steps("upload")}
        assert len(uploads) == 2
        for item, up in uploads.items():
            assert up.status == DONE and up.checksum == converts[item].checksum
            assert file_checksum(slow.received[up.data["dv"]]) == up.checksum
        assert first in {up.data["dv"] for up in uploads.values()}
    finally:
        slow.stop()


class StallingCdi(Cdi):
    """CDI whose proxy stops reading a POST after ``after`` bytes until ``release`` is set:
    the test kills vmmove there, so the request is cut short mid-image."""

    def __post_init__(self) -> None:
        self.stalled = threading.Event()
        self.release = threading.Event()
        self.after = 4 << 20
        super().__post_init__()

    def before_read(self, record: Any) -> None:
        if record.received >= self.after and not self.release.is_set():
            self.stalled.set()
            self.release.wait(60)


def test_killed_mid_post_sends_the_image_again(cli: Any, tmp_path: Path, cluster: Cluster,
                                               controllers: Controllers,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL in the middle of a POST: CDI keeps the prefix that arrived and marks the
    DataVolume Succeeded (as CDI's upload server does).  The rerun must not count that as
    the image: every DataVolume ends up holding exactly its converted image."""
    from tests.conftest import qemu_io

    folder = tmp_path / "cdi"
    folder.mkdir()
    cdi = StallingCdi(cluster, folder)
    try:
        images = make_images(tmp_path / "images", {"big": [("vda", "qcow2", 64)]})
        # 48 MiB of data: more than the sockets between vmmove and the proxy can buffer, so
        # killing vmmove really cuts the request.
        qemu_io(images[0].disks[0][1], "write -P 0x5c 0 48M", "qcow2")
        node = write_node(tmp_path / "node.xml", images)
        cli("scan", "-c", node, "--output-file", str(tmp_path / "inventory.yaml"), ok=True)
        plan_file = tmp_path / "plan.yaml"
        cli("plan", str(tmp_path / "inventory.yaml"), "--out", str(plan_file), "-n", "vms",
            "--network", "network:default=pod", "--cdi-uploadproxy", cdi.proxy_url, ok=True)
        monkeypatch.setenv("SSL_CERT_FILE", str(cdi.cert))
        try:
            with staging(plan_file, cluster):
                assert cdi.stalled.wait(120), "the image never reached the proxy"
        finally:
            cdi.release.set()
        deadline = time.monotonic() + 30
        while not any(r.cut for r in cdi.proxy_requests) and time.monotonic() < deadline:
            time.sleep(0.05)
        (cut,) = [r for r in cdi.proxy_requests if r.method == "POST"]
        assert cut.cut and cut.status == -1
        (dv,) = [name for (_, name), obj in cdi.api.objects(DV).items()
                 if obj["status"]["phase"] == "Succeeded"]
        plan = load_plan(plan_file)
        with Journal(plan.workdir / "vmmove-journal.sqlite") as journal:
            (convert,) = journal.steps("convert")
            (upload,) = journal.steps("upload")
        image = Path(convert.data["output"])
        # What CDI holds is a strict prefix of the image, though the DataVolume "Succeeded".
        held = cdi.received[dv].read_bytes()
        assert 0 < len(held) == cut.received < image.stat().st_size
        assert image.read_bytes()[:len(held)] == held
        assert upload.status == "running" and upload.data["sending"] == convert.checksum

        result = migrate(cli, plan_file, cluster)
        assert all(s["status"] == "done" for s in json.loads(result.stdout))
        posts = [r for r in cdi.proxy_requests if r.method == "POST"]
        assert [r.status for r in posts] == [-1, 200]
        assert posts[1].received == image.stat().st_size
        with Journal(plan.workdir / "vmmove-journal.sqlite") as journal:
            (upload,) = journal.steps("upload")
        assert upload.status == DONE and upload.checksum == convert.checksum
        assert file_checksum(cdi.received[dv]) == convert.checksum
    finally:
        cdi.stop()


def test_upload_proxy_keys_without_the_proxy_are_refused(tmp_path: Path) -> None:
    from migrate.core.model import Inventory
    from migrate.plan import PlanError
    from migrate.core.serialize import save_inventory

    save_inventory(Inventory(), tmp_path / "inventory.yaml")
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump({
        "apiVersion": "vmmove.io/v1alpha1", "kind": "Plan", "inventory": "inventory.yaml",
        "transfer": {"s3": "s3://images/vms", "insecure": True, "storageClass": "fast",
                     "forceBind": True}, "waves": []}))
    with pytest.raises(PlanError) as err:
        load_plan(plan_file)
    problems = err.value.problems
    assert "transfer.insecure: goes with transfer.uploadProxy" in problems
    assert "transfer.forceBind: goes with transfer.uploadProxy" in problems
    assert any(p.startswith("transfer.storageClass: goes with transfer.uploadProxy")
               for p in problems)
