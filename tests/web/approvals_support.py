"""Helpers for the approvals tests: start a refund run, post a decision.

The fixtures (a console, reviewers) are in ``tests.web.approvals_fixtures``;
a module loads them with ``pytest_plugins = ["tests.web.approvals_fixtures"]``.
Runs execute inline (in the test's thread), so a decision's whole journey —
recorded, resumed, done — happens before the view returns.
"""

from __future__ import annotations

from pathlib import Path

from django.urls import reverse

from agentmatic_web.env import CheckpointStore
from approvals.models import PendingCall
from runs import services

DEMO_AGENTS = {"payments": "approvals.demo:build_payments_agent"}
PASSWORD = "a-long-test-password"


def use_checkpoints(settings, path: Path, *, runner: str = "inline") -> None:
    """Point the console at a SQLite checkpoint file and the demo agent."""
    settings.AGENTMATIC_CHECKPOINTS = f"sqlite:///{path}"
    settings.AGENTMATIC_CHECKPOINT_STORE = CheckpointStore("sqlite", str(path))
    settings.AGENTMATIC_AGENTS = DEMO_AGENTS
    settings.AGENTMATIC_RUNNER = runner
    services.reset_caches()


def request_refund(
    text: str, thread_id: str = "case-42", started_by: str = "demo-feed"
) -> PendingCall | None:
    """Start a payments run on a new thread; return the call it waits on."""
    services.start_run(
        "payments",
        thread_id,
        {"messages": [{"role": "user", "content": text}]},
        started_by,
        inline=True,
    )
    return PendingCall.objects.waiting().filter(thread_id=thread_id).first()


def login(client, user):
    client.force_login(user)
    return client


def post_decision(client, call: PendingCall, kind: str, **fields):
    """Post a decision from the call page's forms, as a browser would."""
    data = {
        "decision": kind,
        "checkpoint_id": call.checkpoint_id,
        "tool_call_id": call.tool_call_id,
        **fields,
    }
    return client.post(reverse("approvals:decide", kwargs={"pk": call.pk}), data)
