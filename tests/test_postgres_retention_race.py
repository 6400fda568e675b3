"""Reads and deletes racing a plain retention DELETE and each other.

`compact` lists a thread's checkpoints (`retention_rows`, no lock), then calls
`delete_checkpoints` with the old ones. If the seed's plain ``DELETE FROM
agentmatic_checkpoints`` removes those rows in between, their writes are
orphans that a surviving checkpoint still rebuilds its message log from. And
a read of several statements (a base value, then the writes since; or a
history a page at a time) must not see a delete commit in between.

Each race is forced in one order with a hook, not left to timing.
"""

from __future__ import annotations

import threading
import time

import psycopg

from agentmatic import Agent, HumanMessage
from agentmatic.checkpoint.postgres import PostgresSaver, compact_sync
from agentmatic.llms import LoopModel
from tests import seed


def noop(payload: str) -> str:
    """Do nothing, politely."""
    return "ok:" + payload[:40]


def sql(url: str, query: str, params: tuple = ()) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(query, params)


def message_ids(saver: PostgresSaver, thread_id: str) -> dict[str, list[str]]:
    return {
        s.checkpoint_id: [m.id for m in s.values.get("messages", [])]
        for s in saver.get_state_history(thread_id)
    }


def run(saver: PostgresSaver, thread_id: str, steps: int) -> dict[str, list[str]]:
    model = LoopModel("noop", steps=steps, payload_bytes=80)
    agent = Agent.builder("loop").llm(model).tools([noop]).checkpoint(saver).build()
    config = {"configurable": {"thread_id": thread_id}, "recursion_limit": 1000}
    agent.invoke({"messages": [HumanMessage("go")]}, config)
    return message_ids(saver, thread_id)


def age(url: str, thread_id: str, ids: list[str]) -> None:
    sql(
        url,
        "UPDATE agentmatic_checkpoints SET created_at = now() - interval '40 days' "
        "WHERE thread_id = %s AND checkpoint_id = ANY(%s)",
        (thread_id, ids),
    )


def test_delete_checkpoints_of_rows_already_deleted_by_plain_sql(pg_url):
    """Smallest form: plain DELETE of one middle checkpoint, then
    delete_checkpoints of that same id (what compact does when it listed it)."""
    saver = PostgresSaver(pg_url)
    before = run(saver, "t", 4)
    ids = sorted(before)
    middle = ids[3]  # after the input checkpoint's snapshot, before the head
    age(pg_url, "t", [middle])
    sql(pg_url, seed.RETENTION_SQL)  # the seed's plain retention

    saver.delete_checkpoints("t", "", [middle])

    after = message_ids(PostgresSaver(pg_url), "t")
    assert middle not in after
    lost = {cid: sorted(set(before[cid]) - set(ids_)) for cid, ids_ in after.items()}
    assert all(after[cid] == before[cid] for cid in after), lost
    saver.close()


def test_plain_retention_between_compacts_listing_and_delete(pg_url):
    """compact, with the plain DELETE committed by another connection right
    after compact read the rows (explicit ordering instead of timing)."""
    saver = PostgresSaver(pg_url)
    before = run(saver, "t", 4)
    ids = sorted(before)
    age(pg_url, "t", ids[:4])  # the input checkpoints and the first loop steps

    listing = saver.retention_rows

    def listing_then_plain_delete(thread_id=None):
        rows = list(listing(thread_id))
        sql(pg_url, seed.RETENTION_SQL)  # another process's nightly DELETE
        return iter(rows)

    saver.retention_rows = listing_then_plain_delete
    compact_sync(saver, retention_days=30)

    after = message_ids(PostgresSaver(pg_url), "t")
    assert sorted(after) == ids[4:]
    lost = {cid: sorted(set(before[cid]) - set(ids_)) for cid, ids_ in after.items()}
    assert all(after[cid] == before[cid] for cid in after), lost
    saver.close()


