"""Keep the threads index (`ThreadRecord`) in step with the savers.

The runner records the threads it runs as it runs them. Threads that reach
a saver some other way (written by LangGraph, by a script using the
library, or found in a read-only file) are unknown to it, so `index_threads`
reads the saver's own thread list, newest activity first, and adds or
refreshes their rows. For those threads no runner record exists, so their
status is read from the newest checkpoint: nodes scheduled means waiting,
none means finished. Rows of threads the runner ran keep the runner's status.

A pass stops at the first page whose threads are all current, so calling
it on every visit of the threads list costs one page once caught up;
``full=True`` walks every thread.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.db import transaction
from django.utils import timezone

from agentmatic.state import ThreadInfo
from runs.models import Run, RunStatus, ThreadRecord
from runs.threads import ThreadSource, find_thread, sources

log = logging.getLogger(__name__)

BATCH = 500
# How often a visit of the threads list may trigger a pass, per process.
REFRESH_SECONDS = 10.0
REFRESH_BATCH = 50
_last_refresh = 0.0


@dataclass
class IndexReport:
    """What one pass did, per store."""

    seen: int = 0
    created: int = 0
    updated: int = 0
    stores: list[str] = field(default_factory=list)


def index_threads(*, full: bool = False, batch: int = BATCH) -> IndexReport:
    """Index the threads of every store; return what changed."""
    report = IndexReport()
    for source in sources():
        report.stores.append(source.file_name or "configured saver")
        _index_source(source, report, full=full, batch=batch)
    if report.created or report.updated:
        log.info(
            "indexed threads: %s new, %s refreshed, %s read",
            report.created,
            report.updated,
            report.seen,
        )
    return report


def refresh_index() -> None:
    """Run a short pass unless one ran in the last few seconds in this process."""
    global _last_refresh
    now = time.monotonic()
    if now - _last_refresh < REFRESH_SECONDS:
        return
    _last_refresh = now
    try:
        # One page the size of the list's: enough once caught up.
        index_threads(batch=REFRESH_BATCH)
    except Exception:  # the list still shows what is indexed
        log.warning("could not refresh the threads index", exc_info=True)


def reset_refresh_clock() -> None:
    """Let the next visit refresh at once (tests change stores between cases)."""
    global _last_refresh
    _last_refresh = 0.0


def index_thread(thread_id: str) -> ThreadRecord | None:
    """Index one thread from whichever store holds it; return its row."""
    source = find_thread(thread_id)
    if source is None:
        return ThreadRecord.objects.filter(thread_id=thread_id).first()
    history = source.saver.get_state_history(thread_id, values=False)
    if not history:
        return ThreadRecord.objects.filter(thread_id=thread_id).first()
    head, first = history[0], history[-1]
    forked = first.metadata.get("forked_from")
    info = ThreadInfo(
        thread_id=thread_id,
        checkpoint_id=head.checkpoint_id,
        created_at=first.created_at,
        updated_at=head.created_at,
        step=head.step,
        source=head.source,
        next=head.next,
        agent=first.metadata.get("agent") or head.metadata.get("agent"),
        started_by=first.metadata.get("started_by"),
        checkpoints=len(history),
        forked_from=forked if isinstance(forked, dict) else None,
    )
    _apply_page(source, [info], IndexReport())
    return ThreadRecord.objects.filter(thread_id=thread_id).first()


def _index_source(
    source: ThreadSource, report: IndexReport, *, full: bool, batch: int
) -> None:
    cursor: str | None = None
    while True:
        page = source.saver.list_threads(limit=batch, cursor=cursor)
        report.seen += len(page.threads)
        changed = _apply_page(source, page.threads, report)
        if not page.next_cursor or (not changed and not full):
            return
        cursor = page.next_cursor


def _apply_page(
    source: ThreadSource, infos: list[ThreadInfo], report: IndexReport
) -> bool:
    """Create or refresh the rows of one page; return whether any changed."""
    ids = [info.thread_id for info in infos]
    existing = {r.thread_id: r for r in ThreadRecord.objects.filter(thread_id__in=ids)}
    ran = set(Run.objects.filter(thread_id__in=ids).values_list("thread_id", flat=True))
    new: list[ThreadRecord] = []
    changed = False
    with transaction.atomic():
        for info in infos:
            record = existing.get(info.thread_id)
            if record is None:
                new.append(_record(source, info))
                continue
            if source.readonly and not record.readonly_reason:
                # The configured saver holds a thread of the same id; it wins.
                continue
            if _refresh(record, source, info, runner_owned=info.thread_id in ran):
                report.updated += 1
                changed = True
        if new:
            ThreadRecord.objects.bulk_create(new, ignore_conflicts=True)
            report.created += len(new)
            changed = True
    return changed


def _record(source: ThreadSource, info: ThreadInfo) -> ThreadRecord:
    forked = info.forked_from or {}
    return ThreadRecord(
        thread_id=info.thread_id,
        agent=info.agent or "",
        status=_status(info),
        last_step=info.step,
        updated_at=_when(info.updated_at),
        started_by=info.started_by or "",
        forked_from_thread=str(forked.get("thread_id") or ""),
        forked_from_checkpoint=str(forked.get("checkpoint_id") or ""),
        readonly_reason=source.readonly_reason,
    )


def _refresh(
    record: ThreadRecord, source: ThreadSource, info: ThreadInfo, *, runner_owned: bool
) -> bool:
    """Bring a row up to date with the saver; return whether it changed."""
    when = _when(info.updated_at)
    fresh = _record(source, info)
    fields = ["agent", "started_by", "forked_from_thread", "forked_from_checkpoint"]
    changes = {
        name: getattr(fresh, name) for name in fields if not getattr(record, name)
    }
    if record.last_step != info.step and (not runner_owned or record.last_step is None):
        changes["last_step"] = info.step
    if not runner_owned:
        if record.updated_at < when:
            changes["updated_at"] = when
        if record.status != fresh.status:
            changes["status"] = fresh.status
        if record.readonly_reason != fresh.readonly_reason:
            changes["readonly_reason"] = fresh.readonly_reason
    changes = {k: v for k, v in changes.items() if v not in ("", None)}
    if not changes:
        return False
    for name, value in changes.items():
        setattr(record, name, value)
    record.save(update_fields=list(changes))
    return True


def _status(info: ThreadInfo) -> str:
    return RunStatus.WAITING if info.next else RunStatus.FINISHED


def _when(raw: str | None) -> datetime:
    if not raw:
        return timezone.now()
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        return timezone.now()
    return when if when.tzinfo else when.replace(tzinfo=UTC)
