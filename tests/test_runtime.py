"""The runtime and the agent API on the in-memory saver."""

from __future__ import annotations

import asyncio
import threading

import pytest

from agentmatic import Agent, AIMessage, HumanMessage, ToolCall, ToolMessage
from agentmatic.checkpoint import MemorySaver
from agentmatic.checkpoint.base import ERROR
from agentmatic.errors import (
    AgentChanged,
    InvalidToolArguments,
    ModelError,
    StaleDecision,
    ThreadConflict,
    ThreadExists,
)


class RefundScript:
    """A tiny model: proposes the amount named in the last human message."""

    identity = "test-refunds"

    def __init__(self) -> None:
        self.calls = 0
        self.fail_next = 0

    def generate(self, messages, tools):
        self.calls += 1
        if self.fail_next:
            self.fail_next -= 1
            raise ModelError("upstream 503")
        last = messages[-1]
        if isinstance(last, HumanMessage):
            words = [w.strip("$.,") for w in last.text.split()]
            amounts = [float(w) for w in words if w.replace(".", "", 1).isdigit()]
            if not amounts:
                return AIMessage(content="Which amount?")
            return AIMessage(
                content="",
                tool_calls=[
                    ToolCall(
                        name="transfer_funds",
                        args={"to": "acct-7", "amount": amounts[-1]},
                        id=f"call-{len(messages)}-{i}",
                    )
                    for i, _ in enumerate(amounts[-1:])
                ],
            )
        if isinstance(last, ToolMessage):
            return AIMessage(content=f"Done: {last.content}")
        return AIMessage(content="ok")


class Bank:
    def __init__(self) -> None:
        self.sent: list[tuple[str, float, str]] = []

    def transfer_funds(self):
        bank = self

        def transfer_funds(to: str, amount: float, idempotency_key: str = "") -> str:
            """Send a refund.

            Args:
                to: the account to pay
                amount: how much, in dollars
            """
            bank.sent.append((to, amount, idempotency_key))
            return f"sent {amount:.2f} to {to}"

        return transfer_funds


def read_account(account: str) -> dict:
    """Look up an account."""
    return {"account": account, "balance": 1000}


def build(saver=None, model=None, bank=None, **gates):
    bank = bank or Bank()
    builder = (
        Agent.builder("payments")
        .llm(model or RefundScript())
        .tools([read_account, bank.transfer_funds()])
        .checkpoint(saver or MemorySaver())
    )
    if gates.get("always"):
        builder = builder.interrupt_before(["transfer_funds"])
    else:
        builder = builder.interrupt_before_when(
            tool="transfer_funds", predicate=lambda args: args["amount"] >= 100
        )
    return builder.build(), bank


def cfg(thread_id: str, checkpoint_id: str | None = None) -> dict:
    conf = {"thread_id": thread_id}
    if checkpoint_id:
        conf["checkpoint_id"] = checkpoint_id
    return {"configurable": conf}


def ask(agent, thread_id: str, text: str):
    return agent.invoke({"messages": [HumanMessage(text)]}, cfg(thread_id))


def test_a_small_refund_goes_through_without_approval():
    agent, bank = build()
    state = ask(agent, "t1", "Refund $40")
    assert state.next == ()
    assert bank.sent == [("acct-7", 40.0, "t1:call-1-0")]
    assert state.values["messages"][-1].text == "Done: sent 40.00 to acct-7"


def test_a_large_refund_waits_for_approval():
    agent, bank = build()
    state = ask(agent, "t1", "Refund order #42 for $250.")
    assert state.next == ("transfer_funds",)
    assert state.next_tool_call.args == {"to": "acct-7", "amount": 250.0}
    assert bank.sent == []
    assert state.interrupts[0].value["tool_call_id"] == state.next_tool_call.id


def test_resuming_with_none_runs_the_waiting_call():
    agent, bank = build()
    ask(agent, "t1", "Refund $250")
    state = asyncio.run(agent.ainvoke(None, config=cfg("t1")))
    assert state.next == ()
    assert [s[1] for s in bank.sent] == [250.0]


