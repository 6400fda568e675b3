from django.apps import AppConfig


class ApprovalsConfig(AppConfig):
    """Pending tool calls, decisions, approval policies and the audit trail."""

    name = "approvals"
    verbose_name = "Approvals"

    def ready(self) -> None:
        from approvals.pending import on_run_changed
        from runs.models import Run
        from runs.services import run_changed

        run_changed.connect(
            on_run_changed, sender=Run, dispatch_uid="approvals.on_run_changed"
        )
