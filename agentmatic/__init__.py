"""Agentmatic: an agent runtime where every superstep is an immutable checkpoint."""

from agentmatic.agent import Agent, AgentBuilder
from agentmatic.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    RemoveMessage,
    SystemMessage,
    ToolCall,
    ToolMessage,
)
from agentmatic.state import Interrupt, State, Task, ThreadInfo, ThreadPage
from agentmatic.tools import Tool, tool

__all__ = [
    "AIMessage",
    "Agent",
    "AgentBuilder",
    "BaseMessage",
    "HumanMessage",
    "Interrupt",
    "RemoveMessage",
    "State",
    "SystemMessage",
    "Task",
    "ThreadInfo",
    "ThreadPage",
    "Tool",
    "ToolCall",
    "ToolMessage",
    "tool",
]
