"""Postgres for tests: a fresh database per test, on the server the run points at.

The root conftest registers this module as a plugin, so tests just ask for
`pg_url` (or `pg_server`). The server comes from
``AGENTMATIC_TEST_POSTGRES_URL`` (default: the local server as user
postgres). Each test gets its own database, created empty and dropped
afterwards, so tests run in parallel (pytest-xdist) without seeing each
other. When the server cannot be reached the tests are skipped, except with
``CI=true``, where that is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def server_url() -> str:
    return os.environ.get("AGENTMATIC_TEST_POSTGRES_URL", DEFAULT_SERVER)


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def _reachable(url: str) -> str | None:
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return str(exc)
    return None


@pytest.fixture(scope="session")
def pg_server() -> str:
    """Return the admin URL of the test server; skip (fail on CI) without one."""
    url = server_url()
    problem = _reachable(url)
    if problem is not None:
        message = f"Postgres at {url} is unreachable: {problem}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return url


def create_database(server: str) -> str:
    name = f"agentmatic_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(server: str, name: str) -> None:
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """Return the URL of a new, empty database, dropped after the test."""
    name = create_database(pg_server)
    try:
        yield with_database(pg_server, name)
    finally:
        drop_database(pg_server, name)


def table_bytes(url: str, tables: list[str]) -> int:
    """Return pg_total_relation_size summed over tables (indexes, TOAST included)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "WHERE c.relname = ANY(%s) AND c.relkind = 'r'",
            (tables,),
        ).fetchone()
    return int(row[0]) if row else 0
