"""Adapters to other frameworks; each imports its framework only when used."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentmatic.compat.langgraph import LangGraphSaver


def __getattr__(name: str) -> Any:
    if name == "LangGraphSaver":
        from agentmatic.compat.langgraph import LangGraphSaver

        return LangGraphSaver
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["LangGraphSaver"]
