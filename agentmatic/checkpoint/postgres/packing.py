"""Compression of stored values: raw deflate with a preset dictionary.

Checkpoints, writes and list chunks are small msgpack records full of the
same names (message classes, field names, channel names, zero-padded
versions). Deflate alone gains little on a 600-byte record; primed with a
dictionary of those names it removes most of them. A value is stored
compressed only when that saves at least `MIN_SAVING` of it.

A compressed typed value carries `SUFFIX` after its serializer tag
(``msgpack+zd1``); a compressed chunk starts with the byte `CHUNK_MARK`,
which no msgpack array starts with.

`_DICTIONARY_V1` is part of the storage format: it never changes. A better
one becomes ``zd2``, with its own suffix, and both stay readable.
"""

from __future__ import annotations

import zlib

from agentmatic.errors import SerializationError

SUFFIX = "+zd1"
CHUNK_MARK = b"\x01"
MIN_BYTES = 96
MIN_SAVING = 0.1
_LEVEL = 6

# Strings that recur in stored records, most frequent last (deflate reaches
# the end of its dictionary with the shortest distances).
_WORDS_V1 = (
    "langchain_core.messages.system",
    "SystemMessage",
    "system",
    "langchain_core.messages.human",
    "HumanMessage",
    "human",
    "invalid_tool_calls",
    "usage_metadata",
    "artifact",
    "status",
    "success",
    "error",
    "tool_call_id",
    "langchain_core.messages.tool",
    "ToolMessage",
    "langchain_core.messages.ai",
    "AIMessage",
    "tool_calls",
    "tool_call",
    "args",
    "additional_kwargs",
    "response_metadata",
    "model_validate_json",
    "content",
    "type",
    "name",
    "id",
    "call_",
    "langgraph.types",
    "Interrupt",
    "Send",
    "value",
    "__interrupt__",
    "__decision__",
    "__error__",
    "__pregel_tasks",
    "counters_since_delta_snapshot",
    "updated_channels",
    "versions_seen",
    "channel_versions",
    "channel_values",
    "__input__",
    "__start__",
    "branch:to:",
    "messages",
    "agent",
    "tools",
    "ts",
    "v",
    "00000000000000000000000000000",
)


def _msgpack_str(text: str) -> bytes:
    """Return `text` as msgpack writes a string (the format's fixed rule)."""
    raw = text.encode()
    if len(raw) < 32:
        return bytes([0xA0 | len(raw)]) + raw
    return b"\xd9" + bytes([len(raw)]) + raw


_DICTIONARY_V1 = b"".join(_msgpack_str(w) for w in _WORDS_V1)


def compress(data: bytes) -> bytes | None:
    """Return `data` compressed, or None when that is not worth it."""
    if len(data) < MIN_BYTES:
        return None
    packer = zlib.compressobj(
        _LEVEL, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, _DICTIONARY_V1
    )
    out = packer.compress(data) + packer.flush()
    if len(out) > len(data) * (1 - MIN_SAVING):
        return None
    return out


def decompress(data: bytes) -> bytes:
    """Return what `compress` was given; raise `SerializationError` if damaged."""
    unpacker = zlib.decompressobj(-15, _DICTIONARY_V1)
    try:
        out = unpacker.decompress(data) + unpacker.flush()
    except zlib.error as exc:
        raise SerializationError(f"compressed value is damaged ({exc})") from None
    if not unpacker.eof:
        raise SerializationError("compressed value is truncated")
    return out


def pack_typed(tag: str, data: bytes) -> tuple[str, bytes]:
    """Return a serializer pair as stored: compressed when that pays."""
    small = compress(data)
    if small is None:
        return tag, data
    return tag + SUFFIX, small


def base_tag(tag: str) -> str:
    """Return the serializer tag of a stored pair, without our suffix."""
    return tag[: -len(SUFFIX)] if tag.endswith(SUFFIX) else tag


def unpack_typed(tag: str, data: bytes) -> tuple[str, bytes]:
    """Return the serializer pair a stored pair holds."""
    if tag.endswith(SUFFIX):
        return tag[: -len(SUFFIX)], decompress(data)
    return tag, data


def pack_chunk(data: bytes) -> bytes:
    small = compress(data)
    return data if small is None else CHUNK_MARK + small


def unpack_chunk(data: bytes) -> bytes:
    if data[:1] == CHUNK_MARK:
        return decompress(data[1:])
    return data


__all__ = [
    "SUFFIX",
    "compress",
    "decompress",
    "pack_chunk",
    "pack_typed",
    "unpack_chunk",
    "unpack_typed",
]
