"""Attacks on the library: HITL races, crashes, hostile values, readers, adapters.

Each test is an attack that once found a defect or that the library held
against; all of them now guard the behaviour they check.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import decimal
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ormsgpack
import pytest

from agentmatic import Agent, AIMessage, HumanMessage, ToolCall, ToolMessage
from agentmatic.checkpoint import MemorySaver, SQLiteSaver
from agentmatic.checkpoint.base import ERROR
from agentmatic.checkpoint.serde import OpaqueValue
from agentmatic.errors import (
    AgentChanged,
    AgentmaticError,
    CheckpointNotFound,
    DisallowedType,
    InvalidToolArguments,
    ModelError,
    SerializationError,
    StaleDecision,
    ThreadConflict,
    ThreadExists,
    ThreadNotFound,
)
from agentmatic.llms import OpenAI
from tests.fake_openai import FAKE_API_KEY, FakeOpenAI

ROOT = Path(__file__).resolve().parents[1]

# --- a small world: a refund model, a bank that records payments, an agent -----


class Refunds:
    """Proposes one transfer per amount named in the last human message."""

    identity = "attack-refunds"

    def __init__(self, *, with_lookup: bool = False) -> None:
        self.with_lookup = with_lookup
        self.calls = 0

    def generate(self, messages, tools):
        self.calls += 1
        last = messages[-1]
        if isinstance(last, HumanMessage):
            words = [w.strip("$.,") for w in last.text.split()]
            amounts = [float(w) for w in words if w.replace(".", "", 1).isdigit()]
            if not amounts:
                return AIMessage(content="Which amount?")
            calls = [
                ToolCall(
                    name="transfer_funds",
                    args={"to": f"acct-{i}", "amount": amount},
                    id=f"call-{len(messages)}-{i}",
                )
                for i, amount in enumerate(amounts)
            ]
            if self.with_lookup:
                calls.append(
                    ToolCall(
                        name="read_account",
                        args={"account": "acct-0"},
                        id=f"look-{len(messages)}",
                    )
                )
            return AIMessage(content="", tool_calls=calls)
        if isinstance(last, ToolMessage):
            return AIMessage(content="Done.")
        return AIMessage(content="ok")


class Bank:
    """Records every transfer that really happened."""

    def __init__(self) -> None:
        self.paid: list[tuple[str, float, str]] = []
        self.lock = threading.Lock()

    def transfer_funds(self):
        bank = self

        def transfer_funds(to: str, amount: float, idempotency_key: str = "") -> str:
            """Send a refund.

            Args:
                to: the account to pay
                amount: how much, in dollars
            """
            with bank.lock:
                bank.paid.append((to, amount, idempotency_key))
            return f"sent {amount:.2f} to {to}"

        return transfer_funds


def read_account(account: str) -> dict:
    """Look up an account."""
    return {"account": account, "balance": 1000}


def payments(
    saver,
    bank: Bank | None = None,
    *,
    model=None,
    threshold: float = 100,
    lease: float | None = None,
    tools: list | None = None,
):
    bank = bank or Bank()
    builder = (
        Agent.builder("payments")
        .llm(model or Refunds())
        .tools(tools or [read_account, bank.transfer_funds()])
        .checkpoint(saver)
        .interrupt_before_when(
            tool="transfer_funds", predicate=lambda args: args["amount"] >= threshold
        )
    )
    if lease is not None:
        builder = builder.lease_seconds(lease)
    return builder.build(), bank


def cfg(thread_id: str, checkpoint_id: str | None = None) -> dict:
    conf: dict[str, Any] = {"thread_id": thread_id}
    if checkpoint_id:
        conf["checkpoint_id"] = checkpoint_id
    return {"configurable": conf}


def ask(agent, thread_id: str, text: str):
    return agent.invoke({"messages": [HumanMessage(text)]}, cfg(thread_id))


@pytest.fixture(params=["memory", "sqlite"])
def saver(request, tmp_path):
    if request.param == "memory":
        yield MemorySaver()
        return
    s = SQLiteSaver(tmp_path / "attack.sqlite")
    yield s
    s.close()


# === human in the loop ==========================================================


def test_many_reviewers_deciding_one_call_at_once_give_one_decision(tmp_path):
    path = tmp_path / "a.sqlite"
    bank = Bank()
    agent, _ = payments(SQLiteSaver(path), bank)
    ask(agent, "t", "Refund $250")
    barrier = threading.Barrier(8, timeout=10)
    outcomes: list[str] = []

    def decide(n: int) -> None:
        # Each reviewer is its own process in spirit: its own saver and agent.
        mine, _ = payments(SQLiteSaver(path), bank)
        barrier.wait()
        try:
            if n % 2:
                mine.approve(cfg("t"), actor=f"ops-{n}")
            else:
                mine.reject(cfg("t"), reason="no", actor=f"ops-{n}")
            outcomes.append("won")
        except (StaleDecision, ThreadConflict):
            outcomes.append("lost")

    threads = [threading.Thread(target=decide, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert outcomes.count("won") == 1
    assert len(bank.paid) <= 1
    final = agent.get_state(cfg("t"))
    assert final.next == ()
    answers = [m for m in final.values["messages"] if isinstance(m, ToolMessage)]
    assert len(answers) == 1


def test_two_reviewers_deciding_sibling_calls_at_once_leave_the_run_finished():
    saver = MemorySaver()
    bank = Bank()
    agent, _ = payments(saver, bank)
    paused = ask(agent, "t", "Refund $300 and $500")
    ids = [c.id for c in paused.pending_tool_calls]
    assert len(ids) == 2
    # Both reviewers see the step complete and resume it; one resume may end
    # before the other begins (a legal interleaving), forced here by a lock.
    one_at_a_time = threading.Lock()
    real_invoke = agent.invoke

    def serial_invoke(*args, **kwargs):
        with one_at_a_time:
            return real_invoke(*args, **kwargs)

    agent.invoke = serial_invoke  # type: ignore[method-assign]
    errors: list[BaseException] = []

    def approve(call_id: str) -> None:
        try:
            agent.approve(cfg("t"), actor=f"ops-{call_id}", tool_call_id=call_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=approve, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert errors == []
    assert sorted(p[1] for p in bank.paid) == [300.0, 500.0]
    final = agent.get_state(cfg("t"))
    # The calls were paid; they must not be waiting for approval again.
    assert final.next == ()
    assert final.pending_tool_calls == ()


def test_an_approval_racing_a_plain_resume_never_pays_twice():
    saver = MemorySaver()
    bank = Bank()
    reviewer, _ = payments(saver, bank)
    worker, _ = payments(saver, bank)
    ask(reviewer, "t", "Refund $250")
    real_record = reviewer.record_decision

    def record_then_worker_resumes(*args, **kwargs):
        result = real_record(*args, **kwargs)
        # The seed's "different process resumes after approval" runs now.
        worker.invoke(None, cfg("t"))
        return result

    reviewer.record_decision = record_then_worker_resumes  # type: ignore[method-assign]
    reviewer.approve(cfg("t"), actor="ops")
    assert len(bank.paid) == 1
    state = worker.get_state(cfg("t"))
    if state.next:
        # A second reviewer sees the call waiting and approves it.
        worker.approve(cfg("t"), actor="ops-2")
    assert len(bank.paid) == 1


def test_a_decision_on_an_older_checkpoint_or_another_branch_is_stale(saver):
    agent, bank = payments(saver)
    paused = ask(agent, "t", "Refund $250")
    # Replay from before the model spoke: a new branch, the gate fires again.
    replayed = agent.invoke(None, cfg("t", paused.parent_checkpoint_id))
    assert replayed.next == ("transfer_funds",)
    assert replayed.checkpoint_id != paused.checkpoint_id
    assert replayed.next_tool_call.id == paused.next_tool_call.id
    with pytest.raises(StaleDecision) as err:
        agent.approve(cfg("t", paused.checkpoint_id), actor="ops")
    assert "'t'" in str(err.value) and paused.checkpoint_id in str(err.value)
    assert bank.paid == []
    # A checkpoint id that does not exist at all is stale too, never a crash.
    with pytest.raises(StaleDecision):
        agent.approve(cfg("t", str(uuid.uuid4())), actor="ops")
    done = agent.approve(cfg("t", replayed.checkpoint_id), actor="ops")
    assert done.next == () and len(bank.paid) == 1


def test_a_decision_naming_an_ungated_sibling_is_refused(saver):
    agent, bank = payments(saver, model=Refunds(with_lookup=True))
    paused = ask(agent, "t", "Refund $250")
    lookup = [c.id for c in paused.pending_tool_calls if c.name == "read_account"]
    with pytest.raises(StaleDecision, match="not waiting"):
        agent.reject(cfg("t"), reason="x", actor="ops", tool_call_id=lookup[0])
    with pytest.raises(StaleDecision, match="not waiting"):
        agent.approve(cfg("t"), actor="ops", tool_call_id="no-such-call")
    assert bank.paid == []
    assert agent.get_state(cfg("t")).next == ("transfer_funds", "read_account")


@pytest.mark.parametrize(
    "args",
    [
        {"to": "acct-0", "amount": 10, "extra": "smuggled"},
        {"to": "acct-0", "amount": 10, "idempotency_key": "attacker-chosen"},
        {"to": {"nested": ["x"]}, "amount": 10},
        {"to": "acct-0", "amount": [10]},
        {"to": "acct-0", "amount": "ten"},
        {"to": "acct-0"},
        {},
        ["acct-0", 10],
    ],
    ids=[
        "extra-key",
        "idempotency-key",
        "nested-dict",
        "list-amount",
        "word-amount",
        "missing-amount",
        "empty",
        "not-a-dict",
    ],
)
def test_a_hostile_modification_is_refused_and_the_call_still_waits(saver, args):
    agent, bank = payments(saver)
    ask(agent, "t", "Refund $250")
    with pytest.raises(InvalidToolArguments):
        agent.modify(cfg("t"), args=args, actor="mallory")
    state = agent.get_state(cfg("t"))
    assert state.next == ("transfer_funds",)
    assert state.decisions == {}
    assert bank.paid == []
    # The refused modification left no decision behind: a real one still works.
    done = agent.approve(cfg("t"), actor="ops")
    assert done.next == () and [p[1] for p in bank.paid] == [250.0]


def test_a_modification_with_a_huge_value_runs_once_with_exactly_that_value(saver):
    agent, bank = payments(saver)
    ask(agent, "t", "Refund $250")
    huge = "acct-" + "9" * 1_000_000
    state = agent.modify(cfg("t"), args={"to": huge, "amount": "99.5"}, actor="ops")
    assert state.next == ()
    assert bank.paid == [(huge, 99.5, bank.paid[0][2])]
    reread = agent.get_state(cfg("t"))
    decided = agent.get_state_history(thread_id="t")[1]
    assert decided.metadata["decisions"][0]["kind"] == "modify"
    assert reread.values["messages"][-1].text == "Done."


def test_modified_arguments_that_trip_a_gate_wait_again(saver):
    bank = Bank()
    agent = (
        Agent.builder("payments")
        .llm(Refunds())
        .tools([bank.transfer_funds()])
        .checkpoint(saver)
        .interrupt_before_when(
            tool="transfer_funds", predicate=lambda a: a["amount"] >= 100
        )
        .interrupt_before_when(
            tool="transfer_funds",
            predicate=lambda a: a["amount"] >= 10_000,
            reason="needs a second approver",
        )
        .build()
    )
    ask(agent, "t", "Refund $250")
    state = agent.modify(
        cfg("t"), args={"to": "acct-0", "amount": 1_000_000}, actor="ops"
    )
    # The issue promises "modified arguments are gated again".
    assert bank.paid == []
    assert state.next == ("transfer_funds",)


@pytest.mark.parametrize("reason", ["", "   ", "\n\t"])
def test_a_rejection_without_a_reason_is_refused_and_records_nothing(saver, reason):
    agent, bank = payments(saver)
    ask(agent, "t", "Refund $250")
    with pytest.raises(ValueError, match="reason"):
        agent.reject(cfg("t"), reason=reason, actor="ops")
    assert agent.get_state(cfg("t")).decisions == {}
    assert bank.paid == []


def test_a_predicate_that_mutates_the_arguments_changes_nothing_that_runs(saver):
    seen: list[Any] = []

    def transfer(to: str, amount: float, meta: dict[str, Any]) -> str:
        """Send money with a memo."""
        seen.append((to, amount, json.loads(json.dumps(meta))))
        return "ok"

    def meddling(args: dict[str, Any]) -> bool:
        args["to"] = "attacker"
        args["amount"] = 1_000_000
        args["meta"]["memo"] = "rewritten"
        args["meta"]["tags"].append("evil")
        return False

    class Memo(Refunds):
        def generate(self, messages, tools):
            if isinstance(messages[-1], HumanMessage):
                return AIMessage(
                    content="",
                    tool_calls=[
                        ToolCall(
                            name="transfer",
                            args={
                                "to": "acct-1",
                                "amount": 5,
                                "meta": {"memo": "refund", "tags": ["a"]},
                            },
                            id="c1",
                        )
                    ],
                )
            return AIMessage(content="Done.")

    agent = (
        Agent.builder("memo")
        .llm(Memo())
        .tools([transfer])
        .checkpoint(saver)
        .interrupt_before_when(tool="transfer", predicate=meddling)
        .build()
    )
    state = ask(agent, "t", "go")
    assert state.next == ()
    assert seen == [("acct-1", 5.0, {"memo": "refund", "tags": ["a"]})]
    proposed = state.values["messages"][1].tool_calls[0].args
    assert proposed == {
        "to": "acct-1",
        "amount": 5,
        "meta": {"memo": "refund", "tags": ["a"]},
    }


class Halt(BaseException):
    """Not an Exception: a predicate that blows up harder than usual."""


def test_a_predicate_raising_a_base_exception_never_runs_the_call_or_locks_the_thread(
    saver,
):
    bank = Bank()
    armed = [True]

    def predicate(args):
        if armed[0]:
            raise Halt("predicate exploded")
        return args["amount"] >= 100

    agent = (
        Agent.builder("p")
        .llm(Refunds())
        .tools([bank.transfer_funds()])
        .checkpoint(saver)
        .interrupt_before_when(tool="transfer_funds", predicate=predicate)
        .build()
    )
    with pytest.raises(Halt):
        ask(agent, "t", "Refund $250")
    assert bank.paid == []
    armed[0] = False
    # The lease was released: the thread resumes at once, and the gate holds.
    state = agent.invoke(None, cfg("t"))
    assert state.next == ("transfer_funds",)
    assert bank.paid == []


def test_a_rejection_stored_before_a_crash_is_honoured_by_the_next_process(tmp_path):
    path = tmp_path / "a.sqlite"
    first, bank = payments(SQLiteSaver(path))
    ask(first, "t", "Refund $250")
    # The reviewer's process records the rejection and dies before resuming.
    _state, complete = first.record_decision(
        cfg("t"), "reject", "ops", reason="fraud suspected"
    )
    assert complete
    second, _ = payments(SQLiteSaver(path), bank)
    state = second.invoke(None, cfg("t"))
    assert bank.paid == []
    tool_msg = next(m for m in state.values["messages"] if isinstance(m, ToolMessage))
    assert "fraud suspected" in tool_msg.text and tool_msg.status == "error"
    assert state.next == ()


class PowerCut(MemorySaver):
    """Loses the checkpoint write of the step that ran transfer_funds."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = True

    def put(self, config, checkpoint, metadata, new_versions, **kw):
        if self.armed and "transfer_funds" in (metadata.get("writes") or {}):
            self.armed = False
            raise ConnectionError("power cut")
        return super().put(config, checkpoint, metadata, new_versions, **kw)


