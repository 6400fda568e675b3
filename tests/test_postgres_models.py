"""The checkpoints app's unmanaged models match the PostgresSaver's tables.

The saver owns the schema; the Django models only map it. These tests
create the tables the way each side does (the saver's `setup()`, and the
app's migration on a Postgres connection) and compare every model field
with the column of the same name: type, nullability and primary key. Any
change to one side without the other fails here.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

import psycopg
import pytest
from django.apps import apps

from agentmatic.checkpoint.postgres import PostgresSaver
from agentmatic.checkpoint.postgres.schema import LATEST, TABLES

# Django field class -> the type information_schema reports for its column.
PG_TYPES = {
    "TextField": "text",
    "IntegerField": "integer",
    "BigIntegerField": "bigint",
    "DateTimeField": "timestamp with time zone",
    "BinaryField": "bytea",
    "JSONField": "jsonb",
    "UUIDField": "uuid",
}


def saver_models() -> dict[str, Any]:
    return {
        model._meta.db_table: model
        for model in apps.get_app_config("checkpoints").get_models()
        if not model._meta.managed
    }


def table_columns(url: str, table: str) -> dict[str, tuple[str, bool]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT column_name, data_type, is_nullable = 'YES' "
            "FROM information_schema.columns WHERE table_name = %s "
            "AND table_schema = current_schema()",
            (table,),
        ).fetchall()
    return {name: (kind, nullable) for name, kind, nullable in rows}


def primary_key(url: str, table: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
            "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
            "WHERE i.indrelid = %s::regclass AND i.indisprimary "
            "ORDER BY array_position(i.indkey, a.attnum)",
            (table,),
        ).fetchall()
    return [r[0] for r in rows]


def model_columns(model: Any) -> dict[str, tuple[str, bool]]:
    out = {}
    for field in model._meta.concrete_fields:
        if field.get_internal_type() == "CompositePrimaryKey":
            continue
        out[field.column] = (PG_TYPES[field.get_internal_type()], field.null)
    return out


def model_primary_key(model: Any) -> list[str]:
    pk = model._meta.pk
    names = getattr(pk, "field_names", None)
    if names is not None:  # a CompositePrimaryKey
        return [model._meta.get_field(name).column for name in names]
    return [pk.column]


def test_every_saver_table_has_a_model():
    assert set(saver_models()) == set(TABLES)


@pytest.mark.parametrize("table", TABLES)
def test_the_model_matches_the_table_the_saver_creates(pg_url, table):
    saver = PostgresSaver(pg_url)
    saver.setup()
    saver.close()
    model = saver_models()[table]
    assert model_columns(model) == table_columns(pg_url, table)
    assert model_primary_key(model) == primary_key(pg_url, table)


class _Connection:
    """Just enough of a Django connection for the migration's RunPython."""

    def __init__(self, vendor: str, url: str | None = None) -> None:
        self.vendor = vendor
        self._conn = psycopg.connect(url) if url else None

    def cursor(self) -> Any:
        assert self._conn is not None, "the migration must not touch SQLite"
        return self._conn.cursor()

    def finish(self) -> None:
        if self._conn is not None:
            self._conn.commit()
            self._conn.close()


class _SchemaEditor:
    def __init__(self, connection: _Connection) -> None:
        self.connection = connection


def migration_function() -> Any:
    module = import_module("checkpoints.migrations.0002_postgres_saver_tables")
    return module.create_saver_tables


def test_the_apps_migration_creates_the_saver_tables_on_postgres(pg_url):
    connection = _Connection("postgresql", pg_url)
    migration_function()(apps, _SchemaEditor(connection))
    migration_function()(apps, _SchemaEditor(connection))  # a rerun is a no-op
    connection.finish()
    with psycopg.connect(pg_url) as conn:
        applied = conn.execute("SELECT count(*) FROM agentmatic_migrations").fetchone()
    assert applied == (LATEST,)
    # A saver opening the database later finds nothing left to do.
    saver = PostgresSaver(pg_url)
    assert saver.setup() == []
    saver.close()
    for table, model in saver_models().items():
        assert model_columns(model) == table_columns(pg_url, table)


def test_the_apps_migration_does_nothing_on_sqlite():
    migration_function()(apps, _SchemaEditor(_Connection("sqlite")))
