"""The REST API: who may call what; threads, history, diff, forks, decisions."""

from decimal import Decimal

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from approvals.models import ApproverLimit, CallState, Decision, PendingCall
from runs import indexing, services
from runs.models import Run, ThreadRecord
from tests.web.console_support import configure, start_thread

pytestmark = pytest.mark.django_db


@pytest.fixture
def api():
    return APIClient()


def as_user(api, user):
    api.force_authenticate(user)
    return api


def endpoints(thread_id: str, checkpoint_id: str, call_id: int = 1):
    """Return (method, url) of every endpoint, for one thread and checkpoint."""
    return [
        ("get", reverse("api:threads")),
        ("get", reverse("api:thread", args=[thread_id])),
        ("get", reverse("api:history", args=[thread_id])),
        ("get", reverse("api:state", args=[thread_id, checkpoint_id])),
        ("get", reverse("api:diff", args=[thread_id, checkpoint_id])),
        ("post", reverse("api:fork", args=[thread_id])),
        ("get", reverse("api:approvals")),
        ("post", reverse("api:decide", args=[call_id])),
    ]


# -- permissions ------------------------------------------------------------------


def test_an_outsider_is_refused_everywhere_whether_the_thread_exists_or_not(
    api, outsider, waiting_thread
):
    as_user(api, outsider)
    real = endpoints("case-250", waiting_thread.checkpoint_id)
    made_up = endpoints("no-such-thread", "no-such-checkpoint", 999)

    for (method, url), (_, fake) in zip(real, made_up, strict=True):
        response = getattr(api, method)(url, {}, format="json")
        other = getattr(api, method)(fake, {}, format="json")
        assert response.status_code == 403, url
        assert other.status_code == 403, fake
        assert b"case-250" not in response.content


def test_anonymous_requests_are_asked_to_authenticate(api, waiting_thread):
    for method, url in endpoints("case-250", waiting_thread.checkpoint_id):
        response = getattr(api, method)(url, {}, format="json")
        assert response.status_code == 401, url


def test_an_operator_reads_threads_but_may_not_fork(api, operator, waiting_thread):
    as_user(api, operator)

    listed = api.get(reverse("api:threads"))
    forked = api.post(
        reverse("api:fork", args=["case-250"]),
        {"checkpoint_id": waiting_thread.checkpoint_id, "branch_name": "x"},
        format="json",
    )

    assert listed.status_code == 200
    assert forked.status_code == 403
    assert not Run.objects.exists()


def test_a_developer_may_not_decide(api, developer, waiting_thread):
    as_user(api, developer)

    response = api.post(
        reverse("api:decide", args=[1]),
        {"decision": "approve", "checkpoint_id": waiting_thread.checkpoint_id},
        format="json",
    )

    assert api.get(reverse("api:approvals")).status_code == 200
    assert response.status_code == 403


def test_a_token_authenticates_like_a_session(api, developer, waiting_thread):
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=developer)
    api.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")

    assert api.get(reverse("api:history", args=["case-250"])).status_code == 200


# -- threads ----------------------------------------------------------------------


def test_the_threads_list_filters_and_pages_with_a_cursor(api, developer, store):
    ThreadRecord.objects.bulk_create(
        ThreadRecord(thread_id=f"t-{n}", agent="payments", status="finished")
        for n in range(5)
    )
    ThreadRecord.objects.create(thread_id="w-1", agent="payments", status="waiting")
    as_user(api, developer)

    first = api.get(reverse("api:threads"), {"limit": 4}).json()
    second = api.get(first["next"]).json()
    waiting = api.get(reverse("api:threads"), {"status": "waiting"}).json()
    prefixed = api.get(reverse("api:threads"), {"q": "t-"}).json()

    ids = [t["thread_id"] for t in first["results"] + second["results"]]
    assert sorted(ids) == sorted([f"t-{n}" for n in range(5)] + ["w-1"])
    assert second["next"] is None and second["previous"]
    assert [t["thread_id"] for t in waiting["results"]] == ["w-1"]
    assert len(prefixed["results"]) == 5
    assert set(first["results"][0]) >= {"status", "agent", "readonly", "branches"}


def test_a_bad_cursor_is_a_400_naming_it(api, developer, store):
    as_user(api, developer)

    response = api.get(reverse("api:threads"), {"cursor": "garbage"})

    assert response.status_code == 400
    assert "cursor" in response.json()


