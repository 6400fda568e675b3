"""PostgresSaver: checkpoints in Postgres, for many hosts and processes.

A write is one transaction. It first locks the thread's row in
``agentmatic_threads`` (so writers of one thread queue, and a write naming
the head it expects either sees that head or fails with `ThreadConflict`),
then inserts the checkpoint row, the channel values it brings and the
thread's new bookkeeping. Stored checkpoints are never updated.

Values. Small values stay inside the checkpoint row; larger ones go to
``agentmatic_blobs`` once per channel version. Lists are stored in chunks
or as appends (see `lists`), so a LangGraph graph that writes its whole
message list at every step stores each message about once. Our runtime's
message log is a *delta channel*: a checkpoint between two snapshots
stores no messages at all, they are the writes of the tasks on the way.

Reading a delta channel never needs the checkpoint rows in between: within
one segment (see `schema`) its value at a checkpoint is the nearest stored
value before it in the segment plus the writes on that channel between the
two, found by id range. So a plain ``DELETE FROM agentmatic_checkpoints``
leaves every remaining checkpoint readable. Deleting through the saver
(`delete_checkpoints`, `prune`, `compact`) first stores the rebuilt value
(a ``derived`` blob) of each remaining checkpoint that would lose its base,
then deletes, then collects what nothing references.
"""

# ruff: noqa: S608
# SQL text here is assembled from constants only (column lists, placeholder
# groups, operators); every value that comes from input is a bound parameter.

from __future__ import annotations

import builtins
import contextvars
import json
import logging
import os
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
import ormsgpack
import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from agentmatic.checkpoint.base import (
    DECISION,
    ERROR,
    INTERRUPT,
    NO_CHECK,
    TASKS,
    WRITES_IDX_MAP,
    BaseSaver,
    CheckpointTuple,
    PendingWrite,
    check_checkpoint_id,
    check_filter_keys,
    check_history_args,
    check_limit,
    check_namespace,
    check_state_args,
    check_thread_id,
    check_thread_page,
    checked_before,
    config_parts,
    thread_config,
)
from agentmatic.checkpoint.light import minimal_from_msgpack
from agentmatic.checkpoint.memory import config_parts_loose
from agentmatic.checkpoint.postgres import lists, packing
from agentmatic.checkpoint.postgres.schema import LATEST, apply_migrations
from agentmatic.checkpoint.reading import (
    LLM_NODES,
    START,
    ValueResolver,
    _reducer_for,
    assemble_state,
    build_state,
    decode_cursor,
    encode_cursor,
    messages_written,
    next_nodes,
    states_with_values,
    trigger_target,
)
from agentmatic.checkpoint.serde import DeltaSnapshot, Serializer
from agentmatic.errors import (
    AgentmaticError,
    ConfigurationError,
    CorruptCheckpoint,
    DisallowedType,
    SerializationError,
    ThreadConflict,
)
from agentmatic.state import Config, State, ThreadInfo, ThreadPage

log = logging.getLogger(__name__)

MESSAGES = "messages"
# Inside a stored checkpoint: the channels whose values live in blobs.
BLOBS_KEY = "~blobs"
# Values whose packed form is at most this long stay inside the checkpoint.
INLINE_MAX = 64
# Writes a timeline decodes; every other write is only counted.
TIMELINE_CHANNELS = (INTERRUPT, DECISION, ERROR)
PAGE = 500
# The SQLSTATE `agentmatic_put` raises when a task of a step stored a result
# before (migration 6).
RESULT_STORED = "AM001"
# More ids than this are sent to the database as a range, not a list.
ID_LIST_MAX = 64
MEMO_THREADS = 256
# Distinct timeline summaries a saver keeps decoded (see `_summary`).
SUMMARIES_KEPT = 1024
COUNTERS = "counters_since_delta_snapshot"

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# Config keys LangGraph never copies into a checkpoint's metadata.
_NOT_METADATA = frozenset(
    {
        "thread_id",
        "checkpoint_id",
        "checkpoint_ns",
        "checkpoint_map",
        "langgraph_step",
        "langgraph_node",
        "langgraph_triggers",
        "langgraph_path",
        "langgraph_checkpoint_ns",
    }
)

# Metadata comes as text, parsed by `_row_metadata` with the json module:
# quicker than psycopg's jsonb loader, and the same whatever loader or client
# encoding the connection has. The run id comes as text too.
ROW = (
    "thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, segment, "
    "type, checkpoint, metadata::text AS metadata, created_at, step, source, "
    "actor, run_id::text AS run_id, light"
)
# A row as a timeline reads it: a checkpoint with a `light` summary is not sent.
LIGHT_ROW = (
    "thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, segment, "
    "CASE WHEN light IS NULL THEN type END AS type, "
    "CASE WHEN light IS NULL THEN checkpoint END AS checkpoint, "
    "metadata::text AS metadata, created_at, step, source, actor, "
    "run_id::text AS run_id, light"
)
# Bookkeeping metadata kept inside the (compressed) checkpoint rather than in
# the jsonb column; it cannot be filtered on.
HIDDEN_META = ("counters_since_delta_snapshot",)
HIDDEN_KEY = "~meta"
# Inside a stored checkpoint whose ``ts`` is its row's `created_at`.
TS_IN_ROW_KEY = "~ts"
BLOB = "channel, version, segment, checkpoint_id, type, data, chunks, base_version"
WRITE = "checkpoint_id, task_id, channel, type, blob, task_path, idx, extra"
# The write a checkpoint row `c` carries for its parent (see migration 7):
# each column of agentmatic_writes as an expression on `c`.
CARRIED_AS_WRITE = {
    "checkpoint_id": "c.parent_checkpoint_id",
    "task_id": "c.carried_task_id::text",
    "channel": "c.carried_channel",
    "type": "coalesce(c.carried_type, c.type)",
    "blob": "c.carried_blob",
    "task_path": "c.carried_task_path",
    "idx": "c.carried_idx",
    "extra": "c.carried_extra",
}
# Carried writes read as `WRITE` reads rows of their own.
CARRIED = ", ".join(CARRIED_AS_WRITE[column] for column in WRITE.split(", "))
# A checkpoint row `c` whose parent is gone.
PARENT_GONE = (
    "NOT EXISTS (SELECT 1 FROM agentmatic_checkpoints p "
    "WHERE p.thread_id = c.thread_id AND p.checkpoint_ns = c.checkpoint_ns "
    "AND p.checkpoint_id = c.parent_checkpoint_id)"
)
# The row after each checkpoint of `%s::text[]`, when it carries that
# checkpoint's writes (a carrying row is always its parent's next by id).
CARRIED_AFTER = (
    "FROM unnest(%s::text[]) AS p(id) CROSS JOIN LATERAL (SELECT "
    "n.parent_checkpoint_id, n.carried_task_id, n.carried_channel, n.type, "
    "n.carried_type, n.carried_blob, n.carried_task_path, n.carried_idx, "
    "n.carried_extra FROM agentmatic_checkpoints n WHERE n.thread_id = %s "
    "AND n.checkpoint_ns = %s AND n.checkpoint_id > p.id "
    "ORDER BY n.checkpoint_id LIMIT 1) c "
    "WHERE c.parent_checkpoint_id = p.id AND c.carried_task_id IS NOT NULL"
)


@dataclass
class _Row:
    """A checkpoint row, decoded: the checkpoint holds only its inline values."""

    thread_id: str
    ns: str
    checkpoint_id: str
    parent_id: str | None
    segment: int
    checkpoint: dict[str, Any]
    blob_channels: list[str]
    metadata: dict[str, Any]
    created_at: datetime | None
    # Read from the `light` summary instead of the checkpoint: the nodes it
    # runs next. Its `checkpoint` then holds only its id and ts.
    scheduled: tuple[str, ...] | None = None
    # With `scheduled`: whether the checkpoint has a message log.
    has_messages: bool = False

    @property
    def delta_channels(self) -> list[str]:
        """Channels kept as deltas whose value this checkpoint does not store."""
        counters = self.metadata.get(COUNTERS) or {}
        versions = self.checkpoint.get("channel_versions") or {}
        stored = self.checkpoint.get("channel_values") or {}
        return [
            ch
            for ch in counters
            if ch in versions and ch not in stored and ch not in self.blob_channels
        ]


@dataclass
class _Blob:
    channel: str
    version: str
    segment: int
    checkpoint_id: str
    type: str
    data: bytes | None
    chunks: bytes | None
    base_version: str | None


@dataclass
class _Memo:
    """The saver's memory of the last checkpoint it wrote in a thread."""

    checkpoint_id: str
    segment: int
    stored: dict[str, str] = field(default_factory=dict)
    lists: dict[str, lists.Memo] = field(default_factory=dict)


@dataclass
class _Plan:
    inline: dict[str, Any]
    blob_channels: list[str]
    blobs: list[lists.BlobRow]
    chunks: dict[bytes, bytes]
    memo: _Memo


@dataclass
class _Write:
    """One `put`'s arguments, resolved."""

    thread_id: str
    ns: str
    checkpoint_id: str
    parent_id: str | None
    checkpoint: dict[str, Any]
    metadata: dict[str, Any]
    new_versions: dict[str, Any]
    # When the checkpoint was written, if not now (a copy of an old one).
    created_at: datetime | None = None


@dataclass
class _StepWrites:
    """The writes of a step's tasks, as the columns ``agentmatic_put`` takes."""

    rows: list[tuple[str, str, int, str, str, bytes, bytes | None]] = field(
        default_factory=list
    )

    def add(
        self,
        task_id: str,
        task_path: str,
        rows: Sequence[tuple[int, str, str, bytes, bytes | None]],
    ) -> None:
        for idx, channel, type_, blob, extra in rows:
            self.rows.append((task_id, task_path, idx, channel, type_, blob, extra))

    def columns(self) -> tuple[list[Any], ...]:
        return tuple(list(column) for column in zip(*self.rows, strict=True))


