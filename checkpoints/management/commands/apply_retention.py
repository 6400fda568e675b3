"""Delete old checkpoints as the retention policies say: `manage.py apply_retention`.

Each thread follows its agent's policy, or the default policy (the one with
no agent), or none: a thread without a policy is never touched, nor is a
thread under legal hold. The work is done by the library's `compact`, which
keeps each thread's newest checkpoint and everything a paused run or a fork
still needs. `compact` applies one number of days to a whole saver, so the
command runs it once per distinct number of days, with every thread that
follows another policy passed as held.

A policy that asks for an archive copies each checkpoint to the S3 archive
(AGENTMATIC_ARCHIVE, ``s3://bucket/prefix``) before deleting it; without
that setting its threads are left untouched.

Read-only checkpoint files (AGENTMATIC_READONLY_FILES) are never compacted.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from agentmatic.checkpoint.archive import S3Archive
from agentmatic.checkpoint.retention import compact_sync
from checkpoints.models import LegalHold, RetentionPolicy
from runs import services
from runs.indexing import index_threads
from runs.models import ThreadRecord

log = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Apply the retention policies and legal holds to the configured "
        "checkpoint store: delete checkpoints older than each agent's days to "
        "keep, except those a thread still needs."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Say which threads follow which policy; delete nothing.",
        )
        parser.add_argument(
            "--agent",
            default=None,
            help="Only the threads of this agent.",
        )
        parser.add_argument(
            "--as-of",
            default=None,
            help="Count the days back from this ISO time instead of now.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        as_of = _parse_time(options["as_of"]) if options["as_of"] else None
        policies = {p.agent: p for p in RetentionPolicy.objects.all()}
        if not policies:
            self.stdout.write("No retention policy is set; nothing to do.")
            return

        saver = services.get_saver()
        index_threads()
        thread_ids = set(saver.thread_ids())
        agents = dict(
            ThreadRecord.objects.filter(readonly_reason="").values_list(
                "thread_id", "agent"
            )
        )
        holds = set(LegalHold.objects.values_list("thread_id", flat=True))

        groups: dict[RetentionPolicy, set[str]] = defaultdict(set)
        unmanaged = 0
        for thread_id in thread_ids:
            agent = agents.get(thread_id, "")
            if options["agent"] is not None and agent != options["agent"]:
                continue
            policy = policies.get(agent) or policies.get("")
            if policy is None:
                unmanaged += 1
            else:
                groups[policy].add(thread_id)

        archive = _archive()
        by_days: dict[tuple[int, bool], set[str]] = defaultdict(set)
        for policy, members in sorted(groups.items(), key=lambda kv: kv[0].agent):
            scope = policy.agent or "default policy"
            held = len(members & holds)
            if policy.archive_to_s3 and archive is None:
                # Deleting without the archive the policy asks for would lose
                # data for good; such threads wait until there is one.
                self.stderr.write(
                    f"{scope}: archive to S3 is on, but AGENTMATIC_ARCHIVE "
                    f"(s3://bucket/prefix) is not set; {len(members)} threads "
                    "left untouched."
                )
                continue
            self.stdout.write(
                f"{scope}: keep {policy.days_to_keep} days, {len(members)} threads "
                f"({held} under legal hold)"
                + (f", archived to {archive!r} first." if policy.archive_to_s3 else ".")
            )
            by_days[(policy.days_to_keep, policy.archive_to_s3)] |= members
        if unmanaged:
            self.stdout.write(f"{unmanaged} threads follow no policy and are kept.")
        if options["dry_run"]:
            self.stdout.write("Dry run: nothing deleted.")
            return

        deleted = 0
        for (days, archived), members in sorted(by_days.items()):
            report = compact_sync(
                saver,
                retention_days=days,
                now=as_of,
                legal_holds=holds | (thread_ids - members),
                archive=archive if archived else None,
            )
            deleted += report.deleted
            self.stdout.write(
                f"{days} days: deleted {report.deleted} checkpoints, kept "
                f"{report.kept_recent} recent, {report.kept_newest} newest, "
                f"{report.kept_for_values} for values, {report.kept_for_forks} "
                "for forks."
            )
        log.info("retention applied: %s checkpoints deleted", deleted)
        self.stdout.write(f"Deleted {deleted} checkpoints in all.")


def _archive() -> S3Archive | None:
    """Return the S3 archive AGENTMATIC_ARCHIVE names, or None when unset."""
    found = settings.AGENTMATIC_ARCHIVE
    return None if found is None else S3Archive(*found)


def _parse_time(raw: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(raw)
    except ValueError as exc:
        raise CommandError(f"--as-of {raw!r} is not an ISO time") from exc
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)
