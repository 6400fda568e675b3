"""LangGraphSaver: any Agentmatic saver as a LangGraph checkpointer.

LangGraph hands its own objects to a checkpointer (LangChain messages,
`langgraph.types.Send` and `Interrupt`, delta-channel snapshots) and expects
them back. Our savers store them in LangGraph's wire format already, so the
wrapper changes nothing on the way in except LangGraph's snapshot marker,
and on the way out turns the objects our serializer rebuilds (our messages,
`Send`, `Interrupt`, `DeltaSnapshot`, `ToolCall`) into LangGraph's and
LangChain's classes. Values nested inside other classes are left as they are.

Importing this module imports LangGraph; nothing else in Agentmatic does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core import messages as lc
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
)
from langgraph.checkpoint.base import CheckpointTuple as LGCheckpointTuple
from langgraph.checkpoint.serde.types import _DeltaSnapshot
from langgraph.types import Interrupt as LGInterrupt
from langgraph.types import Send as LGSend

from agentmatic.checkpoint.base import BaseSaver, CheckpointTuple
from agentmatic.checkpoint.serde import DeltaSnapshot, Interrupt, Send, TimeoutPolicy
from agentmatic.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    RemoveMessage,
    SystemMessage,
    ToolCall,
    ToolMessage,
)

_LANGCHAIN_CLASSES: dict[type[BaseMessage], type[lc.BaseMessage]] = {
    HumanMessage: lc.HumanMessage,
    AIMessage: lc.AIMessage,
    ToolMessage: lc.ToolMessage,
    SystemMessage: lc.SystemMessage,
}
_SCALARS = (str, int, float, bool, bytes, type(None))


class LangGraphSaver(BaseCheckpointSaver[str]):
    """Wrap an Agentmatic saver so a LangGraph graph can checkpoint to it.

    Every method of LangGraph's `BaseCheckpointSaver` (and its async twin)
    goes to the wrapped saver, including the extended ones LangGraph's own
    savers lack: `delete_for_runs`, `copy_thread` and `prune`.
    """

    def __init__(self, saver: BaseSaver) -> None:
        super().__init__()
        self.saver = saver

    # -- reads -------------------------------------------------------------------------

    def get_tuple(self, config: RunnableConfig) -> LGCheckpointTuple | None:
        """Return the named (or newest) checkpoint in LangGraph's types."""
        tup = self.saver.get_tuple(dict(config))
        return _outgoing(tup) if tup is not None else None

    async def aget_tuple(self, config: RunnableConfig) -> LGCheckpointTuple | None:
        """Async twin of `get_tuple`."""
        tup = await self.saver.aget_tuple(dict(config))
        return _outgoing(tup) if tup is not None else None

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[LGCheckpointTuple]:
        """Yield matching checkpoints newest first, in LangGraph's types."""
        for tup in self.saver.list(
            dict(config) if config is not None else None,
            filter=filter,
            before=dict(before) if before is not None else None,
            limit=limit,
        ):
            yield _outgoing(tup)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[LGCheckpointTuple]:
        """Async twin of `list`."""
        async for tup in self.saver.alist(
            dict(config) if config is not None else None,
            filter=filter,
            before=dict(before) if before is not None else None,
            limit=limit,
        ):
            yield _outgoing(tup)

    # -- writes ------------------------------------------------------------------------

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store a checkpoint; LangGraph's snapshot markers become ours."""
        return self.saver.put(  # type: ignore[return-value]
            dict(config), _incoming(checkpoint), dict(metadata), dict(new_versions)
        )

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Async twin of `put`."""
        return await self.saver.aput(  # type: ignore[return-value]
            dict(config), _incoming(checkpoint), dict(metadata), dict(new_versions)
        )

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store a task's writes against the checkpoint `config` names."""
        self.saver.put_writes(dict(config), writes, task_id, task_path)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Async twin of `put_writes`."""
        await self.saver.aput_writes(dict(config), writes, task_id, task_path)

    def get_next_version(self, current: str | None, channel: None) -> str:
        """Return the version after `current`, in LangGraph's string format."""
        return self.saver.get_next_version(current, channel)

    # -- deletes and copies ------------------------------------------------------------

    def delete_thread(self, thread_id: str) -> None:
        """Delete every checkpoint and write of the thread."""
        self.saver.delete_thread(thread_id)

    async def adelete_thread(self, thread_id: str) -> None:
        """Async twin of `delete_thread`."""
        await self.saver.adelete_thread(thread_id)

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints (and writes) whose metadata run_id is listed."""
        self.saver.delete_for_runs(run_ids)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Async twin of `delete_for_runs`."""
        await self.saver.adelete_for_runs(run_ids)

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint and write of one thread into another."""
        self.saver.copy_thread(source_thread_id, target_thread_id)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Async twin of `copy_thread`."""
        await self.saver.acopy_thread(source_thread_id, target_thread_id)

    def prune(
        self, thread_ids: Sequence[str], *, strategy: str = "keep_latest"
    ) -> None:
        """Keep only each namespace's newest checkpoint, or delete the threads."""
        self.saver.prune(thread_ids, strategy=strategy)  # type: ignore[arg-type]

    async def aprune(
        self, thread_ids: Sequence[str], *, strategy: str = "keep_latest"
    ) -> None:
        """Async twin of `prune`."""
        await self.saver.aprune(thread_ids, strategy=strategy)  # type: ignore[arg-type]


