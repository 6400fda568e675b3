"""Checkpoint savers. The server backends import their clients only when used."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentmatic.checkpoint.base import BaseSaver, CheckpointTuple
from agentmatic.checkpoint.memory import MemorySaver

if TYPE_CHECKING:
    from agentmatic.checkpoint.postgres import PostgresSaver
    from agentmatic.checkpoint.redis import RedisSaver
    from agentmatic.checkpoint.s3 import S3Saver
    from agentmatic.checkpoint.sqlite import SQLiteSaver

_LAZY = {
    "SQLiteSaver": "agentmatic.checkpoint.sqlite",
    "PostgresSaver": "agentmatic.checkpoint.postgres",
    "RedisSaver": "agentmatic.checkpoint.redis",
    "S3Saver": "agentmatic.checkpoint.s3",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "BaseSaver",
    "CheckpointTuple",
    "MemorySaver",
    "PostgresSaver",
    "RedisSaver",
    "S3Saver",
    "SQLiteSaver",
]
