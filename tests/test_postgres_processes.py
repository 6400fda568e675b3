"""On PostgresSaver, across processes: pause here, resume there, one winner."""

from __future__ import annotations

from agentmatic.checkpoint.postgres import PostgresSaver
from tests.payments_agent import (
    check_pause_and_resume,
    check_resumes_at_once_pay_once,
    race_processes,
    run,
)


def test_a_run_paused_in_one_process_resumes_in_a_fresh_one(pg_url, tmp_path):
    check_pause_and_resume(f"postgres|{pg_url}", tmp_path / "ledger")


def test_two_processes_resuming_at_once_pay_once(pg_url, tmp_path):
    check_resumes_at_once_pay_once(
        f"postgres|{pg_url}", tmp_path / "ledger", processes=3
    )


def test_writers_in_many_processes_naming_one_head_give_one_winner(pg_url, tmp_path):
    run("start", f"postgres|{pg_url}", "case-9", str(tmp_path / "ledger"))
    saver = PostgresSaver(pg_url)
    head = saver.head_id("case-9")
    saver.close()
    outcomes = race_processes(f"postgres|{pg_url}", "case-9", head, processes=6)
    assert outcomes == ["conflict"] * 5 + ["ok"]