def test_a_fresh_agent_on_the_same_saver_resumes_the_thread():
    saver = MemorySaver()
    first, bank = build(saver)
    ask(first, "t1", "Refund $250")
    second, _ = build(saver, bank=bank)
    state = second.invoke(None, cfg("t1"))
    assert state.next == ()
    assert len(bank.sent) == 1


def test_every_superstep_writes_one_checkpoint():
    agent, _ = build()
    ask(agent, "t1", "Refund $40")
    history = agent.get_state_history(thread_id="t1")
    assert [s.metadata["source"] for s in history] == ["loop"] * 4 + ["input"]
    assert [s.metadata["step"] for s in history] == [3, 2, 1, 0, -1]
    first = history[-1].metadata
    assert first["agent"] == "payments"
    assert first["started_by"] == "system"
    assert len(first["agent_version"]) == 16


def test_history_is_newest_first_with_limit_and_before():
    agent, _ = build()
    ask(agent, "t1", "Refund $40")
    history = agent.get_state_history(thread_id="t1")
    ids = [s.checkpoint_id for s in history]
    assert ids == sorted(ids, reverse=True)
    assert [
        s.checkpoint_id for s in agent.get_state_history(thread_id="t1", limit=2)
    ] == ids[:2]
    older = agent.get_state_history(thread_id="t1", before=ids[1])
    assert [s.checkpoint_id for s in older] == ids[2:]


def test_reject_tells_the_model_who_refused_and_why():
    agent, bank = build()
    ask(agent, "t1", "Refund $250")
    state = agent.reject(cfg("t1"), reason="customer is not eligible", actor="ops-1")
    assert bank.sent == []
    tool_msg = next(m for m in state.values["messages"] if isinstance(m, ToolMessage))
    assert "rejected" in tool_msg.text and "customer is not eligible" in tool_msg.text
    assert tool_msg.status == "error"
    decided = agent.get_state_history(thread_id="t1")[1].metadata
    assert decided["actor"] == "ops-1"
    assert decided["decisions"][0]["kind"] == "reject"


def test_modify_runs_the_call_with_new_arguments():
    agent, bank = build()
    ask(agent, "t1", "Refund $250")
    state = agent.modify(cfg("t1"), args={"to": "acct-7", "amount": "245"}, actor="ops")
    assert state.next == ()
    assert bank.sent[0][1] == 245.0


def test_modify_with_a_bad_argument_names_the_field():
    agent, _bank = build()
    ask(agent, "t1", "Refund $250")
    with pytest.raises(InvalidToolArguments) as err:
        agent.modify(cfg("t1"), args={"to": "acct-7", "amount": "lots"}, actor="ops")
    assert err.value.field == "amount"
    assert agent.get_state(cfg("t1")).next == ("transfer_funds",)


def test_a_message_while_a_call_waits_answers_the_call_and_reproposes():
    agent, bank = build()
    ask(agent, "t1", "Refund $250")
    config = agent.update_state(
        cfg("t1"), {"messages": [HumanMessage("Approved, but amount should be 245.")]}
    )
    assert config["configurable"]["checkpoint_id"]
    state = agent.invoke(None, cfg("t1"))
    assert state.next == ("transfer_funds",)
    assert state.next_tool_call.args["amount"] == 245.0
    kinds = [type(m).__name__ for m in state.values["messages"]]
    assert kinds == [
        "HumanMessage",
        "AIMessage",
        "ToolMessage",
        "HumanMessage",
        "AIMessage",
    ]
    assert bank.sent == []


def test_update_state_can_be_awaited():
    agent, _ = build()
    ask(agent, "t1", "Refund $250")

    async def go():
        return await agent.update_state(cfg("t1"), {"messages": [HumanMessage("hi")]})

    config = asyncio.run(go())
    assert config["configurable"]["thread_id"] == "t1"


def test_sync_methods_work_inside_a_running_event_loop():
    agent, bank = build()

    async def notebook_cell():
        return ask(agent, "t1", "Refund $40")

    state = asyncio.run(notebook_cell())
    assert state.next == () and len(bank.sent) == 1


