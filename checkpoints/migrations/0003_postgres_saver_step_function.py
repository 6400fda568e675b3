"""Bring the PostgresSaver's own migrations up to date on Postgres.

The saver's fifth and sixth migrations store a step's writes with its
checkpoint in one statement and give each checkpoint a timeline summary.
`PostgresSaver` would apply them on first use anyway; this makes
``manage.py migrate`` leave nothing for it to do.
"""

from importlib import import_module

from django.db import migrations

saver_tables = import_module("checkpoints.migrations.0002_postgres_saver_tables")


class Migration(migrations.Migration):
    dependencies = [
        ("checkpoints", "0002_postgres_saver_tables"),
    ]

    operations = [
        migrations.RunPython(
            saver_tables.create_saver_tables, migrations.RunPython.noop
        ),
    ]
