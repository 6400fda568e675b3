"""What only RedisSaver promises: TTLs on every key, no scans, one script per write."""

from __future__ import annotations

import re
import time
from typing import Any

import redis

from agentmatic.checkpoint import redis as redis_module
from agentmatic.checkpoint.redis import RedisSaver
from tests.redisdb import CountingConnection
from tests.test_runtime import ask, build, cfg


def keys_of(saver: RedisSaver) -> list[str]:
    # Tests may scan; the saver never does.
    return sorted(k.decode() for k in saver.client.scan_iter(match=f"{saver.prefix}:*"))


def paid(saver: RedisSaver, thread_id: str = "t") -> None:
    agent, _ = build(saver=saver)
    ask(agent, thread_id, "Refund $250")
    agent.invoke(None, cfg(thread_id))


def test_every_key_gets_the_ttl_on_every_write(redis_url, redis_prefix):
    saver = RedisSaver(redis_url, prefix=redis_prefix, ttl_seconds=60)
    paid(saver)
    keys = keys_of(saver)
    assert {f"{redis_prefix}:t:t:{n}" for n in ("cp", "md", "idx", "w", "meta")} <= set(
        keys
    )
    assert f"{redis_prefix}:agent:payments" in keys
    ttls = {k: saver.client.pttl(k) for k in keys}
    assert all(0 < ttl <= 60_000 for ttl in ttls.values()), ttls

    # Shorten every TTL, then write once: the write renews all of them.
    for key in keys:
        saver.client.pexpire(key, 5_000)
    head = saver.get_tuple(cfg("t"))
    saver.put_writes(head.config, [("note", "x")], "task-x")
    renewed = {k: saver.client.pttl(k) for k in keys if ":t:t:" in k}
    assert all(ttl > 50_000 for ttl in renewed.values()), renewed
    saver.put(
        head.config, dict(head.checkpoint, id=head.checkpoint["id"][:-1] + "f"), {}, {}
    )
    assert all(saver.client.pttl(k) > 50_000 for k in keys_of(saver))


def test_without_a_ttl_nothing_expires(redis_saver):
    paid(redis_saver)
    assert all(redis_saver.client.pttl(k) == -1 for k in keys_of(redis_saver))


def test_an_expired_thread_leaves_the_indexes(redis_url, redis_prefix):
    saver = RedisSaver(redis_url, prefix=redis_prefix, ttl_seconds=1)
    paid(saver, "old")
    old_id = saver.get_tuple(cfg("old")).checkpoint["id"]
    time.sleep(1.2)
    assert not any(":t:old:" in k for k in keys_of(saver))
    # Later writes sweep what the expired thread left in the shared indexes.
    saver = RedisSaver(redis_url, prefix=redis_prefix, ttl_seconds=60)
    for n in range(6):
        paid(saver, f"new-{n}")
    assert [t.thread_id for t in saver.list_threads(limit=100).threads] == [
        f"new-{n}" for n in reversed(range(6))
    ]
    assert saver.find_checkpoint(old_id) is None
    assert "old" not in set(saver.thread_ids())
    for name in ("loc", "runs", "all", "threads"):
        members = saver.client.zrange(f"{redis_prefix}:{name}", 0, -1)
        assert not any(b"\x1fold" in m or m == b"old" for m in members), name


def counted(redis_url: str, prefix: str) -> tuple[RedisSaver, list[tuple[Any, ...]]]:
    log: list[tuple[Any, ...]] = []
    pool = redis.ConnectionPool.from_url(redis_url, connection_class=CountingConnection)
    saver = RedisSaver(prefix=prefix, client=redis.Redis(connection_pool=pool))
    CountingConnection.log = log
    return saver, log


def test_history_and_listing_never_scan(redis_url, redis_prefix):
    saver, log = counted(redis_url, redis_prefix)
    try:
        for n in range(3):
            paid(saver, f"t{n}")
        log.clear()
        saver.get_state_history("t1")
        saver.get_state_history("t1", values=False)
        saver.list_threads(limit=2)
        saver.list_threads(agent="payments")
        saver.find_checkpoint(saver.get_tuple(cfg("t2")).checkpoint["id"])
        list(saver.thread_ids())
        list(saver.list(None, limit=5))
        commands = {str(args[0]).upper() for args in log}
    finally:
        CountingConnection.log = None
    assert "EVALSHA" in commands
    assert not commands & {"SCAN", "KEYS", "HSCAN", "ZSCAN", "SSCAN"}
    # Nor does any script the saver runs.
    for name, source in vars(redis_module).items():
        if name.startswith("_") and isinstance(source, str) and "redis.call" in source:
            assert not re.search(r'redis\.call\("(SCAN|KEYS|[HSZ]SCAN)"', source), name


def test_a_long_history_costs_a_command_per_page(redis_url, redis_prefix):
    from agentmatic.checkpoint.base import thread_config

    saver, log = counted(redis_url, redis_prefix)
    try:
        parent = None
        for step in range(1000):
            config = thread_config("long", parent)
            checkpoint = {
                "v": 4,
                "id": f"{step:08d}-0000-6000-8000-000000000000",
                "ts": f"2026-01-01T00:00:00.{step:06d}+00:00",
                "channel_values": {},
                "channel_versions": {"messages": step},
                "versions_seen": {},
            }
            saver.put(config, checkpoint, {"source": "loop", "step": step}, {})
            saver.put_writes(
                thread_config("long", checkpoint["id"]),
                [("messages", [{"type": "ai", "content": "x" * 400}])],
                f"task-{step}",
            )
            parent = checkpoint["id"]
        log.clear()
        started = time.perf_counter()
        states = saver.get_state_history("long", values=False)
        elapsed = time.perf_counter() - started
        commands = len(log)
    finally:
        CountingConnection.log = None
    assert len(states) == 1000
    assert commands <= 1000 // 128 + 2
    print(
        f"\n1,000-checkpoint history without values: {commands} commands, "
        f"{elapsed * 1000:.0f} ms"
    )


def test_a_thread_is_written_by_one_script_per_call(redis_url, redis_prefix):
    saver, log = counted(redis_url, redis_prefix)
    try:
        agent, _ = build(saver=saver)
        log.clear()
        ask(agent, "t", "Refund $40")
        writes = [a for a in log if str(a[0]).upper() in ("EVALSHA", "EVAL")]
        plain = [
            a
            for a in log
            if str(a[0]).upper() in ("SET", "HSET", "ZADD", "DEL", "HDEL", "ZREM")
        ]
    finally:
        CountingConnection.log = None
    assert writes
    assert plain == []
