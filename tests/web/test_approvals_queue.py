"""The approval queue: what each row shows, filters, pages, presence, summary."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from approvals.models import CallState, CallViewer, PendingCall
from tests.web.approvals_support import login, post_decision, request_refund

pytest_plugins = ["tests.web.approvals_fixtures"]
pytestmark = pytest.mark.django_db

QUEUE = reverse("approvals:queue")


def add_calls(count, *, start=None, prefix="bulk", **fields):
    """Index ``count`` waiting calls directly, one minute apart, oldest first."""
    start = start or timezone.now() - timedelta(hours=5)
    rows = [
        PendingCall(
            thread_id=f"{prefix}-{n:05d}",
            checkpoint_id=f"cp-{n}",
            tool_call_id=f"call-{n}",
            tool=fields.get("tool", "transfer_funds"),
            agent=fields.get("agent", "payments"),
            args={"to": "acct-0001", "amount": 100 + n, "currency": "EUR"},
            amount=Decimal(100 + n),
            currency="EUR",
            started_by="demo-feed",
            waiting_since=start + timedelta(minutes=n),
            state=fields.get("state", CallState.PENDING),
        )
        for n in range(count)
    ]
    return PendingCall.objects.bulk_create(rows)


def rows_of(response):
    return [row["call"].thread_id for row in response.context["rows"]]


def test_it_lists_each_waiting_call_with_what_an_operator_needs(
    client, reviewer, console
):
    request_refund("Order #2036: Rückerstattung 3.200 €.", thread_id="refund-de")
    login(client, reviewer)

    page = client.get(QUEUE)

    html = page.content.decode()
    assert page.status_code == 200
    assert "€3,200.00" in html
    assert "transfer_funds" in html and "acct-597a" in html
    assert "payments" in html and "refund-de" in html and "demo-feed" in html
    assert "≥ 100 needs approval; two approvers above 1,000" in html
    assert "<time datetime=" in html
    assert 'data-live="/ws/approvals/"' in html


def test_it_sorts_the_oldest_wait_first(client, reviewer, db):
    add_calls(3)
    login(client, reviewer)

    assert rows_of(client.get(QUEUE)) == ["bulk-00000", "bulk-00001", "bulk-00002"]
    newest = client.get(QUEUE, {"sort": "newest"})
    assert rows_of(newest) == ["bulk-00002", "bulk-00001", "bulk-00000"]


def test_it_pages_on_the_server_with_a_constant_number_of_queries(
    client, reviewer, db, django_assert_max_num_queries
):
    add_calls(120)
    login(client, reviewer)

    with django_assert_max_num_queries(20):
        first = client.get(QUEUE)
    second = client.get(QUEUE, {"page": 3})

    assert len(first.context["rows"]) == 50
    assert rows_of(second)[0] == "bulk-00100"
    assert "Page 1 of 3" in first.content.decode()


def test_it_filters_by_tool_agent_and_amount(client, reviewer, db):
    add_calls(5)
    add_calls(2, tool="close_account", agent="support", prefix="support")
    login(client, reviewer)

    by_tool = client.get(QUEUE, {"tool": "close_account"})
    by_agent = client.get(QUEUE, {"agent": "payments"})
    by_amount = client.get(QUEUE, {"amount_min": "101", "amount_max": "103"})

    assert len(by_tool.context["rows"]) == 2
    assert len(by_agent.context["rows"]) == 5
    amounts = [row["call"].amount for row in by_amount.context["rows"]]
    assert sorted(amounts) == [101, 101, 102, 103]


def test_bad_filter_values_are_ignored_not_an_error(client, reviewer, db):
    add_calls(2)
    login(client, reviewer)

    response = client.get(QUEUE, {"amount_min": "lots", "state": "weird"})

    assert response.status_code == 200
    assert len(response.context["rows"]) == 2


def test_it_filters_by_state_decided_stale_and_mine(
    client, reviewer, second_reviewer, console
):
    mine = request_refund("Refund order #1042 for $250.", thread_id="mine")
    theirs = request_refund("Refund order #1068 for $300.", thread_id="theirs")
    request_refund("Refund order #1074 for $400.", thread_id="open")
    add_calls(1, state=CallState.STALE)
    login(client, reviewer)
    post_decision(client, mine, "approve")
    login(client, second_reviewer)
    post_decision(client, theirs, "reject", reason="duplicate")
    login(client, reviewer)

    assert rows_of(client.get(QUEUE)) == ["open"]
    assert sorted(rows_of(client.get(QUEUE, {"state": "decided"}))) == [
        "mine",
        "theirs",
    ]
    assert rows_of(client.get(QUEUE, {"state": "mine"})) == ["mine"]
    assert rows_of(client.get(QUEUE, {"state": "stale"})) == ["bulk-00000"]
    decided = client.get(QUEUE, {"state": "decided"}).content.decode()
    assert "Rejected by otto-operator" in decided and "✗" in decided


def test_the_header_strip_counts_waits_and_the_median_time_to_decision(
    client, reviewer, db
):
    now = timezone.now()
    add_calls(3, start=now - timedelta(minutes=30))
    decided = add_calls(2, state=CallState.PENDING, prefix="done")
    for call, minutes in zip(decided, (4, 8), strict=True):
        call.waiting_since = now - timedelta(minutes=minutes)
        call.save()
    PendingCall.objects.filter(thread_id__startswith="done").mark_decided()
    login(client, reviewer)

    page = client.get(QUEUE)

    stats = page.context["stats"]
    assert stats.waiting == 3
    assert stats.decided_today == 2
    assert 6 * 60 <= stats.median_seconds < 7 * 60
    html = page.content.decode()
    assert "6 min" in html and "2 decided today" in html
    assert 'role="img" aria-label="Decisions per hour today:' in html


def test_it_shows_who_else_is_looking_now(client, reviewer, second_reviewer, db):
    fresh, old = add_calls(2)
    CallViewer.objects.create(call=fresh, user=second_reviewer, seen_at=timezone.now())
    CallViewer.objects.create(
        call=old, user=second_reviewer, seen_at=timezone.now() - timedelta(minutes=5)
    )
    CallViewer.objects.create(call=old, user=reviewer, seen_at=timezone.now())
    login(client, reviewer)

    rows = client.get(QUEUE).context["rows"]

    assert rows[0]["viewers"] == ["otto-operator"]
    assert rows[1]["viewers"] == []  # stale presence, and not oneself


def test_opening_a_call_marks_the_viewer(client, reviewer, console):
    call = request_refund("Refund order #1042 for $250.")
    login(client, reviewer)

    client.get(reverse("approvals:call", kwargs={"pk": call.pk}))
    heartbeat = client.post(reverse("approvals:presence", kwargs={"pk": call.pk}))

    assert heartbeat.status_code == 204
    assert CallViewer.objects.get().user == reviewer


def test_a_partial_request_gets_the_results_fragment(client, reviewer, db):
    add_calls(1)
    login(client, reviewer)

    response = client.get(QUEUE, {"tool": "transfer_funds"}, headers={"X-Partial": "1"})

    assert response["X-Partial-Response"] == "1"
    assert "<html" not in response.content.decode()
    assert "bulk-00000" in response.content.decode()


def test_an_empty_queue_says_so(client, reviewer, db):
    login(client, reviewer)

    html = client.get(QUEUE).content.decode()

    assert "Nothing waits for a decision" in html


def test_filters_that_match_nothing_say_so(client, reviewer, db):
    add_calls(1)
    login(client, reviewer)

    html = client.get(QUEUE, {"amount_min": "9999"}).content.decode()

    assert "No calls match these filters" in html


def test_developers_see_the_queue_and_outsiders_do_not(client, developer, outsider, db):
    assert login(client, developer).get(QUEUE).status_code == 200
    assert login(client, outsider).get(QUEUE).status_code == 403


def test_a_thread_link_opens_its_waiting_call(client, reviewer, console):
    call = request_refund("Refund order #1042 for $250.", thread_id="refund-req-001")
    login(client, reviewer)

    found = client.get(
        reverse("approvals:thread_call", kwargs={"thread_id": "refund-req-001"})
    )
    missing = client.get(
        reverse("approvals:thread_call", kwargs={"thread_id": "no-such-thread"})
    )

    assert found["Location"] == reverse("approvals:call", kwargs={"pk": call.pk})
    assert missing.status_code == 404
    assert "Nothing waits for a decision on this thread" in missing.content.decode()


def test_the_call_page_corrects_a_row_the_thread_has_left(client, reviewer, console):
    call = request_refund("Refund order #1042 for $250.")
    from runs import services

    services.get_agent("payments").update_state(
        {"configurable": {"thread_id": call.thread_id}},
        {"messages": [{"role": "user", "content": "Cancel that, please."}]},
        actor="customer",
    )
    login(client, reviewer)

    page = client.get(reverse("approvals:call", kwargs={"pk": call.pk}))

    assert "This proposal is no longer current" in page.content.decode()
    assert PendingCall.objects.get(pk=call.pk).state == CallState.STALE


def test_a_first_of_two_approvals_shows_in_its_row(
    client, reviewer, second_reviewer, console
):
    request_refund("Order #1109: the battery is faulty. Refund $2,350.", "big")
    call = PendingCall.objects.get(thread_id="big")
    login(client, reviewer)
    post_decision(client, call, "approve")

    html = login(client, second_reviewer).get(QUEUE).content.decode()

    assert "1 of 2 approvals (olga-operator)" in html


def test_index_pending_lists_threads_paused_by_another_writer(console):
    from io import StringIO

    from django.core.management import call_command

    from runs.models import ThreadRecord

    request_refund("Refund order #1042 for $250.", thread_id="elsewhere")
    PendingCall.objects.all().delete()  # as if another process paused it
    assert ThreadRecord.objects.get(thread_id="elsewhere").status == "waiting"
    out = StringIO()

    call_command("index_pending", stdout=out)

    assert "Indexed 1 waiting thread(s)" in out.getvalue()
    assert PendingCall.objects.waiting().get().thread_id == "elsewhere"