def test_a_gated_call_and_an_ungated_sibling_survive_a_crash_mid_superstep():
    saver = PowerCut()
    lookups: list[str] = []

    def read_account(account: str) -> dict:
        """Look up an account."""
        lookups.append(account)
        return {"account": account}

    bank = Bank()
    agent, _ = payments(
        saver,
        bank,
        model=Refunds(with_lookup=True),
        tools=[read_account, bank.transfer_funds()],
    )
    ask(agent, "t", "Refund $40 and $250")
    with pytest.raises(ConnectionError):
        agent.approve(cfg("t"), actor="ops")
    assert sorted(p[1] for p in bank.paid) == [40.0, 250.0]
    assert lookups == ["acct-0"]
    state = agent.invoke(None, cfg("t"))
    assert state.next == ()
    assert sorted(p[1] for p in bank.paid) == [40.0, 250.0]
    assert lookups == ["acct-0"]


def test_input_after_a_crash_mid_step_never_says_a_paid_call_was_not_made():
    saver = PowerCut()
    agent, bank = payments(saver)
    ask(agent, "t", "Refund $40 and $250")
    with pytest.raises(ConnectionError):
        agent.approve(cfg("t"), actor="ops")
    paid_ids = {p[2].split(":", 1)[1] for p in bank.paid}
    assert len(paid_ids) == 2
    # Instead of resuming, the operator adds a message to the thread.
    state = ask(agent, "t", "Also refund $30")
    lies = [
        m
        for m in state.values["messages"]
        if isinstance(m, ToolMessage)
        and m.tool_call_id in paid_ids
        and m.text.startswith("Not executed")
    ]
    assert lies == []


