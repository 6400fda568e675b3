"""A thread's page: the timeline, its branches, and one checkpoint opened."""

from dataclasses import dataclass

import pytest
from django.urls import reverse

from runs import indexing
from tests.web.console_support import start_thread

pytestmark = pytest.mark.django_db
PARTIAL = {"HTTP_X_PARTIAL": "1"}


@dataclass
class Evidence:
    """A type no saver of the console is allowed to rebuild."""

    note: str
    amount: int


def thread_url(thread_id: str, **query) -> str:
    from urllib.parse import urlencode

    url = reverse("runs:thread", args=[thread_id])
    return url + ("?" + urlencode(query) if query else "")


def test_the_timeline_shows_step_node_source_actor_and_next(
    client, developer, waiting_thread, store
):
    client.force_login(developer)

    response = client.get(thread_url("case-250"))

    rows = response.context["timeline"].rows
    history = store.get_state_history("case-250", values=False)
    assert [r.checkpoint_id for r in rows] == [s.checkpoint_id for s in history]
    assert rows[0].state.next == ("transfer_funds",)
    assert rows[-1].node == "input" and rows[-1].state.source == "input"
    assert {"agent", "read_account"} <= {r.node for r in rows}
    assert all(r.actor == "tester" for r in rows)
    page = response.content.decode()
    assert "transfer_funds" in page and "<svg" in page and "tester" in page
    assert "data-nav-list" in page


def test_the_status_comes_from_the_index_not_the_checkpoints(
    client, developer, waiting_thread
):
    from runs.models import ThreadRecord

    ThreadRecord.objects.filter(thread_id="case-250").update(status="failed")
    client.force_login(developer)

    response = client.get(thread_url("case-250"))

    assert response.context["status"] == "failed"
    assert "Failed" in response.content.decode()


def test_a_long_thread_loads_its_first_fifty_checkpoints_then_older_on_demand(
    client, developer, long_thread, store
):
    client.force_login(developer)
    everything = store.get_state_history("long", values=False)

    first = client.get(thread_url("long"))
    more_url = first.context["more_url"]
    second = client.get(more_url, **PARTIAL)

    assert len(everything) > 100
    assert len(first.context["timeline"].rows) == 50
    assert "before=" in more_url and "lanes=" in more_url
    assert second["X-Partial-Response"] == "1"
    shown = [r.checkpoint_id for r in second.context["timeline"].rows]
    assert shown == [s.checkpoint_id for s in everything[50:100]]
    assert b"Load older checkpoints" in second.content


def test_the_older_page_link_opens_the_whole_page_without_javascript(
    client, developer, long_thread
):
    client.force_login(developer)
    more_url = client.get(thread_url("long")).context["more_url"]

    response = client.get(more_url, follow=True)

    assert response.status_code == 200
    assert len(response.context["timeline"].rows) == 50
    assert response.context["timeline"].rows[0].state.step < 80


def test_oldest_first_starts_at_the_thread_s_input(
    client, developer, long_thread, store
):
    client.force_login(developer)

    response = client.get(thread_url("long", order="oldest"))

    rows = response.context["timeline"].rows
    assert rows[0].state.step == -1 and rows[0].state.source == "input"
    assert [r.state.step for r in rows] == sorted(r.state.step for r in rows)
    assert "offset=50" in response.context["more_url"]
    assert 'transform="translate(0 44) scale(1 -1)"' in response.content.decode()


def test_selecting_a_checkpoint_shows_the_conversation_with_tool_cards(
    client, developer, waiting_thread
):
    client.force_login(developer)
    url = reverse("runs:checkpoint", args=["case-250", waiting_thread.checkpoint_id])

    response = client.get(url, **PARTIAL)

    assert response["X-Partial-Response"] == "1"
    page = response.content.decode()
    for text in ("User", "Assistant", "System", "Refund order #42 for $250."):
        assert text in page
    assert "read_account" in page and "acct-7f3a" in page
    assert "transfer_funds" in page and "Waiting" in page
    assert "Pending tasks and interrupts" in page
    assert "Raw values (JSON)" in page
    turns = response.context["detail"]["turns"]
    cards = [c for t in turns for c in t.cards]
    lookup = next(c for c in cards if c.call.name == "read_account")
    assert lookup.result is not None and "acct-7f3a" in lookup.result.text
    transfer = next(c for c in cards if c.call.name == "transfer_funds")
    assert transfer.pending and transfer.result is None
    assert dict(transfer.args)["amount"] == "250"


def test_a_checkpoint_link_without_javascript_opens_the_thread_page(
    client, developer, waiting_thread
):
    client.force_login(developer)
    cid = waiting_thread.checkpoint_id
    url = reverse("runs:checkpoint", args=["case-250", cid])

    response = client.get(url, follow=True)

    assert response.status_code == 200
    assert response.context["detail"]["checkpoint_id"] == cid
    assert 'aria-current="true"' in response.content.decode()


