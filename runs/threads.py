"""Where a thread lives, and the threads list as keyset pages of the index.

The console shows threads from two kinds of store: the configured saver,
which the runner writes and may resume, and the extra checkpoint files of
``AGENTMATIC_READONLY_FILES``, which it only reads. `find_thread` returns
the store holding a thread; `thread_page` pages the `ThreadRecord` index
newest activity first, with a cursor instead of an offset so a deep page
costs what the first one does.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, Q

from agentmatic.checkpoint.base import BaseSaver
from agentmatic.errors import DisallowedType
from agentmatic.state import State
from runs import services
from runs.models import Run, ThreadRecord, ThreadRecordQuerySet

log = logging.getLogger(__name__)

PAGE_SIZE = 50


@dataclass(frozen=True)
class ThreadSource:
    """A store of threads: the configured saver, or a read-only file."""

    saver: BaseSaver
    # Empty for the configured saver; the file name for a read-only file.
    file_name: str = ""

    @property
    def readonly(self) -> bool:
        return bool(self.file_name)

    @property
    def readonly_reason(self) -> str:
        if not self.file_name:
            return ""
        return readonly_reason(self.file_name)


def readonly_reason(file_name: str) -> str:
    """Return why threads of a read-only file are shown but never run."""
    return (
        f"Read from {file_name}, a checkpoint file the console opens read-only: "
        "it shows these threads but never resumes or forks them."
    )


def sources() -> Iterator[ThreadSource]:
    """Yield the configured saver, then each read-only file."""
    yield ThreadSource(services.get_saver())
    try:
        readonly = services.readonly_savers()
    except (OSError, sqlite3.Error) as exc:
        # A missing or unreadable file (system check agentmatic_web.W002)
        # must not take the console down with it.
        log.warning("read-only checkpoint files are not shown: %s", exc)
        return
    for name, saver in readonly.items():
        yield ThreadSource(saver, name)


def find_thread(thread_id: str) -> ThreadSource | None:
    """Return the store that holds the thread, or None.

    The configured saver is asked first, so when a read-only file holds a
    thread of the same id, the console shows the one it can resume.
    """
    for source in sources():
        if source.saver.head_id(thread_id) is not None:
            return source
    return None


# -- keyset pages of the index ----------------------------------------------


@dataclass(frozen=True)
class ThreadFilters:
    """What the threads list is narrowed to; empty strings mean no filter."""

    prefix: str = ""
    status: str = ""
    agent: str = ""


def filtered(filters: ThreadFilters) -> ThreadRecordQuerySet:
    """Return the index rows that pass the filters, in no particular order."""
    records = ThreadRecord.objects.all()
    if filters.prefix:
        records = records.with_prefix(filters.prefix)
    if filters.status:
        records = records.filter(status=filters.status)
    if filters.agent:
        records = records.filter(agent=filters.agent)
    return records


@dataclass(frozen=True)
class ThreadPage:
    """One page of the threads list, and the cursors of its neighbours."""

    records: list[ThreadRecord]
    next_cursor: str | None
    previous_cursor: str | None
    # Threads forked from each thread on the page, by thread id.
    forks: dict[str, int]

    @property
    def rows(self) -> list[tuple[ThreadRecord, int]]:
        """Return each record with the number of threads forked from it."""
        return [(r, self.forks.get(r.thread_id, 0)) for r in self.records]


class BadCursor(ValueError):
    """A cursor that this console did not hand out."""


def encode_cursor(record: ThreadRecord, direction: str) -> str:
    raw = json.dumps([direction, record.updated_at.isoformat(), record.pk])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, datetime, int]:
    """Return ``(direction, updated_at, pk)`` of a cursor, or raise BadCursor."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        direction, when, pk = json.loads(base64.urlsafe_b64decode(padded))
        if direction not in ("next", "prev"):
            raise ValueError(direction)
        return str(direction), datetime.fromisoformat(when), int(pk)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise BadCursor(f"malformed cursor {cursor[:40]!r}") from exc


