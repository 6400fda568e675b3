"""Carried writes (migration 7) under retention: lock order, copies, collection.

Deleting a checkpoint, collecting garbage and copying a thread each touch the
row after a checkpoint, which carries its writes. These races and sequences
(found by a second review, several by a differential fuzz against the code
before carried writes) must keep every checkpoint reading as before, collect
what a deleted checkpoint left, and never deadlock. Races are forced into one
order with a paused call and a wait on pg_stat_activity.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg

from agentmatic import Agent, HumanMessage
from agentmatic.checkpoint.postgres import PostgresSaver, compact_sync
from agentmatic.llms import LoopModel
from tests import seed


def noop(payload: str) -> str:
    """Do nothing, politely."""
    return "ok:" + payload[:40]


def sql(url: str, query: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def run(saver: PostgresSaver, thread_id: str, steps: int, **config: Any) -> None:
    model = LoopModel("noop", steps=steps, payload_bytes=20)
    agent = Agent.builder("loop").llm(model).tools([noop]).checkpoint(saver).build()
    conf = {"thread_id": thread_id, **config}
    agent.invoke(
        {"messages": [HumanMessage("go")]},
        {"configurable": conf, "recursion_limit": 1000},
    )


def ids_of(url: str, thread_id: str) -> list[str]:
    return [
        r[0]
        for r in sql(
            url,
            "SELECT checkpoint_id FROM agentmatic_checkpoints WHERE thread_id = %s "
            "ORDER BY checkpoint_id",
            (thread_id,),
        )
    ]


def messages(saver: PostgresSaver, thread_id: str) -> dict[str, list[Any]]:
    return {
        s.checkpoint_id: [m.id for m in s.values.get("messages", [])]
        for s in saver.get_state_history(thread_id)
    }


def age(url: str, ids: list[str]) -> None:
    sql(
        url,
        "UPDATE agentmatic_checkpoints SET created_at = now() - interval '40 days' "
        "WHERE checkpoint_id = ANY(%s)",
        (ids,),
    )


def lock_waiter(url: str, pattern: str) -> bool:
    return bool(
        sql(
            url,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query LIKE %s",
            (pattern,),
        )[0][0]
    )


# -- 1. compact after the seed's plain DELETE took a listed row -------------------


def test_compact_after_a_plain_delete_of_a_listed_row_keeps_the_message_log(pg_url):
    """compact lists P as doomed; the seed's retention SQL deletes P's row
    before compact's delete_checkpoints([P]) runs. P's writes ride in C, so
    delete_checkpoints finds no write row to rebase over, then clears C's
    carried columns: C and every later checkpoint lose P's message. On
    6be72f6 P's writes were a row of their own, found, and rebased over.
    (tests/test_postgres_retention_race.py::
    test_delete_checkpoints_of_rows_already_deleted_by_plain_sql fails too.)"""
    saver = PostgresSaver(pg_url)
    run(saver, "t", 4)
    before = messages(saver, "t")
    ids = ids_of(pg_url, "t")
    p = ids[3]
    age(pg_url, [p])
    listing = saver.retention_rows

    def listing_then_plain_delete(thread_id=None):
        rows = list(listing(thread_id))
        sql(pg_url, seed.RETENTION_SQL)  # another process's nightly DELETE
        return iter(rows)

    saver.retention_rows = listing_then_plain_delete  # type: ignore[method-assign]
    compact_sync(saver, retention_days=30)
    after = messages(PostgresSaver(pg_url), "t")
    assert sorted(after) == [c for c in ids if c != p]
    lost = {c: sorted(set(before[c]) - set(after[c])) for c in after}
    assert all(after[c] == before[c] for c in after), lost
    saver.close()


# -- 2. delete_checkpoints' UPDATE of the carrying row: a second lock order -------


def _paused_delete_of_parent(pg_url: str, other) -> list[BaseException]:
    """delete_checkpoints([P]) holding P's row and the thread row while
    `other` (which locks C, P's next row, and then wants the thread row)
    starts and waits; then let delete_checkpoints go on to its UPDATE of C."""
    saver = PostgresSaver(pg_url)
    run(saver, "t", 3)
    ids = ids_of(pg_url, "t")
    p, c = ids[3], ids[4]
    errors: list[BaseException] = []
    real = saver._rebase
    started: list[threading.Thread] = []

    def wrapped(*args: Any) -> None:
        try:
            other(c)
        except BaseException as exc:
            errors.append(exc)

    def rebase_then_let_the_other_in(*args: Any, **kwargs: Any) -> int:
        if not started:
            started.append(threading.Thread(target=wrapped))
            started[0].start()
            deadline = time.monotonic() + 10
            while not lock_waiter(pg_url, "%agentmatic_checkpoints%"):
                assert time.monotonic() < deadline, "the other never waited"
                time.sleep(0.02)
        return real(*args, **kwargs)

    saver._rebase = rebase_then_let_the_other_in  # type: ignore[method-assign]
    try:
        saver.delete_checkpoints("t", "", [p])
    except BaseException as exc:
        errors.append(exc)
    started[0].join(20)
    saver.close()
    return errors


def test_delete_checkpoints_and_the_retention_sql_on_the_next_row_do_not_deadlock(
    pg_url,
):
    """delete_checkpoints([P]) takes P's row, then the thread row, then (new)
    UPDATEs C, the row after P, to clear what it carries. The seed's
    retention SQL deleting C takes C's row, then (count trigger) the thread
    row: each waits for the other, and Postgres kills one. On 6be72f6
    delete_checkpoints never touched a row it was not deleting."""

    def retention(c: str) -> None:
        age(pg_url, [c])
        sql(pg_url, seed.RETENTION_SQL)

    errors = _paused_delete_of_parent(pg_url, retention)
    assert errors == []


def test_two_delete_checkpoints_of_neighbouring_rows_do_not_deadlock(pg_url):
    """delete_checkpoints([P]) and delete_checkpoints([C]) (compact and a
    delete_for_runs, say): the second holds C's row and waits for the thread
    row the first holds; the first then UPDATEs C. A cycle."""

    def delete_c(c: str) -> None:
        other = PostgresSaver(pg_url)
        try:
            other.delete_checkpoints("t", "", [c])
        finally:
            other.close()

    errors = _paused_delete_of_parent(pg_url, delete_c)
    assert errors == []


# -- 3. writes of a checkpoint the seed's DELETE removed are never collected -------


def test_collect_garbage_collects_the_writes_of_a_plainly_deleted_checkpoint(pg_url):
    """The seed's retention SQL deletes P; collect_garbage then deletes the
    writes nothing needs. On 6be72f6 P's write was an orphan row and went;
    now it rides in C, which collect_garbage never looks at (the thread is
    not even visited): it stays for good (and copy_thread copies it out)."""
    saver = PostgresSaver(pg_url)
    run(saver, "t", 3)
    ids = ids_of(pg_url, "t")
    p = ids[3]
    age(pg_url, [p])
    sql(pg_url, seed.RETENTION_SQL)
    saver.collect_garbage()
    left = sql(
        pg_url,
        "SELECT (SELECT count(*) FROM agentmatic_writes WHERE checkpoint_id = %s) "
        "+ (SELECT count(*) FROM agentmatic_checkpoints WHERE "
        "parent_checkpoint_id = %s AND carried_task_id IS NOT NULL)",
        (p, p),
    )[0][0]
    assert left == 0
    saver.close()


def test_timeline_after_collect_garbage_reads_as_before(pg_url):
    """Found by the differential fuzz (seed 102, minimized). C2 (tools to run,
    its tool's writes kept after its child went) loses its parent C1 to a
    plain DELETE; collect_garbage. On 6be72f6 C1's writes were collected and
    C2's timeline entry (values=False) matched its full state: next ['noop'],
    no pending tool call. Now C1's write survives in C2's row and the
    timeline shows next [] and a pending call the full state does not."""
    saver = PostgresSaver(pg_url)
    run(saver, "t", 3)
    ids = ids_of(pg_url, "t")
    c1, c2, c3 = ids[1], ids[2], ids[3]
    sql(
        pg_url,
        "DELETE FROM agentmatic_checkpoints WHERE checkpoint_id = ANY(%s)",
        ([ids[4], ids[6]],),
    )
    saver.delete_checkpoints("t", "", [c3])
    model = LoopModel("noop", steps=1, payload_bytes=20)
    agent = Agent.builder("loop").llm(model).tools([noop]).checkpoint(saver).build()
    agent.invoke(
        {"messages": [HumanMessage("br")]},
        {"configurable": {"thread_id": "t", "checkpoint_id": c2}},
    )
    sql(pg_url, "DELETE FROM agentmatic_checkpoints WHERE checkpoint_id = %s", (c1,))
    saver.collect_garbage()

    def view(states):
        return {
            s.checkpoint_id: (
                list(s.next),
                sorted(c["id"] for c in s.pending_tool_calls),
            )
            for s in states
        }

    full = view(saver.get_state_history("t"))
    light = view(saver.get_state_history("t", values=False))
    assert light[c2] == full[c2] == (["noop"], [])
    saver.close()


# -- 4. copy_thread reads the source's writes in two statements -------------------


class _Hooked:
    """A connection that calls `after(query)` after each statement."""

    def __init__(self, conn: Any, after) -> None:
        self._conn = conn
        self._after = after

    def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        out = self._conn.execute(query, *args, **kwargs)
        self._after(str(query))
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def test_copy_thread_racing_a_retention_delete_of_a_carrying_row(pg_url):
    """copy_thread copies the source's write rows, then (another statement)
    the writes its checkpoint rows carry. The seed's retention SQL deleting
    C in between moves P's write from C's row into a write row: the first
    statement ran before it, the second no longer sees C. The copy of P has
    no pending write. On 6be72f6 P's write was a row all along."""
    from contextlib import contextmanager

    saver = PostgresSaver(pg_url)
    run(saver, "t", 3)
    ids = ids_of(pg_url, "t")
    p, c = ids[3], ids[4]
    want = saver.get_tuple({"configurable": {"thread_id": "t", "checkpoint_id": p}})
    assert want is not None and want.pending_writes
    real_conn = saver._conn
    fired: list[str] = []

    def after(query: str) -> None:
        if (
            not fired
            and query.startswith("INSERT INTO agentmatic_writes")
            and "FROM agentmatic_writes WHERE thread_id" in query
        ):
            age(pg_url, [c])
            sql(pg_url, seed.RETENTION_SQL)  # commits: src's thread row is free
            fired.append(query)

    @contextmanager
    def hooked():
        with real_conn() as conn:
            yield _Hooked(conn, after)

    saver._conn = hooked  # type: ignore[method-assign]
    saver.copy_thread("t", "u")
    saver._conn = real_conn  # type: ignore[method-assign]
    assert fired
    got = saver.get_tuple({"configurable": {"thread_id": "u", "checkpoint_id": p}})
    assert got is not None
    assert sorted((t, ch) for t, ch, _v in got.pending_writes) == sorted(
        (t, ch) for t, ch, _v in want.pending_writes
    )
    saver.close()


# -- 5. copy_thread's new lock on the target's thread row --------------------------


def test_copying_again_into_a_target_under_retention_is_no_deadlock(pg_url):
    """copy_thread("t", "u") where "u" is an earlier copy of "t" (a refreshed
    sandbox). copy_thread now takes u's thread row first; the seed's
    retention SQL deleting u's old rows holds them and waits (count trigger)
    for that thread row; copy_thread's INSERT of the same checkpoint ids then
    waits for the DELETE. On 6be72f6 copy_thread took the thread row only in
    its last statement, so the DELETE went first and the copy then waited."""
    from contextlib import contextmanager

    saver = PostgresSaver(pg_url)
    run(saver, "t", 2)
    saver.copy_thread("t", "u")
    sql(
        pg_url,
        "UPDATE agentmatic_checkpoints SET created_at = now() - interval '40 days' "
        "WHERE thread_id = 'u'",
    )
    errors: list[BaseException] = []
    started: list[threading.Thread] = []

    def retention() -> None:
        try:
            sql(pg_url, seed.RETENTION_SQL)
        except BaseException as exc:
            errors.append(exc)

    def after(query: str) -> None:
        # After the chunks are copied (before the checkpoint rows), the
        # retention SQL runs until it is done or waits for a lock.
        if not started and query.startswith("INSERT INTO agentmatic_chunks"):
            started.append(threading.Thread(target=retention))
            started[0].start()
            deadline = time.monotonic() + 10
            while started[0].is_alive() and not lock_waiter(
                pg_url, "DELETE FROM agentmatic_checkpoints%"
            ):
                assert time.monotonic() < deadline, "the DELETE never waited"
                time.sleep(0.02)

    real_conn = saver._conn

    @contextmanager
    def hooked():
        with real_conn() as conn:
            yield _Hooked(conn, after)

    saver._conn = hooked  # type: ignore[method-assign]
    try:
        saver.copy_thread("t", "u")
    except BaseException as exc:
        errors.append(exc)
    saver._conn = real_conn  # type: ignore[method-assign]
    started[0].join(20)
    assert errors == []
    saver.close()
