"""The offline refund model, the scripted model and the loop model."""

from __future__ import annotations

from decimal import Decimal

import pytest

from agentmatic.errors import ModelError
from agentmatic.llms import (
    ChatModel,
    LoopModel,
    OfflineRefundModel,
    ScriptedModel,
    ToolSpec,
)
from agentmatic.llms.offline import extract_money, extract_order, format_money
from agentmatic.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolCall,
    ToolMessage,
)


def spec(name: str, **properties: str) -> ToolSpec:
    return ToolSpec(
        name=name,
        description=name,
        parameters={
            "type": "object",
            "properties": {p: {"type": t} for p, t in properties.items()},
            "required": list(properties),
        },
    )


READ_ACCOUNT = spec("read_account", order_id="string")
TRANSFER = spec("transfer_funds", to="string", amount="number", currency="string")
TOOLS = [READ_ACCOUNT, TRANSFER]
REJECTED = "The reviewer rejected this call. Reason: customer was already refunded"
NOT_EXECUTED = "Not executed: the request changed before this call ran."


def run_to_transfer(
    request: str, tools: list[ToolSpec] = TOOLS, account: str = "acct-7"
) -> list[BaseMessage]:
    """Play the conversation up to the proposed transfer (the last message)."""
    model = OfflineRefundModel()
    messages: list[BaseMessage] = [HumanMessage(request)]
    reply = model.generate(messages, tools)
    messages.append(reply)
    if reply.tool_calls and reply.tool_calls[0].name.startswith(("read", "lookup")):
        answer = f'{{"account_id": "{account}", "status": "paid"}}'
        messages.append(ToolMessage(answer, tool_call_id=reply.tool_calls[0].id))
        messages.append(model.generate(messages, tools))
    return messages


def answer(messages: list[BaseMessage], content: str, **kwargs) -> AIMessage:
    last = messages[-1]
    assert isinstance(last, AIMessage)
    tool_message = ToolMessage(content, tool_call_id=last.tool_calls[0].id, **kwargs)
    return OfflineRefundModel().generate([*messages, tool_message], TOOLS)


@pytest.mark.parametrize(
    ("text", "order", "amount", "currency"),
    [
        ("Refund order #42 for $250.", "42", "250", "USD"),
        ("Please refund 250 dollars for order 42", "42", "250", "USD"),
        ("Refund £30 on order 7", "7", "30", "GBP"),
        ("Refund order #A-1001 for USD 1,200.50", "A-1001", "1200.50", "USD"),
        ("Bitte erstatte Bestellung Nr. 42: 1.200,50 EUR", "42", "1200.50", "EUR"),
        ("Erstatten Sie 80 Euro für Bestellung 42", "42", "80", "EUR"),
        ("Remboursez la commande n° 42 de 1 200,50 €", "42", "1200.50", "EUR"),
        ("Remboursez 250 dollars pour la commande 9", "9", "250", "USD"),
        ("Reembolsa el pedido #42 por 250 dólares", "42", "250", "USD"),
        ("Reembolse el pedido número 15: 80 €", "15", "80", "EUR"),
        ("注文#42の5000円を返金してください", "42", "5000", "JPY"),
        ("注文番号42、２５０ドルを返金して", "42", "250", "USD"),
        ("¥5000 for #9", "9", "5000", "JPY"),
        ("注文#3に1万2000円を返金", "3", "12000", "JPY"),
        ("refund €80, order 5", "5", "80", "EUR"),
    ],
)
def test_it_reads_orders_and_amounts_in_several_languages(
    text, order, amount, currency
):
    money = extract_money(text)

    assert extract_order(text) == order
    assert money is not None
    assert (money.amount, money.currency) == (Decimal(amount), currency)


@pytest.mark.parametrize("text", ["Refund order #42", "Refund 250 for order 42", "hi"])
def test_a_bare_number_is_not_an_amount(text):
    assert extract_money(text) is None


def test_money_is_formatted_as_people_write_it():
    assert format_money(Decimal("1200.5"), "USD") == "$1,200.50"
    assert format_money(Decimal("5000"), "JPY") == "¥5,000"
    assert format_money(Decimal("12"), "CHF") == "12.00 CHF"


