"""MemorySaver: checkpoints in this process, for tests and notebooks.

Values are kept serialized, so a stored checkpoint can never change when the
caller mutates what it passed in or got back, and every read returns fresh
objects, as LangGraph's in-memory saver does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Literal

from agentmatic.checkpoint.base import (
    NO_CHECK,
    WRITES_IDX_MAP,
    BaseSaver,
    CheckpointTuple,
    check_checkpoint_id,
    check_filter_keys,
    check_limit,
    checked_before,
    config_parts,
    metadata_matches,
    thread_config,
)
from agentmatic.errors import (
    CorruptCheckpoint,
    DisallowedType,
    SerializationError,
    ThreadConflict,
)

Blob = tuple[str, bytes]


class _Stored:
    __slots__ = ("checkpoint", "metadata", "parent_id")

    def __init__(self, checkpoint: Blob, metadata: Blob, parent_id: str | None):
        self.checkpoint = checkpoint
        self.metadata = metadata
        self.parent_id = parent_id


class MemorySaver(BaseSaver):
    """An in-process saver; everything is lost when the process ends."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._lock = threading.RLock()
        # thread_id -> checkpoint_ns -> checkpoint_id -> stored checkpoint
        self._threads: dict[str, dict[str, dict[str, _Stored]]] = {}
        # (thread_id, ns, checkpoint_id) -> (task_id, idx) -> (channel, blob, path)
        self._writes: dict[tuple[str, str, str], dict[tuple[str, int], tuple]] = {}
        self._leases: dict[str, tuple[str, float]] = {}
        # (thread_id, ns) -> newest checkpoint id, so finding the head is O(1)
        self._heads: dict[tuple[str, str], str] = {}

    # -- reads ---------------------------------------------------------------

    def get_tuple(self, config: dict[str, Any]) -> CheckpointTuple | None:
        thread_id, ns, checkpoint_id = config_parts(config)
        with self._lock:
            stored = self._threads.get(thread_id, {}).get(ns, {})
            if not stored:
                return None
            if checkpoint_id is None:
                checkpoint_id = self._heads.get((thread_id, ns)) or max(stored)
            item = stored.get(checkpoint_id)
            if item is None:
                return None
            return self._tuple(thread_id, ns, checkpoint_id, item)

    def _tuple(
        self, thread_id: str, ns: str, checkpoint_id: str, item: _Stored
    ) -> CheckpointTuple:
        writes = self._writes.get((thread_id, ns, checkpoint_id), {})
        try:
            pending = [
                (task_id, channel, self.serde.loads_typed(blob, thread_id=thread_id))
                for (task_id, _idx), (channel, blob, _path) in sorted(
                    writes.items(), key=lambda kv: (kv[1][2], kv[0][0], kv[0][1])
                )
            ]
            checkpoint = self.serde.loads_typed(item.checkpoint, thread_id=thread_id)
            metadata = self.serde.loads_typed(item.metadata, thread_id=thread_id)
        except DisallowedType:
            raise
        except SerializationError as exc:
            raise CorruptCheckpoint(thread_id, checkpoint_id, str(exc)) from exc
        parent = (
            thread_config(thread_id, item.parent_id, ns) if item.parent_id else None
        )
        return CheckpointTuple(
            config=thread_config(thread_id, checkpoint_id, ns),
            checkpoint=checkpoint,
            metadata=metadata,
            parent_config=parent,
            pending_writes=pending,
        )

    def find_checkpoint(self, checkpoint_id: str) -> CheckpointTuple | None:
        check_checkpoint_id(checkpoint_id)
        with self._lock:
            for tid, namespaces in self._threads.items():
                for ns, stored in namespaces.items():
                    item = stored.get(checkpoint_id)
                    if item is not None:
                        return self._tuple(tid, ns, checkpoint_id, item)
        return None

    def list(
        self,
        config: dict[str, Any] | None,
        *,
        filter: dict[str, Any] | None = None,
        before: dict[str, Any] | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        filter = check_filter_keys(filter)
        with self._lock:
            if config is not None:
                thread_id, ns, checkpoint_id = config_parts_loose(config)
            else:
                thread_id, ns, checkpoint_id = None, None, None
            check_limit(limit)
            before_id = checked_before(before)
            rows: list[tuple[str, str, str, _Stored]] = []
            for tid, namespaces in self._threads.items():
                if thread_id is not None and tid != thread_id:
                    continue
                for cns, stored in namespaces.items():
                    if ns is not None and cns != ns:
                        continue
                    for cid, item in stored.items():
                        if checkpoint_id is not None and cid != checkpoint_id:
                            continue
                        if before_id is not None and cid >= before_id:
                            continue
                        rows.append((tid, cns, cid, item))
            rows.sort(key=lambda r: r[2], reverse=True)
            count = 0
            out = []
            for tid, cns, cid, item in rows:
                if limit is not None and count >= limit:
                    break
                if filter:
                    meta = self.serde.loads_typed(item.metadata, thread_id=tid)
                    if not metadata_matches(meta, filter):
                        continue
                out.append(self._tuple(tid, cns, cid, item))
                count += 1
        yield from out

    # -- writes --------------------------------------------------------------

    def put(
        self,
        config: dict[str, Any],
        checkpoint: dict[str, Any],
        metadata: dict[str, Any],
        new_versions: dict[str, Any],
        *,
        expected_head: Any = NO_CHECK,
    ) -> dict[str, Any]:
        thread_id, ns, parent_id = config_parts(config)
        merged = self.sealed_metadata(
            thread_id, ns, parent_id, checkpoint, _merge_metadata(config, metadata)
        )
        checkpoint_blob = self.serde.dumps_typed(checkpoint)
        metadata_blob = self.serde.dumps_typed(merged)
        with self._lock:
            stored = self._threads.setdefault(thread_id, {}).setdefault(ns, {})
            head = self._heads.get((thread_id, ns))
            if expected_head is not NO_CHECK and head != expected_head:
                raise ThreadConflict(
                    thread_id,
                    f"expected newest checkpoint {expected_head!r} but it is "
                    f"{head!r}; another writer advanced the thread",
                )
            if checkpoint["id"] in stored:
                # Stored checkpoints never change: the first write stays.
                if expected_head is not NO_CHECK:
                    raise ThreadConflict(
                        thread_id, f"checkpoint {checkpoint['id']!r} is already stored"
                    )
                return thread_config(thread_id, checkpoint["id"], ns)
            stored[checkpoint["id"]] = _Stored(
                checkpoint_blob, metadata_blob, parent_id
            )
            if head is None or checkpoint["id"] > head:
                self._heads[(thread_id, ns)] = checkpoint["id"]
        return thread_config(thread_id, checkpoint["id"], ns)

    def put_writes(
        self,
        config: dict[str, Any],
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        thread_id, ns, checkpoint_id = config_parts(config)
        if checkpoint_id is None:
            raise ValueError("put_writes needs configurable.checkpoint_id")
        blobs = [(channel, self.serde.dumps_typed(value)) for channel, value in writes]
        with self._lock:
            bucket = self._writes.setdefault((thread_id, ns, checkpoint_id), {})
            for idx, (channel, blob) in enumerate(blobs):
                key = (task_id, WRITES_IDX_MAP.get(channel, idx))
                if key[1] >= 0 and key in bucket:
                    continue
                bucket[key] = (channel, blob, task_path)

    # -- deletes and copies --------------------------------------------------

    def delete_thread(self, thread_id: str) -> None:
        with self._lock:
            self._threads.pop(thread_id, None)
            for head_key in [k for k in self._heads if k[0] == thread_id]:
                del self._heads[head_key]
            for key in [k for k in self._writes if k[0] == thread_id]:
                del self._writes[key]
            self._leases.pop(thread_id, None)

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        wanted = {str(r) for r in run_ids}
        if not wanted:
            return
        with self._lock:
            for tid, namespaces in self._threads.items():
                for ns, stored in namespaces.items():
                    doomed = [
                        cid
                        for cid, item in stored.items()
                        if str(self.serde.loads_typed(item.metadata).get("run_id"))
                        in wanted
                    ]
                    self.keep_children_whole(tid, ns, doomed)
                    self.anchor_deletions(tid, ns, doomed)
                    self._delete(tid, ns, doomed)

    def _delete(self, thread_id: str, ns: str, checkpoint_ids: Sequence[str]) -> int:
        stored = self._threads.get(thread_id, {}).get(ns, {})
        count = 0
        for cid in checkpoint_ids:
            if stored.pop(cid, None) is not None:
                count += 1
            self._writes.pop((thread_id, ns, cid), None)
        self._reset_head(thread_id, ns)
        return count

    def _reset_head(self, thread_id: str, ns: str) -> None:
        stored = self._threads.get(thread_id, {}).get(ns, {})
        if stored:
            self._heads[(thread_id, ns)] = max(stored)
        else:
            self._heads.pop((thread_id, ns), None)

    def delete_checkpoints(
        self, thread_id: str, checkpoint_ns: str, checkpoint_ids: Sequence[str]
    ) -> int:
        with self._lock:
            self.keep_children_whole(thread_id, checkpoint_ns, checkpoint_ids)
            self.anchor_deletions(thread_id, checkpoint_ns, checkpoint_ids)
            return self._delete(thread_id, checkpoint_ns, checkpoint_ids)

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        with self._lock:
            source = self._threads.get(source_thread_id, {})
            target = self._threads.setdefault(target_thread_id, {})
            for ns, stored in source.items():
                dest = target.setdefault(ns, {})
                for cid, item in stored.items():
                    dest[cid] = _Stored(item.checkpoint, item.metadata, item.parent_id)
                    writes = self._writes.get((source_thread_id, ns, cid))
                    if writes:
                        self._writes[(target_thread_id, ns, cid)] = dict(writes)
                self._reset_head(target_thread_id, ns)

    def prune(
        self,
        thread_ids: Sequence[str],
        *,
        strategy: Literal["keep_latest", "delete"] = "keep_latest",
    ) -> None:
        with self._lock:
            for tid in thread_ids:
                if strategy == "delete":
                    self.delete_thread(tid)
                    continue
                for ns, stored in self._threads.get(tid, {}).items():
                    if stored:
                        newest = max(stored)
                        self._store_whole(self._tuple(tid, ns, newest, stored[newest]))
                        doomed = [c for c in stored if c != newest]
                        self.anchor_deletions(tid, ns, doomed)
                        self._delete(tid, ns, doomed)

    def _rewrite(
        self,
        tup: CheckpointTuple,
        checkpoint: dict[str, Any],
        metadata: dict[str, Any],
    ) -> None:
        thread_id, ns, checkpoint_id = config_parts(tup.config)
        cid = str(checkpoint_id)
        with self._lock:
            item = self._threads[thread_id][ns][cid]
            self._threads[thread_id][ns][cid] = _Stored(
                self.serde.dumps_typed(checkpoint),
                self.serde.dumps_typed(metadata),
                item.parent_id,
            )

    # -- leases --------------------------------------------------------------

    def acquire_lease(self, thread_id: str, owner: str, ttl_seconds: float) -> bool:
        now = time.monotonic()
        with self._lock:
            holder = self._leases.get(thread_id)
            if holder is not None and holder[0] != owner and holder[1] > now:
                return False
            self._leases[thread_id] = (owner, now + ttl_seconds)
            return True

    def release_lease(self, thread_id: str, owner: str) -> None:
        with self._lock:
            holder = self._leases.get(thread_id)
            if holder is not None and holder[0] == owner:
                del self._leases[thread_id]

    def thread_ids(self) -> Iterator[str]:
        with self._lock:
            ids = [tid for tid, nss in self._threads.items() if any(nss.values())]
        yield from ids


def config_parts_loose(config: dict[str, Any]) -> tuple[str | None, str | None, Any]:
    """Like `config_parts`, but a missing thread id or namespace means 'any'."""
    conf = config.get("configurable") or {}
    tid = conf.get("thread_id")
    ns = conf.get("checkpoint_ns")
    return (
        str(tid) if tid is not None else None,
        str(ns) if ns is not None else None,
        check_checkpoint_id(conf.get("checkpoint_id")),
    )


def _merge_metadata(config: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
    """Return metadata plus LangGraph's run-scoped keys taken from the config."""
    merged = dict(metadata)
    conf = config.get("configurable") or {}
    for key in ("run_id",):
        if key in conf and key not in merged:
            merged[key] = conf[key]
    meta = config.get("metadata") or {}
    for key, value in meta.items():
        if key not in merged and not key.startswith("__"):
            merged[key] = value
    return merged
