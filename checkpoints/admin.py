"""Retention policies and legal holds, edited by administrators."""

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from checkpoints.models import LegalHold, RetentionPolicy


@admin.register(RetentionPolicy)
class RetentionPolicyAdmin(admin.ModelAdmin):
    list_display = [
        "agent_or_default",
        "days_to_keep",
        "archive_to_s3",
        "updated_at",
        "updated_by",
    ]
    list_filter = ["archive_to_s3"]
    search_fields = ["agent"]
    readonly_fields = ["updated_at", "updated_by"]

    @admin.display(description="Agent", ordering="agent")
    def agent_or_default(self, obj: RetentionPolicy) -> str:
        return obj.agent or "Default (all agents)"

    def save_model(
        self, request: HttpRequest, obj: Any, form: Any, change: bool
    ) -> None:
        obj.updated_by = request.user
        super().save_model(request, obj, form, change)


@admin.register(LegalHold)
class LegalHoldAdmin(admin.ModelAdmin):
    list_display = ["thread_id", "created_by", "created_at"]
    search_fields = ["^thread_id", "reason"]
    readonly_fields = ["created_by", "created_at"]
    date_hierarchy = "created_at"

    def save_model(
        self, request: HttpRequest, obj: Any, form: Any, change: bool
    ) -> None:
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)