def test_it_looks_the_order_up_first_then_proposes_the_transfer():
    messages = run_to_transfer("Refund order #42 for $250.")

    lookup, proposal = messages[1], messages[-1]
    assert isinstance(lookup, AIMessage) and isinstance(proposal, AIMessage)
    assert [(c.name, c.args) for c in lookup.tool_calls] == [
        ("read_account", {"order_id": "42"})
    ]
    assert [(c.name, c.args) for c in proposal.tool_calls] == [
        ("transfer_funds", {"to": "acct-7", "amount": 250, "currency": "USD"})
    ]
    assert proposal.response_metadata["finish_reason"] == "tool_calls"


def test_it_fills_in_the_parameter_names_and_types_the_tools_declare():
    tools = [
        spec("lookup_order", order_id="integer"),
        spec("refund", order_id="integer", amount_cents="integer", currency="string"),
    ]

    messages = run_to_transfer("Reembolsa el pedido #42 por 1.200,50 €", tools)

    lookup, proposal = messages[1], messages[-1]
    assert isinstance(lookup, AIMessage) and isinstance(proposal, AIMessage)
    assert lookup.tool_calls[0].args == {"order_id": 42}
    assert proposal.tool_calls[0].args == {
        "order_id": 42,
        "amount_cents": 120050,
        "currency": "EUR",
    }


def test_without_a_lookup_tool_it_proposes_the_transfer_at_once():
    reply = OfflineRefundModel().generate(
        [HumanMessage("Refund £30 to acct-9 for order #7")], [TRANSFER]
    )

    assert [(c.name, c.args) for c in reply.tool_calls] == [
        ("transfer_funds", {"to": "acct-9", "amount": 30, "currency": "GBP"})
    ]


def test_it_reports_a_sent_refund_in_one_sentence():
    messages = run_to_transfer("Refund order #42 for $250.")

    reply = answer(messages, '{"status": "sent", "transfer_id": "tx-1"}')

    assert reply.text == "Refund of $250.00 sent to acct-7."
    assert reply.tool_calls == []


def test_it_reports_a_failed_transfer_with_the_error():
    messages = run_to_transfer("Refund order #42 for $250.")

    reply = answer(messages, "Error: ValueError: insufficient funds", status="error")

    assert reply.text == "I could not send the refund of $250.00: insufficient funds"
    assert reply.tool_calls == []


def test_it_acknowledges_a_rejection_with_the_reason_and_does_not_retry():
    messages = run_to_transfer("Refund order #42 for $250.")

    reply = answer(messages, REJECTED, status="error")

    assert "rejected" in reply.text
    assert "customer was already refunded" in reply.text
    assert reply.tool_calls == []


def test_it_re_proposes_the_transfer_with_the_amount_a_human_asks_for():
    messages = run_to_transfer("Refund order #42 for $250.")
    first = messages[-1]
    assert isinstance(first, AIMessage)

    reply = OfflineRefundModel().generate(
        [*messages, HumanMessage("Approved, but amount should be 245.")], TOOLS
    )

    (call,) = reply.tool_calls
    assert call.name == "transfer_funds"
    assert call.args == {"to": "acct-7", "amount": 245, "currency": "USD"}
    assert call.id != first.tool_calls[0].id


def test_it_re_proposes_after_the_runtime_withdrew_the_waiting_call():
    messages = run_to_transfer("Erstatten Sie 80 Euro für Bestellung 42")
    waiting = messages[-1]
    assert isinstance(waiting, AIMessage)
    withdrawn = ToolMessage(
        NOT_EXECUTED, tool_call_id=waiting.tool_calls[0].id, status="error"
    )

    reply = OfflineRefundModel().generate(
        [*messages, withdrawn, HumanMessage("Der Betrag soll 75,50 € sein.")], TOOLS
    )

    assert reply.tool_calls[0].args == {
        "to": "acct-7",
        "amount": 75.5,
        "currency": "EUR",
    }


def test_after_a_rejection_a_new_amount_is_proposed_again():
    messages = run_to_transfer("Refund order #42 for $250.")
    last = messages[-1]
    assert isinstance(last, AIMessage)
    rejected = ToolMessage(REJECTED, tool_call_id=last.tool_calls[0].id, status="error")

    reply = OfflineRefundModel().generate(
        [*messages, rejected, HumanMessage("Then refund $100 instead.")], TOOLS
    )

    assert reply.tool_calls[0].args["amount"] == 100