class PostgresSaver(BaseSaver):
    """Checkpoints in Postgres through a pool of psycopg connections.

    `url` is a libpq connection string or URL. The schema is created or
    upgraded on first use (see `setup`). Each sync method has an async twin
    that runs it in a worker thread.
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        allow: Iterable[Any] = (),
        chain_key: Any = None,
        serde: Serializer | None = None,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(serde=serde, allow=allow, chain_key=chain_key)
        self.url = url
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max(1, pool_size),
            kwargs={"autocommit": True},
            timeout=timeout,
            open=False,
            name="agentmatic",
        )
        self._timeout = timeout
        self._ready = False
        self._lock = threading.Lock()
        self._memos: OrderedDict[tuple[str, str], _Memo] = OrderedDict()
        self._chunk_ends = lists.KnownEnds()
        self._lease_renewed: dict[tuple[str, str], tuple[float, float]] = {}
        # The connection of the `_snapshot` this thread (or task) reads in.
        self._pinned: contextvars.ContextVar[psycopg.Connection[Any] | None] = (
            contextvars.ContextVar(f"agentmatic_pinned_{id(self)}", default=None)
        )
        # Decoded timeline summaries, by their stored bytes (see `_summary`).
        self._summaries: dict[
            bytes, tuple[tuple[str, ...], bool, dict[str, Any] | None]
        ] = {}

    @classmethod
    def from_env(cls, **kwargs: Any) -> PostgresSaver:
        """Return a saver for ``AGENTMATIC_POSTGRES_URL``, else ``DATABASE_URL``."""
        for name in ("AGENTMATIC_POSTGRES_URL", "DATABASE_URL"):
            url = os.environ.get(name)
            if url:
                return cls(url, **kwargs)
        raise ConfigurationError(
            "PostgresSaver.from_env() needs AGENTMATIC_POSTGRES_URL or "
            "DATABASE_URL to name the database (a postgresql:// URL)"
        )

    def __repr__(self) -> str:
        return f"PostgresSaver({_redact(self.url)!r})"

    # -- connections and schema ------------------------------------------------

    def setup(self) -> builtins.list[int]:
        """Create or upgrade the tables; return the migrations applied now.

        Safe to call from many processes at once; a no-op when up to date.
        """
        self._open_pool()
        with (
            self._pool.connection() as conn,
            conn.transaction(),
            conn.cursor() as cur,
        ):
            applied = apply_migrations(cur)
            self._refuse_newer(_schema_version(cur))
        if applied:
            log.info("postgres checkpoint schema: applied migrations %s", applied)
        self._ready = True
        return applied

    def _open_pool(self) -> None:
        with self._lock:
            if self._pool.closed:
                try:
                    self._pool.open(wait=True, timeout=self._timeout)
                except PoolTimeout as exc:
                    raise ConfigurationError(
                        f"cannot connect to Postgres at {_redact(self.url)}: {exc}"
                    ) from exc

    def _refuse_newer(self, current: int) -> None:
        """Refuse a schema this code does not know: it may store what we skip."""
        if current > LATEST:
            raise ConfigurationError(
                f"the checkpoint schema at {_redact(self.url)} is at migration "
                f"{current}, newer than this Agentmatic knows ({LATEST}): "
                "upgrade Agentmatic before using this database"
            )

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        if not self._ready:
            self._open_pool()
            with self._pool.connection() as conn:
                row = conn.execute(
                    "SELECT to_regclass('agentmatic_migrations') IS NOT NULL"
                ).fetchone()
                current = _schema_version(conn) if row and row[0] else 0
            self._refuse_newer(current)
            if current < LATEST:
                self.setup()
            self._ready = True
        pinned = self._pinned.get()
        if pinned is not None:
            yield pinned
            return
        with self._pool.connection() as conn:
            yield conn

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        """Run this thread's reads inside one read-only snapshot.

        A read that takes several statements (a base value, then the writes
        since) must not see a delete that commits between them: it moves the
        base past writes it then removes. Nested calls share the outer one.
        """
        if self._pinned.get() is not None:
            yield
            return
        with self._conn() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            token = self._pinned.set(conn)
            try:
                yield
            finally:
                self._pinned.reset(token)

    def close(self) -> None:
        """Close the pool; the saver is not used afterwards."""
        self._pool.close()

    def __enter__(self) -> PostgresSaver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- encoding ----------------------------------------------------------------

    def _memo(self, thread_id: str, ns: str) -> _Memo | None:
        with self._lock:
            memo = self._memos.get((thread_id, ns))
            if memo is not None:
                self._memos.move_to_end((thread_id, ns))
            return memo

    def _remember(self, thread_id: str, ns: str, memo: _Memo) -> None:
        with self._lock:
            self._memos[(thread_id, ns)] = memo
            self._memos.move_to_end((thread_id, ns))
            while len(self._memos) > MEMO_THREADS:
                self._memos.popitem(last=False)

    def _forget(self, thread_id: str) -> None:
        with self._lock:
            for key in [k for k in self._memos if k[0] == thread_id]:
                del self._memos[key]

    def _plan(
        self,
        checkpoint: dict[str, Any],
        new_versions: dict[str, Any],
        parent: _Memo | None,
    ) -> _Plan:
        """Split a checkpoint's values into inline ones and blob rows."""
        versions = checkpoint.get("channel_versions") or {}
        inline: dict[str, Any] = {}
        blob_channels: builtins.list[str] = []
        blobs: builtins.list[lists.BlobRow] = []
        chunks: dict[bytes, bytes] = {}
        memo = _Memo(checkpoint_id=str(checkpoint["id"]), segment=0)
        chunked = _splits_lists(self.serde)
        for channel, value in (checkpoint.get("channel_values") or {}).items():
            raw_version = versions.get(channel)
            if raw_version is None or _is_small(value, self.serde):
                inline[channel] = value
                continue
            version = str(raw_version)
            blob_channels.append(channel)
            if isinstance(value, RawValue):
                blobs.append(lists.BlobRow(channel, version, value.type, value.data))
                memo.stored[channel] = version
                continue
            kind = lists.list_kind(value) if chunked else None
            known = parent is not None and parent.stored.get(channel) == version
            if known and channel not in new_versions:
                # Same version as the parent's: its blob is stored already.
                assert parent is not None
                memo.stored[channel] = version
                if channel in parent.lists:
                    memo.lists[channel] = parent.lists[channel]
                continue
            if kind is None:
                tag, data = packing.pack_typed(*self.serde.dumps_typed(value))
                blobs.append(lists.BlobRow(channel, version, tag, data))
                memo.stored[channel] = version
                continue
            blob_type, items = kind
            before = parent.lists.get(channel) if parent is not None else None
            appended = (
                lists.encode_append(self.serde, channel, version, before, items)
                if before is not None and before.kind == blob_type
                else None
            )
            if appended is not None:
                row, list_memo = appended
            else:
                row, new_chunks, list_memo = lists.encode_whole(
                    self.serde, channel, version, blob_type, items, self._chunk_ends
                )
                chunks.update(new_chunks)
            blobs.append(row)
            memo.stored[channel] = version
            memo.lists[channel] = list_memo
        return _Plan(inline, blob_channels, blobs, chunks, memo)

    def _encode_checkpoint(
        self,
        checkpoint: dict[str, Any],
        plan: _Plan,
        metadata: dict[str, Any],
        ts_in_column: bool,
        summarized: bool,
    ) -> tuple[str, bytes]:
        # The id has a column of its own, and so has ts when `created_at`
        # holds it exactly; both are put back when read.
        dropped = (
            ("id", "channel_values", "ts") if ts_in_column else ("id", "channel_values")
        )
        stored = {k: v for k, v in checkpoint.items() if k not in dropped}
        if ts_in_column:
            stored[TS_IN_ROW_KEY] = 1
        stored["channel_values"] = plan.inline
        if plan.blob_channels:
            stored[BLOBS_KEY] = plan.blob_channels
        hidden = {k: metadata[k] for k in HIDDEN_META if k in metadata}
        if hidden and not summarized:
            # With a summary, the hidden metadata is kept there instead.
            stored[HIDDEN_KEY] = hidden
        return packing.pack_typed(*self.serde.dumps_typed(stored))

    def _decode_row(self, raw: Sequence[Any], serde: Serializer | None = None) -> _Row:
        """Decode a `ROW`, or a `LIGHT_ROW` whose summary stands in for it."""
        thread_id, ns, cid, parent, segment, type_, data, metadata, created = raw[:9]
        # A chained saver writes no summary and trusts none: it reads only
        # what the chain covers.
        light = raw[13] if len(raw) > 13 and self.chain is None else None
        summary = self._summary(thread_id, cid, light) if light is not None else None
        hidden = summary[2] if summary is not None else None
        if data is None and summary is not None:
            return _Row(
                thread_id=thread_id,
                ns=ns,
                checkpoint_id=cid,
                parent_id=parent,
                segment=int(segment),
                checkpoint={"id": cid, "ts": _ts_text(created)},
                blob_channels=[],
                metadata=_row_metadata(metadata, hidden, raw[9:13]),
                created_at=created,
                scheduled=summary[0],
                has_messages=summary[1],
            )
        row = _Row(
            thread_id=thread_id,
            ns=ns,
            checkpoint_id=cid,
            parent_id=parent,
            segment=int(segment),
            checkpoint={"id": cid},
            blob_channels=[],
            metadata={},
            created_at=created,
        )
        serde = serde or self.serde
        try:
            checkpoint = serde.loads_typed(
                packing.unpack_typed(type_, bytes(data)), thread_id=thread_id
            )
        except DisallowedType:
            raise
        except SerializationError as exc:
            raise CorruptCheckpoint(thread_id, cid, str(exc)) from None
        if not isinstance(checkpoint, dict):
            raise CorruptCheckpoint(thread_id, cid, "it does not hold a checkpoint")
        row.blob_channels = list(checkpoint.pop(BLOBS_KEY, None) or [])
        hidden = checkpoint.pop(HIDDEN_KEY, None) or hidden
        if checkpoint.pop(TS_IN_ROW_KEY, None) is not None:
            checkpoint["ts"] = _ts_text(created)
        row.checkpoint = {"id": cid, **checkpoint}
        row.metadata = _row_metadata(metadata, hidden, raw[9:13])
        return row

    @property
    def _light_columns(self) -> str:
        """The columns a timeline reads: summaries, unless the saver is chained."""
        return ROW if self.chain is not None else LIGHT_ROW

    def _summary(
        self, thread_id: str, cid: str, light: bytes
    ) -> tuple[tuple[str, ...], bool, dict[str, Any] | None]:
        """Decode a `light` summary (see `_light_summary`).

        A thread's summaries are a handful of distinct values (the same nodes
        run next step after step), so those without hidden metadata are
        decoded once per saver.
        """
        light = bytes(light)
        known = self._summaries.get(light)
        if known is not None:
            return known
        try:
            scheduled, has_messages, packed = ormsgpack.unpackb(light)
            if (
                not isinstance(scheduled, list)
                or not all(isinstance(node, str) for node in scheduled)
                or not isinstance(has_messages, bool)
                or not (packed is None or isinstance(packed, list))
            ):
                raise TypeError("not a summary")
            hidden = (
                None
                if packed is None
                else {
                    k: v
                    for k, v in zip(HIDDEN_META, packed, strict=True)
                    if v is not None
                }
            )
        except (ormsgpack.MsgpackDecodeError, TypeError, ValueError):
            raise CorruptCheckpoint(
                thread_id, cid, "its timeline summary is damaged"
            ) from None
        summary = (tuple(scheduled), has_messages, hidden)
        if hidden is None:
            if len(self._summaries) >= SUMMARIES_KEPT:
                self._summaries.clear()
            self._summaries[light] = summary
        return summary

    # -- writes ------------------------------------------------------------------

    def put(
        self,
        config: Config,
        checkpoint: dict[str, Any],
        metadata: dict[str, Any],
        new_versions: dict[str, Any],
        *,
        expected_head: Any = NO_CHECK,
    ) -> Config:
        """Store a checkpoint; see `BaseSaver.put` for `expected_head`.

        The usual write (the child of the thread's last checkpoint) is one
        call of the ``agentmatic_put`` function. A write that starts a new
        segment and must rebuild a delta channel, or one planned against a
        parent it turns out not to continue, is redone in a transaction.
        """
        thread_id, ns, parent_id = config_parts(config)
        cid = str(checkpoint["id"])
        merged = checkpoint_metadata(config, metadata)
        merged = self.sealed_metadata(thread_id, ns, parent_id, checkpoint, merged)
        write = _Write(thread_id, ns, cid, parent_id, checkpoint, merged, new_versions)
        with self._conn() as conn:
            self._put(conn, write, expected_head)
        return thread_config(thread_id, cid, ns)

    def _put(
        self,
        conn: psycopg.Connection[Any],
        write: _Write,
        expected_head: Any,
        step_writes: _StepWrites | None = None,
    ) -> bool:
        """Store one checkpoint on `conn` (inside the caller's transaction, if any).

        With `step_writes` (outside a transaction only) the writes of the
        tasks that ran from the parent go in the same statement. Return
        False, having stored nothing, when they need the transactional path.
        """
        thread_id, ns, cid = write.thread_id, write.ns, write.checkpoint_id
        parent_id, checkpoint = write.parent_id, write.checkpoint
        new_versions, merged = write.new_versions, write.metadata
        parent = self._memo(thread_id, ns)
        if parent is not None and (
            parent_id is None or parent.checkpoint_id != parent_id or cid <= parent_id
        ):
            parent = None
        plan = self._plan(checkpoint, new_versions, parent)
        row = _Row(
            thread_id,
            ns,
            cid,
            parent_id,
            0,
            checkpoint,
            plan.blob_channels,
            merged,
            None,
        )
        missing = row.delta_channels
        check = expected_head is not NO_CHECK
        outcome, head, segment = self._call_put(
            conn,
            write,
            plan,
            check=check,
            expected=expected_head if check else None,
            strict=parent is not None or bool(missing) or step_writes is not None,
            step_writes=step_writes,
        )
        if step_writes is not None and outcome in ("nonlinear", "rewrite"):
            return False
        if outcome == "nonlinear":
            plan, segment = self._put_slowly(
                conn, write, missing, expected_head if check else NO_CHECK
            )
        elif outcome == "conflict":
            raise ThreadConflict(
                thread_id,
                f"expected newest checkpoint {expected_head!r} but it is "
                f"{head!r}; another writer advanced the thread",
            )
        plan.memo.segment = segment
        self._remember(thread_id, ns, plan.memo)
        return True

    def _put_slowly(
        self,
        conn: psycopg.Connection[Any],
        write: _Write,
        missing: Sequence[str],
        expected_head: Any,
    ) -> tuple[_Plan, int]:
        """Store a checkpoint that starts a segment, rebuilding what it needs."""
        with conn.transaction():
            last_id, segment, head = self._lock_thread(
                conn, write.thread_id, write.ns, expected_head is not NO_CHECK
            )
            if expected_head is not NO_CHECK and head != expected_head:
                raise ThreadConflict(
                    write.thread_id,
                    f"expected newest checkpoint {expected_head!r} but it is "
                    f"{head!r}; another writer advanced the thread",
                )
            plan = self._plan(write.checkpoint, write.new_versions, None)
            linear = (
                write.parent_id is not None
                and write.parent_id == last_id
                and write.checkpoint_id > last_id
            )
            if missing and write.parent_id and not linear:
                rows, chunks = self._derive(
                    conn,
                    write.thread_id,
                    write.ns,
                    write.parent_id,
                    missing,
                    write.checkpoint,
                )
                plan.blobs.extend(rows)
                plan.chunks.update(chunks)
            outcome, _head, segment = self._call_put(
                conn, write, plan, check=False, expected=None, strict=False
            )
            assert outcome == "ok", outcome
        return plan, segment

    def _call_put(
        self,
        conn: psycopg.Connection[Any],
        write: _Write,
        plan: _Plan,
        *,
        check: bool,
        expected: str | None,
        strict: bool,
        step_writes: _StepWrites | None = None,
    ) -> tuple[str, str | None, int]:
        meta = _jsonb(
            {
                k: v
                for k, v in write.metadata.items()
                if not _in_column(k, v) and k not in HIDDEN_META
            },
            write.thread_id,
            write.checkpoint_id,
        )
        forked = write.metadata.get("forked_from")
        ts = _ts_time(write.checkpoint)
        created_at = write.created_at or ts
        in_column = ts is not None and created_at == ts
        # A chained saver keeps no summary: its timeline is read from what
        # the chain covers.
        light = (
            _light_summary(write.checkpoint, write.metadata, plan.inline)
            if in_column and self.chain is None
            else None
        )
        type_, data = self._encode_checkpoint(
            write.checkpoint, plan, write.metadata, in_column, light is not None
        )
        blobs = plan.blobs
        sql = (
            "SELECT outcome, head, segment FROM agentmatic_put("
            # thread, ns, id, parent, check, expected, strict
            "%s, %s, %s, %s, %s, %s, %s, "
            # step, source, actor, run_id, type, checkpoint, metadata
            "%s, %s, %s, %s::uuid, %s, %s, %s, "
            # agent, started_by, forked_from, created_at
            "%s, %s, %s, %s::timestamptz, "
            # blobs, then chunks
            "%s::text[], %s::text[], %s::text[], %s::bytea[], %s::bytea[], "
            "%s::text[], %s::integer[], %s::bytea[], %s::bytea[], "
            # the tasks' writes
            "%s::text[], %s::text[], %s::integer[], %s::text[], %s::text[], "
            "%s::bytea[], %s::bytea[], "
            # the timeline's summary; the writes may ride in the checkpoint
            "%s, true)"
        )
        params = (
            write.thread_id,
            write.ns,
            write.checkpoint_id,
            write.parent_id,
            check,
            expected,
            strict,
            _column_value(write.metadata, "step"),
            _column_value(write.metadata, "source"),
            _column_value(write.metadata, "actor"),
            _column_value(write.metadata, "run_id"),
            type_,
            data,
            meta,
            _text(write.metadata.get("agent")),
            _text(write.metadata.get("started_by")),
            _jsonb(forked, write.thread_id, write.checkpoint_id) if forked else None,
            created_at,
            [b.channel for b in blobs] if blobs else None,
            [b.version for b in blobs] if blobs else None,
            [b.type for b in blobs] if blobs else None,
            [b.data for b in blobs] if blobs else None,
            [b.chunks for b in blobs] if blobs else None,
            [b.base_version for b in blobs] if blobs else None,
            [b.depth for b in blobs] if blobs else None,
            list(plan.chunks) if plan.chunks else None,
            list(plan.chunks.values()) if plan.chunks else None,
            *(step_writes.columns() if step_writes else (None,) * 7),
            light,
        )
        try:
            # Binary: the server takes the values and arrays as they are,
            # without parsing their text (a few percent of a step).
            row = conn.execute(sql, params, binary=True).fetchone()
        except psycopg.Error as exc:
            if step_writes is not None and exc.sqlstate == RESULT_STORED:
                # A task of the step stored a result before: nothing was stored.
                return "rewrite", None, 0
            raise
        assert row is not None
        return str(row[0]), row[1], int(row[2])

    def _lock_thread(
        self, conn: psycopg.Connection[Any], thread_id: str, ns: str, want_head: bool
    ) -> tuple[str | None, int, str | None]:
        """Lock the thread's row (creating it); return last id, segment, head.

        Call inside a transaction; the lock holds until it ends.
        """
        conn.execute(
            "INSERT INTO agentmatic_threads (thread_id, checkpoint_ns) "
            "VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (thread_id, ns),
        )
        row = conn.execute(
            "SELECT last_checkpoint_id, segment FROM agentmatic_threads "
            "WHERE thread_id = %s AND checkpoint_ns = %s FOR UPDATE",
            (thread_id, ns),
        ).fetchone()
        assert row is not None
        head: str | None = None
        if want_head:
            found = conn.execute(
                "SELECT checkpoint_id FROM agentmatic_checkpoints "
                "WHERE thread_id = %s AND checkpoint_ns = %s "
                "ORDER BY checkpoint_id DESC LIMIT 1",
                (thread_id, ns),
            ).fetchone()
            head = found[0] if found else None
        return row[0], int(row[1]), head

    def _insert_values(
        self,
        conn: psycopg.Connection[Any],
        thread_id: str,
        ns: str,
        checkpoint_id: str,
        segment: int,
        blobs: Sequence[lists.BlobRow],
        chunks: dict[bytes, bytes],
    ) -> None:
        """Insert blob and chunk rows (inside the caller's transaction)."""
        if chunks:
            conn.execute(
                "INSERT INTO agentmatic_chunks (thread_id, hash, data) "
                "SELECT %s, h, d FROM unnest(%s::bytea[], %s::bytea[]) AS x(h, d) "
                "ON CONFLICT DO NOTHING",
                (thread_id, list(chunks), list(chunks.values())),
            )
        if blobs:
            conn.execute(
                "INSERT INTO agentmatic_blobs (thread_id, checkpoint_ns, channel, "
                "version, segment, checkpoint_id, type, data, chunks, base_version, "
                "depth) SELECT %s, %s, ch, ver, %s, %s, ty, da, hs, ba, de "
                "FROM unnest(%s::text[], %s::text[], %s::text[], %s::bytea[], "
                "%s::bytea[], %s::text[], %s::integer[]) "
                "AS x(ch, ver, ty, da, hs, ba, de) ON CONFLICT DO NOTHING",
                (
                    thread_id,
                    ns,
                    segment,
                    checkpoint_id,
                    [b.channel for b in blobs],
                    [b.version for b in blobs],
                    [b.type for b in blobs],
                    [b.data for b in blobs],
                    [b.chunks for b in blobs],
                    [b.base_version for b in blobs],
                    [b.depth for b in blobs],
                ),
            )

    def _derive(
        self,
        conn: psycopg.Connection[Any],
        thread_id: str,
        ns: str,
        parent_id: str,
        channels: Sequence[str],
        checkpoint: dict[str, Any],
    ) -> tuple[builtins.list[lists.BlobRow], dict[bytes, bytes]]:
        """Rebuild delta channels of a checkpoint that starts a segment."""
        versions = checkpoint.get("channel_versions") or {}
        rows: builtins.list[lists.BlobRow] = []
        chunks: dict[bytes, bytes] = {}
        for channel in channels:
            value = self._value_after(conn, thread_id, ns, parent_id, channel)
            if value is _NOTHING:
                continue
            row, new_chunks = self._derived_row(channel, str(versions[channel]), value)
            rows.append(row)
            chunks.update(new_chunks)
        return rows, chunks

    def _derived_row(
        self, channel: str, version: str, value: Any
    ) -> tuple[lists.BlobRow, dict[bytes, bytes]]:
        items = value.value if isinstance(value, DeltaSnapshot) else value
        if _splits_lists(self.serde) and type(items) is list:
            row, chunks, _memo = lists.encode_whole(
                self.serde, channel, version, lists.DERIVED, items, self._chunk_ends
            )
            return row, chunks
        tag, data = packing.pack_typed(*self.serde.dumps_typed(DeltaSnapshot(items)))
        return lists.BlobRow(channel, version, f"{lists.DERIVED}:{tag}", data), {}

    def put_writes(
        self,
        config: Config,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store a task's writes; special channels replace, others keep the first."""
        thread_id, ns, checkpoint_id = config_parts(config)
        if checkpoint_id is None:
            raise ValueError("put_writes needs configurable.checkpoint_id")
        if not writes:
            return
        rows, regular = self._prepare_writes(writes)
        with self._conn() as conn, conn.transaction():
            self._insert_writes(
                conn, thread_id, ns, checkpoint_id, task_id, task_path, rows, regular
            )

    def put_step(
        self,
        config: Config,
        step_writes: Sequence[tuple[str, str, Sequence[tuple[str, Any]]]],
        checkpoint: dict[str, Any],
        metadata: dict[str, Any],
        new_versions: dict[str, Any],
        *,
        expected_head: Any = NO_CHECK,
    ) -> Config:
        """Store a step's task writes and its checkpoint in one transaction."""
        thread_id, ns, parent_id = config_parts(config)
        # A chained checkpoint is sealed over its parent's stored writes, which
        # the seal reads back: store the writes first, as the base class does.
        if parent_id is None or not step_writes or self.chain is not None:
            return super().put_step(
                config,
                step_writes,
                checkpoint,
                metadata,
                new_versions,
                expected_head=expected_head,
            )
        prepared = [
            (task_id, task_path, *self._prepare_writes(writes))
            for task_id, task_path, writes in step_writes
            if writes
        ]
        cid = str(checkpoint["id"])
        merged = checkpoint_metadata(config, metadata)
        merged = self.sealed_metadata(thread_id, ns, parent_id, checkpoint, merged)
        write = _Write(thread_id, ns, cid, parent_id, checkpoint, merged, new_versions)
        together = _StepWrites()
        for task_id, task_path, rows, _regular in prepared:
            together.add(task_id, task_path, rows)
        # Usually one statement; a task that wrote before (or appears twice),
        # or a parent that is not the thread's last checkpoint, takes a
        # transaction.
        one_statement = bool(together.rows) and len(
            {task_id for task_id, *_rest in prepared}
        ) == len(prepared)
        with self._conn() as conn:
            if one_statement and self._put(conn, write, expected_head, together):
                return thread_config(thread_id, cid, ns)
            with conn.transaction():
                for task_id, task_path, rows, regular in prepared:
                    self._insert_writes(
                        conn,
                        thread_id,
                        ns,
                        parent_id,
                        task_id,
                        task_path,
                        rows,
                        regular,
                    )
                self._put(conn, write, expected_head)
        return thread_config(thread_id, cid, ns)

    def _prepare_writes(
        self, writes: Sequence[tuple[str, Any]]
    ) -> tuple[
        builtins.list[tuple[int, str, str, bytes, bytes | None]],
        builtins.list[tuple[int, str, str, bytes]],
    ]:
        """Return the rows a task's writes are stored as, and its regular writes."""
        # One entry per slot: a special channel written twice keeps its last value.
        by_slot: dict[int, tuple[str, str, bytes]] = {}
        for idx, (channel, value) in enumerate(writes):
            type_, blob = packing.pack_typed(*self.serde.dumps_typed(value))
            by_slot[WRITES_IDX_MAP.get(channel, idx)] = (channel, type_, blob)
        rows: builtins.list[tuple[int, str, str, bytes, bytes | None]] = [
            (slot, *entry, None) for slot, entry in by_slot.items() if slot < 0
        ]
        regular = sorted((slot, *entry) for slot, entry in by_slot.items() if slot >= 0)
        if regular:
            # A task's regular writes share one row: the first in the columns,
            # the others (with their slots) packed into `extra`.
            first, rest = regular[0], regular[1:]
            extra = ormsgpack.packb([list(entry) for entry in rest]) if rest else None
            rows.append((*first, extra))
        return rows, regular

    def _writes_on(
        self,
        conn: psycopg.Connection[Any],
        thread_id: str,
        ns: str,
        ids: Sequence[str],
    ) -> psycopg.Cursor[Any]:
        """Query the writes on `ids`: rows of their own, then carried ones.

        One statement, so one snapshot: a DELETE that moves carried writes
        into rows commits either before it or after it.
        """
        return conn.execute(
            f"SELECT {WRITE}, false FROM agentmatic_writes WHERE thread_id = %s "
            "AND checkpoint_ns = %s AND checkpoint_id = ANY(%s::text[]) "
            f"UNION ALL SELECT {CARRIED}, true {CARRIED_AFTER}",
            (thread_id, ns, list(ids), list(ids), thread_id, ns),
        )

    def _insert_writes(
        self,
        conn: psycopg.Connection[Any],
        thread_id: str,
        ns: str,
        checkpoint_id: str,
        task_id: str,
        task_path: str,
        rows: builtins.list[tuple[int, str, str, bytes, bytes | None]],
        regular: builtins.list[tuple[int, str, str, bytes]],
    ) -> None:
        # Writes the checkpoint's next row carries become rows first, so
        # that this call's conflicts are judged against them; until the
        # caller's transaction ends, no step on the thread carries more.
        conn.execute(
            "SELECT agentmatic_uncarry(%s, %s, %s)", (thread_id, ns, checkpoint_id)
        )
        stored = conn.execute(
            "INSERT INTO agentmatic_writes (thread_id, checkpoint_ns, "
            "checkpoint_id, task_id, idx, channel, type, blob, extra, task_path, "
            "segment) SELECT %s, %s, %s, %s, w.idx, w.channel, w.type, w.blob, "
            "w.extra, %s, (SELECT segment FROM agentmatic_checkpoints "
            "WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id = %s) "
            "FROM unnest(%s::integer[], %s::text[], %s::text[], %s::bytea[], "
            "%s::bytea[]) AS w(idx, channel, type, blob, extra) "
            "ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx) "
            "DO UPDATE SET channel = EXCLUDED.channel, type = EXCLUDED.type, "
            "blob = EXCLUDED.blob, task_path = EXCLUDED.task_path "
            "WHERE EXCLUDED.idx < 0 RETURNING idx",
            (
                thread_id,
                ns,
                checkpoint_id,
                task_id,
                task_path,
                thread_id,
                ns,
                checkpoint_id,
                [r[0] for r in rows],
                [r[1] for r in rows],
                [r[2] for r in rows],
                [r[3] for r in rows],
                [r[4] for r in rows],
            ),
        ).fetchall()
        if regular and regular[0][0] not in {r[0] for r in stored}:
            self._store_surplus(
                conn, thread_id, ns, checkpoint_id, task_id, task_path, regular
            )

    def _store_surplus(
        self,
        conn: psycopg.Connection[Any],
        thread_id: str,
        ns: str,
        checkpoint_id: str,
        task_id: str,
        task_path: str,
        regular: Sequence[tuple[int, str, str, bytes]],
    ) -> None:
        """Store the slots an earlier call for the task did not fill.

        The task wrote before; as in LangGraph, its first write per slot
        stays and only slots it never wrote are added, one row each.
        """
        taken: set[int] = set()
        for row in conn.execute(
            f"SELECT {WRITE} FROM agentmatic_writes WHERE thread_id = %s "
            "AND checkpoint_ns = %s AND checkpoint_id = %s AND task_id = %s",
            (thread_id, ns, checkpoint_id, task_id),
        ):
            taken.update(w[6] for w in _expand([row], thread_id))
        surplus = [entry for entry in regular if entry[0] not in taken]
        if not surplus:
            return
        conn.execute(
            "INSERT INTO agentmatic_writes (thread_id, checkpoint_ns, checkpoint_id, "
            "task_id, idx, channel, type, blob, task_path, segment) "
            "SELECT %s, %s, %s, %s, w.idx, w.channel, w.type, w.blob, %s, "
            "(SELECT segment FROM agentmatic_checkpoints WHERE thread_id = %s "
            "AND checkpoint_ns = %s AND checkpoint_id = %s) "
            "FROM unnest(%s::integer[], %s::text[], %s::text[], %s::bytea[]) "
            "AS w(idx, channel, type, blob) ON CONFLICT DO NOTHING",
            (
                thread_id,
                ns,
                checkpoint_id,
                task_id,
                task_path,
                thread_id,
                ns,
                checkpoint_id,
                [e[0] for e in surplus],
                [e[1] for e in surplus],
                [e[2] for e in surplus],
                [e[3] for e in surplus],
            ),
        )

    # -- reads -------------------------------------------------------------------

    def get_tuple(self, config: Config) -> CheckpointTuple | None:
        """Return the named checkpoint, or the thread's newest."""
        thread_id, ns, cid = config_parts(config)
        with self._conn() as conn:
            rows = self._checkpoint_rows(conn, thread_id, ns, cid)
            if not rows:
                return None
            return self._assemble(conn, rows)[0]

    def _checkpoint_rows(
        self,
        conn: psycopg.Connection[Any],
        thread_id: str,
        ns: str,
        checkpoint_id: str | None,
        columns: str = ROW,
    ) -> builtins.list[_Row]:
        """Return the named checkpoint's row, or the thread's newest (or none)."""
        if checkpoint_id is None:
            raw = conn.execute(
                f"SELECT {columns} FROM agentmatic_checkpoints WHERE thread_id = %s "
                "AND checkpoint_ns = %s ORDER BY checkpoint_id DESC LIMIT 1",
                (thread_id, ns),
            ).fetchall()
        else:
            raw = conn.execute(
                f"SELECT {columns} FROM agentmatic_checkpoints WHERE thread_id = %s "
                "AND checkpoint_ns = %s AND checkpoint_id = %s",
                (thread_id, ns, checkpoint_id),
            ).fetchall()
        return [self._decode_row(r) for r in raw]

    def list(
        self,
        config: Config | None,
        *,
        filter: dict[str, Any] | None = None,
        before: Config | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """Yield checkpoints newest first, read a page at a time."""
        check_limit(limit)
        where, params = self._where(config, filter, before)
        remaining = limit
        after: tuple[str, str, str] | None = None
        while remaining is None or remaining > 0:
            size = PAGE if remaining is None else min(PAGE, remaining)
            clauses = list(where)
            args = list(params)
            if after is not None:
                clauses.append(
                    "(checkpoint_id, thread_id, checkpoint_ns) < (%s, %s, %s)"
                )
                args.extend(after)
            sql = f"SELECT {ROW} FROM agentmatic_checkpoints"
            if clauses:
                sql += " WHERE " + " AND ".join(clauses)
            sql += " ORDER BY checkpoint_id DESC, thread_id DESC, checkpoint_ns DESC"
            sql += " LIMIT %s"
            args.append(size)
            with self._conn() as conn:
                raw = conn.execute(sql, args).fetchall()
                if not raw:
                    return
                tuples = self._assemble(conn, [self._decode_row(r) for r in raw])
            yield from tuples
            if len(raw) < size:
                return
            last = raw[-1]
            after = (last[2], last[0], last[1])
            if remaining is not None:
                remaining -= len(raw)

    def _where(
        self,
        config: Config | None,
        filter: dict[str, Any] | None,
        before: Config | None,
    ) -> tuple[builtins.list[str], builtins.list[Any]]:
        filter = check_filter_keys(filter)
        clauses: builtins.list[str] = []
        params: builtins.list[Any] = []
        if config is not None:
            thread_id, ns, cid = config_parts_loose(config)
            if thread_id is not None:
                clauses.append("thread_id = %s")
                params.append(thread_id)
            if ns is not None:
                clauses.append("checkpoint_ns = %s")
                params.append(ns)
            if cid is not None:
                clauses.append("checkpoint_id = %s")
                params.append(str(cid))
        before_id = checked_before(before)
        if before_id is not None:
            clauses.append("checkpoint_id < %s")
            params.append(str(before_id))
        for key, value in filter.items():
            if key in HIDDEN_META:
                raise ValueError(f"metadata key {key!r} cannot be filtered on")
            if _in_column(key, value):
                # Kept in a column (COLUMN_KEYS): `key` is one of those names.
                cast = "::uuid" if key == "run_id" else ""
                clauses.append(f"({key} = %s{cast} OR metadata -> %s = %s)")
                params.extend([value, key, _jsonb(value, None, None)])
            elif value is None:
                clauses.append(
                    "(metadata -> %s IS NULL OR metadata -> %s = 'null'::jsonb)"
                )
                params.extend([key, key])
            else:
                clauses.append("metadata -> %s = %s")
                params.extend([key, _jsonb(value, None, None)])
        return clauses, params

    def _assemble(
        self,
        conn: psycopg.Connection[Any],
        rows: Sequence[_Row],
        *,
        serde: Serializer | None = None,
    ) -> builtins.list[CheckpointTuple]:
        """Return tuples for decoded rows: blob values and pending writes added."""
        serde = serde or self.serde
        by_thread: dict[tuple[str, str], builtins.list[_Row]] = {}
        for row in rows:
            by_thread.setdefault((row.thread_id, row.ns), []).append(row)
        out: dict[tuple[str, str, str], CheckpointTuple] = {}
        for (thread_id, ns), group in by_thread.items():
            wanted = {
                (ch, str(r.checkpoint["channel_versions"][ch]))
                for r in group
                for ch in r.blob_channels
                if ch in (r.checkpoint.get("channel_versions") or {})
            }
            ids = [r.checkpoint_id for r in group]
            with conn.pipeline():
                blob_cur = self._blob_query(conn, thread_id, ns, wanted)
                write_cur = self._writes_on(conn, thread_id, ns, ids)
            blobs = _blob_rows(blob_cur)
            writes = _expand(_with_carried(write_cur.fetchall()), thread_id)
            values = self._blob_values(conn, thread_id, blobs, wanted, serde)
            pending: dict[str, builtins.list[tuple[Any, ...]]] = {}
            for w in writes:
                pending.setdefault(w[0], []).append(w[1:])
            for row in group:
                channel_values = dict(row.checkpoint.get("channel_values") or {})
                versions = row.checkpoint.get("channel_versions") or {}
                for ch in row.blob_channels:
                    key = (ch, str(versions.get(ch)))
                    if key in values:
                        channel_values[ch] = values[key]
                checkpoint = {**row.checkpoint, "channel_values": channel_values}
                out[(thread_id, ns, row.checkpoint_id)] = CheckpointTuple(
                    config=thread_config(thread_id, row.checkpoint_id, ns),
                    checkpoint=checkpoint,
                    metadata=row.metadata,
                    parent_config=(
                        thread_config(thread_id, row.parent_id, ns)
                        if row.parent_id
                        else None
                    ),
                    pending_writes=self._pending(
                        thread_id,
                        row.checkpoint_id,
                        pending.get(row.checkpoint_id),
                        serde,
                    ),
                )
        return [out[(r.thread_id, r.ns, r.checkpoint_id)] for r in rows]

    def _pending(
        self,
        thread_id: str,
        checkpoint_id: str,
        writes: Sequence[tuple[Any, ...]] | None,
        serde: Serializer,
        only: Sequence[str] | None = None,
    ) -> builtins.list[PendingWrite]:
        out: builtins.list[PendingWrite] = []
        for task_id, channel, type_, blob, _path, _idx in sorted(
            writes or [], key=lambda w: (w[4], w[0], w[5])
        ):
            if only is not None and channel not in only:
                out.append((task_id, channel, None))
                continue
            out.append(
                (
                    task_id,
                    channel,
                    self._loads(serde, thread_id, checkpoint_id, type_, blob),
                )
            )
        return out

    def _loads(
        self,
        serde: Serializer,
        thread_id: str,
        checkpoint_id: str | None,
        type_: str | None,
        data: bytes | None,
    ) -> Any:
        try:
            return serde.loads_typed(
                packing.unpack_typed(type_ or "null", bytes(data or b"")),
                thread_id=thread_id,
            )
        except DisallowedType:
            raise
        except SerializationError as exc:
            raise CorruptCheckpoint(thread_id, checkpoint_id, str(exc)) from None

    def _blob_query(
        self,
        conn: psycopg.Connection[Any],
        thread_id: str,
        ns: str,
        wanted: Iterable[tuple[str, str]],
    ) -> psycopg.Cursor[Any] | None:
        """Start the query for blobs by (channel, version), with their bases."""
        pairs = sorted(wanted)
        if not pairs:
            return None
        return conn.execute(
            "WITH RECURSIVE want(channel, version) AS ("
            "SELECT * FROM unnest(%s::text[], %s::text[])), "
            # UNION, not UNION ALL: a version reached twice is expanded once
            # (so does a loop in damaged data).
            "chain(channel, version) AS ("
            'SELECT channel, version COLLATE "C" FROM want UNION '
            "SELECT b.channel, b.base_version FROM chain c "
            "CROSS JOIN LATERAL (SELECT channel, base_version FROM agentmatic_blobs "
            "WHERE thread_id = %s AND checkpoint_ns = %s AND channel = c.channel "
            "AND version = c.version ORDER BY type LIKE 'am-derived%%', segment "
            "LIMIT 1) b WHERE b.base_version IS NOT NULL) "
            f"SELECT DISTINCT ON (b.channel, b.version) {_prefixed(BLOB, 'b')} "
            "FROM chain c "
            "JOIN agentmatic_blobs b ON b.thread_id = %s AND b.checkpoint_ns = %s "
            "AND b.channel = c.channel AND b.version = c.version "
            "ORDER BY b.channel, b.version, b.type LIKE 'am-derived%%', b.segment",
            (
                [p[0] for p in pairs],
                [p[1] for p in pairs],
                thread_id,
                ns,
                thread_id,
                ns,
            ),
        )

    def _blob_values(
        self,
        conn: psycopg.Connection[Any],
        thread_id: str,
        blobs: dict[tuple[str, str], _Blob],
        wanted: Iterable[tuple[str, str]],
        serde: Serializer,
    ) -> dict[tuple[str, str], Any]:
        """Decode the wanted blobs (following appends and chunks)."""
        hashes: set[bytes] = set()
        for blob in blobs.values():
            hashes.update(lists.split_hashes(blob.chunks))
        chunk_data: dict[bytes, bytes] = {}
        if hashes:
            for key, data in conn.execute(
                "SELECT hash, data FROM agentmatic_chunks WHERE thread_id = %s "
                "AND hash = ANY(%s::bytea[])",
                (thread_id, list(hashes)),
            ):
                chunk_data[bytes(key)] = bytes(data)
        cache: dict[tuple[str, str], builtins.list[Any]] = {}
        out: dict[tuple[str, str], Any] = {}
        for key in wanted:
            found = blobs.get(key)
            if found is None:
                continue
            out[key] = self._blob_value(
                thread_id, found, blobs, chunk_data, cache, serde
            )
        return out

    def _blob_value(
        self,
        thread_id: str,
        blob: _Blob,
        blobs: dict[tuple[str, str], _Blob],
        chunk_data: dict[bytes, bytes],
        cache: dict[tuple[str, str], builtins.list[Any]],
        serde: Serializer,
    ) -> Any:
        if blob.type.startswith(lists.DERIVED + ":"):
            inner = blob.type[len(lists.DERIVED) + 1 :]
            return self._loads(serde, thread_id, blob.checkpoint_id, inner, blob.data)
        kind = packing.base_tag(blob.type)
        if kind not in lists.LIST_TYPES:
            return self._loads(
                serde, thread_id, blob.checkpoint_id, blob.type, blob.data
            )
        items = self._list_items(thread_id, blob, blobs, chunk_data, cache, serde)
        return lists.wrap(kind, list(items))

    def _list_items(
        self,
        thread_id: str,
        blob: _Blob,
        blobs: dict[tuple[str, str], _Blob],
        chunk_data: dict[bytes, bytes],
        cache: dict[tuple[str, str], builtins.list[Any]],
        serde: Serializer,
    ) -> builtins.list[Any]:
        # Walk down to the whole list, then append back up (no recursion).
        path: builtins.list[_Blob] = []
        cursor: _Blob | None = blob
        base: builtins.list[Any] | None = None
        while cursor is not None:
            key = (cursor.channel, cursor.version)
            if key in cache:
                base = cache[key]
                break
            path.append(cursor)
            if cursor.base_version is None:
                break
            if len(path) > lists.MAX_APPEND_DEPTH * 10:
                raise CorruptCheckpoint(
                    thread_id, cursor.checkpoint_id, "a list's appends form a loop"
                )
            nxt = blobs.get((cursor.channel, cursor.base_version))
            if nxt is None:
                raise CorruptCheckpoint(
                    thread_id,
                    cursor.checkpoint_id,
                    f"channel {cursor.channel!r} version {cursor.version!r} extends "
                    f"version {cursor.base_version!r}, which is missing",
                )
            cursor = nxt
        items: builtins.list[Any] = list(base) if base is not None else []
        for step in reversed(path):
            if step.base_version is None:
                items = []
                for digest in lists.split_hashes(step.chunks):
                    data = chunk_data.get(digest)
                    if data is None:
                        raise CorruptCheckpoint(
                            thread_id,
                            step.checkpoint_id,
                            f"a chunk of channel {step.channel!r} is missing",
                        )
                    raw = packing.unpack_chunk(data)
                    items.extend(self._unpack_list(serde, thread_id, step, raw))
            tail = packing.unpack_typed(step.type, step.data or b"\x90")[1]
            items.extend(self._unpack_list(serde, thread_id, step, tail))
            cache[(step.channel, step.version)] = list(items)
        return items

    def _unpack_list(
        self, serde: Serializer, thread_id: str, blob: _Blob, data: bytes
    ) -> builtins.list[Any]:
        value = self._loads(serde, thread_id, blob.checkpoint_id, "msgpack", data)
        if not isinstance(value, list):
            raise CorruptCheckpoint(
                thread_id, blob.checkpoint_id, f"channel {blob.channel!r} is not a list"
            )
        return value

    # -- delta channels ------------------------------------------------------------

    def channel_value_at(self, tup: CheckpointTuple, channel: str) -> Any:
        """Return a delta channel's whole value at a checkpoint, or None.

        The value is the nearest stored one before it in its segment plus the
        channel's writes since: no checkpoint row in between is read, so this
        works when those rows were deleted. Returns a `DeltaSnapshot`, or
        None when the checkpoint is not stored here.
        """
        conf = tup.config["configurable"]
        stored = tup.checkpoint.get("channel_values") or {}
        if channel in stored:
            value = stored[channel]
            return value if isinstance(value, DeltaSnapshot) else DeltaSnapshot(value)
        with self._snapshot(), self._conn() as conn:
            value = self._value_at(
                conn,
                str(conf["thread_id"]),
                str(conf.get("checkpoint_ns") or ""),
                str(conf["checkpoint_id"]),
                channel,
            )
        if value is _NOTHING:
            return None
        return value if isinstance(value, DeltaSnapshot) else DeltaSnapshot(value)

    def _value_at(
        self,
        conn: psycopg.Connection[Any],
        thread_id: str,
        ns: str,
        checkpoint_id: str,
        channel: str,
    ) -> Any:
        """Return a channel's value at a checkpoint, or `_NOTHING`."""
        raw = conn.execute(
            f"SELECT {ROW} FROM agentmatic_checkpoints WHERE thread_id = %s "
            "AND checkpoint_ns = %s AND checkpoint_id = %s",
            (thread_id, ns, checkpoint_id),
        ).fetchone()
        if raw is None:
            return _NOTHING
        row = self._decode_row(raw)
        stored = row.checkpoint.get("channel_values") or {}
        if channel in stored:
            return _unwrap(stored[channel])
        version = (row.checkpoint.get("channel_versions") or {}).get(channel)
        if version is not None:
            exact = self._fetch_values(conn, thread_id, ns, {(channel, str(version))})
            if (channel, str(version)) in exact:
                return _unwrap(exact[(channel, str(version))])
        if channel not in row.delta_channels:
            return _NOTHING
        return self._rebuild(conn, row, channel)

    def _value_after(
        self,
        conn: psycopg.Connection[Any],
        thread_id: str,
        ns: str,
        parent_id: str,
        channel: str,
    ) -> Any:
        """Return the parent's value of a delta channel plus its writes on it."""
        base = self._value_at(conn, thread_id, ns, parent_id, channel)
        rows = self._writes_on(conn, thread_id, ns, [parent_id]).fetchall()
        writes = _ordered(
            w for w in _expand(_with_carried(rows), thread_id) if w[2] == channel
        )
        if base is _NOTHING and not writes:
            return _NOTHING
        fold = _reducer_for(channel)
        decoded = [
            self._loads(self.serde, thread_id, parent_id, w[3], w[4]) for w in writes
        ]
        start = [] if base is _NOTHING else base
        return fold(start, decoded) if decoded else start

    def _rebuild(self, conn: psycopg.Connection[Any], row: _Row, channel: str) -> Any:
        """Rebuild a delta channel from its segment: a stored base plus writes."""
        thread_id, ns = row.thread_id, row.ns
        base = conn.execute(
            "SELECT version, checkpoint_id FROM agentmatic_blobs WHERE thread_id = %s "
            "AND checkpoint_ns = %s AND channel = %s AND segment = %s "
            "AND checkpoint_id < %s ORDER BY checkpoint_id DESC LIMIT 1",
            (thread_id, ns, channel, row.segment, row.checkpoint_id),
        ).fetchone()
        value: Any = []
        lower = ""
        if base is not None:
            version, lower = str(base[0]), str(base[1])
            found = self._fetch_values(conn, thread_id, ns, {(channel, version)})
            value = _unwrap(found.get((channel, version), []))
        # In a segment each row's parent is the row before it: the writes on
        # [lower, checkpoint) ride in the rows of (lower, checkpoint].
        rows = conn.execute(
            f"SELECT {WRITE}, false FROM agentmatic_writes "
            "WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id >= %s "
            "AND checkpoint_id < %s AND segment = %s "
            "AND (channel = %s OR extra IS NOT NULL) "
            f"UNION ALL SELECT {CARRIED}, true FROM agentmatic_checkpoints c "
            "WHERE c.thread_id = %s AND c.checkpoint_ns = %s "
            "AND c.checkpoint_id > %s AND c.checkpoint_id <= %s AND c.segment = %s "
            "AND c.carried_task_id IS NOT NULL "
            "AND (c.carried_channel = %s OR c.carried_extra IS NOT NULL)",
            (thread_id, ns, lower, row.checkpoint_id, row.segment, channel) * 2,
        ).fetchall()
        writes = _ordered(
            w for w in _expand(_with_carried(rows), thread_id) if w[2] == channel
        )
        decoded = [self._loads(self.serde, thread_id, w[0], w[3], w[4]) for w in writes]
        if decoded:
            value = _reducer_for(channel)(list(value or []), decoded)
        return value

    def _fetch_values(
        self,
        conn: psycopg.Connection[Any],
        thread_id: str,
        ns: str,
        wanted: set[tuple[str, str]],
        serde: Serializer | None = None,
    ) -> dict[tuple[str, str], Any]:
        cur = self._blob_query(conn, thread_id, ns, wanted)
        return self._blob_values(
            conn, thread_id, _blob_rows(cur), wanted, serde or self.serde
        )

    # -- deletes and copies --------------------------------------------------------

    def delete_thread(self, thread_id: str) -> None:
        """Delete every checkpoint, write, value and lease of the thread."""
        tid = str(thread_id)
        with self._conn() as conn, conn.transaction():
            for table in (
                "agentmatic_checkpoints",
                "agentmatic_writes",
                "agentmatic_blobs",
                "agentmatic_chunks",
                "agentmatic_threads",
                "agentmatic_leases",
            ):
                conn.execute(f"DELETE FROM {table} WHERE thread_id = %s", (tid,))
        self._forget(tid)

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints (and their writes) whose metadata run_id is listed."""
        wanted = [str(r) for r in run_ids]
        if not wanted:
            return
        with self._conn() as conn:
            doomed = conn.execute(
                "SELECT thread_id, checkpoint_ns, checkpoint_id FROM "
                "agentmatic_checkpoints WHERE run_id = ANY(%s::uuid[]) "
                "OR metadata ->> 'run_id' = ANY(%s::text[])",
                ([r for r in wanted if _is_uuid_text(r)], wanted),
            ).fetchall()
        groups: dict[tuple[str, str], builtins.list[str]] = {}
        for tid, ns, cid in doomed:
            groups.setdefault((tid, ns), []).append(cid)
        for (tid, ns), ids in groups.items():
            self.delete_checkpoints(tid, ns, ids)

    def delete_checkpoints(
        self, thread_id: str, checkpoint_ns: str, checkpoint_ids: Sequence[str]
    ) -> int:
        """Delete these checkpoints and their writes; return how many went.

        Every remaining checkpoint whose delta channels would lose their base
        gets its value stored first, so it stays readable and resumable.
        """
        ids = sorted({str(c) for c in checkpoint_ids})
        if not ids:
            return 0
        thread_id, ns = str(thread_id), str(checkpoint_ns)
        self.anchor_deletions(thread_id, ns, ids)
        with self._conn() as conn, conn.transaction():
            # The rows first (those to delete, and those whose carried
            # writes `_collect` clears), then the thread: the order a plain
            # DELETE takes them in (its count trigger updates the thread), so
            # the two wait for each other in turn instead of deadlocking.
            conn.execute(
                "SELECT 1 FROM agentmatic_checkpoints c WHERE c.thread_id = %s "
                "AND c.checkpoint_ns = %s AND (c.checkpoint_id = ANY(%s::text[]) "
                "OR c.carried_task_id IS NOT NULL AND (c.parent_checkpoint_id = "
                f"ANY(%s::text[]) OR {PARENT_GONE})) "
                "ORDER BY c.checkpoint_id FOR UPDATE",
                (thread_id, ns, ids, ids),
            )
            self._lock_thread(conn, thread_id, ns, False)
            rows = self._rows(conn, thread_id, ns)
            wanted = set(ids)
            doomed = {
                r.checkpoint_id: r.segment for r in rows if r.checkpoint_id in wanted
            }
            # A listed checkpoint whose row is gone already (a plain DELETE
            # since the caller listed it) leaves writes a remaining one may
            # still rebuild from, as rows or carried by the row after it:
            # they go below, so rebase over them too.
            gone = [c for c in ids if c not in doomed]
            for cid, segment in conn.execute(
                "SELECT DISTINCT checkpoint_id, segment FROM agentmatic_writes "
                "WHERE thread_id = %s AND checkpoint_ns = %s "
                "AND checkpoint_id = ANY(%s::text[]) AND segment IS NOT NULL "
                "UNION SELECT parent_checkpoint_id, segment "
                "FROM agentmatic_checkpoints WHERE thread_id = %s "
                "AND checkpoint_ns = %s AND parent_checkpoint_id = ANY(%s::text[]) "
                "AND carried_task_id IS NOT NULL",
                (thread_id, ns, gone, thread_id, ns, gone),
            ):
                doomed.setdefault(cid, int(segment))
            self._rebase(
                conn,
                thread_id,
                ns,
                [r for r in rows if r.checkpoint_id not in wanted],
                doomed,
            )
            count = conn.execute(
                "DELETE FROM agentmatic_checkpoints WHERE thread_id = %s "
                "AND checkpoint_ns = %s AND checkpoint_id = ANY(%s::text[])",
                (thread_id, ns, ids),
            ).rowcount
            conn.execute(
                "DELETE FROM agentmatic_writes WHERE thread_id = %s "
                "AND checkpoint_ns = %s AND checkpoint_id = ANY(%s::text[])",
                (thread_id, ns, ids),
            )
            self._collect(conn, thread_id, ns)
        self._forget(thread_id)
        self.anchor_orphans(thread_id, ns, ids)
        return count

    def _rows(
        self, conn: psycopg.Connection[Any], thread_id: str, ns: str
    ) -> builtins.list[_Row]:
        """Return the thread's checkpoint rows in one namespace, oldest first."""
        raw = conn.execute(
            f"SELECT {ROW} FROM agentmatic_checkpoints WHERE thread_id = %s "
            "AND checkpoint_ns = %s ORDER BY checkpoint_id",
            (thread_id, ns),
        ).fetchall()
        return [self._decode_row(r) for r in raw]

    def _rebase(
        self,
        conn: psycopg.Connection[Any],
        thread_id: str,
        ns: str,
        survivors: Sequence[_Row],
        doomed: dict[str, int],
    ) -> int:
        """Store the delta values `survivors` would lose with the `doomed` writes.

        `doomed` maps the checkpoints whose writes go to their segment. A
        survivor needs its value stored when one of them lies between it and
        the stored value its channel is rebuilt from. Return how many were
        stored.
        """
        by_segment: dict[int, builtins.list[str]] = {}
        for cid, segment in doomed.items():
            by_segment.setdefault(segment, []).append(cid)
        if not by_segment:
            return 0
        exact: set[tuple[str, str]] = set()
        bases: dict[tuple[str, int], builtins.list[str]] = {}
        for channel, segment, cid, version in conn.execute(
            "SELECT channel, segment, checkpoint_id, version FROM agentmatic_blobs "
            "WHERE thread_id = %s AND checkpoint_ns = %s",
            (thread_id, ns),
        ):
            exact.add((channel, version))
            bases.setdefault((channel, int(segment)), []).append(cid)
        stored = 0
        for row in sorted(survivors, key=lambda r: r.checkpoint_id):
            gone = by_segment.get(row.segment)
            if not gone:
                continue
            for channel in row.delta_channels:
                version = str(row.checkpoint["channel_versions"][channel])
                if (channel, version) in exact:
                    continue
                own = bases.setdefault((channel, row.segment), [])
                lower = max((c for c in own if c < row.checkpoint_id), default="")
                if not any(lower <= d < row.checkpoint_id for d in gone):
                    continue
                value = self._rebuild(conn, row, channel)
                blob, chunks = self._derived_row(channel, version, value)
                self._insert_values(
                    conn, thread_id, ns, row.checkpoint_id, row.segment, [blob], chunks
                )
                exact.add((channel, version))
                own.append(row.checkpoint_id)
                stored += 1
        return stored

    def _collect(self, conn: psycopg.Connection[Any], thread_id: str, ns: str) -> None:
        """Delete the thread's blobs, chunks and writes that nothing references.

        The caller holds the thread, and the rows whose carried writes are on
        a checkpoint that is gone (see `PARENT_GONE`): those are cleared.
        Their DELETE copied them into rows of their own, which stay below
        while a remaining checkpoint rebuilds from them.
        """
        conn.execute(
            "UPDATE agentmatic_checkpoints c SET carried_task_id = NULL, "
            "carried_task_path = NULL, carried_idx = NULL, carried_channel = NULL, "
            "carried_type = NULL, carried_blob = NULL, carried_extra = NULL "
            "WHERE c.thread_id = %s AND c.checkpoint_ns = %s "
            f"AND c.carried_task_id IS NOT NULL AND {PARENT_GONE}",
            (thread_id, ns),
        )
        rows = self._rows(conn, thread_id, ns)
        blob_keys = conn.execute(
            "SELECT channel, version, segment, checkpoint_id, base_version, chunks "
            "FROM agentmatic_blobs WHERE thread_id = %s AND checkpoint_ns = %s",
            (thread_id, ns),
        ).fetchall()
        by_version: dict[tuple[str, str], builtins.list[tuple[Any, ...]]] = {}
        by_segment: dict[tuple[str, int], builtins.list[tuple[Any, ...]]] = {}
        for b in blob_keys:
            by_version.setdefault((b[0], b[1]), []).append(b)
            by_segment.setdefault((b[0], int(b[2])), []).append(b)
        keep: set[tuple[str, str, int]] = set()
        ranges: builtins.list[tuple[str, int, str, str]] = []

        def keep_version(channel: str, version: str) -> None:
            todo = [(channel, version)]
            while todo:
                key = todo.pop()
                for b in by_version.get(key, []):
                    mark = (b[0], b[1], int(b[2]))
                    if mark in keep:
                        continue
                    keep.add(mark)
                    if b[4] is not None:
                        todo.append((b[0], b[4]))

        for row in rows:
            versions = row.checkpoint.get("channel_versions") or {}
            for ch in row.blob_channels:
                if ch in versions:
                    keep_version(ch, str(versions[ch]))
            for ch in row.delta_channels:
                version = str(versions[ch])
                if (ch, version) in by_version:
                    keep_version(ch, version)
                    continue
                candidates = [
                    b
                    for b in by_segment.get((ch, row.segment), [])
                    if b[3] < row.checkpoint_id
                ]
                lower = ""
                if candidates:
                    base = max(candidates, key=lambda b: b[3])
                    keep_version(ch, base[1])
                    lower = base[3]
                ranges.append((ch, row.segment, lower, row.checkpoint_id))
        doomed = [
            (b[0], b[1], int(b[2]))
            for b in blob_keys
            if (b[0], b[1], int(b[2])) not in keep
        ]
        live_ids = [r.checkpoint_id for r in rows]
        if doomed:
            conn.execute(
                "DELETE FROM agentmatic_blobs b USING unnest(%s::text[], "
                "%s::text[], %s::bigint[]) AS d(channel, version, segment) "
                "WHERE b.thread_id = %s AND b.checkpoint_ns = %s "
                "AND b.channel = d.channel AND b.version = d.version "
                "AND b.segment = d.segment",
                (
                    [d[0] for d in doomed],
                    [d[1] for d in doomed],
                    [d[2] for d in doomed],
                    thread_id,
                    ns,
                ),
            )
        # Writes stay when their checkpoint stays or a delta range needs them.
        conn.execute(
            "DELETE FROM agentmatic_writes w WHERE w.thread_id = %s "
            "AND w.checkpoint_ns = %s AND NOT (w.checkpoint_id = ANY(%s::text[])) "
            "AND NOT EXISTS (SELECT 1 FROM unnest(%s::text[], %s::bigint[], "
            "%s::text[], %s::text[]) AS r(channel, segment, lower, upper) "
            "WHERE (w.channel = r.channel OR w.extra IS NOT NULL) "
            "AND w.segment = r.segment "
            "AND w.checkpoint_id >= r.lower AND w.checkpoint_id < r.upper)",
            (
                thread_id,
                ns,
                live_ids,
                [r[0] for r in ranges],
                [r[1] for r in ranges],
                [r[2] for r in ranges],
                [r[3] for r in ranges],
            ),
            # A generic plan cannot hash the kept ids: never prepared.
            prepare=False,
        )
        conn.execute(
            "DELETE FROM agentmatic_chunks c WHERE c.thread_id = %s "
            "AND NOT EXISTS (SELECT 1 FROM agentmatic_blobs b "
            "WHERE b.thread_id = c.thread_id AND b.chunks IS NOT NULL "
            "AND position(c.hash IN b.chunks) > 0)",
            (thread_id,),
        )
        if not rows:
            conn.execute(
                "DELETE FROM agentmatic_threads WHERE thread_id = %s "
                "AND checkpoint_ns = %s",
                (thread_id, ns),
            )

    def collect_garbage(self, thread_id: str | None = None) -> int:
        """Tidy up after checkpoints were deleted with plain SQL; return threads done.

        For each thread (or the one given) that has writes or values of
        deleted checkpoints, the remaining checkpoints that still rebuild a
        delta channel from those writes get the value stored, and then every
        blob, chunk and write nothing references is deleted.
        """
        with self._conn() as conn:
            params: tuple[Any, ...] = ()
            scope = ""
            if thread_id is not None:
                scope = "AND t.thread_id = %s "
                params = (str(thread_id),) * 3
            keys = conn.execute(
                "SELECT t.thread_id, t.checkpoint_ns FROM agentmatic_threads t "
                f"WHERE t.checkpoints = 0 {scope}"
                "UNION SELECT DISTINCT w.thread_id, w.checkpoint_ns "
                "FROM agentmatic_writes w WHERE NOT EXISTS (SELECT 1 FROM "
                "agentmatic_checkpoints c WHERE c.thread_id = w.thread_id "
                "AND c.checkpoint_ns = w.checkpoint_ns "
                f"AND c.checkpoint_id = w.checkpoint_id) {scope.replace('t.', 'w.')}"
                "UNION SELECT DISTINCT b.thread_id, b.checkpoint_ns "
                "FROM agentmatic_blobs b WHERE NOT EXISTS (SELECT 1 FROM "
                "agentmatic_checkpoints c WHERE c.thread_id = b.thread_id "
                "AND c.checkpoint_ns = b.checkpoint_ns "
                f"AND c.checkpoint_id = b.checkpoint_id) {scope.replace('t.', 'b.')}",
                params,
            ).fetchall()
        for tid, ns in keys:
            with self._conn() as conn, conn.transaction():
                conn.execute(
                    "SELECT 1 FROM agentmatic_checkpoints c WHERE c.thread_id = %s "
                    "AND c.checkpoint_ns = %s AND c.carried_task_id IS NOT NULL "
                    f"AND {PARENT_GONE} ORDER BY c.checkpoint_id FOR UPDATE",
                    (tid, ns),
                )
                self._lock_thread(conn, tid, ns, False)
                orphans = {
                    cid: int(segment)
                    for cid, segment in conn.execute(
                        "SELECT DISTINCT w.checkpoint_id, w.segment "
                        "FROM agentmatic_writes w WHERE w.thread_id = %s "
                        "AND w.checkpoint_ns = %s AND w.segment IS NOT NULL "
                        "AND NOT EXISTS (SELECT 1 FROM agentmatic_checkpoints c "
                        "WHERE c.thread_id = w.thread_id "
                        "AND c.checkpoint_ns = w.checkpoint_ns "
                        "AND c.checkpoint_id = w.checkpoint_id)",
                        (tid, ns),
                    )
                }
                self._rebase(conn, tid, ns, self._rows(conn, tid, ns), orphans)
                self._collect(conn, tid, ns)
            self._forget(tid)
        if keys:
            log.info("postgres checkpoints: collected garbage in %s threads", len(keys))
        return len(keys)

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint, write and value of one thread into another."""
        src, dst = str(source_thread_id), str(target_thread_id)
        with self._conn() as conn, conn.transaction():
            conn.execute(
                "INSERT INTO agentmatic_threads (thread_id, checkpoint_ns, created_at, "
                "updated_at, last_checkpoint_id, segment, checkpoints, agent, "
                "started_by, forked_from) SELECT %s, checkpoint_ns, created_at, now(), "
                "last_checkpoint_id, segment, 0, agent, started_by, forked_from "
                "FROM agentmatic_threads WHERE thread_id = %s ON CONFLICT DO NOTHING",
                (dst, src),
            )
            conn.execute(
                "INSERT INTO agentmatic_chunks (thread_id, hash, data, created_at) "
                "SELECT %s, hash, data, created_at FROM agentmatic_chunks "
                "WHERE thread_id = %s ON CONFLICT DO NOTHING",
                (dst, src),
            )
            conn.execute(
                "INSERT INTO agentmatic_blobs (thread_id, checkpoint_ns, channel, "
                "version, checkpoint_id, segment, type, data, chunks, base_version, "
                "depth, created_at) SELECT %s, checkpoint_ns, channel, version, "
                "checkpoint_id, segment, type, data, chunks, base_version, depth, "
                "created_at FROM agentmatic_blobs WHERE thread_id = %s "
                "ON CONFLICT DO NOTHING",
                (dst, src),
            )
            # The copy stores carried writes as rows of their own (its rows
            # may interleave with the target's, and a carrying row must be
            # its parent's next), read with the others in one statement: a
            # DELETE moving them commits before it or after it. A write in
            # both places comes first from its row, which wins.
            conn.execute(
                f"INSERT INTO agentmatic_writes (thread_id, checkpoint_ns, {WRITE}, "
                f"segment, created_at) SELECT %s, checkpoint_ns, {WRITE}, segment, "
                "created_at FROM agentmatic_writes WHERE thread_id = %s "
                f"UNION ALL SELECT %s, c.checkpoint_ns, {CARRIED}, c.segment, "
                "c.created_at FROM agentmatic_checkpoints c WHERE c.thread_id = %s "
                "AND c.carried_task_id IS NOT NULL ON CONFLICT DO NOTHING",
                (dst, src, dst, src),
            )
            conn.execute(
                "WITH ins AS (INSERT INTO agentmatic_checkpoints (thread_id, "
                "checkpoint_ns, checkpoint_id, parent_checkpoint_id, segment, "
                "created_at, step, source, actor, run_id, type, checkpoint, metadata, "
                "light) SELECT %s, checkpoint_ns, checkpoint_id, parent_checkpoint_id, "
                "segment, created_at, step, source, actor, run_id, type, checkpoint, "
                "metadata, light "
                "FROM agentmatic_checkpoints WHERE thread_id = %s "
                "ON CONFLICT DO NOTHING RETURNING checkpoint_ns) "
                "UPDATE agentmatic_threads t SET checkpoints = t.checkpoints + n.count "
                "FROM (SELECT checkpoint_ns, count(*) FROM ins GROUP BY 1) n "
                "WHERE t.thread_id = %s AND t.checkpoint_ns = n.checkpoint_ns",
                (dst, src, dst),
            )
            # The copies may land between a parent of the target's own and
            # the row that carries its writes: those become rows. Holding the
            # target (taken after the rows, as a plain DELETE takes them), so
            # that a step carrying meanwhile has committed and is seen.
            conn.execute(
                "SELECT 1 FROM agentmatic_threads WHERE thread_id = %s "
                "ORDER BY checkpoint_ns FOR UPDATE",
                (dst,),
            )
            conn.execute(
                f"INSERT INTO agentmatic_writes (thread_id, checkpoint_ns, {WRITE}, "
                f"segment, created_at) SELECT c.thread_id, c.checkpoint_ns, {CARRIED}, "
                "c.segment, c.created_at "
                "FROM agentmatic_checkpoints c WHERE c.thread_id = %s "
                "AND c.carried_task_id IS NOT NULL AND EXISTS (SELECT 1 "
                "FROM agentmatic_checkpoints x WHERE x.thread_id = c.thread_id "
                "AND x.checkpoint_ns = c.checkpoint_ns "
                "AND x.checkpoint_id > c.parent_checkpoint_id "
                "AND x.checkpoint_id < c.checkpoint_id) ON CONFLICT DO NOTHING",
                (dst,),
            )
        self._forget(dst)

    def prune(
        self,
        thread_ids: Sequence[str],
        *,
        strategy: Literal["keep_latest", "delete"] = "keep_latest",
    ) -> None:
        """Keep only each namespace's newest checkpoint, or delete the threads."""
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"unknown prune strategy {strategy!r}")
        for thread_id in thread_ids:
            if strategy == "delete":
                self.delete_thread(thread_id)
                continue
            with self._conn() as conn:
                heads = conn.execute(
                    "SELECT checkpoint_ns, max(checkpoint_id) FROM "
                    "agentmatic_checkpoints WHERE thread_id = %s GROUP BY 1",
                    (str(thread_id),),
                ).fetchall()
                older = {
                    ns: [
                        r[0]
                        for r in conn.execute(
                            "SELECT checkpoint_id FROM agentmatic_checkpoints "
                            "WHERE thread_id = %s AND checkpoint_ns = %s "
                            "AND checkpoint_id < %s",
                            (str(thread_id), ns, head),
                        )
                    ]
                    for ns, head in heads
                }
            for ns, ids in older.items():
                self.delete_checkpoints(str(thread_id), ns, ids)

    # -- leases --------------------------------------------------------------------

    def acquire_lease(self, thread_id: str, owner: str, ttl_seconds: float) -> bool:
        """Take or renew the thread's run lease; False while another owner holds it.

        A renewal within the first half of the lease is skipped: the lease
        is ours until it expires, so nobody can have taken it meanwhile.
        """
        key = (str(thread_id), owner)
        now = time.monotonic()
        with self._lock:
            renewed = self._lease_renewed.get(key)
        if renewed is not None and now - renewed[0] < renewed[1] / 2:
            return True
        with self._conn() as conn:
            row = conn.execute(
                "INSERT INTO agentmatic_leases AS l (thread_id, owner, expires_at) "
                "VALUES (%s, %s, now() + make_interval(secs => %s)) "
                "ON CONFLICT (thread_id) DO UPDATE SET owner = EXCLUDED.owner, "
                "acquired_at = CASE WHEN l.owner = EXCLUDED.owner THEN l.acquired_at "
                "ELSE now() END, expires_at = EXCLUDED.expires_at "
                "WHERE l.owner = EXCLUDED.owner OR l.expires_at < now() "
                "RETURNING 1",
                (str(thread_id), owner, float(ttl_seconds)),
            ).fetchone()
        if row is None:
            return False
        with self._lock:
            self._lease_renewed[key] = (now, float(ttl_seconds))
        return True

    def release_lease(self, thread_id: str, owner: str) -> None:
        """Give the lease up if `owner` holds it."""
        with self._lock:
            self._lease_renewed.pop((str(thread_id), owner), None)
        with self._conn() as conn:
            conn.execute(
                "DELETE FROM agentmatic_leases WHERE thread_id = %s AND owner = %s",
                (str(thread_id), owner),
            )

    # -- lookups -------------------------------------------------------------------

    def find_checkpoint(self, checkpoint_id: str) -> CheckpointTuple | None:
        """Return the checkpoint with this id in any thread, or None."""
        check_checkpoint_id(checkpoint_id)
        with self._conn() as conn:
            row = conn.execute(
                "SELECT thread_id, checkpoint_ns FROM agentmatic_checkpoints "
                "WHERE checkpoint_id = %s ORDER BY checkpoint_ns, thread_id LIMIT 1",
                (str(checkpoint_id),),
            ).fetchone()
        if row is None:
            return None
        return self.get_tuple(thread_config(row[0], str(checkpoint_id), row[1]))

    def history_links(
        self, thread_id: str, checkpoint_ns: str = ""
    ) -> builtins.list[tuple[str, str | None]]:
        """Return `(checkpoint id, parent id)` of every checkpoint, newest first."""
        with self._conn() as conn:
            return conn.execute(
                "SELECT checkpoint_id, parent_checkpoint_id "
                "FROM agentmatic_checkpoints WHERE thread_id = %s "
                "AND checkpoint_ns = %s ORDER BY checkpoint_id DESC",
                (str(thread_id), checkpoint_ns),
            ).fetchall()

    def head_id(self, thread_id: str, checkpoint_ns: str = "") -> str | None:
        thread_id = check_thread_id(thread_id)
        checkpoint_ns = check_namespace(checkpoint_ns)
        with self._conn() as conn:
            row = conn.execute(
                "SELECT checkpoint_id FROM agentmatic_checkpoints "
                "WHERE thread_id = %s AND checkpoint_ns = %s "
                "ORDER BY checkpoint_id DESC LIMIT 1",
                (str(thread_id), checkpoint_ns),
            ).fetchone()
        return row[0] if row else None

    def thread_ids(self) -> Iterator[str]:
        """Yield every thread id that has checkpoints, once."""
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT DISTINCT thread_id FROM agentmatic_threads "
                "WHERE checkpoints > 0 ORDER BY thread_id"
            ).fetchall()
        for (thread_id,) in rows:
            yield thread_id

    def retention_rows(self, thread_id: str | None = None) -> Iterator[tuple[Any, ...]]:
        """Yield what retention needs of each checkpoint, decoding no value.

        Of every thread, or of `thread_id` only. No checkpoint needs its
        parent kept for its values: deleting through `delete_checkpoints`
        stores the values a remaining checkpoint needs.
        """
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT c.thread_id, c.checkpoint_ns, c.checkpoint_id, "
                "c.parent_checkpoint_id, c.created_at, c.metadata, t.forked_from "
                "FROM agentmatic_checkpoints c LEFT JOIN agentmatic_threads t "
                "ON t.thread_id = c.thread_id AND t.checkpoint_ns = '' "
                "WHERE %s::text IS NULL OR c.thread_id = %s",
                (thread_id, thread_id),
            ).fetchall()
        for tid, ns, cid, parent, created, meta, forked in rows:
            meta = dict(meta or {})
            if forked and "forked_from" not in meta:
                # The fork's first checkpoint may be gone; its thread remembers.
                meta["forked_from"] = forked
            yield (tid, ns, cid, parent, created.isoformat(), False, meta)

    # -- readers that need no agent ------------------------------------------------

    def get_state_history(
        self,
        thread_id: str,
        *,
        limit: int | None = None,
        before: str | None = None,
        values: bool = True,
        checkpoint_ns: str = "",
    ) -> builtins.list[State]:
        """Return the thread's states newest first, read without its agent.

        With ``values=False`` only checkpoint rows and the writes a timeline
        needs are decoded: no channel value is read.
        """
        thread_id, before, checkpoint_ns = check_history_args(
            thread_id, limit, before, checkpoint_ns
        )
        if not values:
            return self._light_history(thread_id, checkpoint_ns, limit, before)
        config = thread_config(thread_id, checkpoint_ns=checkpoint_ns)
        before_config = (
            thread_config(thread_id, before, checkpoint_ns) if before else None
        )
        with self._snapshot():
            tuples = builtins.list(self.list(config, before=before_config, limit=limit))
            resolver = ValueResolver(self, thread_id, checkpoint_ns)
            return states_with_values(resolver, tuples)

    def get_state(
        self, thread_id: str, checkpoint_id: str | None = None, *, values: bool = True
    ) -> State | None:
        """Return the newest (or the named) state of a thread, or None."""
        thread_id, checkpoint_id = check_state_args(thread_id, checkpoint_id)
        if not values:
            found = self._light_states(thread_id, "", checkpoint_id)
            return found[0] if found else None
        with self._snapshot():
            tup = self.get_tuple(thread_config(thread_id, checkpoint_id))
            if tup is None:
                return None
            resolver = ValueResolver(self, thread_id, "")
            resolver.add([tup])
            return build_state(tup, values=resolver.values(tup), resolver=resolver)

    def list_threads(
        self, *, agent: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> ThreadPage:
        """Return threads by newest activity, `limit` at a time (keyset paging)."""
        check_thread_page(agent, limit, cursor)
        where = ["t.checkpoint_ns = ''", "t.checkpoints > 0"]
        params: builtins.list[Any] = []
        if agent is not None:
            where.append("t.agent = %s")
            params.append(agent)
        if cursor:
            updated_at, after_id = decode_cursor(cursor)
            try:
                after_time = datetime.fromisoformat(updated_at)
            except ValueError as exc:
                raise ValueError(f"malformed thread cursor {cursor!r}") from exc
            where.append("(t.updated_at, t.thread_id) < (%s, %s)")
            params.extend([after_time, after_id])
        params.append(int(limit) + 1)
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT t.thread_id, t.created_at, t.updated_at, t.agent, "
                "t.started_by, t.checkpoints, t.forked_from, "
                f"{_prefixed(ROW, 'h')} FROM agentmatic_threads t "
                f"CROSS JOIN LATERAL (SELECT {self._light_columns} "
                "FROM agentmatic_checkpoints c "
                "WHERE c.thread_id = t.thread_id AND c.checkpoint_ns = '' "
                "ORDER BY c.checkpoint_id DESC LIMIT 1) h "
                f"WHERE {' AND '.join(where)} "
                "ORDER BY t.updated_at DESC, t.thread_id DESC LIMIT %s",
                params,
            ).fetchall()
            page = rows[:limit]
            heads = [self._decode_row(r[7:]) for r in page]
            states = self._light_from_rows(conn, heads)
        infos = []
        for raw, head, state in zip(page, heads, states, strict=True):
            tid, created, updated, agt, by, count, fork = raw[:7]
            meta = head.metadata
            infos.append(
                ThreadInfo(
                    thread_id=tid,
                    checkpoint_id=head.checkpoint_id,
                    created_at=created.isoformat() if created else None,
                    updated_at=updated.isoformat() if updated else None,
                    step=int(meta.get("step", -1)),
                    source=str(meta.get("source", "")),
                    next=state.next,
                    agent=agt or meta.get("agent"),
                    started_by=by or meta.get("started_by"),
                    checkpoints=int(count),
                    forked_from=fork,
                )
            )
        next_cursor = None
        if len(rows) > limit and infos:
            last = infos[-1]
            next_cursor = encode_cursor(last.updated_at or "", last.thread_id)
        return ThreadPage(threads=infos, next_cursor=next_cursor)

    # -- the timeline without values ---------------------------------------------------

    def _light_history(
        self, thread_id: str, ns: str, limit: int | None, before: str | None
    ) -> builtins.list[State]:
        where = "thread_id = %s AND checkpoint_ns = %s"
        params: builtins.list[Any] = [thread_id, ns]
        if before:
            where += " AND checkpoint_id < %s"
            params.append(before)
        sql = (
            f"SELECT {self._light_columns} FROM agentmatic_checkpoints "
            f"WHERE {where} ORDER BY checkpoint_id DESC"
        )
        if limit is not None:
            sql += " LIMIT %s"
            params.append(int(limit))
        with self._conn() as conn:
            rows = [self._decode_row(r) for r in conn.execute(sql, params).fetchall()]
            return self._light_from_rows(conn, rows)

    def _light_states(
        self, thread_id: str, ns: str, checkpoint_id: str | None
    ) -> builtins.list[State]:
        with self._conn() as conn:
            rows = self._checkpoint_rows(
                conn, thread_id, ns, checkpoint_id, columns=self._light_columns
            )
            return self._light_from_rows(conn, rows)

    def _light_from_rows(
        self, conn: psycopg.Connection[Any], rows: Sequence[_Row]
    ) -> builtins.list[State]:
        """Build timeline states: interrupts, decisions, errors and waiting calls.

        Waiting tool calls come from the model's message writes on the parent
        (or the stored message list); only those writes are decoded.
        """
        if not rows:
            return []
        serde = self.display_serde
        by_thread: dict[tuple[str, str], builtins.list[_Row]] = {}
        for row in rows:
            by_thread.setdefault((row.thread_id, row.ns), []).append(row)
        states: dict[tuple[str, str, str], State] = {}
        for (thread_id, ns), group in by_thread.items():
            tool_next = {r.checkpoint_id for r in group if _may_run_tools(r)}
            parents = {
                r.parent_id
                for r in group
                if r.checkpoint_id in tool_next and r.parent_id
            }
            ids = sorted({r.checkpoint_id for r in group} | parents)
            tasks_wanted = {
                (ch, str(r.checkpoint["channel_versions"][ch]))
                for r in group
                for ch in r.blob_channels
                if _needs_value(ch) and ch in r.checkpoint["channel_versions"]
            }
            with conn.pipeline():
                write_cur = self._timeline_writes(conn, thread_id, ns, ids, parents)
                blob_cur = self._blob_query(conn, thread_id, ns, tasks_wanted)
            wanted = set(ids)
            writes: dict[str, builtins.list[tuple[Any, ...]]] = {}
            for w in _expand(_with_carried(write_cur.fetchall()), thread_id):
                if w[0] not in wanted:
                    continue
                writes.setdefault(w[0], []).append(w[1:])
            sends = self._blob_values(
                conn, thread_id, _blob_rows(blob_cur), tasks_wanted, serde
            )
            writes_on = _WritesOn(self, thread_id, writes, serde)
            resolver = _LightResolver(self, thread_id, ns)
            tuples = []
            for row in group:
                config = thread_config(thread_id, row.checkpoint_id, ns)
                parent_config = (
                    thread_config(thread_id, row.parent_id, ns)
                    if row.parent_id
                    else None
                )
                if row.scheduled is not None:
                    # The row's summary says what runs next: nothing to decode.
                    runs_tools = row.checkpoint_id in tool_next
                    state = assemble_state(
                        checkpoint_id=row.checkpoint_id,
                        created_at=row.checkpoint.get("ts"),
                        config=config,
                        parent_config=parent_config,
                        metadata=row.metadata,
                        scheduled=[(node, None) for node in row.scheduled],
                        pending_writes=writes_on(row.checkpoint_id),
                        messages=messages_written(writes_on(row.parent_id))
                        if runs_tools and row.parent_id
                        else [],
                        values={},
                    )
                    if runs_tools and not state.pending_tool_calls and row.has_messages:
                        tup = CheckpointTuple(
                            config=config,
                            checkpoint=row.checkpoint,
                            metadata=row.metadata,
                            parent_config=parent_config,
                            pending_writes=writes_on(row.checkpoint_id),
                        )
                        state = self._state_with_messages(conn, row, tup)
                    states[(thread_id, ns, row.checkpoint_id)] = state
                    continue
                values = dict(row.checkpoint.get("channel_values") or {})
                versions = row.checkpoint.get("channel_versions") or {}
                for ch in row.blob_channels:
                    if trigger_target(ch) is not None:
                        # Only its presence counts, unless _needs_value says so.
                        values[ch] = True
                    key = (ch, str(versions.get(ch)))
                    if key in sends:
                        values[ch] = sends[key]
                tup = CheckpointTuple(
                    config=config,
                    checkpoint={**row.checkpoint, "channel_values": values},
                    metadata=row.metadata,
                    parent_config=parent_config,
                    pending_writes=writes_on(row.checkpoint_id),
                )
                resolver.tuples[row.checkpoint_id] = tup
                tuples.append((row, tup))
            # Rows read whole look up their parents' writes through these.
            for pid in parents if tuples else ():
                if pid not in resolver.tuples:
                    resolver.tuples[pid] = CheckpointTuple(
                        config=thread_config(thread_id, pid, ns),
                        checkpoint={"id": pid},
                        metadata={},
                        parent_config=None,
                        pending_writes=writes_on(pid),
                    )
            for row, tup in tuples:
                state = build_state(tup, values=None, resolver=resolver)
                if (
                    row.checkpoint_id in tool_next
                    and not state.pending_tool_calls
                    and MESSAGES in (row.checkpoint.get("channel_versions") or {})
                ):
                    state = self._state_with_messages(conn, row, tup)
                states[(thread_id, ns, row.checkpoint_id)] = state
        return [states[(r.thread_id, r.ns, r.checkpoint_id)] for r in rows]

    def _timeline_writes(
        self,
        conn: psycopg.Connection[Any],
        thread_id: str,
        ns: str,
        ids: Sequence[str],
        parents: set[str],
    ) -> psycopg.Cursor[Any]:
        """Query the writes on `ids` (sorted) that a timeline reads.

        Values come only for interrupts, decisions and errors, and for the
        messages written on `parents`. A long stretch of checkpoints is one
        id range (the caller drops the ids it did not ask for): sending
        thousands of ids costs more than the rows in between. Rows of their
        own and carried ones come in one statement (see `_writes_on`).
        """
        # The columns of `WRITE`, for writes in agentmatic_writes (`w`) and
        # carried ones (`c`), with a value only where the timeline reads it.
        # `{on}` says whether the write is on one of `parents`.
        columns = (
            "{checkpoint_id}, {task_id}, {channel}, "
            "CASE WHEN {channel} = ANY(%s::text[]) "
            "OR ({channel} = %s AND {on}) THEN {type} END, "
            "CASE WHEN {channel} = ANY(%s::text[]) "
            "OR ({channel} = %s AND {on}) THEN {blob} END, "
            "{task_path}, {idx}, CASE WHEN {on} THEN {extra} END"
        )
        own = {column: f"w.{column}" for column in CARRIED_AS_WRITE}
        carried = CARRIED_AS_WRITE
        picks = (list(TIMELINE_CHANNELS), MESSAGES, list(TIMELINE_CHANNELS), MESSAGES)
        if len(ids) <= ID_LIST_MAX:
            own_on = f"{own['checkpoint_id']} = ANY(%s::text[])"
            carried_on = f"{carried['checkpoint_id']} = ANY(%s::text[])"
            per_write = (*picks[:2], sorted(parents), *picks[2:], sorted(parents))
            return conn.execute(
                f"SELECT {columns.format(on=own_on, **own)}, false "
                "FROM agentmatic_writes w WHERE w.thread_id = %s "
                "AND w.checkpoint_ns = %s AND w.checkpoint_id = ANY(%s::text[]) "
                f"UNION ALL SELECT {columns.format(on=carried_on, **carried)}, true "
                f"{CARRIED_AFTER}",
                (
                    *per_write,
                    sorted(parents),
                    thread_id,
                    ns,
                    list(ids),
                    *per_write,
                    sorted(parents),
                    list(ids),
                    thread_id,
                    ns,
                ),
            )
        # The parents are a hashed set: matching each row against an array
        # costs rows x parents comparisons. Never prepared: a generic plan
        # cannot hash a parameter's array. The writes on [first, last] that
        # rows carry ride in the rows of (first, the row after last].
        return conn.cursor(binary=True).execute(
            f"SELECT {columns.format(on='p.id IS NOT NULL', **own)}, false "
            "FROM agentmatic_writes w "
            "LEFT JOIN unnest(%s::text[]) AS p(id) ON p.id = w.checkpoint_id "
            "WHERE w.thread_id = %s AND w.checkpoint_ns = %s "
            "AND w.checkpoint_id >= %s AND w.checkpoint_id <= %s "
            f"UNION ALL SELECT {columns.format(on='p.id IS NOT NULL', **carried)}, "
            "true FROM agentmatic_checkpoints c "
            "LEFT JOIN unnest(%s::text[]) AS p(id) ON p.id = c.parent_checkpoint_id "
            "WHERE c.thread_id = %s AND c.checkpoint_ns = %s "
            "AND c.checkpoint_id > %s AND c.checkpoint_id <= coalesce(("
            "SELECT n.checkpoint_id FROM agentmatic_checkpoints n "
            "WHERE n.thread_id = %s AND n.checkpoint_ns = %s "
            "AND n.checkpoint_id > %s ORDER BY n.checkpoint_id LIMIT 1), %s) "
            "AND c.parent_checkpoint_id >= %s AND c.parent_checkpoint_id <= %s "
            "AND c.carried_task_id IS NOT NULL",
            (
                *picks,
                sorted(parents),
                thread_id,
                ns,
                ids[0],
                ids[-1],
                *picks,
                sorted(parents),
                thread_id,
                ns,
                ids[0],
                thread_id,
                ns,
                ids[-1],
                ids[-1],
                ids[0],
                ids[-1],
            ),
            prepare=False,
        )

    def _light_writes(
        self,
        thread_id: str,
        checkpoint_id: str,
        writes: dict[str, builtins.list[tuple[Any, ...]]],
        serde: Serializer,
    ) -> builtins.list[PendingWrite]:
        out: builtins.list[PendingWrite] = []
        found = writes.get(checkpoint_id, [])
        if len(found) > 1:
            found = sorted(found, key=lambda w: (w[4], w[0], w[5]))
        for task_id, channel, type_, blob, _path, _idx in found:
            value: Any = None
            if blob is not None and type_ != "null":
                # Of messages a timeline needs only the calls: read just those.
                if channel == MESSAGES:
                    value = _calls_only(type_, blob)
                if value is None:
                    value = self._loads(serde, thread_id, checkpoint_id, type_, blob)
            out.append((task_id, channel, value))
        return out

    def _state_with_messages(
        self, conn: psycopg.Connection[Any], row: _Row, tup: CheckpointTuple
    ) -> State:
        """Find waiting calls from the whole message list (an update checkpoint)."""
        value = self._value_at(conn, row.thread_id, row.ns, row.checkpoint_id, MESSAGES)
        messages = [] if value is _NOTHING else _unwrap(value)
        values = dict(tup.checkpoint.get("channel_values") or {})
        values[MESSAGES] = DeltaSnapshot(list(messages or []))
        light = tup._replace(checkpoint={**tup.checkpoint, "channel_values": values})
        return build_state(light, values=None, scheduled=_scheduled(row))


