"""Turn stored checkpoints into `State`s without the graph that wrote them.

LangGraph marks the nodes a checkpoint will run next with trigger channels
(`branch:to:<node>`, older `start:<node>` and `branch:<src>:<cond>:<node>`)
and queues `Send` packets in `__pregel_tasks` (or, before format 4, in the
checkpoint's `pending_sends`). A node runs next when its trigger holds a
value at a version newer than the one the node last saw. Channels that keep
deltas (LangGraph's `DeltaChannel`, and our message list) store a full value
only now and then (a `DeltaSnapshot`); in between, the value is the nearest
snapshot plus the writes stored against each checkpoint on the way.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from agentmatic import ids
from agentmatic.checkpoint.serde import DeltaSnapshot
from agentmatic.errors import SerializationError
from agentmatic.messages import (
    AIMessage,
    BaseMessage,
    MessageLog,
    ToolCall,
    add_messages,
    unanswered_tool_calls,
)
from agentmatic.state import Config, Interrupt, State, Task, ThreadInfo, ThreadPage

if TYPE_CHECKING:
    from agentmatic.checkpoint.base import BaseSaver, CheckpointTuple

log = logging.getLogger(__name__)

START = "__start__"
ERROR = "__error__"
INTERRUPT = "__interrupt__"
TASKS = "__pregel_tasks"
DECISION = "__decision__"
LLM_NODES = frozenset({"agent", "model", "call_model", "llm", "chatbot"})

Reducer = Callable[[Any, Sequence[Any]], Any]


@functools.lru_cache(maxsize=4096)
def trigger_target(channel: str) -> str | None:
    """Return the node a trigger channel starts, or None for a state channel."""
    if channel == START:
        return START
    if channel.startswith("branch:to:"):
        return channel[len("branch:to:") :]
    if channel.startswith("start:"):
        return channel[len("start:") :]
    if channel.startswith("branch:"):
        parts = channel.split(":")
        return parts[-1] if len(parts) >= 4 else None
    if channel.startswith("join:"):
        # A waiting edge `join:<a>+<b>:<node>`: fires once every source wrote.
        parts = channel.split(":")
        return parts[-1] if len(parts) >= 3 else None
    return None


def _barrier_complete(channel: str, value: Any) -> bool:
    """Return whether a `join:` barrier has seen all its sources (else not ready)."""
    if not channel.startswith("join:"):
        return True
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and isinstance(value[1], bool)
    ):
        seen, finished = value  # the deferred form stores (seen, finished)
        if not finished:
            return False
        value = seen
    names = set(channel.split(":")[1].split("+"))
    return isinstance(value, (set, frozenset, list)) and set(value) == names


def is_state_channel(channel: str) -> bool:
    return not channel.startswith("__") and trigger_target(channel) is None


def version_key(version: Any) -> tuple[int, float]:
    """Order LangGraph versions: ints, floats, or `"<n>.<random>"` strings."""
    if isinstance(version, (str, int, float)):
        return _version_key(version)
    return _version_key.__wrapped__(version)


@functools.lru_cache(maxsize=4096)
def _version_key(version: Any) -> tuple[int, float]:
    if isinstance(version, (int, float)):
        return (int(version), 0.0)
    head, _, tail = str(version).partition(".")
    try:
        number = int(head)
    except ValueError:
        return (0, 0.0)
    try:
        return (number, float(tail) if tail else 0.0)
    except ValueError:
        return (number, 0.0)


def next_nodes(checkpoint: dict[str, Any]) -> list[tuple[str, Any]]:
    """Return `(node, send_arg)` for each task the checkpoint schedules."""
    values = checkpoint.get("channel_values") or {}
    versions = checkpoint.get("channel_versions") or {}
    seen_all = checkpoint.get("versions_seen") or {}
    out: list[tuple[str, Any]] = []
    for channel, version in versions.items():
        node = trigger_target(channel)
        if node is None or channel not in values:
            continue
        if not _barrier_complete(channel, values[channel]):
            continue
        seen = (seen_all.get(node) or {}).get(channel)
        if seen is None or version_key(version) > version_key(seen):
            out.append((node, None))
    for packet in list(values.get(TASKS) or []) + list(
        checkpoint.get("pending_sends") or []
    ):
        node = getattr(packet, "node", None)
        if node is None and isinstance(packet, dict):
            node = packet.get("node")
        if node is not None:
            arg = getattr(packet, "arg", None)
            out.append((str(node), arg if arg is not None else packet))
    return out


def _reducer_for(channel: str) -> Reducer:
    if channel == "messages":

        def fold(left: Any, writes: Sequence[Any]) -> Any:
            value = list(left or [])
            for write in writes:
                value = add_messages(value, write)
            return value

        return fold

    def concat(left: Any, writes: Sequence[Any]) -> Any:
        value = list(left or [])
        for w in writes:
            value.extend(w if isinstance(w, (list, tuple)) else [w])
        return value

    return concat


class AncestorMissing(LookupError):
    """A delta channel's walk named a parent that is not stored (any more)."""

    def __init__(self, checkpoint_id: str, parent_id: str) -> None:
        super().__init__(f"checkpoint {checkpoint_id!r}: parent {parent_id!r} is gone")
        self.checkpoint_id = checkpoint_id
        self.parent_id = parent_id


