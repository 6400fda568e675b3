"""Approval policies, who may approve what, and every decision taken.

A gated tool call is identified by (thread, checkpoint, tool call id): the
checkpoint pins the decision to the state it was made on, so a decision on a
proposal that has since moved on can be recognised as stale.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q

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
    RECORDED = "recorded", "Recorded"
    RESUMED = "resumed", "Run resumed"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"
    STALE = "stale", "Stale"


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
