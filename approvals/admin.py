"""Approval policies and approver limits, edited by administrators.

Decisions are shown but never edited here: they are the audit trail.
"""

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from approvals.models import (
    ApprovalPolicy,
    ApproverLimit,
    Decision,
    PendingCall,
    Refund,
)


@admin.register(ApprovalPolicy)
class ApprovalPolicyAdmin(admin.ModelAdmin):
    list_display = [
        "tool",
        "agent_or_all",
        "threshold",
        "four_eyes_above",
        "active",
        "updated_at",
    ]
    list_filter = ["active", "tool"]
    search_fields = ["tool", "agent"]
    fieldsets = [
        (None, {"fields": ["tool", "agent", "active"]}),
        (
            "Amounts",
            {
                "fields": ["amount_field", "threshold", "four_eyes_above"],
                "description": "Calls at or above the threshold wait for a "
                "human; above the four-eyes amount they need two different "
                "approvers. A gate that reads this policy applies a change "
                "at its next call, without a deploy.",
            },
        ),
    ]

    @admin.display(description="Agent", ordering="agent")
    def agent_or_all(self, obj: ApprovalPolicy) -> str:
        return obj.agent or "All agents"


@admin.register(ApproverLimit)
class ApproverLimitAdmin(admin.ModelAdmin):
    list_display = ["user", "max_amount"]
    search_fields = ["user__username"]
    autocomplete_fields = ["user"]


@admin.register(Decision)
class DecisionAdmin(admin.ModelAdmin):
    list_display = [
        "created_at",
        "actor",
        "kind",
        "tool",
        "amount",
        "currency",
        "status",
        "thread_id",
    ]
    list_filter = ["kind", "status", "tool", "created_at"]
    search_fields = ["thread_id", "tool_call_id", "actor__username", "reason"]
    date_hierarchy = "created_at"
    list_select_related = ["actor"]
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written by the console itself: shown, never edited by hand."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(PendingCall)
class PendingCallAdmin(ReadOnlyAdmin):
    list_display = [
        "waiting_since",
        "tool",
        "amount",
        "currency",
        "agent",
        "thread_id",
        "state",
    ]
    list_filter = ["state", "tool", "agent"]
    search_fields = ["thread_id", "tool_call_id"]
    date_hierarchy = "waiting_since"
    show_full_result_count = False


@admin.register(Refund)
class RefundAdmin(ReadOnlyAdmin):
    """The demo's payment system: what the payments agent actually sent."""

    list_display = ["created_at", "amount", "currency", "to_account", "thread_id"]
    search_fields = ["thread_id", "to_account", "idempotency_key"]
    date_hierarchy = "created_at"
    show_full_result_count = False
