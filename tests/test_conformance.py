"""LangGraph's published conformance suite, in full, for every saver we ship here.

Each saver is wrapped by `LangGraphSaver` and run through
`langgraph.checkpoint.conformance`: once through its own `validate()` (the
report must show every capability, extended ones included, detected and
passed), and once per spec test, so a failure names the test that broke.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import (
    Capability,
    DetectedCapabilities,
)

from agentmatic.checkpoint.memory import MemorySaver
from agentmatic.checkpoint.sqlite import SQLiteSaver
from agentmatic.compat.langgraph import LangGraphSaver

SAVERS = ["memory", "sqlite-file", "sqlite-in-memory"]

SpecTest = Callable[[Any], Awaitable[None]]


def spec_tests() -> list[tuple[str, str, SpecTest]]:
    """Return `(capability, name, test)` for every test in the suite's spec."""
    found = []
    for capability in Capability:
        module = importlib.import_module(
            f"langgraph.checkpoint.conformance.spec.test_{capability.value}"
        )
        lists = [
            value
            for name, value in vars(module).items()
            if name.startswith("ALL_") and name.endswith("_TESTS")
        ]
        assert len(lists) == 1, f"spec module for {capability.value} changed shape"
        found.extend((capability.value, fn.__name__, fn) for fn in lists[0])
    return found


SPEC_TESTS = spec_tests()


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
    @checkpointer_test(name=f"agentmatic-{kind}")
    async def factory() -> AsyncIterator[LangGraphSaver]:
        saver = make_saver(kind, tmp_path)
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


@pytest.mark.parametrize("kind", SAVERS)
def test_every_capability_is_detected(kind: str, tmp_path: Path) -> None:
    saver = make_saver(kind, tmp_path)
    detected = DetectedCapabilities.from_instance(LangGraphSaver(saver))
    assert detected.missing == frozenset()
    saver.close()


@pytest.mark.parametrize("kind", SAVERS)
@pytest.mark.parametrize(
    "test", [t[2] for t in SPEC_TESTS], ids=[f"{c}-{n}" for c, n, _ in SPEC_TESTS]
)
async def test_spec(kind: str, test: SpecTest, tmp_path: Path) -> None:
    saver = make_saver(kind, tmp_path)
    try:
        await test(LangGraphSaver(saver))
    finally:
        saver.close()
