"""LangGraph's conformance suite, in full, for PostgresSaver.

The saver is wrapped by `LangGraphSaver` and run through
`langgraph.checkpoint.conformance`: once through `validate()` (every
capability, extended ones included, detected and passed) and once per spec
test, so a failure names the test. Each test has a database of its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import (
    Capability,
    DetectedCapabilities,
)

from agentmatic.checkpoint.postgres import PostgresSaver
from agentmatic.compat.langgraph import LangGraphSaver
from tests.test_conformance import SPEC_TESTS, SpecTest


async def test_the_full_suite_passes_with_nothing_skipped(pg_url: str) -> None:
    savers: list[PostgresSaver] = []

    @checkpointer_test(name="agentmatic-postgres")
    async def factory() -> AsyncIterator[LangGraphSaver]:
        saver = PostgresSaver(pg_url)
        savers.append(saver)
        yield LangGraphSaver(saver)
        saver.close()

    report = await validate(factory)

    assert set(report.results) == {c.value for c in Capability}
    failures = {
        name: result.failures
        for name, result in report.results.items()
        if result.failures or result.tests_failed
    }
    assert failures == {}
    skipped = {
        name
        for name, result in report.results.items()
        if not result.detected or result.tests_skipped or result.passed is not True
    }
    assert skipped == set()
    assert report.conformance_level() == "FULL"


def test_every_capability_is_detected(pg_url: str) -> None:
    saver = PostgresSaver(pg_url)
    detected = DetectedCapabilities.from_instance(LangGraphSaver(saver))
    assert detected.missing == frozenset()
    saver.close()


@pytest.mark.parametrize(
    "test", [t[2] for t in SPEC_TESTS], ids=[f"{c}-{n}" for c, n, _ in SPEC_TESTS]
)
async def test_spec(test: SpecTest, pg_url: str) -> None:
    saver = PostgresSaver(pg_url)
    try:
        await test(LangGraphSaver(saver))
    finally:
        saver.close()
