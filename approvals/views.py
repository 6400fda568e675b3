"""Pages of the approvals app. The queue and the audit list are still to come."""

from django.contrib.auth.decorators import permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET


@require_GET
@permission_required("approvals.view_decision", raise_exception=True)
def queue(request: HttpRequest) -> HttpResponse:
    """Show the approval queue (for now, a page saying it is on its way)."""
    return render(request, "approvals/queue.html")


@require_GET
@permission_required("approvals.view_decision", raise_exception=True)
def audit(request: HttpRequest) -> HttpResponse:
    """Show the audit list of decisions (for now, a page saying it is on its way)."""
    return render(request, "approvals/audit.html")
