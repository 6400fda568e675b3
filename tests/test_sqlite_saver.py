"""SQLiteSaver under load and attack, and retention that never breaks a thread."""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ormsgpack
import pytest

from agentmatic import Agent, AIMessage, HumanMessage, ToolCall
from agentmatic.checkpoint.base import thread_config
from agentmatic.checkpoint.memory import MemorySaver
from agentmatic.checkpoint.retention import compact, compact_sync
from agentmatic.checkpoint.sqlite import SQLiteSaver
from agentmatic.errors import (
    CorruptCheckpoint,
    DisallowedType,
    ReadOnlyThread,
    ThreadConflict,
)
from agentmatic.ids import checkpoint_id
from agentmatic.llms.offline import LoopModel, ScriptedModel

ROOT = Path(__file__).resolve().parents[1]


def checkpoint(**values: Any) -> dict[str, Any]:
    return {
        "v": 4,
        "id": checkpoint_id(),
        "ts": dt.datetime.now(dt.UTC).isoformat(),
        "channel_values": values,
        "channel_versions": dict.fromkeys(values, 1),
        "versions_seen": {},
        "updated_channels": sorted(values),
    }


def put_chain(saver: SQLiteSaver, thread_id: str, count: int, **meta: Any) -> list[str]:
    """Write `count` checkpoints in a row, each continuing the last; return ids."""
    ids: list[str] = []
    parent = None
    for step in range(count):
        config = saver.put(
            thread_config(thread_id, parent),
            checkpoint(step=step),
            {"source": "loop", "step": step, **meta},
            {},
            expected_head=parent,
        )
        parent = config["configurable"]["checkpoint_id"]
        ids.append(parent)
    return ids


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "agent.sqlite"


@pytest.fixture
def saver(path: Path) -> Iterator[SQLiteSaver]:
    opened = SQLiteSaver(path)
    yield opened
    opened.close()


# -- concurrency -----------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import json, os, sys, time
    from agentmatic.checkpoint.base import thread_config
    from agentmatic.checkpoint.sqlite import SQLiteSaver
    from agentmatic.ids import checkpoint_id
    from agentmatic.messages import AIMessage

    path, thread_id, count, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    saver = SQLiteSaver(path)
    while not os.path.exists(go):
        time.sleep(0.002)
    parent = None
    for step in range(count):
        cp = {"v": 4, "id": checkpoint_id(), "ts": "2025-01-01T00:00:00+00:00",
              "channel_values": {"step": step}, "channel_versions": {"step": step + 1},
              "versions_seen": {}}
        config = saver.put(thread_config(thread_id, parent), cp,
                           {"source": "loop", "step": step}, {}, expected_head=parent)
        saver.put_writes(config, [("messages", [AIMessage(content=f"{step} ✓")])],
                         f"task-{step}")
        parent = config["configurable"]["checkpoint_id"]
    print(json.dumps({"thread": thread_id, "head": parent}))
    """
)

RACER = textwrap.dedent(
    """
    import json, os, sys, time
    from agentmatic.checkpoint.base import thread_config
    from agentmatic.checkpoint.sqlite import SQLiteSaver
    from agentmatic.errors import ThreadConflict
    from agentmatic.ids import checkpoint_id

    path, thread_id, head, go = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    saver = SQLiteSaver(path)
    cp = {"v": 4, "id": checkpoint_id(), "ts": "2025-01-01T00:00:00+00:00",
          "channel_values": {}, "channel_versions": {}, "versions_seen": {}}
    while not os.path.exists(go):
        time.sleep(0.001)
    try:
        saver.put(thread_config(thread_id, head), cp, {"source": "loop", "step": 1},
                  {}, expected_head=head)
        print(json.dumps({"won": cp["id"]}))
    except ThreadConflict as exc:
        print(json.dumps({"lost": str(exc)}))
    """
)


def run_processes(
    code: str, argv: list[list[str]], go: Path, timeout: float = 120
) -> list[dict[str, Any]]:
    """Start one process per argument list, release them at once, collect JSON."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for args in argv
    ]
    time.sleep(0.5)
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    return results


