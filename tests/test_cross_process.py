"""A run paused in one process resumes in a fresh one, on a SQLite file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "tests.payments_agent", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_run_paused_in_one_process_resumes_in_another(tmp_path):
    db = str(tmp_path / "agent.sqlite")
    paused = run("start", db, "case-42")
    assert paused["next"] == ["transfer_funds"]
    assert paused["args"]["amount"] == 250
    assert not Path(db + ".ledger").exists()

    seen = run("state", db, "case-42")
    assert seen["checkpoint_id"] == paused["checkpoint_id"]

    done = run("resume", db, "case-42")
    assert done["next"] == []
    ledger = [
        json.loads(line) for line in Path(db + ".ledger").read_text().splitlines()
    ]
    assert [(e["amount"], e["key"].split(":")[0]) for e in ledger] == [(250, "case-42")]


def test_two_processes_resuming_at_once_pay_once(tmp_path):
    db = str(tmp_path / "agent.sqlite")
    run("start", db, "case-7")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.payments_agent", "resume", db, "case-7"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    codes = sorted(p.returncode for p in procs)
    ledger = Path(db + ".ledger").read_text().splitlines()
    assert len(ledger) == 1
    assert codes[0] == 0
    loser = [err for p, (_out, err) in zip(procs, results) if p.returncode != 0]
    assert all("ThreadConflict" in err for err in loser)
