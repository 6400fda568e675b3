"""The threads list stays on its indexes at 100,000 threads.

No timing is asserted: the query plans must read an index from the
cursor on, which is what keeps a deep page as cheap as the first.
"""

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from runs.models import RunStatus, ThreadRecord
from runs.threads import ThreadFilters, decode_cursor, filtered, list_page

pytestmark = pytest.mark.django_db

COUNT = 100_000


@pytest.fixture
def many_threads():
    now = timezone.now()
    statuses = [RunStatus.FINISHED, RunStatus.WAITING, RunStatus.FAILED]
    ThreadRecord.objects.bulk_create(
        (
            ThreadRecord(
                thread_id=f"thread-{n:06d}",
                agent="payments" if n % 2 else "support",
                status=statuses[n % 3],
                updated_at=now - timedelta(seconds=n),
            )
            for n in range(COUNT)
        ),
        batch_size=5000,
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def plan(queryset) -> str:
    sql, params = queryset.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN QUERY PLAN " + sql, params)
        return "\n".join(str(row[-1]) for row in cursor.fetchall())


def page_query(filters: ThreadFilters, cursor: str | None = None):
    """Return the queryset list_page runs, for its plan."""
    records = filtered(filters)
    if cursor:
        from django.db.models import Q

        _direction, when, pk = decode_cursor(cursor)
        records = records.filter(updated_at__lte=when).filter(
            Q(updated_at__lt=when) | Q(pk__lt=pk)
        )
    return records.order_by("-updated_at", "-pk")[:51]


def deep_cursor(filters: ThreadFilters) -> str:
    """Return the cursor the list hands out 90% of the way down."""
    rows = filtered(filters)
    record = rows.order_by("-updated_at", "-pk")[rows.count() * 9 // 10]
    from runs.threads import encode_cursor

    return encode_cursor(record, "next")


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite plans")
def test_the_first_and_a_deep_page_read_the_recent_index(many_threads):
    filters = ThreadFilters()

    first = plan(page_query(filters))
    deep = plan(page_query(filters, deep_cursor(filters)))

    assert "runs_thread_recent_idx" in first
    assert "SEARCH" in deep and "runs_thread_recent_idx (updated_at<?)" in deep
    assert "SCAN runs_threadrecord\n" not in first + "\n"
    assert len(list_page(filters, deep_cursor(filters)).records) == 50


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite plans")
@pytest.mark.parametrize(
    ("filters", "index"),
    [
        (ThreadFilters(status=RunStatus.WAITING), "runs_thread_status_idx"),
        (ThreadFilters(agent="payments"), "runs_thread_agent_idx"),
    ],
)
def test_filtered_pages_read_their_own_index(many_threads, filters, index):
    assert index in plan(page_query(filters))
    assert index in plan(page_query(filters, deep_cursor(filters)))


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite plans")
def test_a_prefix_search_reads_an_index_not_the_table(many_threads):
    text = plan(page_query(ThreadFilters(prefix="thread-0999")))

    assert "USING INDEX" in text or "USING COVERING INDEX" in text
    assert len(list_page(ThreadFilters(prefix="thread-0999")).records) == 50


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite plans")
def test_branch_counts_of_a_page_read_the_forks_index(many_threads):
    from django.db.models import Count

    query = (
        ThreadRecord.objects.filter(forked_from_thread__in=["thread-000001"])
        .values("forked_from_thread")
        .annotate(n=Count("pk"))
        .order_by()
    )

    assert "runs_thread_forks_idx" in plan(query)
