"""The journal: an embedded SQLite record of every step vmmove has taken.

Each unit of work (a disk conversion, an object upload, an apply, a cutover step) is one
row keyed by ``(kind, item)``.  Commands read the journal first and skip what is already
``done``, so every command is idempotent and resumes after a crash or Ctrl-C.  A history
table keeps every status change with its time, for ``status``, reports and runbooks.
:meth:`Journal.get` and :meth:`Journal.steps` return each row as the typed record of its
kind (:mod:`migrate.core.records`: ``Kind``, ``Status``, one record class per kind), whose
properties are the only readers of the ``data`` column.

The journal is safe to share between threads of one process (one connection, one lock)
and between processes (SQLite WAL); :meth:`Journal.exclusive` refuses a second concurrent
run on the same journal.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from migrate.core.files import LockBusy, WriteError, create_private, private_dir, run_lock
from migrate.core.records import Status, Step, from_row

PENDING = Status.PENDING
RUNNING = Status.RUNNING
DONE = Status.DONE
FAILED = Status.FAILED
#: ``Step.data`` key: the times and bytes of the last run that did the step's work.
MEASURED = "measured"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS steps (
    kind     TEXT NOT NULL,
    item     TEXT NOT NULL,
    status   TEXT NOT NULL,
    started  REAL,
    finished REAL,
    bytes    INTEGER,
    checksum TEXT,
    error    TEXT,
    data     TEXT NOT NULL DEFAULT '{}',
    updated  REAL NOT NULL,
    PRIMARY KEY (kind, item)
);
CREATE TABLE IF NOT EXISTS history (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      REAL NOT NULL,
    kind    TEXT NOT NULL,
    item    TEXT NOT NULL,
    status  TEXT NOT NULL,
    message TEXT
);
"""


class JournalLocked(Exception):
    """Another vmmove process holds this journal."""


