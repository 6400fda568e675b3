"""The queue's index of gated calls, kept in step with the checkpoints.

The runner announces every status change of a run (`runs.services.run_changed`);
when a run stops, the thread's newest checkpoint is copied into `PendingCall`
rows (one per gated call) and earlier proposals of the thread that nobody
decided become stale. The call page re-reads the head through `sync_thread`
too, so a thread advanced by another tool (the API, a script) is corrected
the moment someone looks at it. Decisions follow their resumed run here as
well: recorded → resumed → done or failed, with what came of the call.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from agentmatic import State
from agentmatic.messages import AIMessage, ToolMessage
from approvals.demo import amount_of
from approvals.models import (
    ApprovalPolicy,
    CallState,
    Decision,
    DecisionStatus,
    PendingCall,
)
from runs import services
from runs.models import Run, RunStatus, ThreadRecord

log = logging.getLogger(__name__)

OPEN_STATES = (CallState.PENDING, CallState.DECIDING)
MAX_AMOUNT = Decimal("1e12")
OUTCOME_CHARS = 400


def gated_calls(state: State) -> list[dict[str, Any]]:
    """Return the stored interrupts of a state that name a tool call."""
    return [
        dict(i.value)
        for i in state.interrupts
        if isinstance(i.value, dict) and i.value.get("tool_call_id")
    ]


def read_head(thread_id: str) -> State | None:
    """Return the thread's newest checkpoint without its values, or None."""
    return services.get_saver().get_state(thread_id, values=False)


def sync_thread(thread_id: str, head: State | None = None) -> list[PendingCall]:
    """Make the index agree with the thread's newest checkpoint.

    Return the calls that wait on it. ``head`` saves a read when the caller
    already holds the newest state (the runner does).
    """
    PendingCall.objects.filter(thread_id=thread_id).release_stale_claims()
    if head is None:
        head = read_head(thread_id)
    if head is None:
        _close_open_calls(thread_id, keep_checkpoint="")
        return []

    record = ThreadRecord.objects.filter(thread_id=thread_id).first()
    agent = (record.agent if record else "") or str(head.metadata.get("agent") or "")
    started_by = (record.started_by if record else "") or str(
        head.metadata.get("started_by") or ""
    )
    since = _parse_time(head.created_at)

    rows: list[PendingCall] = []
    for value in gated_calls(head):
        call_id = str(value["tool_call_id"])
        tool = str(value.get("tool") or "")
        args = dict(value.get("args") or {})
        amount, currency = amount_and_currency(agent, tool, args)
        decided = call_id in head.decisions
        row, created = PendingCall.objects.get_or_create(
            thread_id=thread_id,
            checkpoint_id=head.checkpoint_id,
            tool_call_id=call_id,
            defaults={
                "tool": tool,
                "agent": agent,
                "args": args,
                "amount": amount,
                "currency": currency,
                "reason": str(value.get("reason") or ""),
                "started_by": started_by,
                "waiting_since": since,
            },
        )
        if decided and row.state == CallState.PENDING:
            # Decided outside the console (the API, a script): no claim to race.
            PendingCall.objects.filter(pk=row.pk).mark_decided(state=CallState.PENDING)
            row.refresh_from_db()
        if created:
            log.info("thread %s: call %s waits for a decision", thread_id, call_id)
        if row.is_open:
            rows.append(row)
    _close_open_calls(thread_id, keep_checkpoint=head.checkpoint_id)
    return rows


def sync_waiting_threads(limit: int | None = None) -> int:
    """Index the waiting threads the queue does not know yet; return how many.

    The runner indexes every pause it causes; this catches threads paused by
    other writers (a script on the same store, a restored backup) that the
    threads index marks as waiting.
    """
    known = PendingCall.objects.filter(state__in=OPEN_STATES).values("thread_id")
    unknown = (
        ThreadRecord.objects.filter(status=RunStatus.WAITING, readonly_reason="")
        .exclude(thread_id__in=known)
        .order_by("updated_at")
        .values_list("thread_id", flat=True)
    )
    if limit is not None:
        unknown = unknown[:limit]
    count = 0
    for thread_id in unknown.iterator(chunk_size=500):
        sync_thread(thread_id)
        count += 1
    return count


def _close_open_calls(thread_id: str, *, keep_checkpoint: str) -> None:
    """Mark undecided proposals of older checkpoints stale, with their decisions."""
    stale = PendingCall.objects.filter(
        thread_id=thread_id, state__in=OPEN_STATES
    ).exclude(checkpoint_id=keep_checkpoint)
    keys = list(stale.values_list("checkpoint_id", "tool_call_id"))
    if not keys:
        return
    with transaction.atomic():
        stale.update(state=CallState.STALE)
        for checkpoint_id, call_id in keys:
            Decision.objects.for_call(thread_id, checkpoint_id, call_id).filter(
                status=DecisionStatus.AWAITING
            ).update(
                status=DecisionStatus.STALE,
                outcome="Not carried out: the run moved on before a second "
                "approver decided.",
            )
    log.info("thread %s: %d proposal(s) no longer current", thread_id, len(keys))


