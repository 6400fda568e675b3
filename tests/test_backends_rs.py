"""RedisSaver and S3Saver behave as MemorySaver does, call for call.

Agent runs on a MemorySaver are recorded (every `put` and `put_writes`),
replayed into a fresh saver of each kind and into a fresh MemorySaver, and
then everything a reader can ask is compared, before and after copies,
prunes and deletions. The rest are behaviours of both backends that the
reference saver has no counterpart for (hostile input, leases).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from typing import Any

import pytest

from agentmatic import HumanMessage
from agentmatic.checkpoint.base import NO_CHECK, thread_config
from agentmatic.checkpoint.memory import MemorySaver
from agentmatic.checkpoint.retention import compact_sync
from agentmatic.errors import CorruptCheckpoint, ThreadConflict
from tests.s3server import BUCKET
from tests.test_runtime import ask, build, cfg

FAR_FUTURE = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)


class Recorder(MemorySaver):
    """A MemorySaver that remembers every write made to it, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def put(self, config, checkpoint, metadata, new_versions, **kwargs):
        self.calls.append(("put", (config, checkpoint, metadata, new_versions), {}))
        return super().put(config, checkpoint, metadata, new_versions, **kwargs)

    def put_writes(self, config, writes, task_id, task_path=""):
        self.calls.append(
            ("put_writes", (config, list(writes), task_id, task_path), {})
        )
        return super().put_writes(config, writes, task_id, task_path)


def recorded_runs() -> Recorder:
    """Several threads: paid, paused, rejected, branched, forked, with runs."""
    saver = Recorder()
    agent, _bank = build(saver=saver)
    ask(agent, "paid", "Refund $250")
    agent.invoke(None, cfg("paid"))
    ask(agent, "small", "Refund $40")
    ask(agent, "paused", "Refund $300")
    ask(agent, "rejected", "Refund $500")
    agent.reject(cfg("rejected"), reason="too much", actor="ops")
    history = agent.get_state_history(thread_id="paid")
    agent.invoke(
        {"messages": [HumanMessage("Refund $20 instead")]},
        cfg("paid", history[3].checkpoint_id),
    )
    agent.invoke(None, cfg("forked", history[2].checkpoint_id))
    # A subgraph namespace, as LangGraph writes one.
    head = saver.get_tuple(cfg("small"))
    sub = thread_config("small", None, "child:1")
    saver.put(sub, dict(head.checkpoint, id=head.checkpoint["id"][:-1] + "f"), {}, {})
    return saver


@pytest.fixture(scope="module")
def recording() -> Recorder:
    return recorded_runs()


@pytest.fixture(params=["redis", "s3"])
def make(request: pytest.FixtureRequest) -> Any:
    made: list[Any] = []

    def factory() -> Any:
        if request.param == "redis":
            from agentmatic.checkpoint.redis import RedisSaver

            url = request.getfixturevalue("redis_url")
            prefix = request.getfixturevalue("redis_prefix")
            saver: Any = RedisSaver(url, prefix=f"{prefix}:{len(made)}")
        else:
            from agentmatic.checkpoint.s3 import S3Saver

            request.getfixturevalue("s3_server")
            prefix = request.getfixturevalue("s3_prefix")
            saver = S3Saver(prefix=f"{prefix}{len(made)}", page_size=2)
        made.append(saver)
        return saver

    factory.kind = request.param  # type: ignore[attr-defined]
    yield factory
    for saver in made:
        saver.close()


def replay(recording: Recorder, saver: Any) -> Any:
    for method, args, kwargs in recording.calls:
        getattr(saver, method)(*args, **kwargs)
    return saver


