"""An OpenAI-compatible Chat Completions server on 127.0.0.1, for tests.

It answers ``POST /v1/chat/completions`` (and ``/chat/completions``) the way
the real API does where our code depends on it: a bearer token is required
(401), and a conversation whose tool calls and tool messages do not pair up
is refused with 400 and the API's wording. What the model says is a
pluggable *behaviour*: a function from the request's messages and tools to
an assistant message (by default `OfflineRefundModel`). Failures can be
queued: the next N requests get a 429, a 500 or a dropped connection.

Register the fixture with ``pytest_plugins = ["tests.fake_openai"]``; it
points ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` at the server.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from agentmatic.llms.base import ToolSpec
from agentmatic.llms.offline import OfflineRefundModel
from agentmatic.llms.openai import messages_to_openai
from agentmatic.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolCall,
    ToolMessage,
)

logger = logging.getLogger(__name__)

FAKE_API_KEY = "sk-test-fake-openai"
CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")
DROP = "drop"

# (messages, tools) as the request has them -> an assistant message dict, its
# text, an AIMessage, or a whole completion dict (one with "choices").
Behaviour = Callable[[list[dict[str, Any]], list[dict[str, Any]]], Any]

_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Bad request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    404: ("Not found.", "invalid_request_error", None),
    429: (
        "Rate limit reached for requests. Please try again shortly.",
        "requests",
        "rate_limit_exceeded",
    ),
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    503: ("The engine is currently overloaded.", "server_error", None),
}


class FakeAPIError(Exception):
    """Raise from a behaviour to answer with this status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class RecordedRequest:
    """One request the server received, and the status it answered (0: dropped)."""

    path: str
    headers: dict[str, str]
    body: Any
    status: int = 0

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list((self.body or {}).get("messages") or [])

    @property
    def tools(self) -> list[dict[str, Any]]:
        return list((self.body or {}).get("tools") or [])


@dataclass
class _Failure:
    status: int | str
    retry_after: float | None = None
    message: str | None = None


@dataclass
class _Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class FakeOpenAI:
    """The server: `url` (ends in ``/v1``), `requests`, `fail_next`, `set_behaviour`.

    Use it as a context manager, or `start()` and `stop()` it.
    """

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self._behaviour = behaviour or offline_behaviour
        self._requests: list[RecordedRequest] = []
        self._failures: deque[_Failure] = deque()
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---

    def start(self) -> FakeOpenAI:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-openai",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Return the base URL to give the client, ``http://127.0.0.1:<port>/v1``."""
        if self._server is None:
            raise RuntimeError("the fake OpenAI server is not running")
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    # --- what tests set and read ---

    @property
    def requests(self) -> list[RecordedRequest]:
        """Return every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def last_request(self) -> RecordedRequest:
        with self._lock:
            return self._requests[-1]

    def set_behaviour(self, behaviour: Behaviour | None) -> None:
        """Answer chat requests with `behaviour` (None: the offline refund model)."""
        with self._lock:
            self._behaviour = behaviour or offline_behaviour

    def fail_next(
        self,
        status: int | str,
        n: int = 1,
        *,
        retry_after: float | None = None,
        message: str | None = None,
    ) -> None:
        """Answer the next `n` requests with `status`, or drop them (``"drop"``)."""
        if status != DROP and not isinstance(status, int):
            raise ValueError(f"status must be an HTTP status or {DROP!r}")
        with self._lock:
            self._failures.extend(
                _Failure(status, retry_after, message) for _ in range(n)
            )

    def reset(self) -> None:
        """Forget recorded requests and queued failures; restore the behaviour."""
        with self._lock:
            self._requests.clear()
            self._failures.clear()
            self._behaviour = offline_behaviour

    # --- serving ---

    def _handle(self, handler: _Handler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        path = handler.path.split("?", 1)[0]
        headers = {k.lower(): v for k, v in handler.headers.items()}
        record = RecordedRequest(path=path, headers=headers, body=body)
        with self._lock:
            self._requests.append(record)
            failure = self._failures.popleft() if self._failures else None
            behaviour = self._behaviour

        if failure is not None and failure.status == DROP:
            handler.drop()
            return
        reply = self._reply(path, headers, body, failure, behaviour)
        record.status = reply.status
        handler.send_json(reply.status, reply.body, reply.headers)

    def _reply(
        self,
        path: str,
        headers: dict[str, str],
        body: Any,
        failure: _Failure | None,
        behaviour: Behaviour,
    ) -> _Reply:
        if failure is not None:
            assert isinstance(failure.status, int)
            extra = {}
            if failure.retry_after is not None:
                extra["retry-after"] = str(failure.retry_after)
            return _error(failure.status, failure.message, headers=extra)
        if path not in CHAT_PATHS:
            return _error(404, f"Invalid URL (POST {path})")
        if not re.fullmatch(r"Bearer \S+", headers.get("authorization", "")):
            return _error(
                401,
                "You didn't provide an API key. You need to provide your API key "
                "in an Authorization header using Bearer auth.",
            )
        problem = validate_chat_request(body)
        if problem is not None:
            message, param = problem
            return _error(400, message, param=param)
        try:
            answer = behaviour(list(body["messages"]), list(body.get("tools") or []))
        except FakeAPIError as exc:
            return _error(exc.status, exc.message)
        except Exception as exc:
            logger.exception("fake OpenAI behaviour failed")
            return _error(500, f"behaviour raised {exc!r}")
        return _Reply(200, _completion(body, answer))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeOpenAI


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        self.server.fake._handle(self)

    def do_GET(self) -> None:
        self.send_json(*_as_tuple(_error(404, f"Invalid URL (GET {self.path})")))

    def send_json(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-request-id", f"req_{uuid.uuid4().hex[:16]}")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def drop(self) -> None:
        """Close the connection without a response, as a crashed proxy would."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("fake OpenAI: %s", format % args)


