"""Approval policies, who may approve what, and every decision taken.

A gated tool call is identified by (thread, checkpoint, tool call id): the
checkpoint pins the decision to the state it was made on, so a decision on a
proposal that has since moved on can be recognised as stale.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

# Every amount: up to a trillion with cents.
MAX_DIGITS, DECIMAL_PLACES = 14, 2


class ApprovalPolicyQuerySet(models.QuerySet["ApprovalPolicy"]):
    def for_call(self, tool: str, agent: str) -> ApprovalPolicy | None:
        """Return the active policy for ``tool`` called by ``agent``.

        A policy naming the agent wins over the tool's policy for all agents.
        """
        candidates = self.filter(active=True, tool=tool).filter(
            Q(agent=agent) | Q(agent="")
        )
        # Non-empty agent sorts after "", so the most specific comes first.
        return candidates.order_by("-agent").first()


class ApprovalPolicy(models.Model):
    """When a tool call must wait for a human, and how many humans."""

    tool = models.CharField(
        max_length=100,
        help_text="Name of the gated tool, for example transfer_funds.",
    )
    agent = models.CharField(
        max_length=100,
        blank=True,
        help_text="Agent this policy applies to; leave empty for every agent. "
        "A policy naming the agent wins over one for all agents.",
    )
    amount_field = models.CharField(
        max_length=100,
        default="amount",
        help_text="Argument of the tool call that holds the amount.",
    )
    # Amounts are compared as numbers in the call's own currency: a policy
    # is currency-blind until it gains a currency (or conversion) of its own.
    threshold = models.DecimalField(
        max_digits=MAX_DIGITS,
        decimal_places=DECIMAL_PLACES,
        validators=[MinValueValidator(Decimal(0))],
        help_text="Calls with an amount at or above this wait for approval "
        "(in the call's own currency; no conversion). A call without a "
        "readable amount always waits.",
    )
    four_eyes_above = models.DecimalField(
        max_digits=MAX_DIGITS,
        decimal_places=DECIMAL_PLACES,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal(0))],
        help_text="Above this amount two different people must approve. Leave "
        "empty to need one approver only.",
    )
    active = models.BooleanField(
        default=True, help_text="Inactive policies are kept but not applied."
    )
    updated_at = models.DateTimeField(auto_now=True)

    objects = ApprovalPolicyQuerySet.as_manager()

    class Meta:
        verbose_name_plural = "approval policies"
        ordering = ["tool", "agent"]
        constraints = [
            models.UniqueConstraint(
                fields=["tool", "agent"], name="approvals_policy_one_per_tool_agent"
            ),
            models.CheckConstraint(
                condition=Q(four_eyes_above__isnull=True)
                | Q(four_eyes_above__gte=models.F("threshold")),
                name="approvals_policy_four_eyes_above_threshold",
                violation_error_message="The four-eyes amount cannot be below "
                "the approval threshold.",
            ),
        ]

    def __str__(self) -> str:
        scope = self.agent or "all agents"
        return f"{self.tool} ({scope}): approval from {self.threshold}"

    def needs_approval(self, amount: Decimal | None) -> bool:
        """Return whether a call with ``amount`` must wait for a human."""
        return amount is None or amount >= self.threshold

    def approvers_required(self, amount: Decimal | None) -> int:
        """Return how many distinct people must approve a call with ``amount``."""
        if not self.needs_approval(amount):
            return 0
        if self.four_eyes_above is not None and (
            amount is None or amount > self.four_eyes_above
        ):
            return 2
        return 1

    def describe(self) -> str:
        """Return the rule in words, as the approval queue shows it."""
        rule = f"≥ {_plain(self.threshold)} needs approval"
        if self.four_eyes_above is not None:
            rule += f"; two approvers above {_plain(self.four_eyes_above)}"
        return rule


def _plain(amount: Decimal) -> str:
    """Return ``amount`` with thousands separators and cents only if any."""
    amount = Decimal(amount)
    if amount == amount.to_integral_value():
        return f"{amount:,.0f}"
    return f"{amount:,.2f}"


class ApproverLimit(models.Model):
    """The largest amount one person may approve on their own."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="approver_limit",
        help_text="The approver. Superusers have no limit and need no row here.",
    )
    max_amount = models.DecimalField(
        max_digits=MAX_DIGITS,
        decimal_places=DECIMAL_PLACES,
        validators=[MinValueValidator(Decimal(0))],
        help_text="Calls with an amount up to and including this may be "
        "approved by this user.",
    )

    class Meta:
        ordering = ["user__username"]

    def __str__(self) -> str:
        return f"{self.user} may approve up to {self.max_amount}"

    @classmethod
    def allows(
        cls, user: AbstractBaseUser | AnonymousUser, amount: Decimal | None
    ) -> bool:
        """Return whether ``user`` may approve a call of ``amount``.

        Without a limit row nobody but a superuser may approve; a call with
        no readable amount needs a limit row but no particular size of it.
        """
        if not user.is_authenticated or not user.is_active:
            return False
        if getattr(user, "is_superuser", False):
            return True
        limit = cls.objects.filter(user=user).values_list("max_amount", flat=True)
        max_amount = limit.first()
        if max_amount is None:
            return False
        return amount is None or amount <= max_amount


