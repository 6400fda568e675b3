"""Retention (`compact`) and the move from LangGraph's tables (`upgrade`).

Both take a database URL or a `PostgresSaver`, are awaitable (with a sync
twin), and may be run again at any time: a second run finds nothing to do.
"""

# ruff: noqa: S608
# SQL text here is assembled from constants only (a column or an empty
# string, chosen by what the database has); values are bound parameters.

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg

from agentmatic.checkpoint.base import NO_CHECK, TASKS
from agentmatic.checkpoint.postgres.saver import (
    PostgresSaver,
    RawValue,
    _Write,
    checkpoint_metadata,
)
from agentmatic.checkpoint.reading import version_key
from agentmatic.checkpoint.retention import CompactReport
from agentmatic.checkpoint.retention import compact_sync as _compact
from agentmatic.errors import SerializationError

log = logging.getLogger(__name__)

Archive = Callable[[list[dict[str, Any]]], Any]


@contextmanager
def _saver(url_or_saver: str | PostgresSaver) -> Iterator[PostgresSaver]:
    if isinstance(url_or_saver, PostgresSaver):
        yield url_or_saver
        return
    saver = PostgresSaver(url_or_saver)
    try:
        yield saver
    finally:
        saver.close()


# -- retention ---------------------------------------------------------------------


async def compact(
    url_or_saver: str | PostgresSaver,
    *,
    retention_days: int,
    legal_holds: Iterable[str] = (),
    archive: Archive | None = None,
    now: dt.datetime | None = None,
) -> CompactReport:
    """Delete checkpoints older than `retention_days` that nothing needs.

    Kept, whatever their age: each thread's newest checkpoint, the sources
    of forks and replays, and every checkpoint of a thread in
    `legal_holds`. A remaining checkpoint whose message log was rebuilt from
    deleted checkpoints gets it stored first. Then everything nothing
    references any more (values, list chunks, writes, also those left by a
    plain ``DELETE``) is collected. `archive`, if given (an `S3Archive`, or
    any callable taking a list of rows), receives each thread's doomed
    checkpoints with their values and writes before they are deleted.
    """
    return await asyncio.to_thread(
        compact_sync,
        url_or_saver,
        retention_days=retention_days,
        legal_holds=legal_holds,
        archive=archive,
        now=now,
    )


def compact_sync(
    url_or_saver: str | PostgresSaver,
    *,
    retention_days: int,
    legal_holds: Iterable[str] = (),
    archive: Archive | None = None,
    now: dt.datetime | None = None,
) -> CompactReport:
    """Synchronous twin of `compact`."""
    holds = list(legal_holds)
    with _saver(url_or_saver) as saver:
        report = _compact(
            saver,
            retention_days=retention_days,
            now=now,
            legal_holds=holds,
            archive=archive,
        )
        saver.collect_garbage()
    return report


# -- the upgrade from LangGraph -------------------------------------------------------


@dataclass(frozen=True)
class UpgradeReport:
    """What one `upgrade` run copied; zero everywhere on a second run."""

    threads: int
    checkpoints: int
    writes: int
    found_langgraph: bool


async def upgrade(url_or_saver: str | PostgresSaver) -> UpgradeReport:
    """Copy a database written by LangGraph's PostgresSaver into our tables.

    LangGraph's tables (``checkpoints``, ``checkpoint_blobs``,
    ``checkpoint_writes``) are read, never changed. Each thread is copied in
    one transaction; a checkpoint already copied is skipped, so the upgrade
    can be interrupted and run again, and a later run picks up what
    LangGraph wrote meanwhile. Values are copied as stored; message lists
    are re-stored as chunks and appends, which takes LangGraph's copy of the
    whole list at every step down to about one copy of each message.
    """
    return await asyncio.to_thread(upgrade_sync, url_or_saver)


def upgrade_sync(url_or_saver: str | PostgresSaver) -> UpgradeReport:
    """Synchronous twin of `upgrade`."""
    with _saver(url_or_saver) as saver:
        saver.setup()
        with saver._conn() as conn:
            found = conn.execute(
                "SELECT to_regclass('checkpoints') IS NOT NULL "
                "AND to_regclass('checkpoint_blobs') IS NOT NULL "
                "AND to_regclass('checkpoint_writes') IS NOT NULL"
            ).fetchone()
            if not (found and found[0]):
                log.info("upgrade: no LangGraph tables in this database")
                return UpgradeReport(0, 0, 0, found_langgraph=False)
            has_path = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM information_schema.columns "
                "WHERE table_name = 'checkpoint_writes' AND column_name = 'task_path' "
                "AND table_schema = current_schema())"
            ).fetchone()
            threads = [
                r[0]
                for r in conn.execute(
                    "SELECT DISTINCT thread_id FROM checkpoints ORDER BY thread_id"
                )
            ]
        copied = written = touched = 0
        for thread_id in threads:
            done, writes = _upgrade_thread(
                saver, thread_id, bool(has_path and has_path[0])
            )
            copied += done
            written += writes
            touched += 1 if done or writes else 0
    if copied or written:
        log.info(
            "upgrade: copied %s checkpoints and %s writes of %s threads from LangGraph",
            copied,
            written,
            touched,
        )
    return UpgradeReport(touched, copied, written, found_langgraph=True)


