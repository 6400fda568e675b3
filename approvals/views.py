"""Pages of the approvals app: the queue, one call, a decision's receipt, the audit.

Every decision is a plain form post that redirects to the call page, where
the decision's receipt follows the resumed run (the page script refreshes
it; without the script a reload does). Refusals are pages too: 403 for what
the person may not do, 400 for a malformed decision (the field is named),
409 for a proposal that is no longer current.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from datetime import datetime, time, timedelta
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.paginator import Page, Paginator
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    StreamingHttpResponse,
)
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from agentmatic import State
from agentmatic.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from approvals import actions
from approvals.forms import AuditFilterForm, ModifyForm, QueueFilterForm, RejectForm
from approvals.models import (
    ApprovalPolicy,
    CallState,
    CallViewer,
    Decision,
    DecisionKind,
    DecisionStatus,
    PendingCall,
)
from approvals.pending import queue_stats, sync_thread
from runs import services

log = logging.getLogger(__name__)

PAGE_SIZE = 50
AUDIT_PAGE_SIZE = 50
PRESENCE_WINDOW = timedelta(minutes=2)
FINAL_STATUSES = {
    DecisionStatus.DONE,
    DecisionStatus.FAILED,
    DecisionStatus.STALE,
    DecisionStatus.OVERRULED,
}


def _partial(request: HttpRequest) -> bool:
    return request.headers.get("X-Partial") == "1"


def _render_partial(
    request: HttpRequest, template: str, context: dict[str, Any], status: int = 200
) -> HttpResponse:
    response = render(request, template, context, status=status)
    response["X-Partial-Response"] = "1"
    return response


def thread_url(thread_id: str) -> str | None:
    """Return the thread page's address, if the runs app has one."""
    for kwargs in ({"thread_id": thread_id},):
        try:
            return reverse("runs:thread", kwargs=kwargs)
        except NoReverseMatch:
            continue
    return None


# -- the queue -----------------------------------------------------------------


@require_GET
@permission_required("approvals.view_decision", raise_exception=True)
def queue(request: HttpRequest) -> HttpResponse:
    """List gated tool calls, oldest wait first, with filters and a summary."""
    PendingCall.objects.release_stale_claims()
    tools, agents = _filter_choices()
    form = QueueFilterForm(request.GET or None, tools=tools, agents=agents)
    calls = _filtered_calls(form, request.user)
    page = Paginator(calls, PAGE_SIZE).get_page(request.GET.get("page"))

    context = {
        "form": form,
        "page": page,
        "rows": _queue_rows(page, request.user),
        "state": form.value("state") or "pending",
        "query": _query_without_page(request),
        "filtered": any(
            form.value(name) for name in ("tool", "agent", "amount_min", "amount_max")
        ),
    }
    if _partial(request):
        return _render_partial(request, "approvals/_queue_results.html", context)
    context["stats"] = queue_stats()
    return render(request, "approvals/queue.html", context)


def _filter_choices() -> tuple[list[str], list[str]]:
    """Return the tools and agents to filter by: gated ones and registered ones.

    Read from the policies and the agent registry, both small, rather than
    from the queue, which may hold a hundred thousand rows.
    """
    tools: set[str] = set()
    agents: set[str] = set(services.agent_factories())
    for tool, agent in ApprovalPolicy.objects.values_list("tool", "agent"):
        tools.add(tool)
        if agent:
            agents.add(agent)
    return sorted(tools), sorted(agents)


