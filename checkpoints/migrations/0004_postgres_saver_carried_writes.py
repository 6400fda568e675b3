"""Bring the PostgresSaver's own migrations up to date on Postgres.

The saver's seventh migration lets a checkpoint row carry the write that
led to it. `PostgresSaver` would apply it on first use anyway; this makes
``manage.py migrate`` leave nothing for it to do.
"""

from importlib import import_module

from django.db import migrations

saver_tables = import_module("checkpoints.migrations.0002_postgres_saver_tables")


class Migration(migrations.Migration):
    dependencies = [
        ("checkpoints", "0003_postgres_saver_step_function"),
    ]

    operations = [
        migrations.RunPython(
            saver_tables.create_saver_tables, migrations.RunPython.noop
        ),
    ]