class ValueResolver:
    """Rebuilds channel values of checkpoints, sharing work across a thread.

    With `strict`, a delta channel whose walk back to its snapshot meets a
    parent that is not stored raises `AncestorMissing` instead of starting
    the value there: a delete committed mid-walk, or the thread lost rows.
    """

    def __init__(
        self,
        saver: BaseSaver,
        thread_id: str,
        checkpoint_ns: str = "",
        *,
        strict: bool = False,
    ):
        self.saver = saver
        self.thread_id = thread_id
        self.checkpoint_ns = checkpoint_ns
        self.strict = strict
        self.tuples: dict[str, CheckpointTuple] = {}
        self._values: dict[tuple[str, str], Any] = {}

    def add(self, tuples: Iterable[CheckpointTuple]) -> None:
        for tup in tuples:
            self.tuples[tup.checkpoint["id"]] = tup

    def _tuple(self, checkpoint_id: str) -> CheckpointTuple | None:
        tup = self.tuples.get(checkpoint_id)
        if tup is None:
            from agentmatic.checkpoint.base import thread_config

            tup = self.saver.get_tuple(
                thread_config(self.thread_id, checkpoint_id, self.checkpoint_ns)
            )
            if tup is not None:
                self.tuples[checkpoint_id] = tup
        return tup

    def values(self, tup: CheckpointTuple) -> dict[str, Any]:
        cp = tup.checkpoint
        stored = cp.get("channel_values") or {}
        out: dict[str, Any] = {}
        for channel in cp.get("channel_versions") or {}:
            if not is_state_channel(channel):
                continue
            if channel in stored:
                value = stored[channel]
                out[channel] = (
                    value.value if isinstance(value, DeltaSnapshot) else value
                )
            else:
                value = self.channel_value(tup, channel)
                if value is not _MISSING:
                    out[channel] = value
        for channel, value in stored.items():
            if channel not in out and is_state_channel(channel):
                out[channel] = (
                    value.value if isinstance(value, DeltaSnapshot) else value
                )
        return out

    def _saver_value(self, tup: CheckpointTuple, channel: str) -> Any:
        """Return the saver's own rebuild of a delta channel at `tup`, if it has one.

        A saver may offer `channel_value_at(tup, channel)`, returning the
        value as a `DeltaSnapshot` or None when it cannot.
        """
        rebuild = getattr(self.saver, "channel_value_at", None)
        if rebuild is None:
            return _MISSING
        value = rebuild(tup, channel)
        if value is None:
            return _MISSING
        return value.value if isinstance(value, DeltaSnapshot) else value

    def channel_value(self, tup: CheckpointTuple, channel: str) -> Any:
        """Return a delta channel's value at `tup`, walking back to a snapshot."""
        key = (tup.checkpoint["id"], channel)
        if key in self._values:
            return self._values[key]
        # Walk to the nearest ancestor that stores the value (or is cached).
        chain: list[CheckpointTuple] = []
        walked: set[str] = set()
        base: Any = _MISSING
        cursor: CheckpointTuple | None = tup
        while cursor is not None:
            ckey = (cursor.checkpoint["id"], channel)
            if ckey in self._values:
                base = self._values[ckey]
                break
            stored = cursor.checkpoint.get("channel_values") or {}
            if channel in stored:
                value = stored[channel]
                base = value.value if isinstance(value, DeltaSnapshot) else value
                self._values[ckey] = base
                break
            chain.append(cursor)
            walked.add(cursor.checkpoint["id"])
            parent_id = _parent_id(cursor)
            if parent_id and parent_id not in self.tuples:
                # A saver that rebuilds values without the rows in between (or
                # whose rows retention deleted) answers in one step.
                rebuilt = self._saver_value(cursor, channel)
                if rebuilt is not _MISSING:
                    chain.pop()
                    base = self._values[ckey] = rebuilt
                    break
            cursor = self._tuple(parent_id) if parent_id else None
            if cursor is None and parent_id and self.strict:
                raise AncestorMissing(chain[-1].checkpoint["id"], parent_id)
            if cursor is not None and cursor.checkpoint["id"] in walked:
                break
        value = base
        # Messages replay through one live log (no index rebuilt per step);
        # other delta channels fold their writes with the channel's reducer.
        log = (
            MessageLog([] if base is _MISSING else base)
            if channel == "messages"
            else None
        )
        reducer = _reducer_for(channel)
        # chain holds tup and the ancestors below the base, newest first; each
        # one's value is its parent's value plus the writes stored on the parent.
        for child in reversed(chain):
            parent_id = _parent_id(child)
            parent = self.tuples.get(parent_id) if parent_id else None
            writes = (
                [v for (_t, ch, v) in (parent.pending_writes or []) if ch == channel]
                if parent is not None
                else []
            )
            if log is not None:
                if writes or value is not _MISSING:
                    log.apply(writes)
                    value = list(log.items)
            elif writes:
                value = reducer([] if value is _MISSING else value, writes)
            self._values[(child.checkpoint["id"], channel)] = value
        return value


