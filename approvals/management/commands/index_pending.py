"""Bring the approval queue's index in step with the checkpoint store."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from approvals.pending import sync_thread, sync_waiting_threads


class Command(BaseCommand):
    help = (
        "Index the gated calls of waiting threads the queue does not list yet "
        "(threads paused by another writer of the same store), or re-read the "
        "named threads."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("thread_ids", nargs="*", help="Re-read these threads.")

    def handle(self, *args: Any, thread_ids: list[str], **options: Any) -> None:
        if thread_ids:
            waiting = sum(len(sync_thread(thread_id)) for thread_id in thread_ids)
            self.stdout.write(
                f"Re-read {len(thread_ids)} thread(s); {waiting} call(s) wait."
            )
            return
        count = sync_waiting_threads()
        self.stdout.write(f"Indexed {count} waiting thread(s) the queue did not list.")
