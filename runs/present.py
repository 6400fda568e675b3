"""Turn checkpoint values into what the console shows: a conversation and JSON.

Values come from the savers as the library's objects: messages, tool calls,
and for types the console may not rebuild, inert `OpaqueValue`s. Nothing
here revives or calls anything; every value ends up as plain data that the
templates escape.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import enum
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentmatic.checkpoint.serde import DeltaSnapshot, OpaqueValue
from agentmatic.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolCall,
    ToolMessage,
)
from agentmatic.state import Interrupt, State, Task

ROLES = {
    "human": "User",
    "ai": "Assistant",
    "system": "System",
    "tool": "Tool",
}
# Longest string shown in full in the raw view; longer ones are cut.
MAX_STRING = 20_000
MAX_DEPTH = 40


def jsonable(value: Any, depth: int = 0) -> Any:
    """Return a JSON-ready copy of a stored value; opaque values stay inert."""
    if depth > MAX_DEPTH:
        return {"$truncated": "nested too deeply to show"}
    nested = depth + 1
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            return value[:MAX_STRING] + f"… ({len(value) - MAX_STRING} more characters)"
        return value
    if isinstance(value, OpaqueValue):
        return {
            "$opaque": value.type_name,
            "$note": "a type the console may not rebuild, shown as stored",
            "fields": jsonable(value.fields, nested),
        }
    if isinstance(value, BaseMessage):
        return jsonable(value.to_dict(), nested)
    if isinstance(value, ToolCall):
        return jsonable(value.to_dict(), nested)
    if isinstance(value, DeltaSnapshot):
        return jsonable(value.value, nested)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, nested) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, nested) for v in value]
    if isinstance(value, (set, frozenset)):
        items = [jsonable(v, nested) for v in value]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True, default=str))
    if isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
        return {"$bytes": len(raw), "base64": base64.b64encode(raw[:4096]).decode()}
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return {"$timedelta_seconds": value.total_seconds()}
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, enum.Enum):
        return jsonable(value.value, nested)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            "$type": type(value).__name__,
            **{
                f.name: jsonable(getattr(value, f.name), nested)
                for f in dataclasses.fields(value)
            },
        }
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return {"$type": type(value).__name__, **jsonable(dump(mode="json"), nested)}
    return {"$repr": repr(value)[:MAX_STRING]}


def to_json(value: Any) -> str:
    """Return indented JSON of a stored value, for the raw view."""
    return json.dumps(jsonable(value), indent=2, ensure_ascii=False, sort_keys=False)


# -- the conversation ---------------------------------------------------------


@dataclass
class ToolCard:
    """A proposed call and, once it ran, its result."""

    call: ToolCall
    args: list[tuple[str, str]]
    result: ToolMessage | None = None
    pending: bool = False
    decision: dict[str, Any] | None = None

    @property
    def failed(self) -> bool:
        return self.result is not None and self.result.status == "error"


@dataclass
class Turn:
    """One message of the conversation, as shown."""

    role: str
    kind: str
    text: str
    message_id: str
    name: str = ""
    cards: list[ToolCard] = field(default_factory=list)
    raw: str = ""


def conversation(state: State) -> list[Turn]:
    """Return the state's messages as turns; tool results sit in their call's card."""
    messages: Sequence[Any] = state.values.get("messages") or []
    if not isinstance(messages, (list, tuple)):
        messages = [messages]
    results = {
        m.tool_call_id: m
        for m in messages
        if isinstance(m, ToolMessage) and m.tool_call_id
    }
    called = {c.id for m in messages if isinstance(m, AIMessage) for c in m.tool_calls}
    pending = {c.id for c in state.pending_tool_calls}
    turns: list[Turn] = []
    for message in messages:
        if isinstance(message, ToolMessage) and message.tool_call_id in called:
            continue
        turns.append(_turn(message, results, pending, state.decisions))
    return turns


def _turn(
    message: Any,
    results: dict[str, ToolMessage],
    pending: set[str],
    decisions: dict[str, dict[str, Any]],
) -> Turn:
    if not isinstance(message, BaseMessage):
        return Turn(
            role="Stored value",
            kind="opaque",
            text="",
            message_id="",
            raw=to_json(message),
        )
    turn = Turn(
        role=ROLES.get(message.type, message.type.title()),
        kind=message.type,
        text=_text(message),
        message_id=message.id or "",
        name=message.name or "",
    )
    if isinstance(message, AIMessage):
        turn.cards = [
            ToolCard(
                call=call,
                args=[(str(k), _short(v)) for k, v in (call.args or {}).items()],
                result=results.get(call.id),
                pending=call.id in pending,
                decision=decisions.get(call.id),
            )
            for call in message.tool_calls
        ]
    return turn


def _text(message: BaseMessage) -> str:
    text = message.text
    if text or isinstance(message.content, str):
        return text
    return to_json(message.content)


def _short(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(jsonable(value), ensure_ascii=False)


def first_system_message(state: State) -> SystemMessage | None:
    """Return the conversation's first system message, or None."""
    for message in state.values.get("messages") or []:
        if isinstance(message, SystemMessage):
            return message
        if isinstance(message, HumanMessage):
            return None
    return None


# -- tasks and interrupts -------------------------------------------------------


def task_rows(state: State) -> list[dict[str, Any]]:
    """Return the pending tasks of a state as plain rows."""
    return [_task(task) for task in state.tasks]


def _task(task: Task) -> dict[str, Any]:
    return {
        "id": task.id,
        "name": task.name,
        "tool_call": jsonable(task.tool_call) if task.tool_call else None,
        "error": task.error,
        "done": task.done,
        "interrupts": [interrupt_row(i) for i in task.interrupts],
    }


def interrupt_row(interrupt: Interrupt) -> dict[str, Any]:
    return {"id": interrupt.id, "value": jsonable(interrupt.value)}


def state_json(state: State, *, with_values: bool = True) -> dict[str, Any]:
    """Return a state as the API and the raw view present it."""
    out: dict[str, Any] = {
        "thread_id": state.thread_id,
        "checkpoint_id": state.checkpoint_id,
        "parent_checkpoint_id": state.parent_checkpoint_id,
        "step": state.step,
        "source": state.source,
        "created_at": state.created_at,
        "next": list(state.next),
        "metadata": jsonable(state.metadata),
        "pending_tool_calls": [jsonable(c) for c in state.pending_tool_calls],
        "tasks": task_rows(state),
        "interrupts": [interrupt_row(i) for i in state.interrupts],
        "decisions": jsonable(state.decisions),
    }
    if with_values:
        out["values"] = jsonable(state.values)
    return out