class _Missing:
    pass


_MISSING: Any = _Missing()


def _parent_id(tup: CheckpointTuple) -> str | None:
    if not tup.parent_config:
        return None
    return tup.parent_config["configurable"].get("checkpoint_id")


def _last_ai_message_from_writes(
    resolver: ValueResolver | None, tup: CheckpointTuple
) -> list[BaseMessage]:
    """Return the messages the parent's tasks wrote (enough to find pending calls)."""
    if resolver is None:
        return []
    parent_id = _parent_id(tup)
    parent = resolver._tuple(parent_id) if parent_id else None
    if parent is None:
        return []
    return messages_written(parent.pending_writes)


def messages_written(
    pending_writes: Sequence[tuple[str, str, Any]] | None,
) -> list[BaseMessage]:
    """Return the messages among a checkpoint's pending writes, in order."""
    out: list[BaseMessage] = []
    for _task, channel, value in pending_writes or []:
        if channel == "messages":
            out.extend(
                v
                for v in (value if isinstance(value, list) else [value])
                if isinstance(v, BaseMessage)
            )
    return out


def build_state(
    tup: CheckpointTuple,
    *,
    values: dict[str, Any] | None,
    resolver: ValueResolver | None = None,
    scheduled: list[tuple[str, Any]] | None = None,
) -> State:
    """Build a `State`; `values=None` decodes only what a timeline needs.

    `scheduled` is `next_nodes` of the checkpoint, when the caller knows it.
    """
    cp = tup.checkpoint
    if scheduled is None:
        scheduled = next_nodes(cp)

    # Pending calls: unanswered calls of the last AI message, when a tool runs next.
    messages: list[BaseMessage] = []
    if values is not None:
        messages = list(values.get("messages") or [])
    elif runs_a_tool(scheduled):
        stored = (cp.get("channel_values") or {}).get("messages")
        if isinstance(stored, DeltaSnapshot):
            stored = stored.value
        if isinstance(stored, list):
            messages = stored
        else:
            messages = _last_ai_message_from_writes(resolver, tup)
    return assemble_state(
        checkpoint_id=cp["id"],
        created_at=cp.get("ts"),
        config=tup.config,
        parent_config=tup.parent_config,
        metadata=dict(tup.metadata or {}),
        scheduled=scheduled,
        pending_writes=tup.pending_writes,
        messages=messages,
        values=values if values is not None else {},
    )


def runs_a_tool(scheduled: Sequence[tuple[str, Any]]) -> bool:
    """Return whether a node other than the model's runs next."""
    return any(n not in LLM_NODES and n != START for n, _ in scheduled)


