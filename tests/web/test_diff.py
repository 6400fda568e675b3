"""What changed between two checkpoints: the pure diff, and its page."""

import pytest
from django.urls import reverse

from agentmatic import AIMessage, HumanMessage, SystemMessage, ToolMessage
from agentmatic.checkpoint.serde import OpaqueValue
from runs.diff import diff_values
from tests.web.console_support import start_thread


def test_messages_are_matched_by_id_added_removed_and_changed():
    old = {
        "messages": [
            SystemMessage("Be careful.", id="s"),
            HumanMessage("Refund $250.", id="h"),
            AIMessage("Looking it up.", id="a"),
        ]
    }
    new = {
        "messages": [
            SystemMessage("Be very careful.", id="s"),
            HumanMessage("Refund $250.", id="h"),
            ToolMessage("ok", tool_call_id="c1", id="t"),
        ]
    }

    diff = diff_values(old, new)

    assert [m["id"] for m in diff.added] == ["t"]
    assert [m["id"] for m in diff.removed] == ["a"]
    assert [c.key for c in diff.changed] == ["s"]
    change = diff.changed[0]
    assert change.role == "System"
    assert [(f.name, f.old, f.new) for f in change.fields] == [
        ("content", "Be careful.", "Be very careful.")
    ]
    assert diff.unchanged_messages == 1
    assert not diff.empty


def test_tool_calls_changed_on_a_message_are_shown_side_by_side():
    call = {"name": "transfer_funds", "args": {"amount": 250}, "id": "c1"}
    old = {"messages": [AIMessage("", tool_calls=[call], id="a")]}
    new = {
        "messages": [
            AIMessage("", tool_calls=[{**call, "args": {"amount": 80}}], id="a")
        ]
    }

    diff = diff_values(old, new)

    (field,) = diff.changed[0].fields
    assert field.name == "tool_calls"
    assert field.old[0]["args"] == {"amount": 250}
    assert field.new[0]["args"] == {"amount": 80}
    assert '"amount": 80' in field.new_text


def test_other_fields_are_added_removed_and_changed():
    diff = diff_values(
        {"note": "a", "gone": 1, "same": [1]},
        {"note": "b", "new": {"x": 1}, "same": [1]},
    )

    assert [(f.name, f.change) for f in diff.fields] == [
        ("note", "changed"),
        ("gone", "removed"),
        ("new", "added"),
    ]
    assert diff.fields[1].new_text == "" and diff.fields[2].old_text == ""


def test_messages_without_ids_are_matched_by_position():
    diff = diff_values(
        {"messages": [HumanMessage("one"), HumanMessage("two")]},
        {"messages": [HumanMessage("one"), HumanMessage("2")]},
    )

    assert [c.key for c in diff.changed] == ["#1"]
    assert diff.unchanged_messages == 1


def test_identical_values_have_an_empty_diff_and_opaque_values_compare_inert():
    opaque = OpaqueValue("shop.Secret", {"a": 1})
    values = {"messages": [HumanMessage("x", id="1")], "evidence": opaque}

    assert diff_values(values, dict(values)).empty
    changed = diff_values(
        values, {**values, "evidence": OpaqueValue("shop.Secret", {"a": 2})}
    )
    assert changed.fields[0].new["$opaque"] == "shop.Secret"


def test_the_diff_as_the_api_returns_it_is_plain_json():
    import json

    diff = diff_values({}, {"messages": [HumanMessage("hi", id="h")], "n": 1})

    data = json.loads(json.dumps(diff.as_dict()))
    assert data["messages"]["added"][0]["content"] == "hi"
    assert data["fields"] == [{"name": "n", "change": "added", "old": None, "new": 1}]


# -- the page ------------------------------------------------------------------


@pytest.mark.django_db
def test_the_page_compares_with_the_parent_by_default(
    client, developer, waiting_thread, store
):
    client.force_login(developer)
    head = waiting_thread

    response = client.get(reverse("runs:diff", args=["case-250", head.checkpoint_id]))

    assert response.status_code == 200
    assert response.context["old"].checkpoint_id == head.parent_checkpoint_id
    added = response.context["diff"].added
    assert len(added) == 1 and added[0]["type"] == "ai"
    page = response.content.decode()
    assert "Messages added" in page and "transfer_funds" in page


@pytest.mark.django_db
def test_the_page_compares_across_threads(client, developer, payments, store):
    big = start_thread(payments, "big", "Refund order #42 for $250.")
    small = start_thread(payments, "small", "Refund order #42 for $40.")
    client.force_login(developer)

    response = client.get(
        reverse("runs:diff", args=["small", small.checkpoint_id]),
        {"against": big.checkpoint_id},
    )

    assert response.context["old"].thread_id == "big"
    changed = {c.role for c in response.context["diff"].changed}
    assert "User" in changed or response.context["diff"].added


@pytest.mark.django_db
def test_the_first_checkpoint_is_compared_with_nothing(
    client, developer, waiting_thread, store
):
    first = store.get_state_history("case-250", values=False)[-1]
    client.force_login(developer)

    response = client.get(reverse("runs:diff", args=["case-250", first.checkpoint_id]))

    assert response.context["old"] is None
    assert "first checkpoint" in response.content.decode()


@pytest.mark.django_db
def test_an_unknown_checkpoint_to_compare_with_is_said_plainly(
    client, developer, waiting_thread
):
    client.force_login(developer)

    response = client.get(
        reverse("runs:diff", args=["case-250", waiting_thread.checkpoint_id]),
        {"against": "no-such-checkpoint"},
    )

    assert response.status_code == 200
    assert "No thread has a checkpoint" in response.content.decode()
