"""What a reader sees of one checkpoint: `State`, and of one thread: `ThreadInfo`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agentmatic.messages import ToolCall

Config = dict[str, Any]


@dataclass(frozen=True)
class Interrupt:
    """Why a run paused: the gated call and the rule that stopped it."""

    value: Any
    id: str = ""


@dataclass(frozen=True)
class Task:
    """A task scheduled at a checkpoint: the node to run and, for a tool, its call."""

    id: str
    name: str
    tool_call: ToolCall | None = None
    error: str | None = None
    interrupts: tuple[Interrupt, ...] = ()
    # The task's writes are saved: it finished and will not run again.
    done: bool = False


@dataclass(frozen=True)
class State:
    """One checkpoint of a thread as a reader sees it.

    `values` is empty when the state was read with `values=False`.
    """

    values: dict[str, Any]
    next: tuple[str, ...]
    config: Config
    metadata: dict[str, Any]
    created_at: str | None
    parent_config: Config | None
    tasks: tuple[Task, ...] = ()
    interrupts: tuple[Interrupt, ...] = ()
    pending_tool_calls: tuple[ToolCall, ...] = ()
    # Decisions recorded on this checkpoint, by tool call id.
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def thread_id(self) -> str:
        return str(self.config["configurable"]["thread_id"])

    @property
    def checkpoint_id(self) -> str:
        return str(self.config["configurable"]["checkpoint_id"])

    @property
    def checkpoint_ns(self) -> str:
        return str(self.config["configurable"].get("checkpoint_ns", ""))

    @property
    def parent_checkpoint_id(self) -> str | None:
        if not self.parent_config:
            return None
        return self.parent_config["configurable"].get("checkpoint_id")

    @property
    def next_tool_call(self) -> ToolCall | None:
        """Return the first pending call in the model's order, or None."""
        return self.pending_tool_calls[0] if self.pending_tool_calls else None

    @property
    def step(self) -> int:
        return int(self.metadata.get("step", -1))

    @property
    def source(self) -> str:
        return str(self.metadata.get("source", ""))

    @property
    def created(self) -> datetime | None:
        return datetime.fromisoformat(self.created_at) if self.created_at else None

    @property
    def messages(self) -> list[Any]:
        return list(self.values.get("messages", []))


@dataclass(frozen=True)
class ThreadInfo:
    """One line of `list_threads`: a thread and its newest checkpoint."""

    thread_id: str
    checkpoint_id: str
    created_at: str | None
    updated_at: str | None
    step: int
    source: str
    next: tuple[str, ...]
    agent: str | None = None
    started_by: str | None = None
    checkpoints: int | None = None
    forked_from: dict[str, str] | None = None


@dataclass(frozen=True)
class ThreadPage:
    """A page of `list_threads`; pass `next_cursor` back to get the next page."""

    threads: list[ThreadInfo]
    next_cursor: str | None
