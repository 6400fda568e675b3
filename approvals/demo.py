"""The demo payments agent: looks up an order's account and sends refunds.

`build_payments_agent(saver)` is registered in ``AGENTMATIC_AGENTS`` as
"payments". It runs the offline refund model unless ``OPENAI_API_KEY`` is set.
Refunds land in the `Refund` table, the demo's stand-in for a payment system,
keyed by the runtime's idempotency key so a retry never pays twice. The gate
reads the admin's approval policy on every call, so a new threshold applies
to the next proposal without a deploy. With no active policy every call is
held (an approval rule that is missing must not let money out); the demo
commands create the demo's policy (`ensure_demo_policy`) before feeding it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import cache
from pathlib import Path
from typing import Any

from django.db import IntegrityError, transaction

from agentmatic import Agent
from agentmatic.checkpoint.base import BaseSaver
from agentmatic.llms import default_model
from approvals.models import ApprovalPolicy, Refund

log = logging.getLogger(__name__)

AGENT_NAME = "payments"
GATED_TOOL = "transfer_funds"
DATA_FILE = Path(__file__).resolve().parent / "data" / "refund_requests.json"

SYSTEM_PROMPT = (
    "You are the refunds assistant of an online shop. For each customer "
    "request: find the order number and the amount with its currency; look "
    "the order up with read_account to learn which account paid; then call "
    "transfer_funds once, to that account, for the amount the customer asked "
    "for, in the customer's currency. Never guess an amount: when the request "
    "names none, or names several and it is unclear which one is meant, ask "
    "the customer instead of calling a tool. Refunds at or above the approval "
    "threshold wait for a person; if a reviewer rejects one, tell the customer "
    "why and do not try again."
)

# ISO 4217 minor units where they differ from two.
MINOR_UNITS = {"JPY": 0, "KRW": 0, "CLP": 0, "ISK": 0, "BHD": 3, "KWD": 3}
SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥"}


@cache
def _known_accounts() -> dict[str, str]:
    """Return the demo data's order → account map (synthetic, no personal data)."""
    entries = json.loads(DATA_FILE.read_text(encoding="utf-8"))
    return {entry["order"].lstrip("#"): entry["account"] for entry in entries}


def account_for(order: str) -> str:
    """Return the synthetic account that paid for ``order``.

    Orders of the demo data set keep the account the data names; any other
    order gets one derived from its number, the same every time.
    """
    number = order.strip().lstrip("#").strip()
    known = _known_accounts().get(number)
    if known:
        return known
    return "acct-" + hashlib.sha256(f"order:{number}".encode()).hexdigest()[:4]


def read_account(order: str) -> dict[str, str]:
    """Look up the account that paid for an order.

    Args:
        order: the order number, like "#1042"
    """
    number = order.strip().lstrip("#").strip()
    if not number:
        raise ValueError("an order number is needed, like #1042")
    return {"order": f"#{number}", "account": account_for(number)}


def transfer_funds(
    to: str, amount: float, currency: str = "USD", *, idempotency_key: str
) -> str:
    """Send a refund to the account that paid.

    Args:
        to: the account to pay, like "acct-1986"
        amount: the amount to refund, in the currency's main unit
        currency: the ISO 4217 code of the currency, like USD, EUR or JPY
    """
    code = currency.strip().upper()
    if len(code) != 3 or not code.isalpha():
        raise ValueError(f"{currency!r} is not an ISO 4217 currency code")
    value = _quantize(amount, code)
    if value <= 0:
        raise ValueError("a refund amount must be above zero")
    account = to.strip()
    if not account:
        raise ValueError("a refund needs the account to pay")

    refund = _record_refund(idempotency_key, account, value, code)
    return f"Refund of {format_money(refund.amount, refund.currency)} sent to {account}"


def _record_refund(key: str, account: str, amount: Decimal, currency: str) -> Refund:
    """Store the refund once per idempotency key; a retry gets the first one."""
    thread_id = key.rsplit(":", 1)[0] if ":" in key else ""
    try:
        with transaction.atomic():
            refund, created = Refund.objects.get_or_create(
                idempotency_key=key,
                defaults={
                    "thread_id": thread_id,
                    "to_account": account,
                    "amount": amount,
                    "currency": currency,
                },
            )
    except IntegrityError:
        # Another process created it between our read and our insert.
        refund, created = Refund.objects.get(idempotency_key=key), False
    if created:
        log.info("refund %s sent on thread %s", refund.pk, thread_id)
    else:
        log.info("refund %s already sent; retry on thread %s", refund.pk, thread_id)
    return refund


def _quantize(amount: Any, currency: str) -> Decimal:
    try:
        value = Decimal(str(amount))
    except InvalidOperation:
        raise ValueError(f"{amount!r} is not an amount") from None
    places = MINOR_UNITS.get(currency, 2)
    return value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def format_money(amount: Decimal, currency: str) -> str:
    """Return ``$250.00``, ``€80.00``, ``¥12,800`` or ``CHF 780.00``."""
    places = MINOR_UNITS.get(currency, 2)
    number = f"{amount:,.{places}f}"
    if currency in SYMBOLS:
        return f"{SYMBOLS[currency]}{number}"
    return f"{currency} {number}"


def ensure_demo_policy() -> ApprovalPolicy:
    """Give the demo agent its approval policy unless it has one (active or not).

    Refunds of 100 or more wait for one approver, above 1,000 for two. An
    administrator's edits are kept: an existing row is never changed.
    """
    policy, created = ApprovalPolicy.objects.get_or_create(
        tool=GATED_TOOL,
        agent=AGENT_NAME,
        defaults={
            "threshold": Decimal("100"),
            "four_eyes_above": Decimal("1000"),
        },
    )
    if created:
        log.info("created the demo approval policy: %s", policy.describe())
    return policy


class PolicyGate:
    """The gate predicate: ask the admin's approval policy at call time.

    A call waits when its amount is at or above the active policy's
    threshold. It also waits when there is no active policy or the amount
    cannot be read: an approval rule that is missing must hold, not pass.
    """

    def __init__(self, agent: str, tool: str) -> None:
        self.agent = agent
        self.tool = tool

    def policy(self) -> ApprovalPolicy | None:
        return ApprovalPolicy.objects.for_call(self.tool, self.agent)

    def __call__(self, args: dict[str, Any]) -> bool:
        policy = self.policy()
        if policy is None:
            log.warning("no active approval policy for %s; holding the call", self.tool)
            return True
        return policy.needs_approval(amount_of(args, policy.amount_field))

    def describe(self) -> str:
        """Return the rule in words, as the queue shows it."""
        policy = self.policy()
        if policy is None:
            return "no active approval policy: every call waits"
        return policy.describe()


def amount_of(args: dict[str, Any], field: str = "amount") -> Decimal | None:
    """Return the amount argument as a Decimal, or None when it is unreadable."""
    raw = args.get(field)
    if raw is None or isinstance(raw, bool):
        return None
    try:
        value = Decimal(str(raw))
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def build_payments_agent(saver: BaseSaver) -> Agent:
    """Return the demo payments agent on ``saver``."""
    gate = PolicyGate(AGENT_NAME, GATED_TOOL)
    return (
        Agent.builder(AGENT_NAME)
        .llm(default_model())
        .prompt(SYSTEM_PROMPT)
        .tools([read_account, transfer_funds])
        .checkpoint(saver)
        # Each pause stores the policy's wording as it stood when it held the
        # call; a later change of policy does not rewrite why a call waits.
        .interrupt_before_when(
            tool=GATED_TOOL,
            predicate=gate,
            reason=lambda args: gate.describe(),
        )
        .build()
    )
