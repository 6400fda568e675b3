"""How the PostgresSaver stores list values: hashed chunks, a tail, or an append.

A list (a LangGraph message channel written whole at every step) or a
`DeltaSnapshot` of one (our message log's periodic full value) is stored as

- *chunks*: its items in runs of `CHUNK_ITEMS`, each run a msgpack array
  keyed by its hash in ``agentmatic_chunks``, so the runs an earlier version
  already stored cost nothing again; the items after the last full run (the
  *tail*) go in the blob row itself; or
- an *append*: the version it extends (`base_version`) and only the items it
  added, when the saver still knows the value it extends. After
  `MAX_APPEND_DEPTH` appends in a row the next version is stored as chunks,
  so reading any version takes a bounded number of rows.

Items are packed one by one with the saver's serializer; a msgpack array is
its header followed by its items, so a run is readable as a plain list. A
chunk's hash is over its uncompressed bytes (see `packing`).
Encrypted serializers store every value whole (the tag covers one value).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agentmatic.checkpoint.postgres import packing
from agentmatic.checkpoint.serde import DeltaSnapshot, Serializer

CHUNK_ITEMS = 8
MAX_APPEND_DEPTH = 100
HASH_BYTES = 16
# Blob types besides the serializer's tags. `DERIVED` is a delta channel's
# value the saver rebuilt itself; it is never part of a checkpoint as read.
LIST = "am-list"
SNAPSHOT = "am-snapshot"
DERIVED = "am-derived"
LIST_TYPES = frozenset({LIST, SNAPSHOT, DERIVED})


def array_header(count: int) -> bytes:
    """Return the msgpack header of an array of `count` items."""
    if count < 16:
        return bytes([0x90 | count])
    if count < 0x10000:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def join_items(encoded: Sequence[bytes]) -> bytes:
    """Return a msgpack array of already-packed items."""
    return array_header(len(encoded)) + b"".join(encoded)


def digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=HASH_BYTES).digest()


def list_kind(value: Any) -> tuple[str, list[Any]] | None:
    """Return `(blob type, items)` for a value stored as a list, else None."""
    if type(value) is list:
        return LIST, value
    if isinstance(value, DeltaSnapshot) and type(value.value) is list:
        return SNAPSHOT, value.value
    return None


@dataclass
class BlobRow:
    """One ``agentmatic_blobs`` row before the saver adds its keys."""

    channel: str
    version: str
    type: str
    data: bytes | None
    chunks: bytes | None = None
    base_version: str | None = None
    depth: int = 0


@dataclass
class Memo:
    """What the saver remembers of a list it stored, to append to it next time.

    `items` are the objects themselves, `digests` a short hash of each
    item's bytes, so a later list can be checked for the same prefix without
    packing every item again.
    """

    version: str
    kind: str
    items: list[Any]
    digests: list[bytes] = field(default_factory=list)
    depth: int = 0


def item_digest(encoded: bytes) -> bytes:
    return hashlib.blake2b(encoded, digest_size=8).digest()


def encode_whole(
    serde: Serializer, channel: str, version: str, kind: str, items: Sequence[Any]
) -> tuple[BlobRow, dict[bytes, bytes], Memo]:
    """Return the row, the chunks (by hash) and the memo of a list stored whole."""
    encoded = [serde.dumps(item) for item in items]
    full = len(encoded) - len(encoded) % CHUNK_ITEMS
    chunks: dict[bytes, bytes] = {}
    hashes: list[bytes] = []
    for start in range(0, full, CHUNK_ITEMS):
        data = join_items(encoded[start : start + CHUNK_ITEMS])
        key = digest(data)
        chunks[key] = packing.pack_chunk(data)
        hashes.append(key)
    tag, tail = packing.pack_typed(kind, join_items(encoded[full:]))
    row = BlobRow(
        channel=channel,
        version=version,
        type=tag,
        data=tail,
        chunks=b"".join(hashes) if hashes else None,
    )
    memo = Memo(version, kind, list(items), [item_digest(e) for e in encoded])
    return row, chunks, memo


def encode_append(
    serde: Serializer, channel: str, version: str, memo: Memo, items: Sequence[Any]
) -> tuple[BlobRow, Memo] | None:
    """Return the row storing `items` as an append to `memo`'s list, if it is one.

    Items at the same place as the remembered ones are taken as unchanged
    when they are the same objects; any other item is packed and compared.
    An object changed in place after it was stored is therefore not seen;
    LangGraph's reducers replace a changed message instead of editing it.
    """
    old = memo.items
    if memo.depth + 1 >= MAX_APPEND_DEPTH or len(items) < len(old):
        return None
    for i, item in enumerate(items[: len(old)]):
        if item is old[i]:
            continue
        if item_digest(serde.dumps(item)) != memo.digests[i]:
            return None
    added = [serde.dumps(item) for item in items[len(old) :]]
    tag, data = packing.pack_typed(memo.kind, join_items(added))
    row = BlobRow(
        channel=channel,
        version=version,
        type=tag,
        data=data,
        base_version=memo.version,
        depth=memo.depth + 1,
    )
    after = Memo(
        version,
        memo.kind,
        list(items),
        memo.digests + [item_digest(e) for e in added],
        memo.depth + 1,
    )
    return row, after


def split_hashes(chunks: bytes | None) -> list[bytes]:
    if not chunks:
        return []
    return [
        bytes(chunks[i : i + HASH_BYTES]) for i in range(0, len(chunks), HASH_BYTES)
    ]


def wrap(kind: str, items: list[Any]) -> Any:
    """Return the value a list row holds: a list, or a snapshot of one."""
    return items if kind == LIST else DeltaSnapshot(items)


__all__ = [
    "CHUNK_ITEMS",
    "DERIVED",
    "LIST",
    "LIST_TYPES",
    "MAX_APPEND_DEPTH",
    "SNAPSHOT",
    "BlobRow",
    "Memo",
    "encode_append",
    "encode_whole",
    "list_kind",
    "split_hashes",
    "wrap",
]