def test_fifty_processes_write_different_threads_of_one_file(
    path: Path, tmp_path: Path
) -> None:
    SQLiteSaver(path).close()
    go = tmp_path / "go"
    argv = [[str(path), f"proc-{n}", "10", str(go)] for n in range(50)]

    results = run_processes(WRITER, argv, go)

    saver = SQLiteSaver(path)
    heads = {r["thread"]: r["head"] for r in results}
    assert len(heads) == 50
    page = saver.list_threads(limit=100)
    assert {t.thread_id for t in page.threads} == set(heads)
    for info in page.threads:
        assert info.checkpoints == 10
        assert info.checkpoint_id == heads[info.thread_id]
        history = saver.get_state_history(info.thread_id, values=False)
        assert [s.step for s in history] == list(range(9, -1, -1))
        head = saver.get_tuple(thread_config(info.thread_id))
        assert head is not None
        assert head.pending_writes[0][2][0].content == "9 ✓"
    saver.close()


@pytest.mark.parametrize("sharing", ["one saver", "a saver per thread"])
def test_fifty_threads_write_different_threads_of_one_file(
    path: Path, sharing: str
) -> None:
    shared = SQLiteSaver(path)
    errors: list[BaseException] = []
    start = threading.Barrier(50)

    def write(n: int) -> None:
        saver = shared if sharing == "one saver" else SQLiteSaver(path)
        try:
            start.wait()
            ids = put_chain(saver, f"thread-{n}", 10)
            for cid in ids:
                saver.put_writes(thread_config(f"thread-{n}", cid), [("x", n)], "t")
        except BaseException as exc:
            errors.append(exc)
        finally:
            if saver is not shared:
                saver.close()

    workers = [threading.Thread(target=write, args=(n,)) for n in range(50)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert errors == []
    page = shared.list_threads(limit=60)
    assert len(page.threads) == 50
    assert all(t.checkpoints == 10 for t in page.threads)
    assert sum(1 for _ in shared.list(None)) == 500
    shared.close()


def test_only_one_of_many_processes_continues_a_head(
    saver: SQLiteSaver, path: Path, tmp_path: Path
) -> None:
    [head] = put_chain(saver, "contested", 1)
    go = tmp_path / "go"
    argv = [[str(path), "contested", head, str(go)] for _ in range(12)]

    results = run_processes(RACER, argv, go)

    winners = [r["won"] for r in results if "won" in r]
    assert len(winners) == 1
    losers = [r["lost"] for r in results if "lost" in r]
    assert len(losers) == 11
    assert all("another writer advanced the thread" in text for text in losers)
    assert saver.head_id("contested") == winners[0]
    assert len(saver.get_state_history("contested", values=False)) == 2


def test_a_write_that_does_not_continue_the_head_is_refused(
    saver: SQLiteSaver,
) -> None:
    first, second = put_chain(saver, "t", 2)
    with pytest.raises(ThreadConflict, match="'t'"):
        saver.put(
            thread_config("t", first),
            checkpoint(),
            {"source": "loop", "step": 1},
            {},
            expected_head=first,
        )
    with pytest.raises(ThreadConflict):
        saver.put(thread_config("t"), checkpoint(), {}, {}, expected_head=None)
    assert saver.head_id("t") == second


def test_leases_exclude_other_owners_until_released_or_expired(path: Path) -> None:
    one, other = SQLiteSaver(path), SQLiteSaver(path)
    assert one.acquire_lease("t", "worker-1", 30)
    assert not other.acquire_lease("t", "worker-2", 30)
    assert one.acquire_lease("t", "worker-1", 30)
    one.release_lease("t", "worker-2")
    assert not other.acquire_lease("t", "worker-2", 30)
    one.release_lease("t", "worker-1")
    assert other.acquire_lease("t", "worker-2", 0.05)
    time.sleep(0.1)
    assert one.acquire_lease("t", "worker-1", 30)
    one.close()
    other.close()


# -- the wire rules --------------------------------------------------------------------


def test_special_writes_replace_and_others_keep_the_first(saver: SQLiteSaver) -> None:
    [cid] = put_chain(saver, "w", 1)
    config = thread_config("w", cid)
    saver.put_writes(config, [("out", 1), ("__error__", "first")], "task")
    saver.put_writes(config, [("out", 2), ("__error__", "second")], "task")
    tup = saver.get_tuple(config)
    assert tup is not None
    assert sorted((c, v) for _t, c, v in tup.pending_writes) == [
        ("__error__", "second"),
        ("out", 1),
    ]


def test_pending_writes_come_back_in_task_path_order(saver: SQLiteSaver) -> None:
    [cid] = put_chain(saver, "w", 1)
    config = thread_config("w", cid)
    saver.put_writes(config, [("c", "z-path")], "a-task", task_path="~2")
    saver.put_writes(config, [("c", "first"), ("c", "second")], "z-task", "~1")
    tup = saver.get_tuple(config)
    assert tup is not None
    assert [v for _t, _c, v in tup.pending_writes] == ["first", "second", "z-path"]


def test_metadata_is_stored_as_langgraph_stores_it(
    saver: SQLiteSaver, path: Path
) -> None:
    saver.put(
        {"configurable": {"thread_id": "m", "checkpoint_ns": "", "user": "ana"}},
        checkpoint(),
        {"source": "input", "step": -1, "note": "héllo\x00"},
        {},
    )
    raw = sqlite3.connect(path).execute("SELECT metadata FROM checkpoints").fetchone()
    assert json.loads(raw[0]) == {
        "source": "input",
        "step": -1,
        "note": "héllo",
        "user": "ana",
    }


# -- hostile input ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["x') OR '1'='1", "source; DROP TABLE checkpoints", "a.b", "", "$.x", "ü"]
)
def test_a_filter_key_that_is_not_an_identifier_is_refused(
    saver: SQLiteSaver, key: str
) -> None:
    put_chain(saver, "victim", 2, owner="alice")
    with pytest.raises(ValueError, match="not a plain identifier"):
        list(saver.list(None, filter={key: "x"}))
    assert len(list(saver.list(None))) == 2