# -- conversions -----------------------------------------------------------------------


def _incoming(checkpoint: Checkpoint) -> dict[str, Any]:
    """Return the checkpoint with LangGraph's snapshot markers replaced by ours.

    Everything else LangGraph stores is written by our serializer exactly as
    LangGraph's would write it; the marker is a tuple msgpack would otherwise
    flatten.
    """
    values = checkpoint.get("channel_values") or {}
    if not any(isinstance(v, _DeltaSnapshot) for v in values.values()):
        return dict(checkpoint)
    converted = {
        k: DeltaSnapshot(v.value) if isinstance(v, _DeltaSnapshot) else v
        for k, v in values.items()
    }
    return {**checkpoint, "channel_values": converted}


def _outgoing(tup: CheckpointTuple) -> LGCheckpointTuple:
    return LGCheckpointTuple(
        config=tup.config,  # type: ignore[arg-type]
        checkpoint=to_langgraph(tup.checkpoint),
        metadata=tup.metadata,  # type: ignore[arg-type]
        parent_config=tup.parent_config,  # type: ignore[arg-type]
        pending_writes=[
            (task_id, channel, to_langgraph(value))
            for task_id, channel, value in tup.pending_writes or []
        ],
    )


def to_langgraph(value: Any) -> Any:
    """Return `value` with our messages and LangGraph types as LangGraph's own."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, BaseMessage):
        return to_langchain_message(value)
    if isinstance(value, dict):
        return {k: to_langgraph(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_langgraph(v) for v in value]
    if isinstance(value, DeltaSnapshot):
        return _DeltaSnapshot(to_langgraph(value.value))
    if isinstance(value, Send):
        return LGSend(
            value.node, to_langgraph(value.arg), timeout=_timeout(value.timeout)
        )
    if isinstance(value, Interrupt):
        return LGInterrupt(value=to_langgraph(value.value), id=value.id)
    if isinstance(value, ToolCall):
        return value.to_dict()
    if isinstance(value, RemoveMessage):
        return lc.RemoveMessage(id=value.id)
    if type(value) is tuple:
        return tuple(to_langgraph(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return type(value)(to_langgraph(v) for v in value)
    return value


def _timeout(policy: TimeoutPolicy | None) -> Any:
    if policy is None:
        return None
    from langgraph.types import TimeoutPolicy as LGTimeoutPolicy

    return LGTimeoutPolicy(
        run_timeout=policy.run_timeout,
        idle_timeout=policy.idle_timeout,
        refresh_on=policy.refresh_on,  # type: ignore[arg-type]
    )


def to_langchain_message(message: BaseMessage) -> lc.BaseMessage:
    """Return the LangChain message with the same fields as ours."""
    cls = _LANGCHAIN_CLASSES.get(type(message))
    if cls is None:
        cls = next(
            lc_cls
            for ours, lc_cls in _LANGCHAIN_CLASSES.items()
            if isinstance(message, ours)
        )
    fields = message.to_dict()
    fields.pop("type", None)
    return cls(**fields)


__all__ = ["LangGraphSaver", "to_langchain_message", "to_langgraph"]
