"""What a plan's runs measured, from its journal: per-VM sizes, durations, downtime,
checksums, the throughput of each kind of work, and a plot of them (SVG).

Why from the journal alone: it is the one record every step writes (bytes, start and end
times, checksums), so the report, the runbook's downtime estimates and ``vmmove status``
agree, and none of them needs the cluster, S3 or the source hosts.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from migrate.core.records import (
    KIND_BOOT_TEST,
    KIND_CONVERT,
    KIND_CUTOVER,
    KIND_CUTOVER_PAST,
    KIND_IMPORT,
    KIND_ROLLBACK,
    KIND_UPLOAD,
    KIND_WARM,
)
from migrate.plan import Plan, PlannedVM
from migrate.core.journal import DONE, Journal, Step
from migrate.core.errors import UsageError
from migrate.core.workdir import disk_item

MIB = 1024 * 1024


@dataclass
class Rate:
    """Bytes per second of one kind of work, over the steps that measured it."""

    kind: str
    bytes: int = 0
    seconds: float = 0.0
    samples: int = 0

    @property
    def per_second(self) -> float | None:
        return self.bytes / self.seconds if self.seconds > 0 and self.bytes > 0 else None

    def to_data(self) -> dict[str, Any]:
        return {"kind": self.kind, "bytes": self.bytes, "seconds": round(self.seconds, 3),
                "samples": self.samples,
                "bytesPerSecond": round(self.per_second, 1) if self.per_second else None}


@dataclass
class Throughput:
    """Measured rates, and the typical stop and boot times, across every run of a journal."""

    convert: Rate = field(default_factory=lambda: Rate(KIND_CONVERT))
    upload: Rate = field(default_factory=lambda: Rate(KIND_UPLOAD))
    imports: Rate = field(default_factory=lambda: Rate(KIND_IMPORT))
    sync: Rate = field(default_factory=lambda: Rate("sync"))
    stop_seconds: list[float] = field(default_factory=list)
    boot_seconds: list[float] = field(default_factory=list)  # start + verify steps

    def to_data(self) -> dict[str, Any]:
        return {"convert": self.convert.to_data(), "upload": self.upload.to_data(),
                "import": self.imports.to_data(), "sync": self.sync.to_data(),
                "stopSeconds": _median(self.stop_seconds),
                "bootSeconds": _median(self.boot_seconds)}


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def cutover_steps(journal: Journal) -> dict[str, Step]:
    """Every cutover step by item, the current one where there is one, else the one a
    rollback kept (kind ``cutover-past``): the last real measurement of each."""
    steps = {s.item: s for s in journal.steps(KIND_CUTOVER_PAST)}
    steps.update({s.item: s for s in journal.steps(KIND_CUTOVER)
                  if s.status == DONE or s.item not in steps})
    return steps


def measure(journal: Journal, sizes: dict[str, int] | None = None) -> Throughput:
    """Rates from every done step: convert and upload bytes over their durations; imports
    over the size of the image imported (``sizes``: upload bytes by disk item)."""
    t = Throughput()
    uploaded: dict[str, int] = dict(sizes or {})
    for kind, rate in ((KIND_CONVERT, t.convert), (KIND_UPLOAD, t.upload)):
        for s in journal.steps(kind):
            if s.status != DONE or s.duration is None or s.duration <= 0:
                continue
            size = s.moved
            if kind == KIND_UPLOAD:
                uploaded.setdefault(s.item, size)
                size = s.sent or size
            if size:
                rate.bytes += size
                rate.seconds += s.duration
                rate.samples += 1
    for s in journal.steps(KIND_IMPORT):
        if s.status == DONE and s.duration and uploaded.get(s.item):
            t.imports.bytes += uploaded[s.item]
            t.imports.seconds += s.duration
            t.imports.samples += 1
    cutover = cutover_steps(journal)
    for s in cutover.values():
        step = s.item.rsplit("/", 1)[-1]
        if s.status != DONE or s.duration is None or "/" not in s.item:
            continue
        if step == "stop" and s.how == "shutdown":
            t.stop_seconds.append(s.duration)
        elif step == "sync" and s.mode == "full":
            moved = sum(int(d.get("bytes") or 0) for d in (s.disks or {}).values())
            if moved:
                t.sync.bytes += moved
                t.sync.seconds += s.duration
                t.sync.samples += 1
    starts = {s.item.rsplit("/", 1)[0]: s for s in cutover.values()
              if s.item.endswith("/start") and s.status == DONE}
    for s in cutover.values():
        if s.item.endswith("/verify") and s.status == DONE and s.finished:
            start = starts.get(s.item.rsplit("/", 1)[0])
            if start is not None and start.started:
                t.boot_seconds.append(s.finished - start.started)
    return t


# -- the per-VM report ---------------------------------------------------------------------------


@dataclass
class DiskReport:
    target: str
    virtual_size: int | None
    source_bytes: int | None  # allocated on the source, as scanned
    converted_bytes: int | None
    checksum: str | None
    convert_seconds: float | None
    upload_seconds: float | None
    import_seconds: float | None
    sent: int | None

    def to_data(self) -> dict[str, Any]:
        return {"target": self.target, "virtualSize": self.virtual_size,
                "sourceBytes": self.source_bytes, "convertedBytes": self.converted_bytes,
                "checksum": self.checksum, "convertSeconds": self.convert_seconds,
                "uploadSeconds": self.upload_seconds, "importSeconds": self.import_seconds,
                "sent": self.sent}


@dataclass
class VmReport:
    wave: int
    vm: str
    target: str
    data_bytes: int
    disks: list[DiskReport]
    cutover: str  # done | running | failed | not started | rolled back
    downtime: float | None = None
    sync_mode: str | None = None
    stop: str | None = None  # how the source stopped
    stop_seconds: float | None = None
    sync_seconds: float | None = None
    boot_seconds: float | None = None
    boot_test: str | None = None  # the last vmmove boot-test verdict (booted, failed, …)
    precopy_rounds: int = 0  # warm VM: precopy rounds done (vmmove sync)
    precopy_bytes: int = 0  # bytes those rounds wrote

    @property
    def sync(self) -> str:
        """The SYNC column: the cutover's final-sync mode, else the precopy rounds done."""
        if self.sync_mode:
            return self.sync_mode
        if self.precopy_rounds:
            return f"precopy, {self.precopy_rounds} round" + "s" * (self.precopy_rounds > 1)
        return "-"

    @property
    def converted_bytes(self) -> int:
        return sum(d.converted_bytes or 0 for d in self.disks)

    def seconds(self, attr: str) -> float | None:
        values = [getattr(d, attr) for d in self.disks if getattr(d, attr) is not None]
        return round(sum(values), 3) if values else None

    def to_data(self) -> dict[str, Any]:
        return {"wave": self.wave, "vm": self.vm, "target": self.target,
                "dataBytes": self.data_bytes, "convertedBytes": self.converted_bytes,
                "cutover": self.cutover, "downtime": self.downtime, "syncMode": self.sync_mode,
                "stop": self.stop, "stopSeconds": self.stop_seconds,
                "syncSeconds": self.sync_seconds, "bootSeconds": self.boot_seconds,
                "bootTest": self.boot_test, "precopyRounds": self.precopy_rounds,
                "precopyBytes": self.precopy_bytes,
                "convertSeconds": self.seconds("convert_seconds"),
                "uploadSeconds": self.seconds("upload_seconds"),
                "importSeconds": self.seconds("import_seconds"),
                "disks": [d.to_data() for d in self.disks]}


