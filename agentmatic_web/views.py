"""Project-level views: the home page that sends each role to its screen."""

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_GET


@require_GET
@login_required
def home(request: HttpRequest) -> HttpResponse:
    """Redirect to the screen of the user's role.

    Operators land on the approval queue, developers on the threads list,
    administrators without either role on the Django admin.
    """
    user = request.user
    if user.has_perm("approvals.decide"):
        return redirect("approvals:queue")
    if user.has_perm("runs.view_threadrecord"):
        return redirect("runs:threads")
    if user.is_staff:
        return redirect("admin:index")
    raise PermissionDenied(
        "Your account has no role yet. Ask an administrator to add you to "
        "the operators, developers or admins group."
    )