def list_page(
    filters: ThreadFilters, cursor: str | None = None, size: int = PAGE_SIZE
) -> ThreadPage:
    """Return a page of the index, newest activity first.

    Rows are ordered by ``(updated_at, pk)`` descending. A "next" cursor
    asks for the rows after a given one, a "prev" cursor for those before
    it; either way the query reads the `updated_at` index from the cursor
    on, never counting or skipping the rows above it.
    """
    records = filtered(filters)
    direction = "next"
    if cursor:
        direction, when, pk = decode_cursor(cursor)
        if direction == "next":
            # Written so the first term is a plain range on the index.
            records = records.filter(updated_at__lte=when).filter(
                Q(updated_at__lt=when) | Q(pk__lt=pk)
            )
        else:
            records = records.filter(updated_at__gte=when).filter(
                Q(updated_at__gt=when) | Q(pk__gt=pk)
            )
    if direction == "next":
        rows = list(records.order_by("-updated_at", "-pk")[: size + 1])
        more_after, more_before = len(rows) > size, bool(cursor)
        rows = rows[:size]
    else:
        rows = list(records.order_by("updated_at", "pk")[: size + 1])
        more_before, more_after = len(rows) > size, True
        rows = list(reversed(rows[:size]))
    return ThreadPage(
        records=rows,
        next_cursor=encode_cursor(rows[-1], "next") if rows and more_after else None,
        previous_cursor=(
            encode_cursor(rows[0], "prev") if rows and more_before else None
        ),
        forks=fork_counts([r.thread_id for r in rows]),
    )


def fork_counts(thread_ids: list[str]) -> dict[str, int]:
    """Return how many threads were forked from each of these threads."""
    if not thread_ids:
        return {}
    rows = (
        ThreadRecord.objects.filter(forked_from_thread__in=thread_ids)
        .values("forked_from_thread")
        .annotate(n=Count("pk"))
        .order_by()
    )
    return {row["forked_from_thread"]: row["n"] for row in rows}


# -- reading one thread -------------------------------------------------------


@dataclass(frozen=True)
class Branch:
    """A thread forked from a checkpoint of another."""

    thread_id: str
    checkpoint_id: str
    name: str
    status: str


def branches_of(thread_id: str) -> list[Branch]:
    """Return the threads forked from this one, newest first."""
    records = list(
        ThreadRecord.objects.filter(forked_from_thread=thread_id).order_by(
            "-updated_at"
        )[:200]
    )
    names = dict(
        Run.objects.filter(
            thread_id__in=[r.thread_id for r in records], forked_from_thread=thread_id
        )
        .exclude(branch_name="")
        .values_list("thread_id", "branch_name")
    )
    return [
        Branch(
            thread_id=r.thread_id,
            checkpoint_id=r.forked_from_checkpoint,
            name=names.get(r.thread_id) or r.thread_id,
            status=r.get_status_display(),
        )
        for r in records
    ]


def read_state(
    source: ThreadSource, thread_id: str, checkpoint_id: str
) -> State | None:
    """Return a checkpoint's state with values, for display.

    A value of a type the serializer may not rebuild is shown inert (an
    `OpaqueValue` naming the type) instead of failing the page.
    """
    try:
        return source.saver.get_state(thread_id, checkpoint_id)
    except DisallowedType:
        return _display_view(source.saver).get_state(thread_id, checkpoint_id)


def _display_view(saver: BaseSaver) -> BaseSaver:
    # The savers read for display only in their timeline readers; until
    # get_state takes a display flag, a shallow copy reading with the
    # display serializer shares the saver's connections and nothing else.
    view = copy.copy(saver)
    view.serde = saver.display_serde
    return view


def comparison_base(
    source: ThreadSource, new: State, against_id: str, against_thread: str
) -> tuple[State | None, str]:
    """Return the checkpoint to compare `new` with, and a problem to show if none.

    Without `against_id` that is the parent; a checkpoint id alone is looked
    for in the same thread, then in every store.
    """
    if not against_id:
        parent = new.parent_checkpoint_id
        if parent is not None:
            return read_state(source, new.thread_id, parent), ""
        forked = new.metadata.get("forked_from")
        if isinstance(forked, dict) and forked.get("checkpoint_id"):
            # A fork's first checkpoint is compared with the one it copied.
            return comparison_base(
                source,
                new,
                str(forked["checkpoint_id"]),
                str(forked.get("thread_id") or ""),
            )
        return None, "This is the thread's first checkpoint: everything is new."
    if against_thread:
        other_source = find_thread(against_thread)
        if other_source is None:
            return None, f"There is no thread {against_thread!r}."
        state = read_state(other_source, against_thread, against_id)
        if state is None or state.thread_id != against_thread:
            return None, f"Thread {against_thread!r} has no checkpoint {against_id!r}."
        return state, ""
    state = read_state(source, new.thread_id, against_id)
    if state is not None and state.thread_id == new.thread_id:
        return state, ""
    for candidate in sources():
        found = candidate.saver.find_checkpoint(against_id)
        if found is not None:
            other = found.config["configurable"]["thread_id"]
            return read_state(candidate, other, against_id), ""
    return None, f"No thread has a checkpoint {against_id!r}."
