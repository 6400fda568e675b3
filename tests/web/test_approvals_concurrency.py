"""Two reviewers deciding one call at the same moment: exactly one wins.

The two reviewers post from two threads released by a barrier, in a console
process of their own on a database file (or a Postgres database) that each
thread reaches through its own connection, as two server workers would.
(pytest-django's in-memory SQLite shares one cache between connections and
locks whole tables, which says nothing about either real database.)
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["tests.pg"]

ROOT = Path(__file__).resolve().parents[2]


def console_env(tmp_path: Path, database_url: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AGENTMATIC_", "DJANGO_", "CELERY_"))
        and key not in ("DATABASE_URL", "REDIS_URL", "OPENAI_API_KEY")
    }
    env.update(
        DJANGO_SETTINGS_MODULE="agentmatic_web.settings",
        DJANGO_SECRET_KEY="test-only-secret-key-for-a-throwaway-console",
        DJANGO_ALLOWED_HOSTS="testserver,localhost,127.0.0.1",
        DATABASE_URL=database_url,
        AGENTMATIC_DATA_DIR=str(tmp_path / "data"),
        AGENTMATIC_CHECKPOINTS=f"sqlite:///{tmp_path / 'checkpoints.sqlite'}",
        AGENTMATIC_LOG_LEVEL="WARNING",
    )
    return env


def run_console(env: dict[str, str], *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "tests.web.approvals_process", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'console.sqlite3'}"
    return request.getfixturevalue("pg_url")


@pytest.mark.parametrize("kinds", [("approve", "approve"), ("approve", "reject")])
def test_two_reviewers_deciding_at_once_give_one_decision_and_one_resume(
    tmp_path, database_url, kinds
):
    env = console_env(tmp_path, database_url)
    env["AGENTMATIC_TEST_INLINE"] = "1"
    run_console(env, "setup")
    run_console(env, "request", "case-race", "Refund order #1042 for $250.")

    result = run_console(env, "race", "case-race", *kinds)

    assert result["errors"] == []
    assert sorted(result["statuses"].values()) == [302, 409]
    assert result["decisions"] == 1
    assert result["final"] == 1
    assert result["resumes"] == 1
    assert result["refunds"] == (1 if result["final_kinds"] == ["approve"] else 0)
    assert result["call_states"] == ["decided"]
