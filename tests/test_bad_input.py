"""Malformed arguments to the readers get a clear error on every saver."""

from __future__ import annotations

from typing import Any

import pytest

from agentmatic.checkpoint.base import thread_config
from agentmatic.errors import InvalidThreadId
from tests.test_chain import Backend
from tests.test_runtime import ask, build


@pytest.fixture(params=["memory", "sqlite", "postgres", "redis", "s3"])
def saver(request: pytest.FixtureRequest) -> Any:
    if request.param == "postgres":
        from agentmatic.checkpoint.postgres import PostgresSaver

        made = PostgresSaver(request.getfixturevalue("pg_url"))
        yield made
        made.close()
        return
    backend = Backend(request.param, request)
    yield backend.saver()
    for made in backend.made:
        made.close()


@pytest.mark.parametrize("thread_id", [None, "", ["t"], b"t"])
def test_a_reader_refuses_a_thread_id_that_names_no_thread(saver, thread_id):
    agent, _ = build(saver=saver)
    ask(agent, "t", "Refund $40")
    for values in (True, False):
        with pytest.raises(InvalidThreadId):
            saver.get_state_history(thread_id, values=values)
        with pytest.raises(InvalidThreadId):
            saver.get_state(thread_id, values=values)


@pytest.mark.parametrize("checkpoint_id", [5, ["x"], {"id": "x"}])
def test_a_checkpoint_id_that_is_not_text_is_refused_by_name(saver, checkpoint_id):
    agent, _ = build(saver=saver)
    ask(agent, "t", "Refund $40")
    config = thread_config("t", checkpoint_id)
    with pytest.raises(ValueError, match="checkpoint id must be text"):
        saver.get_tuple(config)
    with pytest.raises(ValueError, match="checkpoint id must be text"):
        saver.put_writes(config, [("x", 1)], "task")
    with pytest.raises(ValueError, match="checkpoint id must be text"):
        list(saver.list(config))
    for values in (True, False):
        with pytest.raises(ValueError, match="checkpoint id must be text"):
            saver.get_state("t", checkpoint_id, values=values)
        with pytest.raises(ValueError, match="before must be text"):
            saver.get_state_history("t", before=checkpoint_id, values=values)
    assert len(saver.get_state_history("t")) > 1


@pytest.mark.parametrize("limit", [0, -1, 2.5, "10", True])
def test_a_page_of_threads_needs_a_size_of_at_least_one(saver, limit):
    agent, _ = build(saver=saver)
    ask(agent, "t", "Refund $40")
    with pytest.raises(ValueError, match="limit must be a whole number"):
        saver.list_threads(limit=limit)
    assert [t.thread_id for t in saver.list_threads(limit=1).threads] == ["t"]


def test_malformed_list_and_page_arguments_are_refused_by_name(saver):
    agent, _ = build(saver=saver)
    ask(agent, "t", "Refund $40")
    config = thread_config("t")
    for before in ({"configurable": {"checkpoint_id": 5}}, "abc", {"configurable": 1}):
        with pytest.raises(ValueError, match="before must be"):
            list(saver.list(config, before=before))
    for values in (True, False):
        with pytest.raises(ValueError, match="checkpoint_ns must be text"):
            saver.get_state_history("t", checkpoint_ns=5, values=values)
    with pytest.raises(ValueError, match="checkpoint_ns must be text"):
        saver.get_tuple({"configurable": {"thread_id": "t", "checkpoint_ns": 5}})
    with pytest.raises(ValueError, match="agent must be text"):
        saver.list_threads(agent=5)
    with pytest.raises(ValueError, match="cursor must be text"):
        saver.list_threads(cursor=5)


def test_an_empty_checkpoint_id_means_none_on_every_saver(saver):
    agent, _ = build(saver=saver)
    ask(agent, "t", "Refund $40")
    head = saver.get_state("t")
    everything = [s.checkpoint_id for s in saver.get_state_history("t")]
    for values in (True, False):
        assert saver.get_state("t", "", values=values).checkpoint_id == (
            head.checkpoint_id
        )
        got = saver.get_state_history("t", before="", values=values)
        assert [s.checkpoint_id for s in got] == everything
    assert saver.get_tuple(thread_config("t", "")).checkpoint["id"] == (
        head.checkpoint_id
    )


def test_a_config_or_filter_of_the_wrong_shape_is_refused(saver):
    with pytest.raises(InvalidThreadId, match="config must be a dict"):
        saver.get_tuple(None)
    with pytest.raises(ValueError, match="filter must be a dict"):
        list(saver.list(thread_config("t"), filter=["step"]))


def test_list_and_lookups_refuse_arguments_of_the_wrong_type(saver):
    agent, _ = build(saver=saver)
    ask(agent, "t", "Refund $40")
    with pytest.raises(ValueError, match="limit must be a whole number"):
        list(saver.list(thread_config("t"), limit="2"))
    with pytest.raises(ValueError, match="checkpoint id must be text"):
        saver.find_checkpoint(5)
    with pytest.raises(InvalidThreadId):
        saver.head_id(None)
    with pytest.raises(ValueError, match="checkpoint_ns must be text"):
        saver.head_id("t", 5)
    assert saver.head_id("t") == saver.get_state("t").checkpoint_id
