"""Retention: delete old checkpoints without breaking any thread.

`compact(saver_or_url, retention_days=N)` deletes checkpoints older than N
days, except:

- each thread's (and each subgraph namespace's) newest checkpoint;
- every ancestor a kept checkpoint needs to rebuild its values: a channel
  stored as deltas (the message log) lives in the writes of the checkpoints
  back to the nearest snapshot, so a paused run keeps that whole stretch;
- a checkpoint another thread was forked from (`forked_from`) or a replay
  started from (`replay_of`), with its own ancestors;
- anything in a thread under legal hold.

It works on any saver through `thread_ids`, `list` and `delete_checkpoints`.
A saver that can list what retention needs more cheaply (without decoding
values) provides `retention_rows(thread_id=None)`, yielding `RetentionRow`-shaped
tuples of every thread, or of the one given.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from agentmatic.checkpoint.base import BaseSaver, parent_id_of, thread_config
from agentmatic.checkpoint.reading import is_state_channel
from agentmatic.errors import SerializationError

log = logging.getLogger(__name__)

# What reading a damaged thread raises: a record that does not decode
# (SerializationError) or that has the wrong shape (ValueError, TypeError).
_UNREADABLE = (SerializationError, ValueError, TypeError)

# Gets each thread's doomed checkpoints before they are deleted (`S3Archive`).
Archive = Callable[[list[dict[str, Any]]], Any]


class RetentionRow(NamedTuple):
    """What retention needs to know about one checkpoint."""

    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str
    parent_id: str | None
    ts: str | None
    needs_parent: bool
    metadata: dict[str, Any]


@dataclass(frozen=True)
class CompactReport:
    """What one `compact` run did; every count is of checkpoints but `threads`."""

    cutoff: dt.datetime
    threads: int
    threads_held: int
    threads_unreadable: int
    deleted: int
    kept: int
    kept_recent: int
    kept_newest: int
    kept_for_values: int
    kept_for_forks: int


def needs_ancestors(checkpoint: dict[str, Any]) -> bool:
    """Return whether some state channel's value lives on the checkpoint's ancestors.

    That is a channel with a version but no stored value: a delta channel
    between snapshots. Read conservatively: any such channel counts.
    """
    stored = checkpoint.get("channel_values") or {}
    return any(
        is_state_channel(ch) and ch not in stored
        for ch in checkpoint.get("channel_versions") or {}
    )


async def compact(
    saver_or_url: BaseSaver | str,
    *,
    retention_days: int,
    now: dt.datetime | None = None,
    legal_holds: Iterable[str] = (),
    archive: Archive | None = None,
) -> CompactReport:
    """Delete checkpoints older than `retention_days` that nothing needs.

    `saver_or_url` is a saver or a URL such as ``sqlite:///path/to/file``.
    `archive` (an `S3Archive`, or any callable taking a list of rows) gets
    each thread's doomed checkpoints, with their writes, before they are
    deleted; if it raises, they are not. Safe to run again at any time;
    returns what was deleted and kept.
    """
    return await asyncio.to_thread(
        compact_sync,
        saver_or_url,
        retention_days=retention_days,
        now=now,
        legal_holds=legal_holds,
        archive=archive,
    )


def compact_sync(
    saver_or_url: BaseSaver | str,
    *,
    retention_days: int,
    now: dt.datetime | None = None,
    legal_holds: Iterable[str] = (),
    archive: Archive | None = None,
) -> CompactReport:
    """Synchronous twin of `compact`."""
    if retention_days < 0:
        raise ValueError("retention_days must not be negative")
    if isinstance(saver_or_url, str):
        saver = open_saver(saver_or_url)
        try:
            return _compact(saver, retention_days, now, legal_holds, archive)
        finally:
            saver.close()
    return _compact(saver_or_url, retention_days, now, legal_holds, archive)


def open_saver(url: str) -> BaseSaver:
    """Return the saver a URL names: ``sqlite:///relative``, ``sqlite:////abs``,
    ``postgresql://…``, ``redis://…`` or ``s3://bucket/prefix``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"{url!r} is not a saver URL (scheme://...)")
    if scheme == "sqlite":
        path = rest[1:] if rest.startswith("/") else rest
        if not path:
            raise ValueError(f"{url!r} names no file")
        from agentmatic.checkpoint.sqlite import SQLiteSaver

        return SQLiteSaver(path)
    if scheme == "s3":
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise ValueError(f"{url!r} names no bucket (s3://bucket/prefix)")
        from agentmatic.checkpoint.s3 import S3Saver

        return S3Saver(bucket=bucket, prefix=prefix.strip("/"))
    backends = {
        "postgres": ("agentmatic.checkpoint.postgres", "PostgresSaver"),
        "postgresql": ("agentmatic.checkpoint.postgres", "PostgresSaver"),
        "redis": ("agentmatic.checkpoint.redis", "RedisSaver"),
        "rediss": ("agentmatic.checkpoint.redis", "RedisSaver"),
    }
    if scheme in backends:
        module, name = backends[scheme]
        saver_class = getattr(importlib.import_module(module), name)
        saver: BaseSaver = (
            saver_class(url=url) if name == "RedisSaver" else saver_class(url)
        )
        return saver
    raise ValueError(f"no saver for URLs of scheme {scheme!r}")