def test_update_state_on_an_older_checkpoint_while_a_call_waits_never_runs_it(saver):
    agent, bank = payments(saver)
    ask(agent, "t", "Refund $250")
    root = agent.get_state_history(thread_id="t")[-1]
    config = agent.update_state(
        cfg("t", root.checkpoint_id),
        {"messages": [HumanMessage("Never mind, refund $20")]},
        actor="ops",
    )
    head = agent.get_state(cfg("t"))
    assert head.checkpoint_id == config["configurable"]["checkpoint_id"]
    assert head.parent_checkpoint_id == root.checkpoint_id
    # The call that waited belongs to another branch: it cannot be approved.
    with pytest.raises(StaleDecision):
        agent.approve(cfg("t"), actor="ops")
    state = agent.invoke(None, cfg("t"))
    assert state.next == ()
    assert [p[1] for p in bank.paid] == [20.0]


def test_a_value_update_while_a_call_waits_keeps_it_approvable(saver):
    agent, bank = payments(saver)
    ask(agent, "t", "Refund $250")
    agent.update_state(cfg("t"), {"note": "customer called"}, actor="ops")
    state = agent.get_state(cfg("t"))
    assert state.next == ("transfer_funds",)
    assert state.next_tool_call is not None
    done = agent.approve(cfg("t"), actor="ops")
    assert done.next == () and len(bank.paid) == 1


