"""The agent: a model node (`agent`) and one node per tool, run by the superstep loop.

`Agent.builder(name).llm(...).tools([...]).checkpoint(saver)
.interrupt_before([...]).interrupt_before_when(tool=..., predicate=...).build()`

A run stops when no node is scheduled (finished) or when a gated tool call
waits for a decision (paused). Gates are evaluated once per checkpoint, on
arguments already validated and coerced; the result is stored with the
checkpoint (an `__interrupt__` write per gated call), so every process sees
the same pause. Decisions are stored the same way (a `__decision__` write per
call, first writer wins), so two reviewers can never both decide one call.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from agentmatic.checkpoint.base import (
    DECISION,
    ERROR,
    INTERRUPT,
    BaseSaver,
    CheckpointTuple,
    thread_config,
)
from agentmatic.checkpoint.memory import MemorySaver
from agentmatic.checkpoint.reading import START, build_state, next_nodes
from agentmatic.errors import (
    AgentChanged,
    AgentmaticError,
    CheckpointNotFound,
    InvalidToolArguments,
    ModelError,
    StaleDecision,
    ThreadConflict,
    ThreadExists,
    ThreadNotFound,
)
from agentmatic.llms.base import ChatModel
from agentmatic.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolCall,
    ToolMessage,
    coerce_message,
    unanswered_tool_calls,
)
from agentmatic.runtime import (
    MESSAGES,
    Cursor,
    Lease,
    MessageLog,
    PlannedTask,
    StepWrites,
    apply_writes,
    build_checkpoint,
    delta_counters,
    fold_finished_writes,
    load_cursor,
    needs_snapshot,
    now_iso,
    plan_tasks,
    put_checkpoint,
    run_parallel,
    state_from_cursor,
    task_id_for,
    trigger,
)
from agentmatic.state import Config, State
from agentmatic.tools import Tool, as_tool, jsonable

log = logging.getLogger(__name__)

LLM_NODE = "agent"
DEFAULT_LEASE_SECONDS = 300.0
DEFAULT_STEP_LIMIT = 10_000
# How long a decision or manual update waits for a run holding the thread.
DECISION_WAIT_SECONDS = 5.0
# Node names LangGraph-style readers take for the model; no tool may use them.
RESERVED_NAMES = frozenset({LLM_NODE, START, "model", "call_model", "llm", "chatbot"})
NOT_EXECUTED = (
    "Not executed: the request changed before this call ran. "
    "Propose it again if it is still needed."
)

Predicate = Callable[[dict[str, Any]], Any]


@dataclass(frozen=True)
class Gate:
    """A condition under which a tool call waits for a human.

    `reason` says why, for the people deciding: a text, or a function of the
    call's arguments returning one (for example the policy that matched). A
    predicate may also return a non-empty string, which is then the reason.
    """

    tool: str
    predicate: Predicate | None
    reason: str | Callable[[dict[str, Any]], str]

    def check(self, args: dict[str, Any]) -> str | None:
        """Return why the call must wait, or None when it may run."""
        try:
            if self.predicate is None:
                return self._reason(args)
            verdict = self.predicate(args)
            if isinstance(verdict, str) and verdict:
                return verdict
            return self._reason(args) if verdict else None
        except Exception as exc:
            return f"the approval rule failed ({type(exc).__name__}: {exc}); held"

    def _reason(self, args: dict[str, Any]) -> str:
        return str(self.reason(args)) if callable(self.reason) else self.reason


@dataclass
class _Run:
    """What one invocation carries through its supersteps."""

    thread_id: str
    ns: str
    who: str
    run_id: str
    limit: int
    lease: Lease | None

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError("recursion_limit must be at least 1")


class AwaitableConfig(dict):  # type: ignore[type-arg]
    """A config dict that can also be awaited (so `await update_state(...)` works)."""

    def __await__(self) -> Any:
        async def _self() -> AwaitableConfig:
            return self

        return _self().__await__()


def _actor_of(config: Config | None, actor: str | None) -> str:
    if actor:
        return str(actor)
    config = config or {}
    conf = config.get("configurable") or {}
    meta = config.get("metadata") or {}
    return str(conf.get("actor") or meta.get("actor") or "system")


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class AgentBuilder:
    """Collects what an agent is made of; `build()` returns the `Agent`."""

    def __init__(self, name: str) -> None:
        if not name:
            raise ValueError("an agent needs a name")
        self._name = name
        self._llm: ChatModel | None = None
        self._tools: list[Tool] = []
        self._saver: BaseSaver | None = None
        self._gates: list[Gate] = []
        self._prompt: str | None = None
        self._lease_seconds = DEFAULT_LEASE_SECONDS

    def llm(self, llm: ChatModel) -> AgentBuilder:
        self._llm = llm
        return self

    def tools(self, tools: Iterable[Callable[..., Any] | Tool]) -> AgentBuilder:
        self._tools.extend(as_tool(t) for t in tools)
        return self

    def prompt(self, text: str) -> AgentBuilder:
        """Set the system prompt, stored as the thread's first message."""
        self._prompt = text
        return self

    def checkpoint(self, saver: BaseSaver) -> AgentBuilder:
        self._saver = saver
        return self

    def interrupt_before(self, tools: Iterable[str]) -> AgentBuilder:
        for name in tools:
            self._gates.append(Gate(name, None, "always needs approval"))
        return self

    def interrupt_before_when(
        self,
        *,
        tool: str,
        predicate: Predicate,
        reason: str | Callable[[dict[str, Any]], str] | None = None,
    ) -> AgentBuilder:
        self._gates.append(
            Gate(tool, predicate, reason or f"approval rule for {tool} matched")
        )
        return self

    def lease_seconds(self, seconds: float) -> AgentBuilder:
        """How long a crashed run keeps others from resuming its thread."""
        self._lease_seconds = seconds
        return self

    def build(self) -> Agent:
        names = [t.name for t in self._tools]
        if len(set(names)) != len(names):
            raise ValueError(f"tool names must be unique: {names}")
        clash = sorted(RESERVED_NAMES.intersection(names))
        if clash:
            raise ValueError(
                f"a tool cannot be named {clash[0]!r}: readers take that name "
                "for the model's node"
            )
        for gate in self._gates:
            if gate.tool not in names:
                raise ValueError(f"gate names tool {gate.tool!r}, which is not a tool")
        return Agent(
            name=self._name,
            llm=self._llm or _default_model(),
            tools=self._tools,
            saver=self._saver or MemorySaver(),
            gates=self._gates,
            prompt=self._prompt,
            lease_seconds=self._lease_seconds,
        )


