"""The REST API under /api/: threads, history, state, diff, forks, approvals.

The same permissions as the pages: users who may view threads read them;
developers fork; operators list and decide approvals. The permission is
checked before any lookup, so a user without the role learns nothing about
which threads exist. Errors answer ``{"detail": ...}``, with the offending
input named under its own key when there is one.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from django.db.models import Q
from django.urls import path, reverse
from django.utils.http import urlencode
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agentmatic.errors import SerializationError
from approvals import actions
from approvals.models import CallState, PendingCall
from runs.diff import diff_values
from runs.forks import FORK_PERMISSION, ForkRefused, check_fork, do_fork
from runs.indexing import index_thread, refresh_index
from runs.present import state_json
from runs.serializers import (
    ApprovalPageSerializer,
    ApprovalQuerySerializer,
    DecideRequestSerializer,
    DecisionSerializer,
    DiffQuerySerializer,
    DiffSerializer,
    ForkRequestSerializer,
    ForkResponseSerializer,
    HistoryQuerySerializer,
    HistorySerializer,
    PendingCallSerializer,
    StateSerializer,
    ThreadPageSerializer,
    ThreadQuerySerializer,
    ThreadSerializer,
    checkpoint_data,
)
from runs.threads import (
    BadCursor,
    ThreadFilters,
    ThreadSource,
    comparison_base,
    find_thread,
    fork_counts,
    list_page,
    read_state,
)

VIEW_THREADS = "runs.view_threadrecord"
VIEW_APPROVALS = "approvals.view_decision"
DECIDE = "approvals.decide"


def needs(*perms: str) -> type[BasePermission]:
    """Return a permission class requiring every one of `perms`."""

    class HasPermissions(BasePermission):
        message = "Your role may not use this part of the API."

        def has_permission(self, request: Request, view: Any) -> bool:
            return bool(request.user and request.user.has_perms(perms))

    HasPermissions.__name__ = "Needs_" + "_".join(p.replace(".", "_") for p in perms)
    return HasPermissions


def _thread(thread_id: str) -> ThreadSource:
    source = find_thread(thread_id)
    if source is None:
        raise NotFound("No such thread, or it has no checkpoints yet.")
    return source


def _query(serializer_class: type, request: Request) -> dict[str, Any]:
    serializer = serializer_class(data=request.query_params)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


# -- threads ---------------------------------------------------------------------


class ThreadList(APIView):
    """Threads, newest activity first, paged with an opaque cursor."""

    permission_classes = [IsAuthenticated, needs(VIEW_THREADS)]

    @extend_schema(
        operation_id="threads_list",
        parameters=[ThreadQuerySerializer],
        responses=ThreadPageSerializer,
    )
    def get(self, request: Request) -> Response:
        query = _query(ThreadQuerySerializer, request)
        refresh_index()
        filters = ThreadFilters(
            prefix=query.get("q", ""),
            status=query.get("status", ""),
            agent=query.get("agent", ""),
        )
        try:
            page = list_page(
                filters, query.get("cursor") or None, query.get("limit") or 50
            )
        except BadCursor as exc:
            raise ValidationError({"cursor": [str(exc)]}) from exc
        keep = {k: v for k, v in request.query_params.items() if k != "cursor"}
        return Response(
            {
                "results": ThreadSerializer(
                    page.records, many=True, context={"forks": page.forks}
                ).data,
                "next": _page_url(request, keep, page.next_cursor),
                "previous": _page_url(request, keep, page.previous_cursor),
            }
        )


def _page_url(request: Request, keep: dict[str, Any], cursor: str | None) -> str | None:
    if not cursor:
        return None
    return request.build_absolute_uri(
        request.path + "?" + urlencode({**keep, "cursor": cursor})
    )


class ThreadDetail(APIView):
    """One thread's index row, its source and its branches."""

    permission_classes = [IsAuthenticated, needs(VIEW_THREADS)]

    @extend_schema(operation_id="threads_retrieve", responses=ThreadSerializer)
    def get(self, request: Request, thread_id: str) -> Response:
        from runs.models import ThreadRecord

        record = ThreadRecord.objects.filter(thread_id=thread_id).first()
        if record is None:
            # In a store but not indexed yet (written outside the console).
            record = index_thread(thread_id)
        if record is None:
            raise NotFound("No such thread.")
        data = ThreadSerializer(
            record, context={"forks": fork_counts([thread_id])}
        ).data
        data["branches_list"] = [
            {
                "thread_id": b.thread_id,
                "checkpoint_id": b.forked_from_checkpoint,
                "url": reverse("api:thread", args=[b.thread_id]),
            }
            for b in ThreadRecord.objects.filter(forked_from_thread=thread_id)[:200]
        ]
        return Response(data)


