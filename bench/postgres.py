"""Postgres workloads for `python -m bench`: ours, LangGraph's, DBOS Transact.

Each workload gets a database of its own, created on the server `--postgres`
names (default ``AGENTMATIC_POSTGRES_URL``) and dropped afterwards. Both
sides are durable: the server's ``synchronous_commit`` stays on, every table
is logged, LangGraph runs with ``durability="sync"``.

Besides steps per second, each Postgres workload notes the bytes its tables
hold (``pg_total_relation_size``, indexes and TOAST included) against the
serialized bytes of the messages the run produced.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

OUR_TABLES = [
    "agentmatic_checkpoints",
    "agentmatic_writes",
    "agentmatic_blobs",
    "agentmatic_chunks",
    "agentmatic_threads",
    "agentmatic_leases",
    "agentmatic_migrations",
]
LANGGRAPH_TABLES = [
    "checkpoints",
    "checkpoint_blobs",
    "checkpoint_writes",
    "checkpoint_migrations",
]


def reachable(url: str | None) -> bool:
    if not url:
        return False
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception:
        return False
    return True


@contextlib.contextmanager
def fresh_database(server: str) -> Iterator[str]:
    """Yield the URL of a new database on `server`, dropped afterwards."""
    import psycopg

    name = f"agentmatic_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(server)._replace(path="/" + name))
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def table_bytes(url: str, tables: list[str] | None = None, schema: str = "") -> int:
    """Return the total size of the tables (or of every table of a schema)."""
    import psycopg

    with psycopg.connect(url) as conn:
        if tables is not None:
            row = conn.execute(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind = 'r' AND c.relname = ANY(%s) "
                "AND n.nspname = 'public'",
                (tables,),
            ).fetchone()
        else:
            row = conn.execute(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind = 'r' AND n.nspname = %s",
                (schema,),
            ).fetchone()
    return int(row[0]) if row else 0


def bytes_note(stored: int, payload: int, steps: int) -> str:
    ratio = stored / payload if payload else 0.0
    per_step = stored / steps if steps else 0.0
    return (
        f"tables {stored / 1e6:,.2f} MB = {ratio:,.2f}x the {payload / 1e6:,.2f} MB "
        f"of messages ({per_step:,.0f} B/step)"
    )


def agentmatic_payload(messages: list[Any]) -> int:
    from agentmatic.checkpoint.serde import Serializer

    serde = Serializer()
    return sum(len(serde.dumps_typed(m)[1]) for m in messages)


def langgraph_payload(messages: list[Any]) -> int:
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    serde = JsonPlusSerializer()
    return sum(len(serde.dumps_typed(m)[1]) for m in messages)


def workloads(
    server: str | None,
    steps: int,
    run_agentmatic: Callable[..., Any],
    run_langgraph: Callable[..., Any],
) -> dict[str, Callable[[], Any]]:
    """Return the Postgres workloads, or none when the server is unreachable."""
    if not reachable(server):
        return {}
    assert server is not None
    out: dict[str, Callable[[], Any]] = {}

    def ours() -> Any:
        from agentmatic.checkpoint.postgres import PostgresSaver

        with fresh_database(server) as url:
            saver = PostgresSaver(url)
            saver.setup()
            result = run_agentmatic("postgres", saver, steps)
            state = saver.get_state("bench-postgres")
            messages = list(state.values.get("messages", [])) if state else []
            saver.close()
            stored = table_bytes(url, OUR_TABLES)
            result.note = bytes_note(stored, agentmatic_payload(messages), result.steps)
            return result

    out["agentmatic-postgres"] = ours

    try:
        from langgraph.checkpoint.postgres import PostgresSaver as LGPostgresSaver
    except ImportError:
        return out

    def langgraphs() -> Any:
        with fresh_database(server) as url:
            with LGPostgresSaver.from_conn_string(url) as checkpointer:
                checkpointer.setup()
                result, messages = _langgraph_run(
                    run_langgraph, "postgres", checkpointer, steps
                )
            stored = table_bytes(url, LANGGRAPH_TABLES)
            result.note = bytes_note(stored, langgraph_payload(messages), result.steps)
            return result

    out["langgraph-postgres"] = langgraphs

    def drop_in() -> Any:
        from agentmatic.checkpoint.postgres import PostgresSaver
        from agentmatic.compat.langgraph import LangGraphSaver

        with fresh_database(server) as url:
            saver = PostgresSaver(url)
            saver.setup()
            result, messages = _langgraph_run(
                run_langgraph, "on-agentmatic-pg", LangGraphSaver(saver), steps
            )
            result.name = "lg-on-agentmatic-pg"
            saver.close()
            stored = table_bytes(url, OUR_TABLES)
            result.note = bytes_note(stored, langgraph_payload(messages), result.steps)
            return result

    out["lg-on-agentmatic-pg"] = drop_in

    try:
        import dbos  # noqa: F401
    except ImportError:
        return out
    out["dbos-postgres"] = lambda: run_dbos(server, steps)
    return out


def _langgraph_run(
    run_langgraph: Callable[..., Any], name: str, checkpointer: Any, steps: int
) -> tuple[Any, list[Any]]:
    result = run_langgraph(name, checkpointer, steps)
    tup = checkpointer.get_tuple({"configurable": {"thread_id": f"lg-{name}"}})
    values = tup.checkpoint["channel_values"] if tup else {}
    return result, list(values.get("messages") or [])


def run_dbos(server: str, steps: int) -> Any:
    """A DBOS workflow of `steps` steps, each returning one ~400-byte message."""
    from dbos import DBOS

    from bench.__main__ import PAYLOAD_BYTES, Result, StepClock

    clock = StepClock()
    payload = "x" * (PAYLOAD_BYTES - 60)
    with fresh_database(server) as url:
        DBOS.destroy(destroy_registry=True)
        DBOS(config={"name": "agentmatic-bench", "system_database_url": url})

        @DBOS.step()
        def tool_step(n: int) -> dict[str, Any]:
            return {"role": "tool", "id": f"c{n}", "content": "ok:" + payload}

        @DBOS.workflow()
        def loop(count: int) -> int:
            for n in range(count):
                tool_step(n)
                clock.mark()
            return count

        DBOS.launch()
        try:
            start = time.perf_counter()
            clock.mark()
            loop(steps)
            seconds = time.perf_counter() - start
        finally:
            DBOS.destroy(destroy_registry=True)
        stored = table_bytes(url, schema="dbos")
    import json

    one = len(json.dumps({"role": "tool", "id": "c500", "content": "ok:" + payload}))
    result = Result(
        "dbos-postgres",
        steps,
        seconds,
        clock.window(101, 200),
        clock.window(901, 1000),
        None,
        None,
    )
    result.note = bytes_note(stored, one * steps, steps)
    return result
