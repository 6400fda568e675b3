"""The seed's Postgres snippets, run as written.

`PostgresSaver.from_env()` reads ``AGENTMATIC_POSTGRES_URL``, pointed at a
fresh database of the test server; `OpenAI()` talks to the `fake_openai`
server; `POSTGRES_URL` in the compact and upgrade snippets is that
database's URL. The retention SQL is sent as the seed prints it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg

from agentmatic.checkpoint.postgres import PostgresSaver
from tests import seed
from tests.test_seed import SENT, build, namespace

FIXTURE = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "fixtures"
    / "langgraph"
    / "langgraph-shared-postgres.sql"
)


def age_everything_but_the_newest(url: str, thread_id: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "UPDATE agentmatic_checkpoints SET created_at = now() - interval "
            "'40 days' WHERE thread_id = %s AND checkpoint_id < (SELECT "
            "max(checkpoint_id) FROM agentmatic_checkpoints WHERE thread_id = %s)",
            (thread_id, thread_id),
        )


async def test_the_hitl_snippet_runs_on_postgres_from_env(
    fake_openai, pg_url, monkeypatch
):
    monkeypatch.setenv("AGENTMATIC_POSTGRES_URL", pg_url)
    SENT.clear()
    printed: list[tuple] = []
    # The seed imports PostgresSaver in its backends snippet.
    ns = namespace(PostgresSaver=PostgresSaver, print=lambda *a: printed.append(a))

    await seed.run_snippet(seed.HITL, ns)

    assert printed == [(("transfer_funds",),)]
    assert isinstance(ns["agent"].saver, PostgresSaver)
    assert [s[1] for s in SENT] == [250.0]
    state = await ns["agent"].aget_state({"configurable": {"thread_id": "case-42"}})
    assert state.next == ()
    ns["agent"].saver.close()


async def test_the_compact_snippet_runs_as_written(fake_openai, pg_url):
    saver = PostgresSaver(pg_url)
    agent = build(saver)
    config = {"configurable": {"thread_id": "case-42"}}
    await agent.ainvoke({"messages": [seed_message()]}, config)
    await agent.ainvoke(None, config)
    before = len(saver.get_state_history("case-42"))
    age_everything_but_the_newest(pg_url, "case-42")

    await seed.run_snippet(seed.COMPACT, namespace(POSTGRES_URL=pg_url))

    history = saver.get_state_history("case-42")
    assert before > 1 and len(history) == 1
    assert history[0].values["messages"][-1].type == "ai"
    saver.close()


async def test_the_upgrade_snippet_runs_as_written(pg_url):
    load_fixture(pg_url)

    await seed.run_snippet(seed.UPGRADE, namespace(POSTGRES_URL=pg_url))
    await seed.run_snippet(seed.UPGRADE, namespace(POSTGRES_URL=pg_url))

    saver = PostgresSaver(pg_url)
    ids = sorted(t.thread_id for t in saver.list_threads().threads)
    assert ids == ["case-42", "case-43", "case-done"]
    saver.close()


async def test_the_retention_sql_runs_as_written(fake_openai, pg_url):
    saver = PostgresSaver(pg_url)
    agent = build(saver)
    config = {"configurable": {"thread_id": "case-42"}}
    await agent.ainvoke({"messages": [seed_message()]}, config)
    await agent.ainvoke(None, config)
    newest = saver.get_state("case-42")
    age_everything_but_the_newest(pg_url, "case-42")

    with psycopg.connect(pg_url, autocommit=True) as conn:
        deleted = conn.execute(seed.RETENTION_SQL).rowcount

    assert deleted > 0
    fresh = PostgresSaver(pg_url)
    again = fresh.get_state("case-42")
    assert again.checkpoint_id == newest.checkpoint_id
    assert [m.id for m in again.values["messages"]] == [
        m.id for m in newest.values["messages"]
    ]
    saver.close()
    fresh.close()


def seed_message():
    from agentmatic import HumanMessage

    return HumanMessage("Refund order #42 for $250.")


def load_fixture(url: str) -> None:
    subprocess.run(
        ["psql", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", str(FIXTURE)],
        check=True,
        capture_output=True,
        timeout=60,
    )
