"""Models that need no network: a deterministic refund agent, a script, a loop.

`OfflineRefundModel` plays a careful refund agent for the demo and the tests:
it reads the newest request, looks the order up when it has a tool for that,
proposes one transfer, and reports what happened. Everything it says and
every id it makes is derived from the conversation, so a replay of the same
conversation gives the same message, tool calls and ids.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import itertools
import json
import re
import threading
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from agentmatic.errors import ModelError
from agentmatic.llms.base import ToolSpec
from agentmatic.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolCall,
    ToolMessage,
)

Script = AIMessage | str | Callable[[Sequence[BaseMessage], Sequence[ToolSpec]], Any]

# --- reading money and order numbers ----------------------------------------

# Currency tokens, most specific first: "US$" and "C$" before "$".
_CURRENCY_TOKENS: tuple[tuple[str, str], ...] = (
    (r"US\$|U\.S\.\s?\$", "USD"),
    (r"CA?\$", "CAD"),
    (r"AU?\$", "AUD"),
    (r"\$", "USD"),
    (r"€", "EUR"),
    (r"£", "GBP"),
    (r"¥", "JPY"),
    (r"₹", "INR"),
    (r"₩", "KRW"),
    (r"円|日本円", "JPY"),
    (r"米ドル|ドル", "USD"),
    (r"ユーロ", "EUR"),
    (r"ポンド", "GBP"),
    (r"スイスフラン", "CHF"),
    (r"人民元|元", "CNY"),
    (r"\b(?:USD|EUR|GBP|JPY|CHF|CAD|AUD|INR|KRW|CNY|RMB|SEK|NOK|DKK|MXN)\b", ""),
    (r"\bUS-?dollars?\b", "USD"),
    (r"\b(?:dollars?|d[óo]lar(?:es)?|bucks)\b", "USD"),
    (r"\beuros?\b", "EUR"),
    (r"\b(?:pounds?|pfund|livres?|libras?)(?:\s+(?:sterling|esterlinas?))?\b", "GBP"),
    (r"\byens?\b", "JPY"),
    (r"\b(?:francs?\s+suisses?|franken)\b", "CHF"),
)
_CUR = "|".join(f"(?:{pattern})" for pattern, _ in _CURRENCY_TOKENS)
# A number is not read out of "#42", "1.2.3" or the middle of another number.
# Groups of three may be split by "," "." "'" or a (narrow, no-break) space.
_NUM = (
    r"(?<![\d#.,])"
    r"(?:\d{1,3}(?:[ \u00a0\u202f.,'\u2019]\d{3})+(?:[.,]\d{1,2})?|\d+(?:[.,]\d{1,2})?)"
    r"(?!\d|[.,]\d)"
)
_MONEY = re.compile(
    rf"(?P<pre>{_CUR})\s{{0,2}}(?P<n1>{_NUM})|(?P<n2>{_NUM})\s{{0,2}}(?P<post>{_CUR})",
    re.IGNORECASE,
)
_AMOUNT_WORD = re.compile(
    r"(?:amount|total|sum|betrag|summe|montant|somme|monto|importe|cantidad|"
    r"金額|返金額)\D{0,25}?(?P<n>" + _NUM + ")",
    re.IGNORECASE,
)
_BARE_NUMBER = re.compile(_NUM)
_MAN = re.compile(r"(\d+(?:\.\d+)?)\s?万(\d{1,4})?")
_SEN = re.compile(r"(\d+)\s?千(\d{1,3})?")
_ORDER = re.compile(
    r"#\s?(?P<a>[A-Za-z]*-?\d[A-Za-z0-9-]*)"
    r"|\b(?:order|commande|bestellung|auftrag|pedido|orden|ordine)\b\s*"
    r"(?:(?:no|nr|n°|num|number|n[úu]mero|num[ée]ro|nummer)\.?\s*)?[:#]?\s*"
    r"(?P<b>\d[A-Za-z0-9-]*)"
    r"|注文(?:番号)?\s*(?:は|:|#)?\s*(?P<c>[A-Za-z]*\d[A-Za-z0-9-]*)",
    re.IGNORECASE,
)
_ACCOUNT = re.compile(
    r"\b(?P<a>acct[-_][A-Za-z0-9-]+)"
    r"|\b(?:account|konto|compte|cuenta)\b\s*(?:#|no\.?|nr\.?|number|id)?\s*[:#]?\s*"
    r"(?P<b>[A-Za-z]*\d[A-Za-z0-9-]*)",
    re.IGNORECASE,
)
_REFUND_WORDS = re.compile(
    r"refund|reimburs|pay\s*back|money\s*back|erstatt|zurückzahl|rembours|"
    r"reembols|devol|返金|払い戻|返還",
    re.IGNORECASE,
)
_CANCEL_WORDS = re.compile(
    r"\b(?:cancel|abort|stop|don'?t|do not|never\s?mind|forget it|abbrechen|"
    r"storn\w*|annul\w*|cancela\w*|no lo)\b|キャンセル|中止|やめ",
    re.IGNORECASE,
)
_REJECTED = re.compile(
    r"reject|denied|declined|abgelehnt|rejet|rechaz|却下|拒否", re.IGNORECASE
)
_ERROR_START = re.compile(r"\s*(?:error|exception|failed|failure|traceback)\b", re.I)
# What a runtime may answer for a call it withdrew instead of running.
_NOT_RUN = re.compile(
    r"not (?:been )?(?:run|executed|sent)|cancel|supersed|skipped|withdrawn",
    re.IGNORECASE,
)

# Minor units per currency (JPY and KRW have none).
_DECIMALS = {"JPY": 0, "KRW": 0}
_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "INR": "₹", "KRW": "₩"}


@dataclass(frozen=True)
class Money:
    """An amount and, when the text named one, its ISO currency code."""

    amount: Decimal
    currency: str | None

    def __str__(self) -> str:
        return format_money(self.amount, self.currency)


def format_money(amount: Decimal, currency: str | None) -> str:
    """Return ``$1,200.50``, ``€80.00``, ``¥5,000`` or ``12.00 CHF``."""
    places = _DECIMALS.get(currency or "", 2)
    quantum = Decimal(1).scaleb(-places)
    number = f"{amount.quantize(quantum, rounding=ROUND_HALF_UP):,.{places}f}"
    if currency in _SYMBOLS:
        return f"{_SYMBOLS[currency]}{number}"
    return f"{number} {currency}" if currency else number


def _normalise(text: str) -> str:
    # NFKC folds full-width digits and signs (as Japanese text has them) to ASCII.
    text = unicodedata.normalize("NFKC", text)
    text = _MAN.sub(lambda m: _expand(m.group(1), m.group(2), 10_000), text)
    return _SEN.sub(lambda m: _expand(m.group(1), m.group(2), 1_000), text)


def _expand(head: str, tail: str | None, unit: int) -> str:
    value = Decimal(head) * unit + Decimal(tail or 0)
    return format(value.normalize(), "f")


def _to_decimal(raw: str) -> Decimal | None:
    digits = re.sub(r"[ \u00a0\u202f'\u2019]", "", raw)
    dot, comma = digits.rfind("."), digits.rfind(",")
    if dot >= 0 and comma >= 0:
        decimal_sep, group_sep = (".", ",") if dot > comma else (",", ".")
        digits = digits.replace(group_sep, "").replace(decimal_sep, ".")
    elif dot >= 0 or comma >= 0:
        sep = "." if dot >= 0 else ","
        parts = digits.split(sep)
        # One separator followed by three digits groups thousands: "1.200".
        if len(parts) > 2 or len(parts[-1]) == 3:
            digits = digits.replace(sep, "")
        else:
            digits = digits.replace(sep, ".")
    try:
        return Decimal(digits)
    except InvalidOperation:
        return None


def _currency_code(token: str) -> str | None:
    for pattern, code in _CURRENCY_TOKENS:
        if re.fullmatch(pattern, token, re.IGNORECASE):
            upper = token.upper()
            return code or ("CNY" if upper == "RMB" else upper)
    return None


def extract_money(text: str) -> Money | None:
    """Return the first amount with a currency in `text`, in any format we read.

    Reads ``$250``, ``€80``, ``1.200,50 EUR``, ``1 200,50 €``, ``250 dollars``,
    ``250 Dollar``, ``250 dólares``, ``£30``, ``¥5000``, ``5000円``,
    ``1万2000円`` and ``250ドル``. A bare number is not an amount.
    """
    match = _MONEY.search(_normalise(text))
    if match is None:
        return None
    amount = _to_decimal(match.group("n1") or match.group("n2"))
    if amount is None:
        return None
    return Money(amount, _currency_code(match.group("pre") or match.group("post")))


def extract_all_money(text: str) -> list[Money]:
    """Return every amount with a currency in `text`, in order."""
    out = []
    for match in _MONEY.finditer(_normalise(text)):
        amount = _to_decimal(match.group("n1") or match.group("n2"))
        if amount is not None:
            code = _currency_code(match.group("pre") or match.group("post"))
            out.append(Money(amount, code))
    return out


# Words that offer a choice between amounts, and words for a price difference,
# in the languages the offline model reads.
_ALTERNATIVE = re.compile(
    r"\b(?:or|oder|ou|o|oppure|ou então)\b|または|か、|あるいは", re.IGNORECASE
)
_DIFFERENCE = re.compile(
    r"differen|différen|diferen|Differenz|差額|差額分|差", re.IGNORECASE
)
_DIFFERENCE_OF = re.compile(
    r"(?:difference|différence|diferencia|diferença|differenza|Differenz)"
    r"\s+(?:of|de|di|von|da)\s+$",
    re.IGNORECASE,
)


# "…, so $54": the amount a sum arrives at.
_SO = re.compile(r"(?:\b(?:so|also|thus|therefore|donc|entonces|quindi|então)|=)\s*$")
# An amount followed by the verb that asks for it ("2,400円を返金", "50 € erstatten").
_REFUND_AFTER = re.compile(r"\s*(?:を|の)?\s*(?:返金|erstatt|zurück)", re.IGNORECASE)
# A charge made twice: one of the equal amounts is the refund.
_TWICE = re.compile(
    r"twice|two times|zweimal|doppelt|deux fois|dos veces|due volte|duas vezes"
    r"|二重|2回",
    re.IGNORECASE,
)


def _refund_amount(text: str) -> tuple[Money | None, list[Money]]:
    """Return the amount a request asks for, or None and the amounts it names.

    One amount is the amount. Several are read only when the text settles it:
    "the difference of $2,808" names it; "charged 2 450 € instead of 245 €,
    refund the difference" makes it the difference of the two. Anything else
    ("the $40 difference, or the full $180", "$75 now and another $75") is
    left for the customer to settle.
    """
    normal = _normalise(text)
    matches = list(_MONEY.finditer(normal))
    amounts = extract_all_money(text)
    if len(amounts) != len(matches) or len(amounts) <= 1:
        return (amounts[0] if amounts else None), amounts
    between = [normal[a.end() : b.start()] for a, b in itertools.pairwise(matches)]
    if any(_ALTERNATIVE.search(gap) for gap in between):
        return None, amounts
    for match, money in zip(matches, amounts, strict=True):
        before = normal[max(0, match.start() - 30) : match.start()]
        after = normal[match.end() : match.end() + 12]
        if _DIFFERENCE_OF.search(before) or _REFUND_AFTER.match(after):
            return money, amounts
    last = matches[-1]
    if _SO.search(normal[max(0, last.start() - 15) : last.start()]):
        return amounts[-1], amounts
    if len({(m.amount, m.currency) for m in amounts}) == 1 and _TWICE.search(normal):
        return amounts[0], amounts
    currencies = {m.currency for m in amounts}
    if len(amounts) == 2 and _DIFFERENCE.search(normal) and len(currencies) == 1:
        high, low = sorted((m.amount for m in amounts), reverse=True)
        return Money(high - low, amounts[0].currency), amounts
    return None, amounts


def _new_amount(text: str, order: str | None) -> Money | None:
    """Return the amount an amendment names: with currency, after "amount", or bare."""
    money = extract_money(text)
    if money is not None:
        return money
    normal = _normalise(text)
    match = _AMOUNT_WORD.search(normal)
    if match:
        amount = _to_decimal(match.group("n"))
        return Money(amount, None) if amount is not None else None
    order_spans = [m.span() for m in _ORDER.finditer(normal)]
    for bare in reversed(list(_BARE_NUMBER.finditer(normal))):
        inside = any(start <= bare.start() < end for start, end in order_spans)
        if not inside and bare.group() != order:
            amount = _to_decimal(bare.group())
            if amount is not None:
                return Money(amount, None)
    return None


def extract_order(text: str) -> str | None:
    """Return the order number in `text` ("#42", "order 42", "Bestellung Nr. 42")."""
    match = _ORDER.search(_normalise(text))
    if match is None:
        return None
    return (match.group("a") or match.group("b") or match.group("c")).strip("-")


def _extract_account(text: str) -> str | None:
    match = _ACCOUNT.search(_normalise(text))
    if match is None:
        return None
    return match.group("a") or match.group("b")


# --- reading the tools --------------------------------------------------------

_AMOUNT_PARAMS = ("amount", "refund_amount", "value", "sum", "total")
_CURRENCY_PARAMS = ("currency", "currency_code", "ccy")
_DEST_PARAMS = (
    "to",
    "to_account",
    "account",
    "account_id",
    "destination",
    "recipient",
    "payee",
    "beneficiary",
    "target",
    "iban",
    "acct",
)
_ORDER_PARAMS = ("order_id", "order", "order_number", "order_no", "order_ref")
_MEMO_PARAMS = ("memo", "note", "reason", "description", "comment", "reference")
_LOOKUP_VERBS = re.compile(r"read|look_?up|get|fetch|find|search|check|list|describe")
_TRANSFER_VERBS = ("refund", "transfer", "payout", "pay", "send", "credit")


@dataclass(frozen=True)
class _Tool:
    name: str
    properties: dict[str, Any]
    required: tuple[str, ...]

    @classmethod
    def from_spec(cls, spec: ToolSpec) -> _Tool:
        parameters = spec.get("parameters") or {}
        return cls(
            name=spec["name"],
            properties=dict(parameters.get("properties") or {}),
            required=tuple(parameters.get("required") or ()),
        )

    def param(self, names: Iterable[str], contains: str | None = None) -> str | None:
        for name in names:
            if name in self.properties:
                return name
        if contains:
            for name in self.properties:
                if contains in name.lower():
                    return name
        return None

    def kind(self, name: str) -> str | None:
        schema = self.properties.get(name) or {}
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), None)
        if kind is None:
            for option in schema.get("anyOf") or []:
                if isinstance(option, dict) and option.get("type") != "null":
                    return option.get("type")
        return kind


@dataclass(frozen=True)
class _Toolbox:
    transfer: _Tool | None
    lookup: _Tool | None

    @classmethod
    def from_specs(cls, specs: Sequence[ToolSpec]) -> _Toolbox:
        tools = [_Tool.from_spec(spec) for spec in specs]
        transfer = None
        for verb in _TRANSFER_VERBS:
            transfer = next(
                (
                    t
                    for t in tools
                    if verb in t.name.lower()
                    and not _LOOKUP_VERBS.match(t.name.lower())
                ),
                None,
            )
            if transfer is not None:
                break
        lookups = [
            t
            for t in tools
            if t is not transfer and _LOOKUP_VERBS.search(t.name.lower())
        ]
        lookups.sort(key=lambda t: ("order" not in t.name, "account" not in t.name))
        return cls(transfer, lookups[0] if lookups else None)


# --- reading the conversation -------------------------------------------------


@dataclass
class _Request:
    order: str | None = None
    money: Money | None = None
    account: str | None = None
    is_refund: bool = False
    # The amounts named when the text does not settle which one is meant.
    choices: tuple[Money, ...] = ()


def _read_request(text: str) -> _Request:
    order = extract_order(text)
    money, named = _refund_amount(text)
    return _Request(
        order=order,
        money=money,
        account=_extract_account(text),
        is_refund=bool(_REFUND_WORDS.search(text)),
        choices=tuple(named) if money is None and len(named) > 1 else (),
    )


def _as_data(content: Any) -> Any:
    """Return a tool result as JSON-like data when it is one, else its text."""
    if not isinstance(content, str):
        return content
    text = content.strip()
    if text[:1] in "{[":
        try:
            return json.loads(text)
        except ValueError:
            pass
        if len(text) < 20_000:
            try:
                return ast.literal_eval(text)
            except (ValueError, SyntaxError):
                pass
    return text


def _text_of(msg: BaseMessage) -> str:
    if isinstance(msg.content, str | list):
        return msg.text
    return json.dumps(msg.content, default=str, ensure_ascii=False)


def _is_rejection(msg: ToolMessage) -> bool:
    data = _as_data(msg.content)
    if isinstance(data, dict) and (
        data.get("rejected") or data.get("decision") == "reject"
    ):
        return True
    return bool(_REJECTED.search(_text_of(msg)))


def _is_error(msg: ToolMessage) -> bool:
    if msg.status == "error":
        return True
    data = _as_data(msg.content)
    if isinstance(data, dict):
        status = str(data.get("status", "")).lower()
        return bool(data.get("error")) or status in {"error", "failed", "rejected"}
    return bool(_ERROR_START.match(_text_of(msg)))


def _rejection_reason(msg: ToolMessage) -> str:
    data = _as_data(msg.content)
    if isinstance(data, dict):
        for key in ("reason", "message", "error"):
            if data.get(key):
                return str(data[key]).strip()
    text = _text_of(msg).strip()
    for pattern in (
        r"reason\s*[:=]\s*(.+)",
        r"because\s+(.+)",
        r"(?:reject\w*|denied|declined)[^:]*:\s*(.+)",
    ):
        match = re.search(pattern, text, re.IGNORECASE | re.DOTALL)
        if match and match.group(1).strip():
            return match.group(1).strip().strip("\"'").rstrip(".")
    return text.rstrip(".")


def _error_text(msg: ToolMessage) -> str:
    data = _as_data(msg.content)
    if isinstance(data, dict):
        for key in ("error", "message", "detail", "reason"):
            if data.get(key):
                return str(data[key])
    text = re.sub(r"\s*Please fix your mistakes\.?\s*$", "", _text_of(msg).strip())
    text = re.sub(r"^(?:error|exception)\s*:\s*", "", text, flags=re.IGNORECASE)
    text = re.sub(r"^\w*(?:Error|Exception)\s*:\s*", "", text)
    return text or "the tool failed without a message"


def _account_from_result(result: ToolMessage, tool: _Tool) -> str | None:
    data = _as_data(result.content)
    found = _find_account(data, account_tool="account" in tool.name.lower())
    if found:
        return found
    text = _text_of(result).strip()
    found = _extract_account(text)
    if found:
        return found
    return text if re.fullmatch(r"[A-Za-z][\w-]{1,63}", text) else None


def _find_account(data: Any, *, account_tool: bool) -> str | None:
    if isinstance(data, dict):
        for key in (
            "account_id",
            "account",
            "acct",
            "to",
            "refund_account",
            "payment_account",
            "customer_account",
            "iban",
        ):
            value = data.get(key)
            if isinstance(value, str | int) and str(value):
                return str(value)
            if isinstance(value, dict):
                found = _find_account(value, account_tool=True)
                if found:
                    return found
        if account_tool and isinstance(data.get("id"), str | int):
            return str(data["id"])
        for value in data.values():
            if isinstance(value, dict | list):
                found = _find_account(value, account_tool=False)
                if found:
                    return found
    elif isinstance(data, list):
        for item in data:
            found = _find_account(item, account_tool=account_tool)
            if found:
                return found
    return None


@dataclass(frozen=True)
class _Call:
    call: ToolCall
    answer: ToolMessage | None

    @property
    def outcome(self) -> str:
        """One of pending, rejected, withdrawn, error, done."""
        if self.answer is None:
            return "pending"
        if _is_rejection(self.answer):
            return "rejected"
        if _NOT_RUN.search(_text_of(self.answer)):
            return "withdrawn"
        if _is_error(self.answer):
            return "error"
        return "done"


class _Conversation:
    def __init__(self, messages: Sequence[BaseMessage]) -> None:
        self.messages = list(messages)
        self.answers = {
            m.tool_call_id: m for m in self.messages if isinstance(m, ToolMessage)
        }

    def calls(self, name: str, before: int | None = None) -> list[_Call]:
        end = len(self.messages) if before is None else before
        return [
            _Call(tc, self.answers.get(tc.id))
            for msg in self.messages[:end]
            if isinstance(msg, AIMessage)
            for tc in msg.tool_calls
            if tc.name == name
        ]

    def request(self, transfer: str | None, end: int) -> _Request:
        """Merge what the humans asked since the last closed refund, newest first."""
        start = 0
        for i in range(end - 1, -1, -1):
            msg = self.messages[i]
            if isinstance(msg, ToolMessage) and transfer:
                call = self._call_of(msg)
                if call is not None and call.name == transfer:
                    start = i + 1
                    break
            # A final answer closes the request; a question keeps it open.
            if (
                isinstance(msg, AIMessage)
                and not msg.tool_calls
                and not msg.text.rstrip().endswith("?")
            ):
                start = i + 1
                break
        merged = _Request()
        for msg in reversed(self.messages[start:end]):
            if not isinstance(msg, HumanMessage):
                continue
            found = _read_request(msg.text)
            merged.order = merged.order or found.order
            merged.money = merged.money or found.money
            merged.account = merged.account or found.account
            merged.is_refund = merged.is_refund or found.is_refund
        return merged

    def _call_of(self, answer: ToolMessage) -> ToolCall | None:
        for msg in self.messages:
            if isinstance(msg, AIMessage):
                for tc in msg.tool_calls:
                    if tc.id == answer.tool_call_id:
                        return tc
        return None


# --- the model ----------------------------------------------------------------

_Decision = tuple[str, list[tuple[str, dict[str, Any]]]]

HELP = (
    "I can send refunds. Tell me the order number and the amount, "
    "for example: Refund order #42 for $250."
)


class OfflineRefundModel:
    """A deterministic refund agent that needs no network and no key.

    It reads the newest request for an order number and an amount with its
    currency (English, German, French, Spanish and Japanese phrasings), looks
    the order up when it has a lookup tool (``read_account``,
    ``lookup_order``…), then proposes one call of the transfer tool
    (``transfer_funds``, ``refund``…) with the argument names that tool's
    schema uses. After the transfer's result it reports in one sentence; a
    rejected call is acknowledged with the reviewer's reason and not retried;
    a human amendment of a waiting or rejected call ("amount should be 245")
    re-proposes the call with the new amount. Without an amount it asks.
    """

    identity = "offline-refund-v1"

    def generate(
        self, messages: Sequence[BaseMessage], tools: Sequence[ToolSpec]
    ) -> AIMessage:
        """Return the next message: a question, a tool call or a final answer."""
        toolbox = _Toolbox.from_specs(tools)
        content, calls = self._decide(_Conversation(messages), toolbox)
        digest = _digest(messages, tools)
        tool_calls = [
            ToolCall(name=name, args=args, id=_call_id(digest, i))
            for i, (name, args) in enumerate(calls)
        ]
        prompt_tokens = sum(len(_text_of(m)) for m in messages) // 4 + 1
        output_tokens = (len(content) + len(json.dumps([c for _, c in calls]))) // 4
        return AIMessage(
            content=content,
            id=f"offline-{digest[:32]}",
            tool_calls=tool_calls,
            response_metadata={
                "model_name": self.identity,
                "model_provider": "offline",
                "finish_reason": "tool_calls" if tool_calls else "stop",
            },
            usage_metadata={
                "input_tokens": prompt_tokens,
                "output_tokens": output_tokens,
                "total_tokens": prompt_tokens + output_tokens,
            },
        )

    def _decide(self, convo: _Conversation, toolbox: _Toolbox) -> _Decision:
        if not convo.messages or isinstance(convo.messages[-1], SystemMessage):
            return HELP, []
        last = convo.messages[-1]
        if isinstance(last, HumanMessage):
            return self._after_human(convo, toolbox)
        if isinstance(last, ToolMessage):
            return self._after_tools(convo, toolbox)
        return "Is there anything else I can help with?", []

    def _after_human(self, convo: _Conversation, toolbox: _Toolbox) -> _Decision:
        end = len(convo.messages) - 1
        text = convo.messages[end].text
        transfer = toolbox.transfer
        previous = convo.calls(transfer.name, end) if transfer else []
        open_call = (
            previous[-1] if previous and previous[-1].outcome != "done" else None
        )
        if transfer and open_call is not None:
            new_order = extract_order(text)
            old_order = _order_in_args(open_call.call.args, transfer)
            if new_order is None or new_order == old_order:
                if _CANCEL_WORDS.search(text):
                    return "Understood, I will not send the refund.", []
                money = _new_amount(text, old_order)
                if money is not None or open_call.outcome == "pending":
                    args = dict(open_call.call.args)
                    if money is not None:
                        args.update(_money_args(transfer, money))
                    account = _extract_account(text)
                    dest = transfer.param(_DEST_PARAMS, contains="account")
                    if account and dest:
                        args[dest] = account
                    return "", [(transfer.name, args)]
        return self._next_step(convo, toolbox, end + 1)

    def _after_tools(self, convo: _Conversation, toolbox: _Toolbox) -> _Decision:
        last_ai, asked = -1, []
        for i, msg in enumerate(convo.messages):
            if isinstance(msg, AIMessage):
                last_ai, asked = i, msg.tool_calls
        calls = [_Call(tc, convo.answers.get(tc.id)) for tc in asked]
        transfer = toolbox.transfer
        transfers = [c for c in calls if transfer and c.call.name == transfer.name]
        if transfer and transfers:
            request = convo.request(transfer.name, last_ai)
            currency = request.money.currency if request.money else None
            return " ".join(_report(c, transfer, currency) for c in transfers), []
        lookups = [
            c for c in calls if toolbox.lookup and c.call.name == toolbox.lookup.name
        ]
        for lookup in lookups:
            if lookup.outcome in ("error", "rejected") and lookup.answer is not None:
                what = _lookup_subject(lookup.call.args)
                return f"I could not look up {what}: {_error_text(lookup.answer)}", []
        return self._next_step(convo, toolbox, len(convo.messages))

    def _next_step(
        self, convo: _Conversation, toolbox: _Toolbox, end: int
    ) -> _Decision:
        transfer, lookup = toolbox.transfer, toolbox.lookup
        request = convo.request(transfer.name if transfer else None, end)
        if request.money is None:
            if not (request.order or request.is_refund or request.account):
                return HELP, []
            target = f" for order #{request.order}" if request.order else ""
            if request.choices:
                named = " or ".join(dict.fromkeys(str(m) for m in request.choices))
                return f"Which amount should I refund{target}: {named}?", []
            return f"How much should I refund{target}, and in which currency?", []
        if transfer is None:
            return "I cannot send refunds here: no transfer tool is available.", []
        dest = transfer.param(_DEST_PARAMS, contains="account")
        order_param = transfer.param(_ORDER_PARAMS, contains="order")
        if request.order is None and request.account is None and (dest or order_param):
            return "Which order is the refund for?", []

        account = request.account
        if account is None and lookup is not None:
            done = _find_lookup(convo, lookup, request, end)
            if done is None:
                return "", [(lookup.name, _lookup_args(lookup, request))]
            assert done.answer is not None
            account = _account_from_result(done.answer, lookup)
            if account is None and dest in transfer.required:
                return (
                    f"I could not find the account for order #{request.order} in "
                    f"the {lookup.name} result. Which account should receive "
                    "the refund?",
                    [],
                )
        if account is None and dest in transfer.required:
            return "Which account should receive the refund?", []
        return "", [(transfer.name, _transfer_args(transfer, request, account))]


def _find_lookup(
    convo: _Conversation, lookup: _Tool, request: _Request, end: int
) -> _Call | None:
    """Return a finished lookup of this request's order or account, if any.

    A lookup made since the newest human message counts whatever its
    arguments, so a lookup that echoes odd arguments cannot loop.
    """
    wanted = {v for v in (request.order, request.account) if v}
    last_human = max(
        (i for i, m in enumerate(convo.messages[:end]) if isinstance(m, HumanMessage)),
        default=-1,
    )
    recent = {
        tc.id
        for msg in convo.messages[last_human + 1 : end]
        if isinstance(msg, AIMessage)
        for tc in msg.tool_calls
    }
    for done in reversed(convo.calls(lookup.name, end)):
        values = {str(v).lstrip("#") for v in done.call.args.values()}
        matches = bool(values & wanted) or done.call.id in recent
        if done.outcome == "done" and matches:
            return done
    return None


def _lookup_args(lookup: _Tool, request: _Request) -> dict[str, Any]:
    args: dict[str, Any] = {}
    order_param = lookup.param(_ORDER_PARAMS, contains="order")
    account_param = lookup.param((*_DEST_PARAMS, "customer_id"), contains="account")
    if order_param and request.order:
        args[order_param] = _typed(lookup, order_param, request.order)
    if account_param and request.account:
        args[account_param] = request.account
    for name in lookup.required:
        if name not in args:
            value = request.order or request.account
            args[name] = _typed(lookup, name, value) if value else ""
    if not args and lookup.properties:
        first = next(iter(lookup.properties))
        args[first] = _typed(lookup, first, request.order or request.account or "")
    return args


def _transfer_args(
    transfer: _Tool, request: _Request, account: str | None
) -> dict[str, Any]:
    assert request.money is not None
    args: dict[str, Any] = {}
    dest = transfer.param(_DEST_PARAMS, contains="account")
    if dest and account:
        args[dest] = account
    args.update(_money_args(transfer, request.money))
    order_param = transfer.param(_ORDER_PARAMS, contains="order")
    if order_param and request.order:
        args[order_param] = _typed(transfer, order_param, request.order)
    memo = transfer.param(_MEMO_PARAMS)
    if memo and memo not in args and request.order:
        args[memo] = f"Refund for order #{request.order}"
    return args


def _money_args(transfer: _Tool, money: Money) -> dict[str, Any]:
    args: dict[str, Any] = {}
    amount_param = transfer.param(_AMOUNT_PARAMS, contains="amount")
    if amount_param:
        amount = money.amount
        if amount_param.endswith(("_cents", "_minor")):
            amount = amount * 100
        args[amount_param] = _number(transfer, amount_param, amount, money.currency)
    currency_param = transfer.param(_CURRENCY_PARAMS, contains="currency")
    if currency_param and money.currency:
        args[currency_param] = money.currency
    return args


def _number(tool: _Tool, name: str, amount: Decimal, currency: str | None) -> Any:
    kind = tool.kind(name)
    if kind == "integer":
        return int(amount.to_integral_value(rounding=ROUND_HALF_UP))
    if kind == "string":
        places = _DECIMALS.get(currency or "", 2)
        return f"{amount:.{places}f}"
    if amount == amount.to_integral_value():
        return int(amount)
    return float(amount)


def _typed(tool: _Tool, name: str, value: str) -> Any:
    if tool.kind(name) == "integer" and value.isdigit():
        return int(value)
    return value


def _order_in_args(args: dict[str, Any], transfer: _Tool) -> str | None:
    order_param = transfer.param(_ORDER_PARAMS, contains="order")
    if order_param and args.get(order_param) is not None:
        return str(args[order_param]).lstrip("#")
    for value in args.values():
        if isinstance(value, str):
            found = extract_order(value)
            if found:
                return found
    return None


def _lookup_subject(args: dict[str, Any]) -> str:
    for key, value in args.items():
        if "order" in key:
            return f"order #{value}"
    if args:
        return ", ".join(str(v) for v in args.values())
    return "the order"


def _report(done: _Call, transfer: _Tool, currency: str | None) -> str:
    """Say in one sentence what became of a transfer call."""
    args = done.call.args
    amount_param = transfer.param(_AMOUNT_PARAMS, contains="amount")
    currency_param = transfer.param(_CURRENCY_PARAMS, contains="currency")
    dest = transfer.param(_DEST_PARAMS, contains="account")
    if currency_param and args.get(currency_param):
        currency = str(args[currency_param]).upper()
    what = "the refund"
    if amount_param and args.get(amount_param) is not None:
        try:
            amount = Decimal(str(args[amount_param]))
        except InvalidOperation:
            amount = None
        if amount is not None:
            if amount_param.endswith(("_cents", "_minor")):
                amount = amount / 100
            what = f"the refund of {format_money(amount, currency)}"
    if done.answer is None:
        return f"I proposed {what}; it is waiting for approval."
    if done.outcome == "rejected":
        reason = _rejection_reason(done.answer)
        return (
            f"Understood: {what} was not sent because the reviewer rejected it. "
            f"Reason: {reason}."
        )
    if done.outcome != "done":
        return f"I could not send {what}: {_error_text(done.answer)}"
    # The tool's own sentence says what was really sent (a reviewer may have
    # changed the arguments since the call was proposed).
    said = _text_of(done.answer).strip()
    if said and not said.startswith(("{", "[")):
        return said if said.endswith((".", "!")) else said + "."
    to = f" to {args[dest]}" if dest and args.get(dest) else ""
    return f"R{what[len('the r') :]} sent{to}."


def _digest(messages: Sequence[BaseMessage], tools: Sequence[ToolSpec]) -> str:
    """Hash what the model sees; message ids are left out (they are random)."""
    parts: list[Any] = [sorted(str(t["name"]) for t in tools)]
    for msg in messages:
        entry: list[Any] = [msg.type, _text_of(msg)]
        if isinstance(msg, AIMessage):
            entry.append([[tc.name, tc.args, tc.id] for tc in msg.tool_calls])
        if isinstance(msg, ToolMessage):
            entry.append(msg.tool_call_id)
        parts.append(entry)
    blob = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def _call_id(digest: str, index: int) -> str:
    return "call_" + hashlib.sha256(f"{digest}:{index}".encode()).hexdigest()[:24]


# --- test models ---------------------------------------------------------------


class ScriptedModel:
    """Return scripted replies in order, for tests.

    Each entry is an `AIMessage` (returned as a copy), a string (a plain
    answer) or a callable ``(messages, tools) -> AIMessage | str``. Tool calls
    without an id get ``call_<reply>_<n>``. The conversations it was called
    with are kept in ``calls``; running past the end raises `ModelError`.
    """

    identity = "scripted"

    def __init__(self, responses: Iterable[Script]) -> None:
        self.responses = list(responses)
        self.calls: list[tuple[list[BaseMessage], list[ToolSpec]]] = []
        self._lock = threading.Lock()

    def generate(
        self, messages: Sequence[BaseMessage], tools: Sequence[ToolSpec]
    ) -> AIMessage:
        """Return the next scripted reply."""
        with self._lock:
            index = len(self.calls)
            if index >= len(self.responses):
                raise ModelError(
                    f"ScriptedModel has only {len(self.responses)} replies and was "
                    f"called a {index + 1}th time"
                )
            self.calls.append((list(messages), list(tools)))
            entry = self.responses[index]
        reply = entry(messages, tools) if callable(entry) else entry
        if isinstance(reply, str):
            reply = AIMessage(content=reply)
        if not isinstance(reply, AIMessage):
            raise ModelError(f"scripted reply {index} is a {type(reply).__name__}")
        reply = copy.deepcopy(reply)
        for n, call in enumerate(reply.tool_calls):
            if not call.id:
                call.id = f"call_{index}_{n}"
        return reply


class LoopModel:
    """Call one no-op tool `steps` times, then stop; for benchmarks.

    Each call carries a deterministic argument of `payload_bytes` ASCII
    characters under the tool's first string parameter (``payload`` when the
    schema has none). Steps are counted from the newest human message, so
    every new input runs `steps` more calls.
    """

    def __init__(self, tool_name: str, steps: int, payload_bytes: int = 400) -> None:
        self.tool_name = tool_name
        self.steps = steps
        self.payload_bytes = payload_bytes

    @property
    def identity(self) -> str:
        """Return ``"loop:<tool>:<steps>:<payload_bytes>"``."""
        return f"loop:{self.tool_name}:{self.steps}:{self.payload_bytes}"

    def generate(
        self, messages: Sequence[BaseMessage], tools: Sequence[ToolSpec]
    ) -> AIMessage:
        """Return the next loop call, or the final answer after `steps` calls."""
        # Read the count from the newest loop call's id, so a step costs the same
        # however long the conversation is.
        start, done = -1, 0
        for index in range(len(messages) - 1, -1, -1):
            msg = messages[index]
            if isinstance(msg, HumanMessage):
                start = index
                break
            if isinstance(msg, AIMessage) and msg.tool_calls:
                last_id = msg.tool_calls[-1].id
                if last_id.startswith("call_loop_"):
                    start_s, _, done_s = last_id[len("call_loop_") :].partition("_")
                    start, done = int(start_s) - 1, int(done_s) + 1
                    break
        if done >= self.steps:
            return AIMessage(content=f"Finished {done} steps.")
        param = "payload"
        for spec in tools:
            if spec["name"] == self.tool_name:
                tool = _Tool.from_spec(spec)
                param = next(
                    (n for n in tool.properties if tool.kind(n) == "string"),
                    next(iter(tool.properties), "payload"),
                )
        call = ToolCall(
            name=self.tool_name,
            args={param: _payload(done, self.payload_bytes)},
            id=f"call_loop_{start + 1}_{done}",
        )
        return AIMessage(content="", tool_calls=[call])


def _payload(step: int, size: int) -> str:
    chunks: list[str] = []
    seed = f"step-{step}".encode()
    while sum(map(len, chunks)) < size:
        seed = hashlib.sha256(seed).hexdigest().encode()
        chunks.append(seed.decode())
    return "".join(chunks)[:size]
