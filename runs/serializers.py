"""Shapes of the REST API: what it accepts and what it answers."""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from rest_framework import serializers

from agentmatic.state import State
from approvals.models import Decision, DecisionKind, PendingCall
from runs.models import RunStatus, ThreadRecord
from runs.present import interrupt_row, jsonable
from runs.timeline import node_of

# -- threads ------------------------------------------------------------------


class ThreadQuerySerializer(serializers.Serializer[Any]):
    q = serializers.CharField(
        required=False, allow_blank=True, max_length=255, help_text="Id prefix."
    )
    status = serializers.ChoiceField(
        choices=RunStatus.choices, required=False, allow_blank=True
    )
    agent = serializers.CharField(required=False, allow_blank=True, max_length=100)
    cursor = serializers.CharField(required=False, allow_blank=True)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=200)


class ThreadSerializer(serializers.ModelSerializer[ThreadRecord]):
    readonly = serializers.BooleanField(source="is_readonly", read_only=True)
    branches = serializers.SerializerMethodField()
    url = serializers.SerializerMethodField()

    class Meta:
        model = ThreadRecord
        fields = [
            "thread_id",
            "agent",
            "status",
            "last_step",
            "updated_at",
            "started_by",
            "forked_from_thread",
            "forked_from_checkpoint",
            "readonly",
            "readonly_reason",
            "branches",
            "url",
        ]
        read_only_fields = fields

    def get_branches(self, record: ThreadRecord) -> int:
        forks: dict[str, int] = self.context.get("forks", {})
        return forks.get(record.thread_id, 0)

    def get_url(self, record: ThreadRecord) -> str:
        return reverse("api:thread", args=[record.thread_id])


class ThreadPageSerializer(serializers.Serializer[Any]):
    results = ThreadSerializer(many=True)
    next = serializers.CharField(allow_null=True)
    previous = serializers.CharField(allow_null=True)


class CheckpointSerializer(serializers.Serializer[Any]):
    """One checkpoint of a history, read without values."""

    checkpoint_id = serializers.CharField()
    parent_checkpoint_id = serializers.CharField(allow_null=True)
    step = serializers.IntegerField()
    # A field named like Field.source; the stubs object, DRF does not.
    source = serializers.CharField()  # type: ignore[assignment]
    node = serializers.CharField()
    actor = serializers.CharField()
    created_at = serializers.CharField(allow_null=True)
    next = serializers.ListField(child=serializers.CharField())
    pending_tool_calls = serializers.ListField(child=serializers.DictField())
    interrupts = serializers.ListField(child=serializers.DictField())
    metadata = serializers.DictField()


def checkpoint_data(state: State, parent: State | None) -> dict[str, Any]:
    return {
        "checkpoint_id": state.checkpoint_id,
        "parent_checkpoint_id": state.parent_checkpoint_id,
        "step": state.step,
        "source": state.source,
        "node": node_of(state, parent),
        "actor": str(state.metadata.get("actor") or ""),
        "created_at": state.created_at,
        "next": list(state.next),
        "pending_tool_calls": [jsonable(c) for c in state.pending_tool_calls],
        "interrupts": [interrupt_row(i) for i in state.interrupts],
        "metadata": jsonable(state.metadata),
    }


class HistoryQuerySerializer(serializers.Serializer[Any]):
    limit = serializers.IntegerField(
        required=False, min_value=1, max_value=500, default=50
    )
    before = serializers.CharField(required=False, allow_blank=True, max_length=64)


class HistorySerializer(serializers.Serializer[Any]):
    thread_id = serializers.CharField()
    results = CheckpointSerializer(many=True)
    next = serializers.CharField(allow_null=True)


