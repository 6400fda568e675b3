"""A console process for tests that need real processes and a shared database.

``python -m tests.web.approvals_process COMMAND [ARGS]`` with the console's
settings taken from the environment (DATABASE_URL, AGENTMATIC_CHECKPOINTS,
AGENTMATIC_RUNNER, CELERY_BROKER_URL…). Each command prints one JSON line.

  setup                      migrate; create two reviewers who may approve
  request THREAD TEXT        start a payments run on a new thread
  race THREAD KIND KIND      two reviewers decide the waiting call at once,
                             each from its own thread, released by a barrier
  approve THREAD USERNAME    one reviewer approves the waiting call

``AGENTMATIC_TEST_INLINE=1`` runs runs in this process; otherwise they go
to the configured runner. ``AGENTMATIC_TEST_CELERY_QUEUE`` names the Celery
queue, so a test's worker hears only its own tasks.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from decimal import Decimal
from typing import Any

REVIEWERS = ("rita-reviewer", "rob-reviewer")


def _setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "agentmatic_web.settings")
    import django

    django.setup()
    from django.conf import settings

    if os.environ.get("AGENTMATIC_TEST_INLINE") == "1":
        settings.AGENTMATIC_RUNNER = "inline"
    queue = os.environ.get("AGENTMATIC_TEST_CELERY_QUEUE")
    if queue:
        from agentmatic_web.celery import app

        app.conf.task_default_queue = queue


def setup() -> dict[str, Any]:
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command

    from approvals.models import ApproverLimit

    call_command("migrate", interactive=False, verbosity=0)
    operators = Group.objects.get(name="operators")
    for name in REVIEWERS:
        user, _ = User.objects.get_or_create(username=name)
        user.groups.add(operators)
        ApproverLimit.objects.get_or_create(
            user=user, defaults={"max_amount": Decimal("5000")}
        )
    return {"ok": True}


def request(thread_id: str, text: str) -> dict[str, Any]:
    from runs import services

    run = services.start_run(
        "payments",
        thread_id,
        {"messages": [{"role": "user", "content": text}]},
        "demo-feed",
    )
    run.refresh_from_db()
    return {"run": str(run.id), "status": run.status}


def race(thread_id: str, first_kind: str, second_kind: str) -> dict[str, Any]:
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client
    from django.urls import reverse

    from approvals.models import PendingCall

    call = PendingCall.objects.waiting().get(thread_id=thread_id)
    barrier = threading.Barrier(2)
    statuses: dict[str, int] = {}
    errors: list[str] = []

    def decide(username: str, kind: str) -> None:
        try:
            client = Client()
            client.force_login(User.objects.get(username=username))
            data = {
                "decision": kind,
                "checkpoint_id": call.checkpoint_id,
                "tool_call_id": call.tool_call_id,
                "reason": "not this one",
            }
            url = reverse("approvals:decide", kwargs={"pk": call.pk})
            barrier.wait(timeout=20)
            statuses[username] = client.post(url, data).status_code
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            connection.close()

    threads = [
        threading.Thread(target=decide, args=(name, kind))
        for name, kind in zip(REVIEWERS, (first_kind, second_kind), strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return {"statuses": statuses, "errors": errors, **_counts(thread_id)}


def approve(thread_id: str, username: str) -> dict[str, Any]:
    from django.contrib.auth.models import User

    from approvals import actions
    from approvals.models import PendingCall

    call = PendingCall.objects.waiting().get(thread_id=thread_id)
    decision = actions.decide(
        User.objects.get(username=username),
        call,
        "approve",
        checkpoint_id=call.checkpoint_id,
    )
    return {"decision": decision.pk, "status": decision.status}


def _counts(thread_id: str) -> dict[str, Any]:
    from approvals.models import Decision, PendingCall, Refund
    from runs.models import Run

    return {
        "decisions": Decision.objects.filter(thread_id=thread_id).count(),
        "final": Decision.objects.filter(thread_id=thread_id, final=True).count(),
        "final_kinds": list(
            Decision.objects.filter(thread_id=thread_id, final=True).values_list(
                "kind", flat=True
            )
        ),
        "resumes": Run.objects.filter(thread_id=thread_id, input__isnull=True).count(),
        "refunds": Refund.objects.filter(thread_id=thread_id).count(),
        "call_states": sorted(
            PendingCall.objects.filter(thread_id=thread_id).values_list(
                "state", flat=True
            )
        ),
    }


COMMANDS = {"setup": setup, "request": request, "race": race, "approve": approve}


def main(argv: list[str]) -> None:
    _setup_django()
    command, *args = argv
    print(json.dumps(COMMANDS[command](*args)))


if __name__ == "__main__":
    main(sys.argv[1:])