def _dur(step: Any) -> float | None:
    if step is None or step.status != DONE or step.duration is None:
        return None
    return round(step.duration, 3)


def vm_report(p: PlannedVM, journal: Journal) -> VmReport:
    disks = []
    for d in p.vm.disks:
        if d.device not in ("disk", "lun"):
            continue
        item = disk_item(p.vm, d)
        conv, up, imp = (journal.get(k, item) for k in (KIND_CONVERT, KIND_UPLOAD, KIND_IMPORT))
        disks.append(DiskReport(
            d.target, d.virtual_size, d.allocated_size,
            conv.bytes if conv and conv.status == DONE else None,
            (conv.checksum if conv and conv.status == DONE else None)
            or (up.checksum if up and up.status == DONE else None),
            _dur(conv), _dur(up), _dur(imp),
            up.sent if up and up.status == DONE else None))
    top = journal.get(KIND_CUTOVER, p.key)
    steps = {s: journal.get(KIND_CUTOVER, f"{p.key}/{s}") for s in
             ("stop", "sync", "start", "verify")}
    state = top.status if top else "not started"
    back = journal.get(KIND_ROLLBACK, p.key)
    if top is None and back is not None and back.status == DONE:
        # rolled back: shown as such, with what the cutover measured (kept by the rollback)
        state = "rolled back"
        top = journal.get(KIND_CUTOVER_PAST, p.key)
        steps = {s: journal.get(KIND_CUTOVER_PAST, f"{p.key}/{s}") for s in steps}
    r = VmReport(p.wave, p.vm.name, f"{p.namespace}/{p.name}", p.vm.data_bytes(), disks,
                 state)
    rounds = [s for s in journal.steps(KIND_WARM, prefix=f"{p.key}/round/") if s.is_done]
    r.precopy_rounds, r.precopy_bytes = len(rounds), sum(s.bytes or 0 for s in rounds)
    tested = journal.get(KIND_BOOT_TEST, p.key)
    if tested is not None:
        r.boot_test = tested.verdict or tested.status
    if top is not None:
        r.downtime = top.downtime
        r.sync_mode = top.sync_mode
    stop, sync = steps["stop"], steps["sync"]
    if stop is not None and stop.status == DONE:
        r.stop, r.stop_seconds = stop.how, _dur(stop)
    if sync is not None and sync.status == DONE:
        r.sync_mode, r.sync_seconds = sync.mode, _dur(sync)
    start, verify = steps["start"], steps["verify"]
    if start is not None and verify is not None and verify.status == DONE and start.started:
        r.boot_seconds = round((verify.finished or 0) - start.started, 3)
    return r


