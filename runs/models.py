"""The runner's records: one row per execution, one index row per thread.

Checkpoints themselves live in the configured saver; these tables hold what
the saver does not know (who started a run, whether it is queued, why it
failed) and a denormalised row per thread so the threads list can page,
filter and search on the server at 100,000 threads.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import connections, models
from django.utils import timezone


class RunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    WAITING = "waiting", "Waiting for approval"
    FINISHED = "finished", "Finished"
    FAILED = "failed", "Failed"


class Run(models.Model):
    """One execution of an agent on a thread: a start, a resume or a fork."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    thread_id = models.CharField(
        max_length=255,
        db_index=True,
        help_text="The checkpoint thread this execution advanced.",
    )
    agent = models.CharField(
        max_length=100, help_text="Name of the agent, as given to Agent.builder()."
    )
    status = models.CharField(
        max_length=16,
        choices=RunStatus.choices,
        default=RunStatus.QUEUED,
        help_text="Set by the runner as the execution moves on; never guessed "
        "from checkpoints.",
    )
    error = models.TextField(
        blank=True, help_text="Why the execution failed, when it did."
    )
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="runs_started",
        help_text="The console user who started it, if one did.",
    )
    started_by_label = models.CharField(
        max_length=150,
        blank=True,
        help_text="Who started it as recorded in the checkpoint metadata "
        "(a username, a service, a command); kept if the user is deleted.",
    )
    created_at = models.DateTimeField(
        default=timezone.now, help_text="When the run was queued."
    )
    started_at = models.DateTimeField(
        null=True, blank=True, help_text="When a worker began executing it."
    )
    finished_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When it stopped: finished, failed, or paused for approval.",
    )
    checkpoint_id = models.CharField(
        max_length=64,
        blank=True,
        help_text="The thread's newest checkpoint after the execution stopped.",
    )
    forked_from_thread = models.CharField(
        max_length=255, blank=True, help_text="Source thread, for a fork."
    )
    forked_from_checkpoint = models.CharField(
        max_length=64,
        blank=True,
        help_text="Source checkpoint, for a fork or a replay.",
    )
    branch_name = models.CharField(
        max_length=100, blank=True, help_text="Label given to a fork or branch."
    )
    input = models.JSONField(
        null=True,
        blank=True,
        help_text="The input the run was started with; empty for a resume.",
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(
                fields=["thread_id", "-created_at"], name="runs_run_thread_recent_idx"
            ),
            models.Index(fields=["status", "created_at"], name="runs_run_status_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.agent} run on {self.thread_id} ({self.status})"


class ThreadRecordQuerySet(models.QuerySet["ThreadRecord"]):
    def with_prefix(self, prefix: str) -> ThreadRecordQuerySet:
        """Return the threads whose id starts with ``prefix`` (case-sensitive)."""
        matching = self.filter(thread_id__startswith=prefix)
        if connections[self.db].vendor == "sqlite":
            # SQLite's LIKE ignores case and so cannot use the index; a range
            # on the binary collation can, and keeps the match case-sensitive.
            matching = matching.filter(
                thread_id__gte=prefix, thread_id__lt=prefix + "\U0010ffff"
            )
        return matching


class ThreadRecord(models.Model):
    """A denormalised row per thread, kept current by the runner and the indexer.

    The saver remains the truth about a thread's checkpoints; this row only
    makes the threads list fast and filterable.
    """

    thread_id = models.CharField(
        max_length=255, unique=True, help_text="The checkpoint thread's id."
    )
    agent = models.CharField(
        max_length=100, blank=True, help_text="Agent named in the first checkpoint."
    )
    status = models.CharField(
        max_length=16, choices=RunStatus.choices, default=RunStatus.FINISHED
    )
    last_step = models.IntegerField(
        null=True, blank=True, help_text="Step of the newest checkpoint."
    )
    updated_at = models.DateTimeField(
        default=timezone.now, help_text="Time of the newest checkpoint or run change."
    )
    started_by = models.CharField(
        max_length=150, blank=True, help_text="Who started the thread's first run."
    )
    forked_from_thread = models.CharField(max_length=255, blank=True)
    forked_from_checkpoint = models.CharField(max_length=64, blank=True)
    readonly_reason = models.CharField(
        max_length=255,
        blank=True,
        help_text="Why the console cannot resume this thread (for example, it "
        "comes from a read-only file); empty when it can.",
    )

    objects = ThreadRecordQuerySet.as_manager()

    class Meta:
        ordering = ["-updated_at"]
        permissions = [("fork_thread", "Can fork a thread from any checkpoint")]
        indexes = [
            models.Index(fields=["-updated_at"], name="runs_thread_recent_idx"),
            models.Index(
                fields=["status", "-updated_at"], name="runs_thread_status_idx"
            ),
            models.Index(fields=["agent", "-updated_at"], name="runs_thread_agent_idx"),
            # A thread page lists its branches; the threads list counts them.
            models.Index(fields=["forked_from_thread"], name="runs_thread_forks_idx"),
            # Prefix search on PostgreSQL: LIKE 'x%' uses a pattern_ops index
            # whatever the database collation. (On SQLite it is a plain index
            # that the range query in with_prefix() need not use.)
            models.Index(
                fields=["thread_id"],
                name="runs_thread_prefix_idx",
                opclasses=["varchar_pattern_ops"],
            ),
        ]

    def __str__(self) -> str:
        return self.thread_id

    @property
    def is_readonly(self) -> bool:
        return bool(self.readonly_reason)
