"""Every runtime test of tests/test_runtime.py again, on PostgresSaver.

The runtime tests build their agents on `MemorySaver()`; here that name is
pointed at a saver on a fresh Postgres database, and the tests are collected
again in this module.
"""

from __future__ import annotations

import pytest

from agentmatic.checkpoint.postgres import PostgresSaver
from tests import test_runtime
from tests.test_runtime import *  # noqa: F403 - the tests, collected again here


@pytest.fixture(autouse=True)
def _savers_on_postgres(monkeypatch, pg_url):
    opened: list[PostgresSaver] = []

    def make(**kwargs):
        saver = PostgresSaver(pg_url, **kwargs)
        opened.append(saver)
        return saver

    monkeypatch.setattr(test_runtime, "MemorySaver", make)
    yield
    for saver in opened:
        saver.close()


def test_the_savers_here_are_postgres():
    agent, _ = test_runtime.build()
    assert isinstance(agent.saver, PostgresSaver)
