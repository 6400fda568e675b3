"""Carried writes (migration 7) under concurrent writers, deletes and old callers.

A linear step's write rides in the checkpoint row after its parent. Each
test here races that against what moves it into a row of its own (a
retention DELETE, a checkpoint stored in between, a thread copy, a second
writer of the same task), or runs it the way an older process would, and
checks that every checkpoint reads as before: no write lost, doubled or
replaced, no deadlock. Races are forced into one order with a lock held
open or a paused call, not left to timing. Found by a review of the change.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import psycopg
import pytest

from agentmatic import ids
from agentmatic.checkpoint.postgres import PostgresSaver


@pytest.fixture
def saver(pg_url):
    opened = PostgresSaver(pg_url)
    yield opened
    opened.close()


def sql(url: str, query: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def cfg(thread_id: str, checkpoint_id: str | None = None) -> dict[str, Any]:
    conf: dict[str, Any] = {"thread_id": thread_id, "checkpoint_ns": ""}
    if checkpoint_id is not None:
        conf["checkpoint_id"] = checkpoint_id
    return {"configurable": conf}


def checkpoint(cid: str, step: int) -> dict[str, Any]:
    return {
        "v": 4,
        "id": cid,
        "ts": "2026-01-01T00:00:00+00:00",
        "channel_values": {"x": step},
        "channel_versions": {"x": f"{step + 1:032}.0"},
        "versions_seen": {},
    }


def root(saver: PostgresSaver, thread_id: str, cid: str) -> None:
    saver.put(cfg(thread_id), checkpoint(cid, 0), {"step": -1}, {})


def step(
    saver: PostgresSaver, thread_id: str, parent: str, cid: str, n: int, value: Any
) -> str:
    """One task (a uuid task id) ran from `parent`; store its write and `cid`."""
    task = str(uuid.uuid4())
    cp = checkpoint(cid, n)
    saver.put_step(
        cfg(thread_id, parent),
        [(task, "", [("x", value)])],
        cp,
        {"step": n},
        {"x": cp["channel_versions"]["x"]},
    )
    return task


def hold_checkpoint_id(url: str, cid: str) -> psycopg.Connection:
    """Return a connection whose open transaction has a row with this id:
    a writer inserting that checkpoint waits until it rolls back."""
    blocker = psycopg.connect(url)
    blocker.execute(
        "INSERT INTO agentmatic_checkpoints (thread_id, checkpoint_ns, "
        "checkpoint_id, type, checkpoint) VALUES ('t', '', %s, 'x', '\\x00')",
        (cid,),
    )
    return blocker


def wait_for_lock_wait(url: str, pattern: str) -> bool:
    """Wait (up to 4 s) until a statement like `pattern` waits for a lock."""
    for _ in range(200):
        if sql(
            url,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query LIKE %s",
            (pattern,),
        )[0][0]:
            return True
        time.sleep(0.02)
    return False


def carried_rows(url: str, thread_id: str) -> int:
    return sql(
        url,
        "SELECT count(*) FROM agentmatic_checkpoints WHERE thread_id = %s "
        "AND carried_task_id IS NOT NULL",
        (thread_id,),
    )[0][0]


def pending(saver: PostgresSaver, thread_id: str, cid: str) -> list[tuple]:
    tup = saver.get_tuple(cfg(thread_id, cid))
    assert tup is not None
    return sorted((t, c, repr(v)) for t, c, v in tup.pending_writes)


# -- 1. copy_thread into a thread that has carrying rows ------------------------


def test_copy_into_a_thread_keeps_the_targets_carried_writes(saver, pg_url):
    """copy_thread's rows may land between a target's parent and the row that
    carries its writes; the target's parent then loses its pending writes."""
    made = [ids.checkpoint_id() for _ in range(8)]  # ascending
    src, dst = made[0::2], made[1::2]  # interleaved ids
    root(saver, "u", dst[0])
    root(saver, "t", src[0])
    for n in range(1, 4):
        step(saver, "u", dst[n - 1], dst[n], n, f"u{n}")
        step(saver, "t", src[n - 1], src[n], n, f"t{n}")
    before = {cid: pending(saver, "u", cid) for cid in dst}
    assert all(before[cid] for cid in dst[:3])
    saver.copy_thread("t", "u")
    after = {cid: pending(saver, "u", cid) for cid in dst}
    assert after == before


# -- 2. a read racing a DELETE or a put between P and its carrying row -----------


