"""How the PostgresSaver stores list values: hashed chunks, a tail, or an append.

A list (a LangGraph message channel written whole at every step) or a
`DeltaSnapshot` of one (our message log's periodic full value) is stored as

- *chunks*: its items in runs (see `chunk_end`), each run a msgpack array
  keyed by its hash in ``agentmatic_chunks``, so the runs an earlier version
  already stored cost nothing again; the items after the last closed run
  (the *tail*) go in the blob row itself; or
- an *append*: the version it extends (`base_version`) and only the items it
  added, when the saver still knows the value it extends. After
  `MAX_APPEND_DEPTH` appends in a row the next version is stored as chunks,
  so reading any version takes a bounded number of rows.

Items are packed one by one with the saver's serializer; a msgpack array is
its header followed by its items, so a run is readable as a plain list. A
chunk's hash is over its uncompressed bytes (see `packing`). Readers take
each chunk's items as they come, whatever their number, so how runs are cut
is the writer's choice alone: rows written under the earlier rule (always
`CHUNK_ITEMS` items) read the same.
Encrypted serializers store every value whole (the tag covers one value).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agentmatic.checkpoint.postgres import packing
from agentmatic.checkpoint.serde import DeltaSnapshot, Serializer

# A chunk's fewest and most items (see `chunk_end`). The most bounds what a
# chunk's end is decided on, and so the tail, when the items are tiny.
CHUNK_ITEMS = 8
MAX_CHUNK_ITEMS = 64
MAX_APPEND_DEPTH = 100
# An ``agentmatic_chunks`` heap page's room for rows (8 KB less its header),
# and a row's bytes besides its data: tuple header 24, created_at 8, a
# thread id of up to 48 bytes (1 + 48), hash 17, the data's length word 4
# (aligned to 4). A longer thread id can cost a row near its budget the
# page it would share (see `row_share`).
PAGE_BYTES = 8168
ROW_BYTES = 104
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


def row_share(rows: int) -> int:
    """Return the most data bytes a chunk row holds when `rows` rows fill a page.

    Each row also takes a 4-byte line pointer and is aligned to 8 bytes.
    """
    return (PAGE_BYTES // rows - 4) // 8 * 8 - ROW_BYTES


def chunk_budget(first: int) -> int | None:
    """Return the stored bytes a chunk may grow to, given its first items' size.

    `first` is the stored size of its first `CHUNK_ITEMS` items. A run that
    fits half a heap page grows to fill half a page, one that fits a page to
    fill a page; row sizes that leave a page partly empty cost that part.
    A larger run goes to TOAST, which fills its pages whatever the size, so
    it gets no budget and stays at `CHUNK_ITEMS` (a longer one would only
    make the tail longer).
    """
    for rows in (2, 1):
        if first <= row_share(rows):
            return row_share(rows)
    return None


class KnownEnds:
    """Where the chunks a saver cut end, found by their first items.

    Finding a chunk's end packs its items a few times (see `chunk_end`). A
    list is stored whole again and again as it grows (our message log's
    snapshot every 100 steps, a LangGraph list after `MAX_APPEND_DEPTH`
    appends), and all its chunks but the newest were cut before; knowing
    their ends and stored bytes makes each cost a hash, not a packing. An
    end is taken only when every item it was decided on is the same bytes as
    then, so the chunks are exactly the ones `chunk_end` would cut. At most
    `size` ends and `max_bytes` of stored chunks are kept, the least
    recently used going first.
    """

    def __init__(self, size: int = 4096, max_bytes: int = 16 << 20) -> None:
        self._size = size
        self._max_bytes = max_bytes
        self._bytes = 0
        self._ends: OrderedDict[bytes, tuple[int, int, bytes, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def held_bytes(self) -> int:
        """The stored chunk bytes kept."""
        return self._bytes

    def find(self, encoded: Sequence[bytes], start: int) -> tuple[int, bytes] | None:
        """Return where the chunk from `start` ends and its stored bytes, if known."""
        key = digest(b"".join(encoded[start : start + CHUNK_ITEMS]))
        with self._lock:
            known = self._ends.get(key)
            if known is not None:
                self._ends.move_to_end(key)
        if known is None:
            return None
        count, seen, check, stored = known
        if len(encoded) - start < seen:
            return None
        if digest(b"".join(encoded[start : start + seen])) != check:
            return None
        return start + count, stored

    def add(
        self, encoded: Sequence[bytes], start: int, count: int, seen: int, stored: bytes
    ) -> None:
        """Note that the chunk from `start` has `count` items, decided on `seen`."""
        key = digest(b"".join(encoded[start : start + CHUNK_ITEMS]))
        check = digest(b"".join(encoded[start : start + seen]))
        with self._lock:
            old = self._ends.pop(key, None)
            if old is not None:
                self._bytes -= len(old[3])
            self._ends[key] = (count, seen, check, stored)
            self._bytes += len(stored)
            while len(self._ends) > self._size or self._bytes > self._max_bytes:
                _key, gone = self._ends.popitem(last=False)
                self._bytes -= len(gone[3])


def chunk_end(
    encoded: Sequence[bytes], start: int, known: KnownEnds | None = None
) -> tuple[int, bytes] | None:
    """Return where the chunk from `start` ends and its stored bytes, or None.

    A chunk holds at least `CHUNK_ITEMS` items, so a version never takes
    more chunk rows than before, and at most `MAX_CHUNK_ITEMS`. Between
    those it ends at the count whose stored size fits its `chunk_budget`
    while one item more does not, found by interpolating the sizes measured
    so far (each measure packs the run whole, which is what is stored).
    Every measure depends only on the items it covers, so the end depends
    on the items alone and a longer version of the list ends its chunks at
    the same places: they are the same rows. None means the items needed to
    decide are not there yet; they stay in the tail for now.

    Sizes are zlib's: a writer whose zlib compresses differently may end
    chunks elsewhere, which stores those items again but reads the same.
    """
    if len(encoded) - start < CHUNK_ITEMS:
        return None
    found = known.find(encoded, start) if known is not None else None
    if found is not None:
        return found
    runs: dict[int, bytes] = {}

    def size(count: int) -> int:
        if count not in runs:
            data = join_items(encoded[start : start + count])
            runs[count] = packing.pack_chunk(data)
        return len(runs[count])

    budget = chunk_budget(size(CHUNK_ITEMS))
    if budget is None:
        return start + CHUNK_ITEMS, runs[CHUNK_ITEMS]
    # `fit` is the longest count known to fit, `over` the shortest known
    # not to (0: none yet); the next guess follows the growth per item
    # between the last two fits, or between `fit` and `over`. Integer
    # arithmetic only, so every writer makes the same guesses.
    low, low_size, fit, over = 0, 0, CHUNK_ITEMS, 0
    while fit < MAX_CHUNK_ITEMS and over != fit + 1:
        if over:
            span, grow = over - fit, size(over) - size(fit)
        else:
            span, grow = fit - low, size(fit) - low_size
        guess = fit + (budget - size(fit)) * span // max(grow, 1)
        guess = max(fit + 1, min(guess, over - 1 if over else MAX_CHUNK_ITEMS))
        if start + guess > len(encoded):
            return None
        if size(guess) <= budget:
            low, low_size, fit = fit, size(fit), guess
        else:
            over = guess
    if known is not None:
        known.add(encoded, start, fit, max(runs), runs[fit])
    return start + fit, runs[fit]


def encode_whole(
    serde: Serializer,
    channel: str,
    version: str,
    kind: str,
    items: Sequence[Any],
    known: KnownEnds | None = None,
) -> tuple[BlobRow, dict[bytes, bytes], Memo]:
    """Return the row, the chunks (by hash) and the memo of a list stored whole."""
    encoded = [serde.dumps(item) for item in items]
    chunks: dict[bytes, bytes] = {}
    hashes: list[bytes] = []
    full = 0
    while (closed := chunk_end(encoded, full, known)) is not None:
        end, stored = closed
        key = digest(join_items(encoded[full:end]))
        chunks[key] = stored
        hashes.append(key)
        full = end
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
    "MAX_CHUNK_ITEMS",
    "SNAPSHOT",
    "BlobRow",
    "KnownEnds",
    "Memo",
    "chunk_budget",
    "chunk_end",
    "encode_append",
    "encode_whole",
    "list_kind",
    "split_hashes",
    "wrap",
]
