"""The runtime's own tests (tests/test_runtime.py), run again on Redis and S3.

Each test there builds its agent on `MemorySaver()`; here that name is
bound to a factory of fresh RedisSavers or S3Savers instead, so every
promise the runtime makes on the reference saver is checked on ours.
"""

from __future__ import annotations

import inspect
import uuid
from typing import Any

import pytest

from tests import test_runtime as runtime_tests

RUNTIME_TESTS = [
    (name, fn)
    for name, fn in vars(runtime_tests).items()
    if name.startswith("test_") and inspect.isfunction(fn)
]


@pytest.fixture(params=["redis", "s3"])
def saver_factory(request: pytest.FixtureRequest) -> Any:
    made: list[Any] = []

    def make(**kwargs: Any) -> Any:
        if request.param == "redis":
            from agentmatic.checkpoint.redis import RedisSaver

            url = request.getfixturevalue("redis_url")
            prefix = request.getfixturevalue("redis_prefix")
            saver: Any = RedisSaver(url, prefix=f"{prefix}:{len(made)}", **kwargs)
        else:
            from agentmatic.checkpoint.s3 import S3Saver

            request.getfixturevalue("s3_server")
            prefix = request.getfixturevalue("s3_prefix")
            saver = S3Saver(
                prefix=f"{prefix}{uuid.uuid4().hex[:6]}", page_size=3, **kwargs
            )
        made.append(saver)
        return saver

    yield make
    for saver in made:
        saver.close()


@pytest.mark.parametrize(
    "test", [fn for _, fn in RUNTIME_TESTS], ids=[n for n, _ in RUNTIME_TESTS]
)
def test_the_runtime_test_passes(
    test: Any, saver_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime_tests, "MemorySaver", saver_factory)
    test()
