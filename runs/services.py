"""The console's spine: the saver, the agents, and the runner that executes runs.

A run is recorded (`Run`, status queued) before anything executes; the runner
then claims it with a conditional update (queued → running) so a run is
executed once even when two workers see it. Embedded, runs execute in a thread
pool inside the server process; with `AGENTMATIC_RUNNER=celery` they go to
Celery workers, any of which may resume any thread (the saver's lease keeps a
thread from running twice at once). `AGENTMATIC_RUNNER=inline` executes a run
in the caller, at once (tests and commands).

Every change of a run's status sends `run_changed` (sender `Run`, with `run`
and the `state` the run stopped at, or None), so other apps (the approval
queue, decision receipts) follow runs without the runner knowing them.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.dispatch import Signal
from django.utils import timezone

from agentmatic import Agent, State
from agentmatic.checkpoint.base import BaseSaver
from agentmatic.errors import AgentmaticError
from runs.models import Run, RunStatus, ThreadRecord

log = logging.getLogger(__name__)

AgentFactory = Callable[[BaseSaver], Agent]

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None

# Sent with `run` and `state` (the State the run stopped at, or None) each time
# a run's status changes: running, then waiting, finished or failed.
run_changed = Signal()


# -- the saver -------------------------------------------------------------


@cache
def get_saver() -> BaseSaver:
    """Return the configured checkpoint saver (one per process)."""
    store = settings.AGENTMATIC_CHECKPOINT_STORE
    kind, location = store.kind, store.location
    if kind == "memory":
        from agentmatic.checkpoint import MemorySaver

        return MemorySaver()
    if kind == "sqlite":
        from agentmatic.checkpoint import SQLiteSaver

        Path(location).parent.mkdir(parents=True, exist_ok=True)
        return SQLiteSaver(location)
    if kind == "postgresql":
        from agentmatic.checkpoint import PostgresSaver

        saver = PostgresSaver(location)
        saver.setup()
        return saver
    if kind == "redis":
        from agentmatic.checkpoint import RedisSaver

        return RedisSaver(url=location)
    if kind == "s3":
        from agentmatic.checkpoint import S3Saver

        return S3Saver(bucket=location, prefix=store.prefix)
    raise AgentmaticError(f"unknown checkpoint store {kind!r}")


@cache
def readonly_savers() -> dict[str, BaseSaver]:
    """Return a read-only saver for each extra checkpoint file, by file name."""
    from agentmatic.checkpoint import SQLiteSaver

    out: dict[str, BaseSaver] = {}
    for path in settings.AGENTMATIC_READONLY_FILES:
        out[Path(path).name] = SQLiteSaver(str(path), readonly=True)
    return out


def reset_caches() -> None:
    """Forget the savers and agents (tests change settings between cases)."""
    get_saver.cache_clear()
    readonly_savers.cache_clear()
    get_agent.cache_clear()


# -- the agents ------------------------------------------------------------


def agent_factories() -> dict[str, AgentFactory]:
    """Return the registered agents: `AGENTMATIC_AGENTS` maps names to factories."""
    out: dict[str, AgentFactory] = {}
    for name, path in settings.AGENTMATIC_AGENTS.items():
        module, _, attr = path.partition(":")
        out[name] = getattr(importlib.import_module(module), attr)
    return out


@cache
def get_agent(name: str) -> Agent | None:
    """Return the registered agent of this name on the configured saver, or None."""
    factory = agent_factories().get(name)
    return factory(get_saver()) if factory else None


# -- live events -----------------------------------------------------------


def thread_group(thread_id: str) -> str:
    """Return the channel-layer group for a thread (group names are ASCII only)."""
    return "thread." + hashlib.sha256(thread_id.encode()).hexdigest()[:24]


APPROVALS_GROUP = "approvals"


def publish(thread_id: str, event: dict[str, Any]) -> None:
    """Tell the thread's and the queue's watchers that something changed."""
    layer = get_channel_layer()
    if layer is None:
        return
    message = {"type": "run.event", "thread_id": thread_id, **event}
    try:
        async_to_sync(layer.group_send)(thread_group(thread_id), message)
        async_to_sync(layer.group_send)(APPROVALS_GROUP, message)
    except Exception:  # a missing listener must never fail a run
        log.warning(
            "could not publish an event for thread %s", thread_id, exc_info=True
        )


# -- recording runs --------------------------------------------------------


def _label(user: Any) -> str:
    return str(getattr(user, "username", "") or user or "system")


def start_run(
    agent: str,
    thread_id: str,
    input: dict[str, Any],
    user: Any,
    *,
    inline: bool = False,
) -> Run:
    """Queue a run that starts (or continues) a thread with new input.

    With ``inline`` the run executes here and now instead of on the runner.
    """
    run = Run.objects.create(
        thread_id=thread_id,
        agent=agent,
        input=input,
        started_by=user if getattr(user, "pk", None) else None,
        started_by_label=_label(user),
    )
    _touch_thread(thread_id, agent, RunStatus.QUEUED, started_by=_label(user))
    submit(run, inline=inline)
    return run


def resume_run(
    thread_id: str,
    agent: str,
    user: Any,
    checkpoint_id: str = "",
    *,
    label: str = "",
    inline: bool = False,
    on_created: Callable[[Run], None] | None = None,
) -> Run:
    """Queue a run that resumes a thread.

    With ``checkpoint_id`` (the checkpoint a decision was taken on) the run
    resumes only if that is still the thread's newest checkpoint; if the
    thread moved on meanwhile it runs nothing. ``label`` names the actor in
    the checkpoints when it differs from the user ("first+second").
    ``on_created`` is called with the recorded run before it is submitted,
    so a caller can link rows to it before any listener hears of it.
    """
    run = Run.objects.create(
        thread_id=thread_id,
        agent=agent,
        checkpoint_id=checkpoint_id,
        started_by=user if getattr(user, "pk", None) else None,
        started_by_label=label or _label(user),
    )
    _touch_thread(thread_id, agent, RunStatus.QUEUED)
    if on_created is not None:
        on_created(run)
    submit(run, inline=inline)
    return run


def fork_run(
    *,
    agent: str,
    source_thread: str,
    checkpoint_id: str,
    new_thread: str,
    input: dict[str, Any] | None,
    user: Any,
    branch_name: str = "",
) -> Run:
    """Queue a run that forks `source_thread` at `checkpoint_id` into `new_thread`."""
    run = Run.objects.create(
        thread_id=new_thread,
        agent=agent,
        input=input,
        forked_from_thread=source_thread,
        forked_from_checkpoint=checkpoint_id,
        branch_name=branch_name,
        started_by=user if getattr(user, "pk", None) else None,
        started_by_label=_label(user),
    )
    _touch_thread(
        new_thread,
        agent,
        RunStatus.QUEUED,
        started_by=_label(user),
        forked_from=(source_thread, checkpoint_id),
    )
    submit(run)
    return run


def _touch_thread(
    thread_id: str,
    agent: str,
    status: str,
    *,
    started_by: str | None = None,
    forked_from: tuple[str, str] | None = None,
    step: int | None = None,
) -> None:
    defaults: dict[str, Any] = {
        "agent": agent,
        "status": status,
        "updated_at": timezone.now(),
    }
    if step is not None:
        defaults["last_step"] = step
    record, _created = ThreadRecord.objects.update_or_create(
        thread_id=thread_id, defaults=defaults
    )
    changed = []
    if started_by and not record.started_by:
        record.started_by = started_by
        changed.append("started_by")
    if forked_from and not record.forked_from_thread:
        record.forked_from_thread, record.forked_from_checkpoint = forked_from
        changed += ["forked_from_thread", "forked_from_checkpoint"]
    if changed:
        record.save(update_fields=changed)


# -- executing runs --------------------------------------------------------


def submit(run: Run, *, inline: bool = False) -> None:
    """Hand the run to the configured runner once the transaction commits."""
    run_id = str(run.id)
    if inline or settings.AGENTMATIC_RUNNER == "inline":
        execute_run(run_id)
    elif settings.AGENTMATIC_RUNNER == "celery":
        from runs.tasks import execute_run_task

        transaction.on_commit(lambda: execute_run_task.delay(run_id))
    else:
        transaction.on_commit(lambda: _thread_pool().submit(_execute_logged, run_id))


def _thread_pool() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=settings.AGENTMATIC_RUNNER_THREADS,
                thread_name_prefix="agentmatic-run",
            )
        return _pool


def _execute_logged(run_id: str) -> None:
    from django.db import close_old_connections

    try:
        execute_run(run_id)
    except Exception:
        log.exception("run %s crashed the runner", run_id)
    finally:
        close_old_connections()


def _reclaim_after() -> timedelta:
    return timedelta(seconds=getattr(settings, "AGENTMATIC_RUN_RECLAIM_SECONDS", 600))


def execute_run(run_id: str) -> str:
    """Execute a queued run once; return its final status.

    A run still "running" long after it started (`AGENTMATIC_RUN_RECLAIM_SECONDS`,
    600 by default) was left by a worker that died; a redelivered task takes
    it over and continues the thread from its last checkpoint.
    """
    now = timezone.now()
    prior = Run.objects.filter(id=run_id).values_list("status", flat=True).first()
    claimable = Q(status=RunStatus.QUEUED) | Q(
        status=RunStatus.RUNNING, started_at__lt=now - _reclaim_after()
    )
    claimed = (
        Run.objects.filter(claimable, id=run_id)
        .filter(status=prior)
        .update(status=RunStatus.RUNNING, started_at=now)
    )
    if claimed != 1:
        log.info("run %s was already claimed", run_id)
        return Run.objects.get(id=run_id).status
    takeover = prior == RunStatus.RUNNING
    if takeover:
        log.warning("run %s was left running by a dead worker; taking it over", run_id)
    run = Run.objects.get(id=run_id)
    _touch_thread(run.thread_id, run.agent, RunStatus.RUNNING)
    _announce(run, None)
    agent = get_agent(run.agent)
    try:
        if agent is None:
            raise AgentmaticError(f"no agent named {run.agent!r} is registered")
        if takeover and _has_written(agent, run):
            state = _continue(agent, run)
        else:
            state = _perform(agent, run)
    except Exception as exc:
        log.warning("run %s on thread %s failed: %s", run_id, run.thread_id, exc)
        run.status = RunStatus.FAILED
        run.error = f"{type(exc).__name__}: {exc}"
        run.finished_at = timezone.now()
        run.save(update_fields=["status", "error", "finished_at"])
        _touch_thread(run.thread_id, run.agent, RunStatus.FAILED)
        _announce(run, None)
        return RunStatus.FAILED
    run.status = status_of(state)
    run.checkpoint_id = state.checkpoint_id
    run.finished_at = timezone.now()
    # The status and what listeners record of it (the calls waiting for a
    # decision) commit together: nobody sees "waiting" without its calls.
    with transaction.atomic():
        run.save(update_fields=["status", "checkpoint_id", "finished_at"])
        _touch_thread(run.thread_id, run.agent, run.status, step=state.step)
        _notify(run, state)
    log.info("run %s on thread %s: %s", run_id, run.thread_id, run.status)
    publish(run.thread_id, {"status": run.status, "run_id": str(run.id)})
    return run.status


def _announce(run: Run, state: State | None) -> None:
    """Tell listeners in this process and watchers in browsers about the run."""
    _notify(run, state)
    publish(run.thread_id, {"status": run.status, "run_id": str(run.id)})


def _notify(run: Run, state: State | None) -> None:
    """Tell listeners in this process; a listener's failure never fails the run."""
    try:
        with transaction.atomic():
            run_changed.send(sender=Run, run=run, state=state)
    except Exception:
        log.exception("a run_changed listener failed for run %s", run.id)


