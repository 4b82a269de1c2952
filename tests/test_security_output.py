"""Issue 10, "Output that cannot be forged": text from descriptors reaches a terminal only
escaped, JSON/YAML keep it exact, and special files met while walking a folder are skipped
without being opened.  The inputs of security cases 10 and 12 (../shared/cases/security)
rewritten in Python.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from migrate.core.output import error_line, escape, table
from tests.conftest import ROOT, Cli, qemu_img

FORGED = "ok\nvmmove: error: forged line\rX"
ANSI = "evil\x1b[2J\x1b[31mRED\x1b]0;title\x07"


def test_escape_shows_every_control_character_and_keeps_the_rest() -> None:
    assert escape(FORGED) == "ok\\nvmmove: error: forged line\\rX"
    assert escape(ANSI) == "evil\\e[2J\\e[31mRED\\e]0;title\\x07"
    # C1 controls (CSI 0x9b, OSC 0x9d), DEL, NUL, tab and the Unicode line separators.
    assert escape("a\x9b2J\x9d0;t\x9c\x7f\x00\tb\u2028c\u2029") == \
        "a\\x9b2J\\x9d0;t\\x9c\\x7f\\x00\\tb\\u2028c\\u2029"
    assert escape("Web Server (prod) ünïcode – ok") == "Web Server (prod) ünïcode – ok"
    assert error_line("vm\n/vda: bad") == "vmmove: error: vm\\n/vda: bad"
    assert table(["NAME\x1b"], [[FORGED], [None]]) == (
        "NAME\\e\nok\\nvmmove: error: forged line\\rX\n\n")


def write_sources(folder: Path) -> list[Path]:
    disk = folder / "d.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(disk), "1M")
    qemu_img("convert", "-O", "vmdk", str(disk), str(folder / "d.vmdk"))
    nl = folder / "nl.xml"
    nl.write_text(
        "<domain type='kvm'><name>ok&#10;vmmove: error: forged line&#13;X</name>"
        "<uuid>00000000-0000-0000-0000-0000000000ec</uuid><memory unit='MiB'>256</memory>"
        "<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os><devices>"
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source file='{disk}'/><target dev='vda' bus='virtio'/></disk></devices></domain>")
    vmx = folder / "ansi.vmx"
    vmx.write_text('.encoding = "UTF-8"\ndisplayName = "evil|1B[2J|1B[31mRED|1B]0;title|07"\n'
                   'memsize = "256"\nscsi0.present = "TRUE"\nscsi0:0.present = "TRUE"\n'
                   'scsi0:0.fileName = "d.vmdk"\n')
    return [nl, vmx]


def test_vm_names_with_control_characters_reach_the_terminal_escaped(
        cli: Cli, tmp_path: Path) -> None:
    sources = write_sources(tmp_path)
    inv = tmp_path / "inv.yaml"
    scanned = cli("scan", *map(str, sources), "--output-file", str(inv))
    terminal = scanned.stdout + scanned.stderr
    assert "\x1b" not in terminal and "\r" not in terminal
    assert not [ln for ln in terminal.splitlines() if ln.startswith("vmmove: error: forged")]
    names = [ln.split("  ")[0] for ln in scanned.stdout.splitlines()[1:]]
    assert names == ["ok\\nvmmove: error: forged line\\rX", "evil\\e[2J\\e[31mRED\\e]0;title\\x07"]
    # The inventory (YAML) and -o json keep the names exact.
    assert [vm["name"] for vm in yaml.safe_load(inv.read_text())["vms"]] == [FORGED, ANSI]
    as_json = json.loads(cli("scan", *map(str, sources), "-o", "json").stdout)["vms"]
    assert [vm["name"] for vm in as_json] == [FORGED, ANSI]

    converted = cli("convert", str(inv), "--batch", "--to", str(tmp_path / "w"))
    terminal = converted.stdout + converted.stderr
    assert "\x1b" not in terminal and "\r" not in terminal
    assert not [ln for ln in terminal.splitlines() if ln.startswith("vmmove: error: forged")]
    assert "ok\\nvmmove: error: forged line\\rX" in converted.stdout
    rows = json.loads(cli("convert", str(inv), "--batch", "--to", str(tmp_path / "w"),
                          "-o", "json").stdout)
    assert {r["vm"] for r in rows} == {FORGED, ANSI}


def test_special_files_in_a_scanned_folder_are_skipped_never_opened(tmp_path: Path) -> None:
    exports = tmp_path / "exports"
    exports.mkdir()
    os.mkfifo(exports / "a.xml")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(exports / "b.ovf"))
    try:
        (good,) = [p for p in write_sources(exports) if p.suffix == ".vmx"]
        (exports / "nl.xml").unlink()
        # A subprocess: a scan that opened the FIFO would block for ever, this one may not.
        proc = subprocess.run([sys.executable, "-c", "from migrate.cli import run; run()",
                               "scan", str(exports), "-o", "json"],
                              capture_output=True, text=True, timeout=60, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        explicit = subprocess.run([sys.executable, "-c", "from migrate.cli import run; run()",
                                   "scan", str(exports / "a.xml")],
                                  capture_output=True, text=True, timeout=60, cwd=ROOT,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        sock.close()
    assert proc.returncode == 1
    assert [vm["name"] for vm in json.loads(proc.stdout)["vms"]] == ["evil\x1b[2J\x1b[31mRED\x1b]0;title\x07"]
    assert proc.stderr.splitlines() == [
        f"vmmove: error: {exports / 'a.xml'}: a FIFO, not a file: skipped",
        f"vmmove: error: {exports / 'b.ovf'}: a socket, not a file: skipped"]
    assert explicit.returncode == 1
    assert explicit.stderr.splitlines()[-1] == \
        f"vmmove: error: {exports / 'a.xml'}: a FIFO, not a file: skipped"
    assert good.is_file()
