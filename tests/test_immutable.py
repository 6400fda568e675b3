"""A stored checkpoint never changes, on every saver."""

from __future__ import annotations

import contextlib

import pytest

from agentmatic.checkpoint.base import thread_config
from agentmatic.errors import ThreadConflict
from tests.test_bad_input import saver  # noqa: F401 - the fixture over every saver

ROOT = "1f000000-0000-6000-8000-000000000001"
CHILD = "1f000000-0000-6000-8000-000000000002"


def checkpoint(cid: str, value: str) -> dict:
    return {
        "v": 4,
        "id": cid,
        "ts": "2026-01-01T00:00:00+00:00",
        "channel_values": {"x": value},
        "channel_versions": {"x": "1"},
        "versions_seen": {},
    }


def test_storing_an_id_again_keeps_the_first_checkpoint(saver):  # noqa: F811
    saver.put(
        thread_config("t"),
        checkpoint(ROOT, "a"),
        {"step": -1, "run_id": "run-a"},
        {"x": "1"},
    )
    saver.put(thread_config("t", ROOT), checkpoint(CHILD, "b"), {"step": 0}, {"x": "1"})
    again = saver.put(
        thread_config("t"),
        checkpoint(ROOT, "changed"),
        {"step": 9, "run_id": "run-b"},
        {"x": "1"},
    )
    assert again["configurable"]["checkpoint_id"] == ROOT
    root = saver.get_tuple(thread_config("t", ROOT))
    assert root.checkpoint["channel_values"] == {"x": "a"}
    assert root.metadata["step"] == -1
    assert saver.get_tuple(thread_config("t")).checkpoint["id"] == CHILD
    ids = [t.checkpoint["id"] for t in saver.list(thread_config("t"))]
    assert ids == [CHILD, ROOT]
    assert [s.checkpoint_id for s in saver.get_state_history("t", values=False)] == ids
    with pytest.raises(ThreadConflict):
        saver.put(
            thread_config("t", ROOT),
            checkpoint(CHILD, "c"),
            {"step": 0},
            {"x": "1"},
            expected_head=ROOT,
        )
    # The head's own id again: refused, or (Postgres) kept as it was.
    with contextlib.suppress(ThreadConflict):
        saver.put(
            thread_config("t", CHILD),
            checkpoint(CHILD, "c"),
            {"step": 1},
            {"x": "1"},
            expected_head=CHILD,
        )
    assert saver.get_tuple(thread_config("t", CHILD)).checkpoint["channel_values"] == {
        "x": "b"
    }
    # Nothing the refused or ignored writes made is left to find or delete.
    assert [t.thread_id for t in saver.list_threads().threads] == ["t"]
    assert saver.find_checkpoint(CHILD).checkpoint["id"] == CHILD
    saver.delete_for_runs(["run-b"])
    assert [t.checkpoint["id"] for t in saver.list(thread_config("t"))] == ids
