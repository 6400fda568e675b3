"""Approve, modify and reject through the call page, and every refusal."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from approvals.models import (
    ApprovalPolicy,
    CallState,
    Decision,
    DecisionStatus,
    PendingCall,
    Refund,
)
from runs import services
from runs.models import Run, RunStatus
from tests.web.approvals_support import login, post_decision, request_refund

pytest_plugins = ["tests.web.approvals_fixtures"]
pytestmark = pytest.mark.django_db


@pytest.fixture
def call(console):
    call = request_refund("Hi, order #1042 arrived broken. Please refund the $250.00.")
    assert call is not None
    return call


def test_the_call_page_shows_the_proposal_and_the_conversation(client, reviewer, call):
    login(client, reviewer)

    page = client.get(reverse("approvals:call", kwargs={"pk": call.pk}))

    html = page.content.decode()
    assert page.status_code == 200
    assert "$250.00" in html
    assert "acct-1986" in html  # read_account's result, shown inline
    assert "Customer request" in html
    assert "order #1042 arrived broken" in html
    assert "≥ 100 needs approval; two approvers above 1,000" in html
    assert 'name="checkpoint_id" value="' + call.checkpoint_id in html


def test_approving_sends_the_refund_and_the_receipt_shows_the_outcome(
    client, reviewer, call
):
    login(client, reviewer)

    response = post_decision(client, call, "approve")

    assert response.status_code == 302
    decision = Decision.objects.get()
    assert decision.final and decision.actor == reviewer
    assert decision.status == DecisionStatus.DONE
    assert "Refund of $250.00 sent to acct-1986" in decision.outcome
    assert "model answered" in decision.outcome
    assert decision.run.status == RunStatus.FINISHED
    refund = Refund.objects.get()
    assert (refund.amount, refund.currency) == (Decimal("250.00"), "USD")
    call.refresh_from_db()
    assert call.state == CallState.DECIDED

    page = client.get(response["Location"])
    assert "Run resumed" in page.content.decode()
    assert "Refund of $250.00 sent" in page.content.decode()


def test_the_decision_is_recorded_in_the_checkpoint_with_the_actor(
    client, reviewer, call
):
    login(client, reviewer)
    post_decision(client, call, "approve")

    saver = services.get_saver()
    decided = saver.get_state(call.thread_id, call.checkpoint_id, values=False)

    assert decided.decisions[call.tool_call_id]["actor"] == reviewer.username
    assert decided.decisions[call.tool_call_id]["kind"] == "approve"


def test_modifying_the_amount_refunds_the_new_amount(client, reviewer, call):
    login(client, reviewer)

    response = post_decision(
        client, call, "modify", to="acct-1986", amount="245", currency="USD"
    )

    assert response.status_code == 302
    decision = Decision.objects.get()
    assert decision.kind == "modify"
    assert decision.modified_args["amount"] == 245.0
    assert decision.changed_args == [("amount", 250, 245.0)]
    assert Refund.objects.get().amount == Decimal("245.00")
    assert "Refund of $245.00 sent" in decision.outcome
    page = client.get(response["Location"]).content.decode()
    assert "<del>250</del> → <ins>245</ins>" in page


def test_a_modification_that_changes_nothing_is_recorded_as_an_approval(
    client, reviewer, call
):
    login(client, reviewer)

    post_decision(client, call, "modify", to="acct-1986", amount="250.00", currency="")

    assert Decision.objects.get().kind == "approve"


def test_an_invalid_modified_argument_is_refused_naming_the_field(
    client, reviewer, call
):
    login(client, reviewer)

    response = post_decision(
        client, call, "modify", to="acct-1986", amount="lots", currency="USD"
    )

    assert response.status_code == 400
    html = response.content.decode()
    assert "amount: " in html and "valid number" in html
    assert 'aria-invalid="true"' in html
    assert not Decision.objects.exists()
    assert PendingCall.objects.get(pk=call.pk).state == CallState.PENDING


def test_a_negative_modified_amount_is_refused(client, reviewer, call):
    login(client, reviewer)

    response = post_decision(
        client, call, "modify", to="acct-1986", amount="-5", currency="USD"
    )

    assert response.status_code == 400
    assert "amount: the amount must be above zero" in response.content.decode()


def test_a_missing_required_argument_is_refused_naming_the_field(
    client, reviewer, call
):
    login(client, reviewer)

    response = post_decision(client, call, "modify", to="", amount="245")

    assert response.status_code == 400
    assert "to: This field is required." in response.content.decode()


def test_rejecting_needs_a_reason(client, reviewer, call):
    login(client, reviewer)

    response = post_decision(client, call, "reject", reason="   ")

    assert response.status_code == 400
    assert "Say why you reject the call." in response.content.decode()
    assert not Decision.objects.exists()


def test_rejecting_with_a_reason_tells_the_model_and_pays_nothing(
    client, reviewer, call
):
    login(client, reviewer)

    post_decision(client, call, "reject", reason="Item was never returned")

    decision = Decision.objects.get()
    assert decision.status == DecisionStatus.DONE
    assert decision.reason == "Item was never returned"
    assert decision.outcome.startswith("call not made (rejected)")
    assert "model answered: Understood" in decision.outcome
    assert not Refund.objects.exists()


def test_a_decision_on_a_proposal_that_moved_on_is_refused_as_stale(
    client, reviewer, call
):
    # Someone adds a message through the library: the proposal is superseded.
    agent = services.get_agent("payments")
    agent.update_state(
        {"configurable": {"thread_id": call.thread_id}},
        {"messages": [{"role": "user", "content": "Sorry, make that $245."}]},
        actor="support-bot",
    )
    services.resume_run(call.thread_id, "payments", "support-bot", inline=True)
    login(client, reviewer)

    response = post_decision(client, call, "approve")

    assert response.status_code == 409
    html = response.content.decode()
    assert "This proposal is no longer current" in html
    current = PendingCall.objects.waiting().get(thread_id=call.thread_id)
    assert current.amount == Decimal("245.00")
    assert reverse("approvals:call", kwargs={"pk": current.pk}) in html
    assert not Decision.objects.exists()
    assert not Refund.objects.exists()


def test_a_stale_checkpoint_in_the_form_is_refused(client, reviewer, call):
    login(client, reviewer)

    response = post_decision(client, call, "approve", checkpoint_id="1ef-old")

    assert response.status_code == 409
    assert PendingCall.objects.get(pk=call.pk).state == CallState.PENDING


def test_a_call_already_decided_cannot_be_decided_again(
    client, reviewer, second_reviewer, call
):
    login(client, reviewer)
    post_decision(client, call, "approve")
    login(client, second_reviewer)

    response = post_decision(client, call, "reject", reason="too late")

    assert response.status_code == 409
    assert Decision.objects.count() == 1
    assert Run.objects.filter(input__isnull=True).count() == 1


def test_nobody_approves_a_run_they_started(client, reviewer, console):
    call = request_refund("Refund order #1068 for $300.", started_by=reviewer)
    login(client, reviewer)

    page = client.get(reverse("approvals:call", kwargs={"pk": call.pk}))
    response = post_decision(client, call, "approve")

    assert "You started this run" in page.content.decode()
    assert response.status_code == 403
    assert "You started this run" in response.content.decode()
    assert not Decision.objects.exists()


def test_an_approver_limit_caps_what_one_person_approves(
    client, low_limit_reviewer, call
):
    login(client, low_limit_reviewer)

    response = post_decision(client, call, "approve")

    assert response.status_code == 403
    assert "Your approval limit is 200.00" in response.content.decode()
    assert not Decision.objects.exists()


def test_within_the_limit_a_modified_amount_may_be_approved(
    client, low_limit_reviewer, call
):
    login(client, low_limit_reviewer)

    response = post_decision(
        client, call, "modify", to="acct-1986", amount="150", currency="USD"
    )

    assert response.status_code == 302
    assert Refund.objects.get().amount == Decimal("150.00")


def test_a_developer_may_look_but_not_decide(client, developer, call):
    login(client, developer)

    page = client.get(reverse("approvals:call", kwargs={"pk": call.pk}))
    response = post_decision(client, call, "approve")

    assert "You may look but not decide" in page.content.decode()
    assert response.status_code == 403
    assert not Decision.objects.exists()


def test_an_outsider_sees_nothing(client, outsider, call):
    login(client, outsider)

    assert (
        client.get(reverse("approvals:call", kwargs={"pk": call.pk})).status_code == 403
    )
    assert post_decision(client, call, "approve").status_code == 403


def test_above_four_eyes_two_different_people_must_approve(
    client, reviewer, second_reviewer, console
):
    call = request_refund("Order #1109: the battery is faulty. Refund $2,350.")
    login(client, reviewer)

    first = post_decision(client, call, "approve")

    assert first.status_code == 302
    awaiting = Decision.objects.get()
    assert awaiting.status == DecisionStatus.AWAITING and not awaiting.final
    assert PendingCall.objects.get(pk=call.pk).state == CallState.PENDING
    assert not Refund.objects.exists()
    again = post_decision(client, call, "approve")
    assert again.status_code == 403
    assert "a second, different person" in again.content.decode()

    login(client, second_reviewer)
    second = post_decision(client, call, "approve")

    assert second.status_code == 302
    assert Refund.objects.get().amount == Decimal("2350.00")
    decisions = Decision.objects.order_by("pk")
    assert [d.status for d in decisions] == [DecisionStatus.DONE] * 2
    assert [d.final for d in decisions] == [False, True]
    recorded = services.get_saver().get_state(
        call.thread_id, call.checkpoint_id, values=False
    )
    actor = recorded.decisions[call.tool_call_id]["actor"]
    assert actor == f"{reviewer.username}+{second_reviewer.username}"


def test_the_second_approver_confirms_the_first_approvers_modification(
    client, reviewer, second_reviewer, console
):
    call = request_refund("Order #1109: the battery is faulty. Refund $2,350.")
    login(client, reviewer)
    post_decision(client, call, "modify", to="acct-1c4e", amount="2000", currency="USD")
    login(client, second_reviewer)

    post_decision(client, call, "approve")

    assert Refund.objects.get().amount == Decimal("2000.00")


def test_one_rejection_overrules_a_first_approval(
    client, reviewer, second_reviewer, console
):
    call = request_refund("Order #1109: the battery is faulty. Refund $2,350.")
    login(client, reviewer)
    post_decision(client, call, "approve")
    login(client, second_reviewer)

    post_decision(client, call, "reject", reason="Battery was damaged by the user")

    first, rejection = Decision.objects.order_by("pk")
    assert first.status == DecisionStatus.OVERRULED
    assert rejection.status == DecisionStatus.DONE
    assert not Refund.objects.exists()


def test_the_receipt_partial_answers_a_fragment(client, reviewer, call):
    login(client, reviewer)
    post_decision(client, call, "approve")
    decision = Decision.objects.get()

    response = client.get(
        reverse("approvals:receipt", kwargs={"pk": decision.pk}),
        headers={"X-Partial": "1"},
    )

    assert response["X-Partial-Response"] == "1"
    html = response.content.decode()
    assert html.lstrip().startswith("<article")
    assert 'data-final="1"' in html
    assert "Refund of $250.00 sent" in html


def test_a_decision_waits_for_the_run_when_the_runner_is_a_pool(
    client, reviewer, call, settings, django_capture_on_commit_callbacks
):
    settings.AGENTMATIC_RUNNER = "celery"  # queued, not executed, in this test
    login(client, reviewer)

    with django_capture_on_commit_callbacks(execute=False):
        post_decision(client, call, "approve")

    decision = Decision.objects.get()
    assert decision.status == DecisionStatus.RECORDED
    assert decision.run.status == RunStatus.QUEUED
    page = client.get(reverse("approvals:call", kwargs={"pk": call.pk}))
    assert "Queued; the run resumes in a moment." in page.content.decode()


def test_a_policy_without_four_eyes_needs_one_approver(client, reviewer, console):
    ApprovalPolicy.objects.filter(tool="transfer_funds").update(four_eyes_above=None)
    call = request_refund("Order #1109: the battery is faulty. Refund $2,350.")
    login(client, reviewer)

    post_decision(client, call, "approve")

    assert Refund.objects.get().amount == Decimal("2350.00")


def test_a_call_being_decided_right_now_is_refused(client, reviewer, call):
    PendingCall.objects.filter(pk=call.pk).update(
        state=CallState.DECIDING, claimed_at=timezone.now()
    )
    login(client, reviewer)

    response = post_decision(client, call, "approve")

    assert response.status_code == 409
    assert "Someone else is deciding" in response.content.decode()


def test_a_claim_left_by_a_vanished_decider_is_given_back(client, reviewer, call):
    PendingCall.objects.filter(pk=call.pk).update(
        state=CallState.DECIDING, claimed_at=timezone.now() - timedelta(minutes=5)
    )
    login(client, reviewer)

    response = post_decision(client, call, "approve")

    assert response.status_code == 302
    assert Refund.objects.count() == 1