class StateSerializer(serializers.Serializer[Any]):
    """A checkpoint's whole state; opaque values name their type."""

    thread_id = serializers.CharField()
    checkpoint_id = serializers.CharField()
    parent_checkpoint_id = serializers.CharField(allow_null=True)
    step = serializers.IntegerField()
    # A field named like Field.source; the stubs object, DRF does not.
    source = serializers.CharField()  # type: ignore[assignment]
    created_at = serializers.CharField(allow_null=True)
    next = serializers.ListField(child=serializers.CharField())
    metadata = serializers.DictField()
    values = serializers.DictField()
    pending_tool_calls = serializers.ListField(child=serializers.DictField())
    tasks = serializers.ListField(child=serializers.DictField())
    interrupts = serializers.ListField(child=serializers.DictField())
    decisions = serializers.DictField()


class DiffQuerySerializer(serializers.Serializer[Any]):
    against = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=64,
        help_text="Checkpoint to compare with; the parent when empty.",
    )
    against_thread = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=255,
        help_text="Thread of that checkpoint; any thread when empty.",
    )


class DiffSerializer(serializers.Serializer[Any]):
    old = CheckpointSerializer(allow_null=True)
    new = CheckpointSerializer()
    problem = serializers.CharField(allow_blank=True)
    diff = serializers.DictField()


class ForkRequestSerializer(serializers.Serializer[Any]):
    checkpoint_id = serializers.CharField(max_length=64)
    branch_name = serializers.CharField(max_length=60)
    message = serializers.CharField(
        required=False, allow_blank=True, max_length=20_000, default=""
    )
    system_prompt = serializers.CharField(
        required=False,
        allow_blank=True,
        allow_null=True,
        max_length=20_000,
        default=None,
        help_text="Replaces the first system message; omit to keep it.",
    )

    def validate_branch_name(self, value: str) -> str:
        from django.utils.text import slugify

        if not slugify(value):
            raise serializers.ValidationError(
                "Use at least one letter or digit, so the thread id can be made "
                "from it."
            )
        return value


class ForkResponseSerializer(serializers.Serializer[Any]):
    thread_id = serializers.CharField()
    run_id = serializers.CharField()
    status = serializers.CharField()
    source_thread = serializers.CharField()
    source_checkpoint = serializers.CharField()
    url = serializers.CharField()


# -- approvals -------------------------------------------------------------------


class PendingCallSerializer(serializers.ModelSerializer[PendingCall]):
    decide_url = serializers.SerializerMethodField()

    class Meta:
        model = PendingCall
        fields = [
            "id",
            "thread_id",
            "checkpoint_id",
            "tool_call_id",
            "tool",
            "agent",
            "args",
            "amount",
            "currency",
            "reason",
            "started_by",
            "waiting_since",
            "state",
            "decide_url",
        ]
        read_only_fields = fields

    def get_decide_url(self, call: PendingCall) -> str:
        return reverse("api:decide", args=[call.pk])


class ApprovalQuerySerializer(serializers.Serializer[Any]):
    state = serializers.CharField(required=False, allow_blank=True)
    tool = serializers.CharField(required=False, allow_blank=True, max_length=100)
    agent = serializers.CharField(required=False, allow_blank=True, max_length=100)
    cursor = serializers.CharField(required=False, allow_blank=True)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=200)


class ApprovalPageSerializer(serializers.Serializer[Any]):
    results = PendingCallSerializer(many=True)
    next = serializers.CharField(allow_null=True)


class DecideRequestSerializer(serializers.Serializer[Any]):
    decision = serializers.ChoiceField(choices=DecisionKind.choices)
    checkpoint_id = serializers.CharField(
        max_length=64,
        help_text="The checkpoint the proposal was read from; a decision on "
        "one that is no longer the thread's newest is refused with 409.",
    )
    args = serializers.DictField(
        required=False, help_text="The new arguments, for a modification."
    )
    reason = serializers.CharField(
        required=False, allow_blank=True, default="", max_length=5000
    )


class DecisionSerializer(serializers.ModelSerializer[Decision]):
    actor = serializers.CharField(source="actor.get_username", read_only=True)

    class Meta:
        model = Decision
        fields = [
            "id",
            "thread_id",
            "checkpoint_id",
            "tool_call_id",
            "tool",
            "kind",
            "status",
            "actor",
            "reason",
            "args",
            "modified_args",
            "amount",
            "currency",
            "outcome",
            "created_at",
        ]
        read_only_fields = fields