def _upgrade_thread(
    saver: PostgresSaver, thread_id: str, has_path: bool
) -> tuple[int, int]:
    """Copy one thread's missing checkpoints and writes; return their counts."""
    path = "task_path" if has_path else "''"
    with saver._conn() as conn, conn.transaction():
        rows = conn.execute(
            "SELECT c.checkpoint_ns, c.checkpoint_id, c.parent_checkpoint_id, "
            "c.checkpoint, c.metadata FROM checkpoints c WHERE c.thread_id = %s "
            "AND NOT EXISTS (SELECT 1 FROM agentmatic_checkpoints a "
            "WHERE a.thread_id = c.thread_id AND a.checkpoint_ns = c.checkpoint_ns "
            "AND a.checkpoint_id = c.checkpoint_id) "
            "ORDER BY c.checkpoint_ns, c.checkpoint_id",
            (thread_id,),
        ).fetchall()
        previous: dict[str, tuple[str, dict[str, Any]]] = {}
        for ns, cid, parent, checkpoint, metadata in rows:
            values = _values(saver, conn, thread_id, ns, checkpoint)
            copy = {**checkpoint, "channel_values": values}
            if int(checkpoint.get("v") or 0) < 4 and parent:
                _move_pending_sends(saver, conn, thread_id, ns, parent, copy)
            meta = checkpoint_metadata({}, metadata or {})
            versions = dict(copy.get("channel_versions") or {})
            last_id, last_versions = previous.get(ns, ("", {}))
            changed = {
                ch: v
                for ch, v in versions.items()
                if parent != last_id or last_versions.get(ch) != v
            }
            previous[ns] = (cid, versions)
            saver._put(
                conn,
                _Write(
                    thread_id,
                    ns,
                    cid,
                    parent,
                    copy,
                    meta,
                    changed,
                    created_at=_time_of(copy.get("ts")),
                ),
                NO_CHECK,
            )
        writes = conn.execute(
            "INSERT INTO agentmatic_writes (thread_id, checkpoint_ns, checkpoint_id, "
            "task_id, idx, channel, type, blob, task_path, segment) "
            f"SELECT w.thread_id, w.checkpoint_ns, w.checkpoint_id, w.task_id, w.idx, "
            f"w.channel, w.type, w.blob, {path}, (SELECT a.segment "
            "FROM agentmatic_checkpoints a WHERE a.thread_id = w.thread_id "
            "AND a.checkpoint_ns = w.checkpoint_ns "
            "AND a.checkpoint_id = w.checkpoint_id) "
            "FROM checkpoint_writes w WHERE w.thread_id = %s ON CONFLICT DO NOTHING",
            (thread_id,),
        ).rowcount
    saver._forget(thread_id)
    return len(rows), max(writes, 0)


def _values(
    saver: PostgresSaver,
    conn: psycopg.Connection[Any],
    thread_id: str,
    ns: str,
    checkpoint: dict[str, Any],
) -> dict[str, Any]:
    """Return a LangGraph checkpoint's channel values, as LangGraph reads them.

    Primitives sit in the checkpoint itself; the rest (and a delta channel's
    snapshot, marked ``true`` inline) in ``checkpoint_blobs`` by version. A
    value our serializer reads is passed on decoded (so lists can be stored
    in chunks); any other is copied as stored.
    """
    values = dict(checkpoint.get("channel_values") or {})
    versions = checkpoint.get("channel_versions") or {}
    if not versions:
        return values
    channels = list(versions)
    found = conn.execute(
        "SELECT channel, type, blob FROM checkpoint_blobs WHERE thread_id = %s "
        "AND checkpoint_ns = %s AND (channel, version) IN "
        "(SELECT * FROM unnest(%s::text[], %s::text[]))",
        (thread_id, ns, channels, [str(versions[c]) for c in channels]),
    ).fetchall()
    for channel, type_, blob in found:
        if type_ == "empty":
            continue
        data = bytes(blob) if blob is not None else b""
        try:
            values[channel] = saver.serde.loads_typed(
                (type_, data), thread_id=thread_id
            )
        except SerializationError:
            values[channel] = RawValue(type_, data)
    return values


def _move_pending_sends(
    saver: PostgresSaver,
    conn: psycopg.Connection[Any],
    thread_id: str,
    ns: str,
    parent_id: str,
    checkpoint: dict[str, Any],
) -> None:
    """Give a checkpoint older than format 4 the sends its parent queued.

    LangGraph kept them as the parent's writes to ``__pregel_tasks``, and
    moves them into the checkpoint when it reads one; we do it once here.
    """
    rows = conn.execute(
        "SELECT type, blob FROM checkpoint_writes WHERE thread_id = %s "
        "AND checkpoint_ns = %s AND checkpoint_id = %s AND channel = %s "
        "ORDER BY task_id, idx",
        (thread_id, ns, parent_id, TASKS),
    ).fetchall()
    if not rows:
        return
    sends = [
        saver.serde.loads_typed((t, bytes(b)), thread_id=thread_id) for t, b in rows
    ]
    values = checkpoint["channel_values"]
    values[TASKS] = sends
    versions = dict(checkpoint.get("channel_versions") or {})
    versions[TASKS] = max(versions.values(), key=version_key) if versions else 1
    checkpoint["channel_versions"] = versions


def _time_of(ts: Any) -> dt.datetime | None:
    if not isinstance(ts, str):
        return None
    try:
        when = dt.datetime.fromisoformat(ts)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


__all__ = [
    "CompactReport",
    "UpgradeReport",
    "compact",
    "compact_sync",
    "upgrade",
    "upgrade_sync",
]
