"""Retention of checkpoints: how long to keep them, and which never to delete.

The unmanaged models over the PostgresSaver's own tables (the
``agentmatic_checkpoints`` table with its ``created_at`` column, and the
blobs and writes tables) will live in this module too, mapped with
``managed = False``: the saver owns and migrates that schema, and this app's
migration will call the saver's ``setup()`` rather than create the tables.
"""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models


class RetentionPolicyQuerySet(models.QuerySet["RetentionPolicy"]):
    def for_agent(self, agent: str) -> RetentionPolicy | None:
        """Return the agent's policy, else the default one, else ``None``."""
        candidates = self.filter(agent__in=[agent, ""])
        # A non-empty agent sorts after "", so the agent's own comes first.
        return candidates.order_by("-agent").first()


class RetentionPolicy(models.Model):
    """How many days of checkpoints to keep for an agent's threads."""

    agent = models.CharField(
        max_length=100,
        unique=True,
        blank=True,
        help_text="Agent this policy applies to. Leave empty for the default "
        "policy, used for every agent without one of its own.",
    )
    days_to_keep = models.PositiveIntegerField(
        validators=[MinValueValidator(1)],
        help_text="Checkpoints older than this many days are deleted, except a "
        "thread's newest checkpoint, those a paused run or a fork still needs, "
        "and every checkpoint of a thread under legal hold.",
    )
    archive_to_s3 = models.BooleanField(
        "archive to S3",
        default=False,
        help_text="Copy checkpoints to the S3 archive before deleting them.",
    )
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        editable=False,
        help_text="The last person to change this policy.",
    )

    objects = RetentionPolicyQuerySet.as_manager()

    class Meta:
        verbose_name_plural = "retention policies"
        ordering = ["agent"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(days_to_keep__gte=1),
                name="checkpoints_retention_keeps_a_day",
            )
        ]

    def __str__(self) -> str:
        scope = self.agent or "default (all agents)"
        return f"{scope}: keep {self.days_to_keep} days"


class LegalHold(models.Model):
    """A thread that retention must never delete from, and why."""

    thread_id = models.CharField(
        max_length=255, unique=True, help_text="The thread to keep in full."
    )
    reason = models.TextField(
        help_text="Why the thread is held, for example a dispute or an audit."
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        editable=False,
        help_text="Who placed the hold.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Legal hold on {self.thread_id}"