class _WritesOn:
    """The pending writes of each checkpoint of a timeline, decoded once."""

    def __init__(
        self,
        saver: PostgresSaver,
        thread_id: str,
        writes: dict[str, builtins.list[tuple[Any, ...]]],
        serde: Serializer,
    ) -> None:
        self.saver = saver
        self.thread_id = thread_id
        self.writes = writes
        self.serde = serde
        self.decoded: dict[str, builtins.list[PendingWrite]] = {}

    def __call__(self, checkpoint_id: str) -> builtins.list[PendingWrite]:
        found = self.decoded.get(checkpoint_id)
        if found is None:
            found = self.decoded[checkpoint_id] = self.saver._light_writes(
                self.thread_id, checkpoint_id, self.writes, self.serde
            )
        return found


class _LightResolver(ValueResolver):
    """A resolver that never reads: a timeline only uses the tuples it holds."""

    def _tuple(self, checkpoint_id: str) -> CheckpointTuple | None:
        return self.tuples.get(checkpoint_id)


class _Nothing:
    def __repr__(self) -> str:
        return "<nothing>"


_NOTHING: Any = _Nothing()


def _ts_time(checkpoint: dict[str, Any]) -> datetime | None:
    """Return the checkpoint's ts as a time, if `created_at` can hold it exactly."""
    ts = checkpoint.get("ts")
    if not isinstance(ts, str):
        return None
    try:
        when = datetime.fromisoformat(ts)
    except ValueError:
        return None
    if when.utcoffset() != timedelta(0) or not 1970 <= when.year < 9000:
        # Far-off years may not convert in every session time zone.
        return None
    when = when.astimezone(UTC)
    return when if when.isoformat() == ts else None


