"""``vmmove manifests`` end to end: files, kustomizations, stdout, errors, strict validation."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import yaml

from migrate.core.serialize import save_inventory
from tests.conftest import FIXTURES
from tests.manifests_support import (
    inventory,
    linux_bios_vm,
    multi_vm,
    record_upload,
    schema_validator,
    windows_efi_vm,
    write_s3_secret,
)

MAP = """\
networks:
  "network:default": pod
  "bridge:br0": multus:vms/br0
  "VM Network": pod
  "*": multus:vms/lan
storage:
  storageClass: standard
  overrides:
    "datastore:ssd1": {storageClass: fast, volumeMode: Block, accessModes: [ReadWriteMany]}
"""


def _setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    inv = tmp_path / "inventory.json"
    save_inventory(inventory(linux_bios_vm(), windows_efi_vm(), multi_vm()), inv)
    maps = tmp_path / "maps.yaml"
    maps.write_text(MAP)
    work = tmp_path / "work"
    vm = multi_vm()
    secret = write_s3_secret(tmp_path / "s3-secret.yaml", "vmmove-s3")
    for disk in vm.disks:
        record_upload(work, vm, disk, backend="s3", url=f"http://127.0.0.1:8333/b/{disk.target}",
                      secret="vmmove-s3", secret_file=str(secret))
    return inv, maps, work


def test_writes_one_file_per_vm_secrets_and_kustomizations(cli, tmp_path: Path, shared: Path) -> None:  # type: ignore[no-untyped-def]
    inv, maps, work = _setup(tmp_path)
    out = tmp_path / "out"
    args = ["manifests", str(inv), "--out", str(out), "-n", "migration", "--map", str(maps),
            "--workdir", str(work), "--http-base", "http://images.example.com/vm",
            "--timezone", "Europe/Paris", "--validate-schemas", str(shared / "schemas")]
    result = cli(*args, ok=True)
    assert "3 VirtualMachine(s) written" in result.stderr
    ns = out / "migration"
    assert sorted(p.name for p in ns.iterdir()) == [
        "app-cluster-node.yaml", "dc01-prod.yaml", "kustomization.yaml", "secret-vmmove-s3.yaml", "web01.yaml"]
    kust = yaml.safe_load((ns / "kustomization.yaml").read_text())
    assert kust == {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": "migration",
                    "resources": ["app-cluster-node.yaml", "dc01-prod.yaml", "secret-vmmove-s3.yaml", "web01.yaml"]}
    assert yaml.safe_load((out / "kustomization.yaml").read_text())["resources"] == ["migration"]
    assert stat.S_IMODE((ns / "secret-vmmove-s3.yaml").stat().st_mode) == 0o600
    assert stat.S_IMODE((ns / "web01.yaml").stat().st_mode) == 0o644
    validator = schema_validator(shared)
    for name in ("app-cluster-node", "dc01-prod", "web01"):
        vm = yaml.safe_load((ns / f"{name}.yaml").read_text())
        assert vm["metadata"]["namespace"] == "migration"
        assert validator.virtual_machine(vm) == []
    app = yaml.safe_load((ns / "app-cluster-node.yaml").read_text())
    dvs = {t["metadata"]["name"]: t["spec"] for t in app["spec"]["dataVolumeTemplates"]}
    assert dvs["app-cluster-node-scsi0-1"]["storage"]["storageClassName"] == "fast"
    assert dvs["app-cluster-node-scsi0-0"]["storage"]["storageClassName"] == "standard"
    assert dvs["app-cluster-node-scsi0-0"]["source"]["s3"]["secretRef"] == "vmmove-s3"
    secret = yaml.safe_load((ns / "secret-vmmove-s3.yaml").read_text())
    assert secret["metadata"]["namespace"] == "migration"
    # a second run gives byte-identical files (diff-friendly)
    before = {p.name: p.read_bytes() for p in ns.iterdir()}
    cli(*args, ok=True)
    assert {p.name: p.read_bytes() for p in ns.iterdir()} == before
    assert not list(ns.glob(".*.part"))


def test_o_yaml_and_json_print_one_vm(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    inv, maps, _ = _setup(tmp_path)
    result = cli("manifests", str(inv), "--vm", "web01", "-o", "yaml", "--map", str(maps),
                 "--http-base", "http://h", ok=True)
    vm = yaml.safe_load(result.stdout)
    assert vm["kind"] == "VirtualMachine" and vm["metadata"]["name"] == "web01"
    result = cli("manifests", str(inv), "--vm", "c7a5fdbd-edaf-9455-926a-d65c16db1809", "-o", "json",
                 "--network", "*=pod", "--http-base", "http://h", "--run-strategy", "Always", ok=True)
    vm = json.loads(result.stdout)
    assert vm["spec"]["runStrategy"] == "Always"
    result = cli("manifests", str(inv), "-o", "yaml", "--map", str(maps), "--http-base", "http://h", ok=False)
    assert "prints one VM; 3 selected" in result.stderr


def test_errors_are_one_line_per_vm_and_the_rest_is_written(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Was: every VM refused when one is, all errors joined on one line (issue 13, item 4).
    inv, maps, _ = _setup(tmp_path)
    out = tmp_path / "out"
    result = cli("manifests", str(inv), "--out", str(out), "--network", "network:default=pod", ok=False)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("vmmove: error: VM ")]
    assert len(errors) == 3 and all("no transfer record" in e for e in errors)
    assert any("unmapped network(s)" in e for e in errors)
    assert lines[-1].startswith(f"0 of 3 VirtualMachine(s) written to {out}")
    assert "3 refused" in lines[-1]
    assert not out.exists()
    # some can, some cannot: those that can are written, each refused VM has its line
    some = tmp_path / "some"
    partial = cli("manifests", str(inv), "--out", str(some), "--network", "network:default=pod",
                  "--http-base", "http://h")
    refused = [line for line in partial.stderr.splitlines() if line.startswith("vmmove: error: VM ")]
    written = sorted(p.name for p in some.rglob("*.yaml") if p.name != "kustomization.yaml")
    assert partial.exit_code == 1 and refused and written
    assert len(refused) + len(written) == 3
    assert f"{len(written)} of 3 VirtualMachine(s) written" in partial.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("networks: {'*': pod}\nstorage: {storgeClass: x}\n")
    result = cli("manifests", str(inv), "--out", str(out), "--map", str(bad), ok=False)
    assert "unknown key(s) storgeClass" in result.stderr and str(bad) in result.stderr
    result = cli("manifests", str(inv), "--out", str(out), "--network", "*=multus:Bad/Name", ok=False)
    assert "multus:NAMESPACE/NAME" in result.stderr
    result = cli("manifests", str(inv), "--out", str(out), "--vm", "nope", ok=False)
    assert "no VM named nope" in result.stderr
    result = cli("manifests", str(inv), ok=False)
    assert "--out DIR is required" in result.stderr
    result = cli("manifests", str(inv), "--out", str(out), "--timezone", "Mars/Olympus", ok=False)
    assert "not a known time zone" in result.stderr
    result = cli("manifests", str(tmp_path / "missing.json"), "--out", str(out), ok=False)
    assert "missing.json" in result.stderr
    assert not out.exists()


def test_help_lists_every_option(cli) -> None:  # type: ignore[no-untyped-def]
    text = cli("manifests", "--help", ok=True).stdout
    for opt in ("--out", "--workdir", "--http-base", "--blank", "--map", "--network", "--storage-class",
                "--run-strategy", "--keep-cdroms", "--preference", "--instancetype", "--validate-schemas", "-o"):
        assert opt in text


def test_preferences_and_instancetypes_from_cluster_bundles(cli, tmp_path: Path, shared: Path) -> None:  # type: ignore[no-untyped-def]
    inv, maps, _ = _setup(tmp_path)
    bundle = shared / "schemas" / "common-instancetypes-v1.7.0"
    result = cli("manifests", str(inv), "--vm", "web01", "-o", "yaml", "--map", str(maps), "--http-base", "http://h",
                 "--preference", "auto", "--preferences", str(bundle / "common-clusterpreferences-bundle.yaml"),
                 "--instancetype", "auto", "--instancetypes", str(bundle / "common-clusterinstancetypes-bundle.yaml"),
                 ok=True)
    vm = yaml.safe_load(result.stdout)
    assert vm["spec"]["preference"]["name"] == "rhel.9"
    assert vm["spec"]["instancetype"]["name"] == "u1.2xmedium"  # 2 vCPU / 4Gi exactly
    domain = vm["spec"]["template"]["spec"]["domain"]
    assert "cpu" not in domain and "memory" not in domain
    result = cli("manifests", str(inv), "--vm", "web01", "-o", "yaml", "--map", str(maps), "--http-base", "http://h",
                 "--instancetype", "u1.medium", ok=False)
    assert "needs the cluster's instancetypes" in result.stderr


def test_a_rerun_removes_its_own_earlier_files_only(tmp_path: Path, cli) -> None:
    """manifests written for namespace a, then for b: a/<vm>.yaml (written for the same VM
    by the first run, as the index says) is removed; a file the user put there stays."""
    inv = tmp_path / "inv.yaml"
    cli("scan", "-c", f"test://{FIXTURES}/libvirt/node.xml", "-o", "yaml", "--output-file",
        str(inv), ok=True)
    out = tmp_path / "out"
    first = ["manifests", str(inv), "--vm", "web-01", "--out", str(out), "--http-base",
             "http://images.example/", "--network", "*=pod"]
    cli(*first, "-n", "a", ok=True)
    assert (out / "a" / "web-01.yaml").is_file()
    (out / "a" / "mine.yaml").write_text("kind: ConfigMap\n")
    cli(*first, "-n", "b", ok=True)
    assert sorted(p.name for p in (out / "a").iterdir()) == ["kustomization.yaml", "mine.yaml"]
    assert (out / "b" / "web-01.yaml").is_file()
    assert yaml.safe_load((out / "a" / "kustomization.yaml").read_text())["resources"] == [
        "mine.yaml"]
    index = json.loads((out / ".vmmove-index.json").read_text())
    assert list(index) == ["b/web-01.yaml"] and len(index["b/web-01.yaml"]) == 1  # its key