def test_hostile_filter_values_and_thread_ids_match_nothing_else(
    saver: SQLiteSaver,
) -> None:
    put_chain(saver, "alice", 2, owner="alice")
    put_chain(saver, "x' OR '1'='1", 1, owner="mallory")
    assert list(saver.list(None, filter={"owner": "x' OR '1'='1"})) == []
    found = list(saver.list(None, filter={"owner": "mallory"}))
    assert [t.config["configurable"]["thread_id"] for t in found] == ["x' OR '1'='1"]
    assert len(saver.get_state_history("x' OR '1'='1")) == 1
    assert list(saver.list(None, filter={"owner": None})) == []


def corrupt(path: Path, thread_id: str, cid: str, blob: bytes, type_: str) -> None:
    conn = sqlite3.connect(path)
    conn.execute(
        "UPDATE checkpoints SET checkpoint = ?, type = ? WHERE thread_id = ? "
        "AND checkpoint_id = ?",
        (blob, type_, thread_id, cid),
    )
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    ("blob", "type_", "error", "names"),
    [
        (b"\x85\xa1v\x04\xa2id", "msgpack", CorruptCheckpoint, "invalid msgpack"),
        (
            ormsgpack.packb(ormsgpack.Ext(42, b"\x01\x02\x03")),
            "msgpack",
            CorruptCheckpoint,
            "extension code 42",
        ),
        (
            ormsgpack.packb(
                ormsgpack.Ext(0, ormsgpack.packb(("os", "system", "touch /tmp/owned")))
            ),
            "msgpack",
            DisallowedType,
            "os.system",
        ),
        (b"\x80\x03}q\x00.", "pickle", CorruptCheckpoint, "pickle"),
    ],
)
def test_a_corrupt_or_hostile_blob_gives_a_clear_error(
    saver: SQLiteSaver,
    path: Path,
    blob: bytes,
    type_: str,
    error: type[Exception],
    names: str,
) -> None:
    first, second = put_chain(saver, "broken", 2)
    corrupt(path, "broken", second, blob, type_)
    with pytest.raises(error) as caught:
        saver.get_tuple(thread_config("broken"))
    assert names in str(caught.value)
    assert "broken" in str(caught.value)
    # The timeline needs no values, so it still shows the thread.
    assert [
        s.checkpoint_id for s in saver.get_state_history("broken", values=False)
    ] == [
        second,
        first,
    ]
    assert saver.get_tuple(thread_config("broken", first)) is not None


