"""Every error the library raises on purpose derives from `AgentmaticError`.

Each message names the thread and, where one is involved, the checkpoint,
the tool or the type, so a log line is enough to find what went wrong.
"""

from __future__ import annotations


class AgentmaticError(Exception):
    """Base of all Agentmatic errors."""


class ConfigurationError(AgentmaticError, ValueError):
    """A saver or the runtime is configured wrongly (a missing URL, a bad key)."""


class InvalidThreadId(AgentmaticError, ValueError):
    """A config names no thread, or a thread id that is not valid text."""


class ThreadNotFound(AgentmaticError, LookupError):
    def __init__(self, thread_id: str) -> None:
        super().__init__(f"thread {thread_id!r} has no checkpoints")
        self.thread_id = thread_id


class CheckpointNotFound(AgentmaticError, LookupError):
    def __init__(self, thread_id: str, checkpoint_id: str) -> None:
        super().__init__(
            f"checkpoint {checkpoint_id!r} does not exist (thread {thread_id!r})"
        )
        self.thread_id = thread_id
        self.checkpoint_id = checkpoint_id


class ThreadConflict(AgentmaticError):
    """Another writer advanced or holds the thread; this write was refused."""

    def __init__(self, thread_id: str, detail: str) -> None:
        super().__init__(f"thread {thread_id!r}: {detail}")
        self.thread_id = thread_id


class StaleDecision(AgentmaticError):
    """A decision named a checkpoint or call that is no longer pending."""

    def __init__(self, thread_id: str, checkpoint_id: str | None, detail: str) -> None:
        where = f" at checkpoint {checkpoint_id!r}" if checkpoint_id else ""
        super().__init__(f"thread {thread_id!r}{where}: {detail}")
        self.thread_id = thread_id
        self.checkpoint_id = checkpoint_id


class ThreadExists(AgentmaticError):
    def __init__(self, thread_id: str) -> None:
        super().__init__(f"thread {thread_id!r} already exists; fork into a new id")
        self.thread_id = thread_id


class InvalidToolArguments(AgentmaticError, ValueError):
    """Arguments do not fit the tool's schema; `field` names the first bad one."""

    def __init__(self, tool: str, field: str, detail: str) -> None:
        super().__init__(f"tool {tool!r}, argument {field!r}: {detail}")
        self.tool = tool
        self.field = field
        self.detail = detail


class AgentChanged(AgentmaticError):
    """The agent resuming a thread can no longer run the call that waits."""

    def __init__(self, thread_id: str, detail: str) -> None:
        super().__init__(f"thread {thread_id!r} cannot resume: {detail}")
        self.thread_id = thread_id


class SerializationError(AgentmaticError, ValueError):
    """A stored value cannot be read or written."""


class DisallowedType(SerializationError):
    """A stored value names a type the serializer may not revive."""

    def __init__(self, type_name: str, thread_id: str | None = None) -> None:
        where = f" in thread {thread_id!r}" if thread_id else ""
        super().__init__(
            f"refusing to revive type {type_name!r}{where}: it is not on the "
            "allow-list (pass allow=[...] to the saver to admit it)"
        )
        self.type_name = type_name
        self.thread_id = thread_id


class CorruptCheckpoint(SerializationError):
    def __init__(self, thread_id: str | None, checkpoint_id: str | None, detail: str):
        super().__init__(
            f"checkpoint {checkpoint_id!r} of thread {thread_id!r} is unreadable: "
            f"{detail}"
        )
        self.thread_id = thread_id
        self.checkpoint_id = checkpoint_id


class ModelError(AgentmaticError):
    """The model or its transport failed; the run can be resumed later."""


class ReadOnlyThread(AgentmaticError):
    """No registered agent can resume this thread (it is shown read-only)."""


class ChainBroken(AgentmaticError):
    def __init__(self, thread_id: str, checkpoint_id: str, detail: str) -> None:
        super().__init__(
            f"thread {thread_id!r}: chain broken at checkpoint {checkpoint_id!r}: "
            f"{detail}"
        )
        self.thread_id = thread_id
        self.checkpoint_id = checkpoint_id