def test_an_old_approval_is_never_reused():
    agent, bank = build()
    paused = ask(agent, "t1", "Refund $250")
    agent.invoke(None, cfg("t1"))
    with pytest.raises(StaleDecision):
        agent.approve(cfg("t1", paused.checkpoint_id), actor="ops")
    assert len(bank.sent) == 1


def test_replay_from_an_older_checkpoint_fires_the_gate_again():
    agent, bank = build()
    paused = ask(agent, "t1", "Refund $250")
    agent.invoke(None, cfg("t1"))
    state = agent.invoke(None, cfg("t1", paused.checkpoint_id))
    assert state.next == ("transfer_funds",)
    assert state.metadata["source"] == "fork"
    assert len(bank.sent) == 1


def test_fork_leaves_the_source_thread_untouched():
    agent, bank = build()
    ask(agent, "a", "Refund $40")
    before = [
        (s.checkpoint_id, len(s.values.get("messages", [])))
        for s in agent.get_state_history(thread_id="a")
    ]
    early = agent.get_state_history(thread_id="a")[3]
    state = agent.invoke(
        {"messages": [HumanMessage("Actually refund $30")]},
        cfg("b", early.checkpoint_id),
    )
    assert state.next == ()
    after = [
        (s.checkpoint_id, len(s.values.get("messages", [])))
        for s in agent.get_state_history(thread_id="a")
    ]
    assert after == before
    root = agent.get_state_history(thread_id="b")[-1]
    assert root.metadata["forked_from"] == {
        "thread_id": "a",
        "checkpoint_id": early.checkpoint_id,
    }
    assert [s[1] for s in bank.sent] == [40.0, 30.0]


def test_forking_into_an_existing_thread_is_an_error():
    agent, _ = build()
    ask(agent, "a", "Refund $40")
    ask(agent, "b", "Refund $30")
    early = agent.get_state_history(thread_id="a")[-1]
    with pytest.raises(ThreadExists):
        agent.invoke(None, cfg("b", early.checkpoint_id))


class ParallelModel(RefundScript):
    def generate(self, messages, tools):
        last = messages[-1]
        if isinstance(last, HumanMessage):
            return AIMessage(
                content="",
                tool_calls=[
                    ToolCall(name="slow_a", args={"n": 1}, id="a1"),
                    ToolCall(name="slow_b", args={"n": 2}, id="b1"),
                ],
            )
        return AIMessage(content="both done")


def test_parallel_tool_calls_run_at_the_same_time():
    barrier = threading.Barrier(2, timeout=10)

    def slow_a(n: int) -> int:
        """A."""
        barrier.wait()
        return n

    def slow_b(n: int) -> int:
        """B."""
        barrier.wait()
        return n

    agent = Agent.builder("p").llm(ParallelModel()).tools([slow_a, slow_b]).build()
    state = ask(agent, "t", "go")
    assert state.values["messages"][-1].text == "both done"
    tool_steps = [
        s
        for s in agent.get_state_history(thread_id="t")
        if set(s.metadata.get("writes", {})) == {"slow_a", "slow_b"}
    ]
    assert len(tool_steps) == 1


def test_a_tool_that_raises_becomes_a_message_for_the_model():
    def transfer_funds(to: str, amount: float) -> str:
        """Send money."""
        raise RuntimeError("bank is closed")

    agent = Agent.builder("p").llm(RefundScript()).tools([transfer_funds]).build()
    state = ask(agent, "t", "Refund $20")
    tool_msg = state.values["messages"][2]
    assert tool_msg.status == "error"
    assert "RuntimeError: bank is closed" in tool_msg.text
    assert state.next == ()


def test_a_model_error_fails_the_run_and_can_be_resumed():
    model = RefundScript()
    agent, bank = build(model=model)
    model.fail_next = 1
    with pytest.raises(ModelError):
        ask(agent, "t", "Refund $40")
    head = agent.saver.get_tuple(cfg("t"))
    assert any(ch == ERROR for _t, ch, _v in head.pending_writes)
    state = agent.invoke(None, cfg("t"))
    assert state.next == () and len(bank.sent) == 1


