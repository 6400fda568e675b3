"""SQLiteSaver: checkpoints in one SQLite file, in LangGraph's own format.

The tables `checkpoints` and `writes` are exactly the ones LangGraph's
`SqliteSaver` creates, with metadata stored as JSON bytes and every other
value as a ``(type, blob)`` pair of the shared serializer, so either library
opens a file the other wrote. Beside them live tables LangGraph ignores:

- `agentmatic_index`: one row per checkpoint with what a timeline needs
  (step, source, actor, the nodes it schedules, the tool calls waiting),
  so a history without values never decodes a checkpoint;
- `agentmatic_threads`: one row per thread, paged by newest activity;
- `agentmatic_leases`: which process runs a thread;
- `agentmatic_meta` and `agentmatic_migrations`: bookkeeping.

Checkpoints LangGraph wrote into the file are indexed the first time the
saver sees them. A file the saver may not write (``readonly=True``, or no
write permission) keeps its index in a side file that is attached to every
connection, so the original is never written.

Every thread gets its own connection (WAL mode, a busy timeout and retries
on a locked database), so several threads and processes can write
different threads of one file at once. A write that names the head it
expects checks and inserts inside one ``BEGIN IMMEDIATE`` transaction.
"""

# ruff: noqa: S608
# SQL text here is assembled only from constants (the schema our tables live
# in, column lists, placeholder counts); every value from input is bound.

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import logging
import os
import random
import re
import sqlite3
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

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
    parent_id_of,
    thread_config,
)
from agentmatic.checkpoint.reading import (
    LLM_NODES,
    START,
    ValueResolver,
    _tool_call_from_send,
    build_state,
    decode_cursor,
    encode_cursor,
    next_nodes,
    states_with_values,
    trigger_target,
)
from agentmatic.checkpoint.retention import needs_ancestors
from agentmatic.checkpoint.serde import Send, Serializer
from agentmatic.errors import (
    CorruptCheckpoint,
    DisallowedType,
    ReadOnlyThread,
    SerializationError,
    ThreadConflict,
)
from agentmatic.messages import AIMessage, BaseMessage, ToolCall
from agentmatic.state import Config, State, ThreadInfo, ThreadPage

log = logging.getLogger(__name__)

T = TypeVar("T")

MESSAGES = "messages"
# Writes whose values a timeline needs; every other write is only counted.
_TIMELINE_CHANNELS = (INTERRUPT, DECISION, ERROR)
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
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# SQLite allows 999 bound parameters in older builds; stay well below.
_CHUNK = 400

_LANGGRAPH_TABLES = """
CREATE TABLE IF NOT EXISTS checkpoints (
    thread_id TEXT NOT NULL,
    checkpoint_ns TEXT NOT NULL DEFAULT '',
    checkpoint_id TEXT NOT NULL,
    parent_checkpoint_id TEXT,
    type TEXT,
    checkpoint BLOB,
    metadata BLOB,
    PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id)
);
CREATE TABLE IF NOT EXISTS writes (
    thread_id TEXT NOT NULL,
    checkpoint_ns TEXT NOT NULL DEFAULT '',
    checkpoint_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    task_path TEXT NOT NULL DEFAULT '',
    idx INTEGER NOT NULL,
    channel TEXT NOT NULL,
    type TEXT,
    value BLOB,
    PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id, task_id, idx)
);
"""

# Our own schema, one entry per version; applied in order, never edited.
# `{s}` is the schema our tables live in: `main` or the attached side file.
_MIGRATIONS: tuple[tuple[str, str], ...] = (
    (
        "index, threads and leases",
        """
        CREATE TABLE IF NOT EXISTS {s}.agentmatic_index (
            thread_id TEXT NOT NULL,
            checkpoint_ns TEXT NOT NULL,
            checkpoint_id TEXT NOT NULL,
            parent_checkpoint_id TEXT,
            ts TEXT,
            step INTEGER,
            source TEXT,
            actor TEXT,
            agent TEXT,
            run_id TEXT,
            next TEXT NOT NULL DEFAULT '[]',
            pending_calls TEXT NOT NULL DEFAULT '[]',
            needs_parent INTEGER NOT NULL DEFAULT 0,
            metadata TEXT NOT NULL DEFAULT '{{}}',
            light TEXT NOT NULL DEFAULT '{{}}',
            PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id)
        );
        CREATE INDEX IF NOT EXISTS {s}.agentmatic_index_checkpoint
            ON agentmatic_index (checkpoint_id);
        CREATE INDEX IF NOT EXISTS {s}.agentmatic_index_run
            ON agentmatic_index (run_id);
        CREATE TABLE IF NOT EXISTS {s}.agentmatic_threads (
            thread_id TEXT PRIMARY KEY,
            agent TEXT,
            started_by TEXT,
            created_at TEXT,
            updated_at TEXT,
            head_checkpoint_id TEXT,
            step INTEGER,
            source TEXT,
            next TEXT NOT NULL DEFAULT '[]',
            checkpoints INTEGER NOT NULL DEFAULT 0,
            forked_from TEXT
        );
        CREATE INDEX IF NOT EXISTS {s}.agentmatic_threads_recent
            ON agentmatic_threads (updated_at, thread_id);
        CREATE INDEX IF NOT EXISTS {s}.agentmatic_threads_agent
            ON agentmatic_threads (agent, updated_at, thread_id);
        CREATE TABLE IF NOT EXISTS {s}.agentmatic_leases (
            thread_id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            expires_at REAL NOT NULL
        );
        CREATE TABLE IF NOT EXISTS {s}.agentmatic_meta (
            key TEXT PRIMARY KEY,
            value TEXT
        );
        """,
    ),
)

_INDEX_COLUMNS = (
    "thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, ts, step, "
    "source, actor, agent, run_id, next, pending_calls, needs_parent, metadata, "
    "light"
)