def assemble_state(
    *,
    checkpoint_id: str,
    created_at: str | None,
    config: Config,
    parent_config: Config | None,
    metadata: dict[str, Any],
    scheduled: Sequence[tuple[str, Any]],
    pending_writes: Sequence[tuple[str, str, Any]] | None,
    messages: Sequence[BaseMessage],
    values: dict[str, Any],
) -> State:
    """Build a `State` from what `build_state` gathered of a checkpoint.

    `messages` holds at least the last AI message when a tool runs next
    (its unanswered calls are the pending ones).
    """
    node_names = tuple(dict.fromkeys([n for n, _ in scheduled]))
    # The tasks with a result among their writes (the tasks that ran).
    ran: set[str] = set()
    marks = False
    for task_id, channel, _value in pending_writes or ():
        if channel in _MARKS:
            marks = True
        else:
            ran.add(task_id)
    pending: list[ToolCall] = []
    tool_nodes = [n for n in node_names if n not in LLM_NODES and n != START]
    if tool_nodes and messages:
        for proposed in unanswered_tool_calls(messages):
            if proposed.name in tool_nodes or "tools" in tool_nodes:
                pending.append(proposed)
    for _node, arg in scheduled:
        if arg is None:
            continue
        sent = _tool_call_from_send(arg)
        if sent is not None and all(c.id != sent.id for c in pending):
            pending.append(sent)

    interrupts: list[Interrupt] = []
    decisions: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    if marks:
        # Per task, its writes in order.
        by_task: dict[str, list[tuple[str, Any]]] = {}
        for task_id, channel, value in pending_writes or ():
            by_task.setdefault(task_id, []).append((channel, value))
        for task_id, writes in by_task.items():
            for channel, value in writes:
                if channel == INTERRUPT:
                    items = value if isinstance(value, (list, tuple)) else [value]
                    interrupts.extend(_as_interrupt(item) for item in items)
                elif channel == DECISION and isinstance(value, dict):
                    decisions[str(value.get("tool_call_id"))] = value
                elif channel == ERROR:
                    errors[task_id] = str(value)
    if interrupts:
        # Interrupts follow the model's order of calls, not the storage order.
        order = {c.id: n for n, c in enumerate(pending)}
        interrupts.sort(
            key=lambda i: order.get(
                str(i.value.get("tool_call_id")) if isinstance(i.value, dict) else "",
                len(order),
            )
        )

    tasks: list[Task] = []
    unfinished: set[str] = set()
    for node, arg in scheduled:
        calls: list[ToolCall | None]
        if arg is not None:
            sent = _tool_call_from_send(arg)
            calls = [sent] if sent else [None]
        elif node in LLM_NODES or not pending:
            calls = [None]
        else:
            calls = [c for c in pending if c.name == node] or [None]
        for call in calls:
            tid = ids.task_id(checkpoint_id, node, call.id if call else None)
            done = tid in ran
            if not done:
                unfinished.add(node)
            tasks.append(
                Task(
                    id=tid,
                    name=node,
                    tool_call=call,
                    error=errors.get(tid),
                    interrupts=tuple(
                        i
                        for i in interrupts
                        if call is not None
                        and isinstance(i.value, dict)
                        and i.value.get("tool_call_id") == call.id
                    )
                    if interrupts
                    else (),
                    done=done,
                )
            )
    # A node is next unless all its tasks ran (a node with no task stays next).
    if unfinished.issuperset(node_names):
        still_next = node_names
    else:
        ran_nodes = {t.name for t in tasks} - unfinished
        still_next = tuple(n for n in node_names if n not in ran_nodes)
    return State(
        values=values,
        next=still_next,
        config=config,
        metadata=metadata,
        created_at=created_at,
        parent_config=parent_config,
        tasks=tuple(tasks),
        interrupts=tuple(interrupts),
        pending_tool_calls=tuple(pending),
        decisions=decisions,
    )


# Writes that mark a task without being its result.
_MARKS = frozenset({ERROR, INTERRUPT, DECISION})


def _as_interrupt(item: Any) -> Interrupt:
    if isinstance(item, Interrupt):
        return item
    value = getattr(item, "value", item)
    ident = getattr(item, "id", "") or ""
    return Interrupt(value=value, id=str(ident))


