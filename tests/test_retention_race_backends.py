"""Deletes racing a runner's multi-request read of a message log, on every backend.

A delta channel (the message log) is a snapshot plus the writes stored on each
checkpoint since; rebuilding it reads several rows/requests. A runner that
branches (replay, fork, new input on an older checkpoint) rebuilds the
source's log and stores it as a full snapshot in the new checkpoint: if a
delete commits in the middle of that read, the short log becomes permanent.

Each race is forced in one order with a hook, not left to timing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agentmatic import Agent, HumanMessage
from agentmatic.checkpoint.base import BaseSaver
from agentmatic.checkpoint.retention import compact_sync
from agentmatic.errors import AgentmaticError
from agentmatic.llms import LoopModel

BACKENDS = ["sqlite", "redis", "s3", "postgres"]


def noop(payload: str) -> str:
    """Do nothing, politely."""
    return "ok:" + payload[:40]


@pytest.fixture(params=BACKENDS)
def open_saver(request, tmp_path) -> Iterator[Callable[[], BaseSaver]]:
    """A factory of savers on one shared store (so two can race)."""
    yield from _savers(request, tmp_path, request.param)


@pytest.fixture(params=["memory", *BACKENDS])
def any_saver(request, tmp_path) -> Iterator[Callable[[], BaseSaver]]:
    """As `open_saver`, with MemorySaver too (one instance is its store)."""
    yield from _savers(request, tmp_path, request.param)


def _savers(request, tmp_path, kind: str) -> Iterator[Callable[[], BaseSaver]]:
    made: list[BaseSaver] = []
    if kind == "memory":
        from agentmatic.checkpoint import MemorySaver

        shared = MemorySaver()

        def make(**kw: Any) -> BaseSaver:
            return shared

    elif kind == "sqlite":
        from agentmatic.checkpoint.sqlite import SQLiteSaver

        path = str(tmp_path / "race.db")

        def make(**kw: Any) -> BaseSaver:
            return SQLiteSaver(path, **kw)

    elif kind == "redis":
        from agentmatic.checkpoint.redis import RedisSaver

        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("redis_prefix")

        def make(**kw: Any) -> BaseSaver:
            return RedisSaver(url=url, prefix=prefix, **kw)

    elif kind == "s3":
        from agentmatic.checkpoint.s3 import S3Saver

        request.getfixturevalue("s3_server")
        prefix = request.getfixturevalue("s3_prefix")

        def make(**kw: Any) -> BaseSaver:
            return S3Saver(bucket="agents", prefix=prefix, page_size=8, **kw)

    else:
        from agentmatic.checkpoint.postgres import PostgresSaver

        url = request.getfixturevalue("pg_url")

        def make(**kw: Any) -> BaseSaver:
            return PostgresSaver(url, **kw)

    def factory(**kw: Any) -> BaseSaver:
        saver = make(**kw)
        made.append(saver)
        return saver

    yield factory
    for saver in made:
        saver.close()


def agent_on(saver: BaseSaver, steps: int = 3) -> Agent:
    model = LoopModel("noop", steps=steps, payload_bytes=80)
    return Agent.builder("loop").llm(model).tools([noop]).checkpoint(saver).build()


def cfg(thread_id: str, checkpoint_id: str | None = None) -> dict[str, Any]:
    conf: dict[str, Any] = {"thread_id": thread_id}
    if checkpoint_id:
        conf["checkpoint_id"] = checkpoint_id
    return {"configurable": conf, "recursion_limit": 1000}


def message_ids(saver: BaseSaver, thread_id: str) -> dict[str, list[str]]:
    return {
        s.checkpoint_id: [m.id for m in s.values.get("messages", [])]
        for s in saver.get_state_history(thread_id)
    }


def two_runs(saver: BaseSaver) -> tuple[dict[str, list[str]], str]:
    """Two runs on thread t; return every checkpoint's messages and the
    first run's last checkpoint (a delta one, old once the second ran)."""
    agent = agent_on(saver)
    agent.invoke({"messages": [HumanMessage("one")]}, cfg("t"))
    first_head = saver.get_tuple(cfg("t")).checkpoint["id"]
    agent.invoke({"messages": [HumanMessage("two")]}, cfg("t"))
    return message_ids(saver, "t"), first_head


def compact_now(saver: BaseSaver) -> None:
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    compact_sync(saver, retention_days=0, now=future)


