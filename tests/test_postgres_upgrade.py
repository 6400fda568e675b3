"""`upgrade()` from LangGraph's Postgres tables, and LangGraph graphs on ours.

The shared fixture dump is loaded into a fresh database with psql and
upgraded twice; more databases are written by LangGraph's own
`PostgresSaver` at test time (an interrupt inside a node, parallel branches,
subgraph namespaces, a `Send` fan-out, a delta channel, unusual values) and
compared, after the upgrade, checkpoint by checkpoint with what LangGraph
itself shows. LangGraph's tables are never changed by the upgrade.
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import psycopg
import pytest
from langchain_core import messages as lc
from langgraph.checkpoint.postgres import PostgresSaver as LangGraphPostgresSaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, Send, interrupt
from typing_extensions import TypedDict

from agentmatic.checkpoint.postgres import (
    PostgresSaver,
    maintenance,
    upgrade,
    upgrade_sync,
)
from agentmatic.compat.langgraph import LangGraphSaver
from tests.test_langgraph_generated import (
    ODD_VALUES,
    Fanout,
    Odd,
    approval_graph,
    assert_same_history,
    delta_graph,
    normal,
    run_both,
)
from tests.test_seed_backends import load_fixture

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
EXPECTED: dict[str, dict[str, Any]] = json.loads(
    (FIXTURES / "langgraph" / "langgraph-shared.expected.json").read_text()
)
LANGGRAPH_TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")


def langgraph_digest(url: str) -> str:
    """Return a digest of every row of LangGraph's tables."""
    digest = hashlib.sha256()
    with psycopg.connect(url) as conn:
        for table in LANGGRAPH_TABLES:
            for row in conn.execute(f"SELECT t::text FROM {table} t ORDER BY 1"):
                digest.update(row[0].encode())
    return digest.hexdigest()


@pytest.fixture
def ours(pg_url: str) -> Iterator[PostgresSaver]:
    saver = PostgresSaver(pg_url)
    yield saver
    saver.close()


@pytest.fixture
def langgraph(pg_url: str) -> Iterator[LangGraphPostgresSaver]:
    with LangGraphPostgresSaver.from_conn_string(pg_url) as checkpointer:
        checkpointer.setup()
        yield checkpointer


# -- the shared fixture ------------------------------------------------------------


def test_the_shared_dump_upgraded_twice_reads_as_langgraph_recorded(pg_url, ours):
    load_fixture(pg_url)
    before = langgraph_digest(pg_url)
    with psycopg.connect(pg_url) as conn:
        heads = dict(
            conn.execute(
                "SELECT thread_id, max(checkpoint_id) FROM checkpoints GROUP BY 1"
            )
        )

    first = upgrade_sync(pg_url)
    second = upgrade_sync(pg_url)

    assert (first.threads, first.checkpoints) == (3, 15)
    assert (second.threads, second.checkpoints, second.writes) == (0, 0, 0)
    assert langgraph_digest(pg_url) == before
    threads = {t.thread_id: t for t in ours.list_threads().threads}
    assert sorted(threads) == sorted(EXPECTED)
    for thread_id, expected in EXPECTED.items():
        history = ours.get_state_history(thread_id)
        light = ours.get_state_history(thread_id, values=False)
        assert len(history) == expected["checkpoints"] == threads[thread_id].checkpoints
        assert list(history[0].next) == expected["next"] == list(light[0].next)
        assert len(history[0].messages) == expected["message_count"]
        assert history[0].messages[-1].type == expected["last_message_type"]
        assert [s.source for s in history] == expected["sources"]
        assert [s.step for s in history] == expected["steps"]
        # The dump was written by its own LangGraph run: its ids are its own.
        assert history[0].checkpoint_id == heads[thread_id]


def test_an_interrupted_upgrade_finishes_when_run_again(pg_url, ours, monkeypatch):
    load_fixture(pg_url)
    real = maintenance._upgrade_thread
    calls = {"n": 0}

    def failing(saver: Any, thread_id: str, has_path: bool) -> tuple[int, int]:
        calls["n"] += 1
        if calls["n"] == 2:
            raise ConnectionError("network went away")
        return real(saver, thread_id, has_path)

    monkeypatch.setattr(maintenance, "_upgrade_thread", failing)
    with pytest.raises(ConnectionError):
        upgrade_sync(pg_url)
    monkeypatch.setattr(maintenance, "_upgrade_thread", real)
    # The failed thread's transaction left nothing behind.
    assert len(ours.list_threads().threads) == 1

    report = upgrade_sync(pg_url)
    assert report.threads == 2
    assert sorted(t.thread_id for t in ours.list_threads().threads) == sorted(EXPECTED)


