"""What an apply did, as rows and data: each object applied and each import watched."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from migrate.pipeline.stages import ApplyOutcome


def outcome_rows(wave: int, outcome: ApplyOutcome) -> tuple[list[dict[str, Any]],
                                                              list[list[Any]]]:
    data, rows = [], []
    for a in outcome.applied:
        detail = a.error or (f"resourceVersion {a.resource_version}"
                             if a.resource_version else "")
        data.append({"wave": wave, "kind": a.kind, "namespace": a.namespace, "name": a.name,
                     "result": a.result, "uid": a.uid, "resourceVersion": a.resource_version,
                     "error": a.error})
        rows.append([wave, a.ref, a.result, detail])
    for s in outcome.imports:
        ref = f"DataVolume/{s.item.namespace}/{s.item.dv}"
        detail = s.reason or (f"{s.progress:.0f}%" if s.progress is not None else "")
        data.append({"wave": wave, "kind": "DataVolume", "namespace": s.item.namespace,
                     "name": s.item.dv, "disk": s.item.label, "result": s.outcome,
                     "phase": s.phase, "progress": s.progress, "restarts": s.restarts,
                     "error": s.reason if s.outcome in ("failed", "timeout") else None})
        rows.append([wave, ref, s.outcome, f"{s.phase or '-'} {detail}".strip()])
    return data, rows


def rollback_rows(idle: list[Any], chosen: list[Any],
                  outcomes: list[Any]) -> tuple[list[dict[str, Any]], list[list[Any]], list[str]]:
    """``vmmove rollback``'s data and rows: the VMs with nothing to roll back (``idle``,
    never cut over), then each VM rolled back or its error; and the errors."""
    data: list[dict[str, Any]] = []
    rows: list[list[Any]] = []
    errors: list[str] = []
    for p in idle:
        data.append({"key": p.key, "vm": p.vm.name, "target": f"{p.namespace}/{p.name}",
                     "status": "nothing to roll back"})
        rows.append([p.vm.name, f"{p.namespace}/{p.name}", "nothing to roll back", "-", "-",
                     "never cut over"])
    for p, r in zip(chosen, outcomes):
        if isinstance(r, Exception):
            errors.append(str(r))
            data.append({"key": p.key, "vm": p.vm.name, "status": "failed", "error": str(r)})
            rows.append([p.vm.name, f"{p.namespace}/{p.name}", "failed", "-", "-",
                         str(r)[:160]])
            continue
        data.append({**r.to_data(), "status": "rolled back"})
        rows.append([r.vm, r.target, "rolled back", r.target_action, r.source_action, ""])
    return data, rows, errors


def stage_rows(results: list[Any]) -> tuple[list[dict[str, Any]], list[list[Any]]]:
    """``vmmove migrate``'s data and rows: each stage of the wave, its time and summary."""
    data = [{"stage": r.stage, "status": r.status, "seconds": round(r.seconds, 3),
             "summary": r.summary, "error": r.error} for r in results]
    rows = [[r.stage, r.status, f"{r.seconds:.1f}s", r.error or r.summary] for r in results]
    return data, rows


def cutover_rows(results: list[Any]) -> list[list[Any]]:
    """``vmmove cutover``'s rows: each VM, its downtime, sync mode, steps and next action."""
    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}s"

    return [[r.vm, r.target, r.status, seconds(r.downtime), r.sync_mode or "-",
             " ".join(f"{k}:{v}" for k, v in r.steps.items()) or "-",
             (r.error or r.next or "")[:160]] for r in results]