def snapshot(saver: Any) -> dict[str, Any]:
    """Everything a reader sees, in comparable form."""
    threads = sorted(saver.thread_ids())
    out: dict[str, Any] = {
        "threads": threads,
        # A copied checkpoint sits in two threads; ties may come in any order.
        "all": _by_id_then_thread([_tup(t) for t in saver.list(None)]),
        "listing": _pages(saver, None),
        "payments": _pages(saver, "payments"),
    }
    for tid in threads:
        out[tid] = {
            "list": [_tup(t) for t in saver.list({"configurable": {"thread_id": tid}})],
            "head": _tup(saver.get_tuple(cfg(tid))),
            "history": [_state(s) for s in saver.get_state_history(tid)],
            "light": [_state(s) for s in saver.get_state_history(tid, values=False)],
            "limited": [s.checkpoint_id for s in saver.get_state_history(tid, limit=2)],
            "state": _state(saver.get_state(tid)),
            "light_state": _state(saver.get_state(tid, values=False)),
        }
        ids = [s.checkpoint_id for s in saver.get_state_history(tid)]
        if len(ids) > 2:
            out[tid]["before"] = [
                s.checkpoint_id for s in saver.get_state_history(tid, before=ids[1])
            ]
            found = saver.find_checkpoint(ids[1])
            out[tid]["found"] = (found.checkpoint, found.metadata)
    return out


def _by_id_then_thread(tuples: list[Any]) -> list[Any]:
    ids = [t[1]["id"] for t in tuples]
    assert ids == sorted(ids, reverse=True)
    # Ties (one id in two threads or namespaces) may come in any order.
    return sorted(
        tuples,
        key=lambda t: (
            t[1]["id"],
            t[0]["configurable"]["thread_id"],
            t[0]["configurable"].get("checkpoint_ns", ""),
        ),
    )


def _tup(tup: Any) -> Any:
    if tup is None:
        return None
    return (
        tup.config,
        tup.checkpoint,
        tup.metadata,
        tup.parent_config,
        sorted(tup.pending_writes or [], key=repr),
    )


def _state(state: Any) -> Any:
    if state is None:
        return None
    return (
        state.checkpoint_id,
        state.values,
        state.next,
        state.metadata,
        state.parent_config,
        state.pending_tool_calls,
        state.interrupts,
        state.decisions,
        tuple((t.name, t.tool_call, t.done) for t in state.tasks),
    )


def _pages(saver: Any, agent: str | None) -> list[Any]:
    pages, cursor = [], None
    while True:
        page = saver.list_threads(agent=agent, limit=2, cursor=cursor)
        pages.append(
            [
                (
                    t.thread_id,
                    t.checkpoint_id,
                    t.next,
                    t.checkpoints,
                    t.agent,
                    t.created_at,
                    t.updated_at,
                    t.step,
                    t.forked_from,
                )
                for t in page.threads
            ]
        )
        cursor = page.next_cursor
        if cursor is None:
            return pages


def test_a_replayed_history_reads_back_exactly_as_from_memory(recording, make):
    expected = snapshot(replay(recording, MemorySaver()))
    assert snapshot(replay(recording, make())) == expected


@pytest.mark.parametrize(
    "operation",
    [
        lambda s: s.copy_thread("paid", "paid-copy"),
        lambda s: s.copy_thread("small", "paused"),
        lambda s: s.prune(["paid", "small"]),
        lambda s: s.prune(["rejected"], strategy="delete"),
        lambda s: s.delete_thread("forked"),
        lambda s: s.delete_for_runs(
            [next(iter(s.list(cfg("rejected")))).metadata["run_id"]]
        ),
        lambda s: s.delete_checkpoints(
            "paid", "", [t.checkpoint["id"] for t in list(s.list(cfg("paid")))[-3:]]
        ),
        lambda s: compact_sync(s, retention_days=0, now=FAR_FUTURE),
    ],
    ids=[
        "copy",
        "copy-onto-existing",
        "prune",
        "prune-delete",
        "delete-thread",
        "delete-for-runs",
        "delete-checkpoints",
        "compact",
    ],
)
def test_after_each_change_it_still_reads_as_memory(recording, make, operation):
    memory = replay(recording, MemorySaver())
    saver = replay(recording, make())
    operation(memory)
    operation(saver)
    assert snapshot(saver) == snapshot(memory)


