"""Pages of the runs app: the threads list, a thread's timeline, diff and fork.

Pages answer whole documents; a request carrying ``X-Partial: 1`` (sent by
static/console.js) gets only the fragment it asked for, marked with
``X-Partial-Response: 1``. Everything works with plain links and forms.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_GET, require_http_methods

from agentmatic.errors import SerializationError
from runs.diff import diff_values
from runs.forks import FORK_PERMISSION, ForkRefused, check_fork, do_fork
from runs.forms import DiffForm, ForkForm, ThreadFilterForm
from runs.indexing import index_thread, refresh_index
from runs.models import Run, RunStatus, ThreadRecord
from runs.present import (
    conversation,
    first_system_message,
    interrupt_row,
    task_rows,
    to_json,
)
from runs.threads import (
    BadCursor,
    ThreadFilters,
    ThreadSource,
    branches_of,
    comparison_base,
    find_thread,
    list_page,
    read_state,
)
from runs.timeline import ORDERS, Fork, Timeline, load_timeline

log = logging.getLogger(__name__)

VIEW_PERMISSION = "runs.view_threadrecord"
# A checkpoint shows its newest turns; "show all" shows the rest.
CONVERSATION_TAIL = 40
RAW_INLINE_MESSAGES = 200


def _is_partial(request: HttpRequest) -> bool:
    return request.headers.get("X-Partial") == "1"


def _fragment(
    request: HttpRequest, template: str, context: dict[str, Any]
) -> HttpResponse:
    response = render(request, template, context)
    response["X-Partial-Response"] = "1"
    return response


# -- the threads list ---------------------------------------------------------


@require_GET
@permission_required(VIEW_PERMISSION, raise_exception=True)
def threads(request: HttpRequest) -> HttpResponse:
    """List every thread, newest activity first, filtered and paged on the server."""
    refresh_index()
    form = ThreadFilterForm(request.GET or None)
    filters = ThreadFilters()
    if form.is_valid():
        data = form.cleaned_data
        filters = ThreadFilters(
            prefix=data["q"], status=data["status"], agent=data["agent"]
        )
    cursor = request.GET.get("cursor") or None
    try:
        page = list_page(filters, cursor)
    except BadCursor:
        messages.warning(
            request, "That page link is no longer valid; showing the newest threads."
        )
        page = list_page(filters)
    query = {k: v for k, v in (form.cleaned_data if form.is_bound else {}).items() if v}
    context = {
        "form": form,
        "page": page,
        "filtered": any(query.values()),
        "next_url": _with(request, query, cursor=page.next_cursor),
        "previous_url": _with(request, query, cursor=page.previous_cursor),
        "agents": sorted(settings.AGENTMATIC_AGENTS),
    }
    if _is_partial(request):
        return _fragment(request, "runs/_threads_table.html", context)
    return render(request, "runs/threads.html", context)


def _with(request: HttpRequest, query: dict[str, Any], **extra: Any) -> str | None:
    if not any(extra.values()):
        return None
    return request.path + "?" + urlencode({**query, **extra})


# -- a thread -----------------------------------------------------------------


def _locate(thread_id: str) -> tuple[ThreadSource | None, ThreadRecord | None]:
    """Return the thread's store and index row; 404 when neither knows it."""
    source = find_thread(thread_id)
    record = ThreadRecord.objects.filter(thread_id=thread_id).first()
    if source is None and record is None:
        raise Http404("No such thread.")
    if record is None:
        # Written outside the console since the list was last indexed.
        record = index_thread(thread_id)
    return source, record


def _forks_by_checkpoint(thread_id: str) -> tuple[list[Any], dict[str, list[Fork]]]:
    branches = branches_of(thread_id)
    by_checkpoint: dict[str, list[Fork]] = {}
    for branch in branches:
        by_checkpoint.setdefault(branch.checkpoint_id, []).append(
            Fork(thread_id=branch.thread_id, label=branch.name)
        )
    return branches, by_checkpoint


def _timeline(
    request: HttpRequest,
    source: ThreadSource,
    thread_id: str,
    forks: dict[str, list[Fork]],
) -> Timeline:
    order = request.GET.get("order", "newest")
    if order not in ORDERS:
        order = "newest"
    try:
        offset = max(0, int(request.GET.get("offset") or 0))
    except ValueError:
        offset = 0
    return load_timeline(
        source.saver,
        thread_id,
        order=order,
        before=request.GET.get("before") or None,
        lanes=request.GET.get("lanes", ""),
        offset=offset,
        forks=forks,
    )


def _more_url(thread_id: str, timeline: Timeline) -> str | None:
    base = reverse("runs:thread_page", args=[thread_id])
    if timeline.order == "oldest" and timeline.offset is not None:
        return (
            base + "?" + urlencode({"order": "oldest", "offset": str(timeline.offset)})
        )
    if timeline.order == "newest" and timeline.before:
        return (
            base + "?" + urlencode({"before": timeline.before, "lanes": timeline.lanes})
        )
    return None