def test_an_unknown_checkpoint_is_a_404(client, developer, waiting_thread):
    client.force_login(developer)

    response = client.get(thread_url("case-250", at="nope"))

    assert response.status_code == 404


def test_values_of_types_the_console_may_not_rebuild_are_shown_inert(
    client, developer, payments
):
    from agentmatic.checkpoint import SQLiteSaver
    from tests.web.console_agents import build_payments_agent

    start_thread(payments, "odd", "Refund order #7 for $40.")
    # Another process, allowed to store the type, writes it to the same file.
    writer = SQLiteSaver(payments.saver.path, allow=[Evidence])
    build_payments_agent(writer).update_state(
        {"configurable": {"thread_id": "odd"}},
        {"evidence": Evidence(note="<script>alert(1)</script>", amount=3)},
    )
    writer.close()
    head = payments.saver.get_state_history("odd", limit=1, values=False)[0]
    client.force_login(developer)

    response = client.get(thread_url("odd", at=head.checkpoint_id))

    page = response.content.decode()
    assert response.status_code == 200
    assert "$opaque" in page and "Evidence" in page
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;" in page


def test_a_replay_from_an_earlier_checkpoint_is_drawn_as_a_labelled_branch(
    client, developer, payments, waiting_thread, store
):
    history = store.get_state_history("case-250", values=False)
    earlier = next(s for s in history if s.step == 2)
    payments.invoke(
        None,
        {
            "configurable": {
                "thread_id": "case-250",
                "checkpoint_id": earlier.checkpoint_id,
            }
        },
        actor="replayer",
    )
    client.force_login(developer)

    response = client.get(thread_url("case-250"))

    rows = response.context["timeline"].rows
    labels = [label for r in rows for label in r.labels]
    assert any("new line: replay" in label for label in labels)
    assert any("an earlier line ends here" in label for label in labels)
    assert any("branch point: 2 lines" in label for label in labels)
    assert max(r.lane for r in rows) == 1
    assert "<path" in response.content.decode()


def test_a_fork_links_back_to_its_source_and_the_source_lists_it(
    client, developer, payments, waiting_thread
):
    payments.invoke(
        None,
        {
            "configurable": {
                "thread_id": "case-250-branch",
                "checkpoint_id": waiting_thread.checkpoint_id,
            }
        },
        actor="dev",
    )
    indexing.index_threads()
    client.force_login(developer)

    fork_page = client.get(thread_url("case-250-branch"))
    source_page = client.get(thread_url("case-250"))

    assert fork_page.context["forked_from"]["thread_id"] == "case-250"
    assert reverse("runs:thread", args=["case-250"]) in fork_page.content.decode()
    branches = source_page.context["branches"]
    assert [b.thread_id for b in branches] == ["case-250-branch"]
    head_row = source_page.context["timeline"].rows[0]
    assert [f.thread_id for f in head_row.forks] == ["case-250-branch"]


def test_a_queued_fork_without_checkpoints_has_a_designed_page(
    client, developer, store
):
    from runs.models import ThreadRecord

    ThreadRecord.objects.create(thread_id="soon", status="queued")
    client.force_login(developer)

    response = client.get(thread_url("soon"))

    assert response.status_code == 200
    assert "No checkpoints yet" in response.content.decode()


def test_the_status_strip_says_when_the_thread_moved_on(
    client, developer, waiting_thread, payments
):
    client.force_login(developer)
    old_head = waiting_thread.checkpoint_id
    payments.update_state(
        {"configurable": {"thread_id": "case-250"}}, {"messages": [("user", "hi")]}
    )

    response = client.get(
        reverse("runs:thread_status", args=["case-250"]), {"head": old_head}, **PARTIAL
    )

    assert "moved on" in response.content.decode()


def test_a_thread_page_is_not_shown_to_an_outsider(client, outsider, waiting_thread):
    client.force_login(outsider)

    assert client.get(thread_url("case-250")).status_code == 403
    assert client.get(thread_url("no-such-thread")).status_code == 403


def test_a_missing_thread_is_a_404(client, developer, store):
    client.force_login(developer)

    assert client.get(thread_url("no-such-thread")).status_code == 404


def test_opening_a_thread_not_yet_indexed_indexes_it(client, developer, payments):
    from runs.models import ThreadRecord

    start_thread(payments, "fresh", "Refund order #42 for $250.")
    client.force_login(developer)

    response = client.get(thread_url("fresh"))

    assert response.context["status"] == "waiting"
    assert ThreadRecord.objects.get(thread_id="fresh").agent == "payments"
