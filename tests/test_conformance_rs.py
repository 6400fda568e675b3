"""LangGraph's conformance suite, in full, for RedisSaver and S3Saver.

The same runner as tests/test_conformance.py: each saver wrapped by
`LangGraphSaver`, once through the suite's own `validate()` (every
capability, extended ones included, detected and passed) and once per spec
test, so a failure names the test that broke.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import Capability

from agentmatic.compat.langgraph import LangGraphSaver
from tests.test_conformance import SPEC_TESTS, SpecTest

KINDS = ["redis", "s3"]


@pytest.fixture
def make_saver(request: pytest.FixtureRequest) -> Any:
    """Return a factory of fresh savers of the kind under test (own prefixes)."""
    kind = request.node.callspec.params["kind"]
    made: list[Any] = []

    def make() -> Any:
        if kind == "redis":
            from agentmatic.checkpoint.redis import RedisSaver

            url = request.getfixturevalue("redis_url")
            prefix = request.getfixturevalue("redis_prefix")
            saver: Any = RedisSaver(url, prefix=f"{prefix}:{len(made)}")
        else:
            from agentmatic.checkpoint.s3 import S3Saver

            request.getfixturevalue("s3_server")
            prefix = request.getfixturevalue("s3_prefix")
            saver = S3Saver(prefix=f"{prefix}{uuid.uuid4().hex[:6]}", page_size=2)
        made.append(saver)
        return saver

    yield make
    for saver in made:
        saver.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_the_full_suite_passes_with_nothing_skipped(
    kind: str, make_saver: Any
) -> None:
    @checkpointer_test(name=f"agentmatic-{kind}")
    async def factory() -> AsyncIterator[LangGraphSaver]:
        yield LangGraphSaver(make_saver())

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


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "test", [t[2] for t in SPEC_TESTS], ids=[f"{c}-{n}" for c, n, _ in SPEC_TESTS]
)
async def test_spec(kind: str, test: SpecTest, make_saver: Any) -> None:
    await test(LangGraphSaver(make_saver()))