def _filtered_calls(form: QueueFilterForm, user: Any) -> QuerySet[PendingCall]:
    calls = PendingCall.objects.all()
    state = form.value("state") or "pending"
    if state == "pending":
        # Equality, so the (state, waiting_since) index yields the order; a
        # call being decided leaves the list for the moment that takes.
        calls = calls.filter(state=CallState.PENDING)
    elif state == "decided":
        calls = calls.filter(state=CallState.DECIDED)
    elif state == "stale":
        calls = calls.filter(state=CallState.STALE)
    elif state == "mine":
        calls = calls.filter(
            Exists(
                Decision.objects.filter(
                    actor=user,
                    thread_id=OuterRef("thread_id"),
                    checkpoint_id=OuterRef("checkpoint_id"),
                    tool_call_id=OuterRef("tool_call_id"),
                )
            )
        )
    if tool := form.value("tool"):
        calls = calls.filter(tool=tool)
    if agent := form.value("agent"):
        calls = calls.filter(agent=agent)
    if (low := form.value("amount_min")) is not None:
        calls = calls.filter(amount__gte=low)
    if (high := form.value("amount_max")) is not None:
        calls = calls.filter(amount__lte=high)
    if form.value("sort") == "newest":
        return calls.order_by("-waiting_since", "-id")
    return calls.order_by("waiting_since", "id")


def _queue_rows(page: Page, user: Any) -> list[dict[str, Any]]:
    calls: list[PendingCall] = list(page.object_list)
    if not calls:
        return []
    viewers = _viewers({c.pk for c in calls}, exclude=user)
    finals, awaiting = _decisions_of(calls)
    policies: dict[tuple[str, str], str] = {}
    rows = []
    for call in calls:
        key = (call.tool, call.agent)
        if key not in policies:
            policies[key] = policy_text(call.tool, call.agent)
        rows.append(
            {
                "call": call,
                "policy": stopped_by(call, policies[key]),
                "viewers": viewers.get(call.pk, []),
                "decision": finals.get(_key(call)),
                "awaiting": awaiting.get(_key(call)),
                "key_args": _key_args(call.args),
            }
        )
    return rows


def _viewers(call_ids: set[int], *, exclude: Any) -> dict[int, list[str]]:
    since = timezone.now() - PRESENCE_WINDOW
    seen = (
        CallViewer.objects.filter(call_id__in=call_ids, seen_at__gte=since)
        .exclude(user=exclude)
        .select_related("user")
        .order_by("-seen_at")
    )
    out: dict[int, list[str]] = {}
    for viewer in seen:
        out.setdefault(viewer.call_id, []).append(viewer.user.get_username())
    return out


def _key(item: PendingCall | Decision) -> tuple[str, str, str]:
    return (item.thread_id, item.checkpoint_id, item.tool_call_id)


def _decisions_of(
    calls: list[PendingCall],
) -> tuple[dict[tuple[str, str, str], Decision], dict[tuple[str, str, str], Decision]]:
    """Return the final decision of each decided call, and first approvals waiting."""
    match = Q()
    for c in calls:
        match |= Q(
            thread_id=c.thread_id,
            checkpoint_id=c.checkpoint_id,
            tool_call_id=c.tool_call_id,
        )
    relevant = Q(final=True) | Q(status=DecisionStatus.AWAITING)
    finals: dict[tuple[str, str, str], Decision] = {}
    awaiting: dict[tuple[str, str, str], Decision] = {}
    for d in Decision.objects.filter(match).filter(relevant).select_related("actor"):
        (finals if d.final else awaiting)[_key(d)] = d
    return finals, awaiting


def _key_args(args: dict[str, Any]) -> list[tuple[str, Any]]:
    """Return the arguments worth a glance in a row, amount and currency aside."""
    return [(k, v) for k, v in args.items() if k not in ("amount", "currency")][:2]


def stopped_by(call: PendingCall, current: str) -> str:
    """Return the rule that held the call, as stored when it paused.

    Older pauses stored a fixed sentence; for those the current policy's
    wording is shown instead.
    """
    stored = call.reason.strip()
    if not stored or stored.startswith("the approval policy for "):
        return current
    return stored


def policy_text(tool: str, agent: str) -> str:
    policy = ApprovalPolicy.objects.for_call(tool, agent)
    if policy is None:
        return "No active policy: every call waits"
    return policy.describe()


def _query_without_page(request: HttpRequest) -> str:
    query = request.GET.copy()
    query.pop("page", None)
    return query.urlencode()