class SQLiteSaver(BaseSaver):
    """A saver on one SQLite file (or ``":memory:"``), LangGraph-compatible.

    `allow` admits more types to the serializer. With `readonly=True` the
    file is never written (its index goes to `index_path`, by default
    ``<path>.agentmatic-index.sqlite``, or a temporary directory when the
    file's directory is not writable); writes then raise `ReadOnlyThread`.
    `synchronous` is SQLite's setting for writes: ``"NORMAL"`` (the default,
    safe against a crashed process) or ``"FULL"`` (also against power loss).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        allow: Iterable[Any] = (),
        readonly: bool = False,
        index_path: str | os.PathLike[str] | None = None,
        serde: Serializer | None = None,
        busy_timeout: float = 30.0,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        chain_key: Any = None,
    ) -> None:
        super().__init__(serde=serde, allow=allow, chain_key=chain_key)
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError("synchronous must be 'NORMAL' or 'FULL'")
        self.path = str(path)
        self.busy_timeout = float(busy_timeout)
        self._synchronous = synchronous
        self._memory = self.path == ":memory:"
        if self._memory and readonly:
            raise ValueError("an in-memory database cannot be opened read-only")
        exists = self._memory or os.path.exists(self.path)
        if readonly and not exists:
            raise FileNotFoundError(f"no checkpoint database at {self.path!r}")
        self.readonly = bool(readonly) or (
            exists and not self._memory and not os.access(self.path, os.W_OK)
        )
        self._immutable = False
        self.index_path: str | None = None
        if self.readonly:
            self.index_path = str(index_path or _default_index_path(self.path))
        # Our tables live in the file itself unless it is read-only.
        self._s = "aidx" if self.readonly else "main"
        self._local = threading.local()
        self._lock = threading.RLock()
        # (pid, connection): a connection is closed only by the process that
        # opened it, never by a forked child.
        self._conns: builtins.list[tuple[int, sqlite3.Connection]] = []
        self._shared: sqlite3.Connection | None = None
        self._closed = False
        # Files from before LangGraph added `writes.task_path` lack the column.
        self._task_path = "task_path"
        self._setup()

    # -- connections -------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        if self.readonly:
            conn = self._open_readonly()
        else:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        if not self.readonly:
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        if self.index_path is not None:
            conn.execute("ATTACH DATABASE ? AS aidx", (self.index_path,))
            conn.execute(f"PRAGMA aidx.synchronous = {self._synchronous}")
        return conn

    def _open_readonly(self) -> sqlite3.Connection:
        quoted = urllib.parse.quote(os.path.abspath(self.path))
        modes = ["mode=ro", "immutable=1"] if not self._immutable else ["immutable=1"]
        failure: sqlite3.Error | None = None
        for mode in modes:
            conn = sqlite3.connect(
                f"file:{quoted}?{mode}",
                uri=True,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            try:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.OperationalError as exc:
                # A WAL file in a directory we cannot write has no -shm to
                # share; SQLite can then only read it as immutable.
                conn.close()
                failure = exc
                continue
            if mode == "immutable=1" and not self._immutable:
                log.warning(
                    "%s: opened as immutable (its WAL files cannot be created); "
                    "changes made while it is open are not seen",
                    self.path,
                )
                self._immutable = True
            return conn
        raise sqlite3.OperationalError(
            f"cannot open {self.path!r} read-only: {failure}"
        ) from failure

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError(f"SQLiteSaver({self.path!r}) is closed")
        if self._memory:
            if self._shared is None:
                self._shared = self._open()
                self._conns.append((os.getpid(), self._shared))
            return self._shared
        local = self._local
        conn = getattr(local, "conn", None)
        # A connection must never cross a fork into another process.
        if conn is None or local.pid != os.getpid():
            conn = self._open()
            local.conn = conn
            local.pid = os.getpid()
            with self._lock:
                self._conns.append((os.getpid(), conn))
        return conn

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        if self._memory:
            with self._lock:
                yield self._connection()
        else:
            yield self._connection()

    def close(self) -> None:
        """Close every connection this saver opened in this process."""
        with self._lock:
            self._closed = True
            conns, self._conns = self._conns, []
        for pid, conn in conns:
            if pid == os.getpid():
                with contextlib.suppress(sqlite3.Error):
                    conn.close()

    def __enter__(self) -> SQLiteSaver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions with retries -----------------------------------------------------

    def _retry(self, attempt: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.002
        while True:
            try:
                return attempt()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() > deadline:
                    raise
                log.debug("%s is locked; retrying: %s", self.path, exc)
            time.sleep(delay * (0.5 + random.random()))  # noqa: S311
            delay = min(delay * 2, 0.25)

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in one ``BEGIN IMMEDIATE`` transaction, retrying on locks."""
        if self.readonly:
            raise ReadOnlyThread(
                f"{self.path!r} is opened read-only; checkpoints cannot be written"
            )
        return self._retry(lambda: self._transaction(fn, "BEGIN IMMEDIATE"))

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in one read transaction, so its queries see one snapshot."""
        return self._retry(lambda: self._transaction(fn, "BEGIN"))

    def _transaction(self, fn: Callable[[sqlite3.Connection], T], begin: str) -> T:
        with self._conn() as conn:
            conn.execute(begin)
            try:
                result = fn(conn)
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

    def _index_write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Write our own tables; in read-only mode they live in the side file."""
        if not self.readonly:
            return self._write(fn)
        return self._retry(lambda: self._transaction(fn, "BEGIN IMMEDIATE"))

    # -- schema ------------------------------------------------------------------------

    def _setup(self) -> None:
        if self.readonly:
            self._check_langgraph_tables()
        self._retry(self._enable_wal)
        self._index_write(self._migrate)
        self._catch_up()

    def _enable_wal(self) -> None:
        with self._conn() as conn:
            if self.index_path is not None:
                conn.execute("PRAGMA aidx.journal_mode = WAL")
            elif not self._memory:
                conn.execute("PRAGMA journal_mode = WAL")

    def _check_langgraph_tables(self) -> None:
        with self._conn() as conn:
            names = {
                row[0]
                for row in conn.execute(
                    "SELECT name FROM main.sqlite_master WHERE type = 'table'"
                )
            }
            if not {"checkpoints", "writes"} <= names:
                raise SerializationError(
                    f"{self.path!r} has no LangGraph checkpoint tables "
                    "(checkpoints, writes)"
                )
            columns = {row[1] for row in conn.execute("PRAGMA main.table_info(writes)")}
        self._task_path = "task_path" if "task_path" in columns else "''"

    def _migrate(self, conn: sqlite3.Connection) -> None:
        s = self._s
        if not self.readonly:
            for statement in _statements(_LANGGRAPH_TABLES):
                conn.execute(statement)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(writes)")}
            if "task_path" not in columns:
                # Files written before LangGraph added the column.
                conn.execute(
                    "ALTER TABLE writes ADD COLUMN task_path TEXT NOT NULL DEFAULT ''"
                )
            self._task_path = "task_path"
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {s}.agentmatic_migrations ("
            "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT)"
        )
        done = conn.execute(
            f"SELECT coalesce(max(version), 0) FROM {s}.agentmatic_migrations"
        ).fetchone()[0]
        for version, (name, script) in enumerate(_MIGRATIONS, start=1):
            if version <= done:
                continue
            for statement in _statements(script.format(s=s)):
                conn.execute(statement)
            conn.execute(
                f"INSERT INTO {s}.agentmatic_migrations VALUES (?, ?, ?)",
                (version, name, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
            )
            log.info("%s: applied schema migration %s (%s)", self.path, version, name)

    # -- decoding ----------------------------------------------------------------------

    def _loads(
        self,
        thread_id: str,
        checkpoint_id: str,
        type_: Any,
        blob: Any,
        serde: Serializer | None = None,
    ) -> Any:
        try:
            return (serde or self.serde).loads_typed((type_, blob), thread_id=thread_id)
        except DisallowedType:
            raise
        except SerializationError as exc:
            raise CorruptCheckpoint(thread_id, checkpoint_id, str(exc)) from exc

    def _metadata(self, thread_id: str, checkpoint_id: str, raw: Any) -> dict[str, Any]:
        if raw is None:
            return {}
        try:
            value = json.loads(raw)
        except (ValueError, TypeError) as exc:
            raise CorruptCheckpoint(
                thread_id, checkpoint_id, f"its metadata is not JSON ({exc})"
            ) from exc
        if not isinstance(value, dict):
            raise CorruptCheckpoint(
                thread_id, checkpoint_id, "its metadata is not a JSON object"
            )
        return value

    def _tuples(
        self,
        conn: sqlite3.Connection,
        rows: Sequence[tuple[Any, ...]],
        serde: Serializer | None = None,
    ) -> builtins.list[CheckpointTuple]:
        """Turn checkpoint rows into tuples, loading their writes in one query.

        A row is ``(thread_id, ns, checkpoint_id, parent_id, type, blob,
        metadata)``.
        """
        writes = self._writes_for(conn, rows, serde)
        out = []
        for tid, ns, cid, parent, type_, blob, meta in rows:
            out.append(
                CheckpointTuple(
                    config=thread_config(tid, cid, ns),
                    checkpoint=self._loads(tid, cid, type_, blob, serde),
                    metadata=self._metadata(tid, cid, meta),
                    parent_config=thread_config(tid, parent, ns) if parent else None,
                    pending_writes=writes.get((tid, ns, cid), []),
                )
            )
        return out

    def _writes_for(
        self,
        conn: sqlite3.Connection,
        rows: Sequence[tuple[Any, ...]],
        serde: Serializer | None = None,
    ) -> dict[tuple[str, str, str], builtins.list[PendingWrite]]:
        by_thread: dict[tuple[str, str], builtins.list[str]] = {}
        for row in rows:
            by_thread.setdefault((row[0], row[1]), []).append(row[2])
        raw: dict[tuple[str, str, str], builtins.list[tuple[Any, ...]]] = {}
        for (tid, ns), ids in by_thread.items():
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                query = (
                    f"SELECT checkpoint_id, task_id, channel, type, value, "
                    f"{self._task_path}, idx FROM writes WHERE thread_id = ? AND "
                    f"checkpoint_ns = ? AND checkpoint_id IN ({marks})"
                )
                for cid, *rest in conn.execute(query, (tid, ns, *chunk)):
                    raw.setdefault((tid, ns, cid), []).append(tuple(rest))
        out: dict[tuple[str, str, str], builtins.list[PendingWrite]] = {}
        for (tid, ns, cid), items in raw.items():
            items.sort(key=lambda r: (r[4], r[0], r[5]))
            out[(tid, ns, cid)] = [
                (task_id, channel, self._loads(tid, cid, type_, value, serde))
                for task_id, channel, type_, value, _path, _idx in items
            ]
        return out

    # -- reads -------------------------------------------------------------------------

    def get_tuple(self, config: Config) -> CheckpointTuple | None:
        thread_id, ns, checkpoint_id = config_parts(config)

        def read(conn: sqlite3.Connection) -> builtins.list[CheckpointTuple]:
            if checkpoint_id:
                rows = conn.execute(
                    "SELECT thread_id, checkpoint_ns, checkpoint_id, "
                    "parent_checkpoint_id, type, checkpoint, metadata FROM checkpoints "
                    "WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ?",
                    (thread_id, ns, checkpoint_id),
                ).fetchall()
            else:
                rows = conn.execute(
                    "SELECT thread_id, checkpoint_ns, checkpoint_id, "
                    "parent_checkpoint_id, type, checkpoint, metadata FROM checkpoints "
                    "WHERE thread_id = ? AND checkpoint_ns = ? "
                    "ORDER BY checkpoint_id DESC LIMIT 1",
                    (thread_id, ns),
                ).fetchall()
            return self._tuples(conn, rows)

        found = self._read(read)
        return found[0] if found else None

    def list(
        self,
        config: Config | None,
        *,
        filter: dict[str, Any] | None = None,
        before: Config | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """Yield checkpoints newest first; `filter` matches metadata values."""
        filter = check_filter_keys(filter)
        where: builtins.list[str] = []
        params: builtins.list[Any] = []
        if config is not None:
            conf = config.get("configurable") or {}
            if conf.get("thread_id") is not None:
                where.append("c.thread_id = ?")
                params.append(str(conf["thread_id"]))
            if conf.get("checkpoint_ns") is not None:
                where.append("c.checkpoint_ns = ?")
                params.append(str(conf["checkpoint_ns"]))
            if check_checkpoint_id(conf.get("checkpoint_id")):
                where.append("c.checkpoint_id = ?")
                params.append(str(conf["checkpoint_id"]))
        check_limit(limit)
        before_id = checked_before(before)
        if before_id:
            where.append("c.checkpoint_id < ?")
            params.append(str(before_id))
        join = ""
        if filter:
            self._catch_up()
            join = (
                f"JOIN {self._s}.agentmatic_index i ON i.thread_id = c.thread_id "
                "AND i.checkpoint_ns = c.checkpoint_ns "
                "AND i.checkpoint_id = c.checkpoint_id"
            )
            for key, value in filter.items():
                operator, bound = _json_comparison(value)
                # The path is a bound parameter too: no input becomes SQL text.
                where.append(f"json_extract(i.metadata, ?) {operator}")
                params.extend(["$." + key, bound])
        columns = (
            "SELECT c.thread_id, c.checkpoint_ns, c.checkpoint_id, "
            "c.parent_checkpoint_id, c.type, c.checkpoint, c.metadata "
            f"FROM checkpoints c {join}"
        )
        order = (
            "ORDER BY c.checkpoint_id DESC, c.thread_id DESC, c.checkpoint_ns DESC "
            "LIMIT ?"
        )
        remaining = limit
        last: tuple[str, str, str] | None = None
        batch = 100
        while remaining is None or remaining > 0:
            size = batch if remaining is None else min(batch, remaining)
            conds = list(where)
            args = list(params)
            if last is not None:
                # Keyset paging: the next batch starts after the last row seen.
                conds.append(
                    "(c.checkpoint_id, c.thread_id, c.checkpoint_ns) < (?, ?, ?)"
                )
                args.extend(last)
            clause = ("WHERE " + " AND ".join(conds)) if conds else ""
            query = f"{columns} {clause} {order}"
            args.append(size)
            tuples = self._read(self._fetch_tuples(query, args))
            yield from tuples
            if len(tuples) < size:
                return
            conf = tuples[-1].config["configurable"]
            last = (conf["checkpoint_id"], conf["thread_id"], conf["checkpoint_ns"])
            if remaining is not None:
                remaining -= size
            batch = min(batch * 2, 1000)

    def _fetch_tuples(
        self, query: str, args: Sequence[Any]
    ) -> Callable[[sqlite3.Connection], builtins.list[CheckpointTuple]]:
        def fetch(conn: sqlite3.Connection) -> builtins.list[CheckpointTuple]:
            return self._tuples(conn, conn.execute(query, args).fetchall())

        return fetch

    # -- writes ------------------------------------------------------------------------

    def put(
        self,
        config: Config,
        checkpoint: dict[str, Any],
        metadata: dict[str, Any],
        new_versions: dict[str, Any],
        *,
        expected_head: Any = NO_CHECK,
    ) -> Config:
        """Store a checkpoint; see `BaseSaver.put` for `expected_head`."""
        thread_id, ns, parent_id = config_parts(config)
        checkpoint_id = str(checkpoint["id"])
        merged = self.sealed_metadata(
            thread_id, ns, parent_id, checkpoint, checkpoint_metadata(config, metadata)
        )
        meta_json = _dump_metadata(merged, thread_id)
        type_, blob = self.serde.dumps_typed(checkpoint)
        calls = self._pending_calls(thread_id, ns, parent_id, checkpoint, merged)
        index_row = self._index_row(
            thread_id, ns, checkpoint_id, parent_id, checkpoint, merged, calls
        )

        def write(conn: sqlite3.Connection) -> None:
            if expected_head is not NO_CHECK:
                row = conn.execute(
                    "SELECT max(checkpoint_id) FROM checkpoints "
                    "WHERE thread_id = ? AND checkpoint_ns = ?",
                    (thread_id, ns),
                ).fetchone()
                head = row[0] if row else None
                if head != expected_head:
                    raise ThreadConflict(
                        thread_id,
                        f"expected newest checkpoint {expected_head!r} but it is "
                        f"{head!r}; another writer advanced the thread",
                    )
            self._catch_up_in(conn)
            existed = conn.execute(
                "SELECT 1 FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = ? "
                "AND checkpoint_id = ?",
                (thread_id, ns, checkpoint_id),
            ).fetchone()
            if existed is not None:
                # Stored checkpoints never change: the first write stays.
                if expected_head is not NO_CHECK:
                    raise ThreadConflict(
                        thread_id, f"checkpoint {checkpoint_id!r} is already stored"
                    )
                return
            conn.execute(
                "INSERT INTO checkpoints (thread_id, checkpoint_ns, "
                "checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (thread_id, ns, checkpoint_id, parent_id, type_, blob, meta_json),
            )
            self._set_watermark(conn, conn.execute("SELECT last_insert_rowid()"))
            self._put_index_rows(conn, [index_row])
            if ns == "":
                self._bump_thread(conn, index_row, new=True)

        self._write(write)
        return thread_config(thread_id, checkpoint_id, ns)

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
        replace: builtins.list[tuple[Any, ...]] = []
        keep: builtins.list[tuple[Any, ...]] = []
        for idx, (channel, value) in enumerate(writes):
            type_, blob = self.serde.dumps_typed(value)
            slot = WRITES_IDX_MAP.get(channel, idx)
            row = (thread_id, ns, checkpoint_id, task_id, task_path, slot, channel)
            (replace if slot < 0 else keep).append((*row, type_, blob))
        columns = (
            "(thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, "
            "channel, type, value) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )

        def write(conn: sqlite3.Connection) -> None:
            if replace:
                conn.executemany(f"INSERT OR REPLACE INTO writes {columns}", replace)
            if keep:
                conn.executemany(f"INSERT OR IGNORE INTO writes {columns}", keep)

        self._write(write)

    # -- deletes and copies ------------------------------------------------------------

    def delete_thread(self, thread_id: str) -> None:
        s = self._s
        tid = str(thread_id)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM checkpoints WHERE thread_id = ?", (tid,))
            conn.execute("DELETE FROM writes WHERE thread_id = ?", (tid,))
            conn.execute(
                f"DELETE FROM {s}.agentmatic_index WHERE thread_id = ?", (tid,)
            )
            conn.execute(
                f"DELETE FROM {s}.agentmatic_threads WHERE thread_id = ?", (tid,)
            )
            conn.execute(
                f"DELETE FROM {s}.agentmatic_leases WHERE thread_id = ?", (tid,)
            )
            self._lower_watermark(conn)

        self._write(write)

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints (and their writes) whose metadata run_id is listed."""
        wanted = [str(r) for r in run_ids]
        if not wanted:
            return
        self._catch_up()

        def find(conn: sqlite3.Connection) -> builtins.list[tuple[str, str, str]]:
            doomed: builtins.list[tuple[str, str, str]] = []
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                doomed.extend(
                    conn.execute(
                        "SELECT thread_id, checkpoint_ns, checkpoint_id FROM "
                        f"{self._s}.agentmatic_index WHERE run_id IN ({marks})",
                        chunk,
                    ).fetchall()
                )
            return doomed

        doomed = self._read(find)
        self._anchor(doomed)
        self._write(lambda conn: self._delete_rows(conn, doomed))

    def _anchor(self, keys: Sequence[tuple[str, str, str]]) -> None:
        """Keep whole and anchor the checkpoints that survive these deletions."""
        groups: dict[tuple[str, str], builtins.list[str]] = {}
        for thread_id, ns, cid in keys:
            groups.setdefault((thread_id, ns), []).append(cid)
        for (thread_id, ns), ids in groups.items():
            self.keep_children_whole(thread_id, ns, ids)
            self.anchor_deletions(thread_id, ns, ids)

    def delete_checkpoints(
        self, thread_id: str, checkpoint_ns: str, checkpoint_ids: Sequence[str]
    ) -> int:
        """Delete these checkpoints and their writes; return how many went."""
        keys = [(str(thread_id), checkpoint_ns, str(c)) for c in checkpoint_ids]
        if not keys:
            return 0
        self._anchor(keys)
        count = self._write(lambda conn: self._delete_rows(conn, keys))
        self.anchor_orphans(str(thread_id), checkpoint_ns, [k[2] for k in keys])
        return count

    def _delete_rows(
        self, conn: sqlite3.Connection, keys: Sequence[tuple[str, str, str]]
    ) -> int:
        s = self._s
        deleted = 0
        for key in keys:
            cur = conn.execute(
                "DELETE FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = ? "
                "AND checkpoint_id = ?",
                key,
            )
            deleted += cur.rowcount
            conn.execute(
                "DELETE FROM writes WHERE thread_id = ? AND checkpoint_ns = ? "
                "AND checkpoint_id = ?",
                key,
            )
            conn.execute(
                f"DELETE FROM {s}.agentmatic_index WHERE thread_id = ? "
                "AND checkpoint_ns = ? AND checkpoint_id = ?",
                key,
            )
        for thread_id in {k[0] for k in keys}:
            self._refresh_thread(conn, thread_id)
        self._lower_watermark(conn)
        return deleted

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint and write of one thread into another."""
        s = self._s
        src, dst = str(source_thread_id), str(target_thread_id)
        self._catch_up()

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO checkpoints (thread_id, checkpoint_ns, "
                "checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata) "
                "SELECT ?, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, "
                "checkpoint, metadata FROM checkpoints WHERE thread_id = ? "
                "ORDER BY checkpoint_id",
                (dst, src),
            )
            conn.execute(
                "INSERT OR REPLACE INTO writes (thread_id, checkpoint_ns, "
                "checkpoint_id, task_id, task_path, idx, channel, type, value) "
                "SELECT ?, checkpoint_ns, checkpoint_id, task_id, task_path, idx, "
                "channel, type, value FROM writes WHERE thread_id = ?",
                (dst, src),
            )
            conn.execute(
                f"INSERT OR REPLACE INTO {s}.agentmatic_index ({_INDEX_COLUMNS}) "
                f"SELECT ?, {_INDEX_COLUMNS.split(', ', 1)[1]} "
                f"FROM {s}.agentmatic_index WHERE thread_id = ?",
                (dst, src),
            )
            self._set_watermark(
                conn, conn.execute("SELECT max(rowid) FROM checkpoints")
            )
            self._refresh_thread(conn, dst)

        self._write(write)

    def prune(
        self,
        thread_ids: Sequence[str],
        *,
        strategy: Literal["keep_latest", "delete"] = "keep_latest",
    ) -> None:
        """Keep only each namespace's newest checkpoint, or delete the threads.

        A kept checkpoint whose delta channels (such as the message log) are
        stored as writes on its ancestors first gets their values written
        into it as snapshots, so it stays readable and resumable alone.
        """
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"unknown prune strategy {strategy!r}")
        for thread_id in thread_ids:
            if strategy == "delete":
                self.delete_thread(thread_id)
                continue
            self._prune_keep_latest(str(thread_id))

    def _prune_keep_latest(self, thread_id: str) -> None:
        heads = self._read(
            lambda conn: conn.execute(
                "SELECT checkpoint_ns, max(checkpoint_id) FROM checkpoints "
                "WHERE thread_id = ? GROUP BY checkpoint_ns",
                (thread_id,),
            ).fetchall()
        )
        for ns, head_id in heads:
            tup = self.get_tuple(thread_config(thread_id, head_id, ns))
            if tup is None:
                continue
            inlined = self.with_values_inlined(tup)

            def find_older(
                conn: sqlite3.Connection, ns: str = ns, head_id: str = head_id
            ) -> builtins.list[tuple[str, str, str]]:
                return conn.execute(
                    "SELECT thread_id, checkpoint_ns, checkpoint_id FROM checkpoints "
                    "WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id < ?",
                    (thread_id, ns, head_id),
                ).fetchall()

            older = self._read(find_older)
            self._anchor(older)

            def write(
                conn: sqlite3.Connection,
                ns: str = ns,
                head_id: str = head_id,
                inlined: tuple[dict[str, Any], dict[str, Any]] | None = inlined,
            ) -> None:
                if inlined is not None:
                    self._store_inlined(conn, thread_id, ns, head_id, *inlined)
                doomed = conn.execute(
                    "SELECT thread_id, checkpoint_ns, checkpoint_id FROM checkpoints "
                    "WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id < ?",
                    (thread_id, ns, head_id),
                ).fetchall()
                self._delete_rows(conn, doomed)

            self._write(write)

    def _children_of(
        self, thread_id: str, checkpoint_ns: str, parents: set[str]
    ) -> builtins.list[CheckpointTuple]:
        """Return the checkpoints, not among `parents`, whose parent is."""
        wanted = sorted(parents)

        def find(conn: sqlite3.Connection) -> builtins.list[str]:
            found: builtins.list[str] = []
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                found.extend(
                    row[0]
                    for row in conn.execute(
                        "SELECT checkpoint_id FROM checkpoints WHERE thread_id = ? "
                        "AND checkpoint_ns = ? "
                        f"AND parent_checkpoint_id IN ({marks})",
                        (thread_id, checkpoint_ns, *chunk),
                    )
                )
            return found

        children = []
        for cid in sorted(set(self._read(find)) - parents):
            tup = self.get_tuple(thread_config(thread_id, cid, checkpoint_ns))
            if tup is not None:
                children.append(tup)
        return children

    def _rewrite(
        self,
        tup: CheckpointTuple,
        checkpoint: dict[str, Any],
        metadata: dict[str, Any],
    ) -> None:
        thread_id, ns, checkpoint_id = config_parts(tup.config)
        cid = str(checkpoint_id)
        self._write(
            lambda conn: self._store_inlined(
                conn, thread_id, ns, cid, checkpoint, metadata
            )
        )

    def _store_inlined(
        self,
        conn: sqlite3.Connection,
        thread_id: str,
        ns: str,
        checkpoint_id: str,
        checkpoint: dict[str, Any],
        metadata: dict[str, Any],
    ) -> None:
        """Store a checkpoint again with its delta values inlined (see `_rewrite`)."""
        type_, blob = self.serde.dumps_typed(checkpoint)
        conn.execute(
            "UPDATE checkpoints SET type = ?, checkpoint = ?, metadata = ? "
            "WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ?",
            (
                type_,
                blob,
                _dump_metadata(metadata, thread_id),
                thread_id,
                ns,
                checkpoint_id,
            ),
        )
        conn.execute(
            f"UPDATE {self._s}.agentmatic_index SET needs_parent = 0 "
            "WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ?",
            (thread_id, ns, checkpoint_id),
        )

    # -- leases ------------------------------------------------------------------------

    def acquire_lease(self, thread_id: str, owner: str, ttl_seconds: float) -> bool:
        """Take or renew the thread's run lease; False while another owner holds it."""
        s = self._s

        def write(conn: sqlite3.Connection) -> bool:
            now = time.time()
            row = conn.execute(
                f"SELECT owner, expires_at FROM {s}.agentmatic_leases "
                "WHERE thread_id = ?",
                (str(thread_id),),
            ).fetchone()
            if row is not None and row[0] != owner and row[1] > now:
                return False
            conn.execute(
                f"INSERT OR REPLACE INTO {s}.agentmatic_leases VALUES (?, ?, ?)",
                (str(thread_id), owner, now + ttl_seconds),
            )
            return True

        return self._write(write)

    def release_lease(self, thread_id: str, owner: str) -> None:
        self._write(
            lambda conn: conn.execute(
                f"DELETE FROM {self._s}.agentmatic_leases "
                "WHERE thread_id = ? AND owner = ?",
                (str(thread_id), owner),
            )
        )

    # -- lookups -----------------------------------------------------------------------

    def find_checkpoint(self, checkpoint_id: str) -> CheckpointTuple | None:
        """Return the checkpoint with this id in any thread, or None."""
        check_checkpoint_id(checkpoint_id)
        self._catch_up()
        row = self._read(
            lambda conn: conn.execute(
                f"SELECT thread_id, checkpoint_ns FROM {self._s}.agentmatic_index "
                "WHERE checkpoint_id = ? ORDER BY checkpoint_ns LIMIT 1",
                (str(checkpoint_id),),
            ).fetchone()
        )
        if row is None:
            return None
        return self.get_tuple(thread_config(row[0], str(checkpoint_id), row[1]))

    def history_links(
        self, thread_id: str, checkpoint_ns: str = ""
    ) -> builtins.list[tuple[str, str | None]]:
        """Return `(checkpoint id, parent id)` of every checkpoint, newest first."""
        rows = self._read(
            lambda conn: conn.execute(
                "SELECT checkpoint_id, parent_checkpoint_id FROM checkpoints "
                "WHERE thread_id = ? AND checkpoint_ns = ? "
                "ORDER BY checkpoint_id DESC",
                (str(thread_id), checkpoint_ns),
            ).fetchall()
        )
        return [(str(cid), parent) for cid, parent in rows]

    def head_id(self, thread_id: str, checkpoint_ns: str = "") -> str | None:
        thread_id = check_thread_id(thread_id)
        checkpoint_ns = check_namespace(checkpoint_ns)
        row = self._read(
            lambda conn: conn.execute(
                "SELECT max(checkpoint_id) FROM checkpoints "
                "WHERE thread_id = ? AND checkpoint_ns = ?",
                (str(thread_id), checkpoint_ns),
            ).fetchone()
        )
        return row[0] if row else None

    def thread_ids(self) -> Iterator[str]:
        """Yield every thread id once."""
        rows = self._read(
            lambda conn: conn.execute(
                "SELECT DISTINCT thread_id FROM checkpoints"
            ).fetchall()
        )
        for (thread_id,) in rows:
            yield thread_id

    # -- readers that need no agent ----------------------------------------------------

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

        With ``values=False`` only the index and the interrupt, decision and
        error writes are read; no checkpoint or message is decoded.
        """
        thread_id, before, checkpoint_ns = check_history_args(
            thread_id, limit, before, checkpoint_ns
        )
        if not values:
            return self._light_history(thread_id, checkpoint_ns, limit, before)
        self._catch_up_thread(thread_id, checkpoint_ns)
        where = "thread_id = ? AND checkpoint_ns = ?"
        params: builtins.list[Any] = [thread_id, checkpoint_ns]
        if before:
            where += " AND checkpoint_id < ?"
            params.append(before)
        query = (
            "SELECT thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, "
            f"type, checkpoint, metadata FROM checkpoints WHERE {where} "
            "ORDER BY checkpoint_id DESC"
        )
        if limit is not None:
            query += " LIMIT ?"
            params.append(int(limit))
        tuples = self._read(
            lambda conn: self._tuples(conn, conn.execute(query, params).fetchall())
        )
        resolver = self._resolver(thread_id, checkpoint_ns, tuples)
        return states_with_values(resolver, tuples)

    def get_state(
        self, thread_id: str, checkpoint_id: str | None = None, *, values: bool = True
    ) -> State | None:
        """Return the newest (or the named) state of a thread, or None."""
        thread_id, checkpoint_id = check_state_args(thread_id, checkpoint_id)
        if not values:
            self._catch_up_thread(thread_id, "")
            cid = checkpoint_id or self.head_id(thread_id)
            if cid is None:
                return None
            states = self._light_states(thread_id, "", [cid])
            return states[0] if states else None
        tup = self.get_tuple(thread_config(thread_id, checkpoint_id))
        if tup is None:
            return None
        self._catch_up_thread(thread_id, "")
        resolver = self._resolver(thread_id, "", [tup])
        return build_state(tup, values=resolver.values(tup), resolver=resolver)

    def list_threads(
        self, *, agent: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> ThreadPage:
        """Return threads by newest activity, `limit` at a time."""
        check_thread_page(agent, limit, cursor)
        self._catch_up()
        s = self._s
        where = [
            "EXISTS (SELECT 1 FROM checkpoints c WHERE c.thread_id = t.thread_id "
            "AND c.checkpoint_ns = '')"
        ]
        params: builtins.list[Any] = []
        if agent is not None:
            where.append("t.agent = ?")
            params.append(agent)
        if cursor:
            updated_at, after_id = decode_cursor(cursor)
            where.append("(t.updated_at, t.thread_id) < (?, ?)")
            params.extend([updated_at, after_id])
        query = (
            "SELECT t.thread_id, t.head_checkpoint_id, t.created_at, t.updated_at, "
            "t.step, t.source, t.agent, t.started_by, t.checkpoints, t.forked_from "
            f"FROM {s}.agentmatic_threads t WHERE {' AND '.join(where)} "
            "ORDER BY t.updated_at DESC, t.thread_id DESC LIMIT ?"
        )
        params.append(int(limit) + 1)
        rows = self._read(lambda conn: conn.execute(query, params).fetchall())
        page = rows[:limit]
        infos = []
        for tid, head, created, updated, step, source, agt, by, count, fork in page:
            states = self._light_states(tid, "", [head])
            infos.append(
                ThreadInfo(
                    thread_id=tid,
                    checkpoint_id=head,
                    created_at=created,
                    updated_at=updated,
                    step=int(step if step is not None else -1),
                    source=source or "",
                    next=states[0].next if states else (),
                    agent=agt,
                    started_by=by,
                    checkpoints=count,
                    forked_from=json.loads(fork) if fork else None,
                )
            )
        next_cursor = None
        if len(rows) > limit and infos:
            last = infos[-1]
            next_cursor = encode_cursor(last.updated_at or "", last.thread_id)
        return ThreadPage(threads=infos, next_cursor=next_cursor)

    def retention_rows(self, thread_id: str | None = None) -> Iterator[tuple[Any, ...]]:
        """Yield ``(thread_id, ns, checkpoint_id, parent_id, ts, needs_parent,
        metadata)`` per checkpoint (of one thread, if given), from the index."""
        self._catch_up()
        rows = self._read(
            lambda conn: conn.execute(
                "SELECT i.thread_id, i.checkpoint_ns, i.checkpoint_id, "
                "i.parent_checkpoint_id, i.ts, i.needs_parent, i.metadata "
                f"FROM {self._s}.agentmatic_index i JOIN checkpoints c "
                "ON c.thread_id = i.thread_id AND c.checkpoint_ns = i.checkpoint_ns "
                "AND c.checkpoint_id = i.checkpoint_id "
                "WHERE ? IS NULL OR i.thread_id = ?",
                (thread_id, thread_id),
            ).fetchall()
        )
        for row in rows:
            yield (*row[:5], bool(row[5]), json.loads(row[6]))

    # -- the timeline without values ---------------------------------------------------

    def _light_history(
        self, thread_id: str, ns: str, limit: int | None, before: str | None
    ) -> builtins.list[State]:
        where = "c.thread_id = ? AND c.checkpoint_ns = ?"
        params: builtins.list[Any] = [thread_id, ns]
        if before:
            where += " AND c.checkpoint_id < ?"
            params.append(before)
        # Driven by `checkpoints`, so a checkpoint without an index row (one
        # another writer added) shows up with NULLs and is indexed first.
        query = (
            "SELECT c.checkpoint_id, i.parent_checkpoint_id, i.ts, i.metadata, "
            f"i.light FROM checkpoints c LEFT JOIN {self._s}.agentmatic_index i "
            "ON i.thread_id = c.thread_id AND i.checkpoint_ns = c.checkpoint_ns "
            f"AND i.checkpoint_id = c.checkpoint_id WHERE {where} "
            "ORDER BY c.checkpoint_id DESC"
        )
        if limit is not None:
            query += " LIMIT ?"
            params.append(int(limit))

        def read(
            conn: sqlite3.Connection,
        ) -> tuple[builtins.list[Any], builtins.list[Any]]:
            rows = conn.execute(query, params).fetchall()
            if not rows or any(row[4] is None for row in rows):
                return rows, []
            writes = conn.execute(
                "SELECT checkpoint_id, task_id, channel, "
                "CASE WHEN channel IN (?, ?, ?) THEN type END, "
                "CASE WHEN channel IN (?, ?, ?) THEN value END "
                "FROM writes WHERE thread_id = ? "
                "AND checkpoint_ns = ? AND checkpoint_id BETWEEN ? AND ? "
                f"ORDER BY checkpoint_id, {self._task_path}, task_id, idx",
                (
                    *_TIMELINE_CHANNELS,
                    *_TIMELINE_CHANNELS,
                    thread_id,
                    ns,
                    rows[-1][0],
                    rows[0][0],
                ),
            ).fetchall()
            return rows, writes

        rows, writes = self._read(read)
        if any(row[4] is None for row in rows):
            self._catch_up_thread(thread_id, ns)
            rows, writes = self._read(read)
        return self._assemble_light(thread_id, ns, rows, writes)

    def _light_states(
        self, thread_id: str, ns: str, checkpoint_ids: Sequence[str]
    ) -> builtins.list[State]:
        s = self._s

        def read(
            conn: sqlite3.Connection,
        ) -> tuple[builtins.list[Any], builtins.list[Any]]:
            rows: builtins.list[Any] = []
            writes: builtins.list[Any] = []
            for cid in checkpoint_ids:
                rows.extend(
                    conn.execute(
                        "SELECT checkpoint_id, parent_checkpoint_id, ts, metadata, "
                        f"light FROM {s}.agentmatic_index WHERE thread_id = ? "
                        "AND checkpoint_ns = ? AND checkpoint_id = ?",
                        (thread_id, ns, cid),
                    )
                )
                writes.extend(
                    conn.execute(
                        "SELECT checkpoint_id, task_id, channel, "
                        "CASE WHEN channel IN (?, ?, ?) THEN type END, "
                        "CASE WHEN channel IN (?, ?, ?) THEN value END "
                        "FROM writes WHERE thread_id = ? "
                        "AND checkpoint_ns = ? AND checkpoint_id = ? "
                        f"ORDER BY {self._task_path}, task_id, idx",
                        (*_TIMELINE_CHANNELS, *_TIMELINE_CHANNELS, thread_id, ns, cid),
                    )
                )
            return rows, writes

        rows, writes = self._read(read)
        return self._assemble_light(thread_id, ns, rows, writes)

    def _assemble_light(
        self,
        thread_id: str,
        ns: str,
        rows: Sequence[tuple[Any, ...]],
        writes: Sequence[tuple[Any, ...]],
    ) -> builtins.list[State]:
        """Build value-less states; `writes` arrive in `writes_sort_key` order."""
        by_checkpoint: dict[str, builtins.list[PendingWrite]] = {}
        for cid, task_id, channel, type_, value in writes:
            decoded = (
                self._loads(thread_id, cid, type_, value, self.display_serde)
                if channel in _TIMELINE_CHANNELS
                else None
            )
            by_checkpoint.setdefault(cid, []).append((task_id, channel, decoded))
        states = []
        for cid, parent, ts, meta, light in rows:
            tup = CheckpointTuple(
                config=thread_config(thread_id, cid, ns),
                checkpoint=_light_checkpoint(cid, ts, json.loads(light)),
                metadata=json.loads(meta),
                parent_config=thread_config(thread_id, parent, ns) if parent else None,
                pending_writes=by_checkpoint.get(cid, []),
            )
            states.append(build_state(tup, values=None))
        return states

    # -- values: one query for the chain -----------------------------------------------

    def _resolver(
        self, thread_id: str, ns: str, tuples: Sequence[CheckpointTuple]
    ) -> ValueResolver:
        """Return a resolver holding `tuples` and every ancestor their values need."""
        resolver = ValueResolver(self, thread_id, ns)
        resolver.add(tuples)
        have = set(resolver.tuples)
        wanted: set[str] = set()
        for tup in tuples:
            parent = tup.parent_config
            if parent is None or not needs_ancestors(tup.checkpoint):
                continue
            pid = parent["configurable"].get("checkpoint_id")
            if pid and pid not in have:
                wanted.add(pid)
        if not wanted:
            return resolver
        s = self._s

        def read(conn: sqlite3.Connection) -> builtins.list[CheckpointTuple]:
            ids: set[str] = set()
            for pid in wanted:
                ids.update(
                    row[0]
                    for row in conn.execute(
                        "WITH RECURSIVE chain(id, parent, needs) AS ("
                        "SELECT checkpoint_id, parent_checkpoint_id, needs_parent "
                        f"FROM {s}.agentmatic_index WHERE thread_id = ? "
                        "AND checkpoint_ns = ? AND checkpoint_id = ? UNION "
                        "SELECT i.checkpoint_id, i.parent_checkpoint_id, "
                        f"i.needs_parent FROM chain CROSS JOIN {s}.agentmatic_index i "
                        "ON i.thread_id = ? AND i.checkpoint_ns = ? "
                        "AND i.checkpoint_id = chain.parent WHERE chain.needs = 1) "
                        "SELECT id FROM chain",
                        (thread_id, ns, pid, thread_id, ns),
                    )
                )
            ids -= have
            rows: builtins.list[Any] = []
            ordered = sorted(ids)
            for start in range(0, len(ordered), _CHUNK):
                chunk = ordered[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                rows.extend(
                    conn.execute(
                        "SELECT thread_id, checkpoint_ns, checkpoint_id, "
                        "parent_checkpoint_id, type, checkpoint, metadata "
                        "FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = ? "
                        f"AND checkpoint_id IN ({marks})",
                        (thread_id, ns, *chunk),
                    )
                )
            return self._tuples(conn, rows)

        resolver.add(self._read(read))
        return resolver

    # -- the index ---------------------------------------------------------------------

    def _pending_calls(
        self,
        thread_id: str,
        ns: str,
        parent_id: str | None,
        checkpoint: dict[str, Any],
        metadata: dict[str, Any],
    ) -> builtins.list[ToolCall]:
        """Return the tool calls waiting at a checkpoint about to be stored."""
        scheduled = next_nodes(checkpoint)
        if not any(n not in LLM_NODES and n != START for n, _ in scheduled):
            return []
        stored = checkpoint.get("channel_values") or {}
        if MESSAGES not in stored and parent_id:
            # The calls sit in the model's writes on the parent (delta log).
            stored = {
                **stored,
                MESSAGES: self._message_writes(thread_id, ns, parent_id),
            }
        tup = CheckpointTuple(
            config=thread_config(thread_id, checkpoint["id"], ns),
            checkpoint={**checkpoint, "channel_values": stored},
            metadata=metadata,
            parent_config=None,
            pending_writes=[],
        )
        return list(build_state(tup, values=None).pending_tool_calls)

    def _message_writes(
        self, thread_id: str, ns: str, checkpoint_id: str
    ) -> builtins.list[Any]:
        rows = self._read(
            lambda conn: conn.execute(
                f"SELECT type, value, {self._task_path}, task_id, idx FROM writes "
                "WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ? "
                "AND channel = ?",
                (thread_id, ns, checkpoint_id, MESSAGES),
            ).fetchall()
        )
        out: builtins.list[Any] = []
        for type_, value, *_ in sorted(rows, key=lambda r: (r[2], r[3], r[4])):
            decoded = self._loads(thread_id, checkpoint_id, type_, value)
            out.extend(decoded if isinstance(decoded, list) else [decoded])
        return [m for m in out if isinstance(m, BaseMessage)]

    def _index_row(
        self,
        thread_id: str,
        ns: str,
        checkpoint_id: str,
        parent_id: str | None,
        checkpoint: dict[str, Any],
        metadata: dict[str, Any],
        calls: Sequence[ToolCall],
    ) -> tuple[Any, ...]:
        scheduled = next_nodes(checkpoint)
        light = {
            "v": checkpoint.get("v"),
            "fire": _firing_triggers(checkpoint),
            "sends": [
                [node, _call_dict(_tool_call_from_send(arg))]
                for node, arg in scheduled
                if arg is not None
            ],
            "calls": [c.to_dict() for c in calls],
        }
        step = metadata.get("step")
        return (
            thread_id,
            ns,
            checkpoint_id,
            parent_id,
            checkpoint.get("ts"),
            step if isinstance(step, int) else None,
            _text(metadata.get("source")),
            _text(metadata.get("actor")),
            _text(metadata.get("agent")),
            _text(metadata.get("run_id")),
            _json(list(dict.fromkeys(n for n, _ in scheduled))),
            _json(light["calls"]),
            int(parent_id is not None and needs_ancestors(checkpoint)),
            _json(metadata),
            _json(light),
        )

    def _put_index_rows(
        self, conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]
    ) -> None:
        marks = ", ".join("?" * 15)
        conn.executemany(
            f"INSERT OR REPLACE INTO {self._s}.agentmatic_index ({_INDEX_COLUMNS}) "
            f"VALUES ({marks})",
            rows,
        )

    def _bump_thread(
        self, conn: sqlite3.Connection, row: tuple[Any, ...], *, new: bool
    ) -> None:
        """Fold one new root checkpoint into its thread's row."""
        (tid, _ns, cid, _parent, ts, step, source, _actor, agent, _run, nxt) = row[:11]
        meta = json.loads(row[13])
        forked = meta.get("forked_from")
        conn.execute(
            f"INSERT INTO {self._s}.agentmatic_threads (thread_id, agent, "
            "started_by, created_at, updated_at, head_checkpoint_id, step, source, "
            "next, checkpoints, forked_from) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?) "
            "ON CONFLICT (thread_id) DO UPDATE SET "
            "agent = coalesce(agent, excluded.agent), "
            "started_by = coalesce(started_by, excluded.started_by), "
            "forked_from = coalesce(forked_from, excluded.forked_from), "
            "checkpoints = checkpoints + ?, "
            "created_at = min(coalesce(created_at, excluded.created_at), "
            "excluded.created_at), "
            "updated_at = CASE WHEN excluded.head_checkpoint_id >= "
            "head_checkpoint_id THEN excluded.updated_at ELSE updated_at END, "
            "step = CASE WHEN excluded.head_checkpoint_id >= head_checkpoint_id "
            "THEN excluded.step ELSE step END, "
            "source = CASE WHEN excluded.head_checkpoint_id >= head_checkpoint_id "
            "THEN excluded.source ELSE source END, "
            "next = CASE WHEN excluded.head_checkpoint_id >= head_checkpoint_id "
            "THEN excluded.next ELSE next END, "
            "head_checkpoint_id = max(head_checkpoint_id, "
            "excluded.head_checkpoint_id)",
            (
                tid,
                agent,
                _text(meta.get("started_by")),
                ts,
                ts,
                cid,
                step,
                source,
                nxt,
                _json(forked) if isinstance(forked, dict) else None,
                1 if new else 0,
            ),
        )

    def _refresh_thread(self, conn: sqlite3.Connection, thread_id: str) -> None:
        """Recompute a thread's row from the index (after deletes and copies)."""
        s = self._s
        conn.execute(
            f"DELETE FROM {s}.agentmatic_threads WHERE thread_id = ?", (thread_id,)
        )
        rows = conn.execute(
            "SELECT checkpoint_id, ts, step, source, next, metadata "
            f"FROM {s}.agentmatic_index WHERE thread_id = ? AND checkpoint_ns = '' "
            "ORDER BY checkpoint_id",
            (thread_id,),
        ).fetchall()
        if not rows:
            return
        metas = [json.loads(r[5]) for r in rows]
        head = rows[-1]
        forked = metas[0].get("forked_from")
        conn.execute(
            f"INSERT INTO {s}.agentmatic_threads (thread_id, agent, started_by, "
            "created_at, updated_at, head_checkpoint_id, step, source, next, "
            "checkpoints, forked_from) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                thread_id,
                next((_text(m.get("agent")) for m in metas if m.get("agent")), None),
                next(
                    (_text(m.get("started_by")) for m in metas if m.get("started_by")),
                    None,
                ),
                rows[0][1],
                head[1],
                head[0],
                head[2],
                head[3],
                head[4],
                len(rows),
                _json(forked) if isinstance(forked, dict) else None,
            ),
        )

    # Checkpoints written by LangGraph (or any other writer of the file) have no
    # index rows; they are found by rowid above a watermark our writes advance.

    def _watermark(self, conn: sqlite3.Connection) -> int:
        row = conn.execute(
            f"SELECT value FROM {self._s}.agentmatic_meta WHERE key = 'indexed_rowid'"
        ).fetchone()
        return int(row[0]) if row else 0

    def _set_watermark(self, conn: sqlite3.Connection, cursor: sqlite3.Cursor) -> None:
        rowid = cursor.fetchone()[0] or 0
        conn.execute(
            f"INSERT OR REPLACE INTO {self._s}.agentmatic_meta VALUES "
            "('indexed_rowid', ?)",
            (str(rowid),),
        )

    def _lower_watermark(self, conn: sqlite3.Connection) -> None:
        # After deletes SQLite may hand out a deleted rowid again; lowering
        # the mark keeps such a row visible as new.
        self._set_watermark(conn, conn.execute("SELECT max(rowid) FROM checkpoints"))

    def _catch_up(self) -> None:
        """Index every checkpoint above the watermark (cheap when there is none)."""

        def behind(conn: sqlite3.Connection) -> bool:
            top = conn.execute("SELECT max(rowid) FROM checkpoints").fetchone()[0] or 0
            return top != self._watermark(conn)

        if self._read(behind):
            self._index_write(self._catch_up_in)

    def _catch_up_in(self, conn: sqlite3.Connection) -> None:
        mark = self._watermark(conn)
        top = conn.execute("SELECT max(rowid) FROM checkpoints").fetchone()[0] or 0
        if top == mark:
            return
        # A top below the mark means rows went away or the file was replaced:
        # start over from the lowest rowid rather than trust the old mark.
        since = mark if top > mark else 0
        keys = conn.execute(
            "SELECT thread_id, checkpoint_ns, checkpoint_id FROM checkpoints c "
            "WHERE rowid > ? AND NOT EXISTS (SELECT 1 FROM "
            f"{self._s}.agentmatic_index i WHERE i.thread_id = c.thread_id "
            "AND i.checkpoint_ns = c.checkpoint_ns "
            "AND i.checkpoint_id = c.checkpoint_id)",
            (since,),
        ).fetchall()
        if keys:
            log.info("%s: indexing %s checkpoints", self.path, len(keys))
            self._index_keys(conn, keys)
        self._set_watermark(conn, conn.execute("SELECT max(rowid) FROM checkpoints"))

    def _catch_up_thread(self, thread_id: str, ns: str) -> None:
        """Index the thread's checkpoints that have no index row yet."""

        def missing(conn: sqlite3.Connection) -> builtins.list[Any]:
            return conn.execute(
                "SELECT c.thread_id, c.checkpoint_ns, c.checkpoint_id "
                "FROM checkpoints c WHERE c.thread_id = ? AND c.checkpoint_ns = ? "
                "AND NOT EXISTS (SELECT 1 FROM "
                f"{self._s}.agentmatic_index i WHERE i.thread_id = c.thread_id "
                "AND i.checkpoint_ns = c.checkpoint_ns "
                "AND i.checkpoint_id = c.checkpoint_id)",
                (thread_id, ns),
            ).fetchall()

        if self._read(missing):
            self._index_write(lambda conn: self._index_keys(conn, missing(conn)))

    def _index_keys(
        self, conn: sqlite3.Connection, keys: Sequence[tuple[str, str, str]]
    ) -> None:
        """Build index rows for these checkpoints, a thread at a time."""
        by_thread: dict[tuple[str, str], set[str]] = {}
        for tid, ns, cid in keys:
            by_thread.setdefault((tid, ns), set()).add(cid)
        for (tid, ns), ids in by_thread.items():
            rows = conn.execute(
                "SELECT thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, "
                "type, checkpoint, metadata FROM checkpoints WHERE thread_id = ? "
                "AND checkpoint_ns = ? ORDER BY checkpoint_id",
                (tid, ns),
            ).fetchall()
            tuples = []
            for row in rows:
                try:
                    # Display mode: a type we may not revive must not stop this.
                    tuples.extend(self._tuples(conn, [row], self.display_serde))
                except SerializationError as exc:
                    log.warning("%s: indexing without its values: %s", self.path, exc)
                    tuples.append(_unreadable_tuple(row))
            by_id = {t.checkpoint["id"]: t for t in tuples}
            index_rows = []
            for tup in tuples:
                cid = tup.checkpoint["id"]
                if cid not in ids:
                    continue
                parent = parent_id_of(tup)
                calls = self._calls_from_tuples(tup, by_id.get(parent or ""))
                index_rows.append(
                    self._index_row(
                        tid, ns, cid, parent, tup.checkpoint, tup.metadata, calls
                    )
                )
            self._put_index_rows(conn, index_rows)
            if ns == "":
                self._refresh_thread(conn, tid)

    def _calls_from_tuples(
        self, tup: CheckpointTuple, parent: CheckpointTuple | None
    ) -> builtins.list[ToolCall]:
        stored = tup.checkpoint.get("channel_values") or {}
        if MESSAGES not in stored and parent is not None:
            messages: builtins.list[Any] = []
            for _task, channel, value in parent.pending_writes or []:
                if channel == MESSAGES:
                    messages.extend(value if isinstance(value, list) else [value])
            stored = {
                **stored,
                MESSAGES: [m for m in messages if isinstance(m, BaseMessage)],
            }
        light = tup._replace(
            checkpoint={**tup.checkpoint, "channel_values": stored}, pending_writes=[]
        )
        return list(build_state(light, values=None).pending_tool_calls)


# -- helpers ---------------------------------------------------------------------------


def checkpoint_metadata(config: Config, metadata: dict[str, Any]) -> dict[str, Any]:
    """Return the metadata LangGraph stores: the given keys plus scalar config keys.

    Keys of the config's ``metadata`` and ``configurable`` that the metadata
    lacks are added when they are plain scalars (LangGraph's own rule), except
    bookkeeping keys and keys starting with ``__``; NUL characters are
    dropped from strings, as LangGraph drops them.
    """
    merged = {
        k: v.replace("\x00", "") if isinstance(v, str) else v
        for k, v in metadata.items()
    }
    for source in (config.get("metadata"), config.get("configurable")):
        for key, value in (source or {}).items():
            if key in merged or key in _NOT_METADATA or key.startswith("__"):
                continue
            if isinstance(value, str):
                merged[key] = value.replace("\x00", "")
            elif isinstance(value, (bool, int, float)):
                merged[key] = value
    return merged


def _dump_metadata(metadata: dict[str, Any], thread_id: str) -> bytes:
    try:
        text = json.dumps(metadata, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise SerializationError(
            f"metadata of a checkpoint in thread {thread_id!r} is not JSON: {exc}"
        ) from exc
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate cannot be stored as UTF-8; keep the rest readable.
        return _LONE_SURROGATE.sub("\ufffd", text).encode("utf-8")


def _json(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return _LONE_SURROGATE.sub("\ufffd", text)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _call_dict(call: ToolCall | None) -> dict[str, Any] | None:
    return call.to_dict() if call is not None else None


def _json_comparison(value: Any) -> tuple[str, Any]:
    """Return the operator and bound value comparing a json_extract result."""
    if value is None:
        return "IS ?", None
    if isinstance(value, bool):
        return "= ?", int(value)
    if isinstance(value, (str, int, float)):
        return "= ?", value
    if isinstance(value, (dict, list)):
        return "= ?", json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return "= ?", str(value)


def _firing_triggers(checkpoint: dict[str, Any]) -> list[str]:
    """Return the trigger channels that schedule a node, in the checkpoint's order.

    Each channel is put to `next_nodes` alone, so the rule of what fires
    stays in one place.
    """
    values = checkpoint.get("channel_values") or {}
    seen = checkpoint.get("versions_seen") or {}
    return [
        channel
        for channel, version in (checkpoint.get("channel_versions") or {}).items()
        if trigger_target(channel) is not None
        and channel in values
        and next_nodes(
            {
                "channel_values": {channel: values[channel]},
                "channel_versions": {channel: version},
                "versions_seen": seen,
            }
        )
    ]


def _barrier_names(channel: str) -> list[str] | None:
    """Return a fired `join:` barrier's complete set of sources (else None)."""
    if not channel.startswith("join:"):
        return None
    return channel.split(":")[1].split("+")


def _light_checkpoint(
    checkpoint_id: str, ts: str | None, light: dict[str, Any]
) -> dict[str, Any]:
    """Rebuild the parts of a checkpoint `build_state` reads without values.

    Those are the trigger channels that fire (each with a version its node
    has not seen), the queued packets (only whether each carries a tool call
    matters), and, for pending calls, an AI message holding the calls still
    waiting.
    """
    fire = light.get("fire") or []
    values: dict[str, Any] = {ch: _barrier_names(ch) for ch in fire}
    sends = light.get("sends") or []
    if sends:
        values[TASKS] = [
            Send(node, {"tool_call": call} if call else {}) for node, call in sends
        ]
    calls = light.get("calls") or []
    if calls:
        values[MESSAGES] = [
            AIMessage(content="", tool_calls=[ToolCall.from_any(c) for c in calls])
        ]
    return {
        "v": light.get("v"),
        "id": checkpoint_id,
        "ts": ts,
        "channel_values": values,
        "channel_versions": dict.fromkeys(fire, 1),
        "versions_seen": {},
    }


def _unreadable_tuple(row: tuple[Any, ...]) -> CheckpointTuple:
    """Return a stand-in for a checkpoint whose blob cannot be decoded."""
    tid, ns, cid, parent, _type, _blob, raw_meta = row
    try:
        meta = json.loads(raw_meta) if raw_meta is not None else {}
    except (TypeError, ValueError):
        meta = {}
    return CheckpointTuple(
        config=thread_config(tid, cid, ns),
        checkpoint={"id": cid, "channel_values": {}, "channel_versions": {}},
        metadata=meta if isinstance(meta, dict) else {},
        parent_config=thread_config(tid, parent, ns) if parent else None,
        pending_writes=[],
    )


def _statements(script: str) -> list[str]:
    return [part.strip() for part in script.split(";") if part.strip()]


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _default_index_path(path: str) -> str:
    """Return where a read-only file's index goes: beside it, or in a temp dir."""
    beside = Path(path + ".agentmatic-index.sqlite")
    if os.access(beside.parent, os.W_OK) and (
        not beside.exists() or os.access(beside, os.W_OK)
    ):
        return str(beside)
    digest = hashlib.sha256(os.path.realpath(path).encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"agentmatic-index-{digest}.sqlite")


__all__ = ["SQLiteSaver", "checkpoint_metadata"]