async def test_upgrade_picks_up_what_langgraph_wrote_since(pg_url, ours, langgraph):
    app = approval_graph().compile(checkpointer=langgraph)
    config = {"configurable": {"thread_id": "pay"}}
    app.invoke({"messages": [lc.HumanMessage(content="refund 9")], "amount": 9}, config)
    await upgrade(pg_url)
    app.invoke(Command(resume="yes"), config)

    report = await upgrade(pg_url)

    assert report.checkpoints > 0
    final = assert_same_history(app, config, ours)[0]
    assert final.values["answer"] == "yes"


def test_a_database_without_langgraph_tables_is_left_alone(pg_url):
    report = upgrade_sync(pg_url)
    assert not report.found_langgraph and report.checkpoints == 0


# -- databases LangGraph writes at test time ------------------------------------------


class Parallel(TypedDict):
    log: Annotated[list, operator.add]
    answer: str


def parallel_graph() -> StateGraph:
    def branch_a(state: Parallel) -> dict[str, Any]:
        return {"log": ["a"]}

    def branch_b(state: Parallel) -> dict[str, Any]:
        return {"log": ["b"], "answer": interrupt("continue?")}

    def join(state: Parallel) -> dict[str, Any]:
        return {"log": ["join"]}

    graph = StateGraph(Parallel)
    graph.add_node("a", branch_a)
    graph.add_node("b", branch_b)
    graph.add_node("join", join)
    graph.add_edge(START, "a")
    graph.add_edge(START, "b")
    graph.add_edge(["a", "b"], "join")
    graph.add_edge("join", END)
    return graph


class Inner(TypedDict):
    items: Annotated[list, operator.add]


class Outer(TypedDict):
    items: Annotated[list, operator.add]
    done: bool


def nested_graph() -> StateGraph:
    inner = StateGraph(Inner)
    inner.add_node("first", lambda s: {"items": ["first"]})
    inner.add_node("ask", lambda s: {"items": [interrupt("inner question")]})
    inner.add_edge(START, "first")
    inner.add_edge("first", "ask")
    inner.add_edge("ask", END)
    outer = StateGraph(Outer)
    outer.add_node("inner", inner.compile())
    outer.add_node("finish", lambda s: {"done": True})
    outer.add_edge(START, "inner")
    outer.add_edge("inner", "finish")
    outer.add_edge("finish", END)
    return outer


def odd_graph() -> StateGraph:
    graph = StateGraph(Odd)
    graph.add_node("fill", lambda s: ODD_VALUES)
    graph.add_edge(START, "fill")
    graph.add_edge("fill", END)
    return graph


Scenario = tuple[Callable[[], StateGraph], list[Any], dict[str, Any]]