# -- one call ------------------------------------------------------------------


@require_GET
@permission_required("approvals.view_decision", raise_exception=True)
def thread_call(request: HttpRequest, thread_id: str) -> HttpResponse:
    """Open the call now waiting on a thread (linked from the thread page)."""
    waiting = sync_thread(thread_id)
    if waiting:
        return redirect("approvals:call", pk=waiting[0].pk)
    return render(
        request,
        "approvals/nothing_waits.html",
        {"thread_id": thread_id, "thread_url": thread_url(thread_id)},
        status=404,
    )


@require_GET
@permission_required("approvals.view_decision", raise_exception=True)
def call_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """Show one proposed call, the conversation behind it, and the decisions."""
    call = get_object_or_404(PendingCall, pk=pk)
    if call.is_open:
        # The saver is the truth: correct the row if the thread moved on.
        sync_thread(call.thread_id)
        call.refresh_from_db()
    if call.is_open:
        _mark_seen(call, request.user)
    return render(request, "approvals/call.html", _call_context(request, call))


def _mark_seen(call: PendingCall, user: Any) -> None:
    CallViewer.objects.update_or_create(
        call=call, user=user, defaults={"seen_at": timezone.now()}
    )


def _call_context(
    request: HttpRequest,
    call: PendingCall,
    *,
    modify_form: ModifyForm | None = None,
    reject_form: RejectForm | None = None,
    error: actions.DecisionRefused | None = None,
    tried: str = "",
) -> dict[str, Any]:
    saver = services.get_saver()
    # A decided call is shown with what came of it: the thread as it is now.
    shown = None if call.state == CallState.DECIDED else call.checkpoint_id
    state = saver.get_state(call.thread_id, shown)
    agent = services.get_agent(call.agent) if call.agent else None
    tool = agent.tools.get(call.tool) if agent else None
    schema = tool.parameters if tool else _schema_from_args(call.args)
    can_decide = request.user.has_perm("approvals.decide")
    decisions = list(call.decisions().select_related("actor", "run").order_by("pk"))
    current = None
    if call.state == CallState.STALE:
        current = PendingCall.objects.waiting().filter(thread_id=call.thread_id).first()
    refusal = None
    if call.is_open and can_decide:
        refusal = _standing_refusal(request.user, call)
    awaiting = [d for d in decisions if d.status == DecisionStatus.AWAITING]
    return {
        "call": call,
        "state": state,
        "conversation": conversation(state, call.tool_call_id) if state else [],
        "policy": stopped_by(call, policy_text(call.tool, call.agent)),
        "approvers_required": _approvers_required(call),
        "awaiting": awaiting,
        "thread_url": thread_url(call.thread_id),
        "viewers": _viewers({call.pk}, exclude=request.user).get(call.pk, []),
        "decisions": decisions,
        "receipts": [_receipt(d) for d in decisions],
        "highlight": request.GET.get("decision", ""),
        "current": current,
        "can_decide": can_decide,
        "refusal": refusal,
        "modify_form": modify_form or ModifyForm(schema, call.args),
        "reject_form": reject_form or RejectForm(),
        "error": error,
        "tried": tried,
        "no_agent": agent is None,
    }


def _schema_from_args(args: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {name: {} for name in args}}


def _approvers_required(call: PendingCall) -> int:
    policy = ApprovalPolicy.objects.for_call(call.tool, call.agent)
    if policy is None:
        return 1
    return max(1, policy.approvers_required(call.amount))


def _standing_refusal(user: Any, call: PendingCall) -> str:
    """Say up front why this person cannot decide, so no one fills a form in vain."""
    try:
        actions.check_resumable(call)
        actions.check_not_own_run(user, call)
    except actions.DecisionRefused as exc:
        return exc.message
    return ""