def _perform(agent: Agent, run: Run) -> State:
    actor = run.started_by_label or "console"
    # The run's id goes into the checkpoints' metadata, linking them to it.
    configurable: dict[str, Any] = {"thread_id": run.thread_id, "run_id": str(run.id)}
    if run.forked_from_thread:
        configurable["checkpoint_id"] = run.forked_from_checkpoint
        return agent.invoke(
            _input(run.input), {"configurable": configurable}, actor=actor
        )
    if run.input is not None:
        return agent.invoke(
            _input(run.input), {"configurable": configurable}, actor=actor
        )
    if run.checkpoint_id:
        # A resume after a decision. If the thread moved on since, invoking
        # with this checkpoint would replay it as a branch, and invoking
        # without one would approve whatever waits now: run neither.
        head = agent.saver.head_id(run.thread_id)
        if head != run.checkpoint_id:
            raise AgentmaticError(
                f"thread {run.thread_id!r} moved on from checkpoint "
                f"{run.checkpoint_id!r} to {head!r} before this resume ran; "
                "nothing was run"
            )
        configurable["checkpoint_id"] = run.checkpoint_id
    return agent.invoke(None, {"configurable": configurable}, actor=actor)


def _has_written(agent: Agent, run: Run) -> bool:
    """Return whether the run stored checkpoints before its worker died."""
    recent = agent.saver.get_state_history(run.thread_id, limit=50, values=False)
    return any(state.metadata.get("run_id") == str(run.id) for state in recent)