def amount_and_currency(
    agent: str, tool: str, args: dict[str, Any]
) -> tuple[Decimal | None, str]:
    """Return the call's amount (per the policy's amount field) and currency."""
    policy = ApprovalPolicy.objects.for_call(tool, agent)
    amount = amount_of(args, policy.amount_field if policy else "amount")
    if amount is not None:
        # An amount too large for the table is shown as unreadable.
        too_large = abs(amount) >= MAX_AMOUNT
        amount = None if too_large else amount.quantize(Decimal("0.01"))
    currency = str(args.get("currency") or _schema_default(agent, tool, "currency"))
    return amount, currency.upper()[:3]


def _schema_default(agent: str, tool: str, field: str) -> str:
    built = services.get_agent(agent) if agent else None
    if built is None or tool not in built.tools:
        return ""
    prop = built.tools[tool].parameters.get("properties", {}).get(field) or {}
    default = prop.get("default")
    return str(default) if isinstance(default, str) else ""


def _parse_time(value: str | None) -> datetime:
    if not value:
        return timezone.now()
    parsed = datetime.fromisoformat(value)
    if timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed, UTC)
    return parsed


# -- decisions follow their run ----------------------------------------------


def on_run_changed(sender: Any, run: Run, state: State | None, **kwargs: Any) -> None:
    """Keep the index and the decision receipts in step with a run."""
    if run.status == RunStatus.RUNNING:
        Decision.objects.filter(run=run, status=DecisionStatus.RECORDED).update(
            status=DecisionStatus.RESUMED
        )
        return
    if run.status == RunStatus.FAILED:
        Decision.objects.filter(
            run=run, status__in=[DecisionStatus.RECORDED, DecisionStatus.RESUMED]
        ).update(
            status=DecisionStatus.FAILED,
            outcome=_clip(f"The run failed: {run.error}"),
        )
        return
    if state is None:
        return
    sync_thread(run.thread_id, state)
    settle(run, state)


def settle(run: Run, state: State) -> None:
    """Write what came of each decision the run carried out."""
    waiting = run.status == RunStatus.WAITING
    for decision in Decision.objects.filter(
        run=run, status__in=[DecisionStatus.RECORDED, DecisionStatus.RESUMED]
    ):
        decision.outcome = outcome_of(state, decision.tool_call_id, waiting=waiting)
        decision.status = DecisionStatus.DONE
        decision.save(update_fields=["outcome", "status", "updated_at"])


def outcome_of(state: State, tool_call_id: str, *, waiting: bool = False) -> str:
    """Say what became of a decided call, from the state the run stopped at.

    For example "Refund of $250.00 sent to acct-1986 · model answered: …".
    """
    messages = state.messages
    parts: list[str] = []
    answered_at = None
    for index, msg in enumerate(messages):
        if isinstance(msg, ToolMessage) and msg.tool_call_id == tool_call_id:
            answered_at = index
            text = msg.text.strip()
            if text.startswith("The reviewer rejected this call"):
                parts.append("call not made (rejected)")
            elif msg.status == "error":
                parts.append(f"the call failed: {text}")
            else:
                parts.append(text)
    if answered_at is None:
        parts.append("the call has not run yet")
    else:
        reply = next(
            (
                m
                for m in messages[answered_at + 1 :]
                if isinstance(m, AIMessage) and m.text.strip()
            ),
            None,
        )
        if reply is not None:
            parts.append(f"model answered: {reply.text.strip()}")
    if waiting:
        parts.append("the run now waits for another decision")
    return _clip(" · ".join(parts))


def _clip(text: str) -> str:
    return text if len(text) <= OUTCOME_CHARS else text[: OUTCOME_CHARS - 1] + "…"


# -- the queue's header strip --------------------------------------------------


@dataclass(frozen=True)
class QueueStats:
    waiting: int
    oldest_since: datetime | None
    decided_today: int
    median_seconds: float | None
    # Decisions per hour of today so far, oldest hour first.
    per_hour: list[int]


def queue_stats(now: datetime | None = None) -> QueueStats:
    """Return how many wait, since when, and how fast decisions came today.

    Counting, the median and the hourly bars are left to the database, so
    the strip costs a few indexed queries however long the day was.
    """
    now = now or timezone.now()
    waiting = PendingCall.objects.waiting()
    oldest = waiting.order_by("waiting_since").values_list("waiting_since", flat=True)
    midnight = timezone.localtime(now).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    today = PendingCall.objects.filter(
        state=CallState.DECIDED, decided_at__gte=midnight, decided_at__isnull=False
    )
    decided = today.count()
    median = None
    if decided:
        # The middle one or two waits, by the index on (state, decided_at, wait).
        waits = today.order_by("wait_seconds").values_list("wait_seconds", flat=True)
        middle = list(waits[(decided - 1) // 2 : decided // 2 + 1])
        median = statistics.mean(w or 0 for w in middle)
    hours = min(24, int((now - midnight) / timedelta(hours=1)) + 1)
    slots = {
        f"h{h}": Count(
            "id",
            filter=Q(
                decided_at__gte=midnight + timedelta(hours=h),
                decided_at__lt=midnight + timedelta(hours=h + 1),
            ),
        )
        for h in range(hours)
    }
    counts = today.aggregate(**slots)
    per_hour = [counts[f"h{h}"] for h in range(hours)]
    return QueueStats(
        waiting=waiting.count(),
        oldest_since=oldest.first(),
        decided_today=decided,
        median_seconds=median,
        per_hour=per_hour,
    )