def conversation(state: State, call_id: str) -> list[dict[str, Any]]:
    """Return the messages as a conversation: tool results sit under their call.

    The human message that asked for the proposed call is marked as the
    request, so the page can highlight what the customer actually wrote.
    """
    messages = state.messages
    answers = {m.tool_call_id: m for m in messages if isinstance(m, ToolMessage)}
    proposing = next(
        (
            i
            for i, m in enumerate(messages)
            if isinstance(m, AIMessage) and any(c.id == call_id for c in m.tool_calls)
        ),
        len(messages),
    )
    request_at = next(
        (
            i
            for i in range(min(proposing, len(messages)) - 1, -1, -1)
            if isinstance(messages[i], HumanMessage)
        ),
        -1,
    )
    shown_answers: set[str] = set()
    items: list[dict[str, Any]] = []
    for index, msg in enumerate(messages):
        if isinstance(msg, SystemMessage):
            items.append({"role": "system", "text": msg.text})
        elif isinstance(msg, HumanMessage):
            items.append(
                {"role": "human", "text": msg.text, "is_request": index == request_at}
            )
        elif isinstance(msg, AIMessage):
            calls = []
            for tc in msg.tool_calls:
                answer = answers.get(tc.id)
                if answer is not None:
                    shown_answers.add(tc.id)
                calls.append(
                    {
                        "name": tc.name,
                        "args": tc.args,
                        "args_json": json.dumps(tc.args, ensure_ascii=False),
                        "id": tc.id,
                        "is_this": tc.id == call_id,
                        "result": _result_text(answer) if answer else None,
                        "failed": bool(answer and answer.status == "error"),
                    }
                )
            items.append({"role": "ai", "text": msg.text, "calls": calls})
        elif isinstance(msg, ToolMessage) and msg.tool_call_id not in shown_answers:
            items.append(
                {
                    "role": "tool",
                    "text": _result_text(msg),
                    "failed": msg.status == "error",
                }
            )
    return items


def _result_text(msg: ToolMessage) -> str:
    text = msg.text
    try:
        data = json.loads(text)
    except ValueError:
        return text
    return json.dumps(data, ensure_ascii=False, indent=1)


# -- deciding ------------------------------------------------------------------


@require_POST
@permission_required("approvals.view_decision", raise_exception=True)
def decide(request: HttpRequest, pk: int) -> HttpResponse:
    """Take an approve, modify or reject decision posted from the call page."""
    call = get_object_or_404(PendingCall, pk=pk)
    kind = request.POST.get("decision", "")
    checkpoint_id = request.POST.get("checkpoint_id", "")
    tool_call_id = request.POST.get("tool_call_id", "")
    modify_form = reject_form = None

    try:
        if tool_call_id != call.tool_call_id:
            raise actions.InvalidDecision("The form names another call than this one.")
        args: dict[str, Any] | None = None
        reason = ""
        if kind == DecisionKind.MODIFY:
            modify_form = _modify_form(call, request.POST)
            if not modify_form.is_valid():
                name, errors = next(iter(modify_form.errors.items()))
                raise actions.InvalidDecision(f"{name}: {errors[0]}", field=name)
            args = modify_form.raw_args()
        elif kind == DecisionKind.REJECT:
            reject_form = RejectForm(request.POST)
            reason = str(request.POST.get("reason", ""))
        decision = actions.decide(
            request.user,
            call,
            kind,
            checkpoint_id=checkpoint_id,
            args=args,
            reason=reason,
        )
    except actions.StaleProposal as exc:
        return _stale(request, call, exc)
    except actions.DecisionRefused as exc:
        call.refresh_from_db()
        if (
            modify_form is not None
            and exc.field in modify_form.fields
            and exc.field not in modify_form.errors
        ):
            modify_form.add_error(exc.field, exc.message)
        if reject_form is not None and exc.field == "reason":
            reject_form.is_valid()
            if "reason" not in reject_form.errors:
                reject_form.add_error("reason", exc.message)
        context = _call_context(
            request,
            call,
            modify_form=modify_form,
            reject_form=reject_form,
            error=exc,
            tried=kind,
        )
        return render(request, "approvals/call.html", context, status=exc.status)

    messages.success(request, _confirmation(decision))
    url = reverse("approvals:call", kwargs={"pk": call.pk})
    return redirect(f"{url}?decision={decision.pk}#receipt-{decision.pk}")