def _ts_text(created: datetime | None) -> str | None:
    return created.astimezone(UTC).isoformat() if created is not None else None


_LONG_NUMBER = re.compile(r"\d{19}")


def _row_metadata(stored: Any, hidden: Any, columns: Sequence[Any]) -> dict[str, Any]:
    """Return a checkpoint's metadata: the jsonb, the hidden part, the columns."""
    if isinstance(stored, str):
        # orjson is quicker, but turns integers past 64 bits into floats and
        # refuses numbers past a double: text with such a run of digits, or
        # that orjson refuses, goes through the json module.
        if _LONG_NUMBER.search(stored) is None:
            try:
                stored = orjson.loads(stored)
            except orjson.JSONDecodeError:
                stored = json.loads(stored)
        else:
            stored = json.loads(stored)
    metadata = dict(stored) if isinstance(stored, dict) else {}
    if isinstance(hidden, dict):
        metadata.update(hidden)
    for key, value in zip(COLUMN_KEYS, columns, strict=False):
        if value is not None and key not in metadata:
            metadata[key] = str(value) if key == "run_id" else value
    return metadata


def _light_summary(
    checkpoint: dict[str, Any], metadata: dict[str, Any], inline: dict[str, Any]
) -> bytes | None:
    """Return what a timeline needs of a checkpoint, or None if it needs more.

    That is the nodes it runs next, whether it has a message log, and the
    metadata kept inside the checkpoint. A checkpoint that queues packets,
    waits at a barrier or keeps its messages in the row (`inline`) is read
    whole.
    """
    values = checkpoint.get("channel_values") or {}
    if (
        TASKS in values
        or MESSAGES in inline
        or checkpoint.get("pending_sends")
        or any(ch.startswith("join:") for ch in values)
    ):
        return None
    if any(k in metadata and not _plain(metadata[k]) for k in HIDDEN_META):
        # Kept in the checkpoint, where the serializer keeps its types.
        return None
    scheduled = [node for node, _arg in next_nodes(checkpoint)]
    # The hidden metadata, by position in HIDDEN_META (None: not there).
    hidden = [metadata.get(k) for k in HIDDEN_META]
    try:
        return ormsgpack.packb(
            [
                scheduled,
                MESSAGES in (checkpoint.get("channel_versions") or {}),
                hidden if any(v is not None for v in hidden) else None,
            ]
        )
    except TypeError:
        return None


