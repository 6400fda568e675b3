"""Chat models: OpenAI's Chat Completions, and offline models for demos and tests."""

from __future__ import annotations

import os

from agentmatic.llms.base import ChatModel, ToolSpec
from agentmatic.llms.offline import LoopModel, OfflineRefundModel, ScriptedModel
from agentmatic.llms.openai import OpenAI

__all__ = [
    "ChatModel",
    "LoopModel",
    "OfflineRefundModel",
    "OpenAI",
    "ScriptedModel",
    "ToolSpec",
    "default_model",
]


def default_model() -> ChatModel:
    """Return `OpenAI()` when ``OPENAI_API_KEY`` is set, else `OfflineRefundModel()`."""
    if os.environ.get("OPENAI_API_KEY"):
        return OpenAI()
    return OfflineRefundModel()
