"""The README's quick start, run exactly as written (the command is read from README.md)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from migrate.demo import weed_binary
from tests.conftest import ROOT


def quick_start_command() -> str:
    """The first command of the README's "Quick start" section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)\n```", section, re.S)
    assert block, "no sh block in the README's quick start"
    return block.group(1).strip()


def _vmmove_here(tmp_path: Path) -> dict[str, str]:
    """An environment whose ``vmmove`` is this checkout's (the install step is CI's)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "vmmove"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -c '
                       f'"from migrate.cli import run; run()" "$@"\n')
    wrapper.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}


@pytest.mark.slow
def test_readme_quick_start_runs_the_main_job_with_real_bytes(tmp_path: Path) -> None:
    command = quick_start_command()
    install, _, run = command.partition(" && ")
    assert install.startswith("python3 -m pip install -e ."), command
    assert run.strip() == "vmmove demo", command  # one command after the install
    work = tmp_path / "user"
    work.mkdir()
    proc = subprocess.run(["sh", "-c", run], cwd=work, env=_vmmove_here(tmp_path),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shown = [ln[2:] for ln in proc.stdout.splitlines() if ln.startswith("$ ")]
    steps = [line.split()[1] for line in shown]
    uploads = weed_binary() is not None
    assert steps == ["scan", "assess", "plan", "plan", "convert"] + \
        (["upload"] if uploads else []) + ["manifests", "status"], shown
    assert "vmmove: error" not in proc.stderr, proc.stderr
    demo = work / "vmmove-demo"
    # every data disk converted, verified, with data in it (not an imaginary disk)
    images = sorted((demo / "plan.work").glob("*.qcow2"))
    assert [p.name for p in images] == ["db-vda.qcow2", "db-vdb.qcow2", "legacy-vda.qcow2",
                                        "web-vda.qcow2"]
    for image in images:
        info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(image)],
                                         capture_output=True, text=True, check=True).stdout)
        assert info["format"] == "qcow2" and info["actual-size"] > 1024 * 1024
    manifests = demo / "plan.work" / "manifests" / "demo"
    vm = yaml.safe_load((manifests / "web.yaml").read_text())
    source = vm["spec"]["dataVolumeTemplates"][0]["spec"]["source"]
    assert ("s3" if uploads else "http") in source, source
    # the commands printed are the commands a user reruns: the status one works as shown
    status = next(line for line in shown if line.startswith("vmmove status"))
    again = subprocess.run(["sh", "-c", status + " -o json"], cwd=work,
                           env=_vmmove_env_reuse(tmp_path), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    phases = {v["vm"]: v["phase"] for v in json.loads(again.stdout)["vms"]}
    assert phases == dict.fromkeys(("db", "legacy", "web"),
                                   "uploaded" if uploads else "converted")
    # a second run resumes: nothing converted again
    rerun = subprocess.run(["sh", "-c", run], cwd=work, env=_vmmove_env_reuse(tmp_path),
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "converted  yes" not in rerun.stdout and " skipped " in rerun.stdout
    # its manifests replace the first run's: one Secret (the new S3 endpoint's), not two
    secrets = sorted(p.name for p in manifests.glob("secret-*.yaml"))
    assert len(secrets) == (1 if uploads else 0), secrets
    # every VM's next command: stage the wave (manifests and apply come with it)
    nexts = {v["vm"]: v["next"] for v in json.loads(again.stdout)["vms"]}
    assert nexts == {vm: f"vmmove migrate {demo / 'plan.yaml'} --wave 1 {vm} --stage"
                     for vm in ("db", "legacy", "web")}, nexts


def _vmmove_env_reuse(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
            "PYTHONPATH": str(ROOT)}


def test_demo_refuses_a_folder_that_is_not_its_own(tmp_path: Path, cli) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    result = cli("demo", str(tmp_path / "mine"))
    assert result.exit_code == 2 and "is not an earlier vmmove demo" in result.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_demo_without_s3_still_writes_manifests(tmp_path: Path, cli, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = subprocess.run([sys.executable, "-c", "from migrate.cli import run; run()",
                             "demo", "--no-s3"], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "$ vmmove upload" not in result.stdout and "not uploaded" in result.stdout
    vm = yaml.safe_load((tmp_path / "vmmove-demo/plan.work/manifests/demo/db.yaml").read_text())
    urls = [t["spec"]["source"]["http"]["url"] for t in vm["spec"]["dataVolumeTemplates"]]
    assert [u.rsplit("/", 1)[1] for u in urls] == ["db-vda.qcow2", "db-vdb.qcow2"]
