"""feed_demo fills the queue from the demo refund requests; runconsole uses it."""

import json
from collections import Counter
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from agentmatic.messages import AIMessage
from approvals.demo import DATA_FILE
from approvals.models import ApprovalPolicy, PendingCall, Refund
from runs import services
from runs.models import Run, RunStatus, ThreadRecord

pytest_plugins = ["tests.web.approvals_fixtures"]
pytestmark = pytest.mark.django_db

REQUESTS = json.loads(DATA_FILE.read_text(encoding="utf-8"))
BY_THREAD = {f"refund-{r['id']}": r for r in REQUESTS}


def feed(*args):
    out = StringIO()
    call_command("feed_demo", *args, stdout=out)
    return out.getvalue()


def last_words(thread_id):
    state = services.get_saver().get_state(thread_id)
    replies = [m for m in state.messages if isinstance(m, AIMessage) and m.text]
    return replies[-1].text if replies else ""


def test_it_feeds_every_request_as_its_own_thread_and_fills_the_queue(console):
    output = feed("--sync")

    assert f"Fed {len(REQUESTS)} refund request(s)" in output
    assert len(REQUESTS) >= 50
    assert ThreadRecord.objects.count() == len(REQUESTS)
    assert set(ThreadRecord.objects.values_list("started_by", flat=True)) == {
        "demo-feed"
    }
    waiting = PendingCall.objects.waiting()
    assert waiting.count() >= 25
    assert {"USD", "EUR", "GBP", "JPY", "CHF"} <= set(
        waiting.values_list("currency", flat=True)
    )
    amounts = set(waiting.values_list("amount", flat=True))
    assert min(amounts) == 100 and max(amounts) >= 4800
    statuses = Counter(Run.objects.values_list("status", flat=True))
    assert set(statuses) == {RunStatus.WAITING, RunStatus.FINISHED}


def test_small_refunds_go_through_without_approval(console):
    feed("--sync")

    small = [
        t
        for t, r in BY_THREAD.items()
        if r["expected_amount"] and r["expected_amount"] < 100
    ]
    assert small
    for thread_id in small:
        assert not PendingCall.objects.filter(thread_id=thread_id).exists(), thread_id
    assert Refund.objects.count() >= len(small)


AMBIGUOUS = [t for t, r in BY_THREAD.items() if r["expected_amount"] is None]
# "two amounts ($40 or $180)", "two instalments of $75": several sums named.
SEVERAL_AMOUNTS = [
    t
    for t in AMBIGUOUS
    if any(w in BY_THREAD[t]["note"].lower() for w in ("two amounts", "instalments"))
]


def test_ambiguous_requests_naming_no_amount_end_with_a_question(console):
    feed("--sync")

    no_amount = [t for t in AMBIGUOUS if t not in SEVERAL_AMOUNTS]
    assert len(no_amount) >= 8
    for thread_id in no_amount:
        assert not PendingCall.objects.filter(thread_id=thread_id).exists(), thread_id
        assert last_words(thread_id).endswith("?"), thread_id


def test_ambiguous_requests_naming_several_amounts_end_with_a_question(console):
    feed("--sync")

    assert SEVERAL_AMOUNTS
    for thread_id in SEVERAL_AMOUNTS:
        assert not PendingCall.objects.filter(thread_id=thread_id).exists(), thread_id
        assert last_words(thread_id).endswith("?"), thread_id


def test_running_it_again_feeds_nothing_twice(console):
    feed("--sync", "--limit", "3")

    output = feed("--sync", "--limit", "5")

    assert "Fed 2 refund request(s)" in output and "3 already fed" in output
    assert ThreadRecord.objects.count() == 5
    assert Run.objects.count() == 5


def test_it_gives_the_demo_agent_its_policy_first(console):
    ApprovalPolicy.objects.all().delete()

    feed("--sync", "--limit", "2")

    policy = ApprovalPolicy.objects.get()
    assert policy.describe() == "≥ 100 needs approval; two approvers above 1,000"
    assert PendingCall.objects.filter(thread_id="refund-req-001").exists()
    assert not PendingCall.objects.filter(thread_id="refund-req-002").exists()


def test_limit_zero_feeds_nothing(console):
    assert "Fed 0 refund request(s)" in feed("--limit", "0")


def test_a_negative_limit_is_refused(console):
    with pytest.raises(CommandError, match="--limit"):
        feed("--limit", "-1")


def test_a_malformed_file_is_refused(console, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a list"}')

    with pytest.raises(CommandError, match="JSON list"):
        feed("--file", str(bad))


def test_without_sync_the_runs_wait_for_the_runner(
    console, settings, django_capture_on_commit_callbacks
):
    settings.AGENTMATIC_RUNNER = "celery"

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        feed("--limit", "2")

    assert len(callbacks) == 2
    assert set(Run.objects.values_list("status", flat=True)) == {RunStatus.QUEUED}


def test_runconsole_prepares_everything_and_says_how_to_log_in(
    console, data_dir, monkeypatch
):
    monkeypatch.delenv("AGENTMATIC_DEMO_PASSWORD", raising=False)
    out = StringIO()

    call_command("runconsole", "--no-serve", stdout=out)
    call_command("runconsole", "--no-serve", stdout=StringIO())

    text = out.getvalue()
    assert "First start: feeding the demo refund requests" in text
    assert "Console: http://127.0.0.1:8000/" in text
    assert str(data_dir / "demo_passwords.txt") in text
    assert "operator, operator2" in text and "developer" in text and "admin" in text
    assert ThreadRecord.objects.count() == len(REQUESTS)  # fed once, not twice
