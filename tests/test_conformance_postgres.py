"""LangGraph's conformance suite, in full, for PostgresSaver.

The runner is tests/conformance.py. Each test has a database of its own.
"""

from __future__ import annotations

from langgraph.checkpoint.conformance.capabilities import DetectedCapabilities

from agentmatic.checkpoint.postgres import PostgresSaver
from agentmatic.compat.langgraph import LangGraphSaver
from tests.conformance import SpecTest, check_full_suite, every_spec_test


async def test_the_full_suite_passes_with_nothing_skipped(pg_url: str) -> None:
    await check_full_suite("agentmatic-postgres", lambda: PostgresSaver(pg_url))


def test_every_capability_is_detected(pg_url: str) -> None:
    saver = PostgresSaver(pg_url)
    detected = DetectedCapabilities.from_instance(LangGraphSaver(saver))
    assert detected.missing == frozenset()
    saver.close()


@every_spec_test
async def test_spec(test: SpecTest, pg_url: str) -> None:
    saver = PostgresSaver(pg_url)
    try:
        await test(LangGraphSaver(saver))
    finally:
        saver.close()
