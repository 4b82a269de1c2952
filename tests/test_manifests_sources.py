"""Each DataVolume's source follows the transfer journal (records written here with Journal)."""

from __future__ import annotations

from pathlib import Path

import pytest

from manifests.generate import GenerationError
from manifests.sources import SourceResolver
from tests.conftest import qemu_img
from tests.manifests_support import (
    build,
    linux_bios_vm,
    multi_vm,
    record_convert,
    record_upload,
    schema_validator,
    windows_efi_vm,
    write_s3_secret,
)


def test_s3_http_upload_and_blank_sources_from_the_journal(tmp_path: Path, shared: Path) -> None:
    vm = multi_vm()
    d0, d1, d2 = vm.disks
    secret = write_s3_secret(tmp_path / "secret.yaml", "vmmove-s3")
    record_upload(tmp_path, vm, d0, backend="s3", url="http://127.0.0.1:8333/vms/app-scsi0-0.qcow2",
                  secret="vmmove-s3", secret_file=str(secret), size=d0.virtual_size,
                  checksum="sha256:" + "a" * 64)
    record_upload(tmp_path, vm, d1, backend="http", url="https://files.example.com/app-scsi0-1.raw",
                  checksum="sha256:" + "b" * 64)
    record_upload(tmp_path, vm, d2, backend="upload", dv="app-quorum", namespace="default", size=d2.virtual_size)
    ms = build(vm, SourceResolver.from_workdir(tmp_path))
    sources = {t["metadata"]["name"]: t["spec"]["source"] for t in ms.data_volumes}
    assert sources == {
        "app-cluster-node-scsi0-0": {"s3": {"url": "http://127.0.0.1:8333/vms/app-scsi0-0.qcow2", "secretRef": "vmmove-s3"}},
        "app-cluster-node-scsi0-1": {"http": {"url": "https://files.example.com/app-scsi0-1.raw"}},
    }
    volumes = ms.virtual_machine["spec"]["template"]["spec"]["volumes"]
    assert {"name": "scsi1-0", "dataVolume": {"name": "app-quorum"}} in volumes  # referenced, not templated
    (sec,) = ms.secrets
    assert sec["kind"] == "Secret" and sec["metadata"] == {"name": "vmmove-s3", "namespace": "default"}
    assert schema_validator(shared).virtual_machine(ms.virtual_machine) == []


def test_unfinished_or_foreign_transfers_are_errors_naming_the_disk(tmp_path: Path) -> None:
    vm = linux_bios_vm()
    record_upload(tmp_path, vm, vm.disks[0], status="failed", backend="s3", url="http://x/y")
    with pytest.raises(GenerationError, match=r"VM web01: disk vda: transfer not finished \(journal status failed: connection reset\)"):
        build(vm, SourceResolver.from_workdir(tmp_path, http_base="http://h"))
    other = tmp_path / "other"
    record_upload(other, vm, vm.disks[0], backend="upload", dv="web01-vda", namespace="elsewhere")
    with pytest.raises(GenerationError, match="not in the VM's namespace default"):
        build(vm, SourceResolver.from_workdir(other))
    missing = tmp_path / "missing"
    record_upload(missing, vm, vm.disks[0], backend="s3", url="http://x/y", secret="s", secret_file=str(tmp_path / "nope.yaml"))
    with pytest.raises(GenerationError, match="Secret manifest"):
        build(vm, SourceResolver.from_workdir(missing))


def test_http_base_serves_the_converted_image_with_its_checksum(tmp_path: Path) -> None:
    vm = windows_efi_vm()
    out = tmp_path / "images" / "dc01-prod-hda.raw"
    out.parent.mkdir()
    qemu_img("create", "-f", "raw", str(out), "1M")
    record_convert(tmp_path, vm, vm.disks[0], out, "sha256:" + "c" * 64)
    ms = build(vm, SourceResolver.from_workdir(tmp_path, http_base="http://10.0.0.5:8080/img/"))
    sources = [t["spec"]["source"]["http"] for t in ms.data_volumes]
    assert sources[0] == {"url": "http://10.0.0.5:8080/img/dc01-prod-hda.raw"}
    assert "disk hda: image checksum sha256:" + "c" * 64 in ms.notes
    assert sources[1] == {"url": "http://10.0.0.5:8080/img/dc01-logs.raw"}  # not converted: the source file


def test_a_disk_with_no_host_source_is_blank_but_one_with_data_never_is(tmp_path: Path) -> None:
    vm = linux_bios_vm()
    vm.disks[0].source_type, vm.disks[0].path = "none", None
    ms = build(vm, SourceResolver())
    assert ms.data_volumes[0]["spec"]["source"] == {"blank": {}}
    with pytest.raises(GenerationError, match="no transfer record"):
        build(linux_bios_vm(), SourceResolver.from_workdir(tmp_path))
