"""Read-mostly admin views of runs and the thread index.

Both tables are written by the runner; editing them by hand would make the
console disagree with the checkpoints, so the admin only shows them.
"""

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from runs.models import Run, ThreadRecord


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Run)
class RunAdmin(ReadOnlyAdmin):
    list_display = [
        "thread_id",
        "agent",
        "status",
        "started_by_label",
        "created_at",
        "finished_at",
    ]
    list_filter = ["status", "agent", "created_at"]
    search_fields = ["=id", "thread_id", "started_by_label", "branch_name"]
    date_hierarchy = "created_at"
    show_full_result_count = False


@admin.register(ThreadRecord)
class ThreadRecordAdmin(ReadOnlyAdmin):
    list_display = ["thread_id", "agent", "status", "last_step", "updated_at"]
    list_filter = ["status", "agent"]
    # Prefix match ("^") keeps the search on the index at 100,000 rows.
    search_fields = ["^thread_id"]
    show_full_result_count = False
