"""Tools: plain typed functions whose signature and docstring are the schema.

Arguments are validated and coerced with pydantic before anything else sees
them (gate predicates included). A parameter named `idempotency_key` is not
shown to the model; the runtime fills it with a key stable across retries of
the same call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import inspect
import json
import re
from collections.abc import Callable
from typing import Any, get_type_hints

import pydantic

from agentmatic.errors import InvalidToolArguments
from agentmatic.llms.base import ToolSpec

IDEMPOTENCY_PARAM = "idempotency_key"
_ARG_LINE = re.compile(r"^\s*(\w+)\s*(?:\([^)]*\))?\s*:\s*(.+)$")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Return the description and per-argument help from a Google-style docstring."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    description: list[str] = []
    args: dict[str, str] = {}
    section = "description"
    current: str | None = None
    for line in lines:
        stripped = line.strip()
        if stripped.lower() in ("args:", "arguments:", "parameters:"):
            section = "args"
            continue
        if stripped.lower() in ("returns:", "raises:", "yields:", "examples:"):
            section = "other"
            continue
        if section == "description":
            description.append(stripped)
        elif section == "args":
            match = _ARG_LINE.match(line)
            if match:
                current = match.group(1)
                args[current] = match.group(2).strip()
            elif current and stripped:
                args[current] += " " + stripped
    text = " ".join(" ".join(description).split())
    return text, args


class Tool:
    """A function the model may call, with its schema and validator."""

    def __init__(self, fn: Callable[..., Any], *, name: str | None = None) -> None:
        self.fn = fn
        self.name = name or fn.__name__
        self.is_async = inspect.iscoroutinefunction(fn)
        description, arg_help = _parse_docstring(inspect.getdoc(fn) or "")
        self.description = description or self.name
        signature = inspect.signature(fn)
        hints = get_type_hints(fn, include_extras=True)
        self.wants_idempotency_key = IDEMPOTENCY_PARAM in signature.parameters
        fields: dict[str, Any] = {}
        for pname, param in signature.parameters.items():
            if pname == IDEMPOTENCY_PARAM:
                continue
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            annotation = hints.get(pname, Any)
            default = ... if param.default is param.empty else param.default
            fields[pname] = (
                annotation,
                pydantic.Field(default, description=arg_help.get(pname)),
            )
        create = pydantic.create_model
        self.model: type[pydantic.BaseModel] = create(  # type: ignore[call-overload]
            f"{self.name}_args",
            # NaN and infinity compare false with everything, so a gate such as
            # `amount >= 100` would wave them through: refuse them here.
            __config__=pydantic.ConfigDict(extra="forbid", allow_inf_nan=False),
            **fields,
        )
        schema = self.model.model_json_schema()
        schema.pop("title", None)
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)
        self.parameters: dict[str, Any] = schema

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(
            name=self.name, description=self.description, parameters=self.parameters
        )

    @property
    def schema_digest(self) -> str:
        raw = json.dumps(self.parameters, sort_keys=True, default=str).encode()
        return hashlib.sha256(raw).hexdigest()[:16]

    def validate(self, args: dict[str, Any]) -> dict[str, Any]:
        """Return the arguments coerced to the type hints, or raise naming the field."""
        if not isinstance(args, dict):
            raise InvalidToolArguments(
                self.name, "(all)", "arguments must be an object"
            )
        try:
            model = self.model.model_validate(args)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first.get("loc", ())) or "(all)"
            raise InvalidToolArguments(
                self.name, loc, first.get("msg", "invalid")
            ) from None
        return {name: getattr(model, name) for name in type(model).model_fields}

    def call(self, args: dict[str, Any], idempotency_key: str) -> Any:
        kwargs = dict(args)
        if self.wants_idempotency_key:
            kwargs[IDEMPOTENCY_PARAM] = idempotency_key
        if not self.is_async:
            return self.fn(**kwargs)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.fn(**kwargs))
        # Called from a thread that runs an event loop (a notebook): run the
        # coroutine on a loop of its own in a worker thread.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, self.fn(**kwargs)).result()


def as_tool(fn: Callable[..., Any] | Tool) -> Tool:
    return fn if isinstance(fn, Tool) else Tool(fn)


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
    """Mark a function as a tool (optional; plain functions work as they are)."""
    if fn is None:
        return lambda f: Tool(f, name=name)
    return Tool(fn, name=name)


def jsonable(value: Any) -> Any:
    """Return a JSON-friendly copy of a tool result or coerced argument."""
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json")
    return pydantic.TypeAdapter(Any).dump_python(value, mode="json")