def _compact(
    saver: BaseSaver,
    retention_days: int,
    now: dt.datetime | None,
    legal_holds: Iterable[str],
    archive: Archive | None = None,
) -> CompactReport:
    now = now or dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=dt.UTC)
    cutoff = now - dt.timedelta(days=retention_days)
    holds = {str(t) for t in legal_holds}
    rows, unreadable = _rows(saver)

    # A fork or replay names its source checkpoint; that one stays.
    referenced: set[tuple[str, str]] = set()
    for row in rows:
        source = row.metadata.get("forked_from")
        if isinstance(source, dict) and source.get("checkpoint_id"):
            referenced.add((str(source.get("thread_id")), str(source["checkpoint_id"])))
        replay = row.metadata.get("replay_of")
        if replay:
            referenced.add((row.thread_id, str(replay)))

    by_key: dict[tuple[str, str], dict[str, RetentionRow]] = {}
    for row in rows:
        by_key.setdefault((row.thread_id, row.checkpoint_ns), {})[row.checkpoint_id] = (
            row
        )

    counts = dict.fromkeys(("recent", "newest", "values", "forks", "deleted"), 0)
    kept_total = 0
    threads = {row.thread_id for row in rows} | unreadable
    for (thread_id, ns), items in by_key.items():
        if thread_id in holds or thread_id in unreadable:
            kept_total += len(items)
            continue
        keep: dict[str, str] = {max(items): "newest"}
        for cid, row in items.items():
            if cid in keep:
                continue
            if (thread_id, cid) in referenced:
                keep[cid] = "forks"
            elif not _older_than(row.ts, cutoff):
                keep[cid] = "recent"
        stack = list(keep)
        while stack:
            row = items[stack.pop()]
            parent = row.parent_id
            if row.needs_parent and parent in items and parent not in keep:
                keep[parent] = "values"
                stack.append(parent)
        for reason in keep.values():
            counts[reason] += 1
        kept_total += len(keep)
        doomed = sorted(cid for cid in items if cid not in keep)
        if doomed and archive is not None:
            try:
                archived = _archive_rows(saver, thread_id, ns, doomed)
            except _UNREADABLE as exc:
                # Never delete what cannot be archived: the thread stays whole.
                log.warning("retention skips thread %s: %s", thread_id, exc)
                unreadable.add(thread_id)
                kept_total += len(doomed)
                continue
            archive(archived)
        if doomed:
            counts["deleted"] += saver.delete_checkpoints(thread_id, ns, doomed)

    report = CompactReport(
        cutoff=cutoff,
        threads=len(threads),
        threads_held=len(threads & holds),
        threads_unreadable=len(unreadable - holds),
        deleted=counts["deleted"],
        kept=kept_total,
        kept_recent=counts["recent"],
        kept_newest=counts["newest"],
        kept_for_values=counts["values"],
        kept_for_forks=counts["forks"],
    )
    log.info(
        "compaction older than %s: deleted %s checkpoints, kept %s in %s threads "
        "(%s on legal hold)",
        cutoff.isoformat(),
        report.deleted,
        report.kept,
        report.threads,
        report.threads_held,
    )
    return report


