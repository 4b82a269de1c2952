"""``vmmove migrate PLAN --wave N --stage``: one wave end to end, resumable.

A wave is staged in six steps, always in this order: convert → inspect → guest → upload →
manifests → apply (which also watches the imports).  ``inspect`` reads each staged image
with libguestfs and ``guest`` converts the guests that need it with virt-v2v
(docs/guest-readiness.md).  Each step is idempotent on its own — it reads
the journal and skips what is already done — so the pipeline simply runs them all again
after a crash, SIGKILL or Ctrl-C: finished conversions are not converted again, S3
uploads resume from the parts stored, applying again changes nothing.  The pipeline adds
one journal step per wave and stage (kind ``stage``, item ``wave-<N>/<stage>``) so that
``vmmove status`` and a rerun can say where the last run stopped.

Two runs on one plan at the same time are refused: :func:`plan_lock` holds an exclusive
lock on the work folder for the whole run (the journal's own lock stays free for the
steps, which take it themselves).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from migrate.core.errors import VmmoveError
from migrate.core.files import LockBusy, private_dir, run_lock
from migrate.plan import Plan
from migrate.core.progress import log
from migrate.core.journal import DONE, Journal
from migrate.pipeline.itinerary import STAGES
from migrate.core.records import KIND_STAGE

LOCK_NAME = "vmmove-plan.lock"


class PlanLocked(VmmoveError):
    """Another vmmove run holds the plan."""


@contextmanager
def plan_lock(plan: Plan) -> Iterator[None]:
    """Exclusive use of the plan's work folder for one run; refuse a concurrent one."""
    private_dir(plan.workdir)
    try:
        with run_lock(plan.workdir / LOCK_NAME,
                      f"{plan.path}: another vmmove run is working on this plan"):
            yield
    except LockBusy as exc:
        holder = f" (pid {exc.holder})" if exc.holder.isdigit() else ""
        raise PlanLocked(f"{plan.path}: another vmmove run is working on this plan{holder}"
                         "; wait for it to finish, or stop it, and rerun") from None


@dataclass
class StageResult:
    stage: str
    status: str  # done | failed
    seconds: float
    summary: str = ""
    error: str | None = None
    problems: list[str] = field(default_factory=list)  # an error listing problems: each
    head: str | None = None  # ... and the line above them (see migrate.core.errors.listed)


@dataclass
class Stage:
    """One step of the pipeline: ``run()`` does the work (idempotently) and returns a
    one-line summary, or raises :class:`VmmoveError`."""

    name: str
    run: Callable[[], str]
    data: dict[str, Any] = field(default_factory=dict)


def stage_item(wave: int, stage: str) -> str:
    return f"wave-{wave}/{stage}"


def resume_point(journal: Journal, wave: int) -> str | None:
    """The first stage of ``wave`` not done in an earlier run (None: all done)."""
    for stage in STAGES:
        step = journal.get(KIND_STAGE, stage_item(wave, stage))
        if step is None or step.status != DONE:
            return stage
    return None


def run_stages(plan: Plan, wave: int, stages: list[Stage],
               on_result: Callable[[StageResult], None] | None = None) -> list[StageResult]:
    """Run ``stages`` in order under the plan lock; stop at the first that fails."""
    results: list[StageResult] = []
    with plan_lock(plan):
        journal = plan.journal()
        try:
            earlier = resume_point(journal, wave)
            if earlier is not None and earlier != stages[0].name and \
                    journal.get(KIND_STAGE, stage_item(wave, stages[0].name)) is not None:
                log(f"wave {wave}: resuming; {earlier} was not finished by the last run")
            for stage in stages:
                item = stage_item(wave, stage.name)
                journal.start(KIND_STAGE, item, **stage.data)
                started = time.monotonic()
                try:
                    summary = stage.run()
                except VmmoveError as exc:
                    journal.fail(KIND_STAGE, item, str(exc))
                    result = StageResult(stage.name, "failed", time.monotonic() - started,
                                         error=str(exc),
                                         problems=list(getattr(exc, "problems", None) or []),
                                         head=getattr(exc, "head", None))
                    results.append(result)
                    if on_result:
                        on_result(result)
                    break
                except BaseException:
                    journal.fail(KIND_STAGE, item, "interrupted: rerun to resume")
                    raise
                seconds = time.monotonic() - started
                journal.done(KIND_STAGE, item, summary=summary, seconds=round(seconds, 3))
                result = StageResult(stage.name, "done", seconds, summary)
                results.append(result)
                if on_result:
                    on_result(result)
        finally:
            journal.close()
    return results