class Journal:
    """One SQLite file; open it with ``Journal(path)`` and close it (or use ``with``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        # The journal records guest-derived names and paths: private, in a private folder
        # (docs/security.md); its -wal and -shm files take the database file's mode.
        fresh = str(path) != ":memory:" and not self.path.exists()
        if str(path) != ":memory:":
            private_dir(self.path.parent)
            create_private(self.path)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            self.path, timeout=30, isolation_level=None, check_same_thread=False
        )
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            self._db.close()
            if fresh:  # nothing half-written: a journal that could not start is not left
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            raise self._failure(exc) from None

    def _failure(self, exc: sqlite3.Error) -> Exception:
        """One line naming the journal for a SQLite failure (full disk, read-only, corrupt)."""
        text = str(exc)
        if "full" in text:
            text = "No space left on device (free space, or use another work folder)"
        return WriteError(f"{self.path}: cannot write the journal: {text}")

    # -- life cycle ---------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def exclusive(self) -> Iterator[Journal]:
        """Hold the journal's run lock; raise :class:`JournalLocked` if another run has it."""
        try:
            with run_lock(f"{self.path}.lock",
                          f"{self.path}: another vmmove run is using this journal"):
                yield self
        except LockBusy as exc:
            raise JournalLocked(str(exc)) from None

    # -- reading ------------------------------------------------------------------------
    def get(self, kind: str, item: str) -> Step | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM steps WHERE kind=? AND item=?", (kind, item)
            ).fetchone()
            names = [d[0] for d in self._db.execute("SELECT * FROM steps LIMIT 0").description]
        return _step(dict(zip(names, row))) if row else None

    def steps(self, kind: str | None = None, prefix: str | None = None) -> list[Step]:
        """All steps, optionally of one kind and with items starting with ``prefix``."""
        sql, args = "SELECT * FROM steps WHERE 1=1", []
        if kind is not None:
            sql += " AND kind=?"
            args.append(kind)
        if prefix is not None:
            sql += " AND substr(item, 1, ?)=?"
            args += [len(prefix), prefix]
        with self._lock:
            cur = self._db.execute(sql + " ORDER BY kind, item", args)
            names = [d[0] for d in cur.description]
            rows = cur.fetchall()
        return [_step(dict(zip(names, r))) for r in rows]

    def history(self, kind: str | None = None, item: str | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT at, kind, item, status, message FROM history WHERE 1=1", []
        if kind is not None:
            sql += " AND kind=?"
            args.append(kind)
        if item is not None:
            sql += " AND item=?"
            args.append(item)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id", args).fetchall()
        return [dict(zip(("at", "kind", "item", "status", "message"), r)) for r in rows]

    def is_done(self, kind: str, item: str) -> bool:
        step = self.get(kind, item)
        return step is not None and step.status == DONE

    # -- writing ------------------------------------------------------------------------
    def start(self, kind: str, item: str, **data: Any) -> Step:
        """Mark a step running (again), clearing an earlier error; ``data`` is merged in.

        A step done before keeps that run's times and bytes in ``data["measured"]``, so a
        rerun that does no work (``done(measured=False)``) restores them."""
        now = time.time()
        with self._lock, self._tx():
            old = self.get(kind, item)
            merged = {**(old.data if old else {}), **data}
            if old is not None and old.status == DONE and old.duration is not None:
                merged[MEASURED] = {"started": old.started, "finished": old.finished,
                                    "bytes": old.bytes}
            self._db.execute(
                "INSERT INTO steps(kind, item, status, started, finished, bytes, checksum, error,"
                " data, updated) VALUES (?,?,?,?,NULL,NULL,NULL,NULL,?,?)"
                " ON CONFLICT(kind, item) DO UPDATE SET status=excluded.status,"
                " started=excluded.started, finished=NULL, error=NULL, data=excluded.data,"
                " updated=excluded.updated",
                (kind, item, RUNNING, now, json.dumps(merged), now),
            )
            self._log(now, kind, item, RUNNING, None)
        step = self.get(kind, item)
        assert step is not None
        return step

    def update(self, kind: str, item: str, *, bytes: int | None = None, **data: Any) -> None:
        """Merge ``data`` into a step (and set its byte count) without changing its status."""
        now = time.time()
        with self._lock, self._tx():
            old = self.get(kind, item)
            if old is None:
                self._db.execute(
                    "INSERT INTO steps(kind, item, status, bytes, data, updated)"
                    " VALUES (?,?,?,?,?,?)",
                    (kind, item, PENDING, bytes, json.dumps(data), now),
                )
                return
            merged = {**old.data, **data}
            self._db.execute(
                "UPDATE steps SET data=?, bytes=COALESCE(?, bytes), updated=? WHERE kind=? AND item=?",
                (json.dumps(merged), bytes, now, kind, item),
            )

    def done(
        self,
        kind: str,
        item: str,
        *,
        bytes: int | None = None,
        checksum: str | None = None,
        measured: bool = True,
        **data: Any,
    ) -> None:
        """Mark a step done.  ``measured=False``: this run did no work (found it done,
        nothing sent), so it is not a measurement: the step keeps the times of the last
        run that did the work (none when there was none), and rates stay true."""
        self._finish(kind, item, DONE, None, bytes, checksum, data, measured)

    def fail(self, kind: str, item: str, error: str, **data: Any) -> None:
        self._finish(kind, item, FAILED, error, None, None, data)

    def archive(self, kind: str, item: str, into: str) -> None:
        """Move a step to kind ``into`` (replacing an older one there): it no longer
        counts as done, yet keeps its times, bytes and data (a cutover rolled back keeps
        what it measured, for runbooks and reports)."""
        with self._lock, self._tx():
            self._db.execute("DELETE FROM steps WHERE kind=? AND item=?", (into, item))
            self._db.execute("UPDATE steps SET kind=? WHERE kind=? AND item=?",
                             (into, kind, item))
            self._log(time.time(), kind, item, "archived", into)

    def reset(self, kind: str, item: str) -> None:
        """Forget a step, so that the next run does it again."""
        with self._lock, self._tx():
            self._db.execute("DELETE FROM steps WHERE kind=? AND item=?", (kind, item))
            self._log(time.time(), kind, item, "reset", None)

    def _finish(
        self,
        kind: str,
        item: str,
        status: str,
        error: str | None,
        nbytes: int | None,
        checksum: str | None,
        data: dict[str, Any],
        measured: bool = True,
    ) -> None:
        now = time.time()
        with self._lock, self._tx():
            old = self.get(kind, item)
            merged = {**(old.data if old else {}), **data}
            started = old.started if old and old.started is not None else now
            finished: float | None = now
            if old is not None and old.status != RUNNING and old.finished is not None:
                # finished again without being started: no new run, no new times
                started, finished = old.started, old.finished
            elif not measured:
                last = merged.get(MEASURED) or {}
                started, finished = last.get("started"), last.get("finished")
                if started is None or finished is None:
                    started = finished = now  # never measured: zero time, not a rate
                elif nbytes is not None and last.get("bytes") is not None:
                    nbytes = last["bytes"]
            self._db.execute(
                "INSERT INTO steps(kind, item, status, started, finished, bytes, checksum, error,"
                " data, updated) VALUES (?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT(kind, item) DO UPDATE SET status=excluded.status,"
                " started=excluded.started, finished=excluded.finished,"
                " bytes=COALESCE(excluded.bytes, steps.bytes),"
                " checksum=COALESCE(excluded.checksum, steps.checksum), error=excluded.error,"
                " data=excluded.data, updated=excluded.updated",
                (kind, item, status, started, finished, nbytes, checksum, error,
                 json.dumps(merged), now),
            )
            self._log(now, kind, item, status, error)

    @contextmanager
    def _tx(self) -> Iterator[None]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise self._failure(exc) from None
        try:
            yield
        except sqlite3.OperationalError as exc:
            self._db.execute("ROLLBACK")
            raise self._failure(exc) from None
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        try:
            self._db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise self._failure(exc) from None

    def _log(self, at: float, kind: str, item: str, status: str, message: str | None) -> None:
        self._db.execute(
            "INSERT INTO history(at, kind, item, status, message) VALUES (?,?,?,?,?)",
            (at, kind, item, status, message),
        )


def _step(row: dict[str, Any]) -> Step:
    row["data"] = json.loads(row["data"] or "{}")
    return from_row(row)