def _archive_rows(
    saver: BaseSaver, thread_id: str, ns: str, ids: list[str]
) -> list[dict[str, Any]]:
    """Return checkpoints as an archive gets them: with their values and writes.

    Each is read back and serialized again with the saver's serializer, so a
    checkpoint that cannot be read raises here, before anything is deleted.
    """
    rows: list[dict[str, Any]] = []
    for cid in ids:
        tup = saver.get_tuple(thread_config(thread_id, cid, ns))
        if tup is None:
            continue
        parent = parent_id_of(tup)
        checkpoint_type, checkpoint = saver.serde.dumps_typed(tup.checkpoint)
        metadata_type, metadata = saver.serde.dumps_typed(dict(tup.metadata or {}))
        writes = []
        for task_id, channel, value in tup.pending_writes or []:
            value_type, blob = saver.serde.dumps_typed(value)
            writes.append(
                {
                    "task_id": task_id,
                    "channel": channel,
                    "type": value_type,
                    "blob": blob,
                }
            )
        rows.append(
            {
                "thread_id": thread_id,
                "checkpoint_ns": ns,
                "checkpoint_id": cid,
                "parent_checkpoint_id": parent,
                "type": checkpoint_type,
                "checkpoint": checkpoint,
                "metadata_type": metadata_type,
                "metadata": metadata,
                "writes": writes,
            }
        )
    return rows


def _rows(saver: BaseSaver) -> tuple[list[RetentionRow], set[str]]:
    """Return every checkpoint's row, and the threads that could not be read."""
    hook = getattr(saver, "retention_rows", None)
    if callable(hook):
        try:
            return [RetentionRow(*row) for row in hook()], set()
        except _UNREADABLE:
            pass  # some thread cannot be read: go thread by thread
    rows: list[RetentionRow] = []
    unreadable: set[str] = set()
    for thread_id in list(saver.thread_ids()):
        try:
            rows.extend(
                [RetentionRow(*row) for row in hook(thread_id)]
                if callable(hook)
                else list(_scan_thread(saver, thread_id))
            )
        except _UNREADABLE as exc:
            # Never delete what we cannot read: the thread is left whole.
            log.warning("retention skips thread %s: %s", thread_id, exc)
            unreadable.add(thread_id)
    return rows, unreadable


def _scan_thread(saver: BaseSaver, thread_id: str) -> Iterator[RetentionRow]:
    # No checkpoint_ns in the config: every namespace of the thread.
    for tup in list(saver.list({"configurable": {"thread_id": thread_id}})):
        conf = tup.config["configurable"]
        parent = parent_id_of(tup)
        yield RetentionRow(
            thread_id=thread_id,
            checkpoint_ns=str(conf.get("checkpoint_ns") or ""),
            checkpoint_id=str(conf["checkpoint_id"]),
            parent_id=parent,
            ts=tup.checkpoint.get("ts"),
            needs_parent=parent is not None and needs_ancestors(tup.checkpoint),
            metadata=dict(tup.metadata or {}),
        )


def _older_than(ts: str | None, cutoff: dt.datetime) -> bool:
    """Return whether a checkpoint's timestamp is before the cutoff (unknown: no)."""
    if not ts:
        return False
    try:
        when = dt.datetime.fromisoformat(ts)
    except ValueError:
        return False
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when < cutoff


__all__ = [
    "CompactReport",
    "RetentionRow",
    "compact",
    "compact_sync",
    "needs_ancestors",
    "open_saver",
]
