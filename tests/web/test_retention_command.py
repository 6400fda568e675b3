"""`manage.py apply_retention`: each agent's days, the default, and legal holds."""

from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import call_command

from checkpoints.models import LegalHold, RetentionPolicy
from runs import indexing, services
from tests.web.console_support import start_thread

pytestmark = pytest.mark.django_db

IN_TEN_DAYS = (datetime.now(UTC) + timedelta(days=10)).isoformat()


@pytest.fixture
def threads(payments, store):
    """Two long loop threads, one of them held, and a payments thread.

    The loop threads are long enough to hold whole message snapshots on the
    way, so retention has checkpoints it may delete.
    """
    loop = services.get_agent("loop")
    start_thread(loop, "loop-1", "go")
    start_thread(loop, "loop-held", "go")
    start_thread(payments, "pay-1", "Refund order #7 for $40.")
    indexing.index_threads()
    LegalHold.objects.create(thread_id="loop-held", reason="Customer dispute")
    return store


def count(store, thread_id: str) -> int:
    return len(store.get_state_history(thread_id, values=False))


def apply(*args: str) -> str:
    out = StringIO()
    call_command("apply_retention", *args, stdout=out, stderr=out)
    return out.getvalue()


def test_each_agent_keeps_its_own_days_and_held_threads_stay_whole(threads):
    RetentionPolicy.objects.create(agent="", days_to_keep=30)
    RetentionPolicy.objects.create(agent="loop", days_to_keep=5)
    before = {t: count(threads, t) for t in ("loop-1", "loop-held", "pay-1")}

    output = apply("--as-of", IN_TEN_DAYS)

    assert 1 <= count(threads, "loop-1") < before["loop-1"]
    assert threads.get_state("loop-1").messages[-1].text  # the newest still reads
    assert count(threads, "loop-held") == before["loop-held"]
    assert count(threads, "pay-1") == before["pay-1"]
    assert "loop: keep 5 days, 2 threads (1 under legal hold)" in output
    assert "default policy: keep 30 days, 1 threads" in output


def test_the_default_policy_covers_agents_without_one(threads):
    RetentionPolicy.objects.create(agent="", days_to_keep=1)
    before = count(threads, "loop-1")

    apply("--as-of", IN_TEN_DAYS)

    assert count(threads, "loop-1") < before


def test_threads_without_a_policy_are_kept(threads):
    RetentionPolicy.objects.create(agent="payments", days_to_keep=1)
    before = count(threads, "loop-1")

    output = apply("--as-of", IN_TEN_DAYS)

    assert count(threads, "loop-1") == before
    assert "2 threads follow no policy and are kept" in output


def test_a_dry_run_deletes_nothing(threads):
    RetentionPolicy.objects.create(agent="", days_to_keep=1)
    before = count(threads, "loop-1")

    output = apply("--dry-run", "--as-of", IN_TEN_DAYS)

    assert count(threads, "loop-1") == before
    assert "Dry run: nothing deleted." in output


def test_recent_checkpoints_are_kept(threads):
    RetentionPolicy.objects.create(agent="", days_to_keep=1)
    before = count(threads, "loop-1")

    output = apply()

    assert count(threads, "loop-1") == before
    assert "Deleted 0 checkpoints in all." in output


def test_a_policy_asking_for_an_archive_is_not_applied_without_one(threads):
    RetentionPolicy.objects.create(agent="", days_to_keep=1, archive_to_s3=True)
    before = count(threads, "loop-1")

    output = apply("--as-of", IN_TEN_DAYS)

    assert count(threads, "loop-1") == before
    assert "AGENTMATIC_ARCHIVE (s3://bucket/prefix) is not set" in output


def test_a_policy_asking_for_an_archive_copies_to_s3_before_deleting(
    threads, settings, s3_server, s3_prefix
):
    from agentmatic.checkpoint.archive import S3Archive
    from tests.s3server import BUCKET

    settings.AGENTMATIC_ARCHIVE = (BUCKET, f"{s3_prefix}archive")
    RetentionPolicy.objects.create(agent="", days_to_keep=1, archive_to_s3=True)
    before = [s.checkpoint_id for s in threads.get_state_history("loop-1")]

    output = apply("--as-of", IN_TEN_DAYS)

    after = {s.checkpoint_id for s in threads.get_state_history("loop-1")}
    gone = [cid for cid in before if cid not in after]
    assert gone and "archived to S3Archive" in output
    archive = S3Archive(BUCKET, f"{s3_prefix}archive", client=s3_server.client())
    for cid in gone:
        assert archive.read("loop-1", "", cid)["checkpoint_id"] == cid


def test_without_policies_nothing_happens(threads):
    assert "No retention policy is set" in apply()