class DecisionKind(models.TextChoices):
    APPROVE = "approve", "Approve"
    MODIFY = "modify", "Modify"
    REJECT = "reject", "Reject"


class DecisionStatus(models.TextChoices):
    AWAITING = "awaiting", "Awaiting second approver"
    RECORDED = "recorded", "Recorded"
    RESUMED = "resumed", "Run resumed"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"
    STALE = "stale", "Stale"
    OVERRULED = "overruled", "Overruled"


class DecisionQuerySet(models.QuerySet["Decision"]):
    def for_call(
        self, thread_id: str, checkpoint_id: str, tool_call_id: str
    ) -> DecisionQuerySet:
        """Return the decisions on one pending tool call."""
        return self.filter(
            thread_id=thread_id, checkpoint_id=checkpoint_id, tool_call_id=tool_call_id
        )

    def approver_count(self) -> int:
        """Return how many distinct people approved, among these decisions.

        Call it on ``for_call(...)``. Stale decisions do not count: they were
        made on a proposal that is no longer current.
        """
        return (
            self.filter(kind=DecisionKind.APPROVE)
            .exclude(status=DecisionStatus.STALE)
            .values("actor")
            .distinct()
            .count()
        )


class Decision(models.Model):
    """One person's decision on one gated tool call, and what came of it."""

    thread_id = models.CharField(max_length=255)
    checkpoint_id = models.CharField(
        max_length=64, help_text="The checkpoint the decision was made on."
    )
    tool_call_id = models.CharField(max_length=255)
    tool = models.CharField(max_length=100)
    kind = models.CharField(max_length=16, choices=DecisionKind.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="decisions",
        help_text="Who decided. Users with decisions cannot be deleted, only "
        "deactivated, so the audit trail stays whole.",
    )
    reason = models.TextField(blank=True, help_text="Why; required when rejecting.")
    args = models.JSONField(help_text="The arguments the model proposed.")
    modified_args = models.JSONField(
        null=True, blank=True, help_text="The arguments the reviewer set instead."
    )
    amount = models.DecimalField(
        max_digits=MAX_DIGITS,
        decimal_places=DECIMAL_PLACES,
        null=True,
        blank=True,
        help_text="The amount at stake, as read from the arguments decided on.",
    )
    currency = models.CharField(
        max_length=3, blank=True, help_text="ISO 4217 code, for example EUR."
    )
    outcome = models.TextField(
        blank=True,
        help_text="What happened after the run resumed, for example "
        '"refund sent" or the error.',
    )
    status = models.CharField(
        max_length=16, choices=DecisionStatus.choices, default=DecisionStatus.RECORDED
    )
    final = models.BooleanField(
        default=False,
        help_text="This decision was written to the checkpoint: the one that "
        "counts. At most one per call; a first approval awaiting a second "
        "approver is not final.",
    )
    run = models.ForeignKey(
        "runs.Run",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="decisions",
        help_text="The run that resumed the thread after this decision.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = DecisionQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        permissions = [("decide", "Can approve, modify or reject tool calls")]
        constraints = [
            models.UniqueConstraint(
                fields=["thread_id", "checkpoint_id", "tool_call_id", "actor"],
                name="approvals_decision_one_per_actor_per_call",
                violation_error_message="You have already decided on this call.",
            ),
            # With the claim on PendingCall this is the second line of defence:
            # two reviewers deciding at once never leave two final decisions.
            models.UniqueConstraint(
                fields=["thread_id", "checkpoint_id", "tool_call_id"],
                condition=Q(final=True),
                name="approvals_decision_one_final_per_call",
                violation_error_message="This call has already been decided.",
            ),
            models.CheckConstraint(
                condition=~Q(kind=DecisionKind.MODIFY) | Q(modified_args__isnull=False),
                name="approvals_decision_modify_has_args",
                violation_error_message="A modification needs the new arguments.",
            ),
            models.CheckConstraint(
                condition=~Q(kind=DecisionKind.REJECT) | ~Q(reason=""),
                name="approvals_decision_reject_has_reason",
                violation_error_message="A rejection needs a reason.",
            ),
            models.CheckConstraint(
                condition=Q(amount__isnull=True) | Q(amount__gte=0),
                name="approvals_decision_amount_not_negative",
            ),
        ]
        indexes = [
            models.Index(fields=["-created_at"], name="approvals_audit_recent_idx"),
            models.Index(
                fields=["actor", "-created_at"], name="approvals_audit_actor_idx"
            ),
            models.Index(
                fields=["tool", "-created_at"], name="approvals_audit_tool_idx"
            ),
        ]

    def __str__(self) -> str:
        return (
            f"{self.get_kind_display()} {self.tool} on {self.thread_id} by {self.actor}"
        )

    def clean(self) -> None:
        if self.kind == DecisionKind.REJECT and not self.reason.strip():
            raise ValidationError({"reason": "A rejection needs a reason."})

    @property
    def decided_args(self) -> dict[str, Any]:
        """Return the arguments the decision let run (modified or proposed)."""
        if self.kind == DecisionKind.MODIFY and self.modified_args is not None:
            return dict(self.modified_args)
        return dict(self.args or {})

    @property
    def changed_args(self) -> list[tuple[str, Any, Any]]:
        """Return ``(name, proposed, decided)`` for each argument a reviewer changed."""
        if self.kind != DecisionKind.MODIFY or self.modified_args is None:
            return []
        proposed, decided = self.args or {}, self.modified_args
        names = list(dict.fromkeys([*proposed, *decided]))
        return [
            (name, proposed.get(name), decided.get(name))
            for name in names
            if proposed.get(name) != decided.get(name)
        ]


# How long a decider may hold a call (see PendingCallQuerySet.release_stale_claims).
CLAIM_SECONDS = 60


class CallState(models.TextChoices):
    PENDING = "pending", "Waiting for a decision"
    DECIDING = "deciding", "Being decided"
    DECIDED = "decided", "Decided"
    STALE = "stale", "No longer current"


class PendingCallQuerySet(models.QuerySet["PendingCall"]):
    def waiting(self) -> PendingCallQuerySet:
        """Return the calls still waiting for a decision (a claim counts)."""
        return self.filter(state__in=[CallState.PENDING, CallState.DECIDING])

    def release_stale_claims(self) -> int:
        """Give back calls whose decider vanished mid-decision; return how many.

        A claim lasts the few seconds a decision takes; one older than
        `CLAIM_SECONDS` belongs to a process that died, and would otherwise
        keep the call from everyone.
        """
        cutoff = timezone.now() - timedelta(seconds=CLAIM_SECONDS)
        stale = self.filter(state=CallState.DECIDING, claimed_at__lt=cutoff)
        if not stale.exists():  # no write on the usual page view
            return 0
        return stale.update(state=CallState.PENDING, claimed_at=None)

    def mark_decided(self, **only_if: Any) -> int:
        """Mark these calls decided now, noting how long each waited.

        ``only_if`` narrows the update (``state=CallState.PENDING``), so a
        caller that lost a race changes nothing. Return how many changed.
        """
        now = timezone.now()
        changed = 0
        for pk, since in self.filter(**only_if).values_list("pk", "waiting_since"):
            waited = max(0, int((now - since).total_seconds()))
            changed += self.filter(pk=pk, **only_if).update(
                state=CallState.DECIDED, decided_at=now, wait_seconds=waited
            )
        return changed


class PendingCall(models.Model):
    """The queue's index of gated tool calls, one row per proposal.

    The checkpoint saver is the truth: a gated call is an interrupt stored on
    a thread's newest checkpoint. Reading every waiting thread's head on each
    page would not stay fast at 100,000 rows, so the runner copies each pause
    here when it happens, and the call page re-reads the head and corrects
    the row when they disagree. The row is also what two reviewers race for:
    deciding first claims it with a conditional update.
    """

    thread_id = models.CharField(max_length=255)
    checkpoint_id = models.CharField(
        max_length=64, help_text="The checkpoint that holds the proposal."
    )
    tool_call_id = models.CharField(max_length=255)
    tool = models.CharField(max_length=100)
    agent = models.CharField(max_length=100, blank=True)
    args = models.JSONField(help_text="The arguments the model proposed.")
    amount = models.DecimalField(
        max_digits=MAX_DIGITS,
        decimal_places=DECIMAL_PLACES,
        null=True,
        blank=True,
        help_text="The amount read from the arguments, if any.",
    )
    currency = models.CharField(max_length=3, blank=True)
    reason = models.TextField(
        blank=True, help_text="Why the gate stopped the call, as the runtime stored it."
    )
    started_by = models.CharField(
        max_length=150, blank=True, help_text="Who started the thread's run."
    )
    waiting_since = models.DateTimeField(
        help_text="When the checkpoint holding the proposal was written."
    )
    state = models.CharField(
        max_length=16, choices=CallState.choices, default=CallState.PENDING
    )
    claimed_at = models.DateTimeField(null=True, blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    wait_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="How long the call waited for its decision, in seconds.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    objects = PendingCallQuerySet.as_manager()

    class Meta:
        ordering = ["waiting_since", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["thread_id", "checkpoint_id", "tool_call_id"],
                name="approvals_pendingcall_one_per_call",
            )
        ]
        indexes = [
            models.Index(
                fields=["state", "waiting_since", "id"], name="approvals_queue_idx"
            ),
            models.Index(
                fields=["tool", "state", "waiting_since"],
                name="approvals_queue_tool_idx",
            ),
            models.Index(
                fields=["agent", "state", "waiting_since"],
                name="approvals_queue_agent_idx",
            ),
            models.Index(
                fields=["thread_id", "state"], name="approvals_queue_thread_idx"
            ),
            models.Index(
                fields=["state", "decided_at", "wait_seconds"],
                name="approvals_queue_decided_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.tool} on {self.thread_id} ({self.get_state_display()})"

    @property
    def is_open(self) -> bool:
        return self.state in (CallState.PENDING, CallState.DECIDING)

    def decisions(self) -> DecisionQuerySet:
        return Decision.objects.for_call(
            self.thread_id, self.checkpoint_id, self.tool_call_id
        )


class CallViewer(models.Model):
    """Who had a pending call open recently: the queue's "looking now"."""

    call = models.ForeignKey(
        PendingCall, on_delete=models.CASCADE, related_name="viewers"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+"
    )
    seen_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["call", "user"], name="approvals_viewer_one_per_user"
            )
        ]
        indexes = [
            models.Index(fields=["call", "seen_at"], name="approvals_viewer_recent_idx")
        ]

    def __str__(self) -> str:
        return f"{self.user} on {self.call_id} at {self.seen_at}"


class Refund(models.Model):
    """A refund the demo payments agent sent: the demo's outside system.

    The idempotency key is the runtime's "<thread>:<tool call>" key, unique,
    so a retried call finds the refund it already made and never pays twice.
    """

    idempotency_key = models.CharField(max_length=512, unique=True)
    thread_id = models.CharField(max_length=255, blank=True)
    to_account = models.CharField(max_length=100)
    amount = models.DecimalField(
        max_digits=MAX_DIGITS,
        decimal_places=DECIMAL_PLACES,
        validators=[MinValueValidator(Decimal("0.01"))],
    )
    currency = models.CharField(max_length=3, help_text="ISO 4217 code.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(amount__gt=0), name="approvals_refund_amount_positive"
            )
        ]

    def __str__(self) -> str:
        return f"{self.amount} {self.currency} to {self.to_account}"