def _modify_form(call: PendingCall, data: Any) -> ModifyForm:
    agent = services.get_agent(call.agent) if call.agent else None
    tool = agent.tools.get(call.tool) if agent else None
    schema = tool.parameters if tool else _schema_from_args(call.args)
    return ModifyForm(schema, call.args, data)


def _confirmation(decision: Decision) -> str:
    if decision.status == DecisionStatus.AWAITING:
        return "Your approval is recorded. A second approver must approve it too."
    verb = {
        DecisionKind.APPROVE: "approved",
        DecisionKind.MODIFY: "modified and approved",
        DecisionKind.REJECT: "rejected",
    }[DecisionKind(decision.kind)]
    return f"You {verb} the call. Its receipt below follows the run."


def _stale(
    request: HttpRequest, call: PendingCall, exc: actions.DecisionRefused
) -> HttpResponse:
    call.refresh_from_db()
    return render(
        request,
        "approvals/stale.html",
        {
            "call": call,
            "message": exc.message,
            "current": exc.current,
            "thread_url": thread_url(call.thread_id),
        },
        status=409,
    )


@require_POST
@permission_required("approvals.view_decision", raise_exception=True)
def presence(request: HttpRequest, pk: int) -> HttpResponse:
    """Note that this person still has the call open (the page's heartbeat)."""
    call = get_object_or_404(PendingCall, pk=pk)
    if call.is_open:
        _mark_seen(call, request.user)
    return HttpResponse(status=204)


@require_GET
@permission_required("approvals.view_decision", raise_exception=True)
def receipt(request: HttpRequest, pk: int) -> HttpResponse:
    """Return one decision's receipt: recorded → run resumed → outcome."""
    decision = get_object_or_404(Decision.objects.select_related("actor", "run"), pk=pk)
    context = {"receipt": _receipt(decision), "highlight": ""}
    if _partial(request):
        return _render_partial(request, "approvals/_receipt.html", context)
    return render(request, "approvals/receipt.html", context)


def _receipt(decision: Decision) -> dict[str, Any]:
    status = DecisionStatus(decision.status)
    run = decision.run
    resumed_at = run.started_at if run else None
    steps = [
        {
            "label": "Recorded",
            "done": status not in (DecisionStatus.STALE,),
            "at": decision.created_at,
            "text": "",
        },
    ]
    if status == DecisionStatus.AWAITING:
        steps.append(
            {
                "label": "Second approver",
                "done": False,
                "at": None,
                "text": "Waiting for a second, different person to approve.",
            }
        )
    elif status in (DecisionStatus.STALE, DecisionStatus.OVERRULED):
        steps.append(
            {
                "label": "Not carried out",
                "done": False,
                "at": decision.updated_at,
                "text": decision.outcome,
            }
        )
    else:
        resumed = status in (
            DecisionStatus.RESUMED,
            DecisionStatus.DONE,
            DecisionStatus.FAILED,
        )
        pending_text = (
            "Queued; the run resumes in a moment."
            if run
            else "Waiting for the other calls of this step to be decided."
        )
        steps.append(
            {
                "label": "Run resumed",
                "done": resumed,
                "at": resumed_at,
                "text": "" if resumed else pending_text,
            }
        )
        steps.append(
            {
                "label": "Failed" if status == DecisionStatus.FAILED else "Outcome",
                "done": status == DecisionStatus.DONE,
                "failed": status == DecisionStatus.FAILED,
                "at": decision.updated_at if status in FINAL_STATUSES else None,
                "text": decision.outcome,
            }
        )
    return {
        "decision": decision,
        "steps": steps,
        "final": status in FINAL_STATUSES,
        "poll_seconds": 10 if status == DecisionStatus.AWAITING else 2,
        "src": reverse("approvals:receipt", kwargs={"pk": decision.pk}),
        "changes": decision.changed_args,
    }


