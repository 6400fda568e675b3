"""Retention archives what it deletes to S3 first, on every backend."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from agentmatic.checkpoint.archive import S3Archive
from agentmatic.checkpoint.retention import compact_sync
from tests.s3server import BUCKET
from tests.test_bad_input import saver  # noqa: F401 - the fixture over every saver
from tests.test_runtime import ask, build

LATER = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)


def test_compact_archives_every_checkpoint_it_deletes(
    saver,  # noqa: F811
    s3_server,
    s3_prefix,
):
    agent, _ = build(saver=saver)
    ask(agent, "t", "Refund $40")
    ask(agent, "t", "Refund $50")
    before = [s.checkpoint_id for s in saver.get_state_history("t")]
    archive = S3Archive(BUCKET, prefix=f"{s3_prefix}archive", client=s3_server.client())
    report = compact_sync(saver, retention_days=1, now=LATER, archive=archive)
    after = {s.checkpoint_id for s in saver.get_state_history("t")}
    gone = [cid for cid in before if cid not in after]
    assert report.deleted == len(gone) > 0
    for cid in gone:
        row = archive.read("t", "", cid)
        assert (row["thread_id"], row["checkpoint_ns"], row["checkpoint_id"]) == (
            "t",
            "",
            cid,
        )
        assert "writes" in row and row["checkpoint"]
        if "metadata_type" in row:  # not Postgres: the saver's own serialization
            stored = saver.serde.loads_typed((row["type"], row["checkpoint"]))
            assert stored["id"] == cid
    assert any(archive.read("t", "", cid)["writes"] for cid in gone)


def test_nothing_is_deleted_when_the_archive_fails(saver):  # noqa: F811
    agent, _ = build(saver=saver)
    ask(agent, "t", "Refund $40")
    ask(agent, "t", "Refund $50")
    before = [s.checkpoint_id for s in saver.get_state_history("t")]

    def broken(rows: list[dict[str, Any]]) -> None:
        raise OSError("the archive is unreachable")

    with pytest.raises(OSError, match="unreachable"):
        compact_sync(saver, retention_days=1, now=LATER, archive=broken)
    assert [s.checkpoint_id for s in saver.get_state_history("t")] == before
