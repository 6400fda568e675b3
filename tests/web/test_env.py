"""The settings helpers read the environment and refuse malformed values."""

from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from agentmatic_web.env import (
    env_bool,
    env_choice,
    env_int,
    env_list,
    env_str,
    parse_archive_url,
    parse_checkpoint_url,
    parse_database_url,
    read_or_create_secret,
)

BASE = Path("/srv/console")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("TRUE", True),
        ("on", True),
        ("no", False),
        ("0", False),
        ("", False),
    ],
)
def test_env_bool_reads_the_usual_spellings(raw, expected):
    assert env_bool("FLAG", not expected, {"FLAG": raw}) is expected


def test_env_bool_uses_the_default_when_unset():
    assert env_bool("FLAG", True, {}) is True


@pytest.mark.parametrize("raw", ["maybe", "2", "tru"])
def test_env_bool_refuses_anything_else(raw):
    with pytest.raises(ImproperlyConfigured, match="FLAG"):
        env_bool("FLAG", False, {"FLAG": raw})


def test_env_int_reads_and_checks_the_minimum():
    assert env_int("N", 5, {"N": " 42 "}) == 42
    assert env_int("N", 5, {}) == 5
    with pytest.raises(ImproperlyConfigured, match="N='forty'"):
        env_int("N", 5, {"N": "forty"})
    with pytest.raises(ImproperlyConfigured, match="minimum"):
        env_int("N", 5, {"N": "-1"}, minimum=0)


def test_env_list_splits_on_commas_and_refuses_empty_items():
    assert env_list("HOSTS", ["localhost"], {}) == ["localhost"]
    assert env_list("HOSTS", ["localhost"], {"HOSTS": "a.example, b.example"}) == [
        "a.example",
        "b.example",
    ]
    assert env_list("HOSTS", ["localhost"], {"HOSTS": ""}) == []
    with pytest.raises(ImproperlyConfigured, match="HOSTS"):
        env_list("HOSTS", [], {"HOSTS": "a,,b"})


def test_env_str_and_choice():
    assert env_str("S", "d", {"S": "  "}) == "d"
    assert (
        env_choice("RUNNER", "thread", ("thread", "celery"), {"RUNNER": "celery"})
        == "celery"
    )
    with pytest.raises(ImproperlyConfigured, match="RUNNER='cron'"):
        env_choice("RUNNER", "thread", ("thread", "celery"), {"RUNNER": "cron"})


def test_database_url_for_postgres():
    config = parse_database_url(
        "postgresql://app:p%40ss@db.internal:5433/console?sslmode=require", BASE
    )

    assert config == {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "console",
        "USER": "app",
        "PASSWORD": "p@ss",
        "HOST": "db.internal",
        "PORT": "5433",
        "OPTIONS": {"sslmode": "require"},
    }
    assert parse_database_url("postgres://localhost/x", BASE)["PORT"] == ""


def test_database_url_for_sqlite_paths():
    assert (
        parse_database_url("sqlite:///.data/db.sqlite3", BASE)["NAME"]
        == "/srv/console/.data/db.sqlite3"
    )
    assert (
        parse_database_url("sqlite:////var/lib/db.sqlite3", BASE)["NAME"]
        == "/var/lib/db.sqlite3"
    )


@pytest.mark.parametrize(
    "url",
    [
        "mysql://u@h/db",
        "postgresql://u:secret@h:5432/",
        "postgresql://h:notaport/db",
        "sqlite://host/db",
        "sqlite:///",
    ],
)
def test_database_url_refuses_what_it_cannot_use_without_echoing_secrets(url):
    with pytest.raises(ImproperlyConfigured) as error:
        parse_database_url(url, BASE)

    assert "secret" not in str(error.value)


@pytest.mark.parametrize(
    ("url", "kind", "location", "prefix"),
    [
        (
            "sqlite:///.data/checkpoints.sqlite",
            "sqlite",
            "/srv/console/.data/checkpoints.sqlite",
            "",
        ),
        ("sqlite:////tmp/c.sqlite", "sqlite", "/tmp/c.sqlite", ""),
        ("postgresql://u@h/agents", "postgresql", "postgresql://u@h/agents", ""),
        ("redis://localhost:6379/0", "redis", "redis://localhost:6379/0", ""),
        ("s3://agents/prod/eu", "s3", "agents", "prod/eu"),
        ("memory://", "memory", "", ""),
    ],
)
def test_checkpoint_urls_name_their_store(url, kind, location, prefix):
    store = parse_checkpoint_url(url, BASE)

    assert (store.kind, store.location, store.prefix) == (kind, location, prefix)


@pytest.mark.parametrize(
    "url", ["ftp://x/y", "s3://", "redis://", "postgresql://h/", "checkpoints.sqlite"]
)
def test_checkpoint_urls_refuse_what_they_cannot_use(url):
    with pytest.raises(ImproperlyConfigured, match="AGENTMATIC_CHECKPOINTS"):
        parse_checkpoint_url(url, BASE)


def test_the_generated_secret_is_private_and_stable(tmp_path):
    path = tmp_path / "nested" / "secret_key"

    first = read_or_create_secret(path)

    assert len(first) >= 50
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_or_create_secret(path) == first
    assert list(path.parent.iterdir()) == [path]  # no temporary files left


def test_a_damaged_secret_file_is_refused(tmp_path):
    path = tmp_path / "secret_key"
    path.write_text("short")

    with pytest.raises(ImproperlyConfigured, match="DJANGO_SECRET_KEY"):
        read_or_create_secret(path)


def test_the_archive_is_an_s3_url_or_unset():
    assert parse_archive_url("") is None
    assert parse_archive_url("s3://backups/agentmatic/old") == (
        "backups",
        "agentmatic/old",
    )
    assert parse_archive_url("s3://backups") == ("backups", "")
    for wrong in ("backups/agentmatic", "file:///tmp/x", "s3:///no-bucket"):
        with pytest.raises(ImproperlyConfigured, match="AGENTMATIC_ARCHIVE"):
            parse_archive_url(wrong)