def test_reads_racing_retention_deletes_of_carrying_rows_lose_nothing(saver, pg_url):
    """A reader reads a parent's writes over and over while the retention SQL
    deletes the row that carries them, for 40 parents in turn. The writes
    move into a row of their own in the DELETE's transaction; each read sees
    them in one place or the other, never neither (the two sources are one
    statement). Two statements lost some in most runs."""
    made = [ids.checkpoint_id() for _ in range(81)]
    root(saver, "t", made[0])
    for n in range(1, len(made)):
        step(saver, "t", made[n - 1], made[n], n, f"value {n}")
    parents = made[0:-1:2]  # each keeps its checkpoint; the row after it goes
    before = {cid: pending(saver, "t", cid) for cid in parents}
    assert all(before.values())
    lost: list[Any] = []
    current: list[str] = []
    done = threading.Event()

    def read() -> None:
        reader = PostgresSaver(pg_url)
        try:
            while not done.is_set():
                if current:
                    cid = current[-1]
                    if pending(reader, "t", cid) != before[cid]:
                        lost.append(cid)
        except BaseException as exc:
            lost.append(exc)
        finally:
            reader.close()

    reading = threading.Thread(target=read)
    reading.start()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for parent, child in zip(made[0:-1:2], made[1:-1:2], strict=True):
            current.append(parent)
            time.sleep(0.01)
            conn.execute(
                "DELETE FROM agentmatic_checkpoints WHERE checkpoint_id = %s", (child,)
            )
            time.sleep(0.01)
    done.set()
    reading.join(30)
    assert not lost
    for cid in parents:
        assert pending(saver, "t", cid) == before[cid]


# -- 3. first write wins across writers ----------------------------------------


def test_a_racing_put_writes_of_the_same_task_does_not_replace_the_steps_write(
    saver, pg_url
):
    """Writer A stores a step of task T from P (its write carried in C); writer
    B stores T's write on P (put_writes) while A's statement is in flight.
    Before, A's write row made B's insert wait and then keep A's (first write
    wins, and P's pending writes match the C that A computed from them)."""
    made = [ids.checkpoint_id() for _ in range(2)]
    parent, child = made
    root(saver, "t", parent)
    task = str(uuid.uuid4())
    cp = checkpoint(child, 1)
    # Hold A up inside agentmatic_put, after it decided to carry: an
    # uncommitted row with C's key makes its INSERT wait.
    blocker = hold_checkpoint_id(pg_url, child)
    errors: list[BaseException] = []

    def writer_a() -> None:
        a = PostgresSaver(pg_url)
        try:
            a.put_step(
                cfg("t", parent),
                [(task, "", [("x", "A")])],
                cp,
                {"step": 1},
                {"x": cp["channel_versions"]["x"]},
            )
        except BaseException as exc:
            errors.append(exc)
        finally:
            a.close()

    a_thread = threading.Thread(target=writer_a)
    a_thread.start()

    assert wait_for_lock_wait(pg_url, "%agentmatic_put%"), (
        "writer A never reached the checkpoint insert"
    )
    b_done = threading.Event()

    def writer_b() -> None:
        b = PostgresSaver(pg_url)
        try:
            b.put_writes(cfg("t", parent), [("x", "B")], task)
        finally:
            b.close()
            b_done.set()

    b_thread = threading.Thread(target=writer_b)
    b_thread.start()
    b_done.wait(1.0)  # before: B waits for A's write row; now it commits
    blocker.rollback()
    blocker.close()
    a_thread.join(10)
    b_thread.join(10)
    assert not errors
    assert [w[2] for w in pending(saver, "t", parent)] == ["'A'"]


# -- 4. a retention DELETE racing a put between P and its carrying row ----------


def test_a_put_between_racing_a_delete_of_the_carrying_row_is_no_deadlock(
    saver, pg_url
):
    """X stores B between P and C (C carries P's writes) while the retention
    SQL deletes C. X holds the thread row and then copies C's writes out; the
    DELETE's trigger has copied the same write (uncommitted) and its count
    trigger then waits for the thread row: each waits for the other."""

    made = [ids.checkpoint_id() for _ in range(4)]
    p, b, c, d = made
    root(saver, "t", p)
    step(saver, "t", p, c, 1, "one")
    step(saver, "t", c, d, 2, "two")
    before = pending(saver, "t", p)
    # Hold X between taking the thread row and inserting B (a row with B's
    # key, uncommitted), to make the window wide enough to hit every time.
    blocker = hold_checkpoint_id(pg_url, b)
    errors: list[BaseException] = []

    def put_between() -> None:
        x = PostgresSaver(pg_url)
        try:
            x.put(cfg("t", d), checkpoint(b, 9), {"source": "fork", "step": 9}, {})
        except BaseException as exc:
            errors.append(exc)
        finally:
            x.close()

    def retention_delete() -> None:
        try:
            sql(
                pg_url,
                "DELETE FROM agentmatic_checkpoints WHERE checkpoint_id = %s",
                (c,),
            )
        except BaseException as exc:
            errors.append(exc)

    x_thread = threading.Thread(target=put_between)
    x_thread.start()
    assert wait_for_lock_wait(pg_url, "%agentmatic_put%")
    d_thread = threading.Thread(target=retention_delete)
    d_thread.start()
    wait_for_lock_wait(pg_url, "DELETE FROM agentmatic_checkpoints%")
    blocker.rollback()
    blocker.close()
    x_thread.join(20)
    d_thread.join(20)
    assert not errors, errors
    assert pending(saver, "t", p) == before


# -- 5. a caller from before migration 7 --------------------------------------