class Agent:
    """A built agent. Every sync method has an `a`-prefixed async twin."""

    def __init__(
        self,
        *,
        name: str,
        llm: ChatModel,
        tools: Sequence[Tool],
        saver: BaseSaver,
        gates: Sequence[Gate],
        prompt: str | None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> None:
        self.name = name
        self.llm = llm
        self.tools = {t.name: t for t in tools}
        self.saver = saver
        self.gates = list(gates)
        self.prompt = prompt
        self.lease_seconds = lease_seconds

    @staticmethod
    def builder(name: str) -> AgentBuilder:
        return AgentBuilder(name)

    @property
    def version(self) -> str:
        """A digest of the tools' names and schemas, the model and the prompt."""
        raw = json.dumps(
            {
                "tools": {n: t.parameters for n, t in sorted(self.tools.items())},
                "model": self.llm.identity,
                "prompt": self.prompt,
            },
            sort_keys=True,
            default=str,
        ).encode()
        return hashlib.sha256(raw).hexdigest()[:16]

    # -- reading ---------------------------------------------------------------

    def get_state(self, config: Config) -> State:
        thread_id, ns, checkpoint_id = _parts(config)
        tup = self.saver.get_tuple(thread_config(thread_id, checkpoint_id, ns))
        if tup is None:
            if checkpoint_id:
                raise CheckpointNotFound(thread_id, checkpoint_id)
            raise ThreadNotFound(thread_id)
        return state_from_cursor(load_cursor(self.saver, tup))

    def get_state_history(
        self,
        config: Config | None = None,
        *,
        thread_id: str | None = None,
        limit: int | None = None,
        before: str | Config | None = None,
    ) -> list[State]:
        if thread_id is None:
            if config is None:
                raise ValueError("pass config or thread_id")
            thread_id = _parts(config)[0]
        before_id = (
            before["configurable"]["checkpoint_id"]
            if isinstance(before, dict)
            else before
        )
        return self.saver.get_state_history(thread_id, limit=limit, before=before_id)

    # -- running ---------------------------------------------------------------

    def invoke(
        self, input: Any, config: Config | None = None, *, actor: str | None = None
    ) -> State:
        """Run the thread until it finishes or waits; `input=None` resumes it."""
        if not config:
            raise ValueError("invoke needs config={'configurable': {'thread_id': ...}}")
        thread_id, ns, checkpoint_id = _parts(config)
        who = _actor_of(config, actor)
        run_id = str((config.get("configurable") or {}).get("run_id") or uuid.uuid4())
        limit = int(config.get("recursion_limit") or DEFAULT_STEP_LIMIT)
        with self._lease(thread_id) as lease:
            run = _Run(thread_id, ns, who, run_id, limit, lease)
            assert run.lease is not None
            # Read the head only once the lease is held: a head read before
            # could be one another process has since moved past.
            head = self.saver.get_tuple(thread_config(thread_id, None, ns))
            if checkpoint_id and (head is None or not self._in_thread(config)):
                return self._fork(input, checkpoint_id, run, head)
            if head is None:
                if input is None:
                    raise ThreadNotFound(thread_id)
                return self._start(None, input, run, expected_head=None)
            head_id = head.checkpoint["id"]
            if checkpoint_id is None or checkpoint_id == head_id:
                if input is None:
                    return self._loop(load_cursor(self.saver, head), run, resume=True)
                return self._start(head, input, run, expected_head=head_id)
            # An older checkpoint of this thread: a branch inside the thread.
            source = self.saver.get_tuple(thread_config(thread_id, checkpoint_id, ns))
            if source is None:
                raise CheckpointNotFound(thread_id, checkpoint_id)
            if input is None:
                return self._replay(source, head, run)
            return self._start(source, input, run, expected_head=head_id)

    @contextlib.contextmanager
    def _lease(self, thread_id: str, *, wait: float = 0.0) -> Iterator[Lease]:
        """Hold the thread's lease, waiting up to `wait` seconds for it."""
        lease = Lease(self.saver, thread_id, _owner(), self.lease_seconds)
        deadline = time.monotonic() + wait
        while not self.saver.acquire_lease(thread_id, lease.owner, lease.ttl):
            if time.monotonic() >= deadline:
                raise ThreadConflict(
                    thread_id, "another process is running this thread; try again"
                )
            time.sleep(0.05)
        try:
            with lease.heartbeat():
                yield lease
        finally:
            lease.release()

    async def ainvoke(
        self, input: Any, config: Config | None = None, *, actor: str | None = None
    ) -> State:
        return await asyncio.to_thread(self.invoke, input, config, actor=actor)

    def _in_thread(self, config: Config) -> bool:
        thread_id, ns, checkpoint_id = _parts(config)
        return (
            self.saver.get_tuple(thread_config(thread_id, checkpoint_id, ns))
            is not None
        )

    def _start(
        self,
        parent: CheckpointTuple | None,
        input: Any,
        run: _Run,
        *,
        expected_head: str | None,
    ) -> State:
        """Store an input checkpoint on `parent` and run from it."""
        payload = _normalize_input(input)
        cursor = load_cursor(self.saver, parent) if parent else None
        if cursor is not None:
            fold_finished_writes(cursor)
        base = parent.checkpoint if parent else None
        messages = list(cursor.messages.items) if cursor else []
        # New input starts from START: whatever the parent had scheduled is dropped
        # (waiting calls are answered as not executed by the start node).
        pending_triggers = [
            ch
            for ch in (base or {}).get("channel_values") or {}
            if ch.startswith("branch:to:")
        ]
        checkpoint = build_checkpoint(
            base,
            updates={START: payload},
            consumed=pending_triggers,
            seen={"__input__": {}},
            messages=messages,
            snapshot=bool(messages),
            after=expected_head,
        )
        step = (cursor.step + 1) if cursor else -1
        metadata = self._metadata("input", step, run.who, run.run_id, first=True)
        tup = put_checkpoint(
            self.saver,
            run.thread_id,
            run.ns,
            parent.checkpoint["id"] if parent else None,
            checkpoint,
            metadata,
            expected_head=expected_head,
        )
        log.info("thread %s: run %s started by %s", run.thread_id, run.run_id, run.who)
        started = Cursor(
            tup=tup,
            messages=MessageLog(messages),
            other=dict(cursor.other) if cursor else {},
        )
        return self._loop(started, run, resume=False)

    def _replay(
        self, source: CheckpointTuple, head: CheckpointTuple, run: _Run
    ) -> State:
        """Copy an older checkpoint to the thread's head and run from the copy."""
        source_id = source.checkpoint["id"]
        cursor = load_cursor(self.saver, source)
        checkpoint = _copy_checkpoint(
            source.checkpoint, cursor.messages.items, after=head.checkpoint["id"]
        )
        metadata = self._metadata("fork", cursor.step, run.who, run.run_id, first=True)
        metadata["replay_of"] = source_id
        tup = put_checkpoint(
            self.saver,
            run.thread_id,
            run.ns,
            source_id,
            checkpoint,
            metadata,
            expected_head=head.checkpoint["id"],
        )
        log.info("thread %s: replay from %s", run.thread_id, source_id)
        fresh = Cursor(tup=tup, messages=cursor.messages, other=cursor.other)
        return self._loop(fresh, run, resume=False)

    def _fork(
        self,
        input: Any,
        checkpoint_id: str,
        run: _Run,
        head: CheckpointTuple | None,
    ) -> State:
        """Start a new thread from another thread's checkpoint."""
        if head is not None:
            raise ThreadExists(run.thread_id)
        source = self.saver.find_checkpoint(checkpoint_id)
        if source is None:
            raise CheckpointNotFound(run.thread_id, checkpoint_id)
        src = source.config["configurable"]
        cursor = load_cursor(self.saver, source)
        checkpoint = _copy_checkpoint(source.checkpoint, cursor.messages.items)
        metadata = self._metadata("fork", cursor.step, run.who, run.run_id, first=True)
        metadata["forked_from"] = {
            "thread_id": src["thread_id"],
            "checkpoint_id": src["checkpoint_id"],
        }
        tup = put_checkpoint(
            self.saver,
            run.thread_id,
            run.ns,
            None,
            checkpoint,
            metadata,
            expected_head=None,
        )
        log.info(
            "thread %s: forked from %s at %s",
            run.thread_id,
            src["thread_id"],
            src["checkpoint_id"],
        )
        if input is None:
            fresh = Cursor(tup=tup, messages=cursor.messages, other=cursor.other)
            return self._loop(fresh, run, resume=False)
        return self._start(tup, input, run, expected_head=tup.checkpoint["id"])

    def _metadata(
        self, source: str, step: int, who: str, run_id: str, *, first: bool = False
    ) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "source": source,
            "step": step,
            "parents": {},
            "actor": who,
            "run_id": run_id,
        }
        if first:
            meta["agent"] = self.name
            meta["started_by"] = who
            meta["agent_version"] = self.version
        return meta

    # -- the loop ---------------------------------------------------------------

    def _loop(self, cursor: Cursor, run: _Run, *, resume: bool) -> State:
        """Run supersteps from `cursor` until nothing is scheduled or a gate waits."""
        steps = 0
        first = True
        while True:
            tasks = plan_tasks(cursor, set(self.tools))
            if not tasks:
                log.info("thread %s: run %s finished", run.thread_id, run.run_id)
                return state_from_cursor(cursor)
            if steps >= run.limit:
                raise AgentmaticError(
                    f"thread {run.thread_id!r}: stopped after {run.limit} steps "
                    "(raise recursion_limit in the config to allow more)"
                )
            if first and resume:
                self._check_agent_fits(run.thread_id, cursor, tasks)
            decisions = self._decisions(
                cursor, tasks, implicit_approval=first and resume, who=run.who
            )
            if decisions is None:
                log.info(
                    "thread %s: run %s paused for approval", run.thread_id, run.run_id
                )
                return self._paused_state(cursor)
            first = False
            cursor = self._superstep(cursor, tasks, decisions, run)
            steps += 1

    def _paused_state(self, cursor: Cursor) -> State:
        tup = self.saver.get_tuple(cursor.tup.config) or cursor.tup
        return build_state(tup, values=cursor.values())

    def _check_agent_fits(
        self, thread_id: str, cursor: Cursor, tasks: Sequence[PlannedTask]
    ) -> None:
        """Refuse to resume a call this agent can no longer run as it was proposed."""
        for task in tasks:
            call = task.tool_call
            if call is None:
                continue
            tool = self.tools.get(call.name)
            if tool is None:
                raise AgentChanged(
                    thread_id,
                    f"the waiting call {call.id!r} needs tool "
                    f"{call.name!r}, which this agent no longer has",
                )
            try:
                tool.validate(call.args)
            except InvalidToolArguments as exc:
                raise AgentChanged(
                    thread_id,
                    f"tool {call.name!r} changed its schema and the "
                    f"waiting call no longer fits: {exc.detail} ({exc.field})",
                ) from None

    def _gate_reason(self, call: ToolCall) -> str | None:
        gates = [g for g in self.gates if g.tool == call.name]
        if not gates:
            return None
        tool = self.tools[call.name]
        try:
            args = tool.validate(call.args)
        except InvalidToolArguments as exc:
            return f"arguments failed validation ({exc.field}: {exc.detail}); held"
        reasons = [r for g in gates if (r := g.check(copy.deepcopy(args))) is not None]
        return "; ".join(reasons) if reasons else None

    def _decisions(
        self,
        cursor: Cursor,
        tasks: Sequence[PlannedTask],
        *,
        implicit_approval: bool,
        who: str,
    ) -> dict[str, dict[str, Any]] | None:
        """Return the decision for each gated call, or None to pause.

        Gates are evaluated once per checkpoint and the result is stored; a
        resume of the newest checkpoint approves the calls still undecided.
        """
        stored = cursor.writes_by_task()
        interrupts: dict[str, dict[str, Any]] = {}
        decisions: dict[str, dict[str, Any]] = {}
        for writes in stored.values():
            for channel, value in writes:
                if channel == INTERRUPT and isinstance(value, dict):
                    interrupts[str(value.get("tool_call_id"))] = value
                elif channel == DECISION and isinstance(value, dict):
                    decisions[str(value.get("tool_call_id"))] = value
        if not interrupts:
            if not self._gate(cursor, tasks):
                return decisions
            # A fresh pause: nobody has seen these calls yet, so none is approved.
            return None
        undecided = [cid for cid in interrupts if cid not in decisions]
        if undecided and not implicit_approval:
            return None
        for cid in undecided:
            decisions[cid] = {
                "tool_call_id": cid,
                "kind": "approve",
                "actor": who,
                "reason": "resumed",
            }
        return decisions

    def _gate(self, cursor: Cursor, tasks: Sequence[PlannedTask]) -> bool:
        """Evaluate the gates of a step's tool calls; store and report any pause."""
        paused = False
        for task in tasks:
            call = task.tool_call
            if call is None:
                continue
            reason = self._gate_reason(call)
            if reason is None:
                continue
            paused = True
            record = {
                "tool_call_id": call.id,
                "tool": call.name,
                "args": jsonable(call.args),
                "reason": reason,
            }
            self.saver.put_writes(cursor.tup.config, [(INTERRUPT, record)], task.id)
        return paused

    def _superstep(
        self,
        cursor: Cursor,
        tasks: Sequence[PlannedTask],
        decisions: dict[str, dict[str, Any]],
        run: _Run,
    ) -> Cursor:
        thread_id, ns, who, run_id = run.thread_id, run.ns, run.who, run.run_id
        stored = cursor.writes_by_task()
        finished: list[StepWrites] = []
        todo: list[PlannedTask] = []
        for task in tasks:
            own = [
                (c, v)
                for c, v in stored.get(task.id, [])
                if c not in (ERROR, INTERRUPT, DECISION)
            ]
            if own:
                finished.append(StepWrites(task, own))
            else:
                todo.append(task)
        values = cursor.values()
        values[START] = (cursor.checkpoint.get("channel_values") or {}).get(START)

        # A step with one task to run stores its writes with the checkpoint, in
        # one commit where the saver can; with several, each task's writes are
        # stored the moment it finishes, so a crash never re-runs a finished one.
        alone = len(todo) == 1

        def execute(task: PlannedTask) -> list[tuple[str, Any]]:
            writes = self._run_task(task, values, decisions, thread_id)
            if not alone:
                self.saver.put_writes(cursor.tup.config, writes, task.id, task.path)
            return writes

        lease = run.lease
        assert lease is not None
        lease.check()
        results, failure = run_parallel(todo, execute)
        if failure is not None:
            failed = [t for t in todo if all(r.task.id != t.id for r in results)]
            for task in failed:
                self.saver.put_writes(
                    cursor.tup.config,
                    [(ERROR, f"{type(failure).__name__}: {failure}")],
                    task.id,
                    task.path,
                )
            log.error("thread %s: task failed: %s", thread_id, failure)
            raise failure
        finished.extend(results)
        metadata_before = cursor.metadata
        updates, consumed, seen, wrote = apply_writes(cursor, finished)
        snapshot = needs_snapshot(metadata_before, wrote)
        checkpoint = build_checkpoint(
            cursor.checkpoint,
            updates=updates,
            consumed=consumed,
            seen=seen,
            messages=cursor.messages.items,
            snapshot=snapshot,
        )
        # Nothing is stored if another process took the thread over meanwhile.
        lease.check()
        actors = sorted({str(d["actor"]) for d in decisions.values() if d.get("actor")})
        metadata: dict[str, Any] = {
            "source": "loop",
            "step": cursor.step + 1,
            "parents": {},
            "actor": ", ".join(actors) if actors else who,
            "run_id": run_id,
            "writes": {r.task.node: len(r.writes) for r in finished},
        }
        if decisions:
            metadata["decisions"] = [
                {k: d.get(k) for k in ("tool_call_id", "kind", "actor", "reason")}
                for d in decisions.values()
            ]
        counters = delta_counters(metadata_before, wrote, snapshot)
        if counters:
            metadata["counters_since_delta_snapshot"] = counters
        step_writes = [(r.task.id, r.task.path, r.writes) for r in results if alone]
        tup = put_checkpoint(
            self.saver,
            thread_id,
            ns,
            cursor.id,
            checkpoint,
            metadata,
            expected_head=cursor.id,
            step_writes=step_writes,
        )
        return Cursor(tup=tup, messages=cursor.messages, other=cursor.other)

    # -- nodes ------------------------------------------------------------------

    def _run_task(
        self,
        task: PlannedTask,
        values: dict[str, Any],
        decisions: dict[str, dict[str, Any]],
        thread_id: str,
    ) -> list[tuple[str, Any]]:
        if task.node == START:
            return self._start_node(values)
        if task.node == LLM_NODE:
            return self._model_node(values)
        assert task.tool_call is not None
        return self._tool_node(
            task.tool_call, decisions.get(task.tool_call.id), thread_id
        )

    def _start_node(self, values: dict[str, Any]) -> list[tuple[str, Any]]:
        payload = values.get(START) or {}
        messages: list[BaseMessage] = list(values.get(MESSAGES) or [])
        writes: list[tuple[str, Any]] = []
        new_messages = [coerce_message(m) for m in payload.get(MESSAGES) or []]
        if new_messages:
            if self.prompt and not any(isinstance(m, SystemMessage) for m in messages):
                writes.append((MESSAGES, [SystemMessage(self.prompt).with_id()]))
            pending = unanswered_tool_calls(messages)
            if pending:
                writes.append((MESSAGES, _not_executed(pending)))
            writes.append((MESSAGES, [m.with_id() for m in new_messages]))
        for key, value in payload.items():
            if key != MESSAGES:
                writes.append((key, value))
        writes.append((trigger(LLM_NODE), None))
        return writes

    def _model_node(self, values: dict[str, Any]) -> list[tuple[str, Any]]:
        messages = list(values.get(MESSAGES) or [])
        specs = [t.spec for t in self.tools.values()]
        try:
            reply = self.llm.generate(messages, specs)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"model call failed: {type(exc).__name__}: {exc}") from exc
        reply.with_id()
        writes: list[tuple[str, Any]] = [(MESSAGES, [reply])]
        unknown = [c for c in reply.tool_calls if c.name not in self.tools]
        if unknown:
            writes.append(
                (
                    MESSAGES,
                    [
                        ToolMessage(
                            content=f"Error: there is no tool named {c.name!r}.",
                            tool_call_id=c.id,
                            name=c.name,
                            status="error",
                        ).with_id()
                        for c in unknown
                    ],
                )
            )
        targets = list(
            dict.fromkeys(c.name for c in reply.tool_calls if c.name in self.tools)
        )
        for name in targets:
            writes.append((trigger(name), None))
        if unknown and not targets:
            writes.append((trigger(LLM_NODE), None))
        return writes

    def _tool_node(
        self, call: ToolCall, decision: dict[str, Any] | None, thread_id: str
    ) -> list[tuple[str, Any]]:
        tool = self.tools[call.name]
        back = (trigger(LLM_NODE), None)
        if decision and decision.get("kind") == "reject":
            reason = decision.get("reason") or "no reason given"
            msg = ToolMessage(
                content=f"The reviewer rejected this call. Reason: {reason}",
                tool_call_id=call.id,
                name=call.name,
                status="error",
            )
            return [(MESSAGES, [msg.with_id()]), back]
        raw_args = call.args
        key = f"{thread_id}:{call.id}"
        if decision and decision.get("kind") == "modify":
            raw_args = decision.get("args") or raw_args
            # Changed arguments are a different request to the outside system.
            digest = hashlib.sha256(
                json.dumps(raw_args, sort_keys=True, default=str).encode()
            ).hexdigest()[:12]
            key = f"{key}:{digest}"
        try:
            args = tool.validate(raw_args)
            result = tool.call(args, key)
        except Exception as exc:
            log.warning(
                "thread %s: tool %s raised %s", thread_id, call.name, type(exc).__name__
            )
            msg = ToolMessage(
                content=f"Error: {type(exc).__name__}: {exc}",
                tool_call_id=call.id,
                name=call.name,
                status="error",
            )
            return [(MESSAGES, [msg.with_id()]), back]
        msg = ToolMessage(
            content=_result_text(result), tool_call_id=call.id, name=call.name
        )
        return [(MESSAGES, [msg.with_id()]), back]

    # -- human in the loop ------------------------------------------------------

    def approve(
        self, config: Config, *, actor: str, tool_call_id: str | None = None
    ) -> State:
        return self._decide(config, "approve", actor, tool_call_id)

    def reject(
        self,
        config: Config,
        *,
        reason: str,
        actor: str,
        tool_call_id: str | None = None,
    ) -> State:
        if not reason or not reason.strip():
            raise ValueError("a rejection needs a reason")
        return self._decide(config, "reject", actor, tool_call_id, reason=reason)

    def modify(
        self,
        config: Config,
        *,
        args: dict[str, Any],
        actor: str,
        tool_call_id: str | None = None,
    ) -> State:
        return self._decide(config, "modify", actor, tool_call_id, args=args)

    async def aapprove(
        self, config: Config, *, actor: str, tool_call_id: str | None = None
    ) -> State:
        return await asyncio.to_thread(
            self.approve, config, actor=actor, tool_call_id=tool_call_id
        )

    async def areject(
        self,
        config: Config,
        *,
        reason: str,
        actor: str,
        tool_call_id: str | None = None,
    ) -> State:
        return await asyncio.to_thread(
            self.reject, config, reason=reason, actor=actor, tool_call_id=tool_call_id
        )

    async def amodify(
        self,
        config: Config,
        *,
        args: dict[str, Any],
        actor: str,
        tool_call_id: str | None = None,
    ) -> State:
        return await asyncio.to_thread(
            self.modify, config, args=args, actor=actor, tool_call_id=tool_call_id
        )

    def record_decision(
        self,
        config: Config,
        kind: str,
        actor: str,
        tool_call_id: str | None = None,
        *,
        reason: str | None = None,
        args: dict[str, Any] | None = None,
    ) -> tuple[State, bool]:
        """Store a decision on the waiting checkpoint without running anything.

        Return the state and whether every gated call of the step is decided.
        Raise `StaleDecision` when the checkpoint is no longer the newest or
        the call is not waiting (or was decided by someone else first), and
        `ThreadConflict` while a run holds the thread for longer than a moment.
        """
        thread_id = _parts(config)[0]
        with self._lease(thread_id, wait=DECISION_WAIT_SECONDS):
            return self._record_decision(
                config, kind, actor, tool_call_id, reason=reason, args=args
            )

    def _record_decision(
        self,
        config: Config,
        kind: str,
        actor: str,
        tool_call_id: str | None,
        *,
        reason: str | None,
        args: dict[str, Any] | None,
    ) -> tuple[State, bool]:
        thread_id, ns, checkpoint_id = _parts(config)
        if not actor or not str(actor).strip():
            raise ValueError("a decision needs the actor who made it")
        head = self.saver.get_tuple(thread_config(thread_id, None, ns))
        if head is None:
            raise ThreadNotFound(thread_id)
        head_id = head.checkpoint["id"]
        if checkpoint_id and checkpoint_id != head_id:
            raise StaleDecision(
                thread_id,
                checkpoint_id,
                "the run has moved on; decide on the newest checkpoint",
            )
        state = build_state(head, values=None)
        if not state.interrupts and state.pending_tool_calls:
            # Nobody has evaluated this checkpoint's gates yet (it was made by a
            # manual update or a crash): evaluate them now, once.
            cursor = load_cursor(self.saver, head)
            if self._gate(cursor, plan_tasks(cursor, set(self.tools))):
                head = self.saver.get_tuple(head.config) or head
                state = build_state(head, values=None)
        gated = {
            i.value["tool_call_id"]: i.value
            for i in state.interrupts
            if isinstance(i.value, dict) and "tool_call_id" in i.value
        }
        waiting = [c for c in gated if c not in state.decisions]
        if tool_call_id is None:
            if len(waiting) > 1:
                raise AgentmaticError(
                    f"thread {thread_id!r}: several calls wait ({', '.join(waiting)}); "
                    "pass tool_call_id"
                )
            if not waiting:
                raise StaleDecision(
                    thread_id, head_id, "no tool call is waiting for a decision"
                )
            tool_call_id = waiting[0]
        if tool_call_id not in gated:
            raise StaleDecision(
                thread_id, head_id, f"tool call {tool_call_id!r} is not waiting"
            )
        if tool_call_id in state.decisions:
            prior = state.decisions[tool_call_id]
            raise StaleDecision(
                thread_id,
                head_id,
                f"tool call {tool_call_id!r} was already decided "
                f"({prior.get('kind')} by {prior.get('actor')})",
            )
        call_name = gated[tool_call_id]["tool"]
        record: dict[str, Any] = {
            "tool_call_id": tool_call_id,
            "tool": call_name,
            "kind": kind,
            "actor": actor,
            "reason": reason,
            "at": now_iso(),
            "nonce": uuid.uuid4().hex,
        }
        if kind == "modify":
            tool = self.tools.get(call_name)
            if tool is None:
                raise AgentChanged(thread_id, f"tool {call_name!r} no longer exists")
            coerced = tool.validate(args if isinstance(args, dict) else {})
            record["args"] = jsonable(coerced)
            gate = self._gate_reason(
                ToolCall(name=call_name, args=record["args"], id=tool_call_id)
            )
            record["gate"] = gate
            # The reviewer answered the rule that stopped the call. New arguments
            # that trip a rule the proposal did not are gated again.
            held = set(str(gated[tool_call_id].get("reason") or "").split("; "))
            if gate and not set(gate.split("; ")) <= held:
                return self._regate(head, record), False
        task_id = task_id_for(head_id, call_name, tool_call_id)
        self.saver.put_writes(head.config, [(DECISION, record)], f"{task_id}:decision")
        # The first decision stored wins; a later one is ignored by the store.
        after = self.saver.get_tuple(head.config)
        assert after is not None
        now = build_state(after, values=None)
        stored = now.decisions.get(tool_call_id) or {}
        if stored.get("nonce") != record["nonce"]:
            raise StaleDecision(
                thread_id,
                head_id,
                f"tool call {tool_call_id!r} was already decided "
                f"({stored.get('kind')} by {stored.get('actor')})",
            )
        log.info(
            "thread %s: %s of %s recorded by %s", thread_id, kind, tool_call_id, actor
        )
        complete = all(c in now.decisions for c in gated)
        return now, complete

    def _regate(self, head: CheckpointTuple, record: dict[str, Any]) -> State:
        """Store the modified call as a new proposal and evaluate its gates."""
        conf = head.config["configurable"]
        cursor = load_cursor(self.saver, head)
        call_id = record["tool_call_id"]
        for msg in reversed(cursor.messages.items):
            if isinstance(msg, AIMessage) and any(
                c.id == call_id for c in msg.tool_calls
            ):
                changed = copy.copy(msg)
                changed.tool_calls = [
                    ToolCall(name=c.name, args=dict(record["args"]), id=c.id)
                    if c.id == call_id
                    else c
                    for c in msg.tool_calls
                ]
                cursor.messages.apply([[changed]])
                break
        checkpoint = build_checkpoint(
            head.checkpoint,
            updates={MESSAGES: True},
            consumed=(),
            seen={},
            messages=cursor.messages.items,
            snapshot=True,
            after=head.checkpoint["id"],
        )
        metadata = self._metadata(
            "update", cursor.step + 1, record["actor"], str(uuid.uuid4())
        )
        metadata["writes"] = {"modify": 1}
        metadata["decisions"] = [
            {
                k: record.get(k)
                for k in ("tool_call_id", "kind", "actor", "reason", "gate")
            }
        ]
        tup = put_checkpoint(
            self.saver,
            conf["thread_id"],
            conf.get("checkpoint_ns", ""),
            head.checkpoint["id"],
            checkpoint,
            metadata,
            expected_head=head.checkpoint["id"],
        )
        fresh = Cursor(tup=tup, messages=cursor.messages, other=cursor.other)
        self._gate(fresh, plan_tasks(fresh, set(self.tools)))
        log.info(
            "thread %s: modified call %s trips a new rule and waits again",
            conf["thread_id"],
            call_id,
        )
        return self._paused_state(fresh)

    def _decide(
        self,
        config: Config,
        kind: str,
        actor: str,
        tool_call_id: str | None,
        *,
        reason: str | None = None,
        args: dict[str, Any] | None = None,
    ) -> State:
        thread_id, ns, _ = _parts(config)
        run = _Run(thread_id, ns, actor, str(uuid.uuid4()), DEFAULT_STEP_LIMIT, None)
        with self._lease(thread_id, wait=DECISION_WAIT_SECONDS) as lease:
            run.lease = lease
            state, complete = self._record_decision(
                config, kind, actor, tool_call_id, reason=reason, args=args
            )
            head = self.saver.get_tuple(thread_config(thread_id, None, ns))
            assert head is not None
            if not complete or head.checkpoint["id"] != state.checkpoint_id:
                return state_from_cursor(load_cursor(self.saver, head))
            # Every gated call of the step is decided: run it, under this lease.
            return self._loop(load_cursor(self.saver, head), run, resume=True)

    # -- manual updates ----------------------------------------------------------

    def update_state(
        self,
        config: Config,
        values: dict[str, Any],
        *,
        as_node: str | None = None,
        actor: str | None = None,
    ) -> AwaitableConfig:
        """Store a checkpoint with these values changed; return its config.

        Works with and without `await`. A message added while tool calls wait
        first answers each of them with a "not executed" tool message, so the
        conversation stays valid and the model proposes again.
        """
        thread_id = _parts(config)[0]
        with self._lease(thread_id, wait=DECISION_WAIT_SECONDS):
            return self._update_state(config, values, as_node=as_node, actor=actor)

    def _update_state(
        self,
        config: Config,
        values: dict[str, Any],
        *,
        as_node: str | None,
        actor: str | None,
    ) -> AwaitableConfig:
        thread_id, ns, checkpoint_id = _parts(config)
        who = _actor_of(config, actor)
        head = self.saver.get_tuple(thread_config(thread_id, None, ns))
        if head is None:
            raise ThreadNotFound(thread_id)
        target = head
        if checkpoint_id and checkpoint_id != head.checkpoint["id"]:
            found = self.saver.get_tuple(thread_config(thread_id, checkpoint_id, ns))
            if found is None:
                raise CheckpointNotFound(thread_id, checkpoint_id)
            target = found
        cursor = load_cursor(self.saver, target)
        fold_finished_writes(cursor)
        pending = unanswered_tool_calls(cursor.messages.items)
        updates: dict[str, Any] = {}
        payload = _normalize_input(values)
        new_messages = [m.with_id() for m in payload.get(MESSAGES) or []]
        if new_messages:
            writes: list[BaseMessage] = []
            if (
                pending
                and as_node != LLM_NODE
                and not all(isinstance(m, ToolMessage) for m in new_messages)
            ):
                writes.extend(_not_executed(pending))
            writes.extend(new_messages)
            cursor.messages.apply([writes])
            updates[MESSAGES] = True
        for key, value in payload.items():
            if key != MESSAGES:
                cursor.other[key] = value
                updates[key] = value
        consumed = [
            ch
            for ch in (cursor.checkpoint.get("channel_values") or {})
            if ch.startswith("branch:to:") or ch == START
        ]
        for node in _route(cursor.messages.items, set(self.tools), as_node):
            updates[trigger(node)] = None
        checkpoint = build_checkpoint(
            cursor.checkpoint,
            updates=updates,
            consumed=consumed,
            seen={},
            messages=cursor.messages.items,
            snapshot=True,
            after=head.checkpoint["id"],
        )
        metadata = self._metadata("update", cursor.step + 1, who, str(uuid.uuid4()))
        metadata["writes"] = {as_node or "update": len(values)}
        saved = put_checkpoint(
            self.saver,
            thread_id,
            ns,
            target.checkpoint["id"],
            checkpoint,
            metadata,
            expected_head=head.checkpoint["id"],
        )
        log.info("thread %s: state updated by %s", thread_id, who)
        return AwaitableConfig(saved.config)

    async def aupdate_state(
        self,
        config: Config,
        values: dict[str, Any],
        *,
        as_node: str | None = None,
        actor: str | None = None,
    ) -> AwaitableConfig:
        return await asyncio.to_thread(
            self.update_state, config, values, as_node=as_node, actor=actor
        )

    async def aget_state(self, config: Config) -> State:
        return await asyncio.to_thread(self.get_state, config)

    async def aget_state_history(
        self,
        config: Config | None = None,
        *,
        thread_id: str | None = None,
        limit: int | None = None,
        before: str | Config | None = None,
    ) -> list[State]:
        return await asyncio.to_thread(
            lambda: self.get_state_history(
                config, thread_id=thread_id, limit=limit, before=before
            )
        )