def test_history_is_newest_first_without_values_and_pages_with_before(
    api, developer, waiting_thread, store
):
    as_user(api, developer)

    pages = [api.get(reverse("api:history", args=["case-250"]), {"limit": 2}).json()]
    while pages[-1]["next"]:
        pages.append(api.get(pages[-1]["next"]).json())

    everything = store.get_state_history("case-250", values=False)
    ids = [c["checkpoint_id"] for page in pages for c in page["results"]]
    assert ids == [s.checkpoint_id for s in everything]
    assert len(pages) == 3
    head = pages[0]["results"][0]
    assert head["next"] == ["transfer_funds"]
    assert head["pending_tool_calls"][0]["args"]["amount"] == 250
    assert "values" not in head and head["node"] == "agent"


def test_state_at_a_checkpoint_has_values_and_a_missing_one_is_a_404(
    api, developer, waiting_thread
):
    as_user(api, developer)
    url = reverse("api:state", args=["case-250", waiting_thread.checkpoint_id])

    state = api.get(url).json()
    missing = api.get(reverse("api:state", args=["case-250", "nope"]))
    no_thread = api.get(reverse("api:history", args=["nope"]))

    assert state["values"]["messages"][-1]["tool_calls"][0]["name"] == "transfer_funds"
    assert state["interrupts"] and state["tasks"][0]["name"] == "transfer_funds"
    assert missing.status_code == 404 and no_thread.status_code == 404


def test_the_diff_defaults_to_the_parent_and_names_a_bad_other_side(
    api, developer, waiting_thread
):
    as_user(api, developer)
    url = reverse("api:diff", args=["case-250", waiting_thread.checkpoint_id])

    diff = api.get(url).json()
    bad = api.get(url, {"against": "nope"})

    assert diff["old"]["checkpoint_id"] == waiting_thread.parent_checkpoint_id
    assert diff["diff"]["messages"]["added"][0]["type"] == "ai"
    assert bad.status_code == 400 and "against" in bad.json()


def test_a_developer_forks_through_the_api(
    api, developer, waiting_thread, django_capture_on_commit_callbacks
):
    as_user(api, developer)

    with django_capture_on_commit_callbacks(execute=False):
        response = api.post(
            reverse("api:fork", args=["case-250"]),
            {
                "checkpoint_id": waiting_thread.checkpoint_id,
                "branch_name": "API branch",
                "message": "Make it $40 instead.",
            },
            format="json",
        )

    assert response.status_code == 201
    body = response.json()
    assert body["thread_id"].startswith("api-branch-")
    assert body["source_checkpoint"] == waiting_thread.checkpoint_id
    run = Run.objects.get(pk=body["run_id"])
    assert run.input == {
        "messages": [{"type": "human", "content": "Make it $40 instead."}]
    }


def test_fork_errors_name_the_field(api, developer, waiting_thread):
    as_user(api, developer)
    url = reverse("api:fork", args=["case-250"])

    no_name = api.post(
        url, {"checkpoint_id": waiting_thread.checkpoint_id}, format="json"
    )
    bad_checkpoint = api.post(
        url, {"checkpoint_id": "nope", "branch_name": "x"}, format="json"
    )

    assert no_name.status_code == 400 and "branch_name" in no_name.json()
    assert bad_checkpoint.status_code == 404
    assert "checkpoint_id" in bad_checkpoint.json()


# -- approvals -----------------------------------------------------------------------


@pytest.fixture
def demo_store(settings, tmp_path):
    """The console on the approvals app's own demo agent."""
    configure(settings, tmp_path / "checkpoints.sqlite")
    settings.AGENTMATIC_AGENTS = {"payments": "approvals.demo:build_payments_agent"}
    services.reset_caches()
    yield services.get_saver()
    services.get_saver().close()
    services.reset_caches()


@pytest.fixture
def pending_call(demo_store, db) -> PendingCall:
    """A $250 refund waiting for a decision, started by someone else."""
    services.start_run(
        "payments",
        "refund-250",
        {"messages": [{"type": "human", "content": "Refund order #1042, $250."}]},
        "intake-bot",
        inline=True,
    )
    indexing.index_threads()
    return PendingCall.objects.get(thread_id="refund-250")


@pytest.fixture
def approver(operator):
    ApproverLimit.objects.create(user=operator, max_amount=Decimal("5000"))
    return operator


def decide(api, call, **body):
    return api.post(
        reverse("api:decide", args=[call.pk]),
        {"checkpoint_id": call.checkpoint_id, **body},
        format="json",
    )