def plan_report(plan: Plan, wave: int | None = None) -> tuple[list[VmReport], Throughput]:
    vms = plan.vms if wave is None else plan.wave(wave)
    vms = [p for p in vms if not p.skip]
    if not plan.journal_path.is_file():
        with Journal(":memory:") as empty:
            return [vm_report(p, empty) for p in vms], measure(empty)
    with plan.journal() as journal:
        return [vm_report(p, journal) for p in vms], measure(journal)


# -- the table -----------------------------------------------------------------------------------

HEADERS = ["WAVE", "VM", "TARGET", "DATA", "CONVERTED", "CONVERT", "UPLOAD", "IMPORT",
           "BOOT TEST", "CUTOVER", "SYNC", "DOWNTIME", "CHECKSUMS"]


def table_rows(reports: list[VmReport]) -> list[list[Any]]:
    """The per-VM rows under :data:`HEADERS`: sizes, step times, cutover, downtime and the
    first 12 hex digits of each disk's checksum (whatever its form)."""
    from migrate.core.output import human_size

    def secs(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}s"

    rows = []
    for r in reports:
        sums = ",".join((d.checksum or "-").rpartition(":")[2][:12] for d in r.disks)
        rows.append([r.wave, r.vm, r.target, human_size(r.data_bytes),
                     human_size(r.converted_bytes), secs(r.seconds("convert_seconds")),
                     secs(r.seconds("upload_seconds")), secs(r.seconds("import_seconds")),
                     r.boot_test or "-", r.cutover, r.sync, secs(r.downtime),
                     sums])
    return rows


# -- the plot (matplotlib, the optional extra `report`) -----------------------------------------

NOTHING_YET = ("nothing measured yet: convert, upload or cut over VMs of this plan "
               "(vmmove migrate / vmmove cutover), then run the report again")


def _rate(moved: int | None, seconds: float | None) -> float | None:
    """MiB/s of work actually done: None when nothing moved or no time was measured (a
    step skipped as done before moves nothing, so it is never a rate)."""
    if not moved or not seconds or seconds <= 0:
        return None
    return moved / MIB / seconds


