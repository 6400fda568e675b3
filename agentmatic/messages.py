"""Chat messages, shaped field for field like LangChain's message classes.

The serializer writes them under LangChain's module and class names, so a
LangGraph process reads our messages as its own and we read its messages as
ours. Only the fields LangChain has are kept.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar


@dataclass
class ToolCall:
    """One call the model proposed: the tool's `name`, its `args` and an `id`."""

    name: str
    args: dict[str, Any]
    id: str
    type: str = "tool_call"

    # Dict-style access, so code written against LangChain's TypedDict works.
    def __getitem__(self, key: str) -> Any:
        if key not in ("name", "args", "id", "type"):
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "args": self.args, "id": self.id, "type": self.type}

    @classmethod
    def from_any(cls, raw: ToolCall | dict[str, Any]) -> ToolCall:
        if isinstance(raw, ToolCall):
            return raw
        return cls(
            name=raw["name"],
            args=dict(raw.get("args") or {}),
            id=raw.get("id") or "",
            type=raw.get("type") or "tool_call",
        )


@dataclass
class BaseMessage:
    content: Any = ""
    additional_kwargs: dict[str, Any] = field(default_factory=dict)
    response_metadata: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    id: str | None = None

    type: ClassVar[str] = "base"
    # Where LangChain keeps the class; the serializer writes these names.
    lc_module: ClassVar[str] = ""
    lc_name: ClassVar[str] = ""

    @property
    def text(self) -> str:
        """Return the content as plain text (LangChain's list content joined)."""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for block in self.content or []:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and block.get("type") == "text":
                parts.append(str(block.get("text", "")))
        return "".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """Return the fields in LangChain's `model_dump()` order and shape."""
        out: dict[str, Any] = {
            "content": self.content,
            "additional_kwargs": self.additional_kwargs,
            "response_metadata": self.response_metadata,
            "type": self.type,
            "name": self.name,
            "id": self.id,
        }
        out.update(self._extra_dict())
        return out

    def _extra_dict(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BaseMessage:
        """Build a message from LangChain's field dict; unknown keys are dropped."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        return cls(**kwargs)

    def with_id(self) -> BaseMessage:
        if self.id is None:
            self.id = str(uuid.uuid4())
        return self


@dataclass
class HumanMessage(BaseMessage):
    type: ClassVar[str] = "human"
    lc_module: ClassVar[str] = "langchain_core.messages.human"
    lc_name: ClassVar[str] = "HumanMessage"


@dataclass
class SystemMessage(BaseMessage):
    type: ClassVar[str] = "system"
    lc_module: ClassVar[str] = "langchain_core.messages.system"
    lc_name: ClassVar[str] = "SystemMessage"


@dataclass
class AIMessage(BaseMessage):
    tool_calls: list[ToolCall] = field(default_factory=list)
    invalid_tool_calls: list[dict[str, Any]] = field(default_factory=list)
    usage_metadata: dict[str, Any] | None = None

    type: ClassVar[str] = "ai"
    lc_module: ClassVar[str] = "langchain_core.messages.ai"
    lc_name: ClassVar[str] = "AIMessage"

    def __post_init__(self) -> None:
        self.tool_calls = [ToolCall.from_any(tc) for tc in self.tool_calls or []]

    def _extra_dict(self) -> dict[str, Any]:
        return {
            "tool_calls": [tc.to_dict() for tc in self.tool_calls],
            "invalid_tool_calls": self.invalid_tool_calls,
            "usage_metadata": self.usage_metadata,
        }


@dataclass
class ToolMessage(BaseMessage):
    tool_call_id: str = ""
    artifact: Any = None
    status: str = "success"

    type: ClassVar[str] = "tool"
    lc_module: ClassVar[str] = "langchain_core.messages.tool"
    lc_name: ClassVar[str] = "ToolMessage"

    def _extra_dict(self) -> dict[str, Any]:
        return {
            "tool_call_id": self.tool_call_id,
            "artifact": self.artifact,
            "status": self.status,
        }


MESSAGE_CLASSES: dict[str, type[BaseMessage]] = {
    cls.type: cls for cls in (HumanMessage, SystemMessage, AIMessage, ToolMessage)
}
# LangChain's chunk classes (streaming) read back as the plain class.
LANGCHAIN_NAMES: dict[str, type[BaseMessage]] = {
    name: cls
    for cls in (HumanMessage, SystemMessage, AIMessage, ToolMessage)
    for name in (cls.lc_name, cls.lc_name.replace("Message", "MessageChunk"))
}

_ROLE_ALIASES = {"user": "human", "assistant": "ai", "developer": "system"}


def coerce_message(value: Any) -> BaseMessage:
    """Turn a message, a `(role, text)` pair, a role dict or a string into one."""
    if isinstance(value, BaseMessage):
        return value
    if isinstance(value, str):
        return HumanMessage(content=value)
    if isinstance(value, tuple) and len(value) == 2:
        role, content = value
        return _from_role(str(role), {"content": content})
    if isinstance(value, dict):
        role = value.get("type") or value.get("role") or "human"
        return _from_role(str(role), value)
    raise TypeError(f"cannot make a message out of {type(value).__name__}")


def _from_role(role: str, data: dict[str, Any]) -> BaseMessage:
    kind = _ROLE_ALIASES.get(role, role)
    cls = MESSAGE_CLASSES.get(kind)
    if cls is None:
        raise ValueError(f"unknown message role {role!r}")
    return cls.from_dict({k: v for k, v in data.items() if k not in ("type", "role")})


class RemoveMessage:
    """A write that removes the message with `id` from the messages channel."""

    def __init__(self, id: str) -> None:
        self.id = id


def add_messages(
    left: Sequence[BaseMessage], right: Iterable[Any] | BaseMessage
) -> list[BaseMessage]:
    """Append messages; one whose id is already present replaces that message.

    New messages without an id get one, so a later write can replace them.
    """
    if isinstance(right, (BaseMessage, str, dict, RemoveMessage)):
        right = [right]
    merged = list(left)
    index = {m.id: i for i, m in enumerate(merged) if m.id is not None}
    removed: set[str] = set()
    for raw in right:
        if isinstance(raw, RemoveMessage):
            removed.add(raw.id)
            continue
        msg = coerce_message(raw).with_id()
        assert msg.id is not None
        if msg.id in index:
            merged[index[msg.id]] = msg
            removed.discard(msg.id)
        else:
            index[msg.id] = len(merged)
            merged.append(msg)
    if removed:
        merged = [m for m in merged if m.id not in removed]
    return merged


def unanswered_tool_calls(messages: Sequence[BaseMessage]) -> list[ToolCall]:
    """Return the last AI message's tool calls that no tool message answers."""
    for i in range(len(messages) - 1, -1, -1):
        msg = messages[i]
        if isinstance(msg, AIMessage):
            answered = {
                m.tool_call_id for m in messages[i + 1 :] if isinstance(m, ToolMessage)
            }
            return [tc for tc in msg.tool_calls if tc.id not in answered]
        if isinstance(msg, HumanMessage):
            return []
    return []


def iter_tool_calls(messages: Sequence[BaseMessage]) -> Iterator[ToolCall]:
    for msg in messages:
        if isinstance(msg, AIMessage):
            yield from msg.tool_calls


class MessageLog:
    """The live message list with an id index, updated in place per write."""

    def __init__(self, messages: Sequence[BaseMessage] = ()) -> None:
        self.items: list[BaseMessage] = list(messages)
        self.index = {m.id: i for i, m in enumerate(self.items) if m.id is not None}

    def apply(self, writes: Sequence[Any]) -> None:
        removed: set[str] = set()
        for raw in writes:
            batch = raw if isinstance(raw, (list, tuple)) else [raw]
            for item in batch:
                if isinstance(item, RemoveMessage):
                    removed.add(item.id)
                    continue
                msg = coerce_message(item).with_id()
                assert msg.id is not None
                pos = self.index.get(msg.id)
                if pos is None:
                    self.index[msg.id] = len(self.items)
                    self.items.append(msg)
                else:
                    self.items[pos] = msg
        if removed:
            self.items = [m for m in self.items if m.id not in removed]
            self.index = {m.id: i for i, m in enumerate(self.items) if m.id}
