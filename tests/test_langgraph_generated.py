"""Databases written by LangGraph at test time, read by Agentmatic, and back.

Each scenario runs a LangGraph graph on LangGraph's own `SqliteSaver` and
compares `SQLiteSaver.get_state_history` (with and without values) to
LangGraph's `graph.get_state_history` checkpoint by checkpoint. The other
direction writes a thread with our runtime and reads it with LangGraph; the
last tests run LangGraph graphs on our savers through `LangGraphSaver`.

Two differences are by design and normalised here: LangGraph fills channels
that were never written with their empty default (``[]``) where we show no
key, and LangGraph orders parallel nodes in `next` by name.
"""

from __future__ import annotations

import datetime as dt
import operator
import sqlite3
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import pytest
from langchain_core import messages as lc
from langgraph.channels.delta import DeltaChannel
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import Command, Send, interrupt
from typing_extensions import TypedDict

from agentmatic.checkpoint.memory import MemorySaver
from agentmatic.checkpoint.sqlite import SQLiteSaver
from agentmatic.compat.langgraph import LangGraphSaver
from agentmatic.state import State


def langgraph_sqlite(path: Path) -> SqliteSaver:
    return SqliteSaver(sqlite3.connect(str(path), check_same_thread=False))


def normal(value: Any, *, ids: bool = True) -> Any:
    """Return a comparable form: LangChain's and our messages compare equal.

    With ``ids=False`` message ids are left out, to compare two runs.
    """
    if (
        hasattr(value, "content")
        and hasattr(value, "type")
        and not isinstance(value, dict)
    ):
        calls = [
            (c["name"], c["args"], c["id"]) for c in getattr(value, "tool_calls", [])
        ]
        return (
            "message",
            value.type,
            value.content,
            value.id if ids else None,
            value.name,
            calls,
            getattr(value, "tool_call_id", None),
        )
    if isinstance(value, dict):
        return {k: normal(v, ids=ids) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normal(v, ids=ids) for v in value]
    return value


def interrupts_of(state: Any) -> list[tuple[Any, str]]:
    return sorted(((i.value, i.id) for i in state.interrupts), key=lambda x: x[1])


def assert_same_history(
    app: Any, config: dict[str, Any], saver: SQLiteSaver, checkpoint_ns: str = ""
) -> list[State]:
    """Assert our history of the thread equals LangGraph's, and return ours."""
    thread_id = config["configurable"]["thread_id"]
    theirs = list(app.get_state_history(config))
    ours = saver.get_state_history(thread_id, checkpoint_ns=checkpoint_ns)
    light = saver.get_state_history(
        thread_id, values=False, checkpoint_ns=checkpoint_ns
    )
    assert [s.config["configurable"]["checkpoint_id"] for s in theirs] == [
        s.checkpoint_id for s in ours
    ]
    assert [s.checkpoint_id for s in light] == [s.checkpoint_id for s in ours]
    for lg_state, state, light_state in zip(theirs, ours, light, strict=True):
        where = f"step {state.step} ({state.checkpoint_id})"
        assert state.step == lg_state.metadata["step"], where
        assert state.source == lg_state.metadata["source"], where
        assert sorted(state.next) == sorted(lg_state.next), where
        assert light_state.next == state.next, where
        expected = {
            k: v
            for k, v in lg_state.values.items()
            if k in state.values or v not in ([], {}, None)
        }
        assert normal(state.values) == normal(expected), where
        assert light_state.values == {}, where
        assert interrupts_of(state) == interrupts_of(lg_state), where
        assert interrupts_of(light_state) == interrupts_of(lg_state), where
        assert sorted(t.name for t in state.tasks) == sorted(
            t.name for t in lg_state.tasks
        ), where
        assert [t.name for t in light_state.tasks] == [t.name for t in state.tasks]
        assert light_state.metadata == state.metadata, where
    return ours


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "langgraph.sqlite"


def open_ours(db: Path, tmp_path: Path) -> SQLiteSaver:
    """Open LangGraph's file the way the console does: read-only, index aside."""
    return SQLiteSaver(db, readonly=True, index_path=tmp_path / "index.sqlite")


# -- scenarios written by LangGraph ----------------------------------------------------


class Approval(TypedDict):
    messages: Annotated[list, add_messages]
    amount: int
    answer: str


