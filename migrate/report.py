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
from xml.sax.saxutils import escape

from migrate.apply import KIND_CUTOVER, KIND_IMPORT
from migrate.plan import Plan, PlannedVM
from migrate.state import DONE, Journal
from migrate.workdir import KIND_CONVERT, KIND_UPLOAD, disk_item

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


def measure(journal: Journal, sizes: dict[str, int] | None = None) -> Throughput:
    """Rates from every done step: convert and upload bytes over their durations; imports
    over the size of the image imported (``sizes``: upload bytes by disk item)."""
    t = Throughput()
    uploaded: dict[str, int] = dict(sizes or {})
    for kind, rate in ((KIND_CONVERT, t.convert), (KIND_UPLOAD, t.upload)):
        for s in journal.steps(kind):
            if s.status != DONE or s.duration is None or s.duration <= 0:
                continue
            size = s.bytes or int(s.data.get("size") or 0)
            if kind == KIND_UPLOAD:
                uploaded.setdefault(s.item, size)
                size = int(s.data.get("sent") or 0) or size
            if size:
                rate.bytes += size
                rate.seconds += s.duration
                rate.samples += 1
    for s in journal.steps(KIND_IMPORT):
        if s.status == DONE and s.duration and uploaded.get(s.item):
            t.imports.bytes += uploaded[s.item]
            t.imports.seconds += s.duration
            t.imports.samples += 1
    for s in journal.steps(KIND_CUTOVER):
        step = s.item.rsplit("/", 1)[-1]
        if s.status != DONE or s.duration is None or "/" not in s.item:
            continue
        if step == "stop" and s.data.get("how") == "shutdown":
            t.stop_seconds.append(s.duration)
        elif step == "sync" and s.data.get("mode") == "full":
            moved = sum(int(d.get("bytes") or 0) for d in (s.data.get("disks") or {}).values())
            if moved:
                t.sync.bytes += moved
                t.sync.seconds += s.duration
                t.sync.samples += 1
    starts = {s.item.rsplit("/", 1)[0]: s for s in journal.steps(KIND_CUTOVER)
              if s.item.endswith("/start") and s.status == DONE}
    for s in journal.steps(KIND_CUTOVER):
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
    cutover: str  # done | running | failed | not started
    downtime: float | None = None
    sync_mode: str | None = None
    stop: str | None = None  # how the source stopped
    stop_seconds: float | None = None
    sync_seconds: float | None = None
    boot_seconds: float | None = None
    boot_test: str | None = None  # the last vmmove boot-test verdict (booted, failed, …)

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
                "bootTest": self.boot_test,
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
            int(up.data.get("sent") or 0) if up and up.status == DONE else None))
    top = journal.get(KIND_CUTOVER, p.key)
    steps = {s: journal.get(KIND_CUTOVER, f"{p.key}/{s}") for s in
             ("stop", "sync", "start", "verify")}
    r = VmReport(p.wave, p.vm.name, f"{p.namespace}/{p.name}", p.vm.data_bytes(), disks,
                 top.status if top else "not started")
    from migrate.guest.stage import KIND_BOOT_TEST

    tested = journal.get(KIND_BOOT_TEST, p.key)
    if tested is not None:
        r.boot_test = tested.data.get("verdict") or tested.status
    if top is not None:
        r.downtime = top.data.get("downtime")
        r.sync_mode = top.data.get("sync_mode")
    stop, sync = steps["stop"], steps["sync"]
    if stop is not None and stop.status == DONE:
        r.stop, r.stop_seconds = stop.data.get("how"), _dur(stop)
    if sync is not None and sync.status == DONE:
        r.sync_mode, r.sync_seconds = sync.data.get("mode"), _dur(sync)
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


# -- the plot ------------------------------------------------------------------------------------


def _bar_panel(title: str, unit: str, labels: list[str], series: list[tuple[str, str,
               list[float | None]]], x: int, y: int, width: int, height: int) -> list[str]:
    """A grouped bar chart: one group per label, one bar per series (name, colour, values)."""
    out = [f'<text x="{x}" y="{y - 8}" font-size="14" font-weight="bold">{escape(title)}</text>']
    values = [v for _, _, vals in series for v in vals if v is not None]
    top = max(values) if values else 1.0
    top = top * 1.15 or 1.0
    left, bottom = x + 50, y + height
    out.append(f'<line x1="{left}" y1="{y}" x2="{left}" y2="{bottom}" stroke="#333"/>')
    out.append(f'<line x1="{left}" y1="{bottom}" x2="{x + width}" y2="{bottom}" stroke="#333"/>')
    for i in range(5):
        value = top * i / 4
        ty = bottom - height * i / 4
        out.append(f'<text x="{left - 4}" y="{ty + 4:.1f}" font-size="10" '
                   f'text-anchor="end">{value:.3g}</text>')
        out.append(f'<line x1="{left}" y1="{ty:.1f}" x2="{x + width}" y2="{ty:.1f}" '
                   'stroke="#ddd"/>')
    out.append(f'<text x="{x}" y="{y + height / 2:.1f}" font-size="10" '
               f'transform="rotate(-90 {x + 8} {y + height / 2:.1f})">{escape(unit)}</text>')
    groups = max(1, len(labels))
    group_w = (width - 60) / groups
    bar_w = max(2.0, group_w * 0.8 / max(1, len(series)))
    for g, label in enumerate(labels):
        gx = left + 5 + g * group_w
        for s, (_, colour, vals) in enumerate(series):
            v = vals[g]
            if v is None:
                continue
            h = height * v / top
            out.append(f'<rect x="{gx + s * bar_w:.1f}" y="{bottom - h:.1f}" '
                       f'width="{bar_w - 1:.1f}" height="{h:.1f}" fill="{colour}">'
                       f'<title>{escape(label)}: {v:.3g} {escape(unit)}</title></rect>')
        out.append(f'<text x="{gx + group_w * 0.4:.1f}" y="{bottom + 14}" font-size="10" '
                   f'text-anchor="middle">{escape(label[:18])}</text>')
    lx = x + width - sum(30 + 7 * len(name) for name, _, _ in series)
    for name, colour, _ in series:  # legend: on the title's line, right-aligned
        out.append(f'<rect x="{lx}" y="{y - 18}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{lx + 14}" y="{y - 9}" font-size="10">{escape(name)}</text>')
        lx += 30 + 7 * len(name)
    return out


def plot_svg(reports: list[VmReport], title: str) -> str:
    """Two panels: throughput per VM (convert, upload, MiB/s) and downtime per VM (s)."""
    labels = [r.vm for r in reports]

    def rate(r: VmReport, attr: str, seconds: str) -> float | None:
        total = r.seconds(seconds)
        moved = sum(getattr(d, attr) or 0 for d in r.disks)
        return round(moved / MIB / total, 3) if total and moved else None

    convert = [rate(r, "converted_bytes", "convert_seconds") for r in reports]
    upload = [rate(r, "converted_bytes", "upload_seconds") for r in reports]
    downtime = [r.downtime for r in reports]
    width, height = max(480, 120 + 90 * len(reports)), 520
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="10" y="22" font-size="16" font-weight="bold">{escape(title)}</text>']
    parts += _bar_panel("Throughput per VM", "MiB/s", labels,
                        [("convert", "#4477aa", convert), ("upload", "#66ccee", upload)],
                        10, 70, width - 30, 170)
    parts += _bar_panel("Downtime per VM (stop → verified)", "seconds", labels,
                        [("downtime", "#ee6677", downtime)], 10, 310, width - 30, 170)
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
