"""The runner every saver's conformance tests share.

LangGraph's published suite, `langgraph.checkpoint.conformance`, run on a
saver wrapped by `LangGraphSaver`: once through the suite's own
`validate()`, which must find and pass every capability, extended ones
included, and once per spec test, so a failure names the test that broke.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import Capability

from agentmatic.checkpoint.base import BaseSaver
from agentmatic.compat.langgraph import LangGraphSaver

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

# Parametrises a test with `test`, one spec test each, named capability-test.
every_spec_test = pytest.mark.parametrize(
    "test", [t[2] for t in SPEC_TESTS], ids=[f"{c}-{n}" for c, n, _ in SPEC_TESTS]
)


async def check_full_suite(name: str, make: Callable[[], BaseSaver]) -> None:
    """Run `validate()` on fresh savers from make; require every capability."""

    @checkpointer_test(name=name)
    async def factory() -> AsyncIterator[LangGraphSaver]:
        saver = make()
        yield LangGraphSaver(saver)
        saver.close()

    report = await validate(factory)

    assert set(report.results) == {c.value for c in Capability}
    failures = {
        capability: result.failures
        for capability, result in report.results.items()
        if result.failures or result.tests_failed
    }
    assert failures == {}
    skipped = {
        capability
        for capability, result in report.results.items()
        if not result.detected or result.tests_skipped or result.passed is not True
    }
    assert skipped == set()
    assert report.conformance_level() == "FULL"
