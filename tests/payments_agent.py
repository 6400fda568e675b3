"""The seed's payments agent on any saver, driven from fresh processes.

``python -m tests.payments_agent COMMAND SAVER THREAD ARGS`` where SAVER is
``sqlite|<path>``, ``postgres|<url>``, ``redis|<url>|<prefix>`` or
``s3|<bucket>|<prefix>`` (S3 through the ``AWS_*`` environment the test
sets). Commands:

- ``start LEDGER``, ``resume LEDGER``, ``state LEDGER``: run or read the
  refund of order #42, appending refunds to the file LEDGER, and print one
  JSON line describing the state;
- ``race EXPECTED_HEAD AT``: at the Unix time AT, write one checkpoint that
  continues EXPECTED_HEAD and print ``ok`` or ``conflict``.

The cross-process tests start it with `run` and `spawn`, and share the
checks below, so every saver is held to the same ones.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

# The package imports a saver's client only when the saver is first named,
# so each process loads just its own and the racers start together.
import agentmatic.checkpoint as savers
from agentmatic import Agent, HumanMessage, ids
from agentmatic.checkpoint.base import BaseSaver, thread_config
from agentmatic.errors import ThreadConflict
from agentmatic.llms import OfflineRefundModel

ROOT = Path(__file__).resolve().parents[1]


def read_account(order: str) -> dict:
    """Look up the account that paid for an order.

    Args:
        order: the order number, like "#42"
    """
    return {"order": order, "account": "acct-7f3a"}


def transfer_funds(to: str, amount: float, idempotency_key: str) -> str:
    """Send a refund to an account.

    Args:
        to: the account id to pay
        amount: the amount in dollars
    """
    ledger = Path(LEDGER)
    with ledger.open("a") as fh:
        fh.write(
            json.dumps({"to": to, "amount": amount, "key": idempotency_key}) + "\n"
        )
    return f"Refund of ${amount:.2f} sent to {to}."


LEDGER = ""


def build(saver):
    return (
        Agent.builder("payments")
        .llm(OfflineRefundModel())
        .tools([read_account, transfer_funds])
        .checkpoint(saver)
        .interrupt_before_when(
            tool="transfer_funds", predicate=lambda args: args["amount"] >= 100
        )
        .build()
    )


def open_saver(spec: str) -> BaseSaver:
    kind, where, *prefix = spec.split("|")
    if kind == "sqlite":
        return savers.SQLiteSaver(where)
    if kind == "postgres":
        return savers.PostgresSaver(where)
    if kind == "redis":
        return savers.RedisSaver(where, prefix=prefix[0])
    return savers.S3Saver(bucket=where, prefix=prefix[0])


def race(saver: BaseSaver, thread_id: str, expected: str, at: float) -> str:
    """At the time at, write one checkpoint after expected; say if it won."""
    head = saver.get_tuple(thread_config(thread_id, expected))
    assert head is not None
    checkpoint = dict(head.checkpoint, id=ids.checkpoint_id())
    time.sleep(max(0.0, at - time.time()))
    try:
        saver.put(
            head.config,
            checkpoint,
            {"source": "update", "step": 99, "parents": {}},
            {},
            expected_head=expected,
        )
    except ThreadConflict:
        return "conflict"
    return "ok"


def describe(saver: BaseSaver, command: str, thread_id: str) -> dict:
    """Start, resume or read the thread; return what the tests compare."""
    agent = build(saver)
    config = {"configurable": {"thread_id": thread_id}}
    if command == "start":
        state = agent.invoke(
            {"messages": [HumanMessage("Refund order #42 for $250.")]}, config
        )
    elif command == "resume":
        state = agent.invoke(None, config)
    else:
        state = agent.get_state(config)
    call = state.next_tool_call
    return {
        "next": list(state.next),
        "args": call.args if call else None,
        "last": state.values["messages"][-1].text,
        "checkpoint_id": state.checkpoint_id,
    }


def main(argv: list[str]) -> None:
    global LEDGER
    command, spec, thread_id = argv[:3]
    saver = open_saver(spec)
    if command == "race":
        print(race(saver, thread_id, argv[3], float(argv[4])))
    else:
        LEDGER = argv[3]
        print(json.dumps(describe(saver, command, thread_id)))
    saver.close()


# -- the test's side ----------------------------------------------------------


def spawn(*args: str) -> subprocess.Popen[str]:
    """Start the agent in a fresh process; the caller collects its output."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.payments_agent", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(*args: str) -> dict:
    """Run the agent in a fresh process; return the state it printed."""
    out = subprocess.run(
        [sys.executable, "-m", "tests.payments_agent", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def check_pause_and_resume(spec: str, ledger: Path) -> dict:
    """Pause case-42 in one process, read it in another, resume it in a third.

    Return the final state, for checks of a backend's own.
    """
    paused = run("start", spec, "case-42", str(ledger))
    assert paused["next"] == ["transfer_funds"]
    assert paused["args"]["amount"] == 250
    assert not ledger.exists()

    seen = run("state", spec, "case-42", str(ledger))
    assert seen["checkpoint_id"] == paused["checkpoint_id"]

    done = run("resume", spec, "case-42", str(ledger))
    assert done["next"] == []
    entries = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert [(e["amount"], e["key"].split(":")[0]) for e in entries] == [
        (250, "case-42")
    ]
    return done


def check_resumes_at_once_pay_once(spec: str, ledger: Path, processes: int) -> None:
    """Pause case-7, resume it from several processes at once: one refund."""
    run("start", spec, "case-7", str(ledger))
    procs = [spawn("resume", spec, "case-7", str(ledger)) for _ in range(processes)]
    results = [p.communicate(timeout=120) for p in procs]
    assert len(ledger.read_text().splitlines()) == 1
    codes = sorted(p.returncode for p in procs)
    assert codes[0] == 0
    losers = [err for p, (_out, err) in zip(procs, results) if p.returncode != 0]
    assert all("ThreadConflict" in err for err in losers)


def race_processes(spec: str, thread_id: str, head: str, processes: int) -> list[str]:
    """Have each process write one checkpoint after head at the same moment.

    Return their outcomes, sorted: "conflict" before "ok".
    """
    at = time.time() + 3
    procs = [spawn("race", spec, thread_id, head, str(at)) for _ in range(processes)]
    return sorted(p.communicate(timeout=120)[0].strip() for p in procs)


if __name__ == "__main__":
    main(sys.argv[1:])