def test_a_corrupt_row_written_elsewhere_does_not_stop_indexing(
    saver: SQLiteSaver, path: Path
) -> None:
    put_chain(saver, "fine", 2)
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO checkpoints VALUES ('foreign', '', ?, NULL, 'msgpack', ?, ?)",
        (checkpoint_id(), b"\xff\x00garbage", b"{not json"),
    )
    conn.commit()
    conn.close()
    page = saver.list_threads()
    assert {t.thread_id for t in page.threads} == {"fine", "foreign"}
    with pytest.raises(CorruptCheckpoint, match="foreign"):
        saver.get_state("foreign")


def test_a_read_only_saver_never_writes(saver: SQLiteSaver, path: Path) -> None:
    put_chain(saver, "t", 3)
    saver.close()
    before = path.read_bytes()
    reader = SQLiteSaver(path, readonly=True, index_path=path.parent / "side.db")
    assert len(reader.get_state_history("t")) == 3
    with pytest.raises(ReadOnlyThread):
        reader.put(thread_config("t"), checkpoint(), {}, {})
    with pytest.raises(ReadOnlyThread):
        reader.acquire_lease("t", "me", 1)
    reader.close()
    assert path.read_bytes() == before


# -- reading fast ----------------------------------------------------------------------


def test_a_thousand_step_history_reads_the_same_with_and_without_values(
    saver: SQLiteSaver,
) -> None:
    def noop(payload: str) -> str:
        """Do nothing."""
        return "ok"

    agent = Agent.builder("bench").llm(LoopModel("noop", 500)).tools([noop])
    agent = agent.checkpoint(saver).build()
    config = {"configurable": {"thread_id": "long"}, "recursion_limit": 5000}
    agent.invoke({"messages": [("user", "go")]}, config)

    fresh = SQLiteSaver(saver.path)
    light = fresh.get_state_history("long", values=False)
    assert len(light) >= 1000

    full = fresh.get_state_history("long")
    assert [s.next for s in full] == [s.next for s in light]
    assert [s.pending_tool_calls for s in full] == [s.pending_tool_calls for s in light]
    assert len(full[0].messages) == 1002
    fresh.close()


def seed_threads(path: Path, count: int) -> None:
    """Write `count` one-checkpoint threads straight into the tables, in one go."""
    SQLiteSaver(path).close()
    conn = sqlite3.connect(path)
    base = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    rows = []
    for n in range(count):
        ts = (base + dt.timedelta(seconds=n)).isoformat()
        rows.append((f"thread-{n:06d}", checkpoint_id(), ts, f"agent-{n % 3}"))
    conn.executemany(
        "INSERT INTO checkpoints VALUES (?, '', ?, NULL, 'null', NULL, '{}')",
        [(t, c) for t, c, _ts, _a in rows],
    )
    conn.executemany(
        "INSERT INTO agentmatic_index (thread_id, checkpoint_ns, checkpoint_id, ts, "
        "step, source) VALUES (?, '', ?, ?, 0, 'loop')",
        [(t, c, ts) for t, c, ts, _a in rows],
    )
    conn.executemany(
        "INSERT INTO agentmatic_threads (thread_id, agent, created_at, updated_at, "
        "head_checkpoint_id, step, source, checkpoints) "
        "VALUES (?, ?, ?, ?, ?, 0, 'loop', 1)",
        [(t, a, ts, ts, c) for t, c, ts, a in rows],
    )
    conn.execute(
        "INSERT OR REPLACE INTO agentmatic_meta VALUES ('indexed_rowid', "
        "(SELECT max(rowid) FROM checkpoints))"
    )
    conn.commit()
    conn.close()


