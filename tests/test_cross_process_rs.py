"""Across processes on Redis and S3: pause here, resume there; one writer wins."""

from __future__ import annotations

import pytest

from tests.payments_agent import (
    check_pause_and_resume,
    check_resumes_at_once_pay_once,
    race_processes,
    run,
)
from tests.s3server import BUCKET


@pytest.fixture(params=["redis", "s3"])
def spec(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        return f"redis|{url}|{request.getfixturevalue('redis_prefix')}"
    request.getfixturevalue("s3_server")
    return f"s3|{BUCKET}|{request.getfixturevalue('s3_prefix')}"


def test_a_run_paused_in_one_process_resumes_in_another(spec, tmp_path):
    done = check_pause_and_resume(spec, tmp_path / "ledger")
    assert done["last"].startswith("Refund of $250.00 sent")


def test_two_processes_resuming_at_once_pay_once(spec, tmp_path):
    check_resumes_at_once_pay_once(spec, tmp_path / "ledger", processes=2)


def test_of_eight_processes_continuing_one_head_exactly_one_wins(spec, tmp_path):
    head = run("start", spec, "case-9", str(tmp_path / "ledger"))["checkpoint_id"]
    outcomes = race_processes(spec, "case-9", head, processes=8)
    assert outcomes == ["conflict"] * 7 + ["ok"]
