"""What a timeline needs of a checkpoint, kept beside it by RedisSaver and S3Saver.

A history without values shows each checkpoint's metadata, the nodes it
runs next, the tool calls waiting and its interrupts and decisions. Those
come from a small summary written with the checkpoint and one per write,
so reading them decodes no checkpoint and no message:

- a checkpoint's summary holds its versions, the trigger channels and
  queued packets (what `next_nodes` reads) and, when it stores the message
  log whole, the tail of that log from the last AI or human message on;
- a write's summary holds its channel, its value when a timeline shows it
  (interrupts, decisions, errors) and, for messages, only what finding an
  unanswered tool call needs.

The tool calls waiting at a checkpoint come from its own tail or, in the
delta format, from the messages its parent's tasks wrote.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ormsgpack

from agentmatic.checkpoint.base import (
    DECISION,
    ERROR,
    INTERRUPT,
    TASKS,
    CheckpointTuple,
    PendingWrite,
    thread_config,
)
from agentmatic.checkpoint.reading import build_state, trigger_target
from agentmatic.checkpoint.serde import DeltaSnapshot, Serializer
from agentmatic.errors import CorruptCheckpoint, SerializationError
from agentmatic.messages import (
    LANGCHAIN_NAMES,
    AIMessage,
    BaseMessage,
    HumanMessage,
    ToolCall,
    ToolMessage,
)
from agentmatic.state import State

MESSAGES = "messages"
# Writes whose values a timeline shows; every other write is only listed.
TIMELINE = frozenset({INTERRUPT, DECISION, ERROR})

# A write's summary: [task_id, idx, channel, task_path, value blob, messages].
WriteSummary = list[Any]


def summarize_checkpoint(serde: Serializer, checkpoint: dict[str, Any]) -> dict:
    """Return the summary of a checkpoint a timeline reads instead of it."""
    values = checkpoint.get("channel_values") or {}
    triggers = {
        ch: value
        for ch, value in values.items()
        if ch == TASKS or trigger_target(ch) is not None
    }
    stored = values.get(MESSAGES)
    if isinstance(stored, DeltaSnapshot):
        stored = stored.value
    sends = checkpoint.get("pending_sends")
    return {
        "v": checkpoint.get("v"),
        "versions": dict(checkpoint.get("channel_versions") or {}),
        "seen": {
            k: dict(v) for k, v in (checkpoint.get("versions_seen") or {}).items()
        },
        "trig": list(serde.dumps_typed(triggers)),
        "sends": list(serde.dumps_typed(sends)) if sends else None,
        "tail": summarize_messages(_tail(stored)) if isinstance(stored, list) else None,
    }


def summarize_write(
    task_id: str,
    idx: int,
    channel: str,
    task_path: str,
    blob: Sequence[Any],
    value: Any,
) -> WriteSummary:
    """Return the summary of one write (`blob` is its stored ``(tag, bytes)``)."""
    return [
        task_id,
        idx,
        channel,
        task_path,
        list(blob) if channel in TIMELINE else None,
        summarize_messages(value) if channel == MESSAGES else None,
    ]


def summarize_messages(value: Any) -> list[list[Any]]:
    """Return what finding waiting tool calls needs of written messages."""
    items = value if isinstance(value, (list, tuple)) else [value]
    out: list[list[Any]] = []
    for item in items:
        fields = item if isinstance(item, dict) else None
        kind = (
            (fields.get("type") or fields.get("role"))
            if fields
            else getattr(item, "type", None)
        )
        if kind in ("ai", "assistant"):
            calls = (
                fields.get("tool_calls")
                if fields
                else getattr(item, "tool_calls", None)
            )
            out.append(["ai", [ToolCall.from_any(c).to_dict() for c in calls or []]])
        elif kind == "tool":
            call_id = (
                fields.get("tool_call_id")
                if fields
                else getattr(item, "tool_call_id", None)
            )
            out.append(["tool", str(call_id)])
        elif kind in ("human", "user"):
            out.append(["human"])
    return out


def _tail(messages: list[Any]) -> list[Any]:
    """Return the messages from the last AI or human one on (all calls need)."""
    for i in range(len(messages) - 1, -1, -1):
        if getattr(messages[i], "type", None) in ("ai", "human"):
            return messages[i:]
    return []


def minimal_messages(summary: Sequence[Sequence[Any]]) -> list[BaseMessage]:
    """Rebuild stand-in messages from a summary: enough to find waiting calls."""
    out: list[BaseMessage] = []
    for item in summary:
        if item[0] == "ai":
            calls = [ToolCall.from_any(c) for c in item[1]]
            out.append(AIMessage(content="", tool_calls=calls))
        elif item[0] == "tool":
            out.append(ToolMessage(content="", tool_call_id=str(item[1])))
        elif item[0] == "human":
            out.append(HumanMessage(content=""))
    return out


def minimal_from_msgpack(data: bytes) -> list[BaseMessage] | None:
    """Return stand-in messages for messages stored as msgpack, or None.

    Only the fields of LangChain's message classes are read (no class is
    rebuilt), so this is quick and safe on any input; None, for anything
    else, means "decode it the usual way".
    """
    try:
        value = ormsgpack.unpackb(data, ext_hook=_ext_message)
    except Exception:
        return None
    out: list[BaseMessage] = []
    for item in value if isinstance(value, list) else [value]:
        if not isinstance(item, _Fields):
            return None
        if item.cls is AIMessage:
            calls = item.fields.get("tool_calls") or []
            if not isinstance(calls, list) or not all(
                isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls
            ):
                return None
            out.append(
                AIMessage(content="", tool_calls=[ToolCall.from_any(c) for c in calls])
            )
        elif item.cls is ToolMessage:
            call_id = item.fields.get("tool_call_id")
            out.append(ToolMessage(content="", tool_call_id=str(call_id)))
        elif item.cls is HumanMessage:
            out.append(HumanMessage(content=""))
    return out


class _Fields:
    """A LangChain message's class and fields, read from its extension."""

    __slots__ = ("cls", "fields")

    def __init__(self, cls: type[BaseMessage], fields: dict[str, Any]) -> None:
        self.cls = cls
        self.fields = fields