def test_listing_threads_pages_through_a_hundred_thousand(path: Path) -> None:
    seed_threads(path, 100_000)
    saver = SQLiteSaver(path)

    first = saver.list_threads(limit=50)
    assert [t.thread_id for t in first.threads[:2]] == [
        "thread-099999",
        "thread-099998",
    ]

    cursor = first.next_cursor
    seen = [t.thread_id for t in first.threads]
    for _ in range(3):
        page = saver.list_threads(limit=50, cursor=cursor)
        seen.extend(t.thread_id for t in page.threads)
        cursor = page.next_cursor
    assert seen == [f"thread-{n:06d}" for n in range(99_999, 99_799, -1)]

    by_agent = saver.list_threads(agent="agent-1", limit=50)
    assert all(t.agent == "agent-1" for t in by_agent.threads)
    assert len(by_agent.threads) == 50
    saver.close()


def test_checkpoints_langgraph_adds_later_are_indexed(
    saver: SQLiteSaver, path: Path
) -> None:
    from langgraph.checkpoint.sqlite import SqliteSaver

    put_chain(saver, "ours", 2)
    assert {t.thread_id for t in saver.list_threads().threads} == {"ours"}
    theirs = SqliteSaver(sqlite3.connect(str(path), check_same_thread=False))
    theirs.put(
        {"configurable": {"thread_id": "theirs", "checkpoint_ns": ""}},
        checkpoint(answer=42),
        {"source": "input", "step": -1},
        {},
    )
    assert {t.thread_id for t in saver.list_threads().threads} == {"ours", "theirs"}
    [state] = saver.get_state_history("theirs")
    assert state.values == {"answer": 42}
    assert saver.find_checkpoint(state.checkpoint_id) is not None


# -- retention -------------------------------------------------------------------------


def lookup_order(order_id: str) -> dict[str, Any]:
    """Look an order up."""
    return {"order_id": order_id, "total": 250}


def transfer_funds(to: str, amount: float) -> str:
    """Send money."""
    return f"sent {amount} to {to}"


def build_agent(saver: Any, replies: list[Any]) -> Agent:
    return (
        Agent.builder("refunds")
        .llm(ScriptedModel(replies))
        .tools([lookup_order, transfer_funds])
        .checkpoint(saver)
        .interrupt_before(["transfer_funds"])
        .build()
    )


def lookup(call_id: str) -> AIMessage:
    return AIMessage(
        content="", tool_calls=[ToolCall("lookup_order", {"order_id": "A"}, call_id)]
    )


def transfer(call_id: str) -> AIMessage:
    return AIMessage(
        content="",
        tool_calls=[ToolCall("transfer_funds", {"to": "acct", "amount": 9}, call_id)],
    )


@pytest.fixture(params=["sqlite", "memory"])
def any_saver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "memory":
        yield MemorySaver()
        return
    opened = SQLiteSaver(tmp_path / "retention.sqlite")
    yield opened
    opened.close()


def snapshot(saver: Any) -> dict[str, list[tuple[str, list[Any]]]]:
    """Return every thread's checkpoint ids and message contents, newest first."""
    out = {}
    for thread_id in saver.thread_ids():
        out[thread_id] = [
            (s.checkpoint_id, [m.content for m in s.messages])
            for s in saver.get_state_history(thread_id)
        ]
    return out