def _tool_call_from_send(arg: Any) -> ToolCall | None:
    raw = arg
    if isinstance(raw, dict) and "tool_call" in raw:
        raw = raw["tool_call"]
    if isinstance(raw, ToolCall):
        return raw
    if isinstance(raw, dict) and "name" in raw and "args" in raw:
        return ToolCall.from_any(raw)
    return None


def states_with_values(
    resolver: ValueResolver, tuples: Sequence[CheckpointTuple]
) -> list[State]:
    """Build full states for `tuples` (newest first), sharing rebuilt values.

    Values are rebuilt oldest first, so each reuses its parent's.
    """
    resolver.add(tuples)
    resolved = {t.checkpoint["id"]: resolver.values(t) for t in reversed(tuples)}
    return [
        build_state(t, values=resolved[t.checkpoint["id"]], resolver=resolver)
        for t in tuples
    ]


def history(
    saver: BaseSaver,
    thread_id: str,
    *,
    limit: int | None,
    before: str | None,
    values: bool,
    checkpoint_ns: str = "",
) -> list[State]:
    from agentmatic.checkpoint.base import thread_config

    config = thread_config(thread_id, checkpoint_ns=checkpoint_ns)
    before_config = thread_config(thread_id, before, checkpoint_ns) if before else None
    resolver = ValueResolver(saver, thread_id, checkpoint_ns)
    tuples = list(saver.list(config, before=before_config, limit=limit))
    if values:
        return states_with_values(resolver, tuples)
    resolver.add(tuples)
    return [build_state(t, values=None, resolver=resolver) for t in tuples]


def read_state(
    saver: BaseSaver, thread_id: str, checkpoint_id: str | None, *, values: bool
) -> State | None:
    from agentmatic.checkpoint.base import thread_config

    tup = saver.get_tuple(thread_config(thread_id, checkpoint_id))
    if tup is None:
        return None
    resolver = ValueResolver(
        saver, thread_id, tup.config["configurable"].get("checkpoint_ns", "")
    )
    resolver.add([tup])
    vals = resolver.values(tup) if values else None
    return build_state(tup, values=vals, resolver=resolver)


def encode_cursor(updated_at: str, thread_id: str) -> str:
    raw = json.dumps([updated_at, thread_id]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_cursor(cursor: str) -> tuple[str, str]:
    """Return the position a cursor from `encode_cursor` names, or raise."""
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"malformed thread cursor {cursor!r}") from exc
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, str) for v in value)
    ):
        raise ValueError(f"malformed thread cursor {cursor!r}")
    return value[0], value[1]


def list_threads_by_scan(
    saver: BaseSaver, *, agent: str | None, limit: int, cursor: str | None
) -> ThreadPage:
    """List threads by reading every thread's ends; backends override this."""
    from agentmatic.checkpoint.base import thread_config, thread_info_from_tuple

    infos: list[ThreadInfo] = []
    for thread_id in saver.thread_ids():
        try:
            tuples = list(saver.list(thread_config(thread_id)))
        except SerializationError as exc:
            # One unreadable thread must not hide every other one.
            log.warning("thread %s is unreadable and left out: %s", thread_id, exc)
            continue
        if not tuples:
            continue
        first_meta = dict(tuples[-1].metadata or {})
        first_meta["created_at"] = tuples[-1].checkpoint.get("ts")
        head = tuples[0]
        state = build_state(head, values=None, resolver=_resolver_for(saver, tuples))
        info = thread_info_from_tuple(head, first_meta, state.next, len(tuples))
        if agent is not None and info.agent != agent:
            continue
        infos.append(info)
    infos.sort(key=lambda i: (i.updated_at or "", i.thread_id), reverse=True)
    if cursor:
        after = decode_cursor(cursor)
        infos = [i for i in infos if (i.updated_at or "", i.thread_id) < after]
    page = infos[:limit]
    next_cursor = None
    if len(infos) > limit and page:
        next_cursor = encode_cursor(page[-1].updated_at or "", page[-1].thread_id)
    return ThreadPage(threads=page, next_cursor=next_cursor)


def _resolver_for(saver: BaseSaver, tuples: list[CheckpointTuple]) -> ValueResolver:
    tid = tuples[0].config["configurable"]["thread_id"]
    resolver = ValueResolver(saver, tid)
    resolver.add(tuples)
    return resolver


def last_ai_message(messages: Sequence[BaseMessage]) -> AIMessage | None:
    for msg in reversed(messages):
        if isinstance(msg, AIMessage):
            return msg
    return None
