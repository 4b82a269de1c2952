"""``vmmove report --plot/--html``: matplotlib charts of measured work, an HTML page to share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import defusedxml.ElementTree

from migrate.plan import load_plan
from migrate.views.report import plan_report, vm_rates
from tests.plan_support import make_images, write_node

SVG = "{http://www.w3.org/2000/svg}"


def _plan(tmp_path: Path, cli: Any) -> Path:
    node = write_node(tmp_path / "node.xml", make_images(tmp_path / "images", {
        "alpha": [("vda", "qcow2", 48)], "beta": [("vda", "raw", 32), ("vdb", "qcow2", 16)]}))
    cli("scan", "-c", node, "--output-file", str(tmp_path / "inv.yaml"), "-o", "json", ok=True)
    plan_file = tmp_path / "plan.yaml"
    cli("plan", str(tmp_path / "inv.yaml"), "--out", str(plan_file), "--network", "*=pod",
        ok=True)
    return plan_file


def _texts(svg: Path) -> list[str]:
    root = defusedxml.ElementTree.parse(svg).getroot()
    assert root.tag == f"{SVG}svg"
    return [t.text or "" for t in root.iter(f"{SVG}text")]


def test_nothing_measured_yet_gives_a_note_not_empty_axes(tmp_path: Path, cli: Any) -> None:
    plan_file = _plan(tmp_path, cli)
    svg, page = tmp_path / "r.svg", tmp_path / "r.html"
    result = cli("report", str(plan_file), "--plot", str(svg), "--html", str(page), ok=True)
    assert "note: nothing measured yet" in result.stderr
    assert any(t.startswith("nothing measured yet") for t in _texts(svg))
    assert "nothing measured yet" in page.read_text()


def test_plot_and_html_show_measured_rates_with_units(tmp_path: Path, cli: Any) -> None:
    plan_file = _plan(tmp_path, cli)
    cli("convert", "--batch", str(plan_file), "--wave", "1", ok=True)
    reports, _ = plan_report(load_plan(plan_file))
    rates = {r.vm: vm_rates(r) for r in reports}
    # measured: converted bytes over convert seconds; nothing uploaded, so no upload rate
    assert all(c and c > 0 and u is None for c, u in rates.values()), rates

    svg, png, page = tmp_path / "r.svg", tmp_path / "r.png", tmp_path / "r.html"
    report = json.loads(cli("report", str(plan_file), "--plot", str(svg), "--html", str(page),
                            "-o", "json", ok=True).stdout)
    assert [v["vm"] for v in report["vms"]] == ["alpha", "beta"]
    texts = _texts(svg)
    assert {"alpha", "beta", "MiB/s", "seconds", "convert"} <= set(texts), texts
    assert "Throughput per VM (measured)" in texts and "not measured yet" in texts  # downtime
    # each convert bar is labelled with its measured rate, in MiB/s
    assert {f"{rates[vm][0]:.0f}" for vm in rates} <= set(texts)

    cli("report", str(plan_file), "--plot", str(png), ok=True)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<svg" in html and "<table>" in html
    for vm in ("alpha", "beta"):
        assert f"<td>{vm}</td>" in html
    assert "MiB/s over 3 step(s)" in html  # the journal's convert rate

    wrong = cli("report", str(plan_file), "--plot", str(tmp_path / "r.gif"))
    assert wrong.exit_code == 2 and "an .svg or a .png" in wrong.stderr
