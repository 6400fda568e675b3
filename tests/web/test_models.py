"""Rules the console's tables enforce by themselves."""

from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction

from approvals.models import ApprovalPolicy, ApproverLimit, Decision
from checkpoints.models import LegalHold, RetentionPolicy
from runs.models import Run, RunStatus, ThreadRecord

pytestmark = pytest.mark.django_db

CALL = {"thread_id": "case-42", "checkpoint_id": "1ef-abc", "tool_call_id": "call_1"}


def decide(actor, kind="approve", **fields):
    values = {
        **CALL,
        "tool": "transfer_funds",
        "kind": kind,
        "actor": actor,
        "args": {"to": "acct-7f3a", "amount": 250},
        **fields,
    }
    return Decision.objects.create(**values)


def test_a_person_decides_on_a_call_only_once(operator):
    decide(operator)

    with pytest.raises(IntegrityError), transaction.atomic():
        decide(operator, kind="reject", reason="changed my mind")


def test_four_eyes_counts_distinct_approvers_of_one_call(make_user):
    first, second = make_user("first", "operators"), make_user("second", "operators")
    decide(first)
    decide(first, tool_call_id="call_2")  # another call does not count

    assert Decision.objects.for_call(**CALL).approver_count() == 1

    decide(second)

    assert Decision.objects.for_call(**CALL).approver_count() == 2


def test_stale_and_rejecting_decisions_do_not_count_as_approvals(make_user):
    decide(make_user("first", "operators"), status="stale")
    decide(make_user("second", "operators"), kind="reject", reason="wrong account")

    assert Decision.objects.for_call(**CALL).approver_count() == 0


def test_a_rejection_needs_a_reason(operator):
    with pytest.raises(IntegrityError), transaction.atomic():
        decide(operator, kind="reject", reason="")

    decision = Decision(
        **CALL, tool="t", kind="reject", actor=operator, args={}, reason="  "
    )
    with pytest.raises(ValidationError):
        decision.full_clean()


def test_a_modification_needs_the_new_arguments(operator):
    with pytest.raises(IntegrityError), transaction.atomic():
        decide(operator, kind="modify")

    decide(operator, kind="modify", modified_args={"to": "acct-7f3a", "amount": 245})


def test_a_person_with_decisions_cannot_be_deleted(operator):
    from django.db.models import ProtectedError

    decide(operator)

    with pytest.raises(ProtectedError):
        operator.delete()


def test_policies_need_approval_from_the_threshold_and_two_above_four_eyes():
    policy = ApprovalPolicy.objects.create(
        tool="transfer_funds", threshold=Decimal(100), four_eyes_above=Decimal(1000)
    )

    assert policy.approvers_required(Decimal("99.99")) == 0
    assert policy.approvers_required(Decimal(100)) == 1
    assert policy.approvers_required(Decimal(1000)) == 1
    assert policy.approvers_required(Decimal("1000.01")) == 2
    assert policy.approvers_required(None) == 2  # no readable amount: fail safe
    assert policy.describe() == "≥ 100 needs approval; two approvers above 1,000"
    policy.refresh_from_db()
    assert policy.describe() == "≥ 100 needs approval; two approvers above 1,000"


def test_the_four_eyes_amount_cannot_be_below_the_threshold():
    policy = ApprovalPolicy(
        tool="t", threshold=Decimal(500), four_eyes_above=Decimal(100)
    )

    with pytest.raises(ValidationError):
        policy.full_clean()
    with pytest.raises(IntegrityError), transaction.atomic():
        policy.save()


def test_an_agent_s_own_policy_wins_over_the_policy_for_all_agents():
    ApprovalPolicy.objects.create(tool="transfer_funds", threshold=Decimal(100))
    own = ApprovalPolicy.objects.create(
        tool="transfer_funds", agent="payments", threshold=Decimal(50)
    )
    ApprovalPolicy.objects.create(
        tool="transfer_funds", agent="other", threshold=Decimal(1), active=False
    )

    assert ApprovalPolicy.objects.for_call("transfer_funds", "payments") == own
    assert ApprovalPolicy.objects.for_call("transfer_funds", "other").threshold == 100
    assert ApprovalPolicy.objects.for_call("read_account", "payments") is None


def test_one_policy_per_tool_and_agent():
    ApprovalPolicy.objects.create(tool="transfer_funds", threshold=Decimal(100))

    with pytest.raises(IntegrityError), transaction.atomic():
        ApprovalPolicy.objects.create(tool="transfer_funds", threshold=Decimal(200))


def test_approver_limits(make_user, operator):
    boss = make_user("boss", is_superuser=True)
    ApproverLimit.objects.create(user=operator, max_amount=Decimal(500))

    assert ApproverLimit.allows(operator, Decimal(500))
    assert not ApproverLimit.allows(operator, Decimal("500.01"))
    assert ApproverLimit.allows(operator, None)
    assert ApproverLimit.allows(boss, Decimal(10**9))
    assert not ApproverLimit.allows(make_user("nolimit", "operators"), Decimal(1))


def test_retention_falls_back_to_the_default_policy():
    default = RetentionPolicy.objects.create(agent="", days_to_keep=30)
    payments = RetentionPolicy.objects.create(agent="payments", days_to_keep=365)

    assert RetentionPolicy.objects.for_agent("payments") == payments
    assert RetentionPolicy.objects.for_agent("support") == default
    with pytest.raises(IntegrityError), transaction.atomic():
        RetentionPolicy.objects.create(agent="", days_to_keep=7)


def test_retention_keeps_at_least_a_day():
    with pytest.raises(ValidationError):
        RetentionPolicy(agent="x", days_to_keep=0).full_clean()


def test_a_thread_has_one_legal_hold():
    LegalHold.objects.create(thread_id="case-42", reason="dispute")

    with pytest.raises(IntegrityError), transaction.atomic():
        LegalHold.objects.create(thread_id="case-42", reason="again")


def test_prefix_search_is_case_sensitive_and_uses_an_index():
    ThreadRecord.objects.bulk_create(
        ThreadRecord(thread_id=thread_id, agent="payments")
        for thread_id in ["case-1", "case-10", "CASE-2", "cas", "run-1"]
    )

    found = ThreadRecord.objects.with_prefix("case-1")

    assert sorted(found.values_list("thread_id", flat=True)) == ["case-1", "case-10"]
    if connection.vendor == "sqlite":
        sql, params = found.query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
            plan = " ".join(str(row) for row in cursor.fetchall())
        assert "USING INDEX" in plan or "USING COVERING INDEX" in plan, plan


def test_thread_status_filters_use_the_status_index():
    query = ThreadRecord.objects.filter(status=RunStatus.WAITING).order_by(
        "-updated_at"
    )[:50]
    if connection.vendor != "sqlite":
        pytest.skip("plan check written for SQLite")
    sql, params = query.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
        plan = " ".join(str(row) for row in cursor.fetchall())

    assert "runs_thread_status_idx" in plan
    assert "TEMP B-TREE" not in plan  # ordered by the index, not sorted


def test_runs_and_threads_read_well_in_the_admin(operator):
    run = Run.objects.create(thread_id="case-42", agent="payments", started_by=operator)

    assert str(run) == "payments run on case-42 (queued)"
    assert str(ThreadRecord(thread_id="case-42")) == "case-42"
    assert run.id is not None
