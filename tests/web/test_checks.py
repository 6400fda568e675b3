"""Configuration mistakes surface as system checks or stop the start-up."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentmatic_web import checks

ROOT = Path(__file__).resolve().parents[2]


def test_a_generated_secret_key_is_flagged_for_deployments(settings):
    settings.SECRET_KEY_FROM_FILE = True
    assert [m.id for m in checks.check_secret_key_source(None)] == [
        "agentmatic_web.W001"
    ]

    settings.SECRET_KEY_FROM_FILE = False
    assert checks.check_secret_key_source(None) == []


def test_a_missing_readonly_file_is_flagged(settings, tmp_path):
    present = tmp_path / "present.sqlite"
    present.touch()
    settings.AGENTMATIC_READONLY_FILES = [str(present), str(tmp_path / "gone.sqlite")]

    messages = checks.check_readonly_files(None)

    assert [m.id for m in messages] == ["agentmatic_web.W002"]
    assert "gone.sqlite" in messages[0].msg


def test_redis_without_channels_redis_is_an_error(settings, monkeypatch):
    settings.REDIS_URL = "redis://127.0.0.1:6379/0"
    monkeypatch.setattr(checks.importlib.util, "find_spec", lambda name: None)

    assert [m.id for m in checks.check_optional_packages(None)] == [
        "agentmatic_web.E001"
    ]


def _manage(*args, **env):
    environment = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "AGENTMATIC_"))
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**environment, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DJANGO_DEBUG", "maybe"),
        ("AGENTMATIC_CHECKPOINTS", "ftp://somewhere/x"),
        ("AGENTMATIC_RUNNER", "cron"),
        ("DATABASE_URL", "mysql://u@127.0.0.1/db"),
    ],
)
def test_a_malformed_variable_stops_the_start_up(tmp_path, name, value):
    result = _manage("check", AGENTMATIC_DATA_DIR=str(tmp_path), **{name: value})

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert name in result.stderr


def test_the_deploy_check_passes_with_a_production_environment(tmp_path):
    result = _manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        AGENTMATIC_DATA_DIR=str(tmp_path),
        DJANGO_SECRET_KEY="x" * 20 + "-production-key-from-the-environment-0123456789",
        DJANGO_ALLOWED_HOSTS="console.example",
        DJANGO_SECURE_SSL_REDIRECT="1",
        DJANGO_HSTS_SECONDS="31536000",
        DJANGO_HSTS_INCLUDE_SUBDOMAINS="1",
        DJANGO_HSTS_PRELOAD="1",
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert not (tmp_path / "secret_key").exists()
