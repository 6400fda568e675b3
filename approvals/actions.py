"""Deciding on a gated tool call: `check_decision` says whether, `do_decision` does.

Views and the API call `decide()` (or the two halves) and turn a
`DecisionRefused` into its HTTP status: 403 for what this person may not do,
400 for a decision that is malformed, 409 for a proposal that is no longer
current or was decided by someone else a moment ago.

The rules, in the order they are checked: the person may decide at all;
the proposal is still the thread's newest; nobody decides on a run they
started; a rejection has a reason; modified arguments fit the tool's schema;
the amount is within the person's approver limit; above the policy's
four-eyes amount, two different people approve (the first approval waits as
"awaiting second approver", the second records the decision for both).

Two reviewers deciding at once: the first to claim the queue row
(`pending → deciding`, a conditional update) goes on, the other is refused.
A claim left by a process that died is given back after `CLAIM_SECONDS`.
Behind that, the runtime stores decisions first-writer-wins on the
checkpoint, and the table allows one final decision per call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import transaction
from django.utils import timezone

from agentmatic import Agent
from agentmatic.errors import InvalidToolArguments, StaleDecision
from agentmatic.tools import jsonable
from approvals.demo import amount_of
from approvals.models import (
    ApprovalPolicy,
    ApproverLimit,
    CallState,
    Decision,
    DecisionKind,
    DecisionStatus,
    PendingCall,
)
from approvals.pending import sync_thread
from runs import services
from runs.models import Run, ThreadRecord

log = logging.getLogger(__name__)

User = AbstractBaseUser | AnonymousUser
# How far back the checkpoints are read for who gave a thread its input.
STARTER_HISTORY = 100


class DecisionRefused(Exception):
    """A decision that cannot be taken; `status` is the HTTP status to answer."""

    status = 400

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        current: PendingCall | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.current = current


class NotPermitted(DecisionRefused):
    status = 403


class InvalidDecision(DecisionRefused):
    status = 400


class StaleProposal(DecisionRefused):
    """The run moved on: the proposal decided on is no longer the newest."""

    status = 409


class DecidedMeanwhile(DecisionRefused):
    """Someone else decided on this call first."""

    status = 409


@dataclass(frozen=True)
class DecisionPlan:
    """A decision that passed every check, ready for `do_decision`."""

    call: PendingCall
    kind: str
    reason: str
    modified_args: dict[str, Any] | None
    amount: Decimal | None
    currency: str
    approvers_required: int
    # The other person's approval this one completes (four eyes), if any.
    first_approval: Decision | None = None
    # This approval is the first of two: it waits for a second approver.
    awaits_second: bool = False
    overrules: list[Decision] = field(default_factory=list)


def decide(
    user: Any,
    call: PendingCall,
    kind: str,
    *,
    checkpoint_id: str,
    args: dict[str, Any] | None = None,
    reason: str = "",
) -> Decision:
    """Check and take one person's decision on a call; return it."""
    plan = check_decision(
        user, call, kind, checkpoint_id=checkpoint_id, args=args, reason=reason
    )
    return do_decision(user, plan)


# -- checks --------------------------------------------------------------------


