"""Golden files: the exact YAML for three representative VMs.

A change to the generator that changes its output shows here as a diff to review.  After
checking that the change is intended, regenerate the files with::

    UPDATE_GOLDEN=1 python3 -m pytest tests/test_manifests_golden.py

and commit tests/golden/ with the change.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from manifests.kustomize import to_yaml
from manifests.sources import SourceResolver
from tests.manifests_support import build, linux_bios_vm, multi_vm, networks, record_upload, schema_validator, windows_efi_vm, write_s3_secret

GOLDEN = Path(__file__).parent / "golden"


def _check(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"{path} missing: run UPDATE_GOLDEN=1 pytest {__file__}"
    assert text == path.read_text(), f"{name} differs from the golden file (UPDATE_GOLDEN=1 to accept)"


def _cases(tmp_path: Path):  # type: ignore[no-untyped-def]
    linux = build(linux_bios_vm(), networks=networks(**{"network:default": "pod"}))
    windows = build(windows_efi_vm(), networks=networks(**{"bridge:br0": "multus:prod/vlan10"}),
                    timezone="Europe/Berlin", keep_cdroms=True, namespace="prod")
    vm = multi_vm()
    secret = write_s3_secret(tmp_path / "secret.yaml", "vmmove-s3")
    record_upload(tmp_path, vm, vm.disks[0], backend="s3", url="http://s3.example.com:8333/vmmove/app-cluster-node-scsi0-0.qcow2",
                  secret="vmmove-s3", secret_file=str(secret))
    record_upload(tmp_path, vm, vm.disks[2], backend="upload", dv="app-cluster-node-quorum", namespace="default")
    multi = build(vm, SourceResolver.from_workdir(tmp_path, blank=frozenset({"app-cluster-node/scsi0:1"})),
                  networks=networks(**{"VM Network": "pod", "Storage": "multus:storage/san", "*": "multus:vms/heartbeat"}))
    return {"linux-bios-virtio.yaml": linux, "windows-efi-secureboot-ide-e1000.yaml": windows,
            "multi-disk-multi-nic.yaml": multi}


@pytest.mark.parametrize("name", ["linux-bios-virtio.yaml", "windows-efi-secureboot-ide-e1000.yaml", "multi-disk-multi-nic.yaml"])
def test_golden(name: str, tmp_path: Path, shared: Path) -> None:
    ms = _cases(tmp_path)[name]
    assert schema_validator(shared).virtual_machine(ms.virtual_machine) == []
    _check(name, to_yaml(ms.virtual_machine))