class ThreadHistory(APIView):
    """A thread's checkpoints, newest first, without values."""

    permission_classes = [IsAuthenticated, needs(VIEW_THREADS)]

    @extend_schema(parameters=[HistoryQuerySerializer], responses=HistorySerializer)
    def get(self, request: Request, thread_id: str) -> Response:
        query = _query(HistoryQuerySerializer, request)
        source = _thread(thread_id)
        limit = query["limit"]
        states = source.saver.get_state_history(
            thread_id, limit=limit + 1, before=query.get("before") or None, values=False
        )
        shown = states[:limit]
        below = [*states[1:], None]
        results = [
            checkpoint_data(
                s, b if b and b.checkpoint_id == s.parent_checkpoint_id else None
            )
            for s, b in zip(shown, below, strict=False)
        ]
        next_url = None
        if len(states) > limit:
            next_url = request.build_absolute_uri(
                request.path
                + "?"
                + urlencode({"limit": limit, "before": shown[-1].checkpoint_id})
            )
        return Response({"thread_id": thread_id, "results": results, "next": next_url})


class CheckpointState(APIView):
    """A checkpoint's whole state: values, pending tasks, interrupts."""

    permission_classes = [IsAuthenticated, needs(VIEW_THREADS)]

    @extend_schema(responses=StateSerializer)
    def get(self, request: Request, thread_id: str, checkpoint_id: str) -> Response:
        source = _thread(thread_id)
        state = _read(source, thread_id, checkpoint_id)
        return Response(state_json(state))


def _read(source: ThreadSource, thread_id: str, checkpoint_id: str) -> Any:
    try:
        state = read_state(source, thread_id, checkpoint_id)
    except SerializationError as exc:
        raise ValidationError({"checkpoint_id": [str(exc)]}) from exc
    if state is None or state.thread_id != thread_id:
        raise NotFound("This thread has no such checkpoint.")
    return state


class CheckpointDiff(APIView):
    """What changed between a checkpoint and its parent, or any other one."""

    permission_classes = [IsAuthenticated, needs(VIEW_THREADS)]

    @extend_schema(parameters=[DiffQuerySerializer], responses=DiffSerializer)
    def get(self, request: Request, thread_id: str, checkpoint_id: str) -> Response:
        query = _query(DiffQuerySerializer, request)
        source = _thread(thread_id)
        new = _read(source, thread_id, checkpoint_id)
        against = query.get("against", "")
        try:
            old, problem = comparison_base(
                source, new, against, query.get("against_thread", "")
            )
        except SerializationError as exc:
            raise ValidationError({"against": [str(exc)]}) from exc
        if old is None and against:
            raise ValidationError({"against": [problem]})
        return Response(
            {
                "old": checkpoint_data(old, None) if old else None,
                "new": checkpoint_data(new, None),
                "problem": problem,
                "diff": diff_values(old.values if old else {}, new.values).as_dict(),
            }
        )


class ThreadFork(APIView):
    """Start a branch from a checkpoint (developers)."""

    permission_classes = [IsAuthenticated, needs(VIEW_THREADS, FORK_PERMISSION)]

    @extend_schema(
        request=ForkRequestSerializer, responses={201: ForkResponseSerializer}
    )
    def post(self, request: Request, thread_id: str) -> Response:
        body = ForkRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        try:
            plan = check_fork(thread_id, data["checkpoint_id"])
        except ForkRefused as refused:
            if refused.status == 404 and refused.field is None:
                raise NotFound(refused.message) from refused
            payload: dict[str, Any] = {"detail": refused.message}
            if refused.field:
                payload[refused.field] = [refused.message]
            return Response(payload, status=refused.status)
        run = do_fork(
            plan,
            user=request.user,
            branch_name=data["branch_name"],
            message=data["message"],
            system_prompt=data["system_prompt"],
        )
        return Response(
            {
                "thread_id": run.thread_id,
                "run_id": str(run.id),
                "status": run.status,
                "source_thread": thread_id,
                "source_checkpoint": plan.checkpoint_id,
                "url": reverse("api:thread", args=[run.thread_id]),
            },
            status=status.HTTP_201_CREATED,
        )


# -- approvals ----------------------------------------------------------------------