def arm_after_source_read(
    saver: BaseSaver, source_id: str, action: Callable[[], None], skip: int = 0
) -> list[bool]:
    """Run `action` once, after `source_id` was read and right before the
    read of anything else (its ancestors, or its rebuilt log), letting
    `skip` such reads through first."""
    state = {"armed": False, "skip": skip}
    fired: list[bool] = []

    def fire() -> None:
        if not state["armed"] or fired:
            return
        if state["skip"] > 0:
            state["skip"] -= 1
            return
        fired.append(True)
        action()

    original_get = saver.get_tuple

    def get_tuple(config):
        conf = config["configurable"]
        if conf.get("checkpoint_id") not in (None, source_id):
            fire()
        found = original_get(config)
        if found is not None and found.checkpoint["id"] == source_id:
            state["armed"] = True
        return found

    saver.get_tuple = get_tuple  # type: ignore[method-assign]
    original_value = getattr(saver, "channel_value_at", None)
    if original_value is not None:

        def channel_value_at(tup, channel):
            fire()
            return original_value(tup, channel)

        saver.channel_value_at = channel_value_at  # type: ignore[attr-defined]
    original_find = saver.find_checkpoint

    def find_checkpoint(checkpoint_id):
        found = original_find(checkpoint_id)
        if checkpoint_id == source_id:
            state["armed"] = True
        return found

    saver.find_checkpoint = find_checkpoint  # type: ignore[method-assign]
    return fired


@pytest.mark.parametrize("skip", [0, 2])
def test_replay_racing_compact_never_stores_a_short_log(open_saver, skip):
    """Replay an old checkpoint while compact deletes it and its ancestors
    between the source read and the rebuild of its message log."""
    runner, maint = open_saver(), open_saver()
    before, source = two_runs(runner)
    want = before[source]
    assert len(want) > 2
    fired = arm_after_source_read(runner, source, lambda: compact_now(maint), skip)
    # Refusing (the source is gone) is fine; a short log is not.
    with contextlib.suppress(AgentmaticError):
        agent_on(runner).invoke(None, cfg("t", source))
    # Where the log is rebuilt in one read (Postgres, S3), `skip` leaves no
    # second read for the delete to land in: the run must simply be whole.
    assert fired or skip
    fresh = open_saver()
    for tup in fresh.list(cfg("t")):
        if tup.metadata.get("replay_of") == source:
            got = message_ids(fresh, "t")[tup.checkpoint["id"]]
            assert got == want, f"replay stored {len(got)} of {len(want)} messages"


def test_fork_racing_compact_never_stores_a_short_log(open_saver):
    """Fork another thread's old checkpoint while compact deletes it."""
    runner, maint = open_saver(), open_saver()
    before, source = two_runs(runner)
    want = before[source]
    fired = arm_after_source_read(runner, source, lambda: compact_now(maint))
    with contextlib.suppress(AgentmaticError):
        agent_on(runner).invoke(None, cfg("fork", source))
    assert fired
    fresh = open_saver()
    got = message_ids(fresh, "fork")
    for cid, ids in got.items():
        lost = [m for m in want if m not in ids]
        assert not lost, f"fork {cid} lost {len(lost)} of the {len(want)} messages"


@pytest.mark.parametrize("skip", [0, 2])
def test_new_input_on_head_racing_prune_never_stores_a_short_log(open_saver, skip):
    """New input on the head while `prune` (keep_latest) inlines the head and
    deletes its ancestors between the head read and the rebuild of its log."""
    runner, maint = open_saver(), open_saver()
    agent = agent_on(runner)
    agent.invoke({"messages": [HumanMessage("one")]}, cfg("t"))
    head = runner.get_tuple(cfg("t")).checkpoint["id"]
    want = message_ids(runner, "t")[head]
    fired = arm_after_source_read(runner, head, lambda: maint.prune(["t"]), skip)
    with contextlib.suppress(AgentmaticError):
        agent.invoke({"messages": [HumanMessage("two")]}, cfg("t"))
    # Where the log is rebuilt in one read (Postgres, S3), `skip` leaves no
    # second read for the delete to land in: the run must simply be whole.
    assert fired or skip
    fresh = open_saver()
    for cid, ids in message_ids(fresh, "t").items():
        if cid > head:
            lost = [m for m in want if m not in ids]
            assert not lost, f"{cid} lost {len(lost)} of the {len(want)} messages"


def between_prunes_read_and_delete(
    saver: BaseSaver, action: Callable[[], None]
) -> None:
    """Run `action` between prune's read of the head and its deletes: prune
    inlines the head (most backends), or deletes through delete_checkpoints
    (Postgres). `action` must run only once however often it is called."""
    inline, delete = saver.with_values_inlined, saver.delete_checkpoints

    def inline_then_act(tup):
        out = inline(tup)
        action()
        return out

    def act_then_delete(*args):
        action()
        return delete(*args)

    saver.with_values_inlined = inline_then_act  # type: ignore[method-assign]
    saver.delete_checkpoints = act_then_delete  # type: ignore[method-assign]


def test_prune_racing_an_append_keeps_the_new_head_whole(open_saver):
    """prune reads the head, then a runner appends a delta checkpoint on it,
    then prune deletes: the new head must still read its whole log."""
    runner, maint = open_saver(), open_saver()
    agent = agent_on(runner, steps=1)
    agent.invoke({"messages": [HumanMessage("one")]}, cfg("t"))
    appended: list[str] = []

    def append() -> None:
        if not appended:
            appended.append("x")
            # A second run: an input checkpoint (a snapshot) and delta steps.
            agent_on(runner, steps=2).invoke(
                {"messages": [HumanMessage("two")]}, cfg("t")
            )
            want.extend(m.id for m in runner.get_state("t").values["messages"])

    between_prunes_read_and_delete(maint, append)
    want: list[str] = []
    maint.prune(["t"])
    assert appended
    fresh = open_saver()
    states = message_ids(fresh, "t")
    head = max(states)
    assert states[head] == want, f"head reads {len(states[head])} of {len(want)}"