def test_a_read_racing_delete_checkpoints_sees_one_consistent_state(pg_url):
    """A reader rebuilding the message log (base blob, then writes since, in
    separate statements) while delete_checkpoints moves the base and deletes
    the writes in between: the agent loads its head this way (load_cursor)."""
    writer = PostgresSaver(pg_url)
    run(writer, "t", 2)
    before = run(writer, "t", 4)  # its input checkpoint stores a snapshot
    ids = sorted(before)
    with psycopg.connect(pg_url) as conn:
        snap_id, snap_version = conn.execute(
            "SELECT checkpoint_id, version FROM agentmatic_blobs "
            "WHERE channel = 'messages' ORDER BY checkpoint_id DESC LIMIT 1"
        ).fetchone()
    after_snap = [c for c in ids if c > snap_id]
    middle, head = after_snap[1], ids[-1]

    reader = PostgresSaver(pg_url)
    maint = PostgresSaver(pg_url)
    real = reader._fetch_values
    fired: list[int] = []

    def fetch(conn, thread_id, ns, wanted, serde=None):
        # Between _rebuild's "which base" and "which writes" statements.
        if not fired and any(v == snap_version for _c, v in wanted):
            fired.append(maint.delete_checkpoints("t", "", [middle]))
        return real(conn, thread_id, ns, wanted, serde)

    reader._fetch_values = fetch
    state = reader.get_state("t", head)
    assert fired == [1]
    got = [m.id for m in state.values["messages"]]
    assert got == before[head], sorted(set(before[head]) - set(got))
    # And read again afterwards, without the race.
    assert [
        m.id for m in PostgresSaver(pg_url).get_state("t", head).values["messages"]
    ] == before[head]
    for s in (writer, reader, maint):
        s.close()


def test_a_history_read_racing_delete_checkpoints_sees_one_consistent_state(
    pg_url, monkeypatch
):
    """The whole history with values is one snapshot too: checkpoints deleted
    between two pages of the listing still read as they were listed."""
    import agentmatic.checkpoint.postgres.saver as saver_module

    writer = PostgresSaver(pg_url)
    run(writer, "t", 2)
    before = run(writer, "t", 4)
    ids = sorted(before)
    monkeypatch.setattr(saver_module, "PAGE", 3)
    reader = PostgresSaver(pg_url)
    maint = PostgresSaver(pg_url)
    real = reader._assemble
    fired: list[int] = []

    def assemble(conn, rows, **kwargs):
        # After the first page: delete older ones the next pages would list.
        out = real(conn, rows, **kwargs)
        if not fired:
            fired.append(maint.delete_checkpoints("t", "", ids[2:6]))
        return out

    reader._assemble = assemble
    history = reader.get_state_history("t")
    assert fired == [4]
    assert [s.checkpoint_id for s in history] == sorted(before, reverse=True)
    assert {
        s.checkpoint_id: [m.id for m in s.values.get("messages", [])] for s in history
    } == before
    # Afterwards the deleted ones are gone and the rest read as before.
    after = message_ids(PostgresSaver(pg_url), "t")
    assert sorted(after) == [c for c in ids if c not in ids[2:6]]
    assert all(after[c] == before[c] for c in after)
    for s in (writer, reader, maint):
        s.close()


def test_delete_checkpoints_and_a_plain_delete_of_the_same_rows_do_not_deadlock(
    pg_url,
):
    """delete_checkpoints holding the thread's row while a plain DELETE holds
    the checkpoint rows and waits (in its count trigger) for the thread's row:
    delete_checkpoints takes the checkpoint rows first, so one waits for the
    other instead of both for each other."""
    saver = PostgresSaver(pg_url)
    before = run(saver, "t", 4)
    ids = sorted(before)
    doomed = ids[2:4]
    age(pg_url, "t", doomed)
    plain = psycopg.connect(pg_url)
    pid = plain.info.backend_pid
    errors: list[BaseException] = []

    def plain_delete() -> None:
        try:
            plain.execute(seed.RETENTION_SQL)
            plain.commit()
        except psycopg.Error as exc:
            errors.append(exc)
            plain.rollback()

    def waiting(backend: int) -> bool:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                (backend,),
            ).fetchone()
        return row is not None and row[0] == "Lock"

    real = saver._rows
    started: list[threading.Thread] = []

    def rows_then_let_the_plain_delete_in(conn, thread_id, ns):
        # delete_checkpoints holds its locks here; the plain DELETE now runs
        # until it waits for one of them.
        if not started:
            started.append(threading.Thread(target=plain_delete))
            started[0].start()
            deadline = time.monotonic() + 10
            while not waiting(pid) and started[0].is_alive():
                assert time.monotonic() < deadline, "the plain DELETE never waited"
                time.sleep(0.02)
        return real(conn, thread_id, ns)

    saver._rows = rows_then_let_the_plain_delete_in
    assert saver.delete_checkpoints("t", "", doomed) == 2
    started[0].join(10)
    assert errors == []
    plain.close()
    after = message_ids(PostgresSaver(pg_url), "t")
    assert sorted(after) == [c for c in ids if c not in doomed]
    assert all(after[c] == before[c] for c in after)
    saver.close()