def check_decision(
    user: Any,
    call: PendingCall,
    kind: str,
    *,
    checkpoint_id: str,
    args: dict[str, Any] | None = None,
    reason: str = "",
) -> DecisionPlan:
    """Return the plan for this decision, or raise `DecisionRefused` saying why."""
    check_may_decide(user)
    if kind not in DecisionKind.values:
        raise InvalidDecision(f"{kind!r} is not a decision; approve, modify or reject.")
    check_current(call, checkpoint_id)
    agent = check_resumable(call)
    check_not_own_run(user, call)

    reason = (reason or "").strip()
    if kind == DecisionKind.REJECT and not reason:
        raise InvalidDecision("Say why you reject the call.", field="reason")

    policy = ApprovalPolicy.objects.for_call(call.tool, call.agent)
    amount_field = policy.amount_field if policy else "amount"
    modified: dict[str, Any] | None = None
    if kind == DecisionKind.MODIFY:
        modified = check_modified_args(agent, call, args or {}, amount_field)
        if modified == _proposal(agent, call):
            # Nothing changed: this is an approval, and the audit says so.
            kind, modified = DecisionKind.APPROVE, None

    awaiting = list(
        call.decisions().filter(status=DecisionStatus.AWAITING).select_related("actor")
    )
    if any(d.actor_id == user.pk for d in awaiting):
        raise NotPermitted(
            "You gave the first approval of this call; a second, different "
            "person must approve it."
        )
    if kind == DecisionKind.REJECT:
        amount = amount_of(call.args, amount_field)
        return DecisionPlan(
            call=call,
            kind=kind,
            reason=reason,
            modified_args=None,
            amount=amount,
            currency=call.currency,
            approvers_required=1,
            overrules=awaiting,
        )

    first = awaiting[0] if awaiting else None
    if first is not None:
        if kind == DecisionKind.MODIFY and modified != first.decided_args:
            raise InvalidDecision(
                f"{first.actor} approved this call with other arguments. "
                "Approve those, or reject the call with a reason.",
                field=amount_field,
            )
        # A second approval confirms what the first approver decided.
        kind = first.kind
        modified = first.modified_args if first.kind == DecisionKind.MODIFY else None
    decided_args = modified if modified is not None else call.args
    amount = amount_of(decided_args, amount_field)
    currency = str(decided_args.get("currency") or call.currency or "").upper()
    check_limit(user, amount, currency)
    required = 1
    if policy is not None:
        required = max(1, policy.approvers_required(amount))
    return DecisionPlan(
        call=call,
        kind=kind,
        reason=reason,
        modified_args=modified,
        amount=amount,
        currency=currency,
        approvers_required=required,
        first_approval=first,
        awaits_second=required >= 2 and first is None,
    )


def check_may_decide(user: Any) -> None:
    if not user.is_authenticated or not user.has_perm("approvals.decide"):
        raise NotPermitted(
            "Your role may not approve, modify or reject tool calls. Operators "
            "can; ask an administrator if you need to."
        )


def check_current(call: PendingCall, checkpoint_id: str) -> None:
    """Refuse a decision on a proposal that is no longer the one waiting."""
    if call.state == CallState.DECIDING:
        PendingCall.objects.filter(pk=call.pk).release_stale_claims()
        call.refresh_from_db()
    if checkpoint_id != call.checkpoint_id or call.state == CallState.STALE:
        raise StaleProposal(
            "This proposal is no longer current: the run moved on since it "
            "was made, so it cannot be decided.",
            current=current_call(call.thread_id),
        )
    if call.state == CallState.DECIDED:
        raise DecidedMeanwhile(
            f"This call was already decided{_by_whom(call)}.",
            current=current_call(call.thread_id),
        )
    if call.state == CallState.DECIDING:
        raise DecidedMeanwhile(
            "Someone else is deciding on this call at this moment. Look at it "
            "again in a few seconds."
        )


def check_resumable(call: PendingCall) -> Agent:
    """Return the agent that will run the call, or refuse if there is none."""
    record = ThreadRecord.objects.filter(thread_id=call.thread_id).first()
    if record is not None and record.readonly_reason:
        raise NotPermitted(
            f"This thread is read-only here: {record.readonly_reason}", field=None
        )
    agent = services.get_agent(call.agent) if call.agent else None
    if agent is None:
        raise NotPermitted(
            f"No agent registered in this console can resume this thread "
            f"(it was written by agent {call.agent or 'unknown'!r})."
        )
    return agent


def check_not_own_run(user: Any, call: PendingCall) -> None:
    if user.get_username() in starters_of(call.thread_id):
        raise NotPermitted(
            "You started this run, so someone else must decide on its calls."
        )