def approval_graph() -> StateGraph:
    def agent(state: Approval) -> dict[str, Any]:
        return {
            "messages": [
                lc.AIMessage(
                    content="",
                    tool_calls=[
                        {"name": "pay", "args": {"amount": state["amount"]}, "id": "c1"}
                    ],
                )
            ]
        }

    def approve(state: Approval) -> dict[str, Any]:
        answer = interrupt({"question": "pay?", "amount": state["amount"]})
        return {
            "answer": answer,
            "messages": [lc.ToolMessage(content=f"paid: {answer}", tool_call_id="c1")],
        }

    graph = StateGraph(Approval)
    graph.add_node("agent", agent)
    graph.add_node("approve", approve)
    graph.add_edge(START, "agent")
    graph.add_edge("agent", "approve")
    graph.add_edge("approve", END)
    return graph


def test_an_interrupt_raised_inside_a_node_reads_the_same(
    db: Path, tmp_path: Path
) -> None:
    app = approval_graph().compile(checkpointer=langgraph_sqlite(db))
    config = {"configurable": {"thread_id": "pay-1"}}
    app.invoke(
        {"messages": [lc.HumanMessage(content="refund 250")], "amount": 250}, config
    )

    paused = assert_same_history(app, config, open_ours(db, tmp_path))[0]
    assert paused.next == ("approve",)
    assert paused.interrupts[0].value == {"question": "pay?", "amount": 250}

    app.invoke(Command(resume="yes"), config)
    saver = SQLiteSaver(db, readonly=True, index_path=tmp_path / "index2.sqlite")
    final = assert_same_history(app, config, saver)[0]
    assert final.next == ()
    assert final.values["answer"] == "yes"
    assert [m.type for m in final.messages] == ["human", "ai", "tool"]


class Parallel(TypedDict):
    log: Annotated[list, operator.add]
    answer: str


def test_parallel_branches_with_an_interrupt_in_one_read_the_same(
    db: Path, tmp_path: Path
) -> None:
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
    app = graph.compile(checkpointer=langgraph_sqlite(db))
    config = {"configurable": {"thread_id": "fan"}}
    app.invoke({"log": []}, config)
    paused = assert_same_history(app, config, open_ours(db, tmp_path))[0]
    assert sorted(paused.next) == ["a", "b"]

    app.invoke(Command(resume="go"), config)
    saver = SQLiteSaver(db, readonly=True, index_path=tmp_path / "index2.sqlite")
    history = assert_same_history(app, config, saver)
    assert history[0].values["log"] == ["a", "b", "join"]
    assert history[1].next == ("join",)


class Inner(TypedDict):
    items: Annotated[list, operator.add]


class Outer(TypedDict):
    items: Annotated[list, operator.add]
    done: bool


def test_subgraph_namespaces_read_the_same(db: Path, tmp_path: Path) -> None:
    def first(state: Inner) -> dict[str, Any]:
        return {"items": ["first"]}

    def ask(state: Inner) -> dict[str, Any]:
        return {"items": [interrupt("inner question")]}

    inner = StateGraph(Inner)
    inner.add_node("first", first)
    inner.add_node("ask", ask)
    inner.add_edge(START, "first")
    inner.add_edge("first", "ask")
    inner.add_edge("ask", END)

    def finish(state: Outer) -> dict[str, Any]:
        return {"done": True}

    outer = StateGraph(Outer)
    outer.add_node("inner", inner.compile())
    outer.add_node("finish", finish)
    outer.add_edge(START, "inner")
    outer.add_edge("inner", "finish")
    outer.add_edge("finish", END)
    checkpointer = langgraph_sqlite(db)
    app = outer.compile(checkpointer=checkpointer)
    config = {"configurable": {"thread_id": "nested"}}
    app.invoke({"items": ["start"]}, config)

    saver = open_ours(db, tmp_path)
    paused = assert_same_history(app, config, saver)[0]
    assert paused.next == ("inner",)
    assert [i.value for i in paused.interrupts] == ["inner question"]

    namespaces = {
        t.config["configurable"]["checkpoint_ns"]
        for t in checkpointer.list({"configurable": {"thread_id": "nested"}})
    } - {""}
    assert namespaces and all(ns.startswith("inner:") for ns in namespaces)
    for ns in namespaces:
        child = {"configurable": {"thread_id": "nested", "checkpoint_ns": ns}}
        theirs = list(checkpointer.list(child))
        ours = saver.get_state_history("nested", checkpoint_ns=ns)
        assert [s.checkpoint_id for s in ours] == [t.checkpoint["id"] for t in theirs]
        assert ours[0].next == ("ask",)
        assert ours[0].values["items"] == ["start", "first"]

    app.invoke(Command(resume="answer"), config)
    saver = SQLiteSaver(db, readonly=True, index_path=tmp_path / "index2.sqlite")
    final = assert_same_history(app, config, saver)[0]
    assert final.values == app.get_state(config).values
    assert final.values["done"] is True


