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
