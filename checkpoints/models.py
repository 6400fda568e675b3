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


# --- The PostgresSaver's tables ---------------------------------------------------
#
# Mapped read-mostly and unmanaged: agentmatic.checkpoint.postgres owns the
# schema (numbered migrations of its own, applied by this app's migration
# 0002 through the saver's setup). Columns holding stored values (`checkpoint`,
# `blob`, `data`) are in the saver's format; read them through the saver.
# Text columns the saver leaves NULL map to null=True (hence the DJ001 marks).
# tests/test_postgres_models.py fails when these and the tables drift apart.


class StoredThread(models.Model):
    """One thread (and namespace) of the Postgres saver, locked by each write."""

    pk = models.CompositePrimaryKey("thread_id", "checkpoint_ns")
    thread_id = models.TextField()
    checkpoint_ns = models.TextField(default="", blank=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    last_checkpoint_id = models.TextField(null=True)  # noqa: DJ001
    segment = models.BigIntegerField(default=0)
    checkpoints = models.IntegerField(default=0)
    agent = models.TextField(null=True)  # noqa: DJ001
    started_by = models.TextField(null=True)  # noqa: DJ001
    forked_from = models.JSONField(null=True)

    class Meta:
        managed = False
        db_table = "agentmatic_threads"

    def __str__(self) -> str:
        return self.thread_id


class StoredCheckpoint(models.Model):
    """One immutable checkpoint row; `created_at` is what retention goes by."""

    pk = models.CompositePrimaryKey("thread_id", "checkpoint_ns", "checkpoint_id")
    thread_id = models.TextField()
    checkpoint_ns = models.TextField(default="", blank=True)
    checkpoint_id = models.TextField()
    parent_checkpoint_id = models.TextField(null=True)  # noqa: DJ001
    segment = models.BigIntegerField(default=0)
    created_at = models.DateTimeField()
    step = models.IntegerField(null=True)
    run_id = models.UUIDField(null=True)
    source = models.TextField(null=True)  # noqa: DJ001
    actor = models.TextField(null=True)  # noqa: DJ001
    type = models.TextField()
    checkpoint = models.BinaryField()
    metadata = models.JSONField(default=dict)
    # What a timeline needs of the checkpoint (msgpack), when the saver kept it.
    light = models.BinaryField(null=True)
    # The write that led here, when one task ran from the parent: a write of
    # the parent's, carried in this row instead of a `StoredWrite` of its own
    # (see migration 7 in agentmatic.checkpoint.postgres.schema). A NULL
    # `carried_type` is `type`.
    carried_task_id = models.UUIDField(null=True)
    carried_task_path = models.TextField(null=True)  # noqa: DJ001
    carried_idx = models.IntegerField(null=True)
    carried_channel = models.TextField(null=True)  # noqa: DJ001
    carried_type = models.TextField(null=True)  # noqa: DJ001
    carried_blob = models.BinaryField(null=True)
    carried_extra = models.BinaryField(null=True)

    class Meta:
        managed = False
        db_table = "agentmatic_checkpoints"

    def __str__(self) -> str:
        return f"{self.thread_id} @ {self.checkpoint_id}"


class StoredWrite(models.Model):
    """A write of a task that ran from a checkpoint (outlives the checkpoint row)."""

    pk = models.CompositePrimaryKey(
        "thread_id", "checkpoint_ns", "checkpoint_id", "task_id", "idx"
    )
    thread_id = models.TextField()
    checkpoint_ns = models.TextField(default="", blank=True)
    checkpoint_id = models.TextField()
    task_id = models.TextField()
    idx = models.IntegerField()
    channel = models.TextField()
    type = models.TextField(null=True)  # noqa: DJ001
    blob = models.BinaryField()
    # The task's further writes of the same call: msgpack [[idx, channel,
    # type, blob], ...] (see agentmatic.checkpoint.postgres.saver._expand).
    extra = models.BinaryField(null=True)
    task_path = models.TextField(default="", blank=True)
    segment = models.BigIntegerField(null=True)
    created_at = models.DateTimeField()

    class Meta:
        managed = False
        db_table = "agentmatic_writes"

    def __str__(self) -> str:
        return f"{self.channel} of {self.task_id}"


class StoredBlob(models.Model):
    """A channel value by version; no checkpoint row owns it."""

    pk = models.CompositePrimaryKey(
        "thread_id", "checkpoint_ns", "channel", "version", "segment"
    )
    thread_id = models.TextField()
    checkpoint_ns = models.TextField(default="", blank=True)
    channel = models.TextField()
    version = models.TextField()
    checkpoint_id = models.TextField()
    segment = models.BigIntegerField(default=0)
    type = models.TextField()
    data = models.BinaryField(null=True)
    chunks = models.BinaryField(null=True)
    base_version = models.TextField(null=True)  # noqa: DJ001
    depth = models.IntegerField(default=0)
    created_at = models.DateTimeField()

    class Meta:
        managed = False
        db_table = "agentmatic_blobs"

    def __str__(self) -> str:
        return f"{self.channel} v{self.version}"


class StoredChunk(models.Model):
    """A run of list items, keyed by the hash of its bytes within a thread."""

    pk = models.CompositePrimaryKey("thread_id", "hash")
    thread_id = models.TextField()
    hash = models.BinaryField()
    data = models.BinaryField()
    created_at = models.DateTimeField()

    class Meta:
        managed = False
        db_table = "agentmatic_chunks"

    def __str__(self) -> str:
        return f"chunk of {self.thread_id}"


class ThreadLease(models.Model):
    """Which process runs a thread, until when."""

    thread_id = models.TextField(primary_key=True)
    owner = models.TextField()
    acquired_at = models.DateTimeField()
    expires_at = models.DateTimeField()

    class Meta:
        managed = False
        db_table = "agentmatic_leases"

    def __str__(self) -> str:
        return f"{self.thread_id} held by {self.owner}"


class SaverMigration(models.Model):
    """A migration of the saver's own schema, applied once."""

    v = models.IntegerField(primary_key=True)
    applied_at = models.DateTimeField()

    class Meta:
        managed = False
        db_table = "agentmatic_migrations"

    def __str__(self) -> str:
        return f"saver migration {self.v}"