def _scheduled(row: _Row) -> builtins.list[tuple[str, Any]] | None:
    if row.scheduled is None:
        return None
    return [(node, None) for node in row.scheduled]


def _calls_only(type_: str, blob: bytes) -> builtins.list[Any] | None:
    """Return stand-ins for stored messages, holding only their tool calls."""
    try:
        tag, data = packing.unpack_typed(type_, bytes(blob))
    except SerializationError:
        return None
    return minimal_from_msgpack(data) if tag == "msgpack" else None


def _plain(value: Any) -> bool:
    """Return whether msgpack gives `value` back as it is (ints, text, lists)."""
    if isinstance(value, bool) or value is None:
        return value is not None
    if type(value) in (int, str):
        return type(value) is str or -(2**63) <= value < 2**64
    if type(value) is list:
        return all(_plain(v) or v is None for v in value)
    if type(value) is dict:
        return all(
            type(k) is str and (_plain(v) or v is None) for k, v in value.items()
        )
    return False


def _needs_value(channel: str) -> bool:
    """Return whether a timeline needs a blob channel's value, not its presence."""
    return channel == TASKS or channel.startswith("join:")


def _may_run_tools(row: _Row) -> bool:
    """Return whether a checkpoint may schedule a tool (cheap over-estimate)."""
    if row.scheduled is not None:
        return any(n not in LLM_NODES and n != START for n in row.scheduled)
    values = row.checkpoint.get("channel_values") or {}
    if values.get(TASKS) or TASKS in row.blob_channels:
        return True
    for channel in values:
        node = trigger_target(channel)
        if node is not None and node not in LLM_NODES and node != START:
            return True
    return False