def test_retention_keeps_heads_paused_runs_forks_and_holds(any_saver: Any) -> None:
    saver = any_saver
    agent = build_agent(
        saver, [lookup("c1"), "first answer", lookup("c2"), transfer("c3")]
    )
    paused = {"configurable": {"thread_id": "paused"}}
    agent.invoke({"messages": [HumanMessage("first question")]}, paused)
    old_point = agent.get_state_history(paused)[2]
    agent.invoke({"messages": [HumanMessage("refund please")]}, paused)
    waiting = agent.get_state(paused)
    assert waiting.next == ("transfer_funds",)

    forker = build_agent(saver, ["forked answer"])
    forked = {
        "configurable": {"thread_id": "fork", "checkpoint_id": old_point.checkpoint_id}
    }
    forker.invoke(None, forked)

    held_agent = build_agent(saver, [lookup("h1"), "held answer", "again"])
    held = {"configurable": {"thread_id": "held"}}
    held_agent.invoke({"messages": [HumanMessage("keep me")]}, held)
    held_agent.invoke({"messages": [HumanMessage("and me")]}, held)

    before = snapshot(saver)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)

    assert compact_sync(saver, retention_days=60, now=later).deleted == 0
    report = compact_sync(saver, retention_days=7, now=later, legal_holds=["held"])

    after = snapshot(saver)
    assert report.deleted > 0
    assert report.threads == 3 and report.threads_held == 1
    assert after["held"] == before["held"]
    for thread_id, states in after.items():
        # Every survivor reads exactly as before, the head included.
        assert states[0] == before[thread_id][0]
        assert all(item in before[thread_id] for item in states)
    kept_ids = {cid for cid, _ in after["paused"]}
    assert old_point.checkpoint_id in kept_ids
    assert len(after["paused"]) < len(before["paused"])
    assert after["fork"] == before["fork"]
    again = compact_sync(saver, retention_days=7, now=later, legal_holds=["held"])
    assert again.deleted == 0

    resumed = build_agent(saver, ["paid"]).approve(paused, actor="ops")
    assert resumed.next == ()
    assert [m.content for m in resumed.messages][-1] == "paid"


async def test_compact_is_awaitable_and_takes_a_url(tmp_path: Path) -> None:
    path = tmp_path / "url.sqlite"
    saver = SQLiteSaver(path)
    agent = build_agent(saver, [lookup("c1"), "one", "two"])
    config = {"configurable": {"thread_id": "t"}}
    agent.invoke({"messages": [HumanMessage("a")]}, config)
    agent.invoke({"messages": [HumanMessage("b")]}, config)
    head = agent.get_state(config)
    saver.close()

    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=10)
    report = await compact(f"sqlite:///{path}", retention_days=1, now=later)

    assert report.deleted > 0
    reopened = SQLiteSaver(path)
    state = reopened.get_state("t")
    assert state is not None
    assert state.checkpoint_id == head.checkpoint_id
    assert [m.content for m in state.messages] == [m.content for m in head.messages]
    reopened.close()


def test_prune_keeps_a_delta_thread_readable(saver: SQLiteSaver) -> None:
    agent = build_agent(saver, [lookup("c1"), transfer("c2")])
    config = {"configurable": {"thread_id": "p"}}
    waiting = agent.invoke({"messages": [HumanMessage("refund")]}, config)

    saver.prune(["p"], strategy="keep_latest")

    [state] = saver.get_state_history("p")
    assert state.checkpoint_id == waiting.checkpoint_id
    assert [m.content for m in state.messages] == [m.content for m in waiting.messages]
    assert state.next == ("transfer_funds",)
    done = build_agent(saver, ["done"]).approve(config, actor="ops")
    assert done.messages[-1].content == "done"


def test_copy_and_delete_for_runs_keep_the_index_true(saver: SQLiteSaver) -> None:
    put_chain(saver, "src", 3, run_id="run-1")
    saver.copy_thread("src", "dst")
    assert [s.step for s in saver.get_state_history("dst", values=False)] == [2, 1, 0]
    assert {t.thread_id for t in saver.list_threads().threads} == {"src", "dst"}

    saver.delete_for_runs(["run-1"])
    assert saver.list_threads().threads == []
    assert list(saver.list(None)) == []
