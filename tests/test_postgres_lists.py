"""How the PostgresSaver cuts a list into chunks (no database needed).

Chunks are content-addressed, so what matters is where they end: by their
stored size (half a heap page, or a page), the same wherever the list stops.
"""

from __future__ import annotations

import random

from agentmatic import AIMessage, HumanMessage
from agentmatic.checkpoint.postgres import lists, packing
from agentmatic.checkpoint.serde import Serializer

SERDE = Serializer()


def messages(count: int, size: int, seed: int = 1) -> list:
    """Return messages of about `size` bytes of text that compresses ~2x."""
    rng = random.Random(seed)
    words = [
        "".join(rng.choices("abcdefghij", k=rng.randint(2, 8))) for _ in range(400)
    ]
    out: list = []
    for i in range(count):
        text = " ".join(rng.choices(words, k=max(1, rng.randint(size // 2, size) // 6)))
        kind = HumanMessage if i % 2 == 0 else AIMessage
        out.append(kind(text, id=f"m{seed}-{i}"))
    return out


def chunk_runs(
    items: list, known: lists.KnownEnds | None = None
) -> list[tuple[int, int]]:
    """Return the (start, end) of each chunk `encode_whole` stores for `items`."""
    encoded = [SERDE.dumps(item) for item in items]
    row, chunks, _memo = lists.encode_whole(SERDE, "m", "1", lists.LIST, items, known)
    runs: list[tuple[int, int]] = []
    start = 0
    for key in lists.split_hashes(row.chunks):
        data = packing.unpack_chunk(chunks[key])
        end = start + 1
        while lists.join_items(encoded[start:end]) != data:
            end += 1
            assert end <= len(encoded), "a chunk is not a run of the list's items"
        runs.append((start, end))
        start = end
    return runs


def stored(items: list) -> int:
    data = lists.join_items([SERDE.dumps(item) for item in items])
    return len(packing.pack_chunk(data))


def test_small_messages_fill_half_a_page_per_chunk():
    items = messages(400, 300)
    half = lists.row_share(2)
    runs = chunk_runs(items)
    assert len(runs) >= 4
    for start, end in runs:
        assert lists.CHUNK_ITEMS < end - start <= lists.MAX_CHUNK_ITEMS
        # It fits, and it took every item that fits: one more would not.
        assert stored(items[start:end]) <= half
        assert stored(items[start : end + 1]) > half


def test_chunks_end_at_the_same_places_as_the_list_grows():
    # Small, large and mixed sizes, so every budget and the TOAST case occur.
    rng = random.Random(5)
    items = [
        *messages(150, 200, seed=2),
        *messages(60, 2500, seed=3),
        *[m for pair in zip(messages(80, 150, 4), messages(80, 1500, 6)) for m in pair],
    ]
    rng.shuffle(items[150:])
    whole = chunk_runs(items)
    assert len(whole) >= 10
    known = lists.KnownEnds()
    for count in range(0, len(items) + 1, 7):
        runs = chunk_runs(items[:count])
        # An earlier, shorter version's chunks are the longer one's chunks.
        assert runs == whole[: len(runs)]
        # Ends remembered from the shorter versions change nothing.
        assert chunk_runs(items[:count], known) == runs
        # What is not in a chunk yet (the tail) stays short.
        left = count - (runs[-1][1] if runs else 0)
        assert left < 2 * lists.MAX_CHUNK_ITEMS


def test_large_messages_keep_eight_item_chunks():
    # Eight of these pass a page: the chunk goes to TOAST, and a longer one
    # would only make the tail longer. The rows are the ones stored before.
    items = messages(40, 6000, seed=7)
    runs = chunk_runs(items)
    assert runs == [(i, i + 8) for i in range(0, 40, 8)]
    assert stored(items[:8]) > lists.row_share(1)


def test_a_version_never_takes_more_chunk_rows_than_eight_item_chunks():
    for size in (60, 300, 1200, 5000):
        items = messages(300, size, seed=size)
        assert len(chunk_runs(items)) <= len(items) // lists.CHUNK_ITEMS


def test_a_remembered_end_is_not_taken_for_other_items():
    items = messages(200, 300, seed=8)
    known = lists.KnownEnds()
    first = chunk_runs(items, known)
    # Same first items, then others: the first chunk may end elsewhere.
    changed = items[:10] + messages(190, 40, seed=9)
    assert chunk_runs(changed, known) == chunk_runs(changed)
    assert chunk_runs(items, known) == first


def test_remembered_chunks_are_the_stored_bytes_within_a_byte_bound():
    items = messages(400, 300, seed=10)
    known = lists.KnownEnds(max_bytes=12_000)
    first = chunk_runs(items, known)  # chunk_runs checks each chunk's items
    assert 0 < known.held_bytes <= 12_000
    assert chunk_runs(items, known) == first == chunk_runs(items)


def test_many_tiny_messages_stop_at_the_item_bound():
    items = [HumanMessage("ok", id=f"t{i}") for i in range(300)]
    runs = chunk_runs(items)
    assert runs[0] == (0, lists.MAX_CHUNK_ITEMS)
    assert all(end - start == lists.MAX_CHUNK_ITEMS for start, end in runs)
