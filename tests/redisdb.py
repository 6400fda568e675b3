"""The machine's Redis for tests: a fresh key prefix per test, removed afterwards.

Register with ``pytest_plugins = ["tests.redisdb"]``. Tests use the Redis
at ``AGENTMATIC_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``).
With ``CI=true`` an unreachable Redis fails the tests that need it;
elsewhere they are skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

REDIS_URL = os.environ.get("AGENTMATIC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class CountingConnection(redis.Connection):
    """A connection that records every command it sends, for counting."""

    log: list[tuple[Any, ...]] | None = None

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        if CountingConnection.log is not None:
            CountingConnection.log.append(args)
        super().send_command(*args, **kwargs)

    def pack_commands(self, commands: Any) -> Any:
        commands = list(commands)
        if CountingConnection.log is not None:
            CountingConnection.log.extend(tuple(c) for c in commands)
        return super().pack_commands(commands)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """Return the Redis URL, once it answers a PING."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis at {REDIS_URL} is not reachable: {exc}")
        pytest.skip(f"Redis at {REDIS_URL} is not reachable: {exc}")
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other test uses; its keys are deleted afterwards."""
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    # Only test clean-up ever scans.
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])
    client.close()


@pytest.fixture
def redis_saver(redis_url: str, redis_prefix: str) -> Iterator[Any]:
    from agentmatic.checkpoint.redis import RedisSaver

    saver = RedisSaver(redis_url, prefix=redis_prefix)
    yield saver
    saver.close()