class SlowBank(Bank):
    """A bank whose first transfer blocks until the test lets it finish."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()
        self.release = threading.Event()

    def transfer_funds(self):
        bank = self

        def transfer_funds(to: str, amount: float, idempotency_key: str = "") -> str:
            """Send a refund through a slow bank."""
            with bank.lock:
                bank.paid.append((to, amount, idempotency_key))
                first = len(bank.paid) == 1
            if first:
                bank.started.set()
                bank.release.wait(10)
            return f"sent {amount:.2f} to {to}"

        return transfer_funds


def _resume_in_background(agent, thread_id: str) -> tuple[threading.Thread, list]:
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(agent.invoke(None, cfg(thread_id)))
        except AgentmaticError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    return worker, outcome


def test_a_rejection_while_a_worker_runs_the_call_is_refused_not_silently_ignored(
    saver,
):
    bank = SlowBank()
    agent, _ = payments(saver, bank)
    ask(agent, "t", "Refund $250")
    worker, _outcome = _resume_in_background(agent, "t")  # the seed's resume
    assert bank.started.wait(10)
    try:
        agent.reject(cfg("t"), reason="fraud", actor="ops")
        refused = False
    except (StaleDecision, ThreadConflict):
        refused = True
    finally:
        bank.release.set()
        worker.join(20)
    # Either the reviewer is told the decision came too late, or it held.
    assert refused or bank.paid == []


def test_a_message_while_a_worker_runs_the_call_never_marks_it_not_executed(saver):
    bank = SlowBank()
    agent, _ = payments(saver, bank)
    ask(agent, "t", "Refund $250")
    worker, outcome = _resume_in_background(agent, "t")
    assert bank.started.wait(10)
    try:
        agent.update_state(
            cfg("t"),
            {"messages": [HumanMessage("Approved, but amount should be 245.")]},
        )
    except ThreadConflict:
        pass  # refused while the run holds the thread: fine
    finally:
        bank.release.set()
        worker.join(20)
    state = agent.get_state(cfg("t"))
    paid_ids = {p[2].split(":", 1)[1] for p in bank.paid}
    lies = [
        m
        for m in state.values["messages"]
        if isinstance(m, ToolMessage)
        and m.tool_call_id in paid_ids
        and m.text.startswith("Not executed")
    ]
    assert lies == [], outcome


def test_new_input_while_a_worker_runs_the_call_is_refused_before_it_is_stored(
    saver,
):
    bank = SlowBank()
    agent, _ = payments(saver, bank)
    paused = ask(agent, "t", "Refund $250")
    worker, _outcome = _resume_in_background(agent, "t")
    assert bank.started.wait(10)
    try:
        ask(agent, "t", "Also refund $30")
    except ThreadConflict:
        pass
    finally:
        bank.release.set()
        worker.join(20)
    # Whoever resumes the thread next carries on from its head.
    state = agent.invoke(None, cfg("t"))
    call_id = paused.next_tool_call.id
    assert [p[2] for p in bank.paid][:1] == [f"t:{call_id}"]
    answers = [
        m.text
        for m in state.values["messages"]
        if isinstance(m, ToolMessage) and m.tool_call_id == call_id
    ]
    assert answers and not answers[0].startswith("Not executed"), answers


@pytest.mark.parametrize("actor", ["", None, "   "])
def test_a_decision_without_an_actor_is_refused(saver, actor):
    agent, bank = payments(saver)
    ask(agent, "t", "Refund $250")
    with pytest.raises(ValueError, match="actor"):
        agent.approve(cfg("t"), actor=actor)
    assert bank.paid == []


def test_a_replayed_branch_does_not_reuse_the_paid_calls_idempotency_key(saver):
    agent, bank = payments(saver)
    paused = ask(agent, "t", "Refund $250")
    agent.approve(cfg("t"), actor="ops")
    # Time travel: back to the pause, this time pay a corrected amount.
    replayed = agent.invoke(None, cfg("t", paused.checkpoint_id))
    assert replayed.next == ("transfer_funds",)
    agent.modify(cfg("t"), args={"to": "acct-0", "amount": 245}, actor="ops")
    assert [p[1] for p in bank.paid] == [250.0, 245.0]
    first_key, second_key = (p[2] for p in bank.paid)
    # Same key, different amount: a bank honouring keys drops the correction.
    assert first_key != second_key


def test_update_state_with_a_bare_string_adds_one_message(saver):
    agent, _ = payments(saver)
    ask(agent, "t", "Refund $250")
    before = len(agent.get_state(cfg("t")).values["messages"])
    agent.update_state(cfg("t"), {"messages": "Approved, but amount should be 245."})
    after = agent.get_state(cfg("t")).values["messages"]
    humans = [m for m in after[before:] if isinstance(m, HumanMessage)]
    assert [m.text for m in humans] == ["Approved, but amount should be 245."]


def test_a_model_that_loops_on_an_unknown_tool_stops_at_the_step_limit(saver):
    class Looper(Refunds):
        def generate(self, messages, tools):
            self.calls += 1
            return AIMessage(
                content="",
                tool_calls=[ToolCall(name="nope", args={}, id=f"n{self.calls}")],
            )

    model = Looper()
    agent, bank = payments(saver, model=model)
    config = {"configurable": {"thread_id": "t"}, "recursion_limit": 6}
    with pytest.raises(AgentmaticError, match=r"'t'.*6 steps"):
        agent.invoke({"messages": [HumanMessage("go")]}, config)
    assert model.calls == 5 and bank.paid == []  # __start__ is the first step
    # The thread is not locked: a later resume proceeds (and stops again).
    with pytest.raises(AgentmaticError, match="6 steps"):
        agent.invoke(None, config)


def test_forks_of_forks_fire_every_gate_again_and_never_reuse_a_decision(saver):
    agent, bank = payments(saver, model=Refunds())
    paused = ask(agent, "a", "Refund $250 and $300")
    first, second = (c.id for c in paused.pending_tool_calls)
    agent.approve(cfg("a"), actor="ops", tool_call_id=first)
    # A fork of the half-decided checkpoint starts with nothing decided.
    forked = agent.invoke(None, cfg("b", paused.checkpoint_id))
    assert forked.next == ("transfer_funds",)
    assert forked.decisions == {}
    assert {i.value["tool_call_id"] for i in forked.interrupts} == {first, second}
    fork_of_fork = agent.invoke(None, cfg("c", forked.checkpoint_id))
    assert fork_of_fork.next == ("transfer_funds",) and fork_of_fork.decisions == {}
    assert bank.paid == []
    root = agent.get_state_history(thread_id="c")[-1]
    assert root.metadata["forked_from"]["thread_id"] == "b"
    with pytest.raises(ThreadExists):
        agent.invoke(None, cfg("b", paused.checkpoint_id))
    with pytest.raises(CheckpointNotFound) as err:
        agent.invoke(None, cfg("d", str(uuid.uuid4())))
    assert "'d'" in str(err.value)
    # The source thread still waits for its second decision only.
    source = agent.get_state(cfg("a"))
    assert set(source.decisions) == {first}
    done = agent.approve(cfg("a"), actor="ops", tool_call_id=second)
    assert done.next == ()
    assert sorted(p[1] for p in bank.paid) == [250.0, 300.0]
    assert {p[2].split(":")[0] for p in bank.paid} == {"a"}


def test_resuming_after_a_compatible_schema_change_proceeds(saver):
    first, _ = payments(saver)
    ask(first, "t", "Refund $250")
    paid: list[tuple] = []

    def transfer_funds(
        to: str, amount: float, currency: str = "USD", idempotency_key: str = ""
    ) -> str:
        """Send a refund, now in any currency."""
        paid.append((to, amount, currency))
        return "sent"

    second = (
        Agent.builder("payments")
        .llm(Refunds())
        .tools([read_account, transfer_funds])
        .checkpoint(saver)
        .interrupt_before(["transfer_funds"])
        .build()
    )
    assert second.version != first.version
    state = second.approve(cfg("t"), actor="ops")
    assert state.next == () and paid == [("acct-0", 250.0, "USD")]


def test_modify_after_the_tool_was_removed_names_what_changed(saver):
    first, _ = payments(saver)
    ask(first, "t", "Refund $250")
    second = Agent.builder("payments").llm(Refunds()).tools([read_account])
    agent = second.checkpoint(saver).build()
    with pytest.raises(AgentChanged, match="transfer_funds"):
        agent.modify(cfg("t"), args={"to": "x", "amount": 1}, actor="ops")
    with pytest.raises(AgentChanged, match="transfer_funds"):
        agent.approve(cfg("t"), actor="ops")


def test_a_tool_named_like_a_model_node_still_shows_its_waiting_call(saver):
    def model(name: str) -> str:
        """Retrain a pricing model."""
        return "retrained"

    class Proposer(Refunds):
        def generate(self, messages, tools):
            if isinstance(messages[-1], HumanMessage):
                return AIMessage(
                    content="",
                    tool_calls=[ToolCall(name="model", args={"name": "p"}, id="m1")],
                )
            return AIMessage(content="Done.")

    # A tool may not take a name readers reserve for the model's node.
    with pytest.raises(ValueError, match="model"):
        (
            Agent.builder("ml")
            .llm(Proposer())
            .tools([model])
            .checkpoint(saver)
            .interrupt_before(["model"])
            .build()
        )


# === crash safety and one writer per thread ======================================


class HeldLease(SQLiteSaver):
    """A second process's saver whose lease request is held until told."""

    def __init__(self, path, go: threading.Event, arrived: threading.Event):
        super().__init__(path)
        self.go = go
        self.arrived = arrived

    def acquire_lease(self, thread_id, owner, ttl_seconds):
        if not self.arrived.is_set():
            self.arrived.set()
            self.go.wait(10)
        return super().acquire_lease(thread_id, owner, ttl_seconds)


def test_a_resumer_that_read_the_head_before_another_finished_does_not_pay_twice(
    tmp_path,
):
    path = tmp_path / "a.sqlite"
    bank = Bank()
    first, _ = payments(SQLiteSaver(path), bank)
    ask(first, "t", "Refund $250")
    go, arrived = threading.Event(), threading.Event()
    second, _ = payments(HeldLease(path, go, arrived), bank)
    outcome: list[Any] = []

    def resume_in_second_process() -> None:
        try:
            outcome.append(second.invoke(None, cfg("t")))
        except AgentmaticError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=resume_in_second_process)
    worker.start()
    assert arrived.wait(10)
    # The first process resumes and finishes while the second waits for its lease.
    assert first.invoke(None, cfg("t")).next == ()
    go.set()
    worker.join(20)
    assert [p[1] for p in bank.paid] == [250.0]


def test_a_tool_that_outlives_the_lease_is_not_run_again_by_a_second_resumer(
    tmp_path,
):
    path = tmp_path / "a.sqlite"
    started, release = threading.Event(), threading.Event()
    calls: list[float] = []

    def transfer_funds(to: str, amount: float) -> str:
        """Send money through a slow bank."""
        calls.append(amount)
        if len(calls) == 1:
            started.set()
            release.wait(10)
        return "sent"

    def build():
        return (
            Agent.builder("slow")
            .llm(Refunds())
            .tools([transfer_funds])
            .checkpoint(SQLiteSaver(path))
            .interrupt_before(["transfer_funds"])
            .lease_seconds(0.3)
            .build()
        )

    first, second = build(), build()
    ask(first, "t", "Refund $250")
    errors: list[BaseException] = []

    def resume(agent) -> None:
        try:
            agent.invoke(None, cfg("t"))
        except AgentmaticError as exc:
            errors.append(exc)

    slow = threading.Thread(target=resume, args=(first,))
    slow.start()
    assert started.wait(10)
    time.sleep(0.8)  # the bank is still working; the lease has run out
    resume(second)
    release.set()
    slow.join(20)
    assert calls == [250.0]


def test_a_worker_whose_clock_is_behind_can_resume_a_thread(tmp_path, monkeypatch):
    from agentmatic import ids

    path = tmp_path / "a.sqlite"
    first, bank = payments(SQLiteSaver(path))
    ask(first, "t", "Refund $250")
    # Another host, 2 s behind (NTP drift between workers).
    skewed = type(
        "Clock", (), {"time_ns": staticmethod(lambda: time.time_ns() - 2 * 10**9)}
    )
    monkeypatch.setattr(ids, "time", skewed)
    monkeypatch.setattr(ids, "_last_ticks", 0)
    second, _ = payments(SQLiteSaver(path), bank)
    state = second.invoke(None, cfg("t"))
    assert state.next == ()
    assert first.get_state(cfg("t")).next == ()
    assert len(bank.paid) == 1


