"""A step's write carried in the checkpoint row it leads to (migration 7).

When one task ran from the thread's last checkpoint, its writes ride in the
new checkpoint's row instead of a row of their own in agentmatic_writes. They
still belong to the parent, which finds them in its next row by id. Each
test here breaks that one way (the carrying row deleted, a checkpoint stored
in between, more writes stored on the parent, a fork replaying the task, a
copy) and checks that every checkpoint reads as it did.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from agentmatic import Agent, HumanMessage
from agentmatic.checkpoint.postgres import PostgresSaver
from agentmatic.llms import LoopModel
from tests import seed


def noop(payload: str) -> str:
    """Do nothing, politely."""
    return "ok:" + payload[:40]


def sql(url: str, query: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def run(saver: PostgresSaver, thread_id: str, steps: int) -> None:
    model = LoopModel("noop", steps=steps, payload_bytes=80)
    agent = Agent.builder("loop").llm(model).tools([noop]).checkpoint(saver).build()
    config = {"configurable": {"thread_id": thread_id}, "recursion_limit": 1000}
    agent.invoke({"messages": [HumanMessage("go")]}, config)


def pending(saver: PostgresSaver, thread_id: str, checkpoint_id: str) -> list[Any]:
    config = {"configurable": {"thread_id": thread_id, "checkpoint_id": checkpoint_id}}
    tup = saver.get_tuple(config)
    assert tup is not None
    return sorted((t, c, repr(v)) for t, c, v in tup.pending_writes)


def everything(saver: PostgresSaver, thread_id: str) -> dict[str, Any]:
    """What each checkpoint reads as: messages, pending writes, timeline."""
    out: dict[str, Any] = {}
    for state in saver.get_state_history(thread_id):
        out[state.checkpoint_id] = {
            "messages": [m.id for m in state.values.get("messages", [])],
            "next": state.next,
        }
    for tup in saver.list({"configurable": {"thread_id": thread_id}}):
        cid = tup.config["configurable"]["checkpoint_id"]
        out[cid]["pending"] = sorted((t, c, repr(v)) for t, c, v in tup.pending_writes)
    for state in saver.get_state_history(thread_id, values=False):
        out[state.checkpoint_id]["calls"] = [c["id"] for c in state.pending_tool_calls]
    return out


def carried(url: str, thread_id: str) -> list[tuple[str, str]]:
    """Return (parent id, carrying row id) of each carrying row, oldest first."""
    return [
        (r[0], r[1])
        for r in sql(
            url,
            "SELECT parent_checkpoint_id, checkpoint_id FROM agentmatic_checkpoints "
            "WHERE thread_id = %s AND carried_task_id IS NOT NULL "
            "ORDER BY checkpoint_id",
            (thread_id,),
        )
    ]


@pytest.fixture
def saver(pg_url):
    opened = PostgresSaver(pg_url)
    yield opened
    opened.close()


def test_a_run_stores_each_step_as_one_row(saver, pg_url):
    run(saver, "t", 6)
    rows = sql(pg_url, "SELECT count(*) FROM agentmatic_checkpoints")[0][0]
    assert len(carried(pg_url, "t")) == rows - 1  # every row but the first
    assert sql(pg_url, "SELECT count(*) FROM agentmatic_writes")[0][0] == 0
    # Each parent reads the writes its next row carries.
    parent, _child = carried(pg_url, "t")[3]
    writes = pending(saver, "t", parent)
    assert sorted(c for _t, c, _v in writes) in (
        ["branch:to:agent", "messages"],
        ["branch:to:noop", "messages"],
    )


def test_a_plain_delete_of_carrying_rows_keeps_what_every_other_row_reads(
    saver, pg_url
):
    run(saver, "t", 40)  # more rows than one timeline query lists by id
    before = everything(saver, "t")
    assert sum(bool(read["calls"]) for read in before.values()) >= 40
    links = carried(pg_url, "t")
    # Delete three carrying rows in the middle, two of them adjacent.
    gone = [links[4][1], links[5][1], links[9][1]]
    sql(
        pg_url,
        "DELETE FROM agentmatic_checkpoints WHERE checkpoint_id = ANY(%s)",
        (gone,),
    )
    after = everything(PostgresSaver(pg_url), "t")
    assert set(after) == set(before) - set(gone)
    for cid, read in after.items():
        assert read == before[cid], cid


def test_the_seeds_retention_sql_then_compact_keeps_the_remaining_rows_whole(
    saver, pg_url
):
    run(saver, "t", 8)
    before = everything(saver, "t")
    ids = sorted(before)
    old = ids[: len(ids) // 2]
    sql(
        pg_url,
        "UPDATE agentmatic_checkpoints SET created_at = now() - interval '40 days' "
        "WHERE checkpoint_id = ANY(%s)",
        (old,),
    )
    sql(pg_url, seed.RETENTION_SQL)
    after = everything(PostgresSaver(pg_url), "t")
    assert set(after) == set(ids[len(ids) // 2 :])
    for cid, read in after.items():
        assert read == before[cid], cid
    saver.collect_garbage("t")
    after_gc = everything(PostgresSaver(pg_url), "t")
    assert after_gc == after


def test_a_checkpoint_stored_between_a_parent_and_its_carrying_row(saver, pg_url):
    run(saver, "t", 4)
    before = everything(saver, "t")
    parent, child = carried(pg_url, "t")[2]
    # An id after the parent's and before its carrying row's, stored as a
    # child of the head (a branch written with an id of its own choosing).
    last = int(parent[-1], 16)
    between = parent[:-1] + format(last + 1, "x") if last < 15 else parent + "0"
    assert parent < between < child
    head = saver.get_tuple({"configurable": {"thread_id": "t"}})
    assert head is not None
    checkpoint = {**head.checkpoint, "id": between}
    saver.put(head.config, checkpoint, {"source": "fork", "step": 99}, {})
    after = everything(PostgresSaver(pg_url), "t")
    assert set(after) == set(before) | {between}
    for cid, read in before.items():
        assert after[cid] == read, cid
    # The carried writes moved to a row of their own, as the parent's.
    assert (
        sql(
            pg_url,
            "SELECT count(*) FROM agentmatic_writes WHERE checkpoint_id = %s",
            (parent,),
        )[0][0]
        == 1
    )


def test_more_writes_on_a_parent_keep_its_carried_ones_first(saver, pg_url):
    run(saver, "t", 4)
    parent, _child = carried(pg_url, "t")[2]
    before = pending(saver, "t", parent)
    task_id = before[0][0]
    config = {"configurable": {"thread_id": "t", "checkpoint_id": parent}}
    # The same task writing again: its first write per slot stays (as in
    # LangGraph); an error is a slot of its own and is added.
    saver.put_writes(config, [("messages", "a rewrite")], task_id)
    saver.put_writes(config, [("__error__", "boom")], task_id)
    after = pending(saver, "t", parent)
    assert [w for w in after if w[1] != "__error__"] == before
    assert [w[1] for w in after].count("__error__") == 1
    assert [w[1] for w in after].count("messages") == 1


def test_a_fork_replaying_a_carried_task_does_not_store_it_twice(saver, pg_url):
    run(saver, "t", 4)
    parent, _child = carried(pg_url, "t")[2]
    before = pending(saver, "t", parent)
    model = LoopModel("noop", steps=2, payload_bytes=80)
    agent = Agent.builder("loop").llm(model).tools([noop]).checkpoint(saver).build()
    config = {"configurable": {"thread_id": "t", "checkpoint_id": parent}}
    agent.invoke(None, {**config, "recursion_limit": 1000})
    assert pending(saver, "t", parent) == before


def test_a_copied_thread_reads_as_its_source(saver, pg_url):
    run(saver, "t", 6)
    before = everything(saver, "t")
    saver.copy_thread("t", "u")
    after = everything(saver, "u")
    assert after == before
    assert carried(pg_url, "u") == []


def test_a_step_of_two_tasks_stores_rows_of_their_own(saver, pg_url):
    """Only a step of one task rides; two tools called at once write rows."""
    from agentmatic import AIMessage
    from agentmatic.llms import ScriptedModel
    from agentmatic.messages import ToolCall

    def lookup(order: str) -> str:
        """Look an order up."""
        return f"order {order}"

    def weather(city: str) -> str:
        """Say the weather."""
        return f"sun in {city}"

    calls = [
        ToolCall(name="lookup", args={"order": "1"}, id="a"),
        ToolCall(name="weather", args={"city": "Oslo"}, id="b"),
    ]
    script = ScriptedModel([AIMessage(content="", tool_calls=calls), "done"])
    agent = (
        Agent.builder("two")
        .llm(script)
        .tools([lookup, weather])
        .checkpoint(saver)
        .build()
    )
    agent.invoke(
        {"messages": [HumanMessage("look")]}, {"configurable": {"thread_id": "two"}}
    )
    rows = sql(
        pg_url,
        "SELECT count(DISTINCT task_id) FROM agentmatic_writes "
        "WHERE thread_id = 'two' AND channel = 'messages'",
    )
    assert rows[0][0] == 2
    state = saver.get_state("two")
    assert sorted(m.content for m in state.values["messages"][2:4]) == [
        "order 1",
        "sun in Oslo",
    ]


def test_the_timeline_finds_waiting_calls_in_carried_writes(saver, monkeypatch):
    """A timeline reads the model's call from the writes on the parent, which
    the next row carries; it never falls back to rebuilding a message log."""
    run(saver, "t", 40)

    def rebuilt(*_args: Any) -> None:
        raise AssertionError("the timeline rebuilt a message log")

    monkeypatch.setattr(PostgresSaver, "_state_with_messages", rebuilt)
    # The whole history (read as id ranges) and one page (read by ids).
    whole = saver.get_state_history("t", values=False)
    assert sum(bool(s.pending_tool_calls) for s in whole) == 40
    page = saver.get_state_history("t", values=False, limit=10)
    assert [s.pending_tool_calls for s in page] == [
        s.pending_tool_calls for s in whole[:10]
    ]
    assert any(s.pending_tool_calls for s in page)