def _expand(rows: Iterable[Sequence[Any]], thread_id: str) -> list[tuple[Any, ...]]:
    """Return write rows one per write: ``(checkpoint_id, task_id, channel,
    type, blob, task_path, idx)``, with the writes packed in `extra` unpacked.

    A slot present as a row of its own and inside another row's `extra`
    (two calls for one task) keeps the row of its own, which came first.
    """
    out: list[tuple[Any, ...]] = []
    own: set[tuple[str, str, int]] = set()
    packed: list[tuple[Any, ...]] = []
    for cid, task, channel, type_, blob, path, idx, extra in rows:
        out.append((cid, task, channel, type_, blob, path, idx))
        own.add((cid, task, idx))
        if extra is None:
            continue
        try:
            entries = ormsgpack.unpackb(extra)
            for slot, ch, ty, data in entries:
                packed.append((cid, task, ch, ty, data, path, int(slot)))
        except (ormsgpack.MsgpackDecodeError, TypeError, ValueError) as exc:
            raise CorruptCheckpoint(
                thread_id, cid, f"the writes of task {task!r} are damaged ({exc})"
            ) from None
    out.extend(w for w in packed if (w[0], w[1], w[6]) not in own)
    return out


def _with_carried(rows: Sequence[Sequence[Any]]) -> list[Sequence[Any]]:
    """Return `WRITE` rows from rows that end with whether they were carried.

    Carried writes copied into agentmatic_writes (see migration 7) come
    twice; the copy wins, as later calls for the task updated it.
    """
    own = {(r[0], r[1], r[6]) for r in rows if not r[8]}
    return [r[:8] for r in rows if not r[8] or (r[0], r[1], r[6]) not in own]