def _as_tuple(reply: _Reply) -> tuple[int, dict[str, Any], dict[str, str]]:
    return reply.status, reply.body, reply.headers


def _error(
    status: int,
    message: str | None = None,
    *,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> _Reply:
    default, kind, code = _ERRORS.get(status, (f"HTTP {status}", "server_error", None))
    return _Reply(
        status,
        {
            "error": {
                "message": message or default,
                "type": kind,
                "param": param,
                "code": code,
            }
        },
        headers or {},
    )


# --- validation, as the real API does it --------------------------------------

_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def validate_chat_request(body: Any) -> tuple[str, str | None] | None:
    """Return ``(message, param)`` for what the real API would refuse, else None."""
    if not isinstance(body, dict):
        return "We could not parse the JSON body of your request.", None
    if not body.get("model"):
        return "you must provide a model parameter", "model"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "[] is too short - 'messages'", "messages"
    problem = _validate_tools(body)
    if problem is not None:
        return problem
    return _validate_messages(messages)


def _validate_tools(body: dict[str, Any]) -> tuple[str, str | None] | None:
    if "tools" not in body:
        if body.get("parallel_tool_calls") is not None:
            return (
                "Invalid value for 'parallel_tool_calls': 'parallel_tool_calls' is "
                "only allowed when 'tools' are specified.",
                "parallel_tool_calls",
            )
        return None
    tools = body["tools"]
    if not isinstance(tools, list) or not tools:
        return (
            "Invalid 'tools': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            "tools",
        )
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type") != "function":
            return f"Missing required parameter: 'tools[{i}].function'.", f"tools[{i}]"
        if not _TOOL_NAME.fullmatch(str(function.get("name", ""))):
            return (
                f"Invalid 'tools[{i}].function.name': string does not match pattern. "
                "Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'.",
                f"tools[{i}].function.name",
            )
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            return (
                f"Invalid type for 'tools[{i}].function.parameters': expected an "
                "object.",
                f"tools[{i}].function.parameters",
            )
    return None


def _validate_messages(messages: list[Any]) -> tuple[str, str | None] | None:
    block: set[str] = set()  # ids of the tool calls now being answered
    pending: list[str] = []  # those not answered yet, in order
    for i, msg in enumerate(messages):
        role = msg.get("role") if isinstance(msg, dict) else None
        if role not in _ROLES:
            return (
                f"Invalid value: '{role}'. Supported values are: 'system', "
                "'assistant', 'user', 'function', 'tool', and 'developer'.",
                f"messages[{i}].role",
            )
        assert isinstance(msg, dict)
        if role == "tool":
            call_id = msg.get("tool_call_id")
            if call_id not in block:
                return (
                    "Invalid parameter: messages with role 'tool' must be a response "
                    "to a preceeding message with 'tool_calls'.",
                    f"messages.[{i}].role",
                )
            if call_id in pending:
                pending.remove(call_id)
            problem = _check_content(msg, i, nullable=False)
            if problem is not None:
                return problem
            continue
        if pending:
            return _unanswered(pending, i)
        block = set()
        if role == "assistant" and msg.get("tool_calls") is not None:
            problem = _check_tool_calls(msg["tool_calls"], i)
            if problem is not None:
                return problem
            pending = [tc["id"] for tc in msg["tool_calls"]]
            block = set(pending)
        nullable = role == "assistant" and bool(msg.get("tool_calls"))
        problem = _check_content(msg, i, nullable=nullable)
        if problem is not None:
            return problem
    if pending:
        return _unanswered(pending, len(messages))
    return None


def _unanswered(pending: list[str], index: int) -> tuple[str, str]:
    return (
        "An assistant message with 'tool_calls' must be followed by tool messages "
        "responding to each 'tool_call_id'. The following tool_call_ids did not "
        f"have response messages: {', '.join(pending)}",
        f"messages.[{index}].role",
    )


def _check_tool_calls(calls: Any, i: int) -> tuple[str, str] | None:
    where = f"messages[{i}].tool_calls"
    if not isinstance(calls, list) or not calls:
        return (
            f"Invalid '{where}': empty array. Expected an array with minimum "
            "length 1, but got an empty array instead.",
            where,
        )
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not call.get("id"):
            return f"Missing required parameter: '{where}[{j}].id'.", f"{where}[{j}]"
        if call.get("type") != "function":
            return f"Invalid value for '{where}[{j}].type'.", f"{where}[{j}].type"
        if not isinstance(function.get("arguments"), str):
            return (
                f"Invalid type for '{where}[{j}].function.arguments': expected a "
                "string, but got an object instead.",
                f"{where}[{j}].function.arguments",
            )
    return None


def _check_content(
    msg: dict[str, Any], i: int, *, nullable: bool
) -> tuple[str, str] | None:
    content = msg.get("content")
    if content is None and not nullable:
        return (
            "Invalid value for 'content': expected a string, got null.",
            f"messages.[{i}].content",
        )
    if content is not None and not isinstance(content, str | list):
        return (
            f"Invalid type for 'messages[{i}].content': expected one of a string "
            "or array of objects.",
            f"messages[{i}].content",
        )
    return None


# --- answers -------------------------------------------------------------------


def _completion(body: dict[str, Any], answer: Any) -> dict[str, Any]:
    if isinstance(answer, dict) and "choices" in answer:
        completion = dict(answer)
        completion.setdefault("id", f"chatcmpl-{uuid.uuid4().hex[:24]}")
        completion.setdefault("object", "chat.completion")
        completion.setdefault("created", int(time.time()))
        completion.setdefault("model", body["model"])
        return completion
    message = _assistant_message(answer)
    prompt_tokens = len(json.dumps(body["messages"])) // 4 + 1
    completion_tokens = len(json.dumps(message)) // 4 + 1
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "system_fingerprint": "fp_fake",
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if message.get("tool_calls") else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _assistant_message(answer: Any) -> dict[str, Any]:
    if isinstance(answer, str):
        return {"role": "assistant", "content": answer, "refusal": None}
    if isinstance(answer, AIMessage):
        answer = messages_to_openai([answer])[0]
    if not isinstance(answer, dict):
        raise TypeError(f"a behaviour returned a {type(answer).__name__}")
    message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
    message.update(answer)
    calls = []
    for n, call in enumerate(message.get("tool_calls") or []):
        function = dict(call.get("function") or call)
        arguments = function.get("arguments", function.get("args", {}))
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        calls.append(
            {
                "id": call.get("id") or f"call_{uuid.uuid4().hex[:20]}{n}",
                "type": "function",
                "function": {"name": function["name"], "arguments": arguments},
            }
        )
    if calls:
        message["tool_calls"] = calls
    else:
        message.pop("tool_calls", None)
        if message["content"] is None:
            message["content"] = ""
    return message


def to_agentmatic_messages(messages: list[dict[str, Any]]) -> list[BaseMessage]:
    """Turn API message dicts back into ours (bad tool arguments become ``{}``)."""
    out: list[BaseMessage] = []
    for msg in messages:
        role, content = msg["role"], msg.get("content") or ""
        if role in ("system", "developer"):
            out.append(SystemMessage(content=content))
        elif role == "user":
            out.append(HumanMessage(content=content))
        elif role == "tool":
            out.append(ToolMessage(content=content, tool_call_id=msg["tool_call_id"]))
        else:
            calls = []
            for call in msg.get("tool_calls") or []:
                try:
                    args = json.loads(call["function"]["arguments"] or "{}")
                except ValueError:
                    args = {}
                calls.append(
                    ToolCall(
                        name=call["function"]["name"],
                        args=args if isinstance(args, dict) else {},
                        id=call["id"],
                    )
                )
            out.append(AIMessage(content=content, tool_calls=calls))
    return out


def to_tool_specs(tools: list[dict[str, Any]]) -> list[ToolSpec]:
    """Turn the request's tools back into `ToolSpec` dicts."""
    return [
        ToolSpec(
            name=tool["function"]["name"],
            description=tool["function"].get("description", ""),
            parameters=tool["function"].get("parameters") or {},
        )
        for tool in tools
    ]


def offline_behaviour(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]]
) -> AIMessage:
    """Answer as `OfflineRefundModel` would."""
    return OfflineRefundModel().generate(
        to_agentmatic_messages(messages), to_tool_specs(tools)
    )


@pytest.fixture
def fake_openai(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    """Run a `FakeOpenAI` and point ``OPENAI_BASE_URL``/``OPENAI_API_KEY`` at it."""
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        monkeypatch.setenv("OPENAI_API_KEY", FAKE_API_KEY)
        yield server