def test_a_pruned_thread_keeps_its_messages(make):
    saver = make()
    agent, _ = build(saver=saver)
    ask(agent, "t", "Refund $250")
    agent.invoke(None, cfg("t"))
    before = saver.get_state("t").values["messages"]
    saver.prune(["t"])
    assert len(saver.get_state_history("t")) == 1
    assert saver.get_state("t").values["messages"] == before


def test_a_write_that_does_not_continue_the_head_is_refused(make):
    saver = make()
    agent, _ = build(saver=saver)
    ask(agent, "t", "Refund $250")
    head = saver.get_tuple(cfg("t"))
    parent = head.parent_config["configurable"]["checkpoint_id"]
    with pytest.raises(ThreadConflict, match=parent):
        saver.put(
            head.config,
            dict(head.checkpoint, id=str(uuid.uuid1())),
            {},
            {},
            expected_head=parent,
        )
    with pytest.raises(ThreadConflict):
        saver.put(cfg("t"), dict(head.checkpoint, id="x"), {}, {}, expected_head=None)
    assert saver.get_tuple(cfg("t")).checkpoint["id"] == head.checkpoint["id"]


def test_of_many_threads_continuing_one_head_exactly_one_wins(make):
    from concurrent.futures import ThreadPoolExecutor

    from agentmatic import ids

    saver = make()
    agent, _ = build(saver=saver)
    ask(agent, "t", "Refund $250")
    head = saver.get_tuple(cfg("t"))

    def attempt(_n: int) -> str:
        try:
            saver.put(
                head.config,
                dict(head.checkpoint, id=ids.checkpoint_id()),
                {"source": "update", "step": 9},
                {},
                expected_head=head.checkpoint["id"],
            )
        except ThreadConflict:
            return "conflict"
        return "ok"

    with ThreadPoolExecutor(8) as pool:
        outcomes = sorted(pool.map(attempt, range(8)))
    assert outcomes == ["conflict"] * 7 + ["ok"]
    assert len(saver.get_state_history("t")) == len([c for c in saver.list(cfg("t"))])


def test_leases_are_exclusive_until_released_or_expired(make):
    import time

    saver = make()
    assert saver.acquire_lease("t", "a", 30)
    assert saver.acquire_lease("t", "a", 30)
    assert not saver.acquire_lease("t", "b", 30)
    saver.release_lease("t", "b")
    assert not saver.acquire_lease("t", "b", 30)
    saver.release_lease("t", "a")
    assert saver.acquire_lease("t", "b", 0.2)
    time.sleep(0.3)
    assert saver.acquire_lease("t", "a", 30)


def corrupt(kind: str, saver: Any, thread_id: str, cid: str, body: bytes) -> None:
    if kind == "redis":
        saver.client.hset(f"{saver.prefix}:t:{thread_id}:cp", f"\x1f{cid}", body)
    else:
        saver.client.put_object(
            Bucket=BUCKET, Key=saver._cp_key(thread_id, "", cid), Body=body
        )


@pytest.mark.parametrize(
    "body",
    [b"", b"\xc1", b"\x93\xa7msgpack\xc4\x03abc\xc0", b"not msgpack at all" * 10],
    ids=["empty", "invalid", "truncated-value", "text"],
)
def test_corrupt_stored_bytes_give_an_error_naming_the_checkpoint(make, body):
    saver = make()
    agent, _ = build(saver=saver)
    ask(agent, "t", "Refund $250")
    cid = saver.get_tuple(cfg("t")).checkpoint["id"]
    corrupt(make.kind, saver, "t", cid, body)
    with pytest.raises(CorruptCheckpoint, match=cid) as raised:
        saver.get_tuple(cfg("t"))
    assert raised.value.thread_id == "t"
    with pytest.raises(CorruptCheckpoint, match=cid):
        list(saver.list(cfg("t")))
    with pytest.raises(CorruptCheckpoint, match=cid):
        saver.get_state_history("t")


@dataclasses.dataclass
class Unlisted:
    """A type no saver was told to allow."""

    name: str


