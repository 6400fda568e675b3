"""S3Saver: checkpoints as objects in an S3 bucket, through boto3.

Layout under `prefix` (``T``, ``N``, ``C``, ``R`` and ``A`` are the
percent-encoded thread id, namespace, checkpoint id, run id and agent)::

    threads/T/N/manifest         the namespace's index (see below)
    threads/T/N/pages/<uuid>     a sealed page of older index entries
    threads/T/N/cp/C             one checkpoint with its metadata
    threads/T/N/w/C/<task>/<idx> one write of one task
    threads/T/lease              the thread's run lease
    updated/<inverted ts>/T      threads by newest activity (root namespace)
    agents/A/<inverted ts>/T     the same, per agent
    ids/C/T/N                    which thread holds a checkpoint
    runs/R/T/N/C                 which checkpoints a run wrote

The manifest names the namespace's newest checkpoint and holds one entry
per checkpoint with everything a timeline needs (metadata, versions, the
trigger channels, the tool calls waiting, a summary of each write), the
newest entries inline and older ones in immutable pages of `page_size`. So
a whole history without values costs one request per page plus one, and
never reads a checkpoint object.

Objects are never overwritten silently: a checkpoint or write object is
created with ``If-None-Match: *``, and the manifest only ever changes by a
``PUT`` with ``If-Match`` on the ETag it was read with. A write that names
the head it expects checks it against the manifest it then replaces
conditionally, so of two processes continuing one checkpoint exactly one
succeeds and the other gets `ThreadConflict`. Leases are objects replaced
the same way.
"""

from __future__ import annotations

import bisect
import builtins
import contextlib
import datetime as dt
import logging
import random
import threading
import time
import urllib.parse
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import ormsgpack

from agentmatic.checkpoint.base import (
    NO_CHECK,
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
    metadata_matches,
    parent_id_of,
    thread_config,
    thread_info_from_tuple,
)
from agentmatic.checkpoint.chain import ChainKey
from agentmatic.checkpoint.light import (
    light_state,
    pending_calls,
    summarize_checkpoint,
    summarize_write,
)
from agentmatic.checkpoint.memory import _merge_metadata, config_parts_loose
from agentmatic.checkpoint.reading import (
    ValueResolver,
    decode_cursor,
    encode_cursor,
    is_state_channel,
)
from agentmatic.checkpoint.serde import DeltaSnapshot
from agentmatic.errors import (
    CorruptCheckpoint,
    DisallowedType,
    SerializationError,
    ThreadConflict,
)
from agentmatic.state import State, ThreadInfo, ThreadPage

log = logging.getLogger(__name__)

MESSAGES = "messages"
_CAS_ATTEMPTS = 60
_INVERT = 10**17 - 1
_Entry = dict[str, Any]
_Manifest = dict[str, Any]


_worker = threading.local()
# The most checkpoints `channel_value_at` fetches at once; a longer stretch
# is walked one parent at a time (snapshots come every 100 updates).
MAX_STRETCH = 1000


def _mark_worker() -> None:
    _worker.busy = True


class _Precondition(Exception):
    """A conditional request lost: the object changed (or appeared) meanwhile."""


class _NotModified(Exception):
    pass


class _HeadMoved(Exception):
    def __init__(self, head: str | None) -> None:
        self.head = head