def test_the_approvals_list_shows_waiting_calls_oldest_first(
    api, approver, pending_call
):
    as_user(api, approver)

    body = api.get(reverse("api:approvals")).json()

    (row,) = body["results"]
    assert row["thread_id"] == "refund-250" and row["tool"] == "transfer_funds"
    assert Decimal(row["amount"]) == Decimal("250")
    assert row["decide_url"] == reverse("api:decide", args=[pending_call.pk])
    assert api.get(reverse("api:approvals"), {"state": "bogus"}).status_code == 400


def test_an_operator_approves_through_the_api(
    api, approver, pending_call, django_capture_on_commit_callbacks
):
    as_user(api, approver)

    with django_capture_on_commit_callbacks(execute=False):
        response = decide(api, pending_call, decision="approve")

    assert response.status_code == 201
    assert response.json()["kind"] == "approve"
    assert response.json()["actor"] == approver.username
    assert Run.objects.filter(thread_id="refund-250", input__isnull=True).exists()


def test_a_stale_decision_is_a_409(api, approver, pending_call):
    as_user(api, approver)

    response = api.post(
        reverse("api:decide", args=[pending_call.pk]),
        {"decision": "approve", "checkpoint_id": "an-older-checkpoint"},
        format="json",
    )

    assert response.status_code == 409
    assert "no longer current" in response.json()["detail"]
    assert not Decision.objects.exists()


def test_a_modified_argument_that_does_not_fit_is_a_400_naming_the_field(
    api, approver, pending_call
):
    as_user(api, approver)

    response = decide(
        api,
        pending_call,
        decision="modify",
        args={**pending_call.args, "amount": "lots"},
    )

    assert response.status_code == 400
    assert "amount" in response.json()
    assert not Decision.objects.exists()


def test_a_rejection_needs_a_reason(api, approver, pending_call):
    as_user(api, approver)

    response = decide(api, pending_call, decision="reject")

    assert response.status_code == 400
    assert "reason" in response.json()


def test_of_two_decisions_on_one_call_exactly_one_wins(
    api, approver, make_user, pending_call, django_capture_on_commit_callbacks
):
    second = make_user("second-operator", "operators")
    ApproverLimit.objects.create(user=second, max_amount=Decimal("5000"))
    other = APIClient()
    other.force_authenticate(second)
    as_user(api, approver)

    with django_capture_on_commit_callbacks(execute=False):
        first = decide(api, pending_call, decision="approve")
        late = decide(other, pending_call, decision="reject", reason="Too much.")

    assert (first.status_code, late.status_code) == (201, 409)
    assert Decision.objects.filter(final=True).count() == 1


def test_a_call_being_decided_by_someone_else_is_refused(api, approver, pending_call):
    PendingCall.objects.filter(pk=pending_call.pk).update(state=CallState.DECIDING)
    as_user(api, approver)

    response = decide(api, pending_call, decision="approve")

    assert response.status_code == 409
    assert not Decision.objects.exists()


def test_an_unknown_call_is_a_404(api, approver, demo_store):
    as_user(api, approver)

    response = api.post(
        reverse("api:decide", args=[12345]),
        {"decision": "approve", "checkpoint_id": "x"},
        format="json",
    )

    assert response.status_code == 404


def test_the_schema_documents_every_endpoint(client, developer):
    client.force_login(developer)

    schema = client.get(reverse("api-schema"), {"format": "json"}).json()

    paths = set(schema["paths"])
    assert {
        "/api/threads/",
        "/api/threads/{thread_id}/",
        "/api/threads/{thread_id}/history/",
        "/api/threads/{thread_id}/checkpoints/{checkpoint_id}/",
        "/api/threads/{thread_id}/checkpoints/{checkpoint_id}/diff/",
        "/api/threads/{thread_id}/fork/",
        "/api/approvals/",
        "/api/approvals/{call_id}/decide/",
    } <= paths


def test_a_thread_written_outside_the_console_is_indexed_when_asked_for(
    api, developer, payments
):
    start_thread(payments, "outside", "Refund order #42 for $250.")
    as_user(api, developer)

    body = api.get(reverse("api:thread", args=["outside"])).json()

    assert body["status"] == "waiting" and body["agent"] == "payments"
    assert ThreadRecord.objects.filter(thread_id="outside").exists()
    assert api.get(reverse("api:thread", args=["nowhere"])).status_code == 404
