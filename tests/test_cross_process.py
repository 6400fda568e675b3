"""A run paused in one process resumes in a fresh one, on a SQLite file."""

from __future__ import annotations

from tests.payments_agent import check_pause_and_resume, check_resumes_at_once_pay_once


def test_a_run_paused_in_one_process_resumes_in_another(tmp_path):
    db = tmp_path / "agent.sqlite"
    check_pause_and_resume(f"sqlite|{db}", tmp_path / "agent.sqlite.ledger")


def test_two_processes_resuming_at_once_pay_once(tmp_path):
    db = tmp_path / "agent.sqlite"
    check_resumes_at_once_pay_once(
        f"sqlite|{db}", tmp_path / "agent.sqlite.ledger", processes=2
    )
