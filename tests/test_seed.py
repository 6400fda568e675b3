"""Every snippet of the seed runs as written, with `OpenAI()` over HTTP.

`OpenAI()` talks to the OpenAI-compatible server the `fake_openai` fixture
starts on 127.0.0.1; that server refuses a conversation with an unanswered
tool call, as the real API does. Snippets that need the Postgres, Redis or
S3 backends are run in tests/test_seed_backends.py.
"""

from __future__ import annotations

import pytest

from agentmatic import Agent, HumanMessage
from agentmatic.checkpoint import MemorySaver
from agentmatic.llms import OpenAI
from tests import seed


def read_account(order: str) -> dict:
    """Look up the account that paid for an order.

    Args:
        order: the order number, like "#42"
    """
    return {"order": order, "account": "acct-7f3a", "paid": 250}


SENT: list[tuple[str, float, str]] = []


def transfer_funds(to: str, amount: float, idempotency_key: str) -> str:
    """Send a refund to an account.

    Args:
        to: the account id to pay
        amount: the amount in dollars
    """
    SENT.append((to, amount, idempotency_key))
    return f"Refund of ${amount:.2f} sent to {to}."


@pytest.fixture(params=["memory", "sqlite"])
def saver(request, tmp_path):
    if request.param == "memory":
        return MemorySaver()
    from agentmatic.checkpoint import SQLiteSaver

    return SQLiteSaver(str(tmp_path / "agent.sqlite"))


@pytest.fixture(autouse=True)
def _clear_sent():
    SENT.clear()


def namespace(**extra):
    ns = {
        "Agent": Agent,
        "HumanMessage": HumanMessage,
        "OpenAI": OpenAI,
        "read_account": read_account,
        "transfer_funds": transfer_funds,
        "print": lambda *a, **k: None,
    }
    ns.update(extra)
    return ns


def build(saver):
    return (
        Agent.builder("payments")
        .llm(OpenAI())
        .tools([read_account, transfer_funds])
        .checkpoint(saver)
        .interrupt_before(["transfer_funds"])
        .build()
    )


@pytest.mark.parametrize("name", list(seed.SNIPPETS))
def test_each_snippet_is_copied_from_the_seed_as_written(name):
    assert seed.snippet_is_in_seed(seed.SNIPPETS[name])


async def test_the_conditional_interrupt_lets_small_refunds_through(fake_openai, saver):
    builder = (
        Agent.builder("payments")
        .llm(OpenAI())
        .tools([read_account, transfer_funds])
        .checkpoint(saver)
    )
    ns = namespace(builder=builder)
    await seed.run_snippet("agent = (builder" + seed.CONDITIONAL + ".build())", ns)
    agent = ns["agent"]
    small = await agent.ainvoke(
        {"messages": [HumanMessage("Refund order #41 for $40.")]},
        config={"configurable": {"thread_id": "case-41"}},
    )
    assert small.next == ()
    assert [s[1] for s in SENT] == [40.0]
    big = await agent.ainvoke(
        {"messages": [HumanMessage("Refund order #42 for $250.")]},
        config={"configurable": {"thread_id": "case-42"}},
    )
    assert big.next == ("transfer_funds",)
    assert [s[1] for s in SENT] == [40.0]


async def test_the_hitl_flow_pauses_and_resumes(fake_openai, saver):
    agent = build(saver)
    state = await agent.ainvoke(
        {"messages": [HumanMessage("Refund order #42 for $250.")]},
        config={"configurable": {"thread_id": "case-42"}},
    )
    assert state.next == ("transfer_funds",)
    resumed = build(saver)
    await resumed.ainvoke(None, config={"configurable": {"thread_id": "case-42"}})
    assert [s[1] for s in SENT] == [250.0]
    assert SENT[0][2] == f"case-42:{state.next_tool_call.id}"


async def test_the_modify_snippet_reproposes_the_changed_amount(fake_openai, saver):
    agent = build(saver)
    await agent.ainvoke(
        {"messages": [HumanMessage("Refund order #42 for $250.")]},
        config={"configurable": {"thread_id": "case-42"}},
    )
    printed = []
    ns = namespace(agent=agent, print=lambda *a: printed.append(a))
    await seed.run_snippet(seed.MODIFY, ns)
    assert printed[0][0]["amount"] == 250
    state = await agent.aget_state({"configurable": {"thread_id": "case-42"}})
    assert state.next == ("transfer_funds",)
    assert state.next_tool_call.args["amount"] == 245
    assert SENT == []
    # Every request the server saw had each tool call answered.
    assert all(r.status == 200 for r in fake_openai.requests)


async def test_the_time_travel_snippet_branches_inside_the_thread(fake_openai, saver):
    agent = build(saver)
    config = {"configurable": {"thread_id": "run-42"}}
    await agent.ainvoke(
        {"messages": [HumanMessage("Refund order #42 for $250.")]}, config
    )
    await agent.ainvoke(None, config)
    before = [s.checkpoint_id for s in agent.get_state_history(thread_id="run-42")]
    ns = namespace(agent=agent)
    await seed.run_snippet(seed.TIME_TRAVEL, ns)
    result = ns["result"]
    humans = [m.text for m in result.values["messages"] if m.type == "human"]
    assert humans[-1] == "Try a different approach this time."
    after = agent.get_state_history(thread_id="run-42")
    assert set(before) <= {s.checkpoint_id for s in after}
    branch_root = next(
        s
        for s in after
        if s.checkpoint_id not in before
        and s.parent_checkpoint_id == ns["checkpoint_id"]
    )
    assert branch_root.metadata["source"] == "input"


async def test_the_branching_snippet_starts_thread_b_from_a(fake_openai, saver):
    agent = build(saver)
    config = {"configurable": {"thread_id": "A"}}
    await agent.ainvoke(
        {"messages": [HumanMessage("Refund order #42 for $250.")]}, config
    )
    await agent.ainvoke(None, config)
    a_history = agent.get_state_history(thread_id="A")
    assert len(a_history) > 5
    a_before = [s.checkpoint_id for s in a_history]
    new_input = {"messages": [HumanMessage("Refund order #43 for $30.")]}
    ns = namespace(agent=agent, a_history=a_history, new_input=new_input)
    await seed.run_snippet(seed.BRANCHING, ns)
    b = agent.get_state_history(thread_id="branch-B")
    assert b[-1].metadata["forked_from"]["checkpoint_id"] == a_history[5].checkpoint_id
    assert [s.checkpoint_id for s in agent.get_state_history(thread_id="A")] == a_before