# -- the audit -----------------------------------------------------------------


@require_GET
@permission_required("approvals.view_decision", raise_exception=True)
def audit(request: HttpRequest) -> HttpResponse:
    """List every decision, newest first, with filters and a CSV export."""
    form = AuditFilterForm(request.GET or None)
    decisions = _filtered_decisions(form)
    page = Paginator(decisions, AUDIT_PAGE_SIZE).get_page(request.GET.get("page"))
    context = {
        "form": form,
        "page": page,
        "query": _query_without_page(request),
        "filtered": bool(form.is_bound and any(form.data.get(k) for k in form.fields)),
    }
    if _partial(request):
        return _render_partial(request, "approvals/_audit_results.html", context)
    return render(request, "approvals/audit.html", context)


def _filtered_decisions(form: AuditFilterForm) -> QuerySet[Decision]:
    decisions = Decision.objects.select_related("actor", "run").order_by(
        "-created_at", "-pk"
    )
    if not form.is_bound:
        return decisions
    form.is_valid()
    data = form.cleaned_data
    if data.get("actor"):
        decisions = decisions.filter(actor__username=data["actor"])
    if data.get("kind"):
        decisions = decisions.filter(kind=data["kind"])
    if data.get("status"):
        decisions = decisions.filter(status=data["status"])
    if data.get("tool"):
        decisions = decisions.filter(tool=data["tool"])
    if data.get("thread"):
        decisions = decisions.filter(thread_id__startswith=data["thread"])
    zone = timezone.get_current_timezone()
    if data.get("since"):
        start = datetime.combine(data["since"], time.min, tzinfo=zone)
        decisions = decisions.filter(created_at__gte=start)
    if data.get("until"):
        end = datetime.combine(data["until"], time.min, tzinfo=zone)
        decisions = decisions.filter(created_at__lt=end + timedelta(days=1))
    return decisions


CSV_COLUMNS = [
    "decided_at",
    "actor",
    "decision",
    "status",
    "tool",
    "amount",
    "currency",
    "thread_id",
    "checkpoint_id",
    "tool_call_id",
    "proposed_args",
    "modified_args",
    "reason",
    "outcome",
    "run_id",
]
# A spreadsheet runs a cell starting with one of these as a formula.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> str:
    """Return a CSV cell a spreadsheet shows as text, never runs as a formula."""
    text = "" if value is None else str(value)
    if text.startswith(FORMULA_STARTS):
        return "'" + text
    return text


class _Echo:
    """A file-like object whose write returns the line, for streaming CSV."""

    def write(self, value: str) -> str:
        return value


@require_GET
@permission_required("approvals.view_decision", raise_exception=True)
def audit_csv(request: HttpRequest) -> HttpResponseBase:
    """Stream the filtered decisions as CSV, safe to open in a spreadsheet."""
    decisions = _filtered_decisions(AuditFilterForm(request.GET or None))
    writer = csv.writer(_Echo())

    def rows() -> Iterator[str]:
        yield writer.writerow(CSV_COLUMNS)
        for d in decisions.iterator(chunk_size=1000):
            yield writer.writerow(
                [
                    safe_cell(cell)
                    for cell in (
                        d.created_at.isoformat(),
                        d.actor.get_username(),
                        d.kind,
                        d.status,
                        d.tool,
                        d.amount,
                        d.currency,
                        d.thread_id,
                        d.checkpoint_id,
                        d.tool_call_id,
                        json.dumps(d.args, ensure_ascii=False, sort_keys=True),
                        json.dumps(d.modified_args, ensure_ascii=False, sort_keys=True)
                        if d.modified_args is not None
                        else "",
                        d.reason,
                        d.outcome,
                        d.run_id or "",
                    )
                ]
            )

    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    response = StreamingHttpResponse(rows(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="decisions-{stamp}.csv"'
    log.info("audit CSV exported by %s", request.user.get_username())
    return response
