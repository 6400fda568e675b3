"""A real Celery worker runs a queued run, and the resume after an approval.

The console (a process of ``tests.web.approvals_process``) and the worker
(``celery -A agentmatic_web worker``) share a SQLite database file and a
SQLite checkpoint file; the broker is the machine's Redis, on a queue named
for this test only.
"""

import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
import redis

from tests.web.test_approvals_concurrency import ROOT, console_env, run_console

pytestmark = pytest.mark.xdist_group("celery")

WAIT_SECONDS = 90


@pytest.fixture
def celery_env(tmp_path, redis_url):
    queue = f"agentmatic-test-{uuid.uuid4().hex[:12]}"
    env = console_env(tmp_path, f"sqlite:///{tmp_path / 'console.sqlite3'}")
    env.update(
        AGENTMATIC_RUNNER="celery",
        CELERY_BROKER_URL=redis_url,
        AGENTMATIC_TEST_CELERY_QUEUE=queue,
    )
    yield env
    client = redis.Redis.from_url(redis_url)
    client.delete(queue)
    client.close()


@pytest.fixture
def worker(celery_env, tmp_path):
    run_console(celery_env, "setup")
    log = (tmp_path / "worker.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "agentmatic_web",
            "worker",
            "--pool=solo",
            "-l",
            "warning",
            "-Q",
            celery_env["AGENTMATIC_TEST_CELERY_QUEUE"],
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=ROOT,
        env=celery_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    yield process
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
    log.close()


def wait_for(db: Path, sql: str, params: tuple, expected: object, worker, log: Path):
    """Poll the shared database until the query answers ``expected``."""
    deadline = time.monotonic() + WAIT_SECONDS
    seen = None
    while time.monotonic() < deadline:
        assert worker.poll() is None, "the worker died:\n" + log.read_text()[-3000:]
        with sqlite3.connect(db, timeout=10) as conn:
            row = conn.execute(sql, params).fetchone()
        seen = row[0] if row else None
        if seen == expected:
            return
        time.sleep(0.3)
    pytest.fail(
        f"waited {WAIT_SECONDS}s for {expected!r}, saw {seen!r}:\n"
        + log.read_text()[-3000:]
    )


def test_a_worker_runs_a_queued_run_and_the_resume_after_an_approval(
    tmp_path, celery_env, worker
):
    db = tmp_path / "console.sqlite3"
    log = tmp_path / "worker.log"

    queued = run_console(
        celery_env, "request", "case-celery", "Refund order #1042 for $250."
    )

    assert queued["status"] == "queued"
    wait_for(
        db,
        "SELECT status FROM runs_run WHERE id = ?",
        (queued["run"].replace("-", ""),),
        "waiting",
        worker,
        log,
    )
    with sqlite3.connect(db) as conn:
        pending = conn.execute(
            "SELECT count(*) FROM approvals_pendingcall "
            "WHERE thread_id = 'case-celery' AND state = 'pending'"
        ).fetchone()[0]
    assert pending == 1

    approved = run_console(celery_env, "approve", "case-celery", "rita-reviewer")

    # The worker may finish the resume before this process reads the status.
    assert approved["status"] in ("recorded", "resumed", "done")
    wait_for(
        db,
        "SELECT status FROM approvals_decision WHERE id = ?",
        (approved["decision"],),
        "done",
        worker,
        log,
    )
    with sqlite3.connect(db) as conn:
        outcome = conn.execute(
            "SELECT outcome FROM approvals_decision WHERE id = ?",
            (approved["decision"],),
        ).fetchone()[0]
        refunds = conn.execute(
            "SELECT amount, currency, to_account FROM approvals_refund"
        ).fetchall()
        statuses = [
            row[0]
            for row in conn.execute(
                "SELECT status FROM runs_run WHERE thread_id = 'case-celery' "
                "ORDER BY created_at"
            )
        ]
    assert "Refund of $250.00 sent to acct-1986" in outcome
    assert [(Decimal(str(a)), c, t) for a, c, t in refunds] == [
        (Decimal("250"), "USD", "acct-1986")
    ]
    assert statuses == ["waiting", "finished"]