class Fanout(TypedDict):
    topics: list[str]
    results: Annotated[list, operator.add]


def test_send_fan_out_reads_the_same(db: Path, tmp_path: Path) -> None:
    def plan(state: Fanout) -> dict[str, Any]:
        return {}

    def worker(arg: dict[str, Any]) -> dict[str, Any]:
        return {"results": [arg["topic"].upper()]}

    def route(state: Fanout) -> list[Send]:
        return [Send("worker", {"topic": t}) for t in state["topics"]]

    graph = StateGraph(Fanout)
    graph.add_node("plan", plan)
    graph.add_node("worker", worker)
    graph.add_edge(START, "plan")
    graph.add_conditional_edges("plan", route, ["worker"])
    graph.add_edge("worker", END)
    app = graph.compile(checkpointer=langgraph_sqlite(db), interrupt_before=["worker"])
    config = {"configurable": {"thread_id": "send"}}
    app.invoke({"topics": ["x", "y", "z"], "results": []}, config)

    saver = open_ours(db, tmp_path)
    waiting = saver.get_state_history("send")[0]
    theirs = app.get_state(config)
    # LangGraph lists one `worker` per packet; we list each node once.
    assert theirs.next == ("worker", "worker", "worker")
    assert waiting.next == ("worker",)
    assert [t.name for t in waiting.tasks] == ["worker"] * 3

    app.invoke(None, config)
    saver = SQLiteSaver(db, readonly=True, index_path=tmp_path / "index2.sqlite")
    theirs_history = list(app.get_state_history(config))
    ours = saver.get_state_history("send")
    assert len(ours) == len(theirs_history)
    for lg_state, state in zip(theirs_history, ours, strict=True):
        assert tuple(dict.fromkeys(lg_state.next)) == state.next
        assert sorted(t.name for t in lg_state.tasks) == sorted(
            t.name for t in state.tasks
        )
        assert state.values.get("results", []) == lg_state.values.get("results", [])
    assert sorted(ours[0].values["results"]) == ["X", "Y", "Z"]


def _append_messages(left: list[Any], writes: list[Any]) -> list[Any]:
    for write in writes:
        left = add_messages(left, write)
    return left


class DeltaState(TypedDict):
    messages: Annotated[list, DeltaChannel(_append_messages, snapshot_frequency=4)]
    turn: int


def delta_graph(turns: int) -> StateGraph:
    def speak(state: DeltaState) -> dict[str, Any]:
        return {
            "messages": [lc.AIMessage(content=f"turn {state['turn']} ✓")],
            "turn": state["turn"] + 1,
        }

    def again(state: DeltaState) -> str:
        return END if state["turn"] >= turns else "speak"

    graph = StateGraph(DeltaState)
    graph.add_node("speak", speak)
    graph.add_edge(START, "speak")
    graph.add_conditional_edges("speak", again)
    return graph


def test_delta_channel_messages_read_the_same(db: Path, tmp_path: Path) -> None:
    app = delta_graph(turns=11).compile(checkpointer=langgraph_sqlite(db))
    config = {"configurable": {"thread_id": "delta"}}
    app.invoke({"messages": [lc.HumanMessage(content="hi")], "turn": 0}, config)

    history = assert_same_history(app, config, open_ours(db, tmp_path))
    assert len(history[0].messages) == 12
    assert history[0].messages[-1].content == "turn 10 ✓"


class Odd(TypedDict):
    when: dt.datetime
    day: dt.date
    span: dt.timedelta
    price: Decimal
    ident: uuid.UUID
    raw: bytes
    tags: set[str]
    big: str
    text: str
    nested: dict[str, Any]


