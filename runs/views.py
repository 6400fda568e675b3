"""Pages of the runs app. The threads list and thread pages are still to come."""

from django.contrib.auth.decorators import permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET


@require_GET
@permission_required("runs.view_threadrecord", raise_exception=True)
def threads(request: HttpRequest) -> HttpResponse:
    """Show the threads list (for now, a page saying it is on its way)."""
    return render(request, "runs/threads.html")
