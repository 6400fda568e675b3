"""What the runtime needs from a model: messages in, one AI message out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypedDict, runtime_checkable

from agentmatic.messages import AIMessage, BaseMessage


class ToolSpec(TypedDict):
    """A tool as the model sees it: name, description and JSON Schema of its args."""

    name: str
    description: str
    parameters: dict[str, Any]


@runtime_checkable
class ChatModel(Protocol):
    """A chat model the agent can call.

    `generate` gets the whole conversation (system prompt included) and the
    tools the model may call, and returns the model's next message. Transport
    and server failures raise `agentmatic.errors.ModelError`.
    """

    @property
    def identity(self) -> str:
        """A short string naming the model and its settings (for `agent_version`)."""
        ...

    def generate(
        self, messages: Sequence[BaseMessage], tools: Sequence[ToolSpec]
    ) -> AIMessage: ...