def starters_of(thread_id: str) -> set[str]:
    """Return who gave the thread its input: its starter, forks, new messages.

    Read from the runner's records and, for threads written elsewhere, from
    the checkpoints' ``started_by`` metadata (the newest `STARTER_HISTORY`).
    """
    names: set[str] = set()
    record = ThreadRecord.objects.filter(thread_id=thread_id).first()
    if record is not None and record.started_by:
        names.add(record.started_by)
    runs = Run.objects.filter(thread_id=thread_id, input__isnull=False)
    names.update(runs.values_list("started_by_label", flat=True))
    names.update(
        Run.objects.filter(thread_id=thread_id)
        .exclude(forked_from_thread="")
        .values_list("started_by_label", flat=True)
    )
    history = services.get_saver().get_state_history(
        thread_id, limit=STARTER_HISTORY, values=False
    )
    names.update(
        str(state.metadata["started_by"])
        for state in history
        if state.metadata.get("started_by")
    )
    names.discard("")
    return names


def check_modified_args(
    agent: Agent, call: PendingCall, raw: dict[str, Any], amount_field: str
) -> dict[str, Any]:
    """Return the modified arguments coerced to the tool's schema."""
    coerced = _coerced(agent, call, raw)
    amount = amount_of(coerced, amount_field)
    if amount_field in coerced and (amount is None or amount <= 0):
        raise InvalidDecision(
            f"{amount_field}: the amount must be above zero.", field=amount_field
        )
    return coerced


def _coerced(agent: Agent, call: PendingCall, raw: dict[str, Any]) -> dict[str, Any]:
    tool = agent.tools.get(call.tool)
    if tool is None:
        raise NotPermitted(f"The agent no longer has the tool {call.tool!r}.")
    try:
        return dict(jsonable(tool.validate(raw)))
    except InvalidToolArguments as exc:
        raise InvalidDecision(f"{exc.field}: {exc.detail}", field=exc.field) from None


def _proposal(agent: Agent, call: PendingCall) -> dict[str, Any] | None:
    """Return the proposed arguments coerced, or None if they do not fit."""
    try:
        return _coerced(agent, call, call.args)
    except InvalidDecision:
        return None


def check_limit(user: Any, amount: Decimal | None, currency: str) -> None:
    if ApproverLimit.allows(user, amount):
        return
    limit = ApproverLimit.objects.filter(user=user).first()
    if limit is None:
        raise NotPermitted(
            "You have no approval limit, so you may not approve calls. An "
            "administrator sets approval limits."
        )
    raise NotPermitted(
        f"Your approval limit is {limit.max_amount:,.2f}; this call is for "
        f"{amount:,.2f} {currency}. Someone with a higher limit must approve it, "
        "or modify the amount."
    )


def current_call(thread_id: str) -> PendingCall | None:
    """Return the call now waiting on the thread, after re-reading its head."""
    try:
        waiting = sync_thread(thread_id)
    except Exception:
        log.warning("could not read thread %s", thread_id, exc_info=True)
        waiting = []
    return waiting[0] if waiting else None


def _by_whom(call: PendingCall) -> str:
    final = call.decisions().filter(final=True).select_related("actor").first()
    if final is None:
        return ""
    return f" by {final.actor} ({final.get_kind_display().lower()})"


# -- doing ---------------------------------------------------------------------


def do_decision(user: Any, plan: DecisionPlan) -> Decision:
    """Take a checked decision: claim the call, record it, queue the resume."""
    call = plan.call
    claimed = PendingCall.objects.filter(pk=call.pk, state=CallState.PENDING).update(
        state=CallState.DECIDING, claimed_at=timezone.now()
    )
    if claimed != 1:
        call.refresh_from_db()
        check_current(call, call.checkpoint_id)
        raise DecidedMeanwhile("Someone else decided on this call first.")
    try:
        if plan.awaits_second:
            return _record_first_approval(user, plan)
        complete = _record_in_checkpoint(user, plan)
    except BaseException:
        _release(call)
        raise
    return _record_final(user, plan, complete)


def _record_first_approval(user: Any, plan: DecisionPlan) -> Decision:
    call = plan.call
    if services.get_saver().head_id(call.thread_id) != call.checkpoint_id:
        _release(call)
        sync_thread(call.thread_id)
        raise StaleProposal(
            "This proposal is no longer current: the run moved on.",
            current=current_call(call.thread_id),
        )
    decision = _new_decision(user, plan, DecisionStatus.AWAITING, final=False)
    _release(call)
    log.info(
        "thread %s: first approval of %s by %s; a second approver is needed",
        call.thread_id,
        call.tool_call_id,
        user.get_username(),
    )
    return decision