CRASH_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    from agentmatic import Agent, AIMessage, HumanMessage, ToolCall, ToolMessage
    from agentmatic.checkpoint import SQLiteSaver

    db, ledger, mode, command, lease = sys.argv[1:6]

    class Model:
        identity = "crash-model"
        def generate(self, messages, tools):
            if isinstance(messages[-1], HumanMessage):
                return AIMessage(content="", tool_calls=[ToolCall(
                    name="transfer_funds", args={"to": "a", "amount": 250}, id="c1")])
            return AIMessage(content="Done.")

    def transfer_funds(to: str, amount: float, idempotency_key: str) -> str:
        '''Send money.'''
        with open(ledger, "a") as fh:
            fh.write(json.dumps([to, amount, idempotency_key]) + "\\n")
            fh.flush()
            os.fsync(fh.fileno())
        if mode == "kill-in-tool":
            os.kill(os.getpid(), signal.SIGKILL)
        return "sent"

    class Saver(SQLiteSaver):
        def put(self, config, checkpoint, metadata, new_versions, **kw):
            if mode == "kill-before-checkpoint" and "transfer_funds" in (
                metadata.get("writes") or {}
            ):
                os.kill(os.getpid(), signal.SIGKILL)
            return super().put(config, checkpoint, metadata, new_versions, **kw)

    agent = (Agent.builder("crash").llm(Model()).tools([transfer_funds])
             .checkpoint(Saver(db)).interrupt_before(["transfer_funds"])
             .lease_seconds(float(lease)).build())
    config = {"configurable": {"thread_id": "case"}}
    if command == "start":
        state = agent.invoke({"messages": [HumanMessage("refund")]}, config)
    else:
        state = agent.invoke(None, config)
    print(json.dumps({"next": list(state.next)}))
    """
)


def _run_crash_script(tmp_path: Path, mode: str, command: str, lease: float = 0.5):
    script = tmp_path / "crash_agent.py"
    script.write_text(CRASH_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [
            sys.executable,
            str(script),
            str(tmp_path / "a.sqlite"),
            str(tmp_path / "ledger"),
            mode,
            command,
            str(lease),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )


def _ledger(tmp_path: Path) -> list[list[Any]]:
    path = tmp_path / "ledger"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_process_killed_after_the_tool_saved_its_result_resumes_without_paying(
    tmp_path,
):
    assert _run_crash_script(tmp_path, "normal", "start").returncode == 0
    killed = _run_crash_script(tmp_path, "kill-before-checkpoint", "resume")
    assert killed.returncode == -signal.SIGKILL
    assert len(_ledger(tmp_path)) == 1
    time.sleep(0.7)  # the dead process's lease runs out
    resumed = _run_crash_script(tmp_path, "normal", "resume")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1]) == {"next": []}
    assert len(_ledger(tmp_path)) == 1


def test_a_process_killed_inside_the_tool_retries_it_with_the_same_idempotency_key(
    tmp_path,
):
    assert _run_crash_script(tmp_path, "normal", "start").returncode == 0
    killed = _run_crash_script(tmp_path, "kill-in-tool", "resume", lease=20)
    assert killed.returncode == -signal.SIGKILL
    # Before the dead process's lease runs out, another process is refused.
    early = _run_crash_script(tmp_path, "normal", "resume")
    assert early.returncode != 0 and "ThreadConflict" in early.stderr
    conn = sqlite3.connect(tmp_path / "a.sqlite")
    conn.execute("UPDATE agentmatic_leases SET expires_at = 0")  # time passes
    conn.commit()
    conn.close()
    resumed = _run_crash_script(tmp_path, "normal", "resume")
    assert resumed.returncode == 0, resumed.stderr
    ledger = _ledger(tmp_path)
    # Nothing saved the first attempt's result, so it runs again, but the
    # outside system can tell the two apart from a retry: one key.
    assert len(ledger) == 2
    assert ledger[0][2] == ledger[1][2] == "case:c1"


def test_twenty_threads_run_twenty_threads_of_one_sqlite_file(tmp_path):
    path = tmp_path / "a.sqlite"
    shared = SQLiteSaver(path)
    bank = Bank()
    agent, _ = payments(shared, bank)
    barrier = threading.Barrier(20, timeout=20)
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            barrier.wait()
            amount = 250 if n % 2 else 40
            state = ask(agent, f"thread-{n}", f"Refund ${amount}")
            if state.next:
                agent.approve(cfg(f"thread-{n}"), actor=f"ops-{n}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(bank.paid) == 20
    assert len({p[2] for p in bank.paid}) == 20
    fresh = SQLiteSaver(path)
    page = fresh.list_threads(limit=100)
    assert len(page.threads) == 20
    for info in page.threads:
        history = fresh.get_state_history(info.thread_id)
        assert history[0].next == ()
        assert history[0].values["messages"][-1].text == "Done."


# === values that are not plain JSON ==================================================


UNUSUAL = {
    "price": decimal.Decimal("1234567890.123456789"),
    "when": dt.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=dt.UTC),
    "naive": dt.datetime(2024, 1, 1, 12, 0),
    "day": dt.date(1999, 12, 31),
    "tags": {"vip", "refund"},
    "frozen": frozenset({1, 2}),
    "raw": b"\x00\xff\x80binary",
    "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "big": "x" * 1_000_000,
    "emoji": "refund 💸 für Ωmega — 退款 🇺🇦",
    "int_keys": {1: "one", 2: "two"},
    "huge_int": 2**63 - 1,
    "nested": {"a": [{"b": [decimal.Decimal("0.1"), dt.timedelta(days=3)]}]},
}


def test_unusual_values_survive_a_whole_run_and_a_fresh_process_reading_them(tmp_path):
    path = tmp_path / "a.sqlite"
    agent, bank = payments(SQLiteSaver(path))
    state = agent.invoke(
        {"messages": [HumanMessage(UNUSUAL["emoji"] + " $250")], **UNUSUAL}, cfg("t")
    )
    assert state.next == ("transfer_funds",)
    done = agent.approve(cfg("t"), actor="ops")
    assert done.next == () and len(bank.paid) == 1
    fresh = SQLiteSaver(path)
    for reread in (
        fresh.get_state("t"),
        payments(fresh)[0].get_state(cfg("t")),
        fresh.get_state_history("t")[-2],
    ):
        for key, value in UNUSUAL.items():
            assert reread.values[key] == value, key
            assert type(reread.values[key]) is type(value), key
    assert fresh.get_state("t").values["messages"][0].text.startswith("refund 💸")


class Receipt:
    """A bank's receipt object: no JSON form."""

    def __init__(self, amount: float) -> None:
        self.amount = amount

    def __repr__(self) -> str:
        return f"Receipt({self.amount})"


def test_a_tool_that_succeeded_with_an_unencodable_result_is_not_reported_as_failed(
    saver,
):
    paid: list[float] = []

    def transfer_funds(to: str, amount: float) -> Receipt:
        """Send money; returns the bank's receipt object."""
        paid.append(amount)
        return Receipt(amount)

    agent = (
        Agent.builder("p")
        .llm(Refunds())
        .tools([transfer_funds])
        .checkpoint(saver)
        .build()
    )
    state = ask(agent, "t", "Refund $40")
    assert paid == [40.0]
    answer = next(m for m in state.values["messages"] if isinstance(m, ToolMessage))
    assert answer.status == "success", answer.text


