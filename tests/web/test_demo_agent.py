"""The demo payments agent: its tools, its refunds, and a gate read from the admin."""

from decimal import Decimal

import pytest

from approvals import demo
from approvals.models import ApprovalPolicy, PendingCall, Refund
from runs import services
from runs.models import Run, RunStatus
from tests.web.approvals_support import request_refund

pytest_plugins = ["tests.web.approvals_fixtures"]
pytestmark = pytest.mark.django_db


def test_read_account_is_deterministic_and_synthetic():
    assert demo.read_account("#1042") == {"order": "#1042", "account": "acct-1986"}
    first = demo.read_account("77")
    assert first == demo.read_account("#77")
    assert first["account"].startswith("acct-") and len(first["account"]) == 9
    assert demo.read_account("78")["account"] != first["account"]


def test_read_account_needs_an_order_number():
    with pytest.raises(ValueError, match="order number"):
        demo.read_account(" # ")


def test_a_refund_is_recorded_once_per_idempotency_key():
    first = demo.transfer_funds("acct-1986", 250, "usd", idempotency_key="t:c1")
    retry = demo.transfer_funds("acct-1986", 250, "USD", idempotency_key="t:c1")

    assert first == retry == "Refund of $250.00 sent to acct-1986"
    refund = Refund.objects.get()
    assert (refund.amount, refund.currency, refund.thread_id) == (
        Decimal("250.00"),
        "USD",
        "t",
    )


def test_a_refund_keeps_the_currency_minor_units():
    message = demo.transfer_funds("acct-e02d", 12800.4, "JPY", idempotency_key="k")

    assert message == "Refund of ¥12,800 sent to acct-e02d"
    assert demo.transfer_funds("acct-1", 780, "CHF", idempotency_key="k2").startswith(
        "Refund of CHF 780.00"
    )


@pytest.mark.parametrize(
    ("to", "amount", "currency", "error"),
    [
        ("acct-1", 0, "USD", "above zero"),
        ("acct-1", -5, "USD", "above zero"),
        ("acct-1", 5, "dollars", "ISO 4217"),
        (" ", 5, "USD", "account"),
    ],
)
def test_a_malformed_refund_is_refused_and_not_recorded(to, amount, currency, error):
    with pytest.raises(ValueError, match=error):
        demo.transfer_funds(to, amount, currency, idempotency_key="k")

    assert not Refund.objects.exists()


def test_the_demo_policy_is_created_once_and_an_admins_edits_are_kept():
    first = demo.ensure_demo_policy()
    assert (first.threshold, first.four_eyes_above) == (Decimal(100), Decimal(1000))
    ApprovalPolicy.objects.filter(pk=first.pk).update(threshold=Decimal(250))

    again = demo.ensure_demo_policy()

    assert again.pk == first.pk and again.threshold == Decimal(250)
    assert ApprovalPolicy.objects.count() == 1


def test_the_gate_holds_at_and_above_the_threshold(console):
    assert request_refund("Refund order #1063 in full, $100.00.", "at") is not None
    assert request_refund("Refund order #1057, $86.50 please.", "below") is None

    below = Run.objects.get(thread_id="below")
    assert below.status == RunStatus.FINISHED
    assert Refund.objects.get().amount == Decimal("86.50")


def test_a_new_threshold_applies_without_a_restart(console):
    agent = services.get_agent("payments")
    assert request_refund("Refund order #1074, £145.", "before") is not None

    ApprovalPolicy.objects.filter(tool="transfer_funds").update(
        threshold=Decimal("500"), four_eyes_above=None
    )

    assert services.get_agent("payments") is agent  # the same built agent
    assert request_refund("Refund order #1075, £145.", "after") is None
    assert request_refund("Refund order #1076, £645.", "large") is not None


def test_without_an_active_policy_every_call_is_held(console):
    ApprovalPolicy.objects.update(active=False)

    call = request_refund("Refund order #1043, $12 please.", "tiny")

    assert call is not None
    assert not Refund.objects.exists()


def test_the_queue_row_names_the_gate_and_the_amount(console):
    call = request_refund("Bitte erstatten Sie 112,40 € für Bestellung #2044.", "de")

    assert call.amount == Decimal("112.40") and call.currency == "EUR"
    # The pause keeps the policy's wording as it stood when it held the call.
    assert call.reason == "≥ 100 needs approval; two approvers above 1,000"
    assert call.started_by == "demo-feed"
    assert PendingCall.objects.count() == 1


def test_an_approved_refund_retried_pays_once(console):
    call = request_refund("Refund order #1042 for $250.", "retry")
    agent = services.get_agent("payments")
    config = {"configurable": {"thread_id": "retry"}}
    agent.record_decision(config, "approve", "reviewer", call.tool_call_id)

    # The same call runs twice, as after a crash between paying and saving.
    key = f"retry:{call.tool_call_id}"
    demo.transfer_funds("acct-1986", 250, "USD", idempotency_key=key)
    services.resume_run(
        "retry", "payments", "reviewer", call.checkpoint_id, inline=True
    )

    assert Refund.objects.count() == 1
    assert Refund.objects.get().idempotency_key == key


def test_a_policy_change_does_not_rewrite_why_a_call_waits(console):
    from approvals.views import policy_text, stopped_by

    call = request_refund("Refund order #1042 for $250.", "held")
    policy = ApprovalPolicy.objects.for_call("transfer_funds", "payments")
    policy.threshold = Decimal("150")
    policy.save()

    shown = stopped_by(call, policy_text(call.tool, call.agent))
    assert shown == "≥ 100 needs approval; two approvers above 1,000"
    assert policy_text(call.tool, call.agent).startswith("≥ 150")
