"""LangGraph's published conformance suite, in full, for every saver we ship here.

The runner is tests/conformance.py; this file names the in-process savers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from langgraph.checkpoint.conformance.capabilities import DetectedCapabilities

from agentmatic.checkpoint.memory import MemorySaver
from agentmatic.checkpoint.sqlite import SQLiteSaver
from agentmatic.compat.langgraph import LangGraphSaver
from tests.conformance import SpecTest, check_full_suite, every_spec_test

SAVERS = ["memory", "sqlite-file", "sqlite-in-memory"]


def make_saver(kind: str, directory: Path) -> SQLiteSaver | MemorySaver:
    if kind == "memory":
        return MemorySaver()
    if kind == "sqlite-in-memory":
        return SQLiteSaver(":memory:")
    count = len(list(directory.glob("*.sqlite")))
    return SQLiteSaver(directory / f"conformance-{count}.sqlite")


@pytest.mark.parametrize("kind", SAVERS)
async def test_the_full_suite_passes_with_nothing_skipped(
    kind: str, tmp_path: Path
) -> None:
    await check_full_suite(f"agentmatic-{kind}", lambda: make_saver(kind, tmp_path))


@pytest.mark.parametrize("kind", SAVERS)
def test_every_capability_is_detected(kind: str, tmp_path: Path) -> None:
    saver = make_saver(kind, tmp_path)
    detected = DetectedCapabilities.from_instance(LangGraphSaver(saver))
    assert detected.missing == frozenset()
    saver.close()


@pytest.mark.parametrize("kind", SAVERS)
@every_spec_test
async def test_spec(kind: str, test: SpecTest, tmp_path: Path) -> None:
    saver = make_saver(kind, tmp_path)
    try:
        await test(LangGraphSaver(saver))
    finally:
        saver.close()
