from django.apps import AppConfig


class ApprovalsConfig(AppConfig):
    """Pending tool calls, decisions, approval policies and the audit trail."""

    name = "approvals"
    verbose_name = "Approvals"