def test_a_human_can_cancel_the_waiting_transfer():
    messages = run_to_transfer("Refund order #42 for $250.")

    reply = OfflineRefundModel().generate(
        [*messages, HumanMessage("Cancel that, please.")], TOOLS
    )

    assert reply.tool_calls == []
    assert "not send" in reply.text


def test_an_ambiguous_request_gets_a_question_and_no_tool_call():
    reply = OfflineRefundModel().generate([HumanMessage("Refund order #42")], TOOLS)

    assert reply.tool_calls == []
    assert reply.text.endswith("?") or "?" in reply.text
    assert "order #42" in reply.text


def test_the_answer_to_its_question_completes_the_request():
    model = OfflineRefundModel()
    messages: list[BaseMessage] = [HumanMessage("Refund order #42")]
    messages.append(model.generate(messages, TOOLS))
    messages.append(HumanMessage("It was €80."))

    reply = model.generate(messages, TOOLS)

    assert [(c.name, c.args) for c in reply.tool_calls] == [
        ("read_account", {"order_id": "42"})
    ]


def test_small_talk_gets_help_and_no_tool_call():
    reply = OfflineRefundModel().generate(
        [SystemMessage("Be kind."), HumanMessage("hello")], TOOLS
    )

    assert reply.tool_calls == []
    assert "order number" in reply.text


def test_it_is_deterministic_and_ignores_message_ids():
    def conversation() -> list[BaseMessage]:
        return [HumanMessage("Refund order #42 for $250.").with_id()]

    first = OfflineRefundModel().generate(conversation(), TOOLS)
    again = OfflineRefundModel().generate(conversation(), TOOLS)
    other = OfflineRefundModel().generate([HumanMessage("Refund #43 for $250.")], TOOLS)

    assert first.to_dict() == again.to_dict()
    assert first.tool_calls[0].id.startswith("call_")
    assert other.tool_calls[0].id != first.tool_calls[0].id
    assert other.id != first.id


def test_the_models_satisfy_the_chat_model_protocol():
    assert isinstance(OfflineRefundModel(), ChatModel)
    assert isinstance(ScriptedModel([]), ChatModel)
    assert isinstance(LoopModel("noop", 1), ChatModel)
    assert OfflineRefundModel().identity == "offline-refund-v1"


def test_a_scripted_model_replies_in_order_and_then_fails():
    scripted = AIMessage(content="", tool_calls=[ToolCall("noop", {}, "")])
    model = ScriptedModel(
        [scripted, lambda messages, tools: f"saw {len(messages)}", "bye"]
    )

    first = model.generate([HumanMessage("a")], [])
    second = model.generate([HumanMessage("a"), HumanMessage("b")], [])
    third = model.generate([], [])

    assert first.tool_calls[0].id == "call_0_0"
    assert first is not scripted and scripted.tool_calls[0].id == ""
    assert second.text == "saw 2"
    assert third.text == "bye"
    assert len(model.calls) == 3
    with pytest.raises(ModelError, match="only 3 replies"):
        model.generate([], [])


def test_the_loop_model_calls_its_tool_n_times_then_stops():
    model = LoopModel("noop", steps=3)
    tools = [spec("noop", data="string")]
    messages: list[BaseMessage] = [HumanMessage("go")]
    ids = []
    while True:
        reply = model.generate(messages, tools)
        messages.append(reply)
        if not reply.tool_calls:
            break
        call = reply.tool_calls[0]
        ids.append(call.id)
        assert call.name == "noop"
        assert len(call.args["data"]) == 400
        messages.append(ToolMessage(call.args["data"], tool_call_id=call.id))

    assert len(ids) == len(set(ids)) == 3
    assert messages[-1].text == "Finished 3 steps."
    assert model.identity == "loop:noop:3:400"


def test_every_demo_request_is_read_as_its_data_set_says() -> None:
    import json
    from pathlib import Path

    from agentmatic.llms.offline import _refund_amount

    path = Path(__file__).resolve().parents[1] / "approvals/data/refund_requests.json"
    for request in json.loads(path.read_text()):
        money, _named = _refund_amount(request["text"])
        got = float(money.amount) if money else None
        assert got == request["expected_amount"], request["id"]
