"""Retention archives what it deletes to S3 first, on every backend."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from agentmatic.checkpoint.archive import S3Archive
from agentmatic.checkpoint.base import thread_config
from agentmatic.checkpoint.retention import compact_sync
from tests.s3server import BUCKET
from tests.test_bad_input import saver  # noqa: F401 - the fixture over every saver
from tests.test_chain import backend  # noqa: F401 - the fixture over four savers
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
    before = {
        s.checkpoint_id: saver.get_tuple(thread_config("t", s.checkpoint_id))
        for s in saver.get_state_history("t")
    }
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
        # The checkpoint with its values, its metadata and its writes.
        stored = saver.serde.loads_typed((row["type"], row["checkpoint"]))
        assert stored == before[cid].checkpoint
        metadata = saver.serde.loads_typed((row["metadata_type"], row["metadata"]))
        assert metadata == before[cid].metadata
        writes = [
            (
                w["task_id"],
                w["channel"],
                saver.serde.loads_typed((w["type"], w["blob"])),
            )
            for w in row["writes"]
        ]
        assert writes == list(before[cid].pending_writes)
    assert any(archive.read("t", "", cid)["writes"] for cid in gone)


def test_a_thread_that_cannot_be_archived_stays_whole(backend):  # noqa: F811
    store = backend.saver()
    agent, _ = build(saver=store)
    for thread in ("good", "bad"):
        ask(agent, thread, "Refund $40")
        ask(agent, thread, "Refund $50")
    bad = [s.checkpoint_id for s in store.get_state_history("bad")]
    good = len(store.get_state_history("good"))
    for cid in bad[1:]:
        backend.flip_checkpoint_byte(store, "bad", cid, 0.0)
    archived: list[dict[str, Any]] = []
    report = compact_sync(store, retention_days=1, now=LATER, archive=archived.extend)
    assert report.threads_unreadable == 1
    assert {row["thread_id"] for row in archived} == {"good"}
    assert (
        report.deleted == len(archived) == good - len(store.get_state_history("good"))
    )
    # Every deletion was the good thread's: the bad one stayed whole.


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


def test_archive_keys_never_hold_a_dot_segment():
    archive = S3Archive("b", "old", client=object())
    assert (
        archive.key({"thread_id": "..", "checkpoint_ns": ".", "checkpoint_id": "a/b"})
        == "old/%2E%2E/%2E/a%2Fb.msgpack"
    )
    assert archive.key({"thread_id": "t", "checkpoint_id": "c"}) == "old/t/%/c.msgpack"
