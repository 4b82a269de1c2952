"""The README's "A wave, end to end", run as written: a running TCG guest on the system
libvirtd, SeaweedFS for S3 and kmock playing the cluster (CDI and KubeVirt played by the
test).  Only the placeholders change — the libvirt URI, the bucket and the endpoint — and
nothing is edited by hand between the commands: the cluster comes from ``$KUBECONFIG`` and
the S3 credentials from the AWS environment, as the README says."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from migrate.plan import load_plan
from migrate.core.journal import DONE
from tests.conftest import ROOT
from tests.guest_support import SHUTDOWN_TAG, KubeVirt, boot_guest, kubevirt  # noqa: F401
from tests.guest_support import SHUTDOWN_OFFSET, read_image_bytes
from tests.libvirtd_support import URI, DomainFactory, libvirt_domains  # noqa: F401
from tests.plan_support import VMR, Cluster, Controllers, cluster, controllers  # noqa: F401
from tests.s3_support import SeaweedFS

pytestmark = pytest.mark.slow

SHUT_OFF = 5


def readme_wave() -> list[list[str]]:
    """The commands of the README's wave block: continuation lines joined, comments off."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## A wave, end to end", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "README: no sh block under 'A wave, end to end'"
    joined = block.group(1).replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            commands.append(shlex.split(line))
    return commands


def rollback_in_readme() -> list[str]:
    section = (ROOT / "README.md").read_text().split("## A wave, end to end", 1)[1]
    found = re.search(r"# (vmmove rollback [^\n]*?) to go back", section)
    assert found, "README: the wave block names no rollback"
    return shlex.split(found.group(1))


def test_readme_wave_runs_as_written(cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     libvirt_domains: DomainFactory, s3_server: SeaweedFS,
                                     s3_bucket: str, s3_env: dict[str, str], cluster: Cluster,
                                     controllers: Controllers, kubevirt: KubeVirt) -> None:
    commands = readme_wave()
    assert [c[:2] for c in commands] == [
        ["vmmove", "scan"], ["vmmove", "assess"], ["vmmove", "plan"], ["vmmove", "plan"],
        ["vmmove", "migrate"], ["vmmove", "status"], ["vmmove", "runbook"],
        ["vmmove", "cutover"]]
    guest = boot_guest(libvirt_domains, "readme")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    placeholders = {"qemu+ssh://root@kvm1/system": URI, "s3://images/wave": f"s3://{s3_bucket}/wave",
                    "https://s3.example:9000": s3_server.endpoint}
    outputs: dict[str, Any] = {}
    for command in commands:
        args = [placeholders.get(a, a) for a in command[1:]]
        result = cli(*args)
        outputs[" ".join(command[1:3])] = result
        assert result.exit_code == 0, (command, result.stdout[-2000:], result.stderr[-2000:])
        if command[1] == "scan":
            # other sessions' domains may share the daemon: this walk plans all of them
            names = [vm["name"] for vm in yaml.safe_load(Path("inventory.yaml").read_text())["vms"]]
            if names != [guest.name]:
                pytest.skip(f"other domains on {URI} ({', '.join(n for n in names if n != guest.name)}):"
                            " the README's --by host wave would take them too")

    plan = load_plan(tmp_path / "plan.yaml")
    (p,) = plan.wave(1)
    assert p.vm.name == guest.name and plan.convert.force_share is True
    with plan.journal() as journal:
        staged = journal.get("convert", f"{p.key}/vda")
        upload = journal.get("upload", f"{p.key}/vda")
        top = journal.get("cutover", p.key)
    # staged while running, then the cutover's full final sync carried the shutdown
    assert staged is not None and staged.status == DONE
    assert upload is not None and upload.data["target"]["bucket"] == s3_bucket
    assert top is not None and top.status == DONE and top.data["sync_mode"] == "full"
    out = Path(staged.data["output"])
    assert SHUTDOWN_TAG in read_image_bytes(out, "qcow2", SHUTDOWN_OFFSET, 64)
    assert guest.state() == SHUT_OFF
    vm = cluster.get(VMR, "vms", p.name)
    assert vm is not None and vm["spec"]["runStrategy"] == "Always"
    assert "wave 1 staged" in outputs["migrate plan.yaml"].stderr
    assert (tmp_path / "runbooks" / "wave-1.md").is_file()
    status = json.loads(cli("status", "plan.yaml", "-o", "json", ok=True).stdout)
    assert [v["phase"] for v in status["vms"]] == ["cut over"]

    # the runbook written now estimates from this cutover; after the rollback it still does
    def estimates() -> list[str]:
        cli("runbook", "plan.yaml", "--out", "after/", ok=True)
        text = (tmp_path / "after" / "wave-1.md").read_text()
        return [line for line in text.splitlines()
                if line.startswith(f"| {guest.name} |") or "rate:" in line]

    before = estimates()
    assert "final syncs measured (1)" in "\n".join(before)
    back = cli(*rollback_in_readme()[1:])
    assert back.exit_code == 0, back.stderr
    guest.wait_up(count=2)
    assert estimates() == before
    report = json.loads(cli("report", "plan.yaml", "-o", "json", ok=True).stdout)
    assert report["vms"][0]["cutover"] == "rolled back"
    assert report["vms"][0]["downtime"] == top.data["downtime"]
    status = json.loads(cli("status", "plan.yaml", "-o", "json", ok=True).stdout)
    assert [v["phase"] for v in status["vms"]] == ["rolled back"]