def _record_in_checkpoint(user: Any, plan: DecisionPlan) -> bool:
    """Store the decision on the checkpoint; return whether the step is decided."""
    call = plan.call
    agent = services.get_agent(call.agent)
    assert agent is not None
    config = {
        "configurable": {
            "thread_id": call.thread_id,
            "checkpoint_id": call.checkpoint_id,
        }
    }
    try:
        _state, complete = agent.record_decision(
            config,
            plan.kind,
            _actor_label(user, plan),
            call.tool_call_id,
            reason=plan.reason or None,
            args=plan.modified_args,
        )
    except StaleDecision as exc:
        log.info("thread %s: stale decision refused: %s", call.thread_id, exc)
        _release(call)
        waiting = sync_thread(call.thread_id)
        call.refresh_from_db()
        if call.state == CallState.STALE:
            raise StaleProposal(
                "This proposal is no longer current: the run moved on since it "
                "was made, so it cannot be decided.",
                current=waiting[0] if waiting else None,
            ) from None
        PendingCall.objects.filter(pk=call.pk).mark_decided(state=CallState.PENDING)
        raise DecidedMeanwhile(
            "This call was decided elsewhere a moment ago (outside this "
            "console's queue)."
        ) from None
    except InvalidToolArguments as exc:
        raise InvalidDecision(f"{exc.field}: {exc.detail}", field=exc.field) from None
    return complete


def _record_final(user: Any, plan: DecisionPlan, complete: bool) -> Decision:
    call = plan.call
    with transaction.atomic():
        decision = _new_decision(user, plan, DecisionStatus.RECORDED, final=True)
        if plan.first_approval is not None:
            Decision.objects.filter(pk=plan.first_approval.pk).update(
                status=DecisionStatus.RECORDED
            )
        for other in plan.overrules:
            Decision.objects.filter(pk=other.pk).update(
                status=DecisionStatus.OVERRULED,
                outcome=f"Not carried out: {user.get_username()} rejected the call.",
            )
        PendingCall.objects.filter(pk=call.pk).mark_decided()
        if complete:
            services.resume_run(
                call.thread_id,
                call.agent,
                user,
                call.checkpoint_id,
                label=_actor_label(user, plan),
                on_created=lambda run: _link_run(call, run),
            )
    log.info(
        "thread %s: %s of %s recorded by %s%s",
        call.thread_id,
        plan.kind,
        call.tool_call_id,
        _actor_label(user, plan),
        "; run resumed" if complete else "; other calls of the step still wait",
    )
    decision.refresh_from_db()
    return decision


def _link_run(call: PendingCall, run: Run) -> None:
    """Tie every decision of the step that the run carries out to the run."""
    Decision.objects.filter(
        thread_id=call.thread_id,
        checkpoint_id=call.checkpoint_id,
        run__isnull=True,
        status=DecisionStatus.RECORDED,
    ).update(run=run)


def _new_decision(
    user: Any, plan: DecisionPlan, status: str, *, final: bool
) -> Decision:
    call = plan.call
    amount = plan.amount
    if amount is not None:
        amount = amount.quantize(Decimal("0.01"))
    return Decision.objects.create(
        thread_id=call.thread_id,
        checkpoint_id=call.checkpoint_id,
        tool_call_id=call.tool_call_id,
        tool=call.tool,
        kind=plan.kind,
        actor=user,
        reason=plan.reason,
        args=call.args,
        modified_args=plan.modified_args,
        amount=amount,
        currency=plan.currency.upper()[:3],
        status=status,
        final=final,
    )


def _actor_label(user: Any, plan: DecisionPlan) -> str:
    name = str(user.get_username())
    if plan.first_approval is not None:
        return f"{plan.first_approval.actor.get_username()}+{name}"
    return name


def _release(call: PendingCall) -> None:
    PendingCall.objects.filter(pk=call.pk, state=CallState.DECIDING).update(
        state=CallState.PENDING, claimed_at=None
    )
