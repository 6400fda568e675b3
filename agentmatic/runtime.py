"""The superstep loop: channels, nodes, barriers, and one checkpoint per step.

A thread's state lives in channels. `messages` is an append-only log whose
writes replace a message with the same id; every other state key keeps its
last value. Nodes are started by trigger channels named `branch:to:<node>`,
exactly as LangGraph marks them, so a checkpoint alone tells what runs next.

One superstep runs every scheduled task in parallel. Each task's writes are
saved (`put_writes`) the moment it finishes; only when all have finished are
the writes applied and the next checkpoint stored. A crash in between loses
nothing that finished: on resume, a task whose writes are saved is not run
again.

The message log is stored as deltas, in LangGraph's `DeltaChannel` format: a
loop checkpoint stores no messages at all (they are the writes stored against
its parent), and a full `DeltaSnapshot` is written every `SNAPSHOT_EVERY`
updates and on every input, update or fork checkpoint. A step therefore
costs the same at step 1,000 as at step 10.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agentmatic import ids
from agentmatic.checkpoint.base import (
    DECISION,
    ERROR,
    INTERRUPT,
    BaseSaver,
    CheckpointTuple,
    next_version,
    thread_config,
)
from agentmatic.checkpoint.reading import (
    START,
    AncestorMissing,
    ValueResolver,
    build_state,
    is_state_channel,
    next_nodes,
    version_key,
)
from agentmatic.checkpoint.serde import DeltaSnapshot
from agentmatic.errors import CheckpointNotFound, CorruptCheckpoint, ThreadConflict
from agentmatic.messages import BaseMessage, MessageLog, ToolCall
from agentmatic.state import State

log = logging.getLogger(__name__)

MESSAGES = "messages"
SNAPSHOT_EVERY = 100
# The task id, the same in every process for the same task.
task_id_for = ids.task_id


def trigger(node: str) -> str:
    return f"branch:to:{node}"


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class Cursor:
    """A checkpoint loaded for running: its stored form and live values."""

    tup: CheckpointTuple
    messages: MessageLog
    other: dict[str, Any]

    @property
    def checkpoint(self) -> dict[str, Any]:
        return self.tup.checkpoint

    @property
    def id(self) -> str:
        return str(self.tup.checkpoint["id"])

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self.tup.metadata or {})

    @property
    def step(self) -> int:
        return int((self.tup.metadata or {}).get("step", -1))

    def values(self) -> dict[str, Any]:
        out = dict(self.other)
        out[MESSAGES] = list(self.messages.items)
        return out

    def writes_by_task(self) -> dict[str, list[tuple[str, Any]]]:
        out: dict[str, list[tuple[str, Any]]] = {}
        for task_id, channel, value in self.tup.pending_writes or []:
            out.setdefault(task_id, []).append((channel, value))
        return out


def fold_finished_writes(cursor: Cursor) -> None:
    """Add the messages of tasks that finished at this checkpoint to its log.

    Used when leaving a checkpoint whose step was interrupted half way (a
    crash, new input): what ran is kept, so nothing is answered as "not
    executed" after it ran.
    """
    cursor.messages.apply(
        [v for _task, ch, v in cursor.tup.pending_writes or [] if ch == MESSAGES]
    )


class Lease:
    """This process's claim on a thread, kept alive while tasks run.

    A heartbeat thread renews the claim every third of its time to live for
    as long as it is held; if a renewal fails (another process took over after
    the claim lapsed), `check()` raises before anything more is written.
    """

    def __init__(self, saver: BaseSaver, thread_id: str, owner: str, ttl: float):
        self.saver = saver
        self.thread_id = thread_id
        self.owner = owner
        self.ttl = ttl
        self.lost = False

    def renew(self) -> bool:
        if not self.saver.acquire_lease(self.thread_id, self.owner, self.ttl):
            self.lost = True
        return not self.lost

    def check(self) -> None:
        if self.lost:
            raise ThreadConflict(
                self.thread_id, "this process lost its claim on the thread"
            )

    @contextlib.contextmanager
    def heartbeat(self) -> Iterator[None]:
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.ttl / 3):
                if not self.renew():
                    return

        thread = threading.Thread(target=beat, name="agentmatic-lease", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def release(self) -> None:
        self.saver.release_lease(self.thread_id, self.owner)


def load_cursor(saver: BaseSaver, tup: CheckpointTuple) -> Cursor:
    """Return the cursor at `tup`, its values whole.

    A run stores what it reads here (a branch, a fork or new input stores the
    message log as a snapshot), so a log cut short by a delete that commits
    while its stretch is read must not be returned: the checkpoint is read
    again (a `prune` may have stored its values meanwhile) and its values
    rebuilt; if it is gone, `CheckpointNotFound`.
    """
    conf = tup.config["configurable"]
    thread_id, ns = conf["thread_id"], conf.get("checkpoint_ns", "")
    for attempt in range(_REBUILD_ATTEMPTS):
        resolver = ValueResolver(saver, thread_id, ns, strict=True)
        resolver.add([tup])
        try:
            values = resolver.values(tup)
            break
        except AncestorMissing as exc:
            fresh = saver.get_tuple(tup.config)
            if fresh is None:
                raise CheckpointNotFound(thread_id, tup.checkpoint["id"]) from None
            if attempt == _REBUILD_ATTEMPTS - 1:
                raise CorruptCheckpoint(
                    thread_id,
                    tup.checkpoint["id"],
                    f"its message log cannot be rebuilt: {exc}",
                ) from None
            tup = fresh
    messages = values.pop(MESSAGES, [])
    return Cursor(tup=tup, messages=MessageLog(messages), other=values)


_REBUILD_ATTEMPTS = 3


@dataclass
class PlannedTask:
    id: str
    node: str
    path: str
    tool_call: ToolCall | None = None


def plan_tasks(cursor: Cursor, tool_names: set[str]) -> list[PlannedTask]:
    """Return the tasks a checkpoint schedules, one per pending tool call."""
    from agentmatic.messages import unanswered_tool_calls

    tasks: list[PlannedTask] = []
    pending = unanswered_tool_calls(cursor.messages.items)
    for n, (node, _arg) in enumerate(next_nodes(cursor.checkpoint)):
        if node not in (START, "agent"):
            for m, call in enumerate(c for c in pending if c.name == node):
                tasks.append(
                    PlannedTask(
                        id=task_id_for(cursor.id, node, call.id),
                        node=node,
                        path=f"{n:04d}.{m:04d}",
                        tool_call=call,
                    )
                )
        else:
            tasks.append(
                PlannedTask(
                    id=task_id_for(cursor.id, node, None), node=node, path=f"{n:04d}"
                )
            )
    return tasks


def build_checkpoint(
    base: dict[str, Any] | None,
    *,
    updates: dict[str, Any],
    consumed: Sequence[str],
    seen: dict[str, dict[str, Any]],
    messages: list[BaseMessage] | None,
    snapshot: bool,
    after: str | None = None,
) -> dict[str, Any]:
    """Return the checkpoint that follows `base` after these channel changes.

    `updates` maps channels to their new stored value (None for a trigger);
    `consumed` triggers are cleared. Every changed channel gets one new
    version, greater than every version in `base`, as LangGraph numbers them.
    The new id sorts after `base` and after `after` (the thread's newest).
    """
    base = base or {}
    versions = dict(base.get("channel_versions") or {})
    stored = {
        k: v for k, v in (base.get("channel_values") or {}).items() if k != MESSAGES
    }
    current = max(versions.values(), key=version_key) if versions else None
    new = next_version(current)
    changed: list[str] = []
    for channel in consumed:
        if channel in stored and channel not in updates:
            del stored[channel]
            versions[channel] = new
    for channel, value in updates.items():
        if channel == MESSAGES:
            versions[channel] = new
            changed.append(channel)
            continue
        stored[channel] = value
        versions[channel] = new
        changed.append(channel)
    if snapshot and messages is not None and MESSAGES in versions:
        stored[MESSAGES] = DeltaSnapshot(list(messages))
    versions_seen = {k: dict(v) for k, v in (base.get("versions_seen") or {}).items()}
    for node, chans in seen.items():
        versions_seen.setdefault(node, {}).update(chans)
    return {
        "v": 4,
        "id": ids.checkpoint_id(after=max(base.get("id") or "", after or "") or None),
        "ts": now_iso(),
        "channel_values": stored,
        "channel_versions": versions,
        "versions_seen": versions_seen,
        "updated_channels": sorted(changed),
    }


def delta_counters(
    metadata: dict[str, Any] | None, wrote_messages: bool, snapshot: bool
) -> dict[str, Any]:
    """Advance LangGraph's `counters_since_delta_snapshot` for the messages log."""
    counters = dict((metadata or {}).get("counters_since_delta_snapshot") or {})
    updates, steps = counters.get(MESSAGES, (0, 0))
    if snapshot:
        counters.pop(MESSAGES, None)
    else:
        counters[MESSAGES] = [int(updates) + int(wrote_messages), int(steps) + 1]
    return counters


def needs_snapshot(metadata: dict[str, Any] | None, wrote_messages: bool) -> bool:
    counters = (metadata or {}).get("counters_since_delta_snapshot") or {}
    updates, steps = counters.get(MESSAGES, (0, 0))
    return int(updates) + int(wrote_messages) >= SNAPSHOT_EVERY or int(steps) >= 5000


@dataclass
class StepWrites:
    """The writes of one finished task, in the order they apply."""

    task: PlannedTask
    writes: list[tuple[str, Any]]


def apply_writes(
    cursor: Cursor, results: Sequence[StepWrites]
) -> tuple[dict[str, Any], list[str], dict[str, dict[str, Any]], bool]:
    """Apply a superstep's writes to the live values at the barrier.

    Return the channels to store, the triggers consumed, what each node saw,
    and whether the message log changed.
    """
    versions = cursor.checkpoint.get("channel_versions") or {}
    updates: dict[str, Any] = {}
    message_writes: list[Any] = []
    seen: dict[str, dict[str, Any]] = {}
    consumed: list[str] = []
    for result in sorted(results, key=lambda r: (r.task.path, r.task.id)):
        node = result.task.node
        chan = START if node == START else trigger(node)
        if chan in versions:
            seen.setdefault(node, {})[chan] = versions[chan]
        if chan not in consumed:
            consumed.append(chan)
        for channel, value in result.writes:
            if channel in (ERROR, INTERRUPT, DECISION):
                continue
            if channel == MESSAGES:
                message_writes.append(value)
            elif channel.startswith("branch:to:"):
                updates[channel] = None
            elif is_state_channel(channel):
                cursor.other[channel] = value
                updates[channel] = value
    if message_writes:
        cursor.messages.apply(message_writes)
        updates[MESSAGES] = True
    return updates, consumed, seen, bool(message_writes)


def run_parallel(
    tasks: Sequence[PlannedTask], fn: Callable[[PlannedTask], list[tuple[str, Any]]]
) -> tuple[list[StepWrites], BaseException | None]:
    """Run tasks at once; return what finished and the first failure, if any."""
    if not tasks:
        return [], None
    if len(tasks) == 1:
        try:
            return [StepWrites(tasks[0], fn(tasks[0]))], None
        except BaseException as exc:
            return [], exc
    done: list[StepWrites] = []
    failure: BaseException | None = None
    with ThreadPoolExecutor(max_workers=min(16, len(tasks))) as pool:
        futures = [(t, pool.submit(fn, t)) for t in tasks]
        for task, future in futures:
            try:
                done.append(StepWrites(task, future.result()))
            except BaseException as exc:
                failure = failure or exc
    return done, failure


def state_from_cursor(cursor: Cursor) -> State:
    return build_state(cursor.tup, values=cursor.values())


def put_checkpoint(
    saver: BaseSaver,
    thread_id: str,
    ns: str,
    parent_id: str | None,
    checkpoint: dict[str, Any],
    metadata: dict[str, Any],
    *,
    expected_head: Any,
    step_writes: Sequence[tuple[str, str, Sequence[tuple[str, Any]]]] = (),
) -> CheckpointTuple:
    """Store a checkpoint and return it as a tuple (without reading it back).

    `step_writes` are writes of tasks that ran from the parent, stored with the
    checkpoint. If the checkpoint is refused they are still stored on their
    own, so a task that finished is never run again.
    """
    new_versions = {
        ch: checkpoint["channel_versions"][ch]
        for ch in checkpoint.get("updated_channels") or []
        if ch in checkpoint["channel_versions"]
    }
    config = thread_config(thread_id, parent_id, ns)
    try:
        saved = saver.put_step(
            config,
            step_writes,
            checkpoint,
            metadata,
            new_versions,
            expected_head=expected_head,
        )
    except ThreadConflict:
        log.warning("thread %s: write refused, another writer advanced it", thread_id)
        _keep_writes(saver, config, step_writes)
        raise
    except Exception:
        _keep_writes(saver, config, step_writes)
        raise
    return CheckpointTuple(
        config=saved,
        checkpoint=checkpoint,
        metadata=metadata,
        parent_config=thread_config(thread_id, parent_id, ns) if parent_id else None,
        pending_writes=[],
    )


def _keep_writes(
    saver: BaseSaver,
    config: dict[str, Any],
    step_writes: Sequence[tuple[str, str, Sequence[tuple[str, Any]]]],
) -> None:
    for task_id, task_path, writes in step_writes:
        try:
            saver.put_writes(config, writes, task_id, task_path)
        except Exception:  # the first failure is the one to report
            log.exception("could not keep the writes of task %s", task_id)


__all__ = [
    "MESSAGES",
    "Cursor",
    "MessageLog",
    "PlannedTask",
    "StepWrites",
    "apply_writes",
    "build_checkpoint",
    "delta_counters",
    "load_cursor",
    "needs_snapshot",
    "plan_tasks",
    "put_checkpoint",
    "run_parallel",
    "state_from_cursor",
    "task_id_for",
    "trigger",
]