def _continue(agent: Agent, run: Run) -> State:
    """Continue a run a dead worker left, from the thread's newest checkpoint.

    Its input is already stored, so it is not sent again. A resume would
    approve any gated call stored as waiting, so a thread that waits for a
    decision is left waiting.
    """
    config = {"configurable": {"thread_id": run.thread_id, "run_id": str(run.id)}}
    head = agent.get_state(config)
    undecided = [
        i
        for i in head.interrupts
        if isinstance(i.value, dict)
        and i.value.get("tool_call_id") not in head.decisions
    ]
    if undecided:
        return head
    return agent.invoke(None, config, actor=run.started_by_label or "console")


def _input(raw: dict[str, Any] | None) -> dict[str, Any] | None:
    """Turn a run's stored JSON input into the agent's input."""
    if raw is None:
        return None
    from agentmatic.messages import coerce_message

    out = dict(raw)
    if "messages" in out:
        out["messages"] = [coerce_message(m) for m in out["messages"]]
    return out


def status_of(state: State) -> str:
    """Return the run status a stopped state means."""
    if state.next and state.interrupts:
        return RunStatus.WAITING
    if state.next:
        return RunStatus.RUNNING
    return RunStatus.FINISHED


def now() -> datetime:
    return datetime.now(UTC)
