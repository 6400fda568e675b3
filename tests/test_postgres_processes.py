"""On PostgresSaver, across processes: pause here, resume there, one winner."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from agentmatic.checkpoint.postgres import PostgresSaver

ROOT = Path(__file__).resolve().parents[1]


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tests.pg_agent", *args]


def run(*args: str) -> dict:
    out = subprocess.run(
        command(*args),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_run_paused_in_one_process_resumes_in_a_fresh_one(pg_url, tmp_path):
    ledger = tmp_path / "ledger"
    paused = run("start", pg_url, "case-42", str(ledger))
    assert paused["next"] == ["transfer_funds"]
    assert paused["args"]["amount"] == 250
    assert not ledger.exists()

    seen = run("state", pg_url, "case-42", str(ledger))
    assert seen["checkpoint_id"] == paused["checkpoint_id"]

    done = run("resume", pg_url, "case-42", str(ledger))
    assert done["next"] == []
    entries = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert [(e["amount"], e["key"].split(":")[0]) for e in entries] == [
        (250, "case-42")
    ]


def test_two_processes_resuming_at_once_pay_once(pg_url, tmp_path):
    ledger = tmp_path / "ledger"
    run("start", pg_url, "case-7", str(ledger))
    procs = [
        subprocess.Popen(
            command("resume", pg_url, "case-7", str(ledger)),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert len(ledger.read_text().splitlines()) == 1
    codes = sorted(p.returncode for p in procs)
    assert codes[0] == 0
    losers = [err for p, (_out, err) in zip(procs, results) if p.returncode != 0]
    assert all("ThreadConflict" in err for err in losers)


def test_writers_in_many_processes_naming_one_head_give_one_winner(pg_url, tmp_path):
    run("start", pg_url, "case-9", str(tmp_path / "ledger"))
    saver = PostgresSaver(pg_url)
    head = saver.head_id("case-9")
    saver.close()
    at = time.time() + 3
    procs = [
        subprocess.Popen(
            command("race", pg_url, "case-9", head, str(at)),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    outcomes = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert outcomes == ["conflict"] * 5 + ["ok"]
