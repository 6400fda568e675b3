"""Forking a thread from one of its checkpoints, from the thread page."""

import re

import pytest
from django.urls import reverse

from agentmatic import SystemMessage
from runs import services
from runs.models import Run, ThreadRecord
from tests.web.console_agents import SYSTEM_PROMPT
from tests.web.console_support import configure, start_thread

pytestmark = pytest.mark.django_db


def early_checkpoint(store, thread_id="case-250"):
    """Return the checkpoint right after the customer's message was read."""
    history = store.get_state_history(thread_id, values=False)
    return next(s for s in reversed(history) if s.step == 0)


def fork(client, checkpoint, **data):
    url = reverse("runs:fork", args=[checkpoint.thread_id, checkpoint.checkpoint_id])
    return client.post(url, {"branch_name": "Smaller refund", **data})


def run_queued(django_capture_on_commit_callbacks, action):
    """Do `action`, then execute the run it queued here (not on the pool)."""
    with django_capture_on_commit_callbacks(execute=False):
        response = action()
    run = Run.objects.order_by("-created_at").first()
    services.execute_run(str(run.id))
    return response, run


def test_a_developer_forks_an_early_checkpoint_with_a_new_message(
    client, developer, waiting_thread, store, django_capture_on_commit_callbacks
):
    client.force_login(developer)
    source = early_checkpoint(store)

    response, run = run_queued(
        django_capture_on_commit_callbacks,
        lambda: fork(client, source, message="Sorry, I meant $40 for order #42."),
    )

    assert re.fullmatch(r"smaller-refund-[0-9a-f]{6}", run.thread_id)
    assert response.status_code == 302
    assert response.url == reverse("runs:thread", args=[run.thread_id])
    assert run.forked_from_thread == "case-250"
    assert run.forked_from_checkpoint == source.checkpoint_id
    assert run.branch_name == "Smaller refund"
    assert Run.objects.get(pk=run.pk).status == "finished"
    branch = store.get_state(run.thread_id)
    assert branch.messages[-2].text.startswith("Refund of $40.00 sent")
    assert store.get_state("case-250").next == ("transfer_funds",)

    page = client.get(response.url)
    assert page.context["forked_from"]["thread_id"] == "case-250"
    source_page = client.get(reverse("runs:thread", args=["case-250"]))
    assert [b.name for b in source_page.context["branches"]] == ["Smaller refund"]
    assert "Smaller refund" in source_page.content.decode()


def test_an_edited_system_prompt_replaces_the_first_system_message(
    client, developer, waiting_thread, store, django_capture_on_commit_callbacks
):
    client.force_login(developer)
    source = early_checkpoint(store)
    original = store.get_state("case-250", source.checkpoint_id).messages[0]

    _response, run = run_queued(
        django_capture_on_commit_callbacks,
        lambda: fork(client, source, system_prompt="Never refund more than $100."),
    )

    messages = store.get_state(run.thread_id).messages
    systems = [m for m in messages if isinstance(m, SystemMessage)]
    assert [(m.id, m.text) for m in systems] == [
        (original.id, "Never refund more than $100.")
    ]
    assert run.input["messages"][0]["id"] == original.id


def test_an_unchanged_system_prompt_is_not_sent(waiting_thread, store):
    from runs.forks import fork_input

    state = store.get_state("case-250")

    assert fork_input(state, message="", system_prompt=SYSTEM_PROMPT) is None
    assert fork_input(state, message="hi", system_prompt=SYSTEM_PROMPT) == {
        "messages": [{"type": "human", "content": "hi"}]
    }


def test_the_fork_form_is_in_the_checkpoint_panel_for_developers_only(
    client, developer, operator, waiting_thread
):
    url = reverse("runs:thread", args=["case-250"])
    query = {"at": waiting_thread.checkpoint_id}

    client.force_login(developer)
    as_developer = client.get(url, query).content.decode()
    client.force_login(operator)
    as_operator = client.get(url, query).content.decode()

    assert "Fork from here" in as_developer and "Branch name" in as_developer
    assert "Fork from here" not in as_operator
    assert "may look at threads but not fork them" in as_operator


def test_an_operator_may_not_fork(client, operator, waiting_thread, store):
    client.force_login(operator)

    response = fork(client, early_checkpoint(store))

    assert response.status_code == 403
    assert not Run.objects.exists()


def test_a_branch_name_needs_a_letter_or_digit(
    client, developer, waiting_thread, store
):
    client.force_login(developer)

    response = fork(client, early_checkpoint(store), branch_name="!!!")

    assert response.status_code == 400
    assert "at least one letter or digit" in response.content.decode()
    assert not Run.objects.exists()


def test_a_read_only_thread_cannot_be_forked_and_the_page_says_why(
    client, developer, settings, tmp_path, langgraph_file
):
    configure(settings, tmp_path / "store.sqlite", [langgraph_file])
    saver = services.readonly_savers()["langgraph-shared.sqlite"]
    head = saver.get_state("case-42", values=False)
    client.force_login(developer)

    response = fork(client, head)
    detail = client.get(
        reverse("runs:thread", args=["case-42"]), {"at": head.checkpoint_id}
    )

    assert response.status_code == 409
    assert "cannot be forked" in response.content.decode()
    assert "read-only" in response.content.decode()
    assert "Fork from here" not in detail.content.decode()
    assert "cannot be forked" in detail.content.decode()
    assert not Run.objects.exists()


def test_a_thread_of_an_unregistered_agent_cannot_be_forked(
    client, developer, waiting_thread, store, settings
):
    ThreadRecord.objects.filter(thread_id="case-250").update(agent="retired")
    client.force_login(developer)

    response = fork(client, early_checkpoint(store))

    assert response.status_code == 409
    assert (
        "no agent named &#x27;retired&#x27; is registered" in response.content.decode()
    )


def test_forking_a_checkpoint_of_another_thread_is_a_404(
    client, developer, payments, waiting_thread
):
    other = start_thread(payments, "other", "Refund order #7 for $40.")
    client.force_login(developer)
    url = reverse("runs:fork", args=["case-250", other.checkpoint_id])

    response = client.post(url, {"branch_name": "x"})

    assert response.status_code == 404
