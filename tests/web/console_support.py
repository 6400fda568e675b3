"""Fixtures for the console's thread pages: a store, an agent, some threads.

Import the fixtures a module needs from here; they build on the users of
``tests/web/conftest.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agentmatic import HumanMessage
from agentmatic_web.env import CheckpointStore
from runs import indexing, services

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
LANGGRAPH_FIXTURE = SHARED / "fixtures" / "langgraph" / "langgraph-shared.sqlite"
LANGGRAPH_EXPECTED = (
    SHARED / "fixtures" / "langgraph" / "langgraph-shared.expected.json"
)
AGENTS = {
    "payments": "tests.web.console_agents:build_payments_agent",
    "loop": "tests.web.console_agents:build_loop_agent",
}


def configure(settings, checkpoints: Path, readonly: list[Path] = ()) -> None:
    settings.AGENTMATIC_CHECKPOINT_STORE = CheckpointStore("sqlite", str(checkpoints))
    settings.AGENTMATIC_READONLY_FILES = [str(p) for p in readonly]
    settings.AGENTMATIC_AGENTS = AGENTS
    settings.AGENTMATIC_RUNNER = "thread"
    services.reset_caches()
    indexing.reset_refresh_clock()


@pytest.fixture
def store(settings, tmp_path):
    """Point the console at a fresh SQLite checkpoint file; return the saver."""
    configure(settings, tmp_path / "checkpoints.sqlite")
    yield services.get_saver()
    services.get_saver().close()
    services.reset_caches()
    indexing.reset_refresh_clock()


@pytest.fixture
def payments(store):
    """Return the registered payments agent, on the store."""
    return services.get_agent("payments")


def start_thread(agent, thread_id: str, text: str, actor: str = "tester"):
    """Run the agent on a new thread until it pauses or finishes."""
    config = {"configurable": {"thread_id": thread_id}}
    return agent.invoke({"messages": [HumanMessage(text)]}, config, actor=actor)


@pytest.fixture
def long_thread(store, db):
    """A finished thread of 122 checkpoints (60 model and 60 tool steps)."""
    agent = services.get_agent("loop")
    state = start_thread(agent, "long", "go")
    assert not state.next
    return state


@pytest.fixture
def waiting_thread(payments, db):
    """A thread paused on a $250 refund, indexed."""
    state = start_thread(payments, "case-250", "Refund order #42 for $250.")
    assert state.next == ("transfer_funds",)
    indexing.index_threads()
    return state


@pytest.fixture
def langgraph_file(tmp_path):
    """Copy the shared LangGraph fixture to a read-only file; return its path."""
    if not LANGGRAPH_FIXTURE.is_file():
        pytest.fail(f"the shared fixture {LANGGRAPH_FIXTURE} is missing")
    target = tmp_path / "readonly" / "langgraph-shared.sqlite"
    target.parent.mkdir()
    shutil.copyfile(LANGGRAPH_FIXTURE, target)
    target.chmod(0o444)
    return target