def test_a_tool_returning_decimals_dates_and_sets_gets_a_json_answer(saver):
    def quote(n: int) -> dict:
        """Quote a refund."""
        return {
            "amount": decimal.Decimal("12.30"),
            "at": dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
            "codes": {"A"},
            "raw": b"ok",
        }

    class Quoter(Refunds):
        def generate(self, messages, tools):
            if isinstance(messages[-1], HumanMessage):
                return AIMessage(
                    content="",
                    tool_calls=[ToolCall(name="quote", args={"n": "3"}, id="q")],
                )
            return AIMessage(content="Done.")

    agent = Agent.builder("q").llm(Quoter()).tools([quote]).checkpoint(saver).build()
    state = ask(agent, "t", "quote")
    answer = state.values["messages"][2]
    assert answer.status == "success"
    assert json.loads(answer.text) == {
        "amount": "12.30",
        "at": "2024-01-01T00:00:00Z",
        "codes": ["A"],
        "raw": "ok",
    }


@dataclass
class Order:
    number: str
    amount: float


def test_a_value_that_could_never_be_read_back_is_refused_when_written(saver):
    agent, bank = payments(saver)
    # Refused is fine, if nothing unreadable was stored on the way.
    with contextlib.suppress(SerializationError):
        agent.invoke(
            {"messages": [HumanMessage("Refund $250")], "order": Order("#42", 250.0)},
            cfg("t"),
        )
    try:
        agent.get_state(cfg("t"))
    except ThreadNotFound:
        return  # refused at the door, nothing stored
    # Accepted: then the thread must be resumable.
    agent.approve(cfg("t"), actor="ops")
    assert len(bank.paid) == 1


def test_one_unreadable_thread_does_not_break_listing_or_forking_others():
    saver = MemorySaver()
    agent, _ = payments(saver)
    ask(agent, "good", "Refund $40")
    with pytest.raises(DisallowedType, match="Order"):
        agent.invoke(
            {"messages": [HumanMessage("Refund $20")], "order": Order("#1", 20.0)},
            cfg("bad"),
        )
    page = saver.list_threads()
    assert "good" in {t.thread_id for t in page.threads}
    early = agent.get_state_history(thread_id="good")[-1]
    forked = agent.invoke(None, cfg("fork", early.checkpoint_id))
    assert forked.next == ()


def _poison_head(path: Path, thread_id: str) -> str:
    """Plant an `os.system` constructor in the thread's newest checkpoint blob."""
    conn = sqlite3.connect(path)
    cid, type_, blob = conn.execute(
        "SELECT checkpoint_id, type, checkpoint FROM checkpoints WHERE thread_id = ? "
        "ORDER BY checkpoint_id DESC LIMIT 1",
        (thread_id,),
    ).fetchone()
    assert type_ == "msgpack"
    checkpoint = ormsgpack.unpackb(
        blob, ext_hook=lambda code, data: ormsgpack.Ext(code, data)
    )
    evil = ormsgpack.Ext(0, ormsgpack.packb(["os", "system", "touch pwned"]))
    checkpoint["channel_values"]["evil"] = evil
    checkpoint["channel_versions"]["evil"] = "00000000000000000000000000000099.0"
    conn.execute(
        "UPDATE checkpoints SET checkpoint = ? "
        "WHERE thread_id = ? AND checkpoint_id = ?",
        (ormsgpack.packb(checkpoint), thread_id, cid),
    )
    conn.commit()
    conn.close()
    return cid


def test_a_planted_type_in_a_stored_checkpoint_fails_closed_naming_thread_and_type(
    tmp_path,
):
    path = tmp_path / "a.sqlite"
    agent, bank = payments(SQLiteSaver(path))
    ask(agent, "victim", "Refund $250")
    ask(agent, "bystander", "Refund $40")
    cid = _poison_head(path, "victim")
    fresh = SQLiteSaver(path)
    reader, _ = payments(fresh, bank)
    for read in (
        lambda: fresh.get_state("victim"),
        lambda: fresh.get_state_history("victim"),
        lambda: reader.get_state(cfg("victim")),
        lambda: reader.invoke(None, cfg("victim")),
        lambda: reader.approve(cfg("victim"), actor="ops"),
    ):
        with pytest.raises(DisallowedType) as err:
            read()
        assert "'victim'" in str(err.value) and "os.system" in str(err.value)
    assert not (tmp_path / "pwned").exists()
    assert not Path("pwned").exists()
    assert [p[1] for p in bank.paid] == [40.0]
    # The timeline still shows it, and display mode shows the value inert.
    light = fresh.get_state_history("victim", values=False)
    assert light[0].checkpoint_id == cid and light[0].next == ("transfer_funds",)
    assert {t.thread_id for t in fresh.list_threads().threads} == {
        "victim",
        "bystander",
    }
    row = (
        sqlite3.connect(path)
        .execute(
            "SELECT type, checkpoint FROM checkpoints WHERE checkpoint_id = ?", (cid,)
        )
        .fetchone()
    )
    shown = fresh.display_serde.loads_typed(tuple(row), thread_id="victim")
    assert shown["channel_values"]["evil"] == OpaqueValue("os.system", "touch pwned")
    # Other threads are untouched.
    assert fresh.get_state("bystander").values["messages"][-1].text == "Done."


def test_an_unknown_extension_in_a_stored_write_names_the_thread(tmp_path):
    path = tmp_path / "a.sqlite"
    agent, _ = payments(SQLiteSaver(path))
    ask(agent, "victim", "Refund $250")
    conn = sqlite3.connect(path)
    conn.execute(
        "UPDATE writes SET value = ? "
        "WHERE thread_id = 'victim' AND channel = '__interrupt__'",
        (ormsgpack.packb(ormsgpack.Ext(42, b"\x00")),),
    )
    conn.commit()
    conn.close()
    fresh = SQLiteSaver(path)
    with pytest.raises(SerializationError) as err:
        fresh.get_state("victim")
    assert "'victim'" in str(err.value) and "42" in str(err.value)
    with pytest.raises(SerializationError):
        payments(fresh)[0].approve(cfg("victim"), actor="ops")


# === the OpenAI adapter against a local fake server ===================================


def _completion_with_calls(*calls: tuple[str, str, str], content: str | None = None):
    return {
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": content,
                    "tool_calls": [
                        {
                            "id": cid,
                            "type": "function",
                            "function": {"name": name, "arguments": arguments},
                        }
                        for cid, name, arguments in calls
                    ],
                },
            }
        ]
    }


def _openai_agent(server: FakeOpenAI, saver, bank: Bank, **kw):
    llm = OpenAI(
        api_key=FAKE_API_KEY,
        base_url=server.url,
        max_retries=kw.pop("max_retries", 3),
        retry_base_delay=0.01,
        retry_max_delay=0.05,
        timeout=10,
    )
    return payments(saver, bank, model=llm, **kw)[0]


def _says_done(messages, tools):
    if messages[-1]["role"] == "tool":
        return "Done."
    return None


def test_malformed_tool_arguments_end_the_turn_and_keep_the_conversation_valid(saver):
    bank = Bank()

    def behaviour(messages, tools):
        if messages[-1]["role"] == "user" and "first" in messages[-1]["content"]:
            return _completion_with_calls(
                ("bad", "transfer_funds", '{"to": "a", "amount": 2')
            )
        return "Noted."

    with FakeOpenAI(behaviour) as server:
        agent = _openai_agent(server, saver, bank)
        state = ask(agent, "t", "first")
        assert state.next == ()
        assert state.values["messages"][-1].invalid_tool_calls[0]["id"] == "bad"
        state = ask(agent, "t", "second")
        assert state.values["messages"][-1].text == "Noted."
        assert all(r.status == 200 for r in server.requests)
    assert bank.paid == []


def test_a_nan_amount_from_the_model_never_slips_past_the_gate(saver):
    bank = Bank()

    def behaviour(messages, tools):
        if messages[-1]["role"] == "user":
            return _completion_with_calls(
                ("c1", "transfer_funds", '{"to": "attacker", "amount": NaN}')
            )
        return "Done."

    with FakeOpenAI(behaviour) as server:
        agent = _openai_agent(server, saver, bank)
        ask(agent, "t", "Refund everything")
    assert bank.paid == []


