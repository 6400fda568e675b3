"""Checkpoint ids: version-6 UUIDs that sort by time and are unique across processes.

The layout is RFC 9562's UUIDv6 (the one LangGraph writes): a 60-bit count
of 100 ns intervals first, so ids compare in time order as strings. Within a
process the timestamp never repeats or goes back; across processes the 62
random bits of clock sequence and node keep ids apart.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
import uuid

_GREGORIAN_OFFSET = 0x01B21DD213814000  # 100 ns ticks from 1582-10-15 to 1970
_TASK_NAMESPACE = uuid.UUID("6f0d3c1e-9a52-4c8e-b1a7-2f6f1d8e4a10").bytes
# SHA-1 over the namespace, copied for each task id (uuid5 is SHA-1 by spec).
_TASK_HASH = hashlib.sha1(_TASK_NAMESPACE)  # noqa: S324
_lock = threading.Lock()
_last_ticks = 0


def checkpoint_id(after: str | None = None) -> str:
    """Return a new checkpoint id, greater than every id this process made.

    With `after`, the id is also greater than that one, so a checkpoint always
    sorts after its parent even when this host's clock is behind the host
    that wrote the parent.
    """
    global _last_ticks
    floor = _ticks_of(after) if after else 0
    with _lock:
        ticks = time.time_ns() // 100 + _GREGORIAN_OFFSET
        ticks = max(ticks, _last_ticks + 1, floor + 1)
        _last_ticks = ticks
    time_high = (ticks >> 12) & 0xFFFF_FFFF_FFFF
    time_low = ticks & 0x0FFF
    rand = secrets.randbits(62)
    value = (time_high << 80) | (0x6 << 76) | (time_low << 64) | (0b10 << 62) | rand
    return str(uuid.UUID(int=value))


def _ticks_of(checkpoint_id: str) -> int:
    try:
        value = uuid.UUID(checkpoint_id).int
    except ValueError:
        return 0
    if (value >> 76) & 0xF != 6:
        return 0
    return ((value >> 80) << 12) | ((value >> 64) & 0x0FFF)


def checkpoint_time_ns(checkpoint_id: str) -> int:
    """Return the Unix time in ns encoded in a UUIDv6 checkpoint id."""
    return (_ticks_of(checkpoint_id) - _GREGORIAN_OFFSET) * 100


def task_id(checkpoint_id: str, node: str, tool_call_id: str | None) -> str:
    """Return the id of a task, the same in every process for the same task.

    It is ``uuid5(namespace, "<checkpoint>|<node>|<call>")``, built from the
    digest directly: a timeline computes one for every task it shows.
    """
    digest = _TASK_HASH.copy()
    digest.update(f"{checkpoint_id}|{node}|{tool_call_id or ''}".encode())
    raw = bytearray(digest.digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50  # version 5
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
