"""The shared LangGraph fixture reads exactly as LangGraph reported it.

`langgraph-shared.sqlite` was written by LangGraph itself and
`langgraph-shared.expected.json` records what LangGraph showed for each
thread. The file is copied aside and opened read-only, as the console opens
checkpoint files written elsewhere: its index goes to a side file and the
copy is never written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentmatic.checkpoint.sqlite import SQLiteSaver

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURES = SHARED / "fixtures" / "langgraph"
DATABASE = FIXTURES / "langgraph-shared.sqlite"
EXPECTED: dict[str, dict[str, Any]] = json.loads(
    (FIXTURES / "langgraph-shared.expected.json").read_text()
)
THREADS = sorted(EXPECTED)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Never open the shared file itself: SQLite adds -wal/-shm files beside
    # a WAL database even when it only reads it.
    target = tmp_path_factory.mktemp("fixture") / DATABASE.name
    shutil.copyfile(DATABASE, target)
    target.chmod(0o444)
    return target


@pytest.fixture(scope="module")
def saver(copy: Path) -> Iterator[SQLiteSaver]:
    before = digest(copy)
    opened = SQLiteSaver(copy, readonly=True)
    yield opened
    opened.close()
    assert digest(copy) == before, "opening read-only wrote the database"


@pytest.mark.parametrize("thread_id", THREADS)
def test_history_matches_what_langgraph_recorded(
    saver: SQLiteSaver, thread_id: str
) -> None:
    expected = EXPECTED[thread_id]
    history = saver.get_state_history(thread_id)

    assert len(history) == expected["checkpoints"]
    assert list(history[0].next) == expected["next"]
    assert history[0].checkpoint_id == expected["latest_checkpoint_id"]
    assert len(history[0].messages) == expected["message_count"]
    assert history[0].messages[-1].type == expected["last_message_type"]
    assert [s.source for s in history] == expected["sources"]
    assert [s.step for s in history] == expected["steps"]


@pytest.mark.parametrize("thread_id", THREADS)
def test_history_without_values_matches_what_langgraph_recorded(
    saver: SQLiteSaver, thread_id: str
) -> None:
    expected = EXPECTED[thread_id]
    history = saver.get_state_history(thread_id, values=False)

    assert len(history) == expected["checkpoints"]
    assert list(history[0].next) == expected["next"]
    assert history[0].checkpoint_id == expected["latest_checkpoint_id"]
    assert [s.source for s in history] == expected["sources"]
    assert [s.step for s in history] == expected["steps"]
    assert all(s.values == {} for s in history)
    full = saver.get_state_history(thread_id)
    assert [s.pending_tool_calls for s in history] == [
        s.pending_tool_calls for s in full
    ]
    assert [s.parent_checkpoint_id for s in history] == [
        s.parent_checkpoint_id for s in full
    ]


@pytest.mark.parametrize("thread_id", THREADS)
def test_the_newest_state_matches_the_history(
    saver: SQLiteSaver, thread_id: str
) -> None:
    state = saver.get_state(thread_id)
    light = saver.get_state(thread_id, values=False)
    assert state is not None and light is not None
    assert state.checkpoint_id == light.checkpoint_id
    assert state.checkpoint_id == EXPECTED[thread_id]["latest_checkpoint_id"]
    assert list(state.next) == list(light.next) == EXPECTED[thread_id]["next"]


def test_a_waiting_call_shows_its_arguments(saver: SQLiteSaver) -> None:
    waiting = saver.get_state("case-42")
    assert waiting is not None
    assert waiting.next_tool_call is not None
    assert waiting.next_tool_call.name == "transfer_funds"
    assert waiting.next_tool_call.args == {"to": "acct-7", "amount": 250.0}


def test_every_thread_is_listed_newest_first(saver: SQLiteSaver) -> None:
    page = saver.list_threads()
    assert sorted(t.thread_id for t in page.threads) == THREADS
    assert page.next_cursor is None
    stamps = [t.updated_at for t in page.threads]
    assert stamps == sorted(stamps, reverse=True)
    for info in page.threads:
        expected = EXPECTED[info.thread_id]
        assert info.checkpoint_id == expected["latest_checkpoint_id"]
        assert info.checkpoints == expected["checkpoints"]
        assert list(info.next) == expected["next"]
        assert info.step == expected["steps"][0]


def test_the_index_lives_beside_the_copy_not_in_it(
    saver: SQLiteSaver, copy: Path
) -> None:
    assert saver.index_path is not None
    assert Path(saver.index_path).exists()
    assert Path(saver.index_path) != copy
    tables = {
        row[0]
        for row in sqlite3.connect(f"file:{copy}?mode=ro", uri=True).execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
        )
    }
    assert tables == {"checkpoints", "writes"}


def test_a_writable_copy_gains_our_tables_and_langgraph_still_reads_it(
    tmp_path: Path,
) -> None:
    from langgraph.checkpoint.sqlite import SqliteSaver

    target = tmp_path / "writable.sqlite"
    shutil.copyfile(DATABASE, target)
    ours = SQLiteSaver(target)
    for thread_id in THREADS:
        assert (
            len(ours.get_state_history(thread_id, values=False))
            == (EXPECTED[thread_id]["checkpoints"])
        )
    ours.close()

    theirs = SqliteSaver(sqlite3.connect(str(target), check_same_thread=False))
    for thread_id in THREADS:
        config = {"configurable": {"thread_id": thread_id}}
        listed = list(theirs.list(config))
        assert len(listed) == EXPECTED[thread_id]["checkpoints"]
        head = theirs.get_tuple(config)
        assert head is not None
        assert head.checkpoint["id"] == EXPECTED[thread_id]["latest_checkpoint_id"]
