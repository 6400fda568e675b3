"""OpenAI Chat Completions (with tools) behind the `ChatModel` protocol.

The `openai` package is imported on first use, so importing `agentmatic.llms`
stays cheap for code that only needs the offline models. Retries are ours,
not the client's: 429, 408, 5xx, timeouts and dropped connections are retried
with exponential backoff and jitter, anything else fails at once.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    import openai as openai_sdk
    from openai.types.chat import ChatCompletion

logger = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({408, 429})


class OpenAIModelError(ModelError):
    """A Chat Completions call failed; `status_code` is None for transport errors."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        attempts: int = 1,
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.attempts = attempts
        self.retryable = retryable


class OpenAI:
    """A chat model served by OpenAI's Chat Completions API (or a compatible one).

    The key and the endpoint come from the arguments, else from
    ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL`` as they are at construction,
    else as they are at the first call. The HTTP client is created on the
    first call, so ``OpenAI()`` can be built where no key is configured yet;
    a missing key then fails that call with a `ModelError`.

    ``max_retries`` counts retries after the first attempt. The delay before
    retry ``n`` is ``retry_base_delay * 2**n`` (capped by
    ``retry_max_delay``, and at least the server's ``Retry-After``) with
    jitter. Pass ``client`` to use a ready ``openai.OpenAI`` instance; its own
    retries then add to ours.
    """

    def __init__(
        self,
        model: str = "gpt-4o-mini",
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        temperature: float | None = 0.0,
        max_retries: int = 4,
        timeout: float = 60.0,
        client: openai_sdk.OpenAI | None = None,
        parallel_tool_calls: bool | None = None,
        retry_base_delay: float = 0.5,
        retry_max_delay: float = 20.0,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.model = model
        self.temperature = temperature
        self.max_retries = max_retries
        self.timeout = timeout
        self.parallel_tool_calls = parallel_tool_calls
        self.retry_base_delay = retry_base_delay
        self.retry_max_delay = retry_max_delay
        self._api_key = api_key or os.environ.get("OPENAI_API_KEY") or None
        self._base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        self._client = client
        self._client_lock = threading.Lock()
        # Jitter only spreads retries out; it needs no cryptographic quality.
        self._random = random.Random()  # noqa: S311

    @property
    def identity(self) -> str:
        """Return ``"openai:<model>"``."""
        return f"openai:{self.model}"

    def __repr__(self) -> str:
        return f"OpenAI(model={self.model!r}, base_url={self._base_url!r})"

    def generate(
        self, messages: Sequence[BaseMessage], tools: Sequence[ToolSpec]
    ) -> AIMessage:
        """Send the conversation and tools; return the model's next message."""
        import openai as openai_sdk

        client = self._get_client()
        request: dict[str, Any] = {
            "model": self.model,
            "messages": messages_to_openai(messages),
        }
        if self.temperature is not None:
            request["temperature"] = self.temperature
        if tools:
            request["tools"] = tools_to_openai(tools)
            if self.parallel_tool_calls is not None:
                request["parallel_tool_calls"] = self.parallel_tool_calls

        attempt = 0
        while True:
            try:
                completion = client.chat.completions.create(**request)
            except openai_sdk.APIStatusError as exc:
                status = exc.status_code
                retryable = status in RETRYABLE_STATUSES or status >= 500
                detail = f"HTTP {status}: {_error_text(exc)}"
                if not retryable or attempt >= self.max_retries:
                    raise self._failure(detail, status, attempt, retryable) from exc
                delay = self._backoff(attempt, _retry_after(exc))
            except openai_sdk.APIConnectionError as exc:
                kind = "timeout" if isinstance(exc, openai_sdk.APITimeoutError) else ""
                detail = f"connection {kind or 'error'}: {exc}"
                if attempt >= self.max_retries:
                    raise self._failure(detail, None, attempt, True) from exc
                delay = self._backoff(attempt, None)
            except openai_sdk.OpenAIError as exc:
                raise self._failure(
                    f"client error: {exc}", None, attempt, False
                ) from exc
            else:
                return message_from_openai(completion)
            attempt += 1
            logger.warning(
                "OpenAI %s call failed (%s); retry %s of %s in %.2fs",
                self.model,
                detail,
                attempt,
                self.max_retries,
                delay,
            )
            time.sleep(delay)

    def _failure(
        self, detail: str, status: int | None, attempt: int, retryable: bool
    ) -> OpenAIModelError:
        tries = attempt + 1
        plural = "" if tries == 1 else "s"
        return OpenAIModelError(
            f"OpenAI model {self.model!r} failed after {tries} attempt{plural}: "
            f"{detail}",
            status_code=status,
            attempts=tries,
            retryable=retryable,
        )

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        delay = min(self.retry_max_delay, self.retry_base_delay * 2**attempt)
        delay = delay / 2 + self._random.uniform(0, delay / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retry_max_delay))
        return delay

    def _get_client(self) -> openai_sdk.OpenAI:
        with self._client_lock:
            if self._client is not None:
                return self._client
            api_key = self._api_key or os.environ.get("OPENAI_API_KEY")
            base_url = self._base_url or os.environ.get("OPENAI_BASE_URL") or None
            if not api_key:
                raise OpenAIModelError(
                    f"OpenAI model {self.model!r} has no API key: pass "
                    "api_key=... or set OPENAI_API_KEY"
                )
            import openai as openai_sdk

            self._client = openai_sdk.OpenAI(
                api_key=api_key,
                base_url=base_url,
                timeout=self.timeout,
                max_retries=0,
            )
            return self._client


