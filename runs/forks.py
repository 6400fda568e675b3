"""Forking a thread from one of its checkpoints: `check_fork`, then `do_fork`.

A fork is a new thread that starts from a copy of the chosen checkpoint,
optionally with a new user message and an edited system prompt, and runs on
from there through the runner (`services.fork_run`). The system prompt is
edited by sending a system message with the same id as the conversation's
first one: the message list replaces a message whose id it already holds.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.utils.text import slugify

from agentmatic.errors import SerializationError
from agentmatic.state import State
from runs import services
from runs.models import Run, ThreadRecord
from runs.present import first_system_message
from runs.threads import ThreadSource, find_thread

log = logging.getLogger(__name__)

FORK_PERMISSION = "runs.fork_thread"
SUFFIX_BYTES = 3


class ForkRefused(Exception):
    """The fork cannot be made; the message says why, `field` names the input."""

    def __init__(self, message: str, *, field: str | None = None, status: int = 400):
        super().__init__(message)
        self.message = message
        self.field = field
        self.status = status


@dataclass(frozen=True)
class ForkPlan:
    source: ThreadSource
    state: State
    agent: str
    thread_id: str
    checkpoint_id: str


def check_fork(thread_id: str, checkpoint_id: str) -> ForkPlan:
    """Return what a fork of this checkpoint needs, or raise `ForkRefused`.

    Permission is the caller's to check first, so a user who may not fork
    learns nothing about the thread.
    """
    source = find_thread(thread_id)
    if source is None:
        raise ForkRefused(f"There is no thread {thread_id!r}.", status=404)
    if source.readonly:
        raise ForkRefused(
            f"This thread cannot be forked. {source.readonly_reason}", status=409
        )
    try:
        state = source.saver.get_state(thread_id, checkpoint_id)
    except SerializationError as exc:
        raise ForkRefused(
            f"This checkpoint cannot be forked: it cannot be read back ({exc}).",
            status=409,
        ) from exc
    if state is None or state.thread_id != thread_id:
        raise ForkRefused(
            f"Thread {thread_id!r} has no checkpoint {checkpoint_id!r}.",
            field="checkpoint_id",
            status=404,
        )
    agent = agent_of(source, thread_id, state)
    if not agent:
        raise ForkRefused(
            "This thread cannot be forked: its checkpoints do not name the agent "
            "that wrote them, so the console has nothing to run the branch with.",
            status=409,
        )
    if services.get_agent(agent) is None:
        raise ForkRefused(
            f"This thread cannot be forked: no agent named {agent!r} is "
            "registered with the console (AGENTMATIC_AGENTS), so nothing could "
            "run the branch.",
            status=409,
        )
    return ForkPlan(source, state, agent, thread_id, state.checkpoint_id)


def agent_of(source: ThreadSource, thread_id: str, state: State) -> str:
    """Return the name of the agent that wrote the thread, or ""."""
    record = ThreadRecord.objects.filter(thread_id=thread_id).first()
    if record is not None and record.agent:
        return record.agent
    named = state.metadata.get("agent")
    if named:
        return str(named)
    oldest = source.saver.get_state_history(thread_id, values=False)
    for older in reversed(oldest):
        if older.metadata.get("agent"):
            return str(older.metadata["agent"])
    return ""


def fork_input(
    state: State, *, message: str = "", system_prompt: str | None = None
) -> dict[str, Any] | None:
    """Return the fork's input (JSON, as a Run stores it), or None for none."""
    messages: list[dict[str, Any]] = []
    system = first_system_message(state)
    if system is not None and system_prompt is not None:
        edited = system_prompt.strip()
        if edited and edited != system.text.strip():
            messages.append({"type": "system", "content": edited, "id": system.id})
    if message.strip():
        messages.append({"type": "human", "content": message.strip()})
    return {"messages": messages} if messages else None


def new_thread_id(branch_name: str) -> str:
    """Return an unused thread id made of the branch name and a random suffix."""
    base = slugify(branch_name)[:60] or "branch"
    saver = services.get_saver()
    while True:
        candidate = f"{base}-{secrets.token_hex(SUFFIX_BYTES)}"
        taken = ThreadRecord.objects.filter(thread_id=candidate).exists()
        if not taken and saver.head_id(candidate) is None:
            return candidate


def do_fork(
    plan: ForkPlan,
    *,
    user: AbstractBaseUser | AnonymousUser,
    branch_name: str,
    message: str = "",
    system_prompt: str | None = None,
) -> Run:
    """Queue the run that creates the branch; return it."""
    new_thread = new_thread_id(branch_name)
    run = services.fork_run(
        agent=plan.agent,
        source_thread=plan.thread_id,
        checkpoint_id=plan.checkpoint_id,
        new_thread=new_thread,
        input=fork_input(plan.state, message=message, system_prompt=system_prompt),
        user=user,
        branch_name=branch_name,
    )
    log.info(
        "fork of thread %s at %s into %s queued by %s",
        plan.thread_id,
        plan.checkpoint_id,
        new_thread,
        getattr(user, "username", "?"),
    )
    return run
