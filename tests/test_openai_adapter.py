"""The OpenAI adapter against the fake Chat Completions server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import httpx
import pytest

from agentmatic.errors import ModelError
from agentmatic.llms import (
    ChatModel,
    OfflineRefundModel,
    OpenAI,
    ToolSpec,
    default_model,
)
from agentmatic.llms.openai import OpenAIModelError, messages_to_openai
from agentmatic.messages import (
    AIMessage,
    HumanMessage,
    SystemMessage,
    ToolCall,
    ToolMessage,
)
from tests.fake_openai import (
    DROP,
    FAKE_API_KEY,
    FakeOpenAI,
    validate_chat_request,
)

TOOLS = [
    ToolSpec(
        name="read_account",
        description="Return the account that paid for an order.",
        parameters={
            "type": "object",
            "properties": {"order_id": {"type": "string"}},
            "required": ["order_id"],
        },
    ),
    ToolSpec(
        name="transfer_funds",
        description="Send money to an account.",
        parameters={
            "type": "object",
            "properties": {
                "to": {"type": "string"},
                "amount": {"type": "number"},
                "currency": {"type": "string"},
            },
            "required": ["to", "amount"],
        },
    ),
]


def fast(**kwargs: Any) -> OpenAI:
    """An adapter whose retries wait milliseconds, not seconds."""
    kwargs.setdefault("retry_base_delay", 0.001)
    kwargs.setdefault("retry_max_delay", 0.01)
    return OpenAI(**kwargs)


def assistant(content: str | None = None, *calls: tuple[str, str, str]) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [
            {"id": cid, "type": "function", "function": {"name": n, "arguments": a}}
            for cid, n, a in calls
        ]
    return message


def test_it_is_built_without_a_key_and_fails_at_the_first_call(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    model = OpenAI()

    assert model.identity == "openai:gpt-4o-mini"
    assert isinstance(model, ChatModel)
    with pytest.raises(ModelError, match="OPENAI_API_KEY"):
        model.generate([HumanMessage("hi")], [])


def test_it_picks_up_an_environment_set_after_construction(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    model = fast()
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        monkeypatch.setenv("OPENAI_API_KEY", FAKE_API_KEY)

        reply = model.generate([HumanMessage("hello")], TOOLS)

    assert reply.text.startswith("I can send refunds")
    assert server.last_request.headers["authorization"] == f"Bearer {FAKE_API_KEY}"


def test_a_round_trip_sends_the_api_format_and_reads_the_reply(fake_openai):
    call = ToolCall(name="read_account", args={"order_id": "42"}, id="call_1")
    conversation = [
        SystemMessage("You handle refunds."),
        HumanMessage("Refund order #42 for $250."),
        AIMessage(content="", tool_calls=[call]),
        ToolMessage(content='{"account_id": "acct-7"}', tool_call_id="call_1"),
    ]

    reply = fast(model="gpt-test").generate(conversation, TOOLS)

    body = fake_openai.last_request.body
    assert body["model"] == "gpt-test"
    assert body["temperature"] == 0.0
    assert "parallel_tool_calls" not in body
    assert body["messages"] == [
        {"role": "system", "content": "You handle refunds."},
        {"role": "user", "content": "Refund order #42 for $250."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {
                        "name": "read_account",
                        "arguments": '{"order_id": "42"}',
                    },
                }
            ],
        },
        {
            "role": "tool",
            "tool_call_id": "call_1",
            "content": '{"account_id": "acct-7"}',
        },
    ]
    assert body["tools"][1] == {
        "type": "function",
        "function": {
            "name": "transfer_funds",
            "description": "Send money to an account.",
            "parameters": TOOLS[1]["parameters"],
        },
    }
    assert [(c.name, c.args) for c in reply.tool_calls] == [
        ("transfer_funds", {"to": "acct-7", "amount": 250, "currency": "USD"})
    ]
    assert reply.invalid_tool_calls == []
    meta = reply.response_metadata
    assert meta["finish_reason"] == "tool_calls"
    assert meta["model_name"] == "gpt-test"
    assert meta["id"].startswith("chatcmpl-")
    assert reply.id is not None and reply.id.startswith(meta["id"])
    usage = reply.usage_metadata
    assert usage is not None
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0


def test_two_replies_never_share_a_message_id(fake_openai):
    fixed = {
        "choices": [{"index": 0, "message": assistant("hi"), "finish_reason": "stop"}]
    }
    fake_openai.set_behaviour(lambda messages, tools: {**fixed, "id": "chatcmpl-same"})
    model = fast()

    first = model.generate([HumanMessage("a")], [])
    second = model.generate([HumanMessage("b")], [])

    assert first.id != second.id
    assert first.usage_metadata is None


def test_parallel_tool_calls_come_back_all_and_in_order(fake_openai):
    fake_openai.set_behaviour(
        lambda messages, tools: assistant(
            None,
            ("call_b", "read_account", '{"order_id": "2"}'),
            ("call_a", "read_account", '{"order_id": "1"}'),
            ("call_c", "transfer_funds", '{"to": "acct-1", "amount": 5}'),
        )
    )

    reply = fast(parallel_tool_calls=True).generate([HumanMessage("go")], TOOLS)

    assert [(c.id, c.name, c.args) for c in reply.tool_calls] == [
        ("call_b", "read_account", {"order_id": "2"}),
        ("call_a", "read_account", {"order_id": "1"}),
        ("call_c", "transfer_funds", {"to": "acct-1", "amount": 5}),
    ]
    assert fake_openai.last_request.body["parallel_tool_calls"] is True


def test_answers_to_parallel_calls_go_back_in_one_block(fake_openai):
    calls = [
        ToolCall(name="read_account", args={"order_id": str(n)}, id=f"call_{n}")
        for n in (1, 2)
    ]
    conversation = [
        HumanMessage("Refund orders #1 and #2 for $5 each."),
        AIMessage(content="", tool_calls=calls),
        ToolMessage(content="acct-1", tool_call_id="call_1"),
        ToolMessage(content="acct-2", tool_call_id="call_2"),
    ]

    fast().generate(conversation, TOOLS)

    sent = fake_openai.last_request.messages
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool"]
    assert [c["id"] for c in sent[1]["tool_calls"]] == ["call_1", "call_2"]


def test_it_retries_429_then_succeeds(fake_openai):
    fake_openai.fail_next(429, 2)

    reply = fast().generate([HumanMessage("hello")], TOOLS)

    assert reply.text
    assert [r.status for r in fake_openai.requests] == [429, 429, 200]


def test_it_waits_at_least_the_retry_after_the_server_asks(fake_openai):
    fake_openai.fail_next(429, retry_after=0.2)
    started = time.monotonic()

    fast(retry_max_delay=1.0).generate([HumanMessage("hello")], [])

    assert time.monotonic() - started >= 0.2
    assert len(fake_openai.requests) == 2


def test_500s_exhaust_the_retries_and_raise_a_model_error(fake_openai):
    fake_openai.fail_next(500, 10)

    with pytest.raises(ModelError) as caught:
        fast(max_retries=2).generate([HumanMessage("hello")], TOOLS)

    error = caught.value
    assert isinstance(error, OpenAIModelError)
    assert error.status_code == 500
    assert error.attempts == 3
    assert "HTTP 500" in str(error)
    assert "server had an error" in str(error)
    assert len(fake_openai.requests) == 3


def test_a_dropped_connection_is_retried(fake_openai):
    fake_openai.fail_next(DROP)

    reply = fast().generate([HumanMessage("hello")], [])

    assert reply.text
    assert [r.status for r in fake_openai.requests] == [0, 200]


def test_a_refused_connection_ends_in_a_model_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    model = fast(api_key="sk-x", base_url=f"http://127.0.0.1:{port}/v1", max_retries=1)

    with pytest.raises(ModelError, match="connection error") as caught:
        model.generate([HumanMessage("hello")], [])

    assert caught.value.attempts == 2
    assert caught.value.status_code is None


def test_a_timeout_is_retried_then_reported(fake_openai):
    def slow(messages, tools):
        time.sleep(0.5)
        return "too late"

    fake_openai.set_behaviour(slow)

    with pytest.raises(ModelError, match="timeout"):
        fast(timeout=0.1, max_retries=1).generate([HumanMessage("hello")], [])

    assert len(fake_openai.requests) == 2


def test_arguments_that_are_not_a_json_object_become_invalid_tool_calls(
    fake_openai,
):
    fake_openai.set_behaviour(
        lambda messages, tools: assistant(
            None,
            ("call_ok", "read_account", '{"order_id": "42"}'),
            ("call_cut", "transfer_funds", '{"to": "acct-7", "amount": '),
            ("call_list", "transfer_funds", "[1, 2]"),
        )
    )

    reply = fast().generate([HumanMessage("go")], TOOLS)

    assert [c.id for c in reply.tool_calls] == ["call_ok"]
    cut, listed = reply.invalid_tool_calls
    assert cut["type"] == "invalid_tool_call"
    assert (cut["name"], cut["id"]) == ("transfer_funds", "call_cut")
    assert cut["args"] == '{"to": "acct-7", "amount": '
    assert cut["error"]
    assert listed["args"] == "[1, 2]"
    assert "not an object" in listed["error"]


def test_invalid_calls_are_sent_back_only_when_a_tool_message_answers_them():
    bad = {
        "name": "transfer_funds",
        "args": "{oops",
        "id": "call_bad",
        "error": "bad json",
        "type": "invalid_tool_call",
    }
    ai = AIMessage(content="", invalid_tool_calls=[bad])

    alone = messages_to_openai([HumanMessage("x"), ai])
    answered = messages_to_openai(
        [HumanMessage("x"), ai, ToolMessage("Error: bad json", tool_call_id="call_bad")]
    )

    assert alone[1] == {"role": "assistant", "content": ""}
    assert answered[1]["tool_calls"][0]["function"]["arguments"] == "{oops"


def test_an_unanswered_tool_call_is_refused_with_400_and_not_retried(fake_openai):
    pending = ToolCall(name="transfer_funds", args={"to": "a", "amount": 1}, id="c1")
    conversation = [
        HumanMessage("Refund order #42 for $250."),
        AIMessage(content="", tool_calls=[pending]),
        HumanMessage("Approved, but amount should be 245."),
    ]

    with pytest.raises(ModelError) as caught:
        fast().generate(conversation, TOOLS)

    assert caught.value.status_code == 400
    assert "did not have response messages: c1" in str(caught.value)
    assert len(fake_openai.requests) == 1


def test_a_tool_message_without_its_call_is_refused(fake_openai):
    conversation = [HumanMessage("hi"), ToolMessage("orphan", tool_call_id="nope")]

    with pytest.raises(ModelError, match=r"HTTP 400: .*preceeding message"):
        fast().generate(conversation, TOOLS)


def test_an_empty_tool_list_is_left_out_of_the_request(fake_openai):
    fast().generate([HumanMessage("hello")], [])

    assert "tools" not in fake_openai.last_request.body


def test_an_auth_failure_is_not_retried(fake_openai):
    fake_openai.fail_next(401, 5)

    with pytest.raises(ModelError, match="HTTP 401"):
        fast().generate([HumanMessage("hello")], [])

    assert len(fake_openai.requests) == 1


def test_the_server_wants_a_bearer_token(fake_openai):
    payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}

    bare = httpx.post(f"{fake_openai.url}/chat/completions", json=payload)
    ok = httpx.post(
        f"{fake_openai.url}/chat/completions",
        json=payload,
        headers={"Authorization": f"Bearer {FAKE_API_KEY}"},
    )

    assert bare.status_code == 401
    assert bare.json()["error"]["code"] == "invalid_api_key"
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("messages", "tools", "wanted"),
    [
        ([{"role": "user", "content": None}], None, "got null"),
        ([{"role": "assistant", "content": None}], None, "got null"),
        ([{"role": "robot", "content": "x"}], None, "Invalid value: 'robot'"),
        ([{"role": "user", "content": "x"}], [], "empty array"),
        (
            [
                {"role": "user", "content": "x"},
                assistant(None, ("c1", "f", "{}"), ("c2", "f", "{}")),
                {"role": "tool", "tool_call_id": "c2", "content": "ok"},
            ],
            None,
            "did not have response messages: c1",
        ),
        (
            [
                assistant(None, ("c1", "f", "{}")),
                {"role": "tool", "tool_call_id": "c1", "content": "ok"},
                {"role": "user", "content": "x"},
                {"role": "tool", "tool_call_id": "c1", "content": "again"},
            ],
            None,
            "must be a response to a preceeding message",
        ),
    ],
)
def test_the_server_refuses_what_the_real_api_refuses(messages, tools, wanted):
    body: dict[str, Any] = {"model": "m", "messages": messages}
    if tools is not None:
        body["tools"] = tools

    problem = validate_chat_request(body)

    assert problem is not None
    assert wanted in problem[0]


def test_the_offline_model_runs_a_whole_refund_behind_the_fake_server(fake_openai):
    model = fast()
    conversation: list[Any] = [HumanMessage("Refund order #42 for $250.")]

    lookup = model.generate(conversation, TOOLS)
    conversation += [
        lookup,
        ToolMessage(
            json.dumps({"account_id": "acct-7"}), tool_call_id=lookup.tool_calls[0].id
        ),
    ]
    transfer = model.generate(conversation, TOOLS)
    conversation += [
        transfer,
        ToolMessage('{"status": "sent"}', tool_call_id=transfer.tool_calls[0].id),
    ]
    final = model.generate(conversation, TOOLS)

    assert lookup.tool_calls[0].name == "read_account"
    assert transfer.tool_calls[0].args == {
        "to": "acct-7",
        "amount": 250,
        "currency": "USD",
    }
    assert final.text == "Refund of $250.00 sent to acct-7."
    assert final.response_metadata["finish_reason"] == "stop"


def test_default_model_is_openai_only_when_a_key_is_set(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert isinstance(default_model(), OfflineRefundModel)

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert isinstance(default_model(), OpenAI)