def test_an_empty_choices_reply_fails_the_run_resumably(saver):
    bank = Bank()
    broken = [True]

    def behaviour(messages, tools):
        if broken[0]:
            return {"choices": []}
        if messages[-1]["role"] == "tool":
            return "Done."
        return _completion_with_calls(
            ("c1", "transfer_funds", json.dumps({"to": "a", "amount": 40}))
        )

    with FakeOpenAI(behaviour) as server:
        agent = _openai_agent(server, saver, bank)
        with pytest.raises(ModelError, match="no choices"):
            ask(agent, "t", "Refund $40")
        head = agent.saver.get_tuple(cfg("t"))
        assert any(ch == ERROR for _t, ch, _v in head.pending_writes)
        light = agent.saver.get_state_history("t", values=False)
        assert light[0].tasks[0].error and "no choices" in light[0].tasks[0].error
        broken[0] = False
        state = agent.invoke(None, cfg("t"))
    assert state.next == () and [p[1] for p in bank.paid] == [40.0]


def test_an_unknown_tool_next_to_a_gated_call_is_answered_and_the_gate_holds(saver):
    bank = Bank()

    def behaviour(messages, tools):
        if messages[-1]["role"] == "user":
            return _completion_with_calls(
                ("u1", "delete_database", "{}"),
                ("c1", "transfer_funds", json.dumps({"to": "a", "amount": 500})),
            )
        return "Done."

    with FakeOpenAI(behaviour) as server:
        agent = _openai_agent(server, saver, bank)
        state = ask(agent, "t", "go")
        assert state.next == ("transfer_funds",)
        assert [c.id for c in state.pending_tool_calls] == ["c1"]
        assert bank.paid == []
        done = agent.approve(cfg("t"), actor="ops")
        assert done.next == () and [p[1] for p in bank.paid] == [500.0]
        assert all(r.status == 200 for r in server.requests)
        unknown = [
            m
            for m in done.values["messages"]
            if isinstance(m, ToolMessage) and m.tool_call_id == "u1"
        ]
        assert "no tool named 'delete_database'" in unknown[0].text


def test_server_errors_then_success_are_retried_within_one_step(saver):
    bank = Bank()
    with FakeOpenAI() as server:
        agent = _openai_agent(server, saver, bank)
        server.fail_next(500, 2)
        server.fail_next(429, 1, retry_after=0.01)
        state = ask(agent, "t", "Refund order #42 for $40.")
        assert state.next == ()
        assert [r.status for r in server.requests[:4]] == [500, 500, 429, 200]
    assert [p[1] for p in bank.paid] == [40.0]


def test_a_connection_that_keeps_dropping_fails_the_run_and_it_resumes_later(saver):
    bank = Bank()
    with FakeOpenAI() as server:
        agent = _openai_agent(server, saver, bank, max_retries=1)
        state = ask(agent, "t", "Refund order #42 for $250.")
        assert state.next == ("transfer_funds",)
        server.fail_next("drop", 2)
        with pytest.raises(ModelError, match="connection"):
            agent.approve(cfg("t"), actor="ops")
        assert [p[1] for p in bank.paid] == [250.0]
        state = agent.invoke(None, cfg("t"))
        assert state.next == ()
        assert [p[1] for p in bank.paid] == [250.0]
        assert state.values["messages"][-1].text


def test_content_as_a_list_of_parts_reaches_the_model_and_back(saver):
    bank = Bank()
    with FakeOpenAI() as server:
        agent = _openai_agent(server, saver, bank)
        parts = [
            {"type": "text", "text": "Refund order #42 "},
            {"type": "text", "text": "for $40."},
        ]
        state = agent.invoke({"messages": [HumanMessage(content=parts)]}, cfg("t"))
        assert state.next == ()
        sent = server.requests[0].messages[-1]
        assert sent == {"role": "user", "content": parts}
    assert [p[1] for p in bank.paid] == [40.0]
    assert agent.get_state(cfg("t")).values["messages"][0].content == parts


def test_tool_calls_without_ids_from_a_compatible_server_still_work(saver):
    bank = Bank()

    def behaviour(messages, tools):
        if messages[-1]["role"] == "user":
            completion = _completion_with_calls(
                ("", "transfer_funds", json.dumps({"to": "a", "amount": 40})),
                ("", "transfer_funds", json.dumps({"to": "b", "amount": 60})),
            )
            return completion
        return "Done."

    with FakeOpenAI(behaviour) as server:
        agent = _openai_agent(server, saver, bank)
        state = ask(agent, "t", "two small refunds")
        assert state.next == ()
        assert state.values["messages"][-1].text == "Done."
    assert sorted(p[1] for p in bank.paid) == [40.0, 60.0]
    assert len({p[2] for p in bank.paid}) == 2


# === readers ========================================================================


def _branched_thread(agent):
    """A thread with a pause, a half decision, an update, a replay and a fork."""
    paused = ask(agent, "t", "Refund $300 and $500")
    first = paused.pending_tool_calls[0].id
    agent.approve(cfg("t"), actor="ops", tool_call_id=first)
    agent.reject(cfg("t"), reason="too much", actor="ops-2")
    ask(agent, "t", "Refund $40")
    agent.invoke(None, cfg("t", paused.checkpoint_id))  # replay: pauses again
    agent.update_state(cfg("t"), {"messages": [HumanMessage("Make it $250")]})
    agent.invoke(None, cfg("t"))
    agent.invoke(None, cfg("fork", paused.checkpoint_id))
    agent.modify(
        cfg("fork"),
        args={"to": "z", "amount": 1},
        actor="ops",
        tool_call_id=paused.pending_tool_calls[1].id,
    )
    agent.approve(cfg("fork"), actor="ops")
    return paused


def _shape(state):
    return (
        state.checkpoint_id,
        state.parent_checkpoint_id,
        state.next,
        tuple(
            (c.id, c.name, json.dumps(c.args, sort_keys=True))
            for c in state.pending_tool_calls
        ),
        tuple(
            json.dumps(i.value, sort_keys=True, default=str) for i in state.interrupts
        ),
        tuple(sorted(state.decisions)),
        tuple(
            (t.name, t.tool_call.id if t.tool_call else None, t.done, t.error)
            for t in state.tasks
        ),
        state.metadata.get("source"),
        state.metadata.get("step"),
        state.created_at,
    )


def test_history_with_and_without_values_agree_on_every_checkpoint_of_a_branched_thread(
    saver,
):
    agent, _ = payments(saver)
    _branched_thread(agent)
    for thread in ("t", "fork"):
        full = saver.get_state_history(thread)
        light = saver.get_state_history(thread, values=False)
        assert len(full) == len(light) >= 2
        for a, b in zip(full, light, strict=True):
            assert _shape(a) == _shape(b), a.checkpoint_id
            assert b.values == {}
            one = saver.get_state(thread, a.checkpoint_id, values=False)
            assert _shape(one) == _shape(a)
    assert saver.get_state("t").next == ("transfer_funds",)


def test_history_limit_and_before_edge_cases_agree_across_savers(tmp_path):
    for saver in (MemorySaver(), SQLiteSaver(tmp_path / "a.sqlite")):
        agent, _ = payments(saver)
        ask(agent, "t", "Refund $40")
        ids = [s.checkpoint_id for s in agent.get_state_history(thread_id="t")]
        got = {}
        for values in (True, False):
            read = lambda **kw: [  # noqa: E731
                s.checkpoint_id
                for s in saver.get_state_history("t", values=values, **kw)
            ]
            got[values] = (
                read(limit=0),
                read(before=ids[-1]),
                read(before=ids[0]) == ids[1:],
                read(limit=1, before=ids[1]) == [ids[2]],
                read(limit=10**9) == ids,
            )
            assert (
                agent.get_state_history(thread_id="t", before=cfg("t", ids[1]))
                and [
                    s.checkpoint_id
                    for s in agent.get_state_history(cfg("t"), before=cfg("t", ids[1]))
                ]
                == ids[2:]
            )
        assert got[True] == got[False] == ([], [], True, True, True)
        assert saver.get_state_history("nobody") == []
        assert saver.get_state("nobody") is None