def _ext_message(code: int, data: bytes) -> Any:
    parts = ormsgpack.unpackb(data)
    if (
        isinstance(parts, list)
        and len(parts) >= 3
        and parts[0] in _MESSAGE_MODULES
        and isinstance(parts[2], dict)
    ):
        cls = LANGCHAIN_NAMES.get(parts[1])
        if cls is not None:
            return _Fields(cls, parts[2])
    raise ValueError("not a message")


_MESSAGE_MODULES = frozenset(
    f"langchain_core.messages.{m}" for m in ("ai", "human", "system", "tool")
)


def sorted_writes(writes: Sequence[WriteSummary]) -> list[WriteSummary]:
    """Return write summaries in the order the writes apply."""
    return sorted(writes, key=lambda w: (str(w[3]), str(w[0]), int(w[1])))


def waiting_messages(
    light: dict[str, Any], parent_writes: Sequence[WriteSummary] | None
) -> list[BaseMessage]:
    """Return stand-in messages holding the calls that may wait at a checkpoint."""
    if light.get("tail") is not None:
        return minimal_messages(light["tail"])
    messages: list[BaseMessage] = []
    for write in sorted_writes(parent_writes or []):
        if write[2] == MESSAGES and write[5]:
            messages.extend(minimal_messages(write[5]))
    return messages


def light_state(
    serde: Serializer,
    thread_id: str,
    ns: str,
    entry: dict[str, Any],
    metadata: dict[str, Any],
    parent_writes: Sequence[WriteSummary] | None,
) -> State:
    """Return a checkpoint's `State` without values, from its summaries.

    `entry` holds ``id``, ``parent``, ``ts``, ``light`` (a checkpoint
    summary, maybe with precomputed ``calls``) and ``writes`` (summaries);
    `parent_writes` are the parent's write summaries, when the calls waiting
    must be found in them. `serde` should be a display serializer.
    """
    light = entry["light"]
    try:
        values = dict(
            serde.loads_typed(tuple(light["trig"]), thread_id=thread_id) or {}
        )
        sends = (
            serde.loads_typed(tuple(light["sends"]), thread_id=thread_id)
            if light.get("sends")
            else None
        )
        pending: list[PendingWrite] = [
            (
                write[0],
                write[2],
                serde.loads_typed(tuple(write[4]), thread_id=thread_id)
                if write[4] is not None
                else None,
            )
            for write in sorted_writes(entry["writes"])
        ]
    except (SerializationError, ValueError, TypeError) as exc:
        raise CorruptCheckpoint(thread_id, entry["id"], str(exc)) from exc
    if "calls" in light:
        if light["calls"]:
            calls = [ToolCall.from_any(c) for c in light["calls"]]
            values[MESSAGES] = [AIMessage(content="", tool_calls=calls)]
    else:
        values[MESSAGES] = waiting_messages(light, parent_writes)
    checkpoint: dict[str, Any] = {
        "v": light.get("v"),
        "id": entry["id"],
        "ts": entry["ts"],
        "channel_values": values,
        "channel_versions": light.get("versions") or {},
        "versions_seen": light.get("seen") or {},
    }
    if sends:
        checkpoint["pending_sends"] = sends
    parent = entry.get("parent")
    tup = CheckpointTuple(
        config=thread_config(thread_id, entry["id"], ns),
        checkpoint=checkpoint,
        metadata=metadata,
        parent_config=thread_config(thread_id, parent, ns) if parent else None,
        pending_writes=pending,
    )
    return build_state(tup, values=None)


def pending_calls(
    checkpoint: dict[str, Any],
    metadata: dict[str, Any],
    light: dict[str, Any],
    parent_writes: Sequence[WriteSummary] | None,
) -> list[dict[str, Any]]:
    """Return the calls waiting at a checkpoint about to be stored, as dicts."""
    values = dict(checkpoint.get("channel_values") or {})
    values[MESSAGES] = waiting_messages(light, parent_writes)
    tup = CheckpointTuple(
        config=thread_config("-", str(checkpoint["id"])),
        checkpoint={**checkpoint, "channel_values": values},
        metadata=metadata,
        parent_config=None,
        pending_writes=[],
    )
    return [c.to_dict() for c in build_state(tup, values=None).pending_tool_calls]


__all__ = [
    "TIMELINE",
    "WriteSummary",
    "light_state",
    "minimal_messages",
    "pending_calls",
    "sorted_writes",
    "summarize_checkpoint",
    "summarize_messages",
    "summarize_write",
    "waiting_messages",
]
