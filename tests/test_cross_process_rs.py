"""Across processes on Redis and S3: pause here, resume there; one writer wins."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.s3server import BUCKET

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["redis", "s3"])
def spec(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        return f"redis|{url}|{request.getfixturevalue('redis_prefix')}"
    request.getfixturevalue("s3_server")
    return f"s3|{BUCKET}|{request.getfixturevalue('s3_prefix')}"


def agent_process(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.backend_agent", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "tests.backend_agent", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_run_paused_in_one_process_resumes_in_another(spec, tmp_path):
    ledger = tmp_path / "ledger"
    paused = run("start", spec, "case-42", str(ledger))
    assert paused["next"] == ["transfer_funds"]
    assert paused["args"]["amount"] == 250
    assert not ledger.exists()

    seen = run("state", spec, "case-42", str(ledger))
    assert seen["checkpoint_id"] == paused["checkpoint_id"]

    done = run("resume", spec, "case-42", str(ledger))
    assert done["next"] == []
    assert done["last"].startswith("Refund of $250.00 sent")
    entries = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert [(e["amount"], e["key"].split(":")[0]) for e in entries] == [
        (250, "case-42")
    ]


def test_two_processes_resuming_at_once_pay_once(spec, tmp_path):
    ledger = tmp_path / "ledger"
    run("start", spec, "case-7", str(ledger))
    procs = [agent_process("resume", spec, "case-7", str(ledger)) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert len(ledger.read_text().splitlines()) == 1
    codes = sorted(p.returncode for p in procs)
    assert codes[0] == 0
    losers = [err for p, (_out, err) in zip(procs, results) if p.returncode != 0]
    assert all("ThreadConflict" in err for err in losers)


def test_of_eight_processes_continuing_one_head_exactly_one_wins(spec, tmp_path):
    ledger = tmp_path / "ledger"
    head = run("start", spec, "case-9", str(ledger))["checkpoint_id"]
    at = time.time() + 3
    procs = [agent_process("race", spec, "case-9", head, str(at)) for _ in range(8)]
    outcomes = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert outcomes == ["conflict"] * 7 + ["ok"]