ODD_VALUES: dict[str, Any] = {
    "when": dt.datetime(
        2024, 3, 31, 1, 30, tzinfo=dt.timezone(dt.timedelta(hours=5.5))
    ),
    "day": dt.date(1999, 12, 31),
    "span": dt.timedelta(days=2, seconds=7, microseconds=3),
    "price": Decimal("12345.678900"),
    "ident": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "raw": bytes(range(256)),
    "tags": {"α", "β", "🚀"},  # noqa: RUF001
    "big": "x" * (1 << 20),
    "text": "Grüße 👋🏽 — 日本語テキスト, עברית, 🇯🇵",
    "nested": {"zoned": dt.datetime(2020, 1, 1, tzinfo=dt.UTC), "n": [Decimal("1.5")]},
}


def test_unusual_values_read_the_same(db: Path, tmp_path: Path) -> None:
    def fill(state: Odd) -> dict[str, Any]:
        return ODD_VALUES

    graph = StateGraph(Odd)
    graph.add_node("fill", fill)
    graph.add_edge(START, "fill")
    graph.add_edge("fill", END)
    app = graph.compile(checkpointer=langgraph_sqlite(db))
    config = {"configurable": {"thread_id": "odd ✓ ünïcode"}}
    app.invoke({"text": "start"}, config)

    final = assert_same_history(app, config, open_ours(db, tmp_path))[0]
    assert final.values == ODD_VALUES
    assert final.values["when"].utcoffset() == dt.timedelta(hours=5, minutes=30)


# -- the other direction: our runtime's threads read by LangGraph ----------------------


def refund_agent(saver: Any) -> Any:
    from agentmatic import Agent, AIMessage, ToolCall
    from agentmatic.llms.offline import ScriptedModel

    def lookup_order(order_id: str) -> dict[str, Any]:
        """Look an order up."""
        return {"order_id": order_id, "total": 250}

    def transfer_funds(to: str, amount: float) -> str:
        """Send money."""
        return f"sent {amount} to {to}"

    model = ScriptedModel(
        [
            AIMessage(
                content="Looking it up.",
                tool_calls=[ToolCall("lookup_order", {"order_id": "A-1"}, "call_1")],
            ),
            AIMessage(
                content="Refunding ✓",
                tool_calls=[
                    ToolCall(
                        "transfer_funds", {"to": "acct-7", "amount": 250}, "call_2"
                    )
                ],
            ),
            "Done: refunded 250.",
        ]
    )
    return (
        Agent.builder("refunds")
        .llm(model)
        .tools([lookup_order, transfer_funds])
        .checkpoint(saver)
        .interrupt_before(["transfer_funds"])
        .build()
    )


class OurState(TypedDict):
    messages: Annotated[list, DeltaChannel(_append_messages, snapshot_frequency=100)]


def reader_graph() -> Any:
    """A LangGraph graph shaped like our agent, used only to read its threads."""

    def unused(state: OurState) -> dict[str, Any]:
        raise AssertionError("the reader graph never runs")

    graph = StateGraph(OurState)
    for name in ("agent", "lookup_order", "transfer_funds"):
        graph.add_node(name, unused)
    graph.add_edge(START, "agent")
    return graph


def test_langgraph_reads_a_thread_our_runtime_wrote(tmp_path: Path) -> None:
    db = tmp_path / "ours.sqlite"
    saver = SQLiteSaver(db)
    agent = refund_agent(saver)
    config = {"configurable": {"thread_id": "refund-7"}}
    paused = agent.invoke(
        {"messages": [("user", "Refund order A-1 please 🙏")]}, config
    )
    assert paused.next == ("transfer_funds",)

    theirs = langgraph_sqlite(db)
    reader = reader_graph().compile(checkpointer=theirs)
    lg_state = reader.get_state(config)
    assert lg_state.config["configurable"]["checkpoint_id"] == paused.checkpoint_id
    assert all(isinstance(m, lc.BaseMessage) for m in lg_state.values["messages"])
    assert normal(lg_state.values["messages"]) == normal(paused.messages)
    last = lg_state.values["messages"][-1]
    assert isinstance(last, lc.AIMessage)
    assert last.tool_calls == [
        {
            "name": "transfer_funds",
            "args": {"to": "acct-7", "amount": 250},
            "id": "call_2",
            "type": "tool_call",
        }
    ]

    final = agent.approve(config, actor="ops@example.com")
    assert final.next == ()
    lg_final = reader.get_state(config)
    assert normal(lg_final.values["messages"]) == normal(final.messages)
    assert [type(m).__name__ for m in lg_final.values["messages"]] == [
        "HumanMessage",
        "AIMessage",
        "ToolMessage",
        "AIMessage",
        "ToolMessage",
        "AIMessage",
    ]
    # Every checkpoint LangGraph's own saver lists rebuilds to our values.
    for ours in agent.get_state_history(config):
        tup = theirs.get_tuple(ours.config)
        assert tup is not None
        assert tup.metadata["step"] == ours.step
        state = reader.get_state(ours.config)
        assert normal(state.values.get("messages", [])) == normal(ours.messages)