KEY = b"k" * 32


def test_branch_racing_compact_keeps_the_chain_verifiable(open_saver):
    """compact anchors the survivors of the checkpoints it deletes, then
    deletes them; a branch started on one of them in between has no anchor."""
    from agentmatic.checkpoint.chain import verify

    runner, maint = open_saver(chain_key=KEY), open_saver(chain_key=KEY)
    _before, source = two_runs(runner)
    assert verify(runner, "t").ok
    anchor = maint.anchor_deletions
    branched: list[str] = []

    def anchor_then_branch(thread_id, ns, ids):
        out = anchor(thread_id, ns, ids)
        if not branched and source in ids:
            branched.append(source)
            agent_on(runner).invoke({"messages": [HumanMessage("b")]}, cfg("t", source))
        return out

    maint.anchor_deletions = anchor_then_branch  # type: ignore[method-assign]
    compact_now(maint)
    assert branched
    report = verify(open_saver(chain_key=KEY), "t")
    assert report.ok, (report.checkpoint_id, report.reason)


def test_prune_racing_an_append_keeps_the_chain_verifiable(open_saver):
    """prune re-seals the head it inlines; a child appended on the head in
    between was sealed with the head's old MAC."""
    from agentmatic.checkpoint.chain import verify

    runner, maint = open_saver(chain_key=KEY), open_saver(chain_key=KEY)
    agent_on(runner, steps=1).invoke({"messages": [HumanMessage("one")]}, cfg("t"))
    appended: list[bool] = []

    def append() -> None:
        if not appended:
            appended.append(True)
            agent_on(runner, steps=2).invoke(
                {"messages": [HumanMessage("two")]}, cfg("t")
            )

    between_prunes_read_and_delete(maint, append)
    maint.prune(["t"])
    assert appended
    report = verify(open_saver(chain_key=KEY), "t")
    assert report.ok, (report.checkpoint_id, report.reason)


@pytest.mark.parametrize("how", ["delete_for_runs", "delete_checkpoints"])
def test_deleting_an_earlier_run_keeps_the_later_runs_logs_whole(any_saver, how):
    """Deleting an earlier run keeps the later run's message logs whole."""
    open_saver = any_saver
    saver = open_saver()
    before, _source = two_runs(saver)
    tuples = list(saver.list(cfg("t")))
    runs = {t.metadata.get("run_id") for t in tuples}
    first = min(tuples, key=lambda t: t.checkpoint["id"]).metadata["run_id"]
    assert len(runs) == 2
    doomed = [t.checkpoint["id"] for t in tuples if t.metadata["run_id"] == first]
    if how == "delete_for_runs":
        saver.delete_for_runs([first])
    else:
        saver.delete_checkpoints("t", "", doomed)
    after = message_ids(open_saver(), "t")
    assert sorted(after) == sorted(c for c in before if c not in doomed)
    for cid, ids in after.items():
        assert ids == before[cid], f"{cid} reads {len(ids)} of {len(before[cid])}"
    # And the thread runs on from its head.
    agent_on(saver).invoke({"messages": [HumanMessage("three")]}, cfg("t"))
    head = saver.get_state("t")
    assert [m.id for m in head.values["messages"]][: len(before[max(before)])] == (
        before[max(before)]
    )


def test_deleting_a_paused_run_keeps_the_run_that_resumed_it_whole(
    any_saver, tmp_path, monkeypatch
):
    """A resume is a run of its own whose checkpoints continue the paused
    run's log: deleting the paused run keeps them whole."""
    from tests import payments_agent

    monkeypatch.setattr(payments_agent, "LEDGER", str(tmp_path / "ledger"))
    open_saver = any_saver
    saver = open_saver()
    agent = payments_agent.build(saver)
    refund = {"messages": [HumanMessage("Refund order #42 for $250.")]}
    assert agent.invoke(refund, cfg("p")).next == ("transfer_funds",)
    assert agent.invoke(None, cfg("p")).next == ()
    before = message_ids(saver, "p")
    tuples = list(saver.list(cfg("p")))
    first = min(tuples, key=lambda t: t.checkpoint["id"]).metadata["run_id"]
    doomed = [t.checkpoint["id"] for t in tuples if t.metadata["run_id"] == first]
    assert 0 < len(doomed) < len(tuples)
    saver.delete_for_runs([first])
    after = message_ids(open_saver(), "p")
    assert sorted(after) == sorted(c for c in before if c not in doomed)
    for cid, ids in after.items():
        assert ids == before[cid], f"{cid} reads {len(ids)} of {len(before[cid])}"