def _ordered(writes: Iterable[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Return expanded writes in the order they apply: checkpoint, path, task, slot."""
    return sorted(writes, key=lambda w: (w[0], w[5], w[1], w[6]))


def _unwrap(value: Any) -> Any:
    return value.value if isinstance(value, DeltaSnapshot) else value


def _blob_rows(cur: psycopg.Cursor[Any] | None) -> dict[tuple[str, str], _Blob]:
    if cur is None:
        return {}
    out: dict[tuple[str, str], _Blob] = {}
    for channel, version, segment, cid, type_, data, chunks, base in cur.fetchall():
        out[(channel, version)] = _Blob(
            channel,
            version,
            int(segment),
            cid,
            type_,
            bytes(data) if data is not None else None,
            bytes(chunks) if chunks is not None else None,
            base,
        )
    return out


def _prefixed(columns: str, alias: str) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in columns.split(","))


@dataclass(frozen=True)
class RawValue:
    """A channel value copied as stored bytes, never decoded (see `upgrade`)."""

    type: str
    data: bytes | None


def _is_small(value: Any, serde: Serializer) -> bool:
    if isinstance(value, RawValue):
        return False
    if value is None or isinstance(value, (bool, int, float)):
        return True
    if isinstance(value, str):
        return len(value) <= INLINE_MAX
    if isinstance(value, DeltaSnapshot):
        return False
    if isinstance(value, (list, dict, tuple)) and len(value) > INLINE_MAX:
        return False
    try:
        return len(serde.dumps(value)) <= INLINE_MAX
    except SerializationError:
        return False


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _is_int32(value: Any) -> bool:
    return type(value) is int and -(2**31) <= value < 2**31


def _is_text(value: Any) -> bool:
    return type(value) is str


def _is_uuid_text(value: Any) -> bool:
    """Return whether `value` is a UUID in its canonical text (it reads back so)."""
    if type(value) is not str or len(value) != 36:
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


# Metadata items kept in columns of their own (not repeated in the jsonb) when
# their values fit the column exactly, so they read back unchanged.
COLUMN_KEYS: dict[str, Callable[[Any], bool]] = {
    "step": _is_int32,
    "source": _is_text,
    "actor": _is_text,
    "run_id": _is_uuid_text,
}


def _in_column(key: str, value: Any) -> bool:
    """Return whether a metadata item is kept in its own column."""
    fits = COLUMN_KEYS.get(key)
    return fits is not None and fits(value)


def _column_value(metadata: dict[str, Any], key: str) -> Any:
    value = metadata.get(key)
    return value if _in_column(key, value) else None


def _clean(value: Any) -> Any:
    """Return `value` as Postgres's jsonb accepts it (no NUL, no lone surrogate)."""
    if isinstance(value, str):
        if "\x00" in value:
            value = value.replace("\x00", "")
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_clean(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _jsonb(value: Any, thread_id: str | None, checkpoint_id: str | None) -> Jsonb:
    cleaned = _clean(value)
    try:
        json.dumps(cleaned)
    except (TypeError, ValueError) as exc:
        where = f" of thread {thread_id!r}" if thread_id else ""
        raise SerializationError(
            f"metadata{where} (checkpoint {checkpoint_id!r}) is not JSON: {exc}"
        ) from exc
    return Jsonb(cleaned)


def checkpoint_metadata(config: Config, metadata: dict[str, Any]) -> dict[str, Any]:
    """Return the metadata LangGraph stores: the given keys plus scalar config keys.

    Keys of the config's ``metadata`` and ``configurable`` the metadata
    lacks are added when they are plain scalars (LangGraph's rule), except
    bookkeeping keys and keys starting with ``__``.
    """
    merged = dict(metadata)
    for source in (config.get("metadata"), config.get("configurable")):
        for key, value in (source or {}).items():
            if key in merged or key in _NOT_METADATA or key.startswith("__"):
                continue
            if isinstance(value, (str, bool, int, float)):
                merged[key] = value
    return merged


def _schema_version(db: psycopg.Connection[Any] | psycopg.Cursor[Any]) -> int:
    """Return the newest migration recorded (the table must exist)."""
    got = db.execute("SELECT coalesce(max(v), 0) FROM agentmatic_migrations").fetchone()
    return int(got[0]) if got else 0


def _redact(url: str) -> str:
    """Return the URL with any password replaced, for messages and logs."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def _splits_lists(serde: Serializer) -> bool:
    """Return whether the serializer writes plain msgpack (lists can be split)."""
    return serde.dumps_typed([0])[0] == "msgpack"


__all__ = ["AgentmaticError", "PostgresSaver", "checkpoint_metadata"]