def test_a_caller_from_before_migration_7_stores_its_writes_as_rows(saver, pg_url):
    """A process of the previous release keeps calling agentmatic_put with its
    step's writes and without `p_carry`; it reads writes only from rows, so
    its writes must still become rows (as migration 5 kept older callers'
    behaviour), not ride in columns it never reads."""
    made = [ids.checkpoint_id() for _ in range(2)]
    root(saver, "t", made[0])
    task = str(uuid.uuid4())
    blob = saver.serde.dumps_typed("old caller")
    sql(
        pg_url,
        "SELECT outcome FROM agentmatic_put(p_thread => 't', p_ns => '', "
        "p_id => %s, p_parent => %s, p_check => false, p_expected => NULL, "
        "p_strict => true, p_step => 1, p_source => 'loop', p_actor => NULL, "
        "p_run_id => NULL, p_type => 'msgpack', p_checkpoint => %s, "
        "p_metadata => '{}', p_agent => NULL, p_started_by => NULL, "
        "p_forked_from => NULL, p_created_at => NULL, b_channel => NULL, "
        "b_version => NULL, b_type => NULL, b_data => NULL, b_chunks => NULL, "
        "b_base => NULL, b_depth => NULL, c_hash => NULL, c_data => NULL, "
        "w_task => ARRAY[%s], w_path => ARRAY[''], w_idx => ARRAY[0], "
        "w_channel => ARRAY['x'], w_type => ARRAY[%s], w_blob => ARRAY[%s], "
        "w_extra => ARRAY[NULL::bytea], p_light => NULL)",
        (
            made[1],
            made[0],
            saver.serde.dumps(checkpoint(made[1], 1)),
            task,
            blob[0],
            blob[1],
        ),
    )
    assert carried_rows(pg_url, "t") == 0
    rows = sql(
        pg_url,
        "SELECT task_id FROM agentmatic_writes WHERE checkpoint_id = %s",
        (made[0],),
    )
    assert rows == [(task,)]


def test_a_branch_step_racing_delete_checkpoints_is_no_deadlock(saver, pg_url):
    """X stores a step from P, an older checkpoint (the transactional path:
    `_insert_writes` first copies what C carries for P into agentmatic_writes,
    then `_put` takes the thread row). Meanwhile delete_checkpoints([C]) holds
    the thread row and its DELETE's trigger copies the same write: a cycle."""

    made = [ids.checkpoint_id() for _ in range(3)]
    p, c, d = made
    root(saver, "t", p)
    step(saver, "t", p, c, 1, "one")
    step(saver, "t", c, d, 2, "two")
    before = pending(saver, "t", p)
    x = PostgresSaver(pg_url)
    uncarried, go = threading.Event(), threading.Event()
    original_put = x._put

    def paused_put(conn, write, expected_head, step_writes=None):
        if step_writes is None:  # the transactional path, after _insert_writes
            uncarried.set()
            go.wait(10)
        return original_put(conn, write, expected_head, step_writes)

    x._put = paused_put  # type: ignore[method-assign]
    errors: list[BaseException] = []

    def branch_step() -> None:
        try:
            cp = checkpoint(ids.checkpoint_id(), 5)
            x.put_step(
                cfg("t", p),
                [(str(uuid.uuid4()), "", [("x", "branch")])],
                cp,
                {"step": 5},
                {"x": cp["channel_versions"]["x"]},
            )
        except BaseException as exc:
            errors.append(exc)

    def delete_child() -> None:
        deleter = PostgresSaver(pg_url)
        try:
            deleter.delete_checkpoints("t", "", [c])
        except BaseException as exc:
            errors.append(exc)
        finally:
            deleter.close()

    x_thread = threading.Thread(target=branch_step)
    x_thread.start()
    assert uncarried.wait(10)
    d_thread = threading.Thread(target=delete_child)
    d_thread.start()
    # The DELETE's trigger waits for X's copy.
    wait_for_lock_wait(pg_url, "DELETE FROM agentmatic_checkpoints%")
    go.set()
    x_thread.join(20)
    d_thread.join(20)
    x.close()
    assert not errors, errors
    assert [w for w in pending(saver, "t", p) if w in before] == before


# -- 6. delete_checkpoints deletes "these checkpoints and their writes" ---------


def test_deleting_a_parent_deletes_its_writes(saver, pg_url):
    """The write on P rides in C; deleting P (not C) leaves it there for good:
    collect_garbage does not see it, and copy_thread copies it out as a row."""
    made = [ids.checkpoint_id() for _ in range(3)]
    root(saver, "t", made[0])
    step(saver, "t", made[0], made[1], 1, "secret-on-p")
    step(saver, "t", made[1], made[2], 2, "two")
    saver.delete_checkpoints("t", "", [made[0]])
    saver.collect_garbage()
    needle = b"secret-on-p".hex()
    left = sql(
        pg_url,
        "SELECT (SELECT count(*) FROM agentmatic_checkpoints c "
        "WHERE c::text LIKE '%%' || %s || '%%') + (SELECT count(*) "
        "FROM agentmatic_writes w WHERE w::text LIKE '%%' || %s || '%%')",
        (needle, needle),
    )[0][0]
    assert left == 0
