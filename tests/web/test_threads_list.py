"""The threads list: every thread, newest first, filtered and paged on the server."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from runs import indexing
from runs.models import Run, RunStatus, ThreadRecord
from runs.threads import ThreadFilters, list_page
from tests.web.console_support import configure, start_thread

pytestmark = pytest.mark.django_db


def make_records(count: int, **fields) -> list[ThreadRecord]:
    now = timezone.now()
    return ThreadRecord.objects.bulk_create(
        ThreadRecord(
            thread_id=f"t-{n:05d}",
            updated_at=now - timedelta(minutes=n),
            **fields,
        )
        for n in range(count)
    )


def test_it_lists_threads_newest_activity_first_with_their_status(
    client, developer, store
):
    make_records(3, agent="payments", status=RunStatus.FINISHED, last_step=7)
    ThreadRecord.objects.filter(thread_id="t-00001").update(status=RunStatus.FAILED)
    client.force_login(developer)

    page = client.get(reverse("runs:threads")).content.decode()

    assert page.index("t-00000") < page.index("t-00001") < page.index("t-00002")
    assert "Failed" in page and "Finished" in page
    assert "data-nav-list" in page and "data-nav-item" in page
    assert reverse("runs:thread", args=["t-00000"]) in page


def test_it_filters_by_status_agent_and_id_prefix(client, developer, store):
    make_records(4, agent="payments")
    ThreadRecord.objects.create(thread_id="case-9", agent="other", status="waiting")
    client.force_login(developer)

    by_status = client.get(reverse("runs:threads"), {"status": "waiting"})
    by_agent = client.get(reverse("runs:threads"), {"agent": "payments"})
    by_prefix = client.get(reverse("runs:threads"), {"q": "case"})

    assert [r.thread_id for r in by_status.context["page"].records] == ["case-9"]
    assert len(by_agent.context["page"].records) == 4
    assert [r.thread_id for r in by_prefix.context["page"].records] == ["case-9"]


def test_the_prefix_search_is_case_sensitive_and_no_match_is_a_designed_state(
    client, developer, store
):
    ThreadRecord.objects.create(thread_id="Case-1")
    client.force_login(developer)

    response = client.get(reverse("runs:threads"), {"q": "case"})

    assert response.context["page"].records == []
    assert "No thread matches these filters" in response.content.decode()


def test_cursor_pages_walk_every_thread_once_both_ways(store):
    make_records(7)
    ThreadRecord.objects.filter(thread_id__in=["t-00002", "t-00003"]).update(
        updated_at=timezone.now() - timedelta(minutes=2)
    )
    filters = ThreadFilters()

    seen, cursor, pages = [], None, []
    while True:
        page = list_page(filters, cursor, size=3)
        pages.append(page)
        seen += [r.thread_id for r in page.records]
        cursor = page.next_cursor
        if cursor is None:
            break
    back = list_page(filters, pages[-1].previous_cursor, size=3)

    assert sorted(seen) == [f"t-{n:05d}" for n in range(7)]
    assert len(seen) == 7
    assert [r.thread_id for r in back.records] == [
        r.thread_id for r in pages[-2].records
    ]
    assert pages[0].previous_cursor is None


def test_a_forged_cursor_falls_back_to_the_first_page(client, developer, store):
    make_records(2)
    client.force_login(developer)

    response = client.get(reverse("runs:threads"), {"cursor": "not-a-cursor"})

    assert response.status_code == 200
    assert "no longer valid" in response.content.decode()
    assert len(response.context["page"].records) == 2


def test_the_list_shows_how_many_branches_each_thread_has(client, developer, store):
    ThreadRecord.objects.create(thread_id="source")
    ThreadRecord.objects.create(thread_id="b1", forked_from_thread="source")
    ThreadRecord.objects.create(thread_id="b2", forked_from_thread="source")
    client.force_login(developer)

    response = client.get(reverse("runs:threads"))

    assert dict(response.context["page"].forks) == {"source": 2}


def test_threads_only_in_the_saver_are_indexed_with_the_status_they_stopped_in(
    client, developer, payments
):
    start_thread(payments, "big", "Refund order #42 for $250.")
    start_thread(payments, "small", "Refund order #7 for $40.")
    client.force_login(developer)

    response = client.get(reverse("runs:threads"))

    records = {r.thread_id: r for r in response.context["page"].records}
    assert records["big"].status == RunStatus.WAITING
    assert records["small"].status == RunStatus.FINISHED
    assert records["big"].agent == "payments"
    assert records["big"].last_step is not None


def test_the_indexer_leaves_the_runner_s_status_alone(payments, developer):
    start_thread(payments, "ran", "Refund order #42 for $250.")
    Run.objects.create(thread_id="ran", agent="payments", status=RunStatus.FAILED)
    ThreadRecord.objects.create(
        thread_id="ran", agent="payments", status=RunStatus.FAILED
    )

    indexing.index_threads(full=True)

    assert ThreadRecord.objects.get(thread_id="ran").status == RunStatus.FAILED


def test_an_incremental_pass_stops_at_the_first_page_already_current(payments):
    for n in range(5):
        start_thread(payments, f"done-{n}", "Refund order #7 for $40.")
    first = indexing.index_threads(batch=2)

    again = indexing.index_threads(batch=2)

    assert first.created == 5
    assert again.seen == 2 and again.created == 0


def test_read_only_files_are_listed_and_marked_with_the_reason(
    client, developer, settings, tmp_path, langgraph_file
):
    configure(settings, tmp_path / "store.sqlite", [langgraph_file])
    client.force_login(developer)

    page = client.get(reverse("runs:threads")).content.decode()

    assert "case-42" in page and "case-done" in page
    assert "read-only" in page
    assert (
        "langgraph-shared.sqlite, a checkpoint file the console opens read-only" in page
    )


def test_the_index_command_reports_what_it_did(payments, capsys):
    from django.core.management import call_command

    start_thread(payments, "cmd", "Refund order #7 for $40.")

    call_command("index_threads", "--full")

    assert "1 new" in capsys.readouterr().out


def test_an_outsider_sees_no_thread(client, outsider, store):
    make_records(1)
    client.force_login(outsider)

    response = client.get(reverse("runs:threads"))

    assert response.status_code == 403
    assert b"t-00000" not in response.content