class CrashingSaver(MemorySaver):
    """Fails the first checkpoint write after a tool task saved its writes."""

    def __init__(self):
        super().__init__()
        self.armed = False
        self.fired = False

    def put_writes(self, config, writes, task_id, task_path=""):
        super().put_writes(config, writes, task_id, task_path)
        tool_result = any(ch == "messages" for ch, _ in writes)
        if tool_result and task_path.count(".") == 1 and not self.fired:
            self.armed = True

    def put(self, config, checkpoint, metadata, new_versions, **kw):
        if self.armed:
            self.armed, self.fired = False, True
            raise ConnectionError("power cut")
        return super().put(config, checkpoint, metadata, new_versions, **kw)


def test_a_crash_after_a_tool_succeeded_does_not_run_it_twice():
    saver = CrashingSaver()
    agent, bank = build(saver)
    ask(agent, "t", "Refund $250")
    with pytest.raises(ConnectionError):
        agent.invoke(None, cfg("t"))
    assert len(bank.sent) == 1
    state = agent.invoke(None, cfg("t"))
    assert state.next == ()
    assert len(bank.sent) == 1


def test_a_write_that_does_not_continue_the_newest_checkpoint_is_refused():
    agent, _ = build()
    ask(agent, "t", "Refund $40")
    history = agent.get_state_history(thread_id="t")
    saver = agent.saver
    old = saver.get_tuple(cfg("t", history[2].checkpoint_id))
    with pytest.raises(ThreadConflict):
        saver.put(
            old.config,
            dict(old.checkpoint, id="1" * 8 + old.checkpoint["id"][8:]),
            {},
            {},
            expected_head=old.checkpoint["id"],
        )


