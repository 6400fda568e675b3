"""Add threads the runner never ran to the threads index: `manage.py index_threads`."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from runs.indexing import index_threads


class Command(BaseCommand):
    help = (
        "Read each checkpoint store's thread list (the configured saver and "
        "the files of AGENTMATIC_READONLY_FILES) and add or refresh their rows "
        "in the threads index. Without --full it stops at the first page that "
        "is already current."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--full", action="store_true", help="Walk every thread of every store."
        )

    def handle(self, *args: Any, full: bool = False, **options: Any) -> None:
        report = index_threads(full=full)
        self.stdout.write(
            f"Read {report.seen} threads from {', '.join(report.stores)}: "
            f"{report.created} new, {report.updated} refreshed."
        )
