"""A payments agent importable from a fresh process: `python -m tests.payments_agent`.

`python -m tests.payments_agent start|resume|state DB THREAD` builds the agent
on a SQLite file and prints one JSON line describing the state, so a test
can pause a run in one process and resume it in another.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from agentmatic import Agent, HumanMessage
from agentmatic.checkpoint import SQLiteSaver
from agentmatic.llms import OfflineRefundModel


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


def main(argv: list[str]) -> None:
    global LEDGER
    command, db, thread_id = argv[:3]
    LEDGER = db + ".ledger"
    agent = build(SQLiteSaver(db))
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
    print(
        json.dumps(
            {
                "next": list(state.next),
                "args": call.args if call else None,
                "last": state.values["messages"][-1].text,
                "checkpoint_id": state.checkpoint_id,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
