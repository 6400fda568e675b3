"""Agents the console's tests register (AGENTMATIC_AGENTS points here)."""

from __future__ import annotations

from agentmatic import Agent
from agentmatic.checkpoint.base import BaseSaver
from agentmatic.llms import OfflineRefundModel

SYSTEM_PROMPT = "You are a careful refund agent. Refunds of $100 or more wait."
SENT: list[dict] = []


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
    SENT.append({"to": to, "amount": amount, "key": idempotency_key})
    return f"Refund of ${amount:.2f} sent to {to}."


def build_payments_agent(saver: BaseSaver) -> Agent:
    return (
        Agent.builder("payments")
        .llm(OfflineRefundModel())
        .prompt(SYSTEM_PROMPT)
        .tools([read_account, transfer_funds])
        .checkpoint(saver)
        .interrupt_before_when(
            tool="transfer_funds", predicate=lambda args: args["amount"] >= 100
        )
        .build()
    )


def noop(payload: str) -> str:
    """Do nothing, at the size of a real tool result."""
    return "ok:" + payload[:40]


def build_loop_agent(saver: BaseSaver, steps: int = 60) -> Agent:
    """An agent whose model calls a no-op tool `steps` times: long threads."""
    from agentmatic.llms import LoopModel

    return (
        Agent.builder("loop")
        .llm(LoopModel("noop", steps=steps, payload_bytes=64))
        .tools([noop])
        .checkpoint(saver)
        .build()
    )