def test_two_resumes_at_once_give_one_execution():
    gate = threading.Event()
    bank_calls = []

    def transfer_funds(to: str, amount: float) -> str:
        """Send money."""
        bank_calls.append(amount)
        gate.wait(5)
        return "ok"

    saver = MemorySaver()
    agent = (
        Agent.builder("p")
        .llm(RefundScript())
        .tools([transfer_funds])
        .checkpoint(saver)
        .interrupt_before(["transfer_funds"])
        .build()
    )
    ask(agent, "t", "Refund $250")
    outcomes = []

    def resume():
        try:
            agent.invoke(None, cfg("t"))
            outcomes.append("ran")
        except ThreadConflict:
            outcomes.append("conflict")
            gate.set()

    threads = [threading.Thread(target=resume) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(outcomes) == ["conflict", "ran"]
    assert bank_calls == [250.0]


class TwoCallModel(RefundScript):
    def generate(self, messages, tools):
        last = messages[-1]
        if isinstance(last, HumanMessage):
            return AIMessage(
                content="",
                tool_calls=[
                    ToolCall(
                        name="transfer_funds", args={"to": "a", "amount": 300}, id="c1"
                    ),
                    ToolCall(
                        name="transfer_funds", args={"to": "b", "amount": 500}, id="c2"
                    ),
                    ToolCall(name="read_account", args={"account": "a"}, id="c3"),
                ],
            )
        return AIMessage(content="all answered")


def test_each_of_several_gated_calls_is_decided_on_its_own():
    agent, bank = build(model=TwoCallModel())
    state = ask(agent, "t", "two refunds")
    assert [c.id for c in state.pending_tool_calls] == ["c1", "c2", "c3"]
    assert [i.value["tool_call_id"] for i in state.interrupts] == ["c1", "c2"]
    assert state.next_tool_call.id == "c1"
    with pytest.raises(Exception, match="pass tool_call_id"):
        agent.approve(cfg("t"), actor="ops")
    state = agent.approve(cfg("t"), actor="ops", tool_call_id="c2")
    assert (
        state.next == ("transfer_funds", "read_account")
        or "transfer_funds" in state.next
    )
    assert bank.sent == []
    state = agent.reject(cfg("t"), reason="duplicate", actor="ops2", tool_call_id="c1")
    assert state.next == ()
    assert [(s[0], s[1]) for s in bank.sent] == [("b", 500.0)]
    answered = {
        m.tool_call_id for m in state.values["messages"] if isinstance(m, ToolMessage)
    }
    assert answered == {"c1", "c2", "c3"}


def test_a_second_decision_on_one_call_is_refused():
    agent, _ = build(model=TwoCallModel())
    ask(agent, "t", "two refunds")
    agent.approve(cfg("t"), actor="ops", tool_call_id="c2")
    with pytest.raises(StaleDecision, match="already decided"):
        agent.reject(cfg("t"), reason="no", actor="ops2", tool_call_id="c2")


def test_a_tool_in_both_lists_always_pauses():
    agent = (
        Agent.builder("p")
        .llm(RefundScript())
        .tools([Bank().transfer_funds()])
        .interrupt_before(["transfer_funds"])
        .interrupt_before_when(tool="transfer_funds", predicate=lambda a: False)
        .build()
    )
    assert ask(agent, "t", "Refund $5").next == ("transfer_funds",)


def test_a_predicate_that_raises_pauses_the_call():
    def boom(args):
        raise KeyError("currency")

    agent = (
        Agent.builder("p")
        .llm(RefundScript())
        .tools([Bank().transfer_funds()])
        .interrupt_before_when(tool="transfer_funds", predicate=boom)
        .build()
    )
    state = ask(agent, "t", "Refund $5")
    assert state.next == ("transfer_funds",)
    assert "KeyError" in state.interrupts[0].value["reason"]


def test_gates_see_coerced_arguments_and_invalid_ones_pause():
    seen = []

    class StringAmounts(RefundScript):
        def generate(self, messages, tools):
            if isinstance(messages[-1], HumanMessage):
                amount = messages[-1].text.split()[-1]
                return AIMessage(
                    content="",
                    tool_calls=[
                        ToolCall(
                            name="transfer_funds",
                            args={"to": "x", "amount": amount},
                            id="c",
                        )
                    ],
                )
            return AIMessage(content="done")

    def predicate(args):
        seen.append(args["amount"])
        return args["amount"] >= 100

    agent = (
        Agent.builder("p")
        .llm(StringAmounts())
        .tools([Bank().transfer_funds()])
        .interrupt_before_when(tool="transfer_funds", predicate=predicate)
        .build()
    )
    assert ask(agent, "t1", "refund 20").next == ()
    assert seen == [20.0]
    state = ask(agent, "t2", "refund twenty")
    assert state.next == ("transfer_funds",)
    assert "validation" in state.interrupts[0].value["reason"]


def test_the_idempotency_key_is_hidden_from_the_model():
    agent, _ = build()
    spec = agent.tools["transfer_funds"].spec
    assert set(spec["parameters"]["properties"]) == {"to", "amount"}
    assert (
        spec["parameters"]["properties"]["amount"]["description"]
        == "how much, in dollars"
    )
    assert spec["description"] == "Send a refund."


def test_resuming_with_a_tool_that_no_longer_exists_names_it():
    saver = MemorySaver()
    agent, _ = build(saver)
    ask(agent, "t", "Refund $250")
    changed = (
        Agent.builder("payments")
        .llm(RefundScript())
        .tools([read_account])
        .checkpoint(saver)
        .build()
    )
    with pytest.raises(AgentChanged, match="transfer_funds"):
        changed.invoke(None, cfg("t"))


def test_resuming_with_an_incompatible_schema_names_the_change():
    saver = MemorySaver()
    agent, _ = build(saver)
    ask(agent, "t", "Refund $250")

    def transfer_funds(iban: str, amount: float) -> str:
        """Send money."""
        return "ok"

    changed = (
        Agent.builder("payments")
        .llm(RefundScript())
        .tools([transfer_funds])
        .checkpoint(saver)
        .build()
    )
    with pytest.raises(AgentChanged, match="schema"):
        changed.invoke(None, cfg("t"))


def test_saver_reads_a_thread_without_the_agent():
    agent, _ = build()
    ask(agent, "t", "Refund $250")
    state = agent.saver.get_state("t")
    assert state.next == ("transfer_funds",)
    assert state.next_tool_call.args["amount"] == 250.0
    light = agent.saver.get_state_history("t", values=False)
    assert light[0].values == {}
    assert light[0].pending_tool_calls[0].id == state.next_tool_call.id
    page = agent.saver.list_threads()
    assert [t.thread_id for t in page.threads] == ["t"]
    assert page.threads[0].agent == "payments"
