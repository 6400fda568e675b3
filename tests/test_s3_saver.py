"""What only S3Saver promises: conditional writes, and few requests per read."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import botocore.exceptions
import pytest

from agentmatic import Agent, HumanMessage
from agentmatic.checkpoint.base import INTERRUPT, thread_config
from agentmatic.checkpoint.s3 import S3Saver
from agentmatic.errors import SerializationError, ThreadConflict
from agentmatic.llms import LoopModel
from tests.s3server import BUCKET
from tests.test_postgres_saver import noop
from tests.test_runtime import ask, build, cfg


def counting(saver: S3Saver) -> Counter:
    """Count the saver's S3 requests by operation."""
    counts: Counter = Counter()
    lock = threading.Lock()

    def count(event_name: str, **_: Any) -> None:
        with lock:
            counts[event_name.rsplit(".", 1)[-1]] += 1

    saver.client.meta.events.register("before-call.s3.*", count)
    return counts


def synthetic(saver: S3Saver, thread_id: str, steps: int) -> list[str]:
    ids, parent = [], None
    for step in range(steps):
        cid = f"{step:08d}-0000-6000-8000-000000000000"
        saver.put(
            thread_config(thread_id, parent),
            {
                "v": 4,
                "id": cid,
                "ts": f"2026-01-01T00:00:{step // 1000:02d}.{step % 1000:06d}+00:00",
                "channel_values": {},
                "channel_versions": {"messages": step},
                "versions_seen": {},
            },
            {"source": "loop", "step": step},
            {},
        )
        saver.put_writes(
            thread_config(thread_id, cid),
            [("messages", [{"type": "ai", "content": "x" * 400}])],
            f"task-{step}",
        )
        ids.append(cid)
        parent = cid
    return ids


def test_the_server_decides_conditional_writes(s3_server):
    client = s3_server.client()
    client.put_object(Bucket=BUCKET, Key="cond/a", Body=b"1", IfNoneMatch="*")
    with pytest.raises(botocore.exceptions.ClientError, match="PreconditionFailed"):
        client.put_object(Bucket=BUCKET, Key="cond/a", Body=b"2", IfNoneMatch="*")
    etag = client.head_object(Bucket=BUCKET, Key="cond/a")["ETag"]
    with pytest.raises(botocore.exceptions.ClientError, match="PreconditionFailed"):
        client.put_object(Bucket=BUCKET, Key="cond/a", Body=b"3", IfMatch='"0"')
    client.put_object(Bucket=BUCKET, Key="cond/a", Body=b"4", IfMatch=etag)
    assert client.get_object(Bucket=BUCKET, Key="cond/a")["Body"].read() == b"4"
    client.delete_object(Bucket=BUCKET, Key="cond/a")


def test_a_history_without_values_reads_the_index_only(s3_saver, s3_prefix):
    synthetic(s3_saver, "long", 200)
    reader = S3Saver(prefix=s3_prefix, page_size=8)
    counts = counting(reader)
    states = reader.get_state_history("long", values=False)
    requests = dict(counts)
    assert [s.metadata["step"] for s in states] == list(reversed(range(200)))
    pages = len(reader._load("long", "", cached=True)[1]["pages"])
    assert requests == {"GetObject": 1 + pages}
    print(f"\n200-checkpoint history without values: {1 + pages} GETs")

    counts.clear()
    newest = reader.get_state_history("long", values=False, limit=5)
    assert len(newest) == 5
    assert sum(counts.values()) <= 2
    reader.close()


def test_listing_threads_costs_one_listing_and_one_read_per_thread(s3_saver):
    agent, _ = build(saver=s3_saver)
    for n in range(5):
        ask(agent, f"t{n}", "Refund $250")
    counts = counting(s3_saver)
    page = s3_saver.list_threads(limit=3)
    assert [t.thread_id for t in page.threads] == ["t4", "t3", "t2"]
    assert page.threads[0].next == ("transfer_funds",)
    assert counts["ListObjectsV2"] == 1
    assert counts["GetObject"] <= 4
    rest = s3_saver.list_threads(limit=3, cursor=page.next_cursor)
    assert [t.thread_id for t in rest.threads] == ["t1", "t0"]
    assert rest.next_cursor is None


def test_two_savers_writing_one_thread_lose_no_checkpoint(s3_server, s3_prefix):
    savers = [S3Saver(prefix=s3_prefix, page_size=4) for _ in range(4)]
    base = savers[0].put(
        thread_config("t"), {"v": 4, "id": "0" * 8, "channel_values": {}}, {}, {}
    )

    def write(n: int) -> None:
        saver = savers[n % 4]
        saver.put(base, {"v": 4, "id": f"{n + 1:08d}", "channel_values": {}}, {}, {})

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(40)))
    ids = [t.checkpoint["id"] for t in savers[1].list(cfg("t"))]
    assert ids == [f"{n:08d}" for n in range(40, -1, -1)]
    assert savers[2].get_tuple(cfg("t")).checkpoint["id"] == f"{40:08d}"
    for saver in savers:
        saver.close()