def test_a_negative_history_limit_is_refused_or_means_the_same_on_every_saver(
    tmp_path,
):
    answers = []
    for saver in (MemorySaver(), SQLiteSaver(tmp_path / "a.sqlite")):
        agent, _ = payments(saver)
        ask(agent, "t", "Refund $40")
        try:
            answers.append(len(saver.get_state_history("t", limit=-1)))
        except ValueError:
            answers.append("refused")
    assert answers[0] == answers[1]


@pytest.mark.parametrize(
    "garbage",
    [
        "not base64 at all!!!",
        "",
        base64.urlsafe_b64encode(b"[1, 2, 3]").decode(),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        base64.urlsafe_b64encode(b"[1]").decode(),
        "%00%27 OR 1=1 --",
    ],
)
def test_a_garbage_thread_cursor_is_refused_or_ignored_never_a_crash(saver, garbage):
    agent, _ = payments(saver)
    for n in range(3):
        ask(agent, f"t{n}", "Refund $40")
    try:
        page = saver.list_threads(limit=2, cursor=garbage)
    except ValueError as exc:
        assert "cursor" in str(exc)
        return
    assert len(page.threads) <= 2


@pytest.mark.parametrize("raw", [b'"ab"', b'{"x": 1, "y": 2}'])
def test_a_cursor_that_is_not_one_we_issued_is_refused(saver, raw):
    agent, _ = payments(saver)
    ask(agent, "t0", "Refund $40")
    with pytest.raises(ValueError, match="cursor"):
        saver.list_threads(cursor=base64.urlsafe_b64encode(raw).decode())


@pytest.mark.parametrize(
    "thread_id",
    [
        "case/42/../../etc/passwd",
        'it\'s "quoted" -- ; DROP TABLE checkpoints;',
        "退款-💸-Ωmega",
        "x" * 10_000,
        " leading and trailing ",
        "%",
        "_",
    ],
    ids=[
        "slashes",
        "quotes",
        "unicode",
        "very-long",
        "spaces",
        "percent",
        "underscore",
    ],
)
def test_hostile_thread_ids_round_trip_everywhere(tmp_path, thread_id):
    path = tmp_path / "a.sqlite"
    agent, bank = payments(SQLiteSaver(path))
    ask(agent, "other", "Refund $40")
    state = ask(agent, thread_id, "Refund $250")
    assert state.thread_id == thread_id and state.next == ("transfer_funds",)
    done = agent.approve(cfg(thread_id), actor="ops")
    assert done.next == ()
    assert (
        bank.paid[-1][2] == f"{thread_id}:{done.values['messages'][1].tool_calls[0].id}"
    )
    fresh = SQLiteSaver(path)
    assert fresh.get_state(thread_id).values["messages"][-1].text == "Done."
    assert len(fresh.get_state_history(thread_id, values=False)) == len(
        fresh.get_state_history(thread_id)
    )
    listed = {t.thread_id for t in fresh.list_threads(limit=10).threads}
    assert listed == {"other", thread_id}
    assert len(fresh.get_state_history("other")) == 5
    fork = agent.invoke(None, cfg(thread_id + "-fork", done.checkpoint_id))
    assert fork.metadata["forked_from"]["thread_id"] == thread_id


def test_a_thread_id_with_a_lone_surrogate_gives_a_clear_error_on_sqlite(tmp_path):
    agent, _ = payments(SQLiteSaver(tmp_path / "a.sqlite"))
    with pytest.raises(AgentmaticError):
        ask(agent, "bad\ud800id", "Refund $40")


def test_a_thread_id_with_a_lone_surrogate_works_or_fails_clearly_in_memory():
    agent, _ = payments(MemorySaver())
    try:
        state = ask(agent, "bad\ud800id", "Refund $40")
    except (AgentmaticError, ValueError) as exc:
        assert not isinstance(exc, UnicodeError), exc
        return
    assert agent.get_state(cfg("bad\ud800id")).checkpoint_id == state.checkpoint_id


def test_compaction_of_a_long_branched_thread_keeps_every_survivor_readable(saver):
    import asyncio as _asyncio

    from agentmatic.checkpoint.retention import compact

    agent, bank = payments(saver)
    # Enough steps to cross the message log's snapshot boundary (100 updates).
    for n in range(30):
        ask(agent, "t", f"Refund ${n + 1}")
    paused = ask(agent, "t", "Refund $250")
    early = agent.get_state_history(thread_id="t")[50]
    agent.invoke(None, cfg("fork", early.checkpoint_id))
    agent.update_state(cfg("t"), {"note": "checked"})
    ask(agent, "t", "Refund $999")  # answers the waiting call, waits again
    before = {
        s.checkpoint_id: [m.id for m in s.values.get("messages", [])]
        for thread in ("t", "fork")
        for s in agent.get_state_history(thread_id=thread)
    }
    report = _asyncio.run(
        compact(
            saver,
            retention_days=0,
            now=dt.datetime.now(dt.UTC) + dt.timedelta(days=1),
        )
    )
    assert report.deleted > 0
    for thread in ("t", "fork"):
        full = saver.get_state_history(thread)
        light = saver.get_state_history(thread, values=False)
        assert [s.checkpoint_id for s in full] == [s.checkpoint_id for s in light]
        for state in full:
            assert [m.id for m in state.values.get("messages", [])] == before[
                state.checkpoint_id
            ]
    assert saver.get_state("fork").checkpoint_id in before
    # The fork's source survives, and the paused head still resumes.
    assert saver.get_state("t", early.checkpoint_id) is not None
    done = agent.approve(cfg("t"), actor="ops")
    assert done.next == ()
    assert bank.paid[-1][1] == 999.0
    assert paused.next_tool_call.id not in {p[2].split(":")[1] for p in bank.paid}


# === the event loop =================================================================


def test_an_async_tool_runs_when_invoke_is_called_inside_a_running_loop(saver):
    paid: list[float] = []

    async def transfer_funds(to: str, amount: float) -> str:
        """Send money, asynchronously."""
        await asyncio.sleep(0)
        paid.append(amount)
        return "sent"

    agent = (
        Agent.builder("p")
        .llm(Refunds())
        .tools([transfer_funds])
        .checkpoint(saver)
        .build()
    )

    async def notebook_cell():
        return ask(agent, "t", "Refund $40")

    state = asyncio.run(notebook_cell())
    answer = next(m for m in state.values["messages"] if isinstance(m, ToolMessage))
    assert answer.status == "success", answer.text
    assert paid == [40.0]


def test_async_twins_of_every_decision_work_from_one_event_loop(saver):
    agent, bank = payments(saver)

    async def flow():
        paused = await agent.ainvoke(
            {"messages": [HumanMessage("Refund $250 and $300")]}, cfg("t")
        )
        a, b = (c.id for c in paused.pending_tool_calls)
        half = await agent.amodify(
            cfg("t"), args={"to": "z", "amount": 1}, actor="o", tool_call_id=a
        )
        assert half.next == ("transfer_funds",)
        done = await agent.areject(cfg("t"), reason="dup", actor="o2", tool_call_id=b)
        history = await agent.aget_state_history(thread_id="t")
        return done, history

    done, history = asyncio.run(flow())
    assert done.next == ()
    assert bank.paid == [("z", 1.0, bank.paid[0][2])]
    assert history[0].checkpoint_id == done.checkpoint_id