def vm_rates(r: VmReport) -> tuple[float | None, float | None]:
    """(convert, upload) MiB/s of one VM from its disks' measured steps: converted bytes
    over convert time; bytes actually sent over upload time."""
    conv = [(d.converted_bytes, d.convert_seconds) for d in r.disks
            if d.converted_bytes and d.convert_seconds]
    up = [(d.sent, d.upload_seconds) for d in r.disks if d.sent and d.upload_seconds]
    return (_rate(sum(b for b, _ in conv), sum(t for _, t in conv)),
            _rate(sum(b for b, _ in up), sum(t for _, t in up)))


def has_measurements(reports: list[VmReport]) -> bool:
    return any(any(vm_rates(r)) or r.downtime is not None for r in reports)


def _pyplot() -> Any:
    from migrate.core.errors import UsageError

    try:
        import matplotlib
    except ImportError:
        raise UsageError("the report's plot needs matplotlib: python3 -m pip install "
                         "'vmmove[report]' (or matplotlib)") from None
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def plot_figure(reports: list[VmReport], title: str) -> Any:
    """A matplotlib figure: throughput per VM (convert and upload, MiB/s) and downtime per
    VM (stop, final sync, start to verified; seconds), from measurements only; a note in
    place of the charts when nothing is measured yet."""
    plt = _pyplot()
    with plt.rc_context({"svg.fonttype": "none", "font.size": 10}):
        if not has_measurements(reports):
            fig, ax = plt.subplots(figsize=(8, 2.2))
            ax.axis("off")
            ax.text(0.5, 0.5, NOTHING_YET, ha="center", va="center", wrap=True)
            fig.suptitle(title, fontweight="bold")
            return fig
        labels = [r.vm for r in reports]
        x = list(range(len(reports)))
        width = max(8.0, 2.5 + 0.9 * len(reports))
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(width, 7.5), layout="constrained")
        fig.suptitle(title, fontweight="bold")
        rates = [vm_rates(r) for r in reports]
        series = [(name, colour, values) for name, colour, values in (
            ("convert", "#4477aa", [c for c, _ in rates]),
            ("upload (bytes sent)", "#66ccee", [u for _, u in rates]))
            if any(v is not None for v in values)]  # a series never measured: no legend
        bar_w = 0.8 / max(1, len(series))
        for n, (name, colour, values) in enumerate(series):
            shift = (n - (len(series) - 1) / 2) * bar_w
            xs = [i + shift for i, v in zip(x, values) if v is not None]
            vs = [v for v in values if v is not None]
            bars = top.bar(xs, vs, bar_w, label=name, color=colour)
            top.bar_label(bars, fmt="%.0f", fontsize=8, padding=2)
        top.set_title("Throughput per VM (measured)")
        top.set_ylabel("MiB/s")
        if series:
            top.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
                       frameon=False)
        stacks = [("stop", "#ccbb44", [r.stop_seconds for r in reports]),
                  ("final sync", "#ee6677", [r.sync_seconds for r in reports]),
                  ("start → verified", "#aa3377", [r.boot_seconds for r in reports])]
        base = [0.0] * len(reports)
        for name, colour, values in stacks:
            heights = [v or 0.0 for v in values]
            if any(heights):
                bottom.bar(x, heights, 0.6, bottom=base, label=name, color=colour)
                base = [b + h for b, h in zip(base, heights)]
        measured = [(i, r.downtime) for i, r in enumerate(reports) if r.downtime is not None]
        for i, downtime in measured:
            bottom.annotate(f"{downtime:.1f} s", (i, max(base[i], downtime)),
                            ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                            textcoords="offset points")
            if not base[i]:  # no step times: the total alone
                bottom.bar([i], [downtime], 0.6, color="#bbbbbb",
                           label="downtime" if i == measured[0][0] else None)
        bottom.set_title("Downtime per VM (source stopped → target verified)")
        bottom.set_ylabel("seconds")
        if bottom.get_legend_handles_labels()[0]:
            bottom.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
                          frameon=False)
        for ax in (top, bottom):
            ax.set_xticks(x, labels, rotation=30 if len(reports) > 6 else 0,
                          ha="right" if len(reports) > 6 else "center")
            ax.set_xlim(-0.6, len(reports) - 0.4)
            ax.grid(axis="y", color="#dddddd")
            ax.set_axisbelow(True)
            ax.margins(y=0.15)
            if not any(p.get_height() for p in ax.patches):
                ax.set_ylim(0, 1)
                ax.set_yticks([])
                ax.text(0.5, 0.5, "not measured yet", transform=ax.transAxes,
                        ha="center", va="center", color="#777777")
        return fig