SCENARIOS: dict[str, Scenario] = {
    "interrupt-in-a-node": (
        approval_graph,
        [
            {"messages": [lc.HumanMessage(content="refund 250")], "amount": 250},
            Command(resume="yes"),
        ],
        {},
    ),
    "parallel-branches": (parallel_graph, [{"log": []}, Command(resume="go")], {}),
    "subgraph-namespaces": (
        nested_graph,
        [{"items": ["start"]}, Command(resume="answer")],
        {},
    ),
    "delta-channel": (
        lambda: delta_graph(turns=11),
        [{"messages": [lc.HumanMessage(content="hi")], "turn": 0}],
        {},
    ),
    "unusual-values": (odd_graph, [{"text": "start"}], {}),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_a_thread_langgraph_wrote_reads_the_same_after_upgrade(
    name, pg_url, langgraph, ours
):
    build, steps, compile_kwargs = SCENARIOS[name]
    app = build().compile(checkpointer=langgraph, **compile_kwargs)
    config = {"configurable": {"thread_id": f"{name} ✓"}}
    midway: list[Any] = []
    for n, step in enumerate(steps):
        app.invoke(step, config)
        if n == 0 and len(steps) > 1:
            upgrade_sync(pg_url)  # upgrade a paused thread, then again later
            midway = assert_same_history(app, config, ours)
    upgrade_sync(pg_url)

    history = assert_same_history(app, config, ours)
    assert len(history) > len(midway)
    namespaces = {
        t.config["configurable"]["checkpoint_ns"]
        for t in langgraph.list(
            {"configurable": {"thread_id": config["configurable"]["thread_id"]}}
        )
    }
    for ns in namespaces - {""}:
        theirs = list(
            langgraph.list(
                {
                    "configurable": {
                        "thread_id": config["configurable"]["thread_id"],
                        "checkpoint_ns": ns,
                    }
                }
            )
        )
        mine = ours.get_state_history(
            config["configurable"]["thread_id"], checkpoint_ns=ns
        )
        assert [s.checkpoint_id for s in mine] == [t.checkpoint["id"] for t in theirs]


def test_a_send_fan_out_langgraph_wrote_reads_the_same(pg_url, langgraph, ours):
    graph = StateGraph(Fanout)
    graph.add_node("plan", lambda s: {})
    graph.add_node("worker", lambda arg: {"results": [arg["topic"].upper()]})
    graph.add_edge(START, "plan")
    graph.add_conditional_edges(
        "plan",
        lambda s: [Send("worker", {"topic": t}) for t in s["topics"]],
        ["worker"],
    )
    graph.add_edge("worker", END)
    app = graph.compile(checkpointer=langgraph, interrupt_before=["worker"])
    config = {"configurable": {"thread_id": "send"}}
    app.invoke({"topics": ["x", "y", "z"], "results": []}, config)
    upgrade_sync(pg_url)
    waiting = ours.get_state_history("send")[0]
    assert waiting.next == ("worker",)
    assert [t.name for t in waiting.tasks] == ["worker"] * 3

    app.invoke(None, config)
    upgrade_sync(pg_url)
    theirs = list(app.get_state_history(config))
    mine = ours.get_state_history("send")
    assert len(mine) == len(theirs)
    assert sorted(mine[0].values["results"]) == ["X", "Y", "Z"]


def test_an_upgraded_thread_goes_on_under_langgraph_on_our_saver(
    pg_url, langgraph, ours
):
    config = {"configurable": {"thread_id": "pay"}}
    theirs = approval_graph().compile(checkpointer=langgraph)
    theirs.invoke(
        {"messages": [lc.HumanMessage(content="refund 5")], "amount": 5}, config
    )
    upgrade_sync(pg_url)

    app = approval_graph().compile(checkpointer=LangGraphSaver(ours))
    assert app.get_state(config).next == ("approve",)
    app.invoke(Command(resume="approved"), config)
    final = app.get_state(config)
    assert final.values["answer"] == "approved"
    assert [m.type for m in final.values["messages"]] == ["human", "ai", "tool"]


def test_upgrade_stores_langgraphs_repeated_message_lists_once(pg_url, langgraph, ours):
    app = delta_free_chat().compile(checkpointer=langgraph)
    config = {"configurable": {"thread_id": "chat"}}
    app.invoke({"messages": [lc.HumanMessage(content="go")], "turn": 0}, config)
    upgrade_sync(pg_url)
    with psycopg.connect(pg_url) as conn:
        theirs = conn.execute(
            "SELECT sum(length(blob)) FROM checkpoint_blobs WHERE channel = 'messages'"
        ).fetchone()[0]
        mine = conn.execute(
            "SELECT coalesce(sum(length(data)), 0) + (SELECT "
            "coalesce(sum(length(data)), 0) FROM agentmatic_chunks) "
            "FROM agentmatic_blobs WHERE channel = 'messages'"
        ).fetchone()[0]
    assert mine * 5 < theirs
    assert_same_history(app, config, ours)


class Chat(TypedDict):
    messages: Annotated[list, lambda a, b: a + b]
    turn: int


def delta_free_chat(turns: int = 40) -> StateGraph:
    def speak(state: Chat) -> dict[str, Any]:
        text = f"turn {state['turn']} " + "lorem ipsum dolor " * 20
        return {"messages": [lc.AIMessage(content=text)], "turn": state["turn"] + 1}

    graph = StateGraph(Chat)
    graph.add_node("speak", speak)
    graph.add_edge(START, "speak")
    graph.add_conditional_edges(
        "speak", lambda s: END if s["turn"] >= turns else "speak"
    )
    return graph


# -- LangGraph graphs running on PostgresSaver -----------------------------------------


@pytest.fixture
def our_checkpointer(ours: PostgresSaver) -> LangGraphSaver:
    return LangGraphSaver(ours)


def test_a_langgraph_graph_with_an_interrupt_runs_on_postgres(our_checkpointer):
    theirs, mine = run_both(
        approval_graph(),
        our_checkpointer,
        [
            {"messages": [lc.HumanMessage(content="refund 40")], "amount": 40},
            Command(resume="approved"),
        ],
    )
    config = {"configurable": {"thread_id": "run"}}
    expected, got = theirs.get_state(config), mine.get_state(config)
    assert got.next == () == expected.next
    assert normal(got.values, ids=False) == normal(expected.values, ids=False)
    assert len(list(mine.get_state_history(config))) == len(
        list(theirs.get_state_history(config))
    )


def test_a_delta_channel_graph_runs_on_postgres(our_checkpointer):
    theirs, mine = run_both(
        delta_graph(turns=9),
        our_checkpointer,
        [{"messages": [lc.HumanMessage(content="go")], "turn": 0}],
    )
    config = {"configurable": {"thread_id": "run"}}
    for lg_state, state in zip(
        theirs.get_state_history(config), mine.get_state_history(config), strict=True
    ):
        assert normal(state.values, ids=False) == normal(lg_state.values, ids=False)


async def test_a_langgraph_graph_runs_async_on_postgres(our_checkpointer):
    app = approval_graph().compile(checkpointer=our_checkpointer)
    config = {"configurable": {"thread_id": "async"}}
    await app.ainvoke({"messages": [("user", "refund 9")], "amount": 9}, config)
    assert (await app.aget_state(config)).next == ("approve",)
    await app.ainvoke(Command(resume="ok"), config)
    final = await app.aget_state(config)
    assert final.values["answer"] == "ok"