def _default_model() -> ChatModel:
    from agentmatic.llms import default_model

    return default_model()


def _route(
    messages: Sequence[BaseMessage], tools: set[str], as_node: str | None
) -> list[str]:
    """Return the nodes that run after a manual update, as the graph would route."""
    if as_node is not None and as_node in tools:
        return [LLM_NODE]
    pending = unanswered_tool_calls(messages)
    if pending:
        return list(dict.fromkeys(c.name for c in pending if c.name in tools))
    if not messages:
        return []
    last = messages[-1]
    if isinstance(last, (HumanMessage, ToolMessage)):
        return [LLM_NODE]
    return []


def _result_text(result: Any) -> str:
    """Return a tool's result as the text the model reads (JSON when it can)."""
    if isinstance(result, str):
        return result
    try:
        return json.dumps(jsonable(result), ensure_ascii=False)
    except Exception:  # a result that is not JSON still ran: say what it was
        return str(result)


def _not_executed(calls: Sequence[ToolCall]) -> list[BaseMessage]:
    return [
        ToolMessage(
            content=NOT_EXECUTED, tool_call_id=c.id, name=c.name, status="error"
        ).with_id()
        for c in calls
    ]


def _copy_checkpoint(
    source: dict[str, Any],
    messages: Sequence[BaseMessage],
    *,
    after: str | None = None,
) -> dict[str, Any]:
    """Return a copy of a checkpoint with a new id and a full message snapshot."""
    from agentmatic import ids
    from agentmatic.checkpoint.serde import DeltaSnapshot

    values = {k: v for k, v in (source.get("channel_values") or {}).items()}
    if messages or MESSAGES in values:
        values[MESSAGES] = DeltaSnapshot(list(messages))
    return {
        "v": 4,
        "id": ids.checkpoint_id(after=after),
        "ts": now_iso(),
        "channel_values": values,
        "channel_versions": dict(source.get("channel_versions") or {}),
        "versions_seen": {
            k: dict(v) for k, v in (source.get("versions_seen") or {}).items()
        },
        "updated_channels": [],
    }


def _normalize_input(input: Any) -> dict[str, Any]:
    if isinstance(input, dict):
        out = dict(input)
        if MESSAGES in out:
            raw = out[MESSAGES]
            out[MESSAGES] = [
                coerce_message(m)
                for m in (raw if isinstance(raw, (list, tuple)) else [raw])
            ]
        return out
    if isinstance(input, (str, BaseMessage, tuple)):
        return {MESSAGES: [coerce_message(input)]}
    if isinstance(input, list):
        return {MESSAGES: [coerce_message(m) for m in input]}
    raise TypeError(f"cannot use {type(input).__name__} as input")


def _parts(config: Config) -> tuple[str, str, str | None]:
    from agentmatic.checkpoint.base import config_parts

    return config_parts(config)


__all__ = ["LLM_NODE", "Agent", "AgentBuilder", "AwaitableConfig", "Gate", "next_nodes"]

# Re-exported for readers of this module.
_ = (AIMessage,)