def _status(record: ThreadRecord | None, thread_id: str) -> dict[str, Any]:
    """Return the thread's status as the runner recorded it."""
    last_run = Run.objects.filter(thread_id=thread_id).order_by("-created_at").first()
    status = record.status if record else ""
    return {
        "status": status,
        "status_label": RunStatus(status).label if status else "Not indexed yet",
        "last_run": last_run,
        "error": last_run.error if last_run and last_run.status == "failed" else "",
    }


def _source_link(
    record: ThreadRecord | None, timeline: Timeline | None
) -> dict[str, str] | None:
    """Return the thread this one was forked from, if it was."""
    if record is not None and record.forked_from_thread:
        return {
            "thread_id": record.forked_from_thread,
            "checkpoint_id": record.forked_from_checkpoint,
        }
    for row in timeline.rows if timeline else []:
        if row.forked_from and row.forked_from.get("thread_id"):
            return {
                "thread_id": str(row.forked_from["thread_id"]),
                "checkpoint_id": str(row.forked_from.get("checkpoint_id") or ""),
            }
    return None


@require_GET
@permission_required(VIEW_PERMISSION, raise_exception=True)
def thread(request: HttpRequest, thread_id: str) -> HttpResponse:
    """Show a thread: its timeline and, when one is selected, a checkpoint."""
    source, record = _locate(thread_id)

    branches, forks = _forks_by_checkpoint(thread_id)
    timeline = None
    if source is not None:
        timeline = _timeline(request, source, thread_id, forks)
    selected_id = request.GET.get("at") or ""
    detail = None
    if source is not None and selected_id:
        detail = _detail_context(request, source, thread_id, selected_id)
    context = {
        "thread_id": thread_id,
        "source": source,
        "record": record,
        "readonly_reason": source.readonly_reason if source else "",
        "timeline": timeline,
        "more_url": _more_url(thread_id, timeline) if timeline else None,
        "order": timeline.order if timeline else "newest",
        "branches": branches,
        "forked_from": _source_link(record, timeline),
        "detail": detail,
        "selected_id": selected_id,
        "head_param": _head_param(source, timeline, request),
        **_status(record, thread_id),
    }
    return render(request, "runs/thread.html", context)


def _head_param(
    source: ThreadSource | None, timeline: Timeline | None, request: HttpRequest
) -> str:
    """Return what the status strip compares the thread's head with."""
    if source is None:
        return "none"
    on_first_page = not request.GET.get("before") and not request.GET.get("offset")
    if timeline is None or not timeline.rows or not on_first_page:
        return ""
    if timeline.order == "newest":
        return timeline.rows[0].checkpoint_id
    # Oldest first shows the head only on the page that reaches it.
    return timeline.rows[-1].checkpoint_id if timeline.offset is None else ""


@require_GET
@permission_required(VIEW_PERMISSION, raise_exception=True)
def thread_page(request: HttpRequest, thread_id: str) -> HttpResponse:
    """Return the next page of a timeline (older, or newer when oldest first)."""
    source, _record = _locate(thread_id)
    if not _is_partial(request):
        return redirect(
            reverse("runs:thread", args=[thread_id]) + "?" + request.GET.urlencode()
        )
    if source is None:
        raise Http404("This thread has no checkpoints yet.")
    _branches, forks = _forks_by_checkpoint(thread_id)
    timeline = _timeline(request, source, thread_id, forks)
    return _fragment(
        request,
        "runs/_timeline_page.html",
        {
            "thread_id": thread_id,
            "timeline": timeline,
            "more_url": _more_url(thread_id, timeline),
            "selected_id": "",
            "order": timeline.order,
        },
    )


@require_GET
@permission_required(VIEW_PERMISSION, raise_exception=True)
def thread_status(request: HttpRequest, thread_id: str) -> HttpResponse:
    """Return the status strip of a thread (refreshed by live events)."""
    source, record = _locate(thread_id)
    head = source.saver.get_state(thread_id, values=False) if source else None
    context = {
        "thread_id": thread_id,
        "record": record,
        "head": head,
        "shown_head": request.GET.get("head", ""),
        **_status(record, thread_id),
    }
    if not _is_partial(request):
        return redirect("runs:thread", thread_id=thread_id)
    return _fragment(request, "runs/_thread_status.html", context)


