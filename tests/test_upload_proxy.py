"""vmmove upload through CDI's upload proxy: a kmock Kubernetes API and an HTTPS proxy on
loopback play CDI (tests/kube_support.py); vmmove uses the real kubernetes client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from migrate.core import digest
from migrate.core.journal import DONE, Journal
from migrate.core.workdir import journal_path
from migrate.core.records import KIND_UPLOAD
from tests.conftest import Cli
from tests.kube_support import (  # noqa: F401 - fixtures
    BIND_IMMEDIATE,
    DV,
    Cdi,
    KubeApi,
    cdi,
    kube_api,
)
from tests.test_upload_s3 import converted_workdir, make_qcow2, sha256_of

VM_KEY = "6a1f0c2e-0000-4000-8000-00000000a001"


def proxy_args(cdi: Cdi, *extra: str) -> list[str]:
    return ["--cdi-uploadproxy", cdi.proxy_url, "--kubeconfig", str(cdi.api.kubeconfig),
            "--wait-timeout", "20", *extra]


def test_upload_fills_a_datavolume_like_virtctl(cli: Cli, tmp_path: Path, cdi: Cdi) -> None:
    image = make_qcow2(tmp_path / "img.qcow2", "64M", [(0x5A, 0, 3), (0x6B, 40, 2)])
    inventory, workdir = converted_workdir(tmp_path, {"vda": image})

    result = cli("upload", str(inventory), "--workdir", str(workdir),
                 *proxy_args(cdi, "--insecure", "--storage-class", "fast-ssd",
                             "--access-mode", "ReadWriteOnce", "--volume-mode", "Block"),
                 "-o", "json", ok=True)
    (row,) = json.loads(result.stdout)
    assert row["status"] == "uploaded" and row["dv"] == "web-vda" and row["namespace"] == "vms"

    dv = cdi.api.get(DV, "vms", "web-vda")
    assert dv is not None
    assert dv["spec"]["source"] == {"upload": {}}
    assert dv["spec"]["storage"] == {
        "resources": {"requests": {"storage": str(64 << 20)}},
        "storageClassName": "fast-ssd", "accessModes": ["ReadWriteOnce"], "volumeMode": "Block"}
    assert BIND_IMMEDIATE not in dv["metadata"].get("annotations", {})
    assert dv["status"]["phase"] == "Succeeded"

    (request,) = cdi.token_requests
    assert request["apiVersion"] == "upload.cdi.kubevirt.io/v1beta1"
    assert request["kind"] == "UploadTokenRequest" and request["spec"] == {"pvcName": "web-vda"}
    (token,) = cdi.tokens
    assert [(r.method, r.path, r.authorization) for r in cdi.proxy_requests] == [
        ("HEAD", "/v1beta1/upload-async", f"Bearer {token}"),
        ("POST", "/v1beta1/upload-async", f"Bearer {token}"),
    ]
    assert cdi.received["web-vda"].read_bytes() == (workdir / "web-vda.qcow2").read_bytes()

    with Journal(journal_path(workdir)) as journal:
        step = journal.get(KIND_UPLOAD, f"{VM_KEY}/vda")
    assert step is not None and step.status == DONE
    assert step.data["backend"] == "upload"
    assert (step.data["dv"], step.data["namespace"]) == ("web-vda", "vms")
    assert step.checksum == digest.file_checksum(image)  # the form changed: xxh3-1m

    # Rerun: the DataVolume already holds this image; nothing is sent again.
    again = cli("upload", str(inventory), "--workdir", str(workdir),
                *proxy_args(cdi, "--insecure"), "-o", "json", ok=True)
    assert json.loads(again.stdout)[0]["status"] == "skipped"
    assert sum(1 for r in cdi.proxy_requests if r.method == "POST") == 1


def test_expired_token_is_refreshed_and_the_upload_retried(
        cli: Cli, tmp_path: Path, cdi: Cdi) -> None:
    cdi.reject_first_post = True
    folder = tmp_path / "images"
    folder.mkdir()
    image = make_qcow2(folder / "Data_Disk.qcow2", "32M", [(0x7C, 0, 2)])
    cli("upload", str(folder), *proxy_args(cdi, "--insecure", "-n", "tenant-a"), ok=True)

    assert len(cdi.token_requests) == 2
    posts = [r for r in cdi.proxy_requests if r.method == "POST"]
    assert [r.status for r in posts] == [401, 200]
    assert posts[0].authorization != posts[1].authorization
    assert posts[1].received == image.stat().st_size
    assert posts[1].sha256 == sha256_of(image)
    assert cdi.api.get(DV, "tenant-a", "data-disk")["status"]["phase"] == "Succeeded"
    assert cdi.received["data-disk"].read_bytes() == image.read_bytes()


def test_wait_for_first_consumer_needs_force_bind(cli: Cli, tmp_path: Path, cdi: Cdi) -> None:
    cdi.wffc = True
    folder = tmp_path / "images"
    folder.mkdir()
    make_qcow2(folder / "w.qcow2", "16M", [(0x01, 0, 1)])
    stuck = cli("upload", str(folder), *proxy_args(cdi, "--insecure"), "--wait-timeout", "1",
                ok=False)
    assert "still WaitForFirstConsumer" in stuck.stderr and "--force-bind" in stuck.stderr
    assert not [r for r in cdi.proxy_requests if r.method == "POST"]

    cli("upload", str(folder), *proxy_args(cdi, "--insecure", "--force-bind"), ok=True)
    dv = cdi.api.get(DV, "vms", "w")
    assert dv["metadata"]["annotations"][BIND_IMMEDIATE] == "true"
    assert dv["status"]["phase"] == "Succeeded"


def test_self_signed_proxy_is_refused_without_insecure(
        cli: Cli, tmp_path: Path, cdi: Cdi) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    make_qcow2(folder / "t.qcow2", "16M", [(0x02, 0, 1)])
    result = cli("upload", str(folder), *proxy_args(cdi), ok=False)
    assert "TLS failed" in result.stderr and "--insecure" in result.stderr
    assert cdi.proxy_requests == []  # the handshake failed before any request


def test_an_existing_datavolume_that_is_not_an_upload_is_left_alone(
        cli: Cli, tmp_path: Path, kube_api: KubeApi, cdi: Cdi) -> None:
    kube_api.put(DV, "vms", "keep", {
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
        "metadata": {"name": "keep", "namespace": "vms"},
        "spec": {"source": {"http": {"url": "http://example/x.img"}}}})
    folder = tmp_path / "images"
    folder.mkdir()
    make_qcow2(folder / "keep.qcow2", "16M", [(0x03, 0, 1)])
    result = cli("upload", str(folder), *proxy_args(cdi, "--insecure"), ok=False)
    assert "DataVolume vms/keep: exists and is not an upload DataVolume" in result.stderr
    assert kube_api.get(DV, "vms", "keep")["spec"]["source"] == {"http": {"url": "http://example/x.img"}}


def test_bad_kubeconfig_context_is_one_clear_error(cli: Cli, tmp_path: Path, cdi: Cdi) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    make_qcow2(folder / "c.qcow2", "16M", [(0x04, 0, 1)])
    result = cli("upload", str(folder), *proxy_args(cdi, "--context", "nope"), ok=False)
    assert "cannot load the kubeconfig" in result.stderr and "nope" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--s3", "s3://b/p", "--cdi-uploadproxy", "https://x"], "choose one destination"),
    ([], "choose one destination"),
    (["--cdi-uploadproxy", "ftp://x"], "not an upload proxy URL"),
])
def test_destination_must_be_exactly_one(cli: Cli, tmp_path: Path, args: list[str],
                                         message: str) -> None:
    (tmp_path / "a.raw").write_bytes(b"\0" * 512)
    result = cli("upload", str(tmp_path), *args, ok=False)
    assert message in result.stderr