def plot_bytes(reports: list[VmReport], title: str, fmt: str) -> bytes:
    """The figure rendered as ``svg`` or ``png`` bytes."""
    import io

    plt = _pyplot()
    fig = plot_figure(reports, title)
    buffer = io.BytesIO()
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": "vmmove"}):
        fig.savefig(buffer, format=fmt, dpi=110, metadata={"Date": None} if fmt == "svg"
                    else None)
    plt.close(fig)
    return buffer.getvalue()


def html_report(reports: list[VmReport], throughput: Throughput, title: str,
                headers: list[str], rows: list[list[Any]]) -> str:
    """One self-contained HTML page to share: the plot (inline SVG) and the per-VM table
    (``headers``/``rows``, as ``vmmove report`` prints it), every text escaped."""
    from html import escape as h

    svg = plot_bytes(reports, title, "svg").decode()
    svg = svg[svg.index("<svg"):]  # inline: no XML prolog or DOCTYPE
    head = "".join(f"<th>{h(str(c))}</th>" for c in headers)
    body = "".join("<tr>" + "".join(f"<td>{h(str(c))}</td>" for c in row) + "</tr>\n"
                   for row in rows)
    t = throughput.to_data()

    def rate(kind: str) -> str:
        d = t[kind]
        per = d.get("bytesPerSecond")
        return f"{per / MIB:.1f} MiB/s over {d['samples']} step(s)" if per else "not measured"

    facts = "".join(f"<li>{h(k)}: {h(rate(k))}</li>" for k in ("convert", "upload", "import",
                                                                 "sync"))
    note = "" if has_measurements(reports) else f"<p class=note>{h(NOTHING_YET)}</p>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{h(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;color:#222}}
table{{border-collapse:collapse;font-size:.9em}}th,td{{border:1px solid #ccc;padding:.3em .6em;
text-align:left}}th{{background:#f3f3f3}}.note{{color:#777}}</style></head>
<body><h1>{h(title)}</h1>
{note}<figure>{svg}</figure>
<h2>Per VM</h2>
<table><thead><tr>{head}</tr></thead><tbody>
{body}</tbody></table>
<h2>Measured throughput (the whole journal)</h2><ul>{facts}</ul>
</body></html>
"""


def check_plot_name(plot: str | None) -> str | None:
    """The plot's format from its name (svg | png); UsageError for any other."""
    if not plot:
        return None
    from pathlib import Path

    fmt = Path(plot).suffix.lower().lstrip(".")
    if fmt not in ("svg", "png"):
        raise UsageError(f"--plot {plot}: name an .svg or a .png file")
    return fmt


def write_extras(reports: list[VmReport], throughput: Throughput, title: str,
                 rows: list[list[Any]], plot: str | None, html_file: str | None) -> list[str]:
    """Write the plot (``plot``: .svg or .png) and the HTML page (``html_file``) when
    asked, atomically; the lines that say what was written."""
    from migrate.core.serialize import atomic_write

    lines = []
    fmt = check_plot_name(plot)
    if plot and fmt:
        atomic_write(plot, plot_bytes(reports, title, fmt))
        lines.append(f"plot: {plot}")
    if html_file:
        atomic_write(html_file, html_report(reports, throughput, title, HEADERS, rows))
        lines.append(f"report: {html_file}")
    if (plot or html_file) and not has_measurements(reports):
        lines.append(f"note: {NOTHING_YET}")
    return lines