def tools_to_openai(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    """Return the tools in the API's ``{"type": "function", ...}`` shape."""
    return [
        {
            "type": "function",
            "function": {
                "name": tool["name"],
                "description": tool.get("description", ""),
                "parameters": tool.get("parameters")
                or {"type": "object", "properties": {}},
            },
        }
        for tool in tools
    ]


def messages_to_openai(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """Return the conversation as Chat Completions message dicts.

    An invalid tool call is sent back only when a tool message answers it;
    the API refuses a call that nothing answers.
    """
    answered = {m.tool_call_id for m in messages if isinstance(m, ToolMessage)}
    return [_message_to_openai(m, answered) for m in messages]


def _message_to_openai(msg: BaseMessage, answered: set[str]) -> dict[str, Any]:
    out: dict[str, Any]
    if isinstance(msg, SystemMessage):
        out = {"role": "system", "content": msg.text}
    elif isinstance(msg, HumanMessage):
        out = {"role": "user", "content": _user_content(msg.content)}
    elif isinstance(msg, AIMessage):
        calls = [
            _call_to_openai(tc.id, tc.name, json.dumps(tc.args))
            for tc in msg.tool_calls
        ]
        calls += [
            _call_to_openai(bad.get("id") or "", bad.get("name") or "", _raw(bad))
            for bad in msg.invalid_tool_calls
            if bad.get("id") in answered
        ]
        out = {"role": "assistant", "content": msg.text or None}
        if calls:
            out["tool_calls"] = calls
        elif out["content"] is None:
            out["content"] = ""
    elif isinstance(msg, ToolMessage):
        out = {
            "role": "tool",
            "tool_call_id": msg.tool_call_id,
            "content": _tool_content(msg.content),
        }
    else:
        raise ModelError(f"cannot send a {type(msg).__name__} to OpenAI")
    if msg.name and not isinstance(msg, ToolMessage):
        out["name"] = msg.name
    return out


def _call_to_openai(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def _raw(invalid_call: dict[str, Any]) -> str:
    args = invalid_call.get("args")
    return args if isinstance(args, str) else json.dumps(args or {})


def _user_content(content: Any) -> Any:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return [
            {"type": "text", "text": part} if isinstance(part, str) else part
            for part in content
        ]
    return str(content)


def _tool_content(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, str) or (isinstance(p, dict) and p.get("type") == "text")
        for p in content
    ):
        return "".join(
            p if isinstance(p, str) else str(p.get("text", "")) for p in content
        )
    return json.dumps(content, default=str, ensure_ascii=False)


def message_from_openai(completion: ChatCompletion) -> AIMessage:
    """Turn a completion into an `AIMessage`, LangChain style.

    Arguments that are not a JSON object become entries of
    ``invalid_tool_calls`` carrying the raw string and the parse error.
    """
    if not completion.choices:
        raise ModelError(f"OpenAI completion {completion.id!r} has no choices")
    choice = completion.choices[0]
    message = choice.message
    tool_calls: list[ToolCall] = []
    invalid: list[dict[str, Any]] = []
    for index, raw in enumerate(message.tool_calls or []):
        # A compatible server may leave ids out; calls still need distinct ones
        # so each gets its own answer and idempotency key.
        if not getattr(raw, "id", None):
            raw.id = f"call_{completion.id or 'local'}_{index}_{uuid.uuid4().hex[:8]}"
        function = getattr(raw, "function", None)
        if function is None:
            invalid.append(
                _invalid(
                    getattr(raw, "type", None), None, raw.id, "not a function call"
                )
            )
            continue
        arguments = function.arguments
        try:
            args = (
                json.loads(arguments, parse_constant=_refuse_constant)
                if arguments
                else {}
            )
        except (json.JSONDecodeError, ValueError) as exc:
            invalid.append(_invalid(function.name, arguments, raw.id, str(exc)))
            continue
        if not isinstance(args, dict):
            error = f"arguments are a JSON {type(args).__name__}, not an object"
            invalid.append(_invalid(function.name, arguments, raw.id, error))
            continue
        tool_calls.append(ToolCall(name=function.name, args=args, id=raw.id))

    additional: dict[str, Any] = {}
    if getattr(message, "refusal", None):
        additional["refusal"] = message.refusal
    metadata: dict[str, Any] = {
        "id": completion.id,
        "model_name": completion.model,
        "model_provider": "openai",
        "finish_reason": choice.finish_reason,
        "system_fingerprint": completion.system_fingerprint,
    }
    return AIMessage(
        content=message.content or "",
        additional_kwargs=additional,
        response_metadata=metadata,
        # Suffixed: a proxy or fake server may repeat completion ids, and a
        # repeated message id would replace the earlier message in the thread.
        id=f"{completion.id or 'chatcmpl'}-{uuid.uuid4().hex[:8]}",
        tool_calls=tool_calls,
        invalid_tool_calls=invalid,
        usage_metadata=_usage(completion),
    )


def _invalid(
    name: str | None, args: str | None, call_id: str | None, error: str
) -> dict[str, Any]:
    return {
        "name": name,
        "args": args,
        "id": call_id,
        "error": error,
        "type": "invalid_tool_call",
    }


def _usage(completion: ChatCompletion) -> dict[str, Any] | None:
    usage = completion.usage
    if usage is None:
        return None
    out: dict[str, Any] = {
        "input_tokens": usage.prompt_tokens,
        "output_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    prompt_details = getattr(usage, "prompt_tokens_details", None)
    cached = getattr(prompt_details, "cached_tokens", None)
    if cached is not None:
        out["input_token_details"] = {"cache_read": cached}
    completion_details = getattr(usage, "completion_tokens_details", None)
    reasoning = getattr(completion_details, "reasoning_tokens", None)
    if reasoning is not None:
        out["output_token_details"] = {"reasoning": reasoning}
    return out


def _error_text(exc: openai_sdk.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    return exc.message


def _retry_after(exc: openai_sdk.APIStatusError) -> float | None:
    headers = exc.response.headers
    try:
        if "retry-after-ms" in headers:
            return float(headers["retry-after-ms"]) / 1000
        if "retry-after" in headers:
            return float(headers["retry-after"])
    except ValueError:
        return None
    return None


def _refuse_constant(name: str) -> Any:
    """Refuse NaN and Infinity in arguments: no gate can compare them safely."""
    raise ValueError(f"{name} is not a number a tool can be given")