CALL_STATES: dict[str, list[str]] = {
    "": [CallState.PENDING, CallState.DECIDING],
    "pending": [CallState.PENDING, CallState.DECIDING],
    "decided": [CallState.DECIDED],
    "stale": [CallState.STALE],
    "all": list(CallState.values),
}


def _encode(when: datetime, pk: int) -> str:
    raw = json.dumps([when.isoformat(), pk]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str) -> tuple[datetime, int]:
    try:
        when, pk = json.loads(
            base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        )
        return datetime.fromisoformat(when), int(pk)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ValidationError({"cursor": ["Malformed cursor."]}) from exc


class ApprovalList(APIView):
    """Gated tool calls, oldest first (waiting time is what matters)."""

    permission_classes = [IsAuthenticated, needs(VIEW_APPROVALS)]

    @extend_schema(
        parameters=[
            ApprovalQuerySerializer,
            OpenApiParameter(
                "state",
                str,
                enum=["pending", "decided", "stale", "all"],
                description="Which calls; pending (with those being decided) "
                "when omitted.",
            ),
        ],
        responses=ApprovalPageSerializer,
    )
    def get(self, request: Request) -> Response:
        query = _query(ApprovalQuerySerializer, request)
        state = query.get("state", "")
        if state not in CALL_STATES:
            raise ValidationError({"state": [f"Use one of {', '.join(CALL_STATES)}."]})
        calls = PendingCall.objects.filter(state__in=CALL_STATES[state])
        if query.get("tool"):
            calls = calls.filter(tool=query["tool"])
        if query.get("agent"):
            calls = calls.filter(agent=query["agent"])
        if query.get("cursor"):
            when, pk = _decode(query["cursor"])
            calls = calls.filter(waiting_since__gte=when).filter(
                Q(waiting_since__gt=when) | Q(pk__gt=pk)
            )
        limit = query.get("limit") or 50
        rows = list(calls.order_by("waiting_since", "pk")[: limit + 1])
        shown = rows[:limit]
        next_url = None
        if len(rows) > limit:
            keep = {k: str(v) for k, v in request.query_params.items() if k != "cursor"}
            cursor = _encode(shown[-1].waiting_since, shown[-1].pk)
            next_url = request.build_absolute_uri(
                request.path + "?" + urlencode({**keep, "cursor": cursor})
            )
        return Response(
            {"results": PendingCallSerializer(shown, many=True).data, "next": next_url}
        )


class ApprovalDecide(APIView):
    """Approve, modify or reject one gated call (operators).

    409 when the proposal is no longer current or someone else decided it;
    400 naming the field for arguments that do not fit the tool's schema.
    """

    permission_classes = [IsAuthenticated, needs(VIEW_APPROVALS, DECIDE)]

    @extend_schema(request=DecideRequestSerializer, responses={201: DecisionSerializer})
    def post(self, request: Request, call_id: int) -> Response:
        body = DecideRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        call = PendingCall.objects.filter(pk=call_id).first()
        if call is None:
            raise NotFound("No such call.")
        try:
            decision = actions.decide(
                request.user,
                call,
                data["decision"],
                checkpoint_id=data["checkpoint_id"],
                args=data.get("args"),
                reason=data.get("reason", ""),
            )
        except actions.DecisionRefused as refused:
            payload: dict[str, Any] = {"detail": refused.message}
            if refused.field:
                payload[refused.field] = [refused.message]
            if refused.current is not None:
                payload["current"] = PendingCallSerializer(refused.current).data
            return Response(payload, status=refused.status)
        return Response(
            DecisionSerializer(decision).data, status=status.HTTP_201_CREATED
        )


app_name = "api"

urlpatterns = [
    path("threads/", ThreadList.as_view(), name="threads"),
    path("threads/<str:thread_id>/", ThreadDetail.as_view(), name="thread"),
    path(
        "threads/<str:thread_id>/history/",
        ThreadHistory.as_view(),
        name="history",
    ),
    path(
        "threads/<str:thread_id>/checkpoints/<str:checkpoint_id>/",
        CheckpointState.as_view(),
        name="state",
    ),
    path(
        "threads/<str:thread_id>/checkpoints/<str:checkpoint_id>/diff/",
        CheckpointDiff.as_view(),
        name="diff",
    ),
    path("threads/<str:thread_id>/fork/", ThreadFork.as_view(), name="fork"),
    path("approvals/", ApprovalList.as_view(), name="approvals"),
    path("approvals/<int:call_id>/decide/", ApprovalDecide.as_view(), name="decide"),
]