def test_a_type_off_the_allow_list_is_refused_by_name_and_shown_inert(make):
    from agentmatic.checkpoint.serde import OpaqueValue
    from agentmatic.errors import DisallowedType

    saver = make()
    agent, _ = build(saver=saver)
    ask(agent, "t", "Refund $250")
    head = saver.get_tuple(cfg("t"))
    write = [("__interrupt__", [Unlisted("x")])]
    with pytest.raises(DisallowedType, match="Unlisted"):
        saver.put_writes(head.config, write, "task-u")

    allowed = type(saver)(**_same_place(saver), allow=[Unlisted])
    allowed.put_writes(head.config, write, "task-u")
    values = [
        v
        for _t, c, v in allowed.get_tuple(cfg("t")).pending_writes
        if c == "__interrupt__"
    ]
    assert [Unlisted("x")] in values
    with pytest.raises(DisallowedType, match="Unlisted"):
        saver.get_tuple(cfg("t"))
    light = saver.get_state("t", values=False)
    assert any(
        isinstance(item, OpaqueValue) and item.type_name.endswith("Unlisted")
        for i in light.interrupts
        for item in (i.value if isinstance(i.value, list) else [i.value])
    )


def _same_place(saver: Any) -> dict[str, Any]:
    if hasattr(saver, "bucket"):
        return {"bucket": saver.bucket, "prefix": saver.prefix}
    return {"client": saver.client, "prefix": saver.prefix}


def test_redis_refuses_ids_that_would_break_its_index(redis_saver):
    # S3 keys percent-encode every id; Redis members are joined by \x1f.
    with pytest.raises(ValueError, match="x1f"):
        redis_saver.put(thread_config("a\x1fb"), {"id": "1"}, {}, {})
    with pytest.raises(ValueError, match="x1f"):
        redis_saver.get_tuple(thread_config("t", "a\x1fb"))


def test_odd_thread_ids_round_trip(make):
    saver = make()
    for tid in ["a/b", "..", "%", "ü ñ 💸", "t:cp", "x" * 200]:
        config = saver.put(
            thread_config(tid),
            {"v": 4, "id": str(uuid.uuid1()), "channel_values": {"k": tid}},
            {"source": "input", "step": -1},
            {},
            expected_head=NO_CHECK,
        )
        assert saver.get_tuple(config).checkpoint["channel_values"]["k"] == tid
        assert tid in set(saver.thread_ids())
        assert saver.list_threads(limit=100).threads


def test_retention_leaves_an_unreadable_thread_whole_and_compacts_the_rest(make):
    import ormsgpack

    saver = make()
    agent, _ = build(saver)
    for thread in ("good", "bad"):
        ask(agent, thread, "Refund $40")
        ask(agent, thread, "Refund $50")
    bad = saver.get_state_history("bad")
    good = len(saver.get_state_history("good"))
    head = bad[0].checkpoint_id
    md, field = f"{saver.prefix}:t:bad:md", f"\x1f{head}"
    key = None if make.kind == "redis" else saver._manifest_key("bad", "")

    def damage(broken: bool) -> None:
        if make.kind == "redis":
            saver.client.hset(md, field, b"\xc1" if broken else original)
            return
        body = original
        if broken:
            manifest = ormsgpack.unpackb(original)
            entry = next(e for e in manifest["entries"] if e["id"] == head)
            entry["meta"] = ["msgpack", b"\xc1"]
            body = ormsgpack.packb(manifest)
        saver.client.put_object(Bucket=BUCKET, Key=key, Body=body)
        saver._manifests.clear()

    original = (
        saver.client.hget(md, field)
        if key is None
        else saver.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    )
    damage(True)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    report = compact_sync(saver, retention_days=1, now=later)
    assert report.threads_unreadable == 1
    assert report.deleted == good - len(saver.get_state_history("good")) > 0
    damage(False)
    assert [s.checkpoint_id for s in saver.get_state_history("bad")] == [
        s.checkpoint_id for s in bad
    ]
