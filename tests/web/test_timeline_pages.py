"""Oldest-first pages of a branched thread lay out as slices of the whole."""

import pytest

from agentmatic import Agent, HumanMessage
from agentmatic.checkpoint import MemorySaver, SQLiteSaver
from agentmatic.checkpoint.postgres import PostgresSaver
from agentmatic.llms import LoopModel
from runs.timeline import flip, layout, load_timeline


def noop(payload: str) -> str:
    """Do nothing, politely."""
    return "ok:" + payload[:20]


def branched_thread(saver, thread_id: str = "t") -> None:
    """A run, two replays from older checkpoints, and a run on each line."""
    agent = (
        Agent.builder("loop")
        .llm(LoopModel("noop", steps=6, payload_bytes=40))
        .tools([noop])
        .checkpoint(saver)
        .build()
    )
    config = {"configurable": {"thread_id": thread_id}, "recursion_limit": 100}
    agent.invoke({"messages": [HumanMessage("go")]}, config)
    for back in (5, 9):
        older = saver.get_state_history(thread_id, values=False)[back]
        agent.invoke(
            {"messages": [HumanMessage(f"again from {back}")]},
            {
                **config,
                "configurable": {
                    **config["configurable"],
                    "checkpoint_id": older.checkpoint_id,
                },
            },
        )


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def saver(request, tmp_path):
    if request.param == "memory":
        opened = MemorySaver()
    elif request.param == "sqlite":
        opened = SQLiteSaver(str(tmp_path / "t.sqlite"))
    else:
        opened = PostgresSaver(request.getfixturevalue("pg_url"))
    yield opened
    opened.close()


def test_each_oldest_first_page_is_a_slice_of_the_whole_layout(saver):
    branched_thread(saver)
    history = saver.get_state_history("t", values=False)
    whole, _ = layout(history)
    assert any(r.labels for r in whole)  # the thread really branches
    for size in (4, 7):
        for offset in range(0, len(history) + 1, size):
            page = load_timeline(saver, "t", order="oldest", offset=offset, size=size)
            end = len(whole) - offset
            assert page.rows == flip(whole[max(0, end - size) : max(0, end)])
            assert page.total == len(history)
