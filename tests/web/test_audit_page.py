"""The audit page lists every decision; its CSV export is safe in a spreadsheet."""

import csv
import io
from decimal import Decimal

import pytest
from django.urls import reverse

from approvals.models import Decision, DecisionStatus
from approvals.views import safe_cell
from tests.web.approvals_support import login, post_decision, request_refund

pytest_plugins = ["tests.web.approvals_fixtures"]
pytestmark = pytest.mark.django_db

AUDIT = reverse("approvals:audit")
CSV_URL = reverse("approvals:audit_csv")


@pytest.fixture
def decided(client, reviewer, second_reviewer, console):
    """Three decisions: an approval, a modification and a rejection."""
    approved = request_refund("Refund order #1042 for $250.", thread_id="t-approve")
    modified = request_refund("Refund order #1074 for £145.", thread_id="t-modify")
    rejected = request_refund("Refund order #1088 for €320.", thread_id="t-reject")
    login(client, reviewer)
    post_decision(client, approved, "approve")
    post_decision(
        client, modified, "modify", to="acct-d234", amount="140", currency="GBP"
    )
    login(client, second_reviewer)
    post_decision(
        client, rejected, "reject", reason='=HYPERLINK("http://x", "y"), "quoted"'
    )
    return client


def read_csv(response):
    body = b"".join(response.streaming_content).decode("utf-8")
    return list(csv.DictReader(io.StringIO(body)))


def test_it_lists_every_decision_with_who_what_why_and_outcome(decided):
    page = decided.get(AUDIT)

    html = page.content.decode()
    assert page.status_code == 200
    assert html.count("data-nav-item") == 3
    for text in (
        "olga-operator",
        "otto-operator",
        "Approve",
        "Modify",
        "Reject",
        "$250.00",
        "£140.00",
        "Refund of $250.00 sent to acct-1986",
        "=HYPERLINK",
    ):
        assert text in html, text
    assert "145 → 140" in html


def test_it_filters_by_person_decision_and_thread(decided):
    by_actor = decided.get(AUDIT, {"actor": "otto-operator"})
    by_kind = decided.get(AUDIT, {"kind": "modify"})
    by_thread = decided.get(AUDIT, {"thread": "t-app"})
    by_status = decided.get(AUDIT, {"status": DecisionStatus.DONE})

    assert [d.kind for d in by_actor.context["page"]] == ["reject"]
    assert [d.thread_id for d in by_kind.context["page"]] == ["t-modify"]
    assert [d.thread_id for d in by_thread.context["page"]] == ["t-approve"]
    assert len(by_status.context["page"].object_list) == 3


def test_the_csv_export_streams_every_filtered_decision(decided):
    response = decided.get(CSV_URL, {"actor": "olga-operator"})

    assert response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert "attachment;" in response["Content-Disposition"]
    rows = read_csv(response)
    assert [r["decision"] for r in rows] == ["modify", "approve"]
    modify = rows[0]
    assert (modify["amount"], modify["currency"]) == ("140.00", "GBP")
    assert '"amount": 140.0' in modify["modified_args"]
    assert modify["status"] == "done"
    assert modify["run_id"]


def test_the_csv_export_escapes_quotes_and_guards_against_formulas(decided):
    rows = read_csv(decided.get(CSV_URL, {"kind": "reject"}))

    assert rows[0]["reason"] == '\'=HYPERLINK("http://x", "y"), "quoted"'


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ("=1+1", "'=1+1"),
        ("+cmd", "'+cmd"),
        ("-2", "'-2"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("plain", "plain"),
        (None, ""),
        (Decimal("12.50"), "12.50"),
    ],
)
def test_a_cell_a_spreadsheet_would_run_is_prefixed(value, cell):
    assert safe_cell(value) == cell


def test_an_empty_audit_says_so(client, reviewer, db):
    html = login(client, reviewer).get(AUDIT).content.decode()

    assert "No decisions yet" in html


def test_the_csv_of_nothing_has_just_the_header(client, reviewer, db):
    rows = read_csv(login(client, reviewer).get(CSV_URL))

    assert rows == []


def test_outsiders_see_no_audit(client, outsider, db):
    login(client, outsider)

    assert client.get(AUDIT).status_code == 403
    assert client.get(CSV_URL).status_code == 403


def test_the_audit_pages_on_the_server(client, reviewer, db):
    decisions = [
        Decision(
            thread_id=f"t-{n}",
            checkpoint_id="cp",
            tool_call_id="c",
            tool="transfer_funds",
            kind="approve",
            actor=reviewer,
            args={"amount": n},
        )
        for n in range(60)
    ]
    Decision.objects.bulk_create(decisions)
    login(client, reviewer)

    first = client.get(AUDIT)
    second = client.get(AUDIT, {"page": 2})

    assert len(first.context["page"].object_list) == 50
    assert len(second.context["page"].object_list) == 10