def test_concurrent_writes_to_one_checkpoint_all_land(s3_saver):
    config = s3_saver.put(
        thread_config("t"), {"v": 4, "id": "0" * 8, "channel_values": {}}, {}, {}
    )

    def write(n: int) -> None:
        s3_saver.put_writes(config, [(INTERRUPT, {"n": n})], f"task-{n}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(24)))
    stored = s3_saver.get_tuple(config).pending_writes
    assert sorted(v["n"] for _t, _c, v in stored) == list(range(24))
    light = s3_saver.get_state_history("t", values=False)[0]
    assert sorted(i.value["n"] for i in light.interrupts) == list(range(24))


def test_the_loser_of_a_race_leaves_no_checkpoint_behind(s3_saver, s3_server):
    agent, _ = build(saver=s3_saver)
    ask(agent, "t", "Refund $250")
    head = s3_saver.get_tuple(cfg("t"))
    parent = head.parent_config["configurable"]["checkpoint_id"]
    with pytest.raises(ThreadConflict):
        s3_saver.put(
            head.config,
            dict(head.checkpoint, id="f" * 36),
            {},
            {},
            expected_head=parent,
        )
    keys = [
        o["Key"]
        for o in s3_server.client()
        .list_objects_v2(Bucket=BUCKET, Prefix=s3_saver.prefix)
        .get("Contents", [])
    ]
    assert not any("f" * 36 in key for key in keys)


def test_a_corrupt_index_is_refused_by_name(s3_saver, s3_server):
    agent, _ = build(saver=s3_saver)
    ask(agent, "t", "Refund $40")
    s3_server.client().put_object(
        Bucket=BUCKET, Key=s3_saver._manifest_key("t", ""), Body=b"\xc1garbage"
    )
    fresh = S3Saver(prefix=s3_saver.prefix)
    with pytest.raises(SerializationError, match="thread 't'"):
        fresh.get_state_history("t", values=False)
    with pytest.raises(SerializationError, match="thread 't'"):
        fresh.get_tuple(cfg("t"))
    fresh.close()


def test_a_lease_is_won_by_one_of_two_savers(s3_server, s3_prefix):
    first, second = S3Saver(prefix=s3_prefix), S3Saver(prefix=s3_prefix)
    with ThreadPoolExecutor(2) as pool:
        won = list(
            pool.map(
                lambda pair: pair[0].acquire_lease("t", pair[1], 30),
                [(first, "a"), (second, "b")],
            )
        )
    assert sorted(won) == [False, True]
    winner, owner = (first, "a") if won[0] else (second, "b")
    winner.release_lease("t", owner)
    assert (second if winner is first else first).acquire_lease("t", "c", 30)
    first.close()
    second.close()


def test_checkpoints_written_out_of_order_list_in_order(s3_saver):
    for cid in ["05", "01", "09", "03", "07", "02", "08", "04", "06"]:
        s3_saver.put(
            thread_config("t"), {"v": 4, "id": cid, "channel_values": {}}, {}, {}
        )
    ids = [t.checkpoint["id"] for t in s3_saver.list(cfg("t"))]
    assert ids == ["09", "08", "07", "06", "05", "04", "03", "02", "01"]
    before = s3_saver.list(cfg("t"), before=cfg("t", "06"), limit=3)
    assert [t.checkpoint["id"] for t in before] == ["05", "04", "03"]
    light = s3_saver.get_state_history("t", values=False, before="04")
    assert [s.checkpoint_id for s in light] == ["03", "02", "01"]


def test_a_resume_fetches_the_checkpoints_since_the_snapshot_at_once(
    s3_saver, s3_prefix
):
    # 131 checkpoints: the message log's last snapshot is about 30 back.
    model = LoopModel("noop", steps=65, payload_bytes=40)
    agent = Agent.builder("loop").llm(model).tools([noop]).checkpoint(s3_saver).build()
    config = {"configurable": {"thread_id": "t"}, "recursion_limit": 1000}
    agent.invoke({"messages": [HumanMessage("go")]}, config)
    history = s3_saver.get_state_history("t")
    old = history[100].checkpoint_id
    agent.update_state(thread_config("t", old), {"messages": [HumanMessage("fork")]})
    expected = {
        s.checkpoint_id: [m.id for m in s.values.get("messages", [])]
        for s in s3_saver.get_state_history("t")
    }
    fresh = S3Saver(bucket=BUCKET, prefix=s3_prefix, page_size=8)
    one_by_one: list[Any] = []
    read = fresh.get_tuple

    def get_tuple(config: Any) -> Any:
        one_by_one.append(config)
        return read(config)

    fresh.get_tuple = get_tuple  # type: ignore[method-assign]
    for state in (history[0], history[40], history[129]):
        got = fresh.get_state("t", state.checkpoint_id)
        ids = [m.id for m in got.values.get("messages", [])]
        assert ids == expected[state.checkpoint_id]
    head = fresh.get_state("t")
    assert head.values["messages"][-1].content == "fork"
    assert [m.id for m in head.values["messages"]] == expected[head.checkpoint_id]
    # One read per state asked for; the checkpoints behind each came by index.
    assert len(one_by_one) == 4
    fresh.close()
