"""Typed journal records: the journal returns one record class per kind, whose properties
read the ``data`` column, and the file on disk keeps the format it had (plain strings)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from migrate.core.journal import DONE, Journal
from migrate.core.records import (
    ApplyRecord,
    ConvertRecord,
    CutoverRecord,
    Kind,
    Status,
    Step,
    TransferRecord,
    record_class,
)


def test_each_kind_reads_as_its_record(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    with Journal(path) as journal:
        journal.start(Kind.CONVERT, "vm-1/vda")
        journal.done(Kind.CONVERT, "vm-1/vda", checksum="sha256:ab", output="/w/web-vda.qcow2",
                     format="qcow2", virtual_size=1 << 30, verified=True, force_share=True)
        journal.start(Kind.UPLOAD, "vm-1/vda", backend="s3", size=10)
        journal.done(Kind.UPLOAD, "vm-1/vda", sent=7, target={"backend": "s3", "bucket": "b"})
        journal.start(Kind.APPLY, "vm-1")
        journal.done(Kind.APPLY, "vm-1", result="dry-run", resourceVersion="42")
        journal.start(Kind.CUTOVER, "vm-1/stop")
        journal.done(Kind.CUTOVER, "vm-1/stop", how="shutdown", before="running")
        journal.update("someday", "x", note="a kind this version does not know")

        convert = journal.get(Kind.CONVERT, "vm-1/vda")
        assert isinstance(convert, ConvertRecord)
        assert (convert.output, convert.format, convert.virtual_size) == \
            ("/w/web-vda.qcow2", "qcow2", 1 << 30)
        assert convert.verified is True and convert.force_share is True
        assert convert.status == Status.DONE == DONE == "done"
        upload = journal.get(Kind.UPLOAD, "vm-1/vda")
        assert isinstance(upload, TransferRecord)
        assert (upload.backend, upload.sent, upload.moved) == ("s3", 7, 10)
        assert upload.has_target and upload.target == {"backend": "s3", "bucket": "b"}
        assert upload.fields(("backend", "size", "secret")) == {"backend": "s3", "size": 10}
        apply = journal.get(Kind.APPLY, "vm-1")
        assert isinstance(apply, ApplyRecord)
        assert apply.dry_run and apply.resource_version == "42"
        stop = journal.get(Kind.CUTOVER, "vm-1/stop")
        assert isinstance(stop, CutoverRecord) and stop.how == "shutdown"
        unknown = journal.get("someday", "x")
        assert type(unknown) is Step and record_class("someday") is Step
        assert [type(s) for s in journal.steps(Kind.CONVERT)] == [ConvertRecord]

    # on disk: the kinds and statuses are plain strings, the payload plain JSON
    db = sqlite3.connect(path)
    rows = db.execute("SELECT kind, item, status, data FROM steps ORDER BY kind, item").fetchall()
    db.close()
    assert [(k, i, s) for k, i, s, _ in rows] == [
        ("apply", "vm-1", "done"), ("convert", "vm-1/vda", "done"),
        ("cutover", "vm-1/stop", "done"), ("someday", "x", "pending"),
        ("upload", "vm-1/vda", "done")]
    assert all(type(k) is str and type(s) is str for k, _, s, _ in rows)
    assert json.loads(rows[1][3])["output"] == "/w/web-vda.qcow2"