class S3Saver(BaseSaver):
    """A saver on S3 (or any S3-compatible store): cheap, durable, slower.

    `bucket` must exist. `prefix` starts every key (a trailing ``/`` is
    added). `client` is a boto3 S3 client; by default one is made with
    boto3's default credential chain, which honours ``AWS_ENDPOINT_URL``.
    `page_size` is how many index entries one sealed page holds.
    """

    def __init__(
        self,
        bucket: str = "agents",
        prefix: str = "",
        *,
        client: Any = None,
        allow: Iterable[Any] = (),
        chain_key: ChainKey | bool = None,
        page_size: int = 50,
        max_workers: int = 16,
    ) -> None:
        super().__init__(allow=allow, chain_key=chain_key)
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self.bucket = bucket
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        if client is None:
            import boto3
            from botocore.config import Config

            client = boto3.client(
                "s3", config=Config(max_pool_connections=max_workers * 2)
            )
        self.client = client
        self.page_size = page_size
        self._pool = ThreadPoolExecutor(
            max_workers=max_workers,
            thread_name_prefix="s3saver",
            initializer=_mark_worker,
        )
        self._lock = threading.Lock()
        # manifest key -> (etag, raw bytes), to skip a read before a write
        self._manifests: dict[str, tuple[str, bytes]] = {}
        # sealed pages never change, so their entries can be kept
        self._pages: OrderedDict[str, builtins.list[_Entry]] = OrderedDict()
        # lease key -> (owner, until, etag) of the leases this saver holds
        self._leases: dict[str, tuple[str, float, str]] = {}

    def close(self) -> None:
        """Stop the saver's worker threads."""
        self._pool.shutdown(wait=True)

    # -- keys ------------------------------------------------------------------

    def _thread_prefix(self, thread_id: str) -> str:
        return f"{self.prefix}threads/t={_seg(thread_id)}/"

    def _ns_prefix(self, thread_id: str, ns: str) -> str:
        return f"{self._thread_prefix(thread_id)}n={_seg(ns)}/"

    def _manifest_key(self, thread_id: str, ns: str) -> str:
        return self._ns_prefix(thread_id, ns) + "manifest"

    def _cp_key(self, thread_id: str, ns: str, cid: str) -> str:
        return f"{self._ns_prefix(thread_id, ns)}cp/{_seg(cid)}"

    def _writes_prefix(self, thread_id: str, ns: str, cid: str) -> str:
        return f"{self._ns_prefix(thread_id, ns)}w/{_seg(cid)}/"

    def _write_key(
        self, thread_id: str, ns: str, cid: str, task_id: str, idx: int
    ) -> str:
        return f"{self._writes_prefix(thread_id, ns, cid)}{_seg(task_id)}/{idx}"

    def _id_key(self, thread_id: str, ns: str, cid: str) -> str:
        return f"{self.prefix}ids/{_seg(cid)}/{_seg(thread_id)}/{_seg(ns)}"

    def _run_key(self, run: str, thread_id: str, ns: str, cid: str) -> str:
        return f"{self.prefix}runs/{_seg(run)}/{_seg(thread_id)}/{_seg(ns)}/{_seg(cid)}"

    def _pos_key(self, ts: str | None, thread_id: str, agent: str | None) -> str:
        where = "updated/" if agent is None else f"agents/{_seg(agent)}/"
        return f"{self.prefix}{where}{_inverted(ts)}/{_descending(thread_id)}"

    # -- objects ---------------------------------------------------------------

    def _get(self, key: str, *, if_none_match: str | None = None) -> Any:
        """Return ``(body, etag)``, or None when the object does not exist."""
        from botocore.exceptions import ClientError

        extra = {"IfNoneMatch": if_none_match} if if_none_match else {}
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key, **extra)
        except ClientError as exc:
            if _status(exc) == 304:
                raise _NotModified from None
            if _missing(exc):
                return None
            raise
        return response["Body"].read(), response["ETag"]

    def _put(
        self,
        key: str,
        body: bytes,
        *,
        if_match: str | None = None,
        create: bool = False,
    ) -> str:
        """Write an object; raise `_Precondition` when its condition fails."""
        from botocore.exceptions import ClientError

        extra: dict[str, str] = {}
        if create:
            extra["IfNoneMatch"] = "*"
        if if_match is not None:
            extra["IfMatch"] = if_match
        try:
            response = self.client.put_object(
                Bucket=self.bucket, Key=key, Body=body, **extra
            )
        except ClientError as exc:
            if _precondition(exc) or (if_match is not None and _missing(exc)):
                raise _Precondition(key) from None
            raise
        return str(response.get("ETag", ""))

    def _delete(self, key: str, *, if_match: str | None = None) -> None:
        from botocore.exceptions import ClientError

        extra = {"IfMatch": if_match} if if_match else {}
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key, **extra)
        except ClientError as exc:
            if _precondition(exc):
                raise _Precondition(key) from None
            if not _missing(exc):
                raise

    def _delete_many(self, keys: Iterable[str]) -> None:
        batch = sorted(set(keys))
        for start in range(0, len(batch), 1000):
            part = batch[start : start + 1000]
            self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in part], "Quiet": True},
            )

    def _list(
        self,
        prefix: str,
        *,
        start_after: str | None = None,
        max_keys: int | None = None,
    ) -> Iterator[str]:
        """Yield the keys under `prefix` in order, a page of 1,000 at a time."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if start_after:
            kwargs["StartAfter"] = start_after
        if max_keys is not None:
            kwargs["MaxKeys"] = max_keys
        while True:
            page = self.client.list_objects_v2(**kwargs)
            for item in page.get("Contents", []):
                yield item["Key"]
            if max_keys is not None or not page.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def _list_dirs(self, prefix: str) -> Iterator[str]:
        """Yield the names of the 'directories' right under `prefix`."""
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": prefix,
            "Delimiter": "/",
        }
        while True:
            page = self.client.list_objects_v2(**kwargs)
            for item in page.get("CommonPrefixes", []):
                yield item["Prefix"][len(prefix) : -1]
            if not page.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def _parallel(
        self, fn: Callable[[Any], Any], items: Sequence[Any]
    ) -> builtins.list[Any]:
        # A worker waiting on its own pool could wait forever: nest serially.
        if len(items) <= 1 or getattr(_worker, "busy", False):
            return [fn(item) for item in items]
        return list(self._pool.map(fn, items))

    # -- the manifest ----------------------------------------------------------

    def _load(
        self, thread_id: str, ns: str, *, cached: bool = False
    ) -> tuple[str | None, _Manifest | None]:
        """Return the namespace's manifest and ETag (None, None when absent)."""
        key = self._manifest_key(thread_id, ns)
        with self._lock:
            known = self._manifests.get(key)
        if cached and known is not None:
            return known[0], self._decode_manifest(thread_id, known[1])
        try:
            found = self._get(key, if_none_match=known[0] if known else None)
        except _NotModified:
            assert known is not None
            return known[0], self._decode_manifest(thread_id, known[1])
        if found is None:
            with self._lock:
                self._manifests.pop(key, None)
            return None, None
        body, etag = found
        with self._lock:
            self._manifests[key] = (etag, body)
        return etag, self._decode_manifest(thread_id, body)

    def _decode_manifest(self, thread_id: str, body: bytes) -> _Manifest:
        try:
            manifest = ormsgpack.unpackb(body)
        except ormsgpack.MsgpackDecodeError as exc:
            raise SerializationError(
                f"the index of thread {thread_id!r} is unreadable: {exc}"
            ) from None
        if not isinstance(manifest, dict) or manifest.get("v") != 1:
            raise SerializationError(
                f"the index of thread {thread_id!r} is not an Agentmatic manifest"
            )
        return manifest

    def _update(
        self,
        thread_id: str,
        ns: str,
        mutate: Callable[
            [_Manifest | None, builtins.list[str]], _Manifest | bool | None
        ],
    ) -> tuple[_Manifest | None, _Manifest | None]:
        """Apply `mutate` to the manifest with a conditional write, retrying.

        `mutate` gets the current manifest (or None) and a list to which it
        adds the keys of objects it created for this attempt (deleted when
        the attempt loses). It returns the new manifest, None for no change,
        or False to delete the manifest. Return ``(old, new)``.
        """
        key = self._manifest_key(thread_id, ns)
        for attempt in range(_CAS_ATTEMPTS):
            etag, manifest = self._load(thread_id, ns, cached=attempt == 0)
            created: builtins.list[str] = []
            try:
                new = mutate(_copy(manifest), created)
            except _HeadMoved:
                self._drop_quietly(created)
                if attempt == 0:
                    continue  # the cached manifest may be stale: read it again
                raise
            if new is None:
                return manifest, manifest
            try:
                if new is False:
                    if etag is not None:
                        self._delete(key, if_match=etag)
                    with self._lock:
                        self._manifests.pop(key, None)
                    return manifest, None
                assert isinstance(new, dict)
                body = ormsgpack.packb({k: v for k, v in new.items() if k != "retired"})
                if etag is None:
                    new_etag = self._put(key, body, create=True)
                else:
                    new_etag = self._put(key, body, if_match=etag)
            except _Precondition:
                self._drop_quietly(created)
                with self._lock:
                    self._manifests.pop(key, None)
                # Back off a random while so racing writers spread out.
                pause = 0.005 * min(attempt + 1, 20)
                time.sleep(random.uniform(0, pause))  # noqa: S311
                continue
            with self._lock:
                self._manifests[key] = (new_etag, body)
            return manifest, new
        raise ThreadConflict(
            thread_id, f"the index of namespace {ns!r} kept changing; gave up"
        )

    def _drop_quietly(self, keys: Sequence[str]) -> None:
        for key in keys:
            with contextlib.suppress(Exception):
                self._delete(key)

    def _page(self, key: str) -> builtins.list[_Entry]:
        with self._lock:
            found = self._pages.get(key)
            if found is not None:
                self._pages.move_to_end(key)
                return found
        got = self._get(key)
        if got is None:
            raise SerializationError(f"index page {key!r} is missing")
        try:
            entries = ormsgpack.unpackb(got[0])
        except ormsgpack.MsgpackDecodeError as exc:
            raise SerializationError(
                f"index page {key!r} is unreadable: {exc}"
            ) from None
        with self._lock:
            self._pages[key] = entries
            while len(self._pages) > 512:
                self._pages.popitem(last=False)
        return list(entries)

    def _new_page(
        self, thread_id: str, ns: str, entries: builtins.list[_Entry]
    ) -> builtins.list[Any]:
        key = f"{self._ns_prefix(thread_id, ns)}pages/{uuid.uuid4().hex}"
        self._put(key, ormsgpack.packb(entries), create=True)
        return [key, entries[0]["id"], entries[-1]["id"], len(entries)]

    def _all_entries(self, manifest: _Manifest) -> builtins.list[_Entry]:
        """Return every entry of a manifest, oldest first (reads every page)."""
        pages = self._parallel(self._page, [p[0] for p in manifest["pages"]])
        out = [e for page in pages for e in page] + list(manifest["entries"])
        out.sort(key=lambda e: e["id"])
        return out

    def _entries_desc(
        self, manifest: _Manifest, before: str | None, *, eager: bool
    ) -> Iterator[_Entry]:
        """Yield entries newest first, reading pages only when they are reached.

        With `eager` every page that can hold a wanted entry is fetched at
        once, in parallel (for reading a whole history).
        """
        pages = sorted(
            (p for p in manifest["pages"] if before is None or p[1] < before),
            key=lambda p: p[2],
            reverse=True,
        )
        if eager:
            self._parallel(self._page, [p[0] for p in pages])
        sources: builtins.list[builtins.list[_Entry]] = [
            [e for e in manifest["entries"] if before is None or e["id"] < before]
        ]
        while True:
            best = max(
                (s for s in sources if s), key=lambda s: s[-1]["id"], default=None
            )
            top = best[-1]["id"] if best else None
            if pages and (top is None or pages[0][2] >= top):
                page = pages.pop(0)
                sources.append(
                    [
                        e
                        for e in self._page(page[0])
                        if before is None or e["id"] < before
                    ]
                )
                continue
            if best is None:
                return
            yield best.pop()

    # -- index entries ---------------------------------------------------------

    def _entry(
        self,
        parent_id: str | None,
        checkpoint: dict[str, Any],
        metadata_blob: tuple[str, bytes],
        metadata: dict[str, Any],
        parent_entry: _Entry | None,
    ) -> _Entry:
        light = summarize_checkpoint(self.serde, checkpoint)
        light["calls"] = pending_calls(
            checkpoint,
            metadata,
            light,
            parent_entry["writes"] if parent_entry else None,
        )
        del light["tail"]
        run = metadata.get("run_id")
        return {
            "id": str(checkpoint["id"]),
            "parent": parent_id,
            "ts": checkpoint.get("ts"),
            "meta": list(metadata_blob),
            "light": light,
            "writes": [],
            "run": None if run is None else str(run),
            "needs": parent_id is not None and _needs_parent(checkpoint),
        }

    def _find_entry(self, manifest: _Manifest, cid: str) -> tuple[int, _Entry] | None:
        """Return ``(page index or -1, entry)`` for a checkpoint id, or None."""
        for entry in manifest["entries"]:
            if entry["id"] == cid:
                return -1, entry
        for i, page in enumerate(manifest["pages"]):
            if page[1] <= cid <= page[2]:
                for entry in self._page(page[0]):
                    if entry["id"] == cid:
                        return i, entry
        return None

    # -- reads -----------------------------------------------------------------

    def get_tuple(self, config: dict[str, Any]) -> CheckpointTuple | None:
        """Return the named checkpoint, or the thread's newest when none is named."""
        thread_id, ns, checkpoint_id = config_parts(config)
        if checkpoint_id is None:
            _etag, manifest = self._load(thread_id, ns)
            if manifest is None or manifest.get("head") is None:
                return None
            checkpoint_id = str(manifest["head"])
        return self._read_tuple(thread_id, ns, checkpoint_id)

    def _read_tuple(self, thread_id: str, ns: str, cid: str) -> CheckpointTuple | None:
        # One GET, one LIST and a GET per write. The message log of a loop
        # checkpoint is rebuilt by `channel_value_at`.
        found = self._get(self._cp_key(thread_id, ns, cid))
        if found is None:
            return None
        writes = self._read_writes(thread_id, ns, cid)
        return self._decode_tuple(thread_id, ns, cid, found[0], writes)

    def channel_value_at(self, tup: CheckpointTuple, channel: str) -> Any:
        """Return a delta channel's value at a checkpoint, or None.

        The index links every checkpoint to its parent and says which ones
        store their values, so the stretch back to the nearest of those is
        known before any checkpoint is read. It is fetched in parallel: a
        resume costs a few round trips instead of one per checkpoint since
        the last snapshot. None (the caller then walks one parent at a
        time) when the stretch is not in the index as expected.
        """
        if getattr(_worker, "rebuilding", False):
            return None
        conf = tup.config["configurable"]
        thread_id, ns = str(conf["thread_id"]), str(conf.get("checkpoint_ns") or "")
        stretch = self._stretch_to_snapshot(thread_id, ns, tup)
        if stretch is None:
            return None
        tuples = self._parallel(
            self._fetch_one, [(thread_id, ns, entry) for entry in stretch]
        )
        if any(t is None for t in tuples):
            return None
        resolver = ValueResolver(self, thread_id, ns)
        resolver.add([tup, *tuples])
        _worker.rebuilding = True
        try:
            value = resolver.channel_value(tup, channel)
        finally:
            _worker.rebuilding = False
        if isinstance(value, DeltaSnapshot):
            return value
        return DeltaSnapshot(value) if isinstance(value, list) else None

    def _stretch_to_snapshot(
        self, thread_id: str, ns: str, tup: CheckpointTuple
    ) -> builtins.list[_Entry] | None:
        """Return the entries from `tup`'s parent back to stored values, or None.

        Newest first. None when a link is missing from the index or a parent's
        id does not sort before its child's (the walk reads ids downwards).
        """
        cid = str(tup.checkpoint["id"])
        want = parent_id_of(tup)
        if want is None:
            return None
        _etag, manifest = self._load(thread_id, ns)
        if manifest is None:
            return None
        stretch: builtins.list[_Entry] = []
        newer = cid
        for entry in self._entries_desc(manifest, cid, eager=False):
            if want >= newer or len(stretch) >= MAX_STRETCH:
                return None
            if entry["id"] > want:
                continue
            if entry["id"] < want:
                return None
            stretch.append(entry)
            parent = entry.get("parent")
            if not entry.get("needs", True) or parent is None:
                return stretch
            newer, want = want, str(parent)
        return None

    def _read_writes(self, thread_id: str, ns: str, cid: str) -> builtins.list[Any]:
        keys = list(self._list(self._writes_prefix(thread_id, ns, cid)))
        bodies = self._parallel(self._get, keys)
        return [
            (key, got[0])
            for key, got in zip(keys, bodies, strict=True)
            if got is not None
        ]

    def _decode_tuple(
        self,
        thread_id: str,
        ns: str,
        cid: str,
        body: bytes,
        writes: Sequence[tuple[str, bytes]],
    ) -> CheckpointTuple:
        try:
            record = _record(body, ("id", "parent", "checkpoint", "metadata"))
            if record["id"] != cid:
                raise ValueError(f"the object holds checkpoint {record['id']!r}")
            parent = record["parent"]
            rows = []
            for key, raw in writes:
                channel, tag, blob, path = _fields(raw, 4)
                task_seg, idx = key.rsplit("/", 2)[-2:]
                rows.append(
                    (str(path), _unseg(task_seg), int(idx), str(channel), (tag, blob))
                )
            rows.sort(key=lambda r: (r[0], r[1], r[2]))
            pending: builtins.list[PendingWrite] = [
                (task, channel, self.serde.loads_typed(blob, thread_id=thread_id))
                for _path, task, _idx, channel, blob in rows
            ]
            checkpoint = self.serde.loads_typed(
                tuple(record["checkpoint"]), thread_id=thread_id
            )
            metadata = self.serde.loads_typed(
                tuple(record["metadata"]), thread_id=thread_id
            )
            _check_shape(checkpoint, metadata, cid)
        except DisallowedType:
            raise
        except (SerializationError, ValueError, TypeError, KeyError) as exc:
            raise CorruptCheckpoint(thread_id, cid, str(exc)) from exc
        return CheckpointTuple(
            config=thread_config(thread_id, cid, ns),
            checkpoint=checkpoint,
            metadata=metadata,
            parent_config=thread_config(thread_id, parent, ns) if parent else None,
            pending_writes=pending,
        )

    def _metadata(self, thread_id: str, entry: _Entry) -> dict[str, Any]:
        try:
            return dict(
                self.serde.loads_typed(tuple(entry["meta"]), thread_id=thread_id)
            )
        except DisallowedType:
            raise
        except (SerializationError, ValueError, TypeError) as exc:
            raise CorruptCheckpoint(thread_id, entry.get("id"), str(exc)) from exc

    def list(
        self,
        config: dict[str, Any] | None,
        *,
        filter: dict[str, Any] | None = None,
        before: dict[str, Any] | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """Yield checkpoints newest first."""
        filter = check_filter_keys(filter)
        thread_id, ns, checkpoint_id = (
            config_parts_loose(config) if config is not None else (None, None, None)
        )
        check_limit(limit)
        before_id = checked_before(before)
        if limit is not None and limit <= 0:
            return
        threads = [thread_id] if thread_id is not None else list(self.thread_ids())
        sources = []
        for tid in threads:
            namespaces = [ns] if ns is not None else self._namespaces(tid)
            for n in namespaces:
                sources.append(self._matching(tid, n, before_id, filter, checkpoint_id))
        merged = (
            sources[0]
            if len(sources) == 1
            else _merge_desc(sources, key=lambda item: item[2]["id"])
        )
        yield from self._fetch(merged, limit)

    def _matching(
        self,
        thread_id: str,
        ns: str,
        before_id: str | None,
        filter: dict[str, Any],
        checkpoint_id: str | None,
    ) -> Iterator[tuple[str, str, _Entry]]:
        _etag, manifest = self._load(thread_id, ns)
        if manifest is None:
            return
        for entry in self._entries_desc(manifest, before_id, eager=False):
            if checkpoint_id is not None and entry["id"] != checkpoint_id:
                continue
            if filter and not metadata_matches(
                self._metadata(thread_id, entry), filter
            ):
                continue
            yield thread_id, ns, entry

    def _fetch(
        self, items: Iterator[tuple[str, str, _Entry]], limit: int | None
    ) -> Iterator[CheckpointTuple]:
        """Read the checkpoints behind index entries, a parallel batch at a time."""
        count = 0
        batch: builtins.list[tuple[str, str, _Entry]] = []
        size = 4
        for item in items:
            batch.append(item)
            if limit is not None and count + len(batch) >= limit:
                break
            if len(batch) >= size:
                tuples = self._parallel(self._fetch_one, batch)
                yield from (t for t in tuples if t is not None)
                count += len(batch)
                batch, size = [], min(size * 2, 64)
        tuples = self._parallel(self._fetch_one, batch)
        yield from (t for t in tuples if t is not None)

    def _fetch_one(self, item: tuple[str, str, _Entry]) -> CheckpointTuple | None:
        thread_id, ns, entry = item
        return self._read_tuple(thread_id, ns, entry["id"])

    def _namespaces(self, thread_id: str) -> builtins.list[str]:
        return [
            _unseg(name[2:])
            for name in self._list_dirs(self._thread_prefix(thread_id))
            if name.startswith("n=")
        ]

    def head_id(self, thread_id: str, checkpoint_ns: str = "") -> str | None:
        """Return the id of the namespace's newest checkpoint, or None."""
        thread_id = check_thread_id(thread_id)
        checkpoint_ns = check_namespace(checkpoint_ns)
        _etag, manifest = self._load(thread_id, checkpoint_ns)
        return None if manifest is None else manifest.get("head")

    def find_checkpoint(self, checkpoint_id: str) -> CheckpointTuple | None:
        """Return the checkpoint with this id in any thread, or None."""
        check_checkpoint_id(checkpoint_id)
        prefix = f"{self.prefix}ids/{_seg(checkpoint_id)}/"
        for key in self._list(prefix, max_keys=16):
            thread_seg, ns_seg = key[len(prefix) :].split("/")
            tup = self._read_tuple(_unseg(thread_seg), _unseg(ns_seg), checkpoint_id)
            if tup is not None:
                return tup
        return None

    def thread_ids(self) -> Iterator[str]:
        """Yield every thread with a checkpoint once."""
        for name in self._list_dirs(f"{self.prefix}threads/"):
            if name.startswith("t="):
                thread_id = _unseg(name[2:])
                if self._namespaces(thread_id):
                    yield thread_id

    # -- writes ----------------------------------------------------------------

    def put(
        self,
        config: dict[str, Any],
        checkpoint: dict[str, Any],
        metadata: dict[str, Any],
        new_versions: dict[str, Any],
        *,
        expected_head: Any = NO_CHECK,
    ) -> dict[str, Any]:
        """Store a checkpoint object, then index it with a conditional write."""
        thread_id, ns, parent_id = config_parts(config)
        cid = str(checkpoint["id"])
        merged = self.sealed_metadata(
            thread_id, ns, parent_id, checkpoint, _merge_metadata(config, metadata)
        )
        meta_blob = self.serde.dumps_typed(merged)
        body = ormsgpack.packb(
            {
                "id": cid,
                "parent": parent_id,
                "checkpoint": list(self.serde.dumps_typed(checkpoint)),
                "metadata": list(meta_blob),
            }
        )
        cp_key = self._cp_key(thread_id, ns, cid)
        side = [self._id_key(thread_id, ns, cid)]
        run = merged.get("run_id")
        if run is not None:
            side.append(self._run_key(str(run), thread_id, ns, cid))
        ready: set[str] = set()
        if ns == "":
            # The thread's places in the lists if this becomes its head, written
            # now, beside the checkpoint, rather than one by one after it.
            known = self._cached_agent(thread_id) or merged.get("agent")
            ready.add(self._pos_key(checkpoint.get("ts"), thread_id, None))
            if known:
                ready.add(self._pos_key(checkpoint.get("ts"), thread_id, str(known)))
            side.extend(sorted(ready))

        def store(key: str) -> bool:
            if key != cp_key:
                self._put(key, b"")
                return True
            try:
                self._put(cp_key, body, create=True)
            except _Precondition:
                return False
            return True

        stored = self._parallel(store, [cp_key, *side])
        if not stored[0]:
            _etag, manifest = self._load(thread_id, ns)
            found = self._find_entry(manifest, cid) if manifest is not None else None
            if found is not None or expected_head is not NO_CHECK:
                # Stored checkpoints never change: the first write stays. Of
                # the keys just written, drop those the stored one does not own.
                owned = {self._id_key(thread_id, ns, cid)}
                if found is not None and found[1].get("run") is not None:
                    owned.add(self._run_key(str(found[1]["run"]), thread_id, ns, cid))
                if manifest is not None:
                    owned |= {str(manifest.get(k)) for k in ("pos", "apos")}
                self._drop_quietly(sorted(set(side) - owned))
                if expected_head is not NO_CHECK:
                    raise ThreadConflict(
                        thread_id, f"checkpoint {cid!r} is already stored"
                    )
                return thread_config(thread_id, cid, ns)
            # An object no index names is what a write cut short left behind:
            # this write takes its place.
            self._put(cp_key, body)

        def mutate(
            manifest: _Manifest | None, created: builtins.list[str]
        ) -> _Manifest:
            head = manifest.get("head") if manifest else None
            if expected_head is not NO_CHECK and head != expected_head:
                raise _HeadMoved(head)
            manifest = manifest or _empty_manifest(thread_id, ns)
            parent = self._find_entry(manifest, parent_id) if parent_id else None
            entry = self._entry(
                parent_id,
                checkpoint,
                meta_blob,
                merged,
                parent[1] if parent else None,
            )
            self._insert(thread_id, ns, manifest, entry, created)
            if ns == "" and not manifest.get("agent") and merged.get("agent"):
                manifest["agent"] = str(merged["agent"])
            self._reposition(thread_id, manifest, created, ready)
            self._seal(thread_id, ns, manifest, created)
            return manifest

        try:
            old, new = self._update(thread_id, ns, mutate)
        except (_HeadMoved, ThreadConflict) as exc:
            self._drop_quietly([cp_key, *side])
            if isinstance(exc, ThreadConflict):
                raise
            raise ThreadConflict(
                thread_id,
                f"expected newest checkpoint {expected_head!r} but it is "
                f"{exc.head!r}; another writer advanced the thread",
            ) from None
        unused = ready - {(new or {}).get("pos"), (new or {}).get("apos")}
        self._retire_positions(old, new, sorted(unused))
        return thread_config(thread_id, cid, ns)

    def _insert(
        self,
        thread_id: str,
        ns: str,
        manifest: _Manifest,
        entry: _Entry,
        created: builtins.list[str],
    ) -> None:
        """Add an entry (replacing one with the same id) and refresh the totals."""
        cid = entry["id"]
        found = self._find_entry(manifest, cid)
        if found is not None and found[0] >= 0:
            entry["writes"] = found[1]["writes"]
            self._replace_in_page(thread_id, ns, manifest, found[0], entry, created)
        else:
            entries = manifest["entries"]
            if found is not None:
                entry["writes"] = found[1]["writes"]
                entries[:] = [e for e in entries if e["id"] != cid]
            else:
                manifest["count"] += 1
            bisect.insort(entries, entry, key=lambda e: e["id"])
        if manifest["head"] is None or cid >= manifest["head"]:
            manifest["head"] = cid
        first = manifest.get("first")
        if first is None or cid <= first[0]:
            manifest["first"] = [cid, entry["ts"], entry["meta"]]

    def _replace_in_page(
        self,
        thread_id: str,
        ns: str,
        manifest: _Manifest,
        index: int,
        entry: _Entry,
        created: builtins.list[str],
    ) -> None:
        old = manifest["pages"][index]
        entries = [e if e["id"] != entry["id"] else entry for e in self._page(old[0])]
        page = self._new_page(thread_id, ns, entries)
        created.append(page[0])
        manifest["pages"][index] = page
        manifest.setdefault("retired", []).append(old[0])

    def _seal(
        self, thread_id: str, ns: str, manifest: _Manifest, created: builtins.list[str]
    ) -> None:
        """Move the oldest entries into a sealed page when too many are inline."""
        entries = manifest["entries"]
        if len(entries) <= 2 * self.page_size:
            return
        sealed, manifest["entries"] = (
            entries[: self.page_size],
            entries[self.page_size :],
        )
        page = self._new_page(thread_id, ns, sealed)
        created.append(page[0])
        manifest["pages"].append(page)
        manifest["pages"].sort(key=lambda p: p[2])

    def _reposition(
        self,
        thread_id: str,
        manifest: _Manifest,
        created: builtins.list[str],
        ready: set[str] = frozenset(),  # type: ignore[assignment]
    ) -> None:
        """Point the thread's list entries at its (root) head's time."""
        if manifest["ns"] != "":
            return
        head = manifest.get("head")
        head_entry = self._find_entry(manifest, head) if head else None
        ts = head_entry[1]["ts"] if head_entry else None
        pos = self._pos_key(ts, thread_id, None) if head else None
        agent = manifest.get("agent")
        apos = self._pos_key(ts, thread_id, agent) if head and agent else None
        for key, name in ((pos, "pos"), (apos, "apos")):
            if key is not None and key != manifest.get(name) and key not in ready:
                self._put(key, b"")
                created.append(key)
            manifest[name] = key

    def _retire_positions(
        self,
        old: _Manifest | None,
        new: _Manifest | None,
        extra: Sequence[str] = (),
    ) -> None:
        """Delete list entries and pages the new manifest no longer uses.

        Nothing reads them any more, so they go in the background.
        """
        doomed = list(extra)
        for name in ("pos", "apos"):
            before = (old or {}).get(name)
            if before and before != (new or {}).get(name):
                doomed.append(before)
        doomed.extend((new or {}).pop("retired", None) or [])
        if doomed:
            self._pool.submit(self._drop_quietly, doomed)

    def _cached_agent(self, thread_id: str) -> str | None:
        with self._lock:
            known = self._manifests.get(self._manifest_key(thread_id, ""))
        if known is None:
            return None
        agent = self._decode_manifest(thread_id, known[1]).get("agent")
        return str(agent) if agent else None

    def put_writes(
        self,
        config: dict[str, Any],
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store a task's writes; a plain write keeps the first value stored."""
        thread_id, ns, cid = config_parts(config)
        if cid is None:
            raise ValueError("put_writes needs configurable.checkpoint_id")
        items = []
        for i, (channel, value) in enumerate(writes):
            idx = WRITES_IDX_MAP.get(channel, i)
            tag, blob = self.serde.dumps_typed(value)
            summary = summarize_write(
                task_id, idx, channel, task_path, (tag, blob), value
            )
            key = self._write_key(thread_id, ns, cid, task_id, idx)
            body = ormsgpack.packb([channel, tag, blob, task_path])
            items.append((key, body, idx, summary))

        def store(item: tuple[str, bytes, int, builtins.list[Any]]) -> bool:
            key, body, idx, _summary = item
            if idx < 0:
                self._put(key, body)
                return True
            try:
                self._put(key, body, create=True)
            except _Precondition:
                return False
            return True

        stored = self._parallel(store, items)
        fresh = [item[3] for item, ok in zip(items, stored, strict=True) if ok]
        existing = [item for item, ok in zip(items, stored, strict=True) if not ok]

        def mutate(manifest: _Manifest | None, created: builtins.list[str]) -> Any:
            if manifest is None:
                return None
            found = self._find_entry(manifest, cid)
            if found is None:
                return None
            index, entry = found
            entry = dict(entry)
            have = {(w[0], w[1]) for w in entry["writes"]}
            summaries = list(fresh)
            for key, _body, _idx, summary in existing:
                if (summary[0], summary[1]) not in have:
                    summaries.append(self._summary_of(key, summary))
            merged = [
                w
                for w in entry["writes"]
                if not any((w[0], w[1]) == (s[0], s[1]) and s[1] < 0 for s in summaries)
            ]
            keys = {(w[0], w[1]) for w in merged}
            for summary in summaries:
                if (summary[0], summary[1]) not in keys:
                    merged.append(summary)
                    keys.add((summary[0], summary[1]))
            if merged == entry["writes"]:
                return None
            entry["writes"] = merged
            if index >= 0:
                self._replace_in_page(thread_id, ns, manifest, index, entry, created)
            else:
                manifest["entries"] = [
                    entry if e["id"] == cid else e for e in manifest["entries"]
                ]
            return manifest

        old, new = self._update(thread_id, ns, mutate)
        self._retire_positions(old, new)

    def _summary_of(self, key: str, fallback: builtins.list[Any]) -> builtins.list[Any]:
        """Return the summary of a write object stored earlier (first one wins)."""
        got = self._get(key)
        if got is None:
            return fallback
        channel, tag, blob, path = _fields(got[0], 4)
        value = self.serde.loads_typed((tag, blob))
        return summarize_write(
            fallback[0], fallback[1], channel, path, (tag, blob), value
        )

    # -- deletes and copies ----------------------------------------------------

    def delete_checkpoints(
        self, thread_id: str, checkpoint_ns: str, checkpoint_ids: Sequence[str]
    ) -> int:
        """Delete these checkpoints and their writes; return how many went."""
        doomed = {str(c) for c in checkpoint_ids}
        if not doomed:
            return 0
        self.keep_children_whole(thread_id, checkpoint_ns, sorted(doomed))
        self.anchor_deletions(thread_id, checkpoint_ns, sorted(doomed))
        removed: builtins.list[_Entry] = []

        def mutate(manifest: _Manifest | None, created: builtins.list[str]) -> Any:
            removed.clear()
            if manifest is None:
                return None
            entries = self._all_entries(manifest)
            keep = [e for e in entries if e["id"] not in doomed]
            removed.extend(e for e in entries if e["id"] in doomed)
            if not removed:
                return None
            if not keep:
                manifest["retired"] = [p[0] for p in manifest["pages"]]
                return False
            self._rebuild(thread_id, checkpoint_ns, manifest, keep, created)
            self._reposition(thread_id, manifest, created)
            return manifest

        old, new = self._update(thread_id, checkpoint_ns, mutate)
        keys: builtins.list[str] = []
        if new is None and old is not None:
            keys.extend(p[0] for p in old["pages"])
            keys.extend(k for k in (old.get("pos"), old.get("apos")) if k)
        for entry in removed:
            keys.extend(self._entry_keys(thread_id, checkpoint_ns, entry))
        for cid in doomed:
            keys.append(self._cp_key(thread_id, checkpoint_ns, cid))
            keys.extend(self._list(self._writes_prefix(thread_id, checkpoint_ns, cid)))
        self._delete_many(keys)
        self._retire_positions(old, new)
        self.anchor_orphans(thread_id, checkpoint_ns, sorted(doomed))
        return len(removed)

    def _entry_keys(self, thread_id: str, ns: str, entry: _Entry) -> builtins.list[str]:
        keys = [self._id_key(thread_id, ns, entry["id"])]
        if entry.get("run") is not None:
            keys.append(self._run_key(entry["run"], thread_id, ns, entry["id"]))
        return keys

    def _rebuild(
        self,
        thread_id: str,
        ns: str,
        manifest: _Manifest,
        entries: builtins.list[_Entry],
        created: builtins.list[str],
    ) -> None:
        """Lay out a manifest's entries afresh: full pages, the rest inline."""
        manifest.setdefault("retired", []).extend(p[0] for p in manifest["pages"])
        manifest["pages"] = []
        # Whole pages only, keeping between one and two pages' worth inline.
        cut = max(0, (len(entries) - self.page_size) // self.page_size) * self.page_size
        for start in range(0, cut, self.page_size):
            page = self._new_page(
                thread_id, ns, entries[start : start + self.page_size]
            )
            created.append(page[0])
            manifest["pages"].append(page)
        manifest["entries"] = entries[cut:]
        manifest["count"] = len(entries)
        manifest["head"] = entries[-1]["id"]
        first = entries[0]
        manifest["first"] = [first["id"], first["ts"], first["meta"]]

    def delete_thread(self, thread_id: str) -> None:
        """Delete every object of a thread and its entries in the shared indexes."""
        keys: builtins.list[str] = []
        for ns in self._namespaces(thread_id):
            _etag, manifest = self._load(thread_id, ns)
            if manifest is None:
                continue
            for entry in self._all_entries(manifest):
                keys.extend(self._entry_keys(thread_id, ns, entry))
            keys.extend(k for k in (manifest.get("pos"), manifest.get("apos")) if k)
            with self._lock:
                self._manifests.pop(self._manifest_key(thread_id, ns), None)
        keys.extend(self._list(self._thread_prefix(thread_id)))
        with self._lock:
            self._leases.pop(self._thread_prefix(thread_id) + "lease", None)
        self._delete_many(keys)

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints (and their writes) whose metadata run_id is listed."""
        doomed: dict[tuple[str, str], builtins.list[str]] = {}
        for run in {str(r) for r in run_ids}:
            prefix = f"{self.prefix}runs/{_seg(run)}/"
            for key in self._list(prefix):
                thread_seg, ns_seg, cid_seg = key[len(prefix) :].split("/")
                doomed.setdefault((_unseg(thread_seg), _unseg(ns_seg)), []).append(
                    _unseg(cid_seg)
                )
        for (thread_id, ns), ids in doomed.items():
            self.delete_checkpoints(thread_id, ns, ids)

    def prune(
        self,
        thread_ids: Sequence[str],
        *,
        strategy: Literal["keep_latest", "delete"] = "keep_latest",
    ) -> None:
        """Keep only each namespace's newest checkpoint, or delete the threads."""
        for thread_id in thread_ids:
            if strategy == "delete":
                self.delete_thread(thread_id)
                continue
            for ns in self._namespaces(thread_id):
                _etag, manifest = self._load(thread_id, ns)
                if manifest is None:
                    continue
                ids = [e["id"] for e in self._all_entries(manifest)]
                if len(ids) <= 1:
                    continue
                newest = self._read_tuple(thread_id, ns, ids[-1])
                if newest is not None:
                    self._store_whole(newest)
                self.delete_checkpoints(thread_id, ns, ids[:-1])

    def _rewrite(
        self,
        tup: CheckpointTuple,
        checkpoint: dict[str, Any],
        metadata: dict[str, Any],
    ) -> None:
        conf = tup.config["configurable"]
        thread_id, ns, cid = (
            conf["thread_id"],
            conf["checkpoint_ns"],
            conf["checkpoint_id"],
        )
        parent = parent_id_of(tup)
        meta_blob = list(self.serde.dumps_typed(metadata))
        body = {
            "id": cid,
            "parent": parent,
            "checkpoint": list(self.serde.dumps_typed(checkpoint)),
            "metadata": meta_blob,
        }
        self._put(self._cp_key(thread_id, ns, cid), ormsgpack.packb(body))

        def mutate(manifest: _Manifest | None, created: builtins.list[str]) -> Any:
            found = self._find_entry(manifest, cid) if manifest else None
            if manifest is None or found is None:
                return None
            entry = dict(found[1], meta=meta_blob, needs=False)
            if found[0] >= 0:
                self._replace_in_page(thread_id, ns, manifest, found[0], entry, created)
            else:
                manifest["entries"] = [
                    entry if e["id"] == cid else e for e in manifest["entries"]
                ]
            if manifest.get("first") and manifest["first"][0] == cid:
                manifest["first"] = [cid, entry["ts"], meta_blob]
            return manifest

        old, new = self._update(thread_id, ns, mutate)
        self._retire_positions(old, new)

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint and write of one thread into another."""
        for ns in self._namespaces(source_thread_id):
            _etag, manifest = self._load(source_thread_id, ns)
            if manifest is None:
                continue
            entries = self._all_entries(manifest)
            src_ns = self._ns_prefix(source_thread_id, ns)
            dst_ns = self._ns_prefix(target_thread_id, ns)
            objects = [
                key
                for key in self._list(src_ns)
                if key[len(src_ns) :].startswith(("cp/", "w/"))
            ]
            with_writes = {
                _unseg(key[len(src_ns) :].split("/")[1])
                for key in objects
                if key[len(src_ns) :].startswith("w/")
            }
            for cid in with_writes:
                self._delete_many(
                    self._list(self._writes_prefix(target_thread_id, ns, cid))
                )

            def copy(key: str, src_ns: str = src_ns, dst_ns: str = dst_ns) -> None:
                self.client.copy_object(
                    Bucket=self.bucket,
                    Key=dst_ns + key[len(src_ns) :],
                    CopySource={"Bucket": self.bucket, "Key": key},
                )

            self._parallel(copy, objects)
            side = [
                key
                for entry in entries
                for key in self._entry_keys(target_thread_id, ns, entry)
            ]
            self._parallel(lambda key: self._put(key, b""), side)
            source_agent = manifest.get("agent")

            def mutate(
                target: _Manifest | None,
                created: builtins.list[str],
                ns: str = ns,
                entries: builtins.list[_Entry] = entries,
                source_agent: Any = source_agent,
            ) -> _Manifest:
                target = target or _empty_manifest(target_thread_id, ns)
                merged = {e["id"]: e for e in self._all_entries(target)}
                merged.update({e["id"]: e for e in entries})
                ordered = [merged[k] for k in sorted(merged)]
                if not target.get("agent") and source_agent:
                    target["agent"] = source_agent
                self._rebuild(target_thread_id, ns, target, ordered, created)
                self._reposition(target_thread_id, target, created)
                return target

            old, new = self._update(target_thread_id, ns, mutate)
            self._retire_positions(old, new)

    # -- leases ----------------------------------------------------------------

    def acquire_lease(self, thread_id: str, owner: str, ttl_seconds: float) -> bool:
        """Take or renew the thread's run lease; False while another owner holds it.

        A lease this saver holds with more than half its time left is not
        renewed again: nobody else can take it before it expires.
        """
        key = self._thread_prefix(thread_id) + "lease"
        now = time.time()
        with self._lock:
            held = self._leases.get(key)
        if held and held[0] == owner and held[1] - now > ttl_seconds / 2:
            return True
        until = now + ttl_seconds
        body = ormsgpack.packb({"owner": owner, "until": until})
        etag: str | None
        try:
            if held and held[0] == owner:
                etag = self._put(key, body, if_match=held[2])
            else:
                etag = self._take_lease(key, owner, body)
        except _Precondition:
            with self._lock:
                self._leases.pop(key, None)
            if held and held[0] == owner:
                # Our record was stale (released or expired meanwhile): ask again.
                return self.acquire_lease(thread_id, owner, ttl_seconds)
            return False
        if etag is None:
            return False
        with self._lock:
            self._leases[key] = (owner, until, etag)
        return True

    def _take_lease(self, key: str, owner: str, body: bytes) -> str | None:
        found = self._get(key)
        if found is None:
            return self._put(key, body, create=True)
        holder = ormsgpack.unpackb(found[0])
        if holder.get("owner") != owner and holder.get("until", 0) > time.time():
            return None
        return self._put(key, body, if_match=found[1])

    def release_lease(self, thread_id: str, owner: str) -> None:
        """Give the lease back if `owner` still holds it."""
        key = self._thread_prefix(thread_id) + "lease"
        with self._lock:
            held = self._leases.pop(key, None)
        if held is not None and held[0] == owner:
            with contextlib.suppress(_Precondition):
                self._delete(key, if_match=held[2])
            return
        found = self._get(key)
        if found is None or ormsgpack.unpackb(found[0]).get("owner") != owner:
            return
        with contextlib.suppress(_Precondition):
            self._delete(key, if_match=found[1])

    # -- readers that need no agent --------------------------------------------

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

        With ``values=False`` only the namespace's index is read (one request
        per page of entries plus one): no checkpoint or write object.
        """
        thread_id, before, checkpoint_ns = check_history_args(
            thread_id, limit, before, checkpoint_ns
        )
        if values:
            return super().get_state_history(
                thread_id,
                limit=limit,
                before=before,
                values=True,
                checkpoint_ns=checkpoint_ns,
            )
        _etag, manifest = self._load(thread_id, checkpoint_ns)
        if manifest is None:
            return []
        states: builtins.list[State] = []
        entries = self._entries_desc(manifest, before, eager=limit is None)
        for entry in entries:
            if limit is not None and len(states) >= limit:
                break
            states.append(self._light_state(thread_id, checkpoint_ns, entry))
        return states

    def get_state(
        self, thread_id: str, checkpoint_id: str | None = None, *, values: bool = True
    ) -> State | None:
        """Return the newest (or the named) state of a thread, or None."""
        thread_id, checkpoint_id = check_state_args(thread_id, checkpoint_id)
        if values:
            return super().get_state(thread_id, checkpoint_id, values=True)
        _etag, manifest = self._load(thread_id, "")
        if manifest is None:
            return None
        cid = checkpoint_id or manifest.get("head")
        found = self._find_entry(manifest, cid) if cid else None
        return self._light_state(thread_id, "", found[1]) if found else None

    def _light_state(self, thread_id: str, ns: str, entry: _Entry) -> State:
        metadata = self._metadata(thread_id, entry)
        return light_state(self.display_serde, thread_id, ns, entry, metadata, None)

    def list_threads(
        self, *, agent: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> ThreadPage:
        """Return threads by newest activity, from one listing plus their indexes."""
        check_thread_page(agent, limit, cursor)
        where = f"{self.prefix}updated/"
        if agent is not None:
            where = f"{self.prefix}agents/{_seg(agent)}/"
        start_after = None
        if cursor:
            updated_at, after_id = decode_cursor(cursor)
            start_after = f"{where}{_inverted(updated_at)}/{_descending(after_id)}"
        infos: builtins.list[ThreadInfo] = []
        more = False
        while True:
            want = limit + 1 - len(infos)
            keys = list(self._list(where, start_after=start_after, max_keys=want))
            found = self._parallel(lambda key: self._info_at(key, where), keys)
            for info in found:
                if info is None or (agent is not None and info.agent != agent):
                    continue
                if len(infos) == limit:
                    more = True
                    break
                infos.append(info)
            if more or len(keys) < want:
                break
            start_after = keys[-1]
        next_cursor = None
        if more and infos:
            last = infos[-1]
            next_cursor = encode_cursor(last.updated_at or "", last.thread_id)
        return ThreadPage(threads=infos, next_cursor=next_cursor)

    def _info_at(self, key: str, where: str) -> ThreadInfo | None:
        """Return the thread a list key names, or None (and drop it) if stale."""
        thread_id = _ascending(key[len(where) :].split("/")[1])
        _etag, manifest = self._load(thread_id, "")
        if manifest is None or key not in (manifest.get("pos"), manifest.get("apos")):
            with contextlib.suppress(Exception):
                self._delete(key)
            return None
        found = self._find_entry(manifest, manifest["head"])
        if found is None:
            return None
        head = self._light_state(thread_id, "", found[1])
        head_tuple = CheckpointTuple(
            config=head.config,
            checkpoint={"id": manifest["head"], "ts": found[1]["ts"]},
            metadata=head.metadata,
            parent_config=head.parent_config,
        )
        first = manifest.get("first") or [None, None, None]
        first_meta: dict[str, Any] = {}
        if first[2] is not None:
            first_meta = dict(
                self.serde.loads_typed(tuple(first[2]), thread_id=thread_id)
            )
        first_meta["created_at"] = first[1]
        return thread_info_from_tuple(
            head_tuple, first_meta, head.next, int(manifest["count"])
        )

    def retention_rows(self, thread_id: str | None = None) -> Iterator[tuple[Any, ...]]:
        """Yield ``(thread_id, ns, checkpoint_id, parent_id, ts, needs_parent,
        metadata)`` per checkpoint (of one thread, if given), from the indexes."""
        threads = list(self.thread_ids()) if thread_id is None else [thread_id]
        for thread_id in threads:
            for ns in self._namespaces(thread_id):
                _etag, manifest = self._load(thread_id, ns)
                if manifest is None:
                    continue
                for entry in self._all_entries(manifest):
                    yield (
                        thread_id,
                        ns,
                        entry["id"],
                        entry.get("parent"),
                        entry.get("ts"),
                        bool(entry.get("needs")),
                        self._metadata(thread_id, entry),
                    )


# -- helpers -------------------------------------------------------------------


def _seg(value: str) -> str:
    """Return `value` as one key segment (no ``/``, never ``.`` or ``..``)."""
    try:
        return urllib.parse.quote(value, safe="").replace(".", "%2E") or "%"
    except UnicodeEncodeError as exc:
        raise ValueError(f"{value!r} cannot be part of an object key") from exc


def _unseg(segment: str) -> str:
    return "" if segment == "%" else urllib.parse.unquote(segment)


def _inverted(ts: str | None) -> str:
    """Return a key part that sorts newer times first."""
    micros = 0
    if ts:
        try:
            when = dt.datetime.fromisoformat(ts)
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
            micros = int(when.timestamp() * 1_000_000)
        except ValueError:
            micros = 0
    return f"{_INVERT - max(0, micros):017d}"


def _descending(value: str) -> str:
    """Return a key part that sorts `value` after the strings greater than it.

    Ties in time list threads by descending id, as the other savers do.
    """
    try:
        raw = value.encode()
    except UnicodeEncodeError as exc:
        raise ValueError(f"{value!r} cannot be part of an object key") from exc
    # 'g' sorts after every hex digit, so a prefix sorts after its extensions.
    return "".join(f"{255 - b:02x}" for b in raw) + "g"


def _ascending(part: str) -> str:
    return bytes(
        255 - int(part[i : i + 2], 16) for i in range(0, len(part) - 1, 2)
    ).decode()


def _status(exc: Any) -> int | None:
    return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _precondition(exc: Any) -> bool:
    return _status(exc) in (409, 412) or _code(exc) in (
        "PreconditionFailed",
        "ConditionalRequestConflict",
    )


def _missing(exc: Any) -> bool:
    return _status(exc) == 404 or _code(exc) in ("NoSuchKey", "NotFound", "404")


def _copy(manifest: _Manifest | None) -> _Manifest | None:
    if manifest is None:
        return None
    out = dict(manifest)
    out["entries"] = list(manifest["entries"])
    out["pages"] = [list(p) for p in manifest["pages"]]
    out.pop("retired", None)
    return out


def _empty_manifest(thread_id: str, ns: str) -> _Manifest:
    return {
        "v": 1,
        "thread": thread_id,
        "ns": ns,
        "head": None,
        "pages": [],
        "entries": [],
        "count": 0,
        "first": None,
        "pos": None,
        "apos": None,
        "agent": None,
    }


def _record(body: bytes, fields: Sequence[str]) -> dict[str, Any]:
    try:
        record = ormsgpack.unpackb(body)
    except ormsgpack.MsgpackDecodeError as exc:
        raise ValueError(f"the stored object is not msgpack ({exc})") from None
    if not isinstance(record, dict) or not all(f in record for f in fields):
        raise ValueError("the stored object is not a checkpoint record")
    return record


def _check_shape(checkpoint: Any, metadata: Any, checkpoint_id: str) -> None:
    if not isinstance(checkpoint, dict) or checkpoint.get("id") != checkpoint_id:
        raise ValueError("the stored checkpoint is not this checkpoint's mapping")
    if not isinstance(metadata, dict):
        raise ValueError("the stored metadata is not a mapping")


def _fields(body: bytes, size: int) -> list[Any]:
    try:
        fields = ormsgpack.unpackb(body)
    except ormsgpack.MsgpackDecodeError as exc:
        raise ValueError(f"a stored write is not msgpack ({exc})") from None
    if not isinstance(fields, list) or len(fields) != size:
        raise ValueError("a stored write has the wrong shape")
    return fields


def _needs_parent(checkpoint: dict[str, Any]) -> bool:
    stored = checkpoint.get("channel_values") or {}
    return any(
        is_state_channel(ch) and ch not in stored
        for ch in checkpoint.get("channel_versions") or {}
    )


def _merge_desc(
    sources: Sequence[Iterator[Any]], key: Callable[[Any], str]
) -> Iterator[Any]:
    """Merge iterators that each yield newest first, reading each lazily."""
    heads: list[list[Any]] = []
    for source in sources:
        first = next(source, None)
        if first is not None:
            heads.append([first, source])
    while heads:
        best = max(heads, key=lambda h: key(h[0]))
        yield best[0]
        nxt = next(best[1], None)
        if nxt is None:
            heads.remove(best)
        else:
            best[0] = nxt


__all__ = ["S3Saver"]
