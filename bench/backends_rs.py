"""The 1,000-superstep workload on Redis and S3: `python -m bench.backends_rs`.

Prints the same columns as `python -m bench`, plus what one history and
one page of threads cost in requests: Redis commands, S3 requests. For S3
it also times a cold resume (the newest state with its values, read by a
fresh saver); `--latency-ms N` adds N ms to each of its requests, as a
remote store would.

Redis: ``--redis URL`` (default ``redis://127.0.0.1:6379/0``; the run uses
its own key prefix and removes it). S3: the endpoint in ``AWS_ENDPOINT_URL``
with the bucket ``--bucket``; without an endpoint the run starts moto's
server on 127.0.0.1 (tests/s3server.py), so it never reaches AWS.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from collections import Counter
from typing import Any

from bench.__main__ import Result, fmt, run_agentmatic


def redis_run(url: str, steps: int) -> tuple[Result, str]:
    import redis

    from agentmatic.checkpoint.redis import RedisSaver
    from tests.redisdb import CountingConnection

    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    pool = redis.ConnectionPool.from_url(url, connection_class=CountingConnection)
    saver = RedisSaver(prefix=prefix, client=redis.Redis(connection_pool=pool))
    try:
        result = run_agentmatic("redis", saver, steps)
        log: list[Any] = []
        CountingConnection.log = log
        saver.get_state_history("bench-redis", values=False)
        history = len(log)
        log.clear()
        saver.list_threads()
        listing = len(log)
        CountingConnection.log = None
        note = f"meta history {history} commands, list_threads {listing} commands"
        return result, note
    finally:
        CountingConnection.log = None
        keys = list(saver.client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            saver.client.delete(*keys[start : start + 500])


def s3_run(bucket: str, steps: int, latency_ms: float = 0) -> tuple[Result, str]:
    from agentmatic.checkpoint.s3 import S3Saver

    server = None
    if not os.environ.get("AWS_ENDPOINT_URL"):
        from tests.s3server import ENV, start_server

        server = start_server()
        os.environ.update(ENV)
        os.environ["AWS_ENDPOINT_URL"] = server.endpoint
        server.client().create_bucket(Bucket=bucket)
    saver = S3Saver(bucket=bucket, prefix=f"bench-{uuid.uuid4().hex[:8]}")
    counts: Counter = Counter()
    saver.client.meta.events.register(
        "before-call.s3.*",
        lambda event_name, **_: counts.update([event_name.rsplit(".", 1)[-1]]),
    )
    try:
        result = run_agentmatic("s3", saver, steps)
        reader = S3Saver(bucket=bucket, prefix=saver.prefix)
        reader.client.meta.events.register(
            "before-call.s3.*",
            lambda event_name, **_: counts.update([event_name.rsplit(".", 1)[-1]]),
        )
        counts.clear()
        started = time.perf_counter()
        reader.get_state_history("bench-s3", values=False)
        cold = time.perf_counter() - started
        history = sum(counts.values())
        counts.clear()
        reader.list_threads()
        listing = sum(counts.values())
        reader.close()
        # A resume: the newest state with its values, read by a fresh process.
        resumer = S3Saver(bucket=bucket, prefix=saver.prefix)
        resumer.client.meta.events.register(
            "before-call.s3.*",
            lambda event_name, **_: counts.update([event_name.rsplit(".", 1)[-1]]),
        )
        if latency_ms:
            resumer.client.meta.events.register(
                "before-send.s3.*", lambda **_: time.sleep(latency_ms / 1000)
            )
        counts.clear()
        started = time.perf_counter()
        resumer.get_state("bench-s3")
        resume = time.perf_counter() - started
        resumer.close()
        note = (
            f"cold meta history {history} requests in {cold * 1000:.0f} ms, "
            f"list_threads {listing} requests, cold resume "
            f"{sum(counts.values())} requests in {resume * 1000:.0f} ms"
            + (f" (+{latency_ms:g} ms a request)" if latency_ms else "")
        )
        return result, note
    finally:
        saver.delete_thread("bench-s3")
        saver.close()
        if server is not None:
            server.process.terminate()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backends_rs")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--only", default="redis,s3")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--bucket", default="agents")
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0,
        help="added to every request of the S3 resume, as a remote store would",
    )
    args = parser.parse_args(argv)
    wanted = set(args.only.split(","))
    rows = []
    if "redis" in wanted:
        rows.append(redis_run(args.redis, args.steps))
    if "s3" in wanted:
        rows.append(s3_run(args.bucket, args.steps, args.latency_ms))
    for r, note in rows:
        print(
            f"{r.name:<18} steps {r.steps:>5}  {fmt(r.steps_per_s)} steps/s  "
            f"101-200 {fmt(r.early_ms)} ms  901-1000 {fmt(r.late_ms)} ms  "
            f"history {fmt(r.history_s)} s  meta {fmt(r.meta_history_s)} s\n"
            f"{'':<18} {note}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
