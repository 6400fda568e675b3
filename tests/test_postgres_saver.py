"""PostgresSaver: schema, storage layout, retention, readers, the chain.

Every test runs on a database of its own (see tests/pg.py).
"""

from __future__ import annotations

import threading
import time
import uuid

import ormsgpack
import psycopg
import pytest

from agentmatic import Agent, AIMessage, HumanMessage, ToolCall, ToolMessage
from agentmatic.checkpoint.base import thread_config
from agentmatic.checkpoint.chain import verify
from agentmatic.checkpoint.postgres import PostgresSaver, compact_sync, lists, packing
from agentmatic.checkpoint.postgres.schema import LATEST
from agentmatic.checkpoint.serde import DeltaSnapshot
from agentmatic.errors import ConfigurationError, CorruptCheckpoint, ThreadConflict
from agentmatic.llms import LoopModel
from tests import seed
from tests.test_runtime import ask, build, cfg

KEY = b"k" * 32


@pytest.fixture
def saver(pg_url):
    opened = PostgresSaver(pg_url)
    yield opened
    opened.close()


def sql(url: str, query: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def noop(payload: str) -> str:
    """Do nothing, politely."""
    return "ok:" + payload[:40]


def looping(saver: PostgresSaver, steps: int, name: str = "loop"):
    model = LoopModel("noop", steps=steps, payload_bytes=80)
    return Agent.builder(name).llm(model).tools([noop]).checkpoint(saver).build()


def run_loop(saver: PostgresSaver, thread_id: str, steps: int) -> None:
    config = {"configurable": {"thread_id": thread_id}, "recursion_limit": 10_000}
    looping(saver, steps).invoke({"messages": [HumanMessage("go")]}, config)


def message_ids(saver: PostgresSaver, thread_id: str) -> dict[str, list[str]]:
    return {
        s.checkpoint_id: [m.id for m in s.values.get("messages", [])]
        for s in saver.get_state_history(thread_id)
    }


def age(url: str, thread_id: str, before: str, days: int = 40) -> None:
    """Make a thread's checkpoints older than `before` look `days` old."""
    sql(
        url,
        "UPDATE agentmatic_checkpoints SET created_at = now() - make_interval("
        "days => %s) WHERE thread_id = %s AND checkpoint_id < %s",
        (days, thread_id, before),
    )


# -- schema --------------------------------------------------------------------


def test_setup_applies_every_migration_once_even_when_racing(pg_url):
    savers = [PostgresSaver(pg_url) for _ in range(6)]
    results: list[list[int]] = []
    threads = [
        threading.Thread(target=lambda s=s: results.append(s.setup())) for s in savers
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    applied = sorted(n for r in results for n in r)
    assert applied == list(range(1, LATEST + 1))
    rows = sql(pg_url, "SELECT v FROM agentmatic_migrations ORDER BY v")
    assert [r[0] for r in rows] == list(range(1, LATEST + 1))
    assert savers[0].setup() == []
    for s in savers:
        s.close()


def test_the_saver_sets_itself_up_on_first_use(saver, pg_url):
    assert saver.get_tuple(cfg("nothing")) is None
    assert sql(pg_url, "SELECT count(*) FROM agentmatic_migrations")[0][0] == LATEST


def test_from_env_prefers_agentmatic_postgres_url(monkeypatch, pg_url):
    monkeypatch.setenv("AGENTMATIC_POSTGRES_URL", pg_url)
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    assert PostgresSaver.from_env().url == pg_url
    monkeypatch.delenv("AGENTMATIC_POSTGRES_URL")
    assert PostgresSaver.from_env().url.endswith("/none")


def test_from_env_without_a_url_says_which_variables_it_reads(monkeypatch):
    monkeypatch.delenv("AGENTMATIC_POSTGRES_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(ConfigurationError, match="AGENTMATIC_POSTGRES_URL"):
        PostgresSaver.from_env()


def test_an_unreachable_server_is_a_clear_error():
    saver = PostgresSaver("postgresql://nobody:secret@127.0.0.1:9/none", timeout=1)
    with pytest.raises(ConfigurationError, match="cannot connect") as info:
        saver.get_tuple(cfg("t"))
    assert "secret" not in str(info.value)
    saver.close()


# -- one writer per thread -------------------------------------------------------


def test_a_write_naming_a_stale_head_is_refused_and_stores_nothing(saver, pg_url):
    agent, _ = build(saver)
    ask(agent, "t", "Refund $40")
    history = saver.get_state_history("t")
    old = saver.get_tuple(cfg("t", history[2].checkpoint_id))
    before = sql(pg_url, "SELECT count(*) FROM agentmatic_checkpoints")
    with pytest.raises(ThreadConflict, match="another writer"):
        saver.put(
            old.config,
            dict(old.checkpoint, id=str(uuid.uuid4())),
            {},
            {},
            expected_head=old.checkpoint["id"],
        )
    assert sql(pg_url, "SELECT count(*) FROM agentmatic_checkpoints") == before


def _step_checkpoint(parent: dict, step: int) -> dict:
    from agentmatic import ids

    return dict(
        parent,
        id=ids.checkpoint_id(after=parent["id"]),
        channel_values={},
        channel_versions={"x": f"{step + 2:032}.0"},
    )


def _head_and_next_step(saver: PostgresSaver) -> tuple:
    """Run one refund on thread t; return its head and a checkpoint to follow it."""
    agent, _ = build(saver)
    ask(agent, "t", "Refund $40")
    head = saver.get_tuple(cfg("t"))
    return head, _step_checkpoint(head.checkpoint, 1)


def _write_rows(pg_url: str, checkpoint_id: str) -> list[tuple]:
    return sql(
        pg_url,
        "SELECT task_id, idx, channel FROM agentmatic_writes "
        "WHERE checkpoint_id = %s ORDER BY task_id, idx",
        (checkpoint_id,),
    )


def test_a_step_stores_its_writes_and_checkpoint_together(saver, pg_url):
    head, step = _head_and_next_step(saver)
    saver.put_step(
        head.config,
        [("task-a", "", [("x", 1), ("__error__", "boom")]), ("task-b", "", [])],
        step,
        {"source": "loop", "step": 99},
        {"x": step["channel_versions"]["x"]},
        expected_head=head.checkpoint["id"],
    )
    assert saver.head_id("t") == step["id"]
    assert _write_rows(pg_url, head.checkpoint["id"])[-2:] == [
        ("task-a", -1, "__error__"),
        ("task-a", 0, "x"),
    ]


def test_a_step_with_a_stale_head_stores_neither_writes_nor_checkpoint(saver, pg_url):
    agent, _ = build(saver)
    ask(agent, "t", "Refund $40")
    history = saver.get_state_history("t")
    old = saver.get_tuple(cfg("t", history[2].checkpoint_id))
    writes_before = _write_rows(pg_url, old.checkpoint["id"])
    before = sql(pg_url, "SELECT count(*) FROM agentmatic_checkpoints")
    with pytest.raises(ThreadConflict, match="another writer"):
        saver.put_step(
            old.config,
            [("task-late", "", [("x", 1)])],
            _step_checkpoint(old.checkpoint, 1),
            {},
            {},
            expected_head=old.checkpoint["id"],
        )
    assert sql(pg_url, "SELECT count(*) FROM agentmatic_checkpoints") == before
    assert _write_rows(pg_url, old.checkpoint["id"]) == writes_before


def test_a_step_whose_task_wrote_before_keeps_the_first_write(saver, pg_url):
    agent, _ = build(saver)
    ask(agent, "t", "Refund $40")
    head = saver.get_tuple(cfg("t"))
    saver.put_writes(head.config, [("x", "first")], "task-a")
    step = _step_checkpoint(head.checkpoint, 1)
    saver.put_step(
        head.config,
        [("task-a", "", [("x", "second"), ("y", "added")])],
        step,
        {},
        {"x": step["channel_versions"]["x"]},
    )
    assert saver.head_id("t") == step["id"]
    written = {
        (task, channel): value
        for task, channel, value in saver.get_tuple(head.config).pending_writes
    }
    assert written[("task-a", "x")] == "first"
    assert written[("task-a", "y")] == "added"


def test_a_step_from_an_older_checkpoint_starts_a_branch(saver, pg_url):
    agent, _ = build(saver)
    ask(agent, "t", "Refund $40")
    history = saver.get_state_history("t")
    old = saver.get_tuple(cfg("t", history[2].checkpoint_id))
    newest = history[0].checkpoint_id
    step = _step_checkpoint(dict(old.checkpoint, id=newest), 1)
    saver.put_step(
        old.config,
        [("task-branch", "", [("x", 1)])],
        step,
        {},
        {"x": step["channel_versions"]["x"]},
    )
    assert saver.head_id("t") == step["id"]
    assert saver.get_tuple(cfg("t", step["id"])).parent_config == old.config
    assert ("task-branch", 0, "x") in _write_rows(pg_url, old.checkpoint["id"])
    # The branch and everything before it still read back whole.
    assert len(saver.get_state_history("t")) == len(history) + 1


def test_concurrent_writers_on_one_head_give_one_winner(pg_url):
    setup = PostgresSaver(pg_url)
    agent, _ = build(setup)
    ask(agent, "t", "Refund $40")
    head = setup.get_tuple(cfg("t"))
    setup.close()
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def write() -> None:
        own = PostgresSaver(pg_url, pool_size=1)
        checkpoint = dict(head.checkpoint, id=_new_id())
        barrier.wait()
        try:
            own.put(
                head.config,
                checkpoint,
                {"step": 9},
                {},
                expected_head=head.checkpoint["id"],
            )
            outcomes.append("ok")
        except ThreadConflict:
            outcomes.append("conflict")
        own.close()

    threads = [threading.Thread(target=write) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict"] * 7 + ["ok"]


def test_a_database_newer_than_the_code_is_refused(pg_url):
    with PostgresSaver(pg_url) as first:
        first.setup()
    sql(pg_url, "INSERT INTO agentmatic_migrations (v) VALUES (%s)", (LATEST + 1,))
    refused = "newer than this Agentmatic knows"
    with (
        PostgresSaver(pg_url) as late,
        pytest.raises(ConfigurationError, match=refused),
    ):
        late.get_tuple(cfg("t"))
    with (
        PostgresSaver(pg_url) as late,
        pytest.raises(ConfigurationError, match=refused),
    ):
        late.setup()


def _new_id() -> str:
    from agentmatic import ids

    return ids.checkpoint_id()


# -- storage layout -----------------------------------------------------------------


def test_a_step_stores_only_the_message_it_added(saver, pg_url):
    run_loop(saver, "t", 150)
    rows = sql(
        pg_url,
        "SELECT count(*) FROM agentmatic_checkpoints "
        "WHERE carried_channel = 'messages'",
    )
    checkpoints = sql(pg_url, "SELECT count(*) FROM agentmatic_checkpoints")[0][0]
    # One message write per step, carried by the checkpoint the step wrote
    # (no write row of its own); no checkpoint row holds the log between
    # snapshots, and snapshots share their chunks.
    assert rows[0][0] == checkpoints - 1
    assert sql(pg_url, "SELECT count(*) FROM agentmatic_writes")[0][0] == 0
    blobs = sql(
        pg_url,
        "SELECT count(*) FROM agentmatic_blobs WHERE channel = 'messages'",
    )
    assert blobs[0][0] <= checkpoints // 100 + 2


def test_chunk_rows_fill_their_heap_pages(saver, pg_url):
    # A thread id as long as `lists.ROW_BYTES` allows: still two to a page.
    thread_id = "t" * 48
    run_loop(saver, thread_id, 400)
    rows = sql(
        pg_url,
        "SELECT (ctid::text::point)[0], length(data) FROM agentmatic_chunks ORDER BY 1",
    )
    pages: dict[float, int] = {}
    for page, _size in rows:
        pages[page] = pages.get(page, 0) + 1
    assert len(rows) >= 6
    assert all(size <= lists.row_share(2) for _page, size in rows)
    assert sorted(pages.values())[1:] == [2] * (len(pages) - 1)
    assert len(saver.get_state(thread_id).values["messages"]) > 380


def test_a_list_stored_in_eight_item_chunks_reads_and_grows(saver, pg_url, monkeypatch):
    # Rows written before chunks were closed by size: every chunk 8 items.
    def eight_items(encoded, start, known=None):
        if len(encoded) - start < lists.CHUNK_ITEMS:
            return None
        end = start + lists.CHUNK_ITEMS
        return end, packing.pack_chunk(lists.join_items(encoded[start:end]))

    monkeypatch.setattr(lists, "chunk_end", eight_items)
    run_loop(saver, "t", 150)
    before = message_ids(saver, "t")
    query = "SELECT hash, length(data) FROM agentmatic_chunks"
    old = dict(sql(pg_url, query))
    monkeypatch.undo()
    # The same thread goes on: its next snapshots cut chunks by size.
    run_loop(saver, "t", 150)
    after = message_ids(saver, "t")
    assert all(after[cid] == ids for cid, ids in before.items())
    assert len(after) > len(before)
    new = {key: size for key, size in sql(pg_url, query) if key not in old}
    assert old and new
    assert min(new.values()) > max(old.values())


def test_a_whole_list_written_at_every_step_is_stored_as_appends(saver, pg_url):
    thread = cfg("lg")
    messages: list = []
    parent = None
    for step in range(60):
        messages = [*messages, HumanMessage(f"message {step} " + "x" * 200).with_id()]
        version = f"{step + 2:032}.0.5"
        checkpoint = {
            "v": 4,
            "id": _new_id(),
            "ts": "2026-01-01T00:00:00+00:00",
            "channel_values": {"messages": messages},
            "channel_versions": {"messages": version},
            "versions_seen": {},
            "updated_channels": ["messages"],
        }
        config = thread if parent is None else parent
        parent = saver.put(config, checkpoint, {"step": step}, {"messages": version})
    stored = saver.get_tuple(thread)
    assert [m.id for m in stored.checkpoint["channel_values"]["messages"]] == [
        m.id for m in messages
    ]
    middle = list(saver.list(thread))[30]
    assert len(middle.checkpoint["channel_values"]["messages"]) == 30
    data = sql(pg_url, "SELECT sum(length(data)) FROM agentmatic_blobs")[0][0]
    whole = sum(len(saver.serde.dumps(m)) for m in messages)
    assert data < whole * 2  # LangGraph's layout would hold ~30x


def test_values_of_every_kind_round_trip(saver):
    values = {
        "small": 1,
        "text": "é" * 300,
        "blob": b"\x00\xff" * 500,
        "nested": {"a": [1, 2, {"b": None}], "c": "x" * 100},
        "snapshot": DeltaSnapshot([HumanMessage("hi").with_id()] * 40),
        "empty": [],
    }
    checkpoint = {
        "v": 4,
        "id": _new_id(),
        "ts": "2026-01-01T00:00:00+00:00",
        "channel_values": values,
        "channel_versions": {k: 1 for k in values},
        "versions_seen": {},
        "updated_channels": None,
    }
    saver.put(cfg("t"), checkpoint, {"step": 0}, {k: 1 for k in values})
    got = saver.get_tuple(cfg("t")).checkpoint["channel_values"]
    assert got == values


def test_metadata_filters_bind_values_and_refuse_odd_keys(saver):
    agent, _ = build(saver)
    ask(agent, "t", "Refund $40")
    found = list(saver.list(cfg("t"), filter={"source": "input"}))
    assert [t.metadata["source"] for t in found] == ["input"]
    assert list(saver.list(cfg("t"), filter={"source": "x' OR '1'='1"})) == []
    with pytest.raises(ValueError, match="plain identifier"):
        list(saver.list(cfg("t"), filter={"x') OR ('1'='1": 1}))


# -- retention ---------------------------------------------------------------------


def test_the_seeds_retention_sql_leaves_every_remaining_checkpoint_readable(
    saver, pg_url
):
    run_loop(saver, "t", 260)
    before = message_ids(saver, "t")
    cut = sorted(before)[300]
    age(pg_url, "t", cut)
    sql(
        pg_url,
        seed.RETENTION_SQL,
    )

    fresh = PostgresSaver(pg_url)
    after = message_ids(fresh, "t")
    assert len(after) == len(before) - 300
    assert all(after[cid] == before[cid] for cid in after)
    oldest = min(after)
    alone = fresh.get_state("t", oldest)
    assert [m.id for m in alone.values["messages"]] == before[oldest]
    timeline = fresh.get_state_history("t", values=False)
    assert [s.checkpoint_id for s in timeline] == sorted(after, reverse=True)
    assert fresh.list_threads().threads[0].checkpoints == len(after)
    # The run goes on from where it stopped.
    config = {"configurable": {"thread_id": "t"}, "recursion_limit": 100}
    state = looping(fresh, 2).invoke({"messages": [HumanMessage("more")]}, config)
    assert [m.id for m in state.values["messages"][: len(before[max(before)])]] == (
        before[max(before)]
    )
    fresh.close()


def test_compact_after_the_raw_sql_collects_what_nothing_needs(saver, pg_url):
    run_loop(saver, "t", 260)
    before = message_ids(saver, "t")
    age(pg_url, "t", sorted(before)[300])
    sql(
        pg_url,
        seed.RETENTION_SQL,
    )
    writes_before = sql(pg_url, "SELECT count(*) FROM agentmatic_writes")[0][0]

    compact_sync(pg_url, retention_days=30)

    assert sql(pg_url, "SELECT count(*) FROM agentmatic_writes")[0][0] < writes_before
    orphans = sql(
        pg_url,
        "SELECT count(*) FROM agentmatic_writes w WHERE NOT EXISTS (SELECT 1 FROM "
        "agentmatic_checkpoints c WHERE c.thread_id = w.thread_id "
        "AND c.checkpoint_id = w.checkpoint_id)",
    )
    assert orphans[0][0] == 0
    after = message_ids(PostgresSaver(pg_url), "t")
    assert all(after[cid] == before[cid] for cid in after)


def test_compact_keeps_the_newest_forks_sources_and_held_threads(saver, pg_url):
    agent, _ = build(saver)
    ask(agent, "paused", "Refund $250")  # waits for approval
    ask(agent, "done", "Refund $40")
    ask(agent, "held", "Refund $40")
    source = saver.get_state_history("done")[-2].checkpoint_id
    agent.invoke(None, {"configurable": {"thread_id": "fork", "checkpoint_id": source}})
    for thread_id in ("paused", "done", "held", "fork"):
        age(pg_url, thread_id, "~")
    archived: list[dict] = []

    report = compact_sync(
        pg_url, retention_days=30, legal_holds=["held"], archive=archived.extend
    )

    remaining = {
        t: [s.checkpoint_id for s in saver.get_state_history(t)]
        for t in ("paused", "done", "held", "fork")
    }
    assert len(remaining["held"]) == 5
    assert len(remaining["paused"]) == 1
    assert saver.get_state("paused").next == ("transfer_funds",)
    assert saver.get_state("paused").next_tool_call.args["amount"] == 250.0
    assert source in remaining["done"]
    assert report.deleted == len(archived) > 0
    assert all("writes" in row for row in archived)
    assert compact_sync(pg_url, retention_days=30, legal_holds=["held"]).deleted == 0
    # The paused run still resumes.
    resumed = agent.invoke(None, cfg("paused"))
    assert resumed.next == ()


def test_prune_and_delete_for_runs_keep_what_remains_readable(saver):
    run_loop(saver, "t", 120)
    before = message_ids(saver, "t")
    saver.prune(["t"], strategy="keep_latest")
    after = message_ids(saver, "t")
    assert list(after) == [max(before)]
    assert after[max(before)] == before[max(before)]


# -- readers ---------------------------------------------------------------------


def test_the_timeline_of_a_thousand_checkpoints_shows_every_waiting_call(saver):
    # Its speed is measured by `python -m bench` (the "meta ms" column).
    run_loop(saver, "t", 500)
    timeline = saver.get_state_history("t", values=False)
    assert len(timeline) == len(saver.get_state_history("t")) > 1000
    calls = [s.pending_tool_calls for s in timeline if s.pending_tool_calls]
    assert len(calls) == 500
    assert {c[0].name for c in calls} == {"noop"}


def test_list_threads_pages_by_activity_with_a_stable_cursor(saver):
    agent, _ = build(saver)
    for n in range(7):
        ask(agent, f"t{n}", "Refund $40")
        time.sleep(1.05 if n == 3 else 0)
    seen: list[str] = []
    cursor = None
    while True:
        page = saver.list_threads(limit=3, cursor=cursor)
        seen.extend(t.thread_id for t in page.threads)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert sorted(seen) == [f"t{n}" for n in range(7)]
    assert len(seen) == 7
    assert set(seen[:3]) <= {"t4", "t5", "t6"}
    assert saver.list_threads(agent="nobody").threads == []
    assert {t.agent for t in saver.list_threads().threads} == {"payments"}


def test_list_threads_pages_a_hundred_thousand_threads(saver, pg_url):
    agent, _ = build(saver)
    ask(agent, "model", "Refund $40")
    sql(
        pg_url,
        "INSERT INTO agentmatic_threads (thread_id, checkpoint_ns, created_at, "
        "updated_at, last_checkpoint_id, segment, checkpoints, agent) "
        "SELECT 'bulk-' || n, '', now(), now() - make_interval(secs => n), "
        "'x', 1, 1, CASE WHEN n %% 10 = 0 THEN 'rare' ELSE 'payments' END "
        "FROM generate_series(1, 100000) AS n",
    )
    sql(
        pg_url,
        "INSERT INTO agentmatic_checkpoints (thread_id, checkpoint_ns, checkpoint_id, "
        "parent_checkpoint_id, segment, step, source, actor, type, checkpoint, "
        "metadata) SELECT 'bulk-' || n, '', c.checkpoint_id, NULL, 1, c.step, "
        "c.source, c.actor, c.type, c.checkpoint, c.metadata "
        "FROM generate_series(1, 100000) AS n, (SELECT * FROM agentmatic_checkpoints "
        "WHERE thread_id = 'model' ORDER BY checkpoint_id DESC LIMIT 1) c",
    )
    sql(pg_url, "ANALYZE")
    page = saver.list_threads(limit=50)
    deeper = saver.list_threads(limit=50, cursor=page.next_cursor)
    rare = saver.list_threads(agent="rare", limit=50)
    assert len(page.threads) == len(deeper.threads) == len(rare.threads) == 50
    assert page.threads[0].thread_id == "model"
    assert all(t.agent == "rare" for t in rare.threads)
    assert not {t.thread_id for t in page.threads} & {
        t.thread_id for t in deeper.threads
    }
    # Paging is by index: the plan never sorts the threads table.
    plan = sql(
        pg_url,
        "EXPLAIN SELECT thread_id FROM agentmatic_threads WHERE checkpoint_ns = '' "
        "ORDER BY updated_at DESC, thread_id DESC LIMIT 51",
    )
    assert "Sort" not in " ".join(r[0] for r in plan)


def test_a_thread_reads_the_same_through_every_reader(saver):
    agent, _ = build(saver)
    ask(agent, "t", "Refund $250")
    full = saver.get_state_history("t")
    light = saver.get_state_history("t", values=False)
    assert [s.next for s in full] == [s.next for s in light]
    assert [s.pending_tool_calls for s in full] == [s.pending_tool_calls for s in light]
    assert saver.get_state("t", values=False).next == ("transfer_funds",)
    found = saver.find_checkpoint(full[1].checkpoint_id)
    assert found.config["configurable"]["thread_id"] == "t"


def _timeline_from_whole_rows(saver: PostgresSaver, thread_id: str) -> list:
    """The timeline read the long way: every checkpoint decoded, no summary."""
    from agentmatic.checkpoint.postgres import saver as module

    with saver._conn() as conn:
        raw = conn.execute(
            f"SELECT {module.ROW} FROM agentmatic_checkpoints WHERE thread_id = %s "
            "ORDER BY checkpoint_id DESC",
            (thread_id,),
        ).fetchall()
        return saver._light_from_rows(conn, [saver._decode_row(r) for r in raw])


def test_the_timeline_summary_reads_like_the_whole_checkpoint(saver, pg_url):
    agent, _ = build(saver)
    ask(agent, "t", "Refund $250")
    agent.reject(cfg("t"), reason="too much", actor="ops-1")
    ask(agent, "t", "Refund $40")
    ask(agent, "t", "Refund $300")
    agent.update_state(cfg("t"), {"messages": [HumanMessage("note")]})
    summarized = sql(
        pg_url, "SELECT count(*) FROM agentmatic_checkpoints WHERE light IS NOT NULL"
    )[0][0]
    assert summarized > 10
    light = saver.get_state_history("t", values=False)
    assert light == _timeline_from_whole_rows(saver, "t")
    full = saver.get_state_history("t")
    assert [s.next for s in light] == [s.next for s in full]
    assert [s.tasks for s in light] == [s.tasks for s in full]
    assert [s.pending_tool_calls for s in light] == [s.pending_tool_calls for s in full]
    assert [s.metadata for s in light] == [s.metadata for s in full]
    assert [s.created_at for s in light] == [s.created_at for s in full]


def test_a_long_timeline_reads_like_the_whole_history(saver):
    # Past 64 checkpoints the timeline reads writes by id range, and past
    # five reads psycopg prepares the query: both must read the same.
    run_loop(saver, "loop", 40)
    agent, _ = build(saver)
    for _ in range(16):
        ask(agent, "t", "Refund $40")
    ask(agent, "t", "Refund $250")
    for thread in ("loop", "t"):
        full = saver.get_state_history(thread)
        assert len(full) > 64
        for _ in range(7):
            light = saver.get_state_history(thread, values=False)
            assert [s.next for s in light] == [s.next for s in full]
            assert [s.tasks for s in light] == [s.tasks for s in full]
            assert [s.interrupts for s in light] == [s.interrupts for s in full]
            assert [s.pending_tool_calls for s in light] == [
                s.pending_tool_calls for s in full
            ]
            assert [s.metadata for s in light] == [s.metadata for s in full]
    assert full[0].next == ("transfer_funds",)
    assert sum(bool(s.pending_tool_calls) for s in full) > 12


def test_metadata_reads_the_same_on_every_path_in_any_client_encoding(pg_url):
    saver = PostgresSaver(f"{pg_url}?client_encoding=LATIN1")
    agent, _ = build(saver)
    ask(agent, "t", "Refund $40")
    # Numbers past 64 bits and past a double read back as jsonb holds them.
    sql(
        pg_url,
        "UPDATE agentmatic_checkpoints SET metadata = metadata || %s",
        (
            '{"note": "café ñ", "ratio": 0.1, "big": 1180591620717411303425, '
            '"low": -9223372036854775809, "u64": 18446744073709551615, '
            '"id": "12345678901234567890"}',
        ),
    )
    full = saver.get_state_history("t")
    light = saver.get_state_history("t", values=False)
    assert [s.metadata for s in light] == [s.metadata for s in full]
    assert full[0].metadata["note"] == "café ñ"
    for state in (full[0], light[0]):
        assert state.metadata["big"] == 2**70 + 1
        assert state.metadata["low"] == -(2**63) - 1
        assert state.metadata["u64"] == 2**64 - 1
        assert state.metadata["id"] == "12345678901234567890"
        assert type(state.metadata["big"]) is int
    assert saver.get_state("t", values=False).metadata == full[0].metadata
    assert saver.list_threads().threads[0].step == full[0].step
    # A number past a double: jsonb writes out every digit.
    sql(
        pg_url,
        "UPDATE agentmatic_checkpoints SET metadata = metadata || %s",
        ('{"far": 1e400}',),
    )
    assert saver.get_state("t", values=False).metadata["far"] == 10**400
    saver.close()


def test_a_checkpoint_keeps_a_ts_its_created_at_cannot_hold(pg_url):
    # A session time zone far from UTC: far-off years must still read back.
    saver = PostgresSaver(f"{pg_url}?options=-c%20TimeZone%3DAsia/Tokyo")
    base = {
        "v": 4,
        "channel_values": {},
        "channel_versions": {},
        "versions_seen": {},
        "updated_channels": None,
    }
    stamps = {
        "first": "0001-01-01T00:00:00+00:00",
        "last": "9999-12-31T23:59:59.999999+00:00",
        "utc": "2026-01-01T00:00:00.123456+00:00",
        "zulu": "2026-01-01T00:00:00Z",
        "offset": "2026-01-01T02:00:00+02:00",
        "naive": "2026-01-01T00:00:00",
        "odd": "yesterday",
    }
    for thread_id, ts in stamps.items():
        saver.put(cfg(thread_id), dict(base, id=_new_id(), ts=ts), {}, {})
        assert saver.get_tuple(cfg(thread_id)).checkpoint["ts"] == ts
    saver.put(cfg("none"), dict(base, id=_new_id()), {}, {})
    assert "ts" not in saver.get_tuple(cfg("none")).checkpoint
    # The one ts a column holds exactly is the row's time.
    (created,) = sql(
        pg_url,
        "SELECT created_at FROM agentmatic_checkpoints WHERE thread_id = 'utc'",
    )[0]
    assert created.isoformat().startswith("2026-01-01T00:00:00.123456")
    assert len(saver.list_threads().threads) == len(stamps) + 1
    saver.close()


def test_a_damaged_timeline_summary_names_its_checkpoint(saver, pg_url):
    agent, _ = build(saver)
    ask(agent, "t", "Refund $40")
    head = saver.get_state("t")
    sql(
        pg_url,
        "UPDATE agentmatic_checkpoints SET light = '\\xc1' WHERE checkpoint_id = %s",
        (head.checkpoint_id,),
    )
    with pytest.raises(CorruptCheckpoint, match=head.checkpoint_id):
        saver.get_state_history("t", values=False)


def test_a_database_at_migration_five_gets_the_summary_column(pg_url):
    from agentmatic.checkpoint.postgres.schema import MIGRATIONS

    with psycopg.connect(pg_url, autocommit=True) as conn:
        for number, migration in enumerate(MIGRATIONS[:5], start=1):
            conn.execute(migration)
            conn.execute("INSERT INTO agentmatic_migrations (v) VALUES (%s)", (number,))
    saver = PostgresSaver(pg_url)
    assert saver.setup() == [6, 7]
    agent, _ = build(saver)
    ask(agent, "t", "Refund $40")
    assert saver.get_state("t", values=False).next == ()
    saver.close()


def test_a_step_whose_tasks_share_an_id_stores_every_write(saver, pg_url):
    head, step = _head_and_next_step(saver)
    saver.put_step(
        head.config,
        [("same", "", [("x", 1)]), ("same", "", [("x", 2), ("y", 3)])],
        step,
        {},
        {"x": step["channel_versions"]["x"]},
    )
    assert saver.head_id("t") == step["id"]
    written = [w for w in saver.get_tuple(head.config).pending_writes if w[0] == "same"]
    assert written == [("same", "x", 1), ("same", "y", 3)]


def test_a_step_refused_on_a_new_thread_leaves_no_thread_row(saver, pg_url):
    agent, _ = build(saver)
    ask(agent, "t", "Refund $40")
    head = saver.get_tuple(cfg("t"))
    with pytest.raises(ThreadConflict):
        saver.put_step(
            cfg("elsewhere", head.checkpoint["id"]),
            [("task", "", [("x", 1)])],
            _step_checkpoint(head.checkpoint, 1),
            {},
            {},
            expected_head="not-there",
        )
    assert sql(
        pg_url, "SELECT count(*) FROM agentmatic_threads WHERE thread_id = 'elsewhere'"
    ) == [(0,)]


def test_bookkeeping_metadata_keeps_its_types(pg_url):
    import datetime as dt

    when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for key in (None, KEY):
        saver = PostgresSaver(pg_url, chain_key=key)
        thread_id = f"t-{key is not None}"
        saver.put(
            cfg(thread_id),
            {
                "v": 4,
                "id": _new_id(),
                "ts": "2026-01-01T00:00:00+00:00",
                "channel_values": {},
                "channel_versions": {},
                "versions_seen": {},
            },
            {"counters_since_delta_snapshot": {"messages": when}},
            {},
        )
        for state in (
            saver.get_state(thread_id),
            saver.get_state(thread_id, values=False),
        ):
            assert state.metadata["counters_since_delta_snapshot"] == {"messages": when}
        if key is not None:
            assert verify(saver, thread_id).ok
        saver.close()


def test_a_version_of_any_kind_is_stored_and_read(saver):
    checkpoint = {
        "v": 4,
        "id": _new_id(),
        "ts": "2026-01-01T00:00:00+00:00",
        "channel_values": {"branch:to:tools": None},
        "channel_versions": {"branch:to:tools": [1, 2]},
        "versions_seen": {},
    }
    saver.put(cfg("t"), checkpoint, {}, {})
    assert saver.get_state("t", values=False).next == saver.get_state("t").next


def test_a_chained_saver_reads_no_summary(pg_url):
    saver = PostgresSaver(pg_url, chain_key=KEY)
    agent, _ = build(saver)
    ask(agent, "t", "Refund $250")
    assert sql(
        pg_url, "SELECT count(*) FROM agentmatic_checkpoints WHERE light IS NOT NULL"
    ) == [(0,)]
    honest = saver.get_state_history("t", values=False)
    # A summary slipped into a chained row changes nothing a reader shows.
    sql(
        pg_url,
        "UPDATE agentmatic_checkpoints SET light = %s",
        (ormsgpack.packb([["transfer_funds"], True, None]),),
    )
    assert saver.get_state_history("t", values=False) == honest
    assert verify(saver, "t").ok
    saver.close()


def test_an_update_checkpoint_shows_the_calls_it_leaves_waiting(saver):
    checkpoint_id = _new_id()
    call = ToolCall(name="transfer_funds", args={"amount": 5}, id="c1")
    messages = [
        HumanMessage("pay").with_id(),
        AIMessage("", tool_calls=[call]).with_id(),
    ]
    saver.put(
        cfg("t"),
        {
            "v": 4,
            "id": checkpoint_id,
            "ts": "2026-01-01T00:00:00+00:00",
            "channel_values": {
                "messages": DeltaSnapshot(messages),
                "branch:to:transfer_funds": None,
            },
            "channel_versions": {"messages": 2, "branch:to:transfer_funds": 2},
            "versions_seen": {},
            "updated_channels": None,
        },
        {"source": "update", "step": 1},
        {"messages": 2, "branch:to:transfer_funds": 2},
    )
    light = saver.get_state("t", values=False)
    assert light.next == ("transfer_funds",)
    assert [c.id for c in light.pending_tool_calls] == ["c1"]
    assert ToolMessage  # imported for symmetry with the runtime tests


# -- the chain ---------------------------------------------------------------------


def test_the_chain_verifies_and_names_an_edited_checkpoint(pg_url):
    saver = PostgresSaver(pg_url, chain_key=KEY)
    agent, _ = build(saver)
    ask(agent, "t", "Refund $250")
    agent.invoke(None, cfg("t"))
    history = saver.get_state_history("t")
    assert verify(saver, "t").ok

    target = history[len(history) // 2].checkpoint_id
    sql(
        pg_url,
        "UPDATE agentmatic_checkpoints SET metadata = jsonb_set(metadata, "
        "'{actor}', '\"mallory\"') WHERE checkpoint_id = %s",
        (target,),
    )
    report = verify(saver, "t")
    assert [b.checkpoint_id for b in report.broken] == [target]

    sql(
        pg_url,
        "UPDATE agentmatic_checkpoints SET metadata = jsonb_set(metadata, "
        "'{actor}', '\"system\"') WHERE checkpoint_id = %s",
        (target,),
    )
    assert verify(saver, "t").ok
    other = history[1].checkpoint_id
    sql(
        pg_url,
        "UPDATE agentmatic_checkpoints SET checkpoint = overlay(checkpoint PLACING "
        "decode(lpad(to_hex(get_byte(checkpoint, 20) # 1), 2, '0'), 'hex') "
        "FROM 21 FOR 1) WHERE checkpoint_id = %s",
        (other,),
    )
    assert verify(saver, "t").checkpoint_id == other
    saver.close()


def test_retention_keeps_a_chained_thread_verifiable(pg_url):
    saver = PostgresSaver(pg_url, chain_key=KEY)
    agent, _ = build(saver)
    ask(agent, "t", "Refund $40")
    ask(agent, "t", "Refund $30")
    newest = saver.get_state_history("t")[0].checkpoint_id
    age(pg_url, "t", newest)
    compact_sync(saver, retention_days=30)
    assert len(saver.get_state_history("t")) == 1
    assert verify(saver, "t").ok
    saver.close()


def test_thread_config_is_reexported_for_readers():
    assert thread_config("t")["configurable"]["thread_id"] == "t"