# -- LangGraph graphs running on our savers --------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
def our_checkpointer(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "memory":
        yield LangGraphSaver(MemorySaver())
        return
    saver = SQLiteSaver(tmp_path / "run.sqlite")
    yield LangGraphSaver(saver)
    saver.close()


def run_both(graph: StateGraph, checkpointer: Any, steps: list[Any]) -> tuple[Any, Any]:
    """Run the same inputs on LangGraph's saver and ours; return both apps."""
    theirs = graph.compile(checkpointer=InMemorySaver())
    ours = graph.compile(checkpointer=checkpointer)
    for app in (theirs, ours):
        config = {"configurable": {"thread_id": "run"}}
        for step in steps:
            app.invoke(step, config)
    return theirs, ours


def test_a_langgraph_graph_with_an_interrupt_runs_on_our_savers(
    our_checkpointer: Any,
) -> None:
    theirs, ours = run_both(
        approval_graph(),
        our_checkpointer,
        [
            {"messages": [lc.HumanMessage(content="refund 40")], "amount": 40},
            Command(resume="approved"),
        ],
    )
    config = {"configurable": {"thread_id": "run"}}
    expected, got = theirs.get_state(config), ours.get_state(config)
    assert got.next == () == expected.next
    assert normal(got.values, ids=False) == normal(expected.values, ids=False)
    assert all(isinstance(m, lc.BaseMessage) for m in got.values["messages"])
    assert len(list(ours.get_state_history(config))) == len(
        list(theirs.get_state_history(config))
    )


def test_a_delta_channel_graph_runs_on_our_savers(our_checkpointer: Any) -> None:
    theirs, ours = run_both(
        delta_graph(turns=9),
        our_checkpointer,
        [{"messages": [lc.HumanMessage(content="go")], "turn": 0}],
    )
    config = {"configurable": {"thread_id": "run"}}
    got = ours.get_state(config).values
    assert normal(got, ids=False) == normal(theirs.get_state(config).values, ids=False)
    assert len(got["messages"]) == 10
    for lg_state, state in zip(
        theirs.get_state_history(config), ours.get_state_history(config), strict=True
    ):
        assert normal(state.values, ids=False) == normal(lg_state.values, ids=False)


def test_a_send_fan_out_graph_runs_on_our_savers(our_checkpointer: Any) -> None:
    def worker(arg: dict[str, Any]) -> dict[str, Any]:
        return {"results": [arg["topic"] * 2]}

    graph = StateGraph(Fanout)
    graph.add_node("worker", worker)
    graph.add_conditional_edges(
        START, lambda s: [Send("worker", {"topic": t}) for t in s["topics"]], ["worker"]
    )
    graph.add_edge("worker", END)
    theirs, ours = run_both(
        graph, our_checkpointer, [{"topics": ["a", "b", "c"], "results": []}]
    )
    config = {"configurable": {"thread_id": "run"}}
    assert sorted(ours.get_state(config).values["results"]) == ["aa", "bb", "cc"]
    assert ours.get_state(config).values == theirs.get_state(config).values


async def test_a_langgraph_graph_runs_async_on_our_savers(
    our_checkpointer: Any,
) -> None:
    app = approval_graph().compile(checkpointer=our_checkpointer)
    config = {"configurable": {"thread_id": "async"}}
    await app.ainvoke({"messages": [("user", "refund 9")], "amount": 9}, config)
    paused = await app.aget_state(config)
    assert paused.next == ("approve",)
    await app.ainvoke(Command(resume="ok"), config)
    final = await app.aget_state(config)
    assert final.values["answer"] == "ok"
    assert [m.type for m in final.values["messages"]] == ["human", "ai", "tool"]
