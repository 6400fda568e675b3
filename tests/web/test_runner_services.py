"""The runner's spine: runs are recorded, claimed once, and resumed safely."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.dispatch import receiver
from django.utils import timezone

from approvals.models import Refund
from runs import services
from runs.models import Run, RunStatus, ThreadRecord
from tests.web.approvals_support import request_refund

pytest_plugins = ["tests.web.approvals_fixtures"]
pytestmark = pytest.mark.django_db


def test_a_started_run_is_recorded_then_executed_to_its_pause(console):
    request_refund("Refund order #1042 for $250.", thread_id="case-1")

    run = Run.objects.get(thread_id="case-1")
    assert run.status == RunStatus.WAITING
    assert run.started_by_label == "demo-feed"
    assert run.started_at and run.finished_at
    record = ThreadRecord.objects.get(thread_id="case-1")
    assert (record.status, record.agent, record.started_by) == (
        "waiting",
        "payments",
        "demo-feed",
    )
    head = console.get_state("case-1", values=False)
    assert head.checkpoint_id == run.checkpoint_id
    assert head.metadata["run_id"] == str(run.id)


def test_a_run_is_executed_once_even_when_submitted_twice(console):
    request_refund("Refund order #1042 for $250.", thread_id="case-1")
    run = Run.objects.get(thread_id="case-1")
    checkpoints = len(console.get_state_history("case-1", values=False))

    assert services.execute_run(str(run.id)) == RunStatus.WAITING

    assert len(console.get_state_history("case-1", values=False)) == checkpoints


def test_listeners_hear_each_status_change(console):
    heard = []

    @receiver(services.run_changed, sender=Run, weak=False)
    def listen(sender, run, state, **kwargs):
        heard.append((run.status, state is not None))

    try:
        request_refund("Refund order #1043 for $12.", thread_id="case-small")
    finally:
        services.run_changed.disconnect(listen, sender=Run)

    assert heard == [("running", False), ("finished", True)]


def test_a_resume_after_the_thread_moved_on_runs_nothing(console):
    request_refund("Refund order #1042 for $250.", thread_id="case-1")
    agent = services.get_agent("payments")
    waiting = agent.get_state({"configurable": {"thread_id": "case-1"}})
    agent.record_decision(waiting.config, "approve", "someone")
    agent.update_state(
        {"configurable": {"thread_id": "case-1"}},
        {"messages": [{"role": "user", "content": "Never mind, cancel it."}]},
        actor="customer",
    )
    before = len(console.get_state_history("case-1", values=False))

    run = services.resume_run(
        "case-1", "payments", "someone", waiting.checkpoint_id, inline=True
    )

    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert "moved on" in run.error and "nothing was run" in run.error
    assert len(console.get_state_history("case-1", values=False)) == before
    assert not Refund.objects.exists()


def test_a_run_of_an_unknown_agent_fails_with_the_reason(console):
    run = services.start_run(
        "nobody", "case-x", {"messages": ["hello"]}, "tester", inline=True
    )

    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert "no agent named 'nobody'" in run.error
    assert ThreadRecord.objects.get(thread_id="case-x").status == RunStatus.FAILED


def test_a_pool_runner_waits_for_the_commit(
    console, settings, django_capture_on_commit_callbacks
):
    settings.AGENTMATIC_RUNNER = "celery"
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        run = services.start_run(
            "payments", "case-q", {"messages": ["Refund #1 for $5"]}, "tester"
        )

    assert len(callbacks) == 1
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED


def crash_in_refunds(monkeypatch):
    """Make the next refund kill the run as a dying worker would."""

    def die(*args, **kwargs):
        raise KeyboardInterrupt("the worker died")

    monkeypatch.setattr(Refund.objects, "get_or_create", die)


def left_running(run):
    """Age a run its worker left "running", so another worker may take it."""
    Run.objects.filter(pk=run.pk).update(
        status=RunStatus.RUNNING, started_at=timezone.now() - timedelta(hours=1)
    )


def test_a_run_left_by_a_dead_worker_continues_without_resending_its_input(
    console, monkeypatch
):
    run = Run.objects.create(
        thread_id="case-crash",
        agent="payments",
        input={"messages": [{"role": "user", "content": "Refund order #1057, $86.50"}]},
        started_by_label="demo-feed",
    )
    crash_in_refunds(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        services.execute_run(str(run.id))
    monkeypatch.undo()
    assert not Refund.objects.exists()
    left_running(run)

    assert services.execute_run(str(run.id)) == RunStatus.FINISHED

    assert Refund.objects.get().amount == Decimal("86.50")
    state = console.get_state("case-crash")
    assert [m.type for m in state.messages].count("human") == 1


def test_a_run_left_waiting_for_approval_is_not_approved_by_the_takeover(console):
    request_refund("Refund order #1042 for $250.", thread_id="case-paused")
    run = Run.objects.get(thread_id="case-paused")
    left_running(run)

    assert services.execute_run(str(run.id)) == RunStatus.WAITING

    assert not Refund.objects.exists()


def test_a_recently_started_run_is_not_taken_over(console):
    run = Run.objects.create(
        thread_id="case-busy",
        agent="payments",
        input={"messages": ["hello"]},
        status=RunStatus.RUNNING,
        started_at=timezone.now(),
    )

    assert services.execute_run(str(run.id)) == RunStatus.RUNNING
    assert console.get_state("case-busy") is None