def _detail_context(
    request: HttpRequest, source: ThreadSource, thread_id: str, checkpoint_id: str
) -> dict[str, Any]:
    try:
        state = read_state(source, thread_id, checkpoint_id)
    except SerializationError as exc:
        return {"error": str(exc), "checkpoint_id": checkpoint_id}
    if state is None or state.thread_id != thread_id:
        raise Http404("This thread has no such checkpoint.")
    system = first_system_message(state)
    user = request.user
    may_fork = user.has_perm(FORK_PERMISSION) and not source.readonly
    form = None
    if may_fork:
        form = ForkForm(
            has_system_prompt=system is not None,
            initial={"system_prompt": system.text if system else ""},
        )
    turns = conversation(state)
    hidden = 0
    if len(turns) > CONVERSATION_TAIL and not request.GET.get("all"):
        hidden = len(turns) - CONVERSATION_TAIL
        turns = turns[-CONVERSATION_TAIL:]
    # A long conversation's raw JSON is too big for a page; the API has it.
    inline_raw = len(state.messages) <= RAW_INLINE_MESSAGES
    return {
        "state": state,
        "checkpoint_id": state.checkpoint_id,
        "turns": turns,
        "hidden_turns": hidden,
        "raw_values": to_json(state.values) if inline_raw else "",
        "raw_url": reverse("api:state", args=[thread_id, state.checkpoint_id])
        + "?format=json",
        "raw_metadata": to_json(state.metadata),
        "tasks": task_rows(state),
        "interrupts": [interrupt_row(i) for i in state.interrupts],
        "may_fork": may_fork,
        "fork_form": form,
        "fork_blocked": _fork_blocked_reason(request, source),
    }


def _fork_blocked_reason(request: HttpRequest, source: ThreadSource) -> str:
    if not request.user.has_perm(FORK_PERMISSION):
        return "Your role may look at threads but not fork them; developers may."
    if source.readonly:
        return f"This thread cannot be forked. {source.readonly_reason}"
    return ""


@require_GET
@permission_required(VIEW_PERMISSION, raise_exception=True)
def checkpoint(
    request: HttpRequest, thread_id: str, checkpoint_id: str
) -> HttpResponse:
    """Show one checkpoint's state: conversation, raw values, tasks, interrupts."""
    source, _record = _locate(thread_id)
    if not _is_partial(request):
        url = reverse("runs:thread", args=[thread_id])
        query = {"at": checkpoint_id}
        if request.GET.get("all"):
            query["all"] = "1"
        return redirect(f"{url}?{urlencode(query)}#detail")
    if source is None:
        raise Http404("This thread has no checkpoints yet.")
    detail = _detail_context(request, source, thread_id, checkpoint_id)
    return _fragment(
        request,
        "runs/_checkpoint.html",
        {"thread_id": thread_id, "detail": detail},
    )


# -- diff -----------------------------------------------------------------------


@require_GET
@permission_required(VIEW_PERMISSION, raise_exception=True)
def diff(request: HttpRequest, thread_id: str, checkpoint_id: str) -> HttpResponse:
    """Compare a checkpoint with its parent, or with any other checkpoint."""
    source, _record = _locate(thread_id)
    if source is None:
        raise Http404("This thread has no checkpoints yet.")
    form = DiffForm(request.GET or None)
    against_id = against_thread = ""
    if form.is_valid():
        against_id = form.cleaned_data["against"]
        against_thread = form.cleaned_data["against_thread"]

    try:
        new = read_state(source, thread_id, checkpoint_id)
        if new is None or new.thread_id != thread_id:
            raise Http404("This thread has no such checkpoint.")
        old, problem = comparison_base(source, new, against_id, against_thread)
    except SerializationError as exc:
        return render(
            request,
            "runs/diff.html",
            {"thread_id": thread_id, "checkpoint_id": checkpoint_id, "error": exc},
        )
    result = diff_values(old.values if old else {}, new.values)
    recent = source.saver.get_state_history(thread_id, limit=30, values=False)
    context = {
        "thread_id": thread_id,
        "checkpoint_id": checkpoint_id,
        "new": new,
        "old": old,
        "problem": problem,
        "diff": result,
        "form": form,
        "recent": recent,
        "against_parent": not against_id,
    }
    return render(request, "runs/diff.html", context)


# -- fork -----------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
@permission_required(VIEW_PERMISSION, raise_exception=True)
@permission_required(FORK_PERMISSION, raise_exception=True)
def fork(request: HttpRequest, thread_id: str, checkpoint_id: str) -> HttpResponse:
    """Start a branch from a checkpoint, then open it."""
    try:
        plan = check_fork(thread_id, checkpoint_id)
    except ForkRefused as refused:
        if refused.status == 404:
            raise Http404(refused.message) from refused
        return render(
            request,
            "runs/fork.html",
            {
                "thread_id": thread_id,
                "checkpoint_id": checkpoint_id,
                "refused": refused.message,
            },
            status=refused.status,
        )
    system = first_system_message(plan.state)
    form = ForkForm(
        request.POST or None,
        has_system_prompt=system is not None,
        initial={"system_prompt": system.text if system else ""},
    )
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        run = do_fork(
            plan,
            user=request.user,
            branch_name=data["branch_name"],
            message=data["message"],
            system_prompt=data.get("system_prompt"),
        )
        messages.success(
            request,
            f"Branch “{data['branch_name']}” started from step {plan.state.step} "
            f"of {thread_id}.",
        )
        return redirect("runs:thread", thread_id=run.thread_id)
    return render(
        request,
        "runs/fork.html",
        {
            "thread_id": thread_id,
            "checkpoint_id": checkpoint_id,
            "state": plan.state,
            "form": form,
        },
        status=400 if request.method == "POST" else 200,
    )
