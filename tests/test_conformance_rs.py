"""LangGraph's conformance suite, in full, for RedisSaver and S3Saver.

The runner is tests/conformance.py; this file names the server savers.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from agentmatic.compat.langgraph import LangGraphSaver
from tests.conformance import SpecTest, check_full_suite, every_spec_test

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
    await check_full_suite(f"agentmatic-{kind}", make_saver)


@pytest.mark.parametrize("kind", KINDS)
@every_spec_test
async def test_spec(kind: str, test: SpecTest, make_saver: Any) -> None:
    await test(LangGraphSaver(make_saver()))
