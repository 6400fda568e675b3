"""The typed serializer every saver uses, byte-compatible with LangGraph's.

A value is stored as a pair ``(tag, bytes)``. The tags are LangGraph's:
``null``, ``bytes``, ``bytearray``, ``msgpack`` and, in records written by
older LangGraph releases, ``json``; an encrypted value appends the cipher
name, as in ``msgpack+aes``.

Inside ``msgpack`` a value that msgpack has no type for is a msgpack
extension whose code says how to rebuild it and whose payload is itself
msgpack: ``(module, class, argument)`` for code 0, ``(module, class,
arguments)`` for 1, ``(module, class, keyword arguments)`` for 2, ``(module,
class, argument, method)`` for 3, ``(module, class, fields[, method])`` for
pydantic models (4 and 5), a numpy array for 6 and a delta channel's snapshot
for 7. Messages are written under LangChain's module and class names, so a
LangGraph process reads them as LangChain messages.

Reading is safe by default, unlike LangGraph's permissive default: a payload
names a module and a class, and only names on a fixed allow-list (our
messages, a few standard library types, LangGraph's ``Send`` and
``Interrupt``) or admitted through ``allow=`` are rebuilt. Nothing named by
the data is ever imported, pickle is never read, and JSON constructors are
revived only for messages and the same allow-list. Anything else raises
``DisallowedType``; a read-only viewer passes ``display=True`` to get an inert
``OpaqueValue`` instead.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import hmac
import importlib
import ipaddress
import json
import os
import pathlib
import re
import sys
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from enum import Enum
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import msgpack
import ormsgpack

from agentmatic.errors import DisallowedType, SerializationError
from agentmatic.messages import (
    LANGCHAIN_NAMES,
    AIMessage,
    BaseMessage,
    HumanMessage,
    RemoveMessage,
    SystemMessage,
    ToolCall,
    ToolMessage,
)

__all__ = [
    "EXT_CONSTRUCTOR_KW_ARGS",
    "EXT_CONSTRUCTOR_POS_ARGS",
    "EXT_CONSTRUCTOR_SINGLE_ARG",
    "EXT_DELTA_SNAPSHOT",
    "EXT_METHOD_SINGLE_ARG",
    "EXT_NUMPY_ARRAY",
    "EXT_PYDANTIC_V1",
    "EXT_PYDANTIC_V2",
    "DeltaSnapshot",
    "Interrupt",
    "OpaqueValue",
    "Send",
    "Serializer",
    "TimeoutPolicy",
]

# msgpack extension codes, fixed by LangGraph's wire format.
EXT_CONSTRUCTOR_SINGLE_ARG = 0
EXT_CONSTRUCTOR_POS_ARGS = 1
EXT_CONSTRUCTOR_KW_ARGS = 2
EXT_METHOD_SINGLE_ARG = 3
EXT_PYDANTIC_V1 = 4
EXT_PYDANTIC_V2 = 5
EXT_NUMPY_ARRAY = 6
EXT_DELTA_SNAPSHOT = 7

_CLASS_CODES = frozenset(
    {
        EXT_CONSTRUCTOR_SINGLE_ARG,
        EXT_CONSTRUCTOR_POS_ARGS,
        EXT_CONSTRUCTOR_KW_ARGS,
        EXT_METHOD_SINGLE_ARG,
        EXT_PYDANTIC_V1,
        EXT_PYDANTIC_V2,
    }
)

_PACK_OPTIONS = (
    ormsgpack.OPT_NON_STR_KEYS
    | ormsgpack.OPT_PASSTHROUGH_DATACLASS
    | ormsgpack.OPT_PASSTHROUGH_DATETIME
    | ormsgpack.OPT_PASSTHROUGH_ENUM
    | ormsgpack.OPT_PASSTHROUGH_UUID
    | ormsgpack.OPT_REPLACE_SURROGATES
)
_UNPACK_OPTIONS = ormsgpack.OPT_NON_STR_KEYS

# LangGraph's module for its Send, Interrupt and TimeoutPolicy classes.
_LG_TYPES = "langgraph.types"
_DEFAULT_INTERRUPT_ID = "placeholder-id"


# --- values with a LangGraph counterpart -------------------------------------


class DeltaSnapshot(NamedTuple):
    """A delta channel's whole value, stored so a replay can start from it."""

    value: Any


@dataclasses.dataclass(frozen=True)
class TimeoutPolicy:
    """How long a pushed task may run; stored as LangGraph's `TimeoutPolicy`."""

    run_timeout: float | None = None
    idle_timeout: float | None = None
    refresh_on: str = "auto"


@dataclasses.dataclass(frozen=True)
class Send:
    """A packet for one node (`node`) with its own input (`arg`).

    Written and read as LangGraph's `langgraph.types.Send`.
    """

    node: str
    arg: Any
    timeout: TimeoutPolicy | None = None


@dataclasses.dataclass(frozen=True)
class Interrupt:
    """A pause raised inside a node; written as LangGraph's `Interrupt`."""

    value: Any
    id: str = _DEFAULT_INTERRUPT_ID
    response_schema: Any = None


@dataclasses.dataclass(frozen=True)
class OpaqueValue:
    """A stored value of a type that may not be rebuilt, kept inert for display.

    `type_name` is the dotted name the data gave; `fields` is its payload as
    decoded (plain dicts, lists and scalars, with nested opaque values).
    It cannot be written back: the original type is gone.
    """

    type_name: str
    fields: Any


# --- encoding ------------------------------------------------------------------


# While a Serializer writes, the (module, name) pairs of the classes its reader
# would rebuild; a value of any other class is refused before it is stored,
# since no reader could ever get it back.
_WRITABLE: ContextVar[Callable[[str, str], bool] | None] = ContextVar(
    "agentmatic_writable", default=None
)


def _pack(obj: Any) -> bytes:
    return ormsgpack.packb(obj, default=_default, option=_PACK_OPTIONS)


# The refused class's name, since ormsgpack replaces the hook's exception.
_REFUSED: ContextVar[list[str] | None] = ContextVar("agentmatic_refused", default=None)


def _check_writable(module: str, name: str) -> None:
    allowed = _WRITABLE.get()
    if allowed is not None and not allowed(module, name):
        refused = _REFUSED.get()
        if refused is not None:
            refused.append(f"{module}.{name}")
        raise TypeError(f"{module}.{name} could not be read back")


def _ext(code: int, *parts: Any) -> ormsgpack.Ext:
    return ormsgpack.Ext(code, _pack(parts))


def _encode_message(msg: BaseMessage) -> ormsgpack.Ext:
    cls = type(msg)
    return _ext(
        EXT_PYDANTIC_V2,
        cls.lc_module,
        cls.lc_name,
        msg.to_dict(),
        "model_validate_json",
    )


def _encode_remove(msg: RemoveMessage) -> ormsgpack.Ext:
    fields: dict[str, Any] = {
        "content": "",
        "additional_kwargs": {},
        "response_metadata": {},
        "type": "remove",
        "name": None,
        "id": msg.id,
    }
    return _ext(
        EXT_PYDANTIC_V2,
        "langchain_core.messages.modifier",
        "RemoveMessage",
        fields,
        "model_validate_json",
    )


def _encode_send(send: Send) -> ormsgpack.Ext:
    args: tuple[Any, ...] = (send.node, send.arg)
    if send.timeout is not None:
        args = (send.node, send.arg, send.timeout)
    return _ext(EXT_CONSTRUCTOR_POS_ARGS, _LG_TYPES, "Send", args)


def _encode_interrupt(item: Interrupt) -> ormsgpack.Ext:
    fields = {
        "value": item.value,
        "id": item.id,
        "response_schema": item.response_schema,
    }
    return _ext(EXT_CONSTRUCTOR_KW_ARGS, _LG_TYPES, "Interrupt", fields)


def _encode_timeout(policy: TimeoutPolicy) -> ormsgpack.Ext:
    fields = {
        "run_timeout": policy.run_timeout,
        "idle_timeout": policy.idle_timeout,
        "refresh_on": policy.refresh_on,
    }
    return _ext(EXT_CONSTRUCTOR_KW_ARGS, _LG_TYPES, "TimeoutPolicy", fields)


def _refuse_opaque(value: OpaqueValue) -> Any:
    raise TypeError(f"an OpaqueValue ({value.type_name}) cannot be written back")


# Exact-type fast path: one dict lookup for the values every step writes.
_ENCODERS: dict[type, Callable[[Any], Any]] = {
    HumanMessage: _encode_message,
    AIMessage: _encode_message,
    ToolMessage: _encode_message,
    SystemMessage: _encode_message,
    RemoveMessage: _encode_remove,
    Send: _encode_send,
    Interrupt: _encode_interrupt,
    TimeoutPolicy: _encode_timeout,
    OpaqueValue: _refuse_opaque,
}

_IP_TYPES = (
    ipaddress.IPv4Address,
    ipaddress.IPv4Interface,
    ipaddress.IPv4Network,
    ipaddress.IPv6Address,
    ipaddress.IPv6Interface,
    ipaddress.IPv6Network,
)


def _default(obj: Any) -> Any:
    """Return what msgpack should write for `obj`, in LangGraph's precedence."""
    encoder = _ENCODERS.get(type(obj))
    if encoder is not None:
        return encoder(obj)
    if isinstance(obj, DeltaSnapshot):
        return ormsgpack.Ext(EXT_DELTA_SNAPSHOT, _pack(obj.value))
    if isinstance(obj, BaseMessage):
        return _encode_message(obj)
    cls = obj.__class__
    module, name = cls.__module__, cls.__name__
    if _is_generic_class_value(obj):
        _check_writable(module, name)
    if callable(getattr(obj, "model_dump", None)):
        return _ext(
            EXT_PYDANTIC_V2, module, name, obj.model_dump(), "model_validate_json"
        )
    if callable(getattr(obj, "get_secret_value", None)):
        return _ext(EXT_CONSTRUCTOR_SINGLE_ARG, module, name, obj.get_secret_value())
    if callable(getattr(obj, "dict", None)):
        return _ext(EXT_PYDANTIC_V1, module, name, obj.dict())
    if callable(getattr(obj, "_asdict", None)):
        return _ext(EXT_CONSTRUCTOR_KW_ARGS, module, name, obj._asdict())
    if isinstance(obj, pathlib.Path):
        return _ext(EXT_CONSTRUCTOR_POS_ARGS, module, name, obj.parts)
    if isinstance(obj, re.Pattern):
        return _ext(EXT_CONSTRUCTOR_POS_ARGS, "re", "compile", (obj.pattern, obj.flags))
    if isinstance(obj, uuid.UUID):
        return _ext(EXT_CONSTRUCTOR_SINGLE_ARG, module, name, obj.hex)
    if isinstance(obj, decimal.Decimal):
        return _ext(EXT_CONSTRUCTOR_SINGLE_ARG, module, name, str(obj))
    if isinstance(obj, (set, frozenset, deque)):
        return _ext(EXT_CONSTRUCTOR_SINGLE_ARG, module, name, tuple(obj))
    if isinstance(obj, _IP_TYPES):
        return _ext(EXT_CONSTRUCTOR_SINGLE_ARG, module, name, str(obj))
    if isinstance(obj, dt.datetime):
        return _ext(
            EXT_METHOD_SINGLE_ARG, module, name, obj.isoformat(), "fromisoformat"
        )
    if isinstance(obj, dt.timedelta):
        args = (obj.days, obj.seconds, obj.microseconds)
        return _ext(EXT_CONSTRUCTOR_POS_ARGS, module, name, args)
    if isinstance(obj, dt.date):
        args = (obj.year, obj.month, obj.day)
        return _ext(EXT_CONSTRUCTOR_POS_ARGS, module, name, args)
    if isinstance(obj, dt.time):
        fields = {
            "hour": obj.hour,
            "minute": obj.minute,
            "second": obj.second,
            "microsecond": obj.microsecond,
            "tzinfo": obj.tzinfo,
            "fold": obj.fold,
        }
        return _ext(EXT_CONSTRUCTOR_KW_ARGS, module, name, fields)
    if isinstance(obj, dt.timezone):
        args = obj.__getinitargs__()  # type: ignore[attr-defined]
        return _ext(EXT_CONSTRUCTOR_POS_ARGS, module, name, args)
    if isinstance(obj, ZoneInfo):
        return _ext(EXT_CONSTRUCTOR_SINGLE_ARG, module, name, obj.key)
    if isinstance(obj, Enum):
        return _ext(EXT_CONSTRUCTOR_SINGLE_ARG, module, name, obj.value)
    if _looks_like_send(obj):
        packet: tuple[Any, ...] = (obj.node, obj.arg)
        if (timeout := getattr(obj, "timeout", None)) is not None:
            packet = (obj.node, obj.arg, timeout)
        return _ext(EXT_CONSTRUCTOR_POS_ARGS, module, name, packet)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        # A shallow field dict, not dataclasses.asdict(): no deep copy.
        fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        return _ext(EXT_CONSTRUCTOR_KW_ARGS, module, name, fields)
    if (numpy := sys.modules.get("numpy")) is not None and isinstance(
        obj, numpy.ndarray
    ):
        return _encode_ndarray(obj)
    if isinstance(obj, BaseException):
        return repr(obj)
    raise TypeError(f"values of type {module}.{name} cannot be serialized")


def _is_generic_class_value(obj: Any) -> bool:
    """Return True for values written by class name and rebuilt only if allowed."""
    return (
        callable(getattr(obj, "model_dump", None))
        or callable(getattr(obj, "dict", None))
        or callable(getattr(obj, "_asdict", None))
        or callable(getattr(obj, "get_secret_value", None))
        or (isinstance(obj, Enum) and type(obj) not in _ENCODERS)
        or (dataclasses.is_dataclass(obj) and not isinstance(obj, type))
    ) and not _looks_like_send(obj)


def _looks_like_send(obj: Any) -> bool:
    # LangGraph writes any hashable object with `node` and `arg` as a packet.
    return (
        hasattr(obj, "node")
        and hasattr(obj, "arg")
        and getattr(type(obj), "__hash__", None) is not None
    )


def _encode_ndarray(arr: Any) -> ormsgpack.Ext:
    c_order = arr.flags.c_contiguous
    order = "F" if arr.flags.f_contiguous and not c_order else "C"
    if c_order:
        with memoryview(arr) as view:
            meta = (arr.dtype.str, arr.shape, order, view)
            return ormsgpack.Ext(EXT_NUMPY_ARRAY, _pack(meta))
    meta = (arr.dtype.str, arr.shape, order, arr.tobytes(order="A"))
    return ormsgpack.Ext(EXT_NUMPY_ARRAY, _pack(meta))


# --- rebuilding allowed types --------------------------------------------------

# A reviver turns an extension's code and payload into a value.
_Reviver = Callable[[int, Any], Any]


def _as_list(payload: Any) -> list[Any]:
    if not isinstance(payload, list):
        raise TypeError(f"expected a list of arguments, got {type(payload).__name__}")
    return payload


def _as_kwargs(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict) or not all(isinstance(k, str) for k in payload):
        raise TypeError(f"expected keyword arguments, got {type(payload).__name__}")
    return payload


def _constructor(factory: Callable[..., Any]) -> _Reviver:
    def revive(code: int, payload: Any) -> Any:
        if code == EXT_CONSTRUCTOR_SINGLE_ARG:
            return factory(payload)
        if code == EXT_CONSTRUCTOR_POS_ARGS:
            return factory(*_as_list(payload))
        return factory(**_as_kwargs(payload))

    return revive


def _allowed_class(cls: type) -> _Reviver:
    """Return a reviver for a class the caller admitted with `allow=`."""
    pydantic_v2 = callable(getattr(cls, "model_validate", None))
    pydantic_v1 = not pydantic_v2 and callable(getattr(cls, "construct", None))
    plain = _constructor(cls)

    model: Any = cls

    def revive(code: int, payload: Any) -> Any:
        if pydantic_v2 and isinstance(payload, dict):
            try:
                return model.model_validate(payload)
            except ValueError:
                # As LangGraph does: keep a model that no longer validates.
                return model.model_construct(**_as_kwargs(payload))
        if pydantic_v1 and code == EXT_PYDANTIC_V1:
            try:
                return model(**_as_kwargs(payload))
            except ValueError:
                return model.construct(**payload)
        return plain(code, payload)

    return revive


def _message(cls: type[BaseMessage]) -> _Reviver:
    def revive(code: int, payload: Any) -> Any:
        return cls.from_dict(_as_kwargs(payload))

    return revive


def _remove_message(code: int, payload: Any) -> RemoveMessage:
    msg_id = _as_kwargs(payload).get("id")
    if not isinstance(msg_id, str):
        raise TypeError("a RemoveMessage needs a string id")
    return RemoveMessage(msg_id)


def _tool_call(code: int, payload: Any) -> ToolCall:
    return ToolCall.from_any(_as_kwargs(payload))


def _send(code: int, payload: Any) -> Send:
    args = _as_list(payload)
    if len(args) not in (2, 3) or not isinstance(args[0], str):
        raise TypeError("a Send needs a node name, an argument and maybe a timeout")
    return Send(*args)


def _interrupt(code: int, payload: Any) -> Interrupt:
    fields = _as_kwargs(payload)
    item_id = fields.get("id") or fields.get("interrupt_id")
    if not item_id and isinstance(fields.get("ns"), list):
        item_id = _legacy_interrupt_id(fields["ns"])
    return Interrupt(
        value=fields.get("value"),
        id=item_id or _DEFAULT_INTERRUPT_ID,
        response_schema=fields.get("response_schema"),
    )


def _legacy_interrupt_id(ns: list[Any]) -> str:
    # LangGraph before 0.6 stored a namespace and derived the id from it with
    # xxh3-128; xxhash is LangGraph's dependency, not ours, hence optional.
    try:
        import xxhash
    except ImportError:
        return _DEFAULT_INTERRUPT_ID
    return str(xxhash.xxh3_128_hexdigest("|".join(map(str, ns)).encode()))


def _timeout_policy(code: int, payload: Any) -> TimeoutPolicy:
    fields = _as_kwargs(payload)
    return TimeoutPolicy(
        run_timeout=fields.get("run_timeout"),
        idle_timeout=fields.get("idle_timeout"),
        refresh_on=fields.get("refresh_on", "auto"),
    )


def _path_class(flavour: str) -> type[pathlib.PurePath]:
    # A path written on the other OS family can only be a pure path here.
    if flavour == "Path":
        return pathlib.Path
    native = (os.name == "nt") == (flavour == "WindowsPath")
    if flavour == "WindowsPath":
        return pathlib.WindowsPath if native else pathlib.PureWindowsPath
    return pathlib.PosixPath if native else pathlib.PurePosixPath


def _build_revivers() -> dict[tuple[str, str], _Reviver]:
    revivers: dict[tuple[str, str], _Reviver] = {
        ("uuid", "UUID"): _constructor(uuid.UUID),
        ("decimal", "Decimal"): _constructor(decimal.Decimal),
        ("builtins", "set"): _constructor(set),
        ("builtins", "frozenset"): _constructor(frozenset),
        ("collections", "deque"): _constructor(deque),
        ("datetime", "datetime"): _constructor(dt.datetime),
        ("datetime", "date"): _constructor(dt.date),
        ("datetime", "time"): _constructor(dt.time),
        ("datetime", "timedelta"): _constructor(dt.timedelta),
        ("datetime", "timezone"): _constructor(dt.timezone),
        ("zoneinfo", "ZoneInfo"): _constructor(ZoneInfo),
        ("re", "compile"): _constructor(re.compile),
        (_LG_TYPES, "Send"): _send,
        ("langgraph.constants", "Send"): _send,
        (_LG_TYPES, "Interrupt"): _interrupt,
        (_LG_TYPES, "TimeoutPolicy"): _timeout_policy,
        ("agentmatic.messages", "ToolCall"): _tool_call,
    }
    for ip_type in _IP_TYPES:
        revivers[("ipaddress", ip_type.__name__)] = _constructor(ip_type)
    for module in ("pathlib", "pathlib._local"):
        for flavour in ("Path", "PosixPath", "WindowsPath"):
            revivers[(module, flavour)] = _constructor(_path_class(flavour))
    for lc_name, cls in LANGCHAIN_NAMES.items():
        revivers[(cls.lc_module, lc_name)] = _message(cls)
        revivers[("langchain_core.messages", lc_name)] = _message(cls)
    for cls in (HumanMessage, AIMessage, ToolMessage, SystemMessage):
        revivers[("agentmatic.messages", cls.__name__)] = _message(cls)
    for module in ("langchain_core.messages.modifier", "langchain_core.messages"):
        revivers[(module, "RemoveMessage")] = _remove_message
    return revivers


_REVIVERS = _build_revivers()

# The only methods a payload may ask for (extension code 3).
_METHODS: dict[tuple[str, str, str], Callable[[Any], Any]] = {
    ("datetime", "datetime", "fromisoformat"): dt.datetime.fromisoformat,
    ("datetime", "date", "fromisoformat"): dt.date.fromisoformat,
    ("datetime", "time", "fromisoformat"): dt.time.fromisoformat,
}


def _build_json_messages() -> dict[tuple[str, ...], _Reviver]:
    """Return the LangChain `lc: 1` constructor ids that name our messages."""
    ids: dict[tuple[str, ...], _Reviver] = {}
    named: dict[str, tuple[str, _Reviver]] = {
        name: (cls.lc_module, _message(cls)) for name, cls in LANGCHAIN_NAMES.items()
    }
    named["RemoveMessage"] = ("langchain_core.messages.modifier", _remove_message)
    for name, (module, reviver) in named.items():
        ids[("langchain", "schema", "messages", name)] = reviver
        ids[("langchain_core", "messages", name)] = reviver
        ids[(*module.split("."), name)] = reviver
    return ids


_JSON_MESSAGES = _build_json_messages()

# A JSON escape of a UTF-16 surrogate; only then can a lone one hide in JSON.
_JSON_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")

# Real values nest a few extensions deep (a snapshot of messages: two).
_MAX_EXT_DEPTH = 100


# --- AES-EAX, as LangGraph's EncryptedSerializer writes it ----------------------


class _AesEax:
    """AES in EAX mode: 16-byte nonce, 16-byte tag, no header.

    LangGraph's `EncryptedSerializer.from_pycryptodome_aes` stores
    ``nonce + tag + ciphertext``. The `cryptography` package has no EAX mode,
    so it is composed here from its CTR mode and CMAC, as the EAX paper
    defines it: the tag is OMAC0(nonce) ^ OMAC1(header) ^ OMAC2(ciphertext)
    and the counter starts at OMAC0(nonce).
    """

    name = "aes"

    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers import (
            Cipher,
            algorithms,
            modes,
        )
        from cryptography.hazmat.primitives.cmac import CMAC

        if not isinstance(key, bytes) or len(key) not in (16, 24, 32):
            raise ValueError("encryption_key must be 16, 24 or 32 bytes")
        self._key = key
        self._cipher = Cipher
        self._ctr = modes.CTR
        self._cmac = CMAC
        self._aes = algorithms.AES
        self._header_mac = self._omac(1, b"")

    def _omac(self, tweak: int, data: bytes) -> bytes:
        mac = self._cmac(self._aes(self._key))
        mac.update(tweak.to_bytes(16, "big"))
        mac.update(data)
        return mac.finalize()

    def _ctr_apply(self, counter: bytes, data: bytes) -> bytes:
        ctx = self._cipher(self._aes(self._key), self._ctr(counter)).encryptor()
        return ctx.update(data) + ctx.finalize()

    def _tag(self, nonce_mac: bytes, ciphertext: bytes) -> bytes:
        text_mac = self._omac(2, ciphertext)
        mixed = (
            int.from_bytes(nonce_mac, "big")
            ^ int.from_bytes(self._header_mac, "big")
            ^ int.from_bytes(text_mac, "big")
        )
        return mixed.to_bytes(16, "big")

    def encrypt(self, plaintext: bytes) -> bytes:
        nonce = os.urandom(16)
        nonce_mac = self._omac(0, nonce)
        ciphertext = self._ctr_apply(nonce_mac, bytes(plaintext))
        return nonce + self._tag(nonce_mac, ciphertext) + ciphertext

    def decrypt(self, blob: bytes) -> bytes:
        """Return the plaintext; raise ValueError if the tag does not match."""
        if len(blob) < 32:
            raise ValueError("shorter than a nonce and a tag")
        nonce, tag, ciphertext = blob[:16], blob[16:32], blob[32:]
        nonce_mac = self._omac(0, nonce)
        if not hmac.compare_digest(self._tag(nonce_mac, ciphertext), tag):
            raise ValueError("authentication tag does not match")
        return self._ctr_apply(nonce_mac, ciphertext)


# --- the serializer ------------------------------------------------------------


class Serializer:
    """Turn values into LangGraph's ``(tag, bytes)`` pairs and back, safely.

    `allow` admits more types to be rebuilt, as class objects or
    ``"module.Name"`` strings (a string's module is imported only when a
    stored value names exactly that class). With `display=True` a type that
    may not be rebuilt comes back as an `OpaqueValue` instead of raising.
    With `encryption_key` (16, 24 or 32 bytes) values are written encrypted
    the way LangGraph's AES `EncryptedSerializer` writes them, and read back.
    """

    def __init__(
        self,
        *,
        allow: Iterable[type | str] = (),
        display: bool = False,
        encryption_key: bytes | None = None,
    ) -> None:
        self.display = display
        self._allowed: dict[tuple[str, str], type | None] = {}
        for entry in allow:
            if isinstance(entry, type):
                self._allowed[(entry.__module__, entry.__name__)] = entry
            elif isinstance(entry, str) and "." in entry.strip("."):
                module, _, name = entry.rpartition(".")
                self._allowed[(module, name)] = None
            else:
                raise ValueError(
                    f"allow entries are classes or 'module.Name' strings, not {entry!r}"
                )
        self._revivers: dict[tuple[str, str], _Reviver] = {}
        self._cipher = _AesEax(encryption_key) if encryption_key is not None else None

    # Writing

    def dumps(self, obj: Any) -> bytes:
        """Return `obj` as msgpack bytes (never encrypted).

        A value of a class this serializer would refuse to rebuild is refused
        now, with `DisallowedType`, rather than stored and found unreadable.
        """
        refused: list[str] = []
        token = _WRITABLE.set(self._writable)
        refused_token = _REFUSED.set(refused)
        try:
            return _pack(obj)
        except TypeError as exc:
            if refused:
                raise DisallowedType(refused[0]) from None
            raise SerializationError(f"cannot serialize the value: {exc}") from exc
        finally:
            _WRITABLE.reset(token)
            _REFUSED.reset(refused_token)

    def _writable(self, module: str, name: str) -> bool:
        return (module, name) in self._allowed or (
            module,
            name,
        ) in _REVIVERS

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        """Return ``(tag, bytes)`` for `obj`, as LangGraph would write it."""
        tag: str
        data: bytes
        if obj is None:
            tag, data = "null", b""
        elif isinstance(obj, bytes):
            tag, data = "bytes", obj
        elif isinstance(obj, bytearray):
            tag, data = "bytearray", bytes(obj)
        else:
            tag, data = "msgpack", self.dumps(obj)
        if self._cipher is None:
            return tag, data
        return f"{tag}+{self._cipher.name}", self._cipher.encrypt(data)

    # Reading

    def loads(self, data: bytes, *, thread_id: str | None = None) -> Any:
        """Return the value held by msgpack bytes written by `dumps`."""
        return _Reader(self, thread_id).load_msgpack(data)

    def loads_typed(
        self, data: tuple[str, bytes], *, thread_id: str | None = None
    ) -> Any:
        """Return the value of a stored ``(tag, bytes)`` pair.

        Raise `DisallowedType` for a type that may not be rebuilt (unless in
        display mode) and `SerializationError` for anything unreadable; both
        name `thread_id` when given.
        """
        tag, payload = data
        reader = _Reader(self, thread_id)
        if not isinstance(tag, str):
            raise reader.unreadable(f"its tag is {tag!r}, not a string")
        if "+" in tag:
            tag, payload = self._decrypt(tag, payload, reader)
        if tag == "msgpack":
            return reader.load_msgpack(payload)
        if tag == "null":
            return None
        if tag == "bytes":
            return bytes(payload)
        if tag == "bytearray":
            return bytearray(payload)
        if tag == "json":
            return reader.load_json(payload)
        if tag == "pickle":
            # Unpickling runs code chosen by whoever wrote the database.
            return reader.refuse_tag(tag, payload, "pickle is never read")
        return reader.refuse_tag(tag, payload, "unknown serialization tag")

    def _decrypt(self, tag: str, payload: bytes, reader: _Reader) -> tuple[str, bytes]:
        inner, _, cipher_name = tag.partition("+")
        if self._cipher is None:
            raise reader.unreadable(
                f"it is encrypted ({tag!r}) and no encryption_key was given"
            )
        if cipher_name != self._cipher.name:
            raise reader.unreadable(f"unknown cipher {cipher_name!r} in tag {tag!r}")
        try:
            return inner, self._cipher.decrypt(bytes(payload))
        except ValueError as exc:
            raise reader.unreadable(
                f"it cannot be decrypted (wrong key or altered bytes: {exc})"
            ) from None

    def _reviver_for(self, module: str, name: str) -> _Reviver | None:
        """Return how to rebuild ``module.name``, or None if it is not allowed."""
        key = (module, name)
        reviver = _REVIVERS.get(key)
        if reviver is not None:
            return reviver
        reviver = self._revivers.get(key)
        if reviver is not None or key not in self._allowed:
            return reviver
        cls = self._allowed[key] or self._import_allowed(module, name)
        reviver = _allowed_class(cls)
        self._revivers[key] = reviver
        return reviver

    def _import_allowed(self, module: str, name: str) -> type:
        # Only reached for a name the caller listed in `allow`, never for a
        # name that merely appears in the data.
        try:
            found = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise SerializationError(
                f"allowed type '{module}.{name}' cannot be imported: {exc}"
            ) from exc
        if not isinstance(found, type):
            raise SerializationError(f"allowed name '{module}.{name}' is not a class")
        self._allowed[(module, name)] = found
        return found


class _Reader:
    """The state of one read: the thread for messages and the first failure.

    ormsgpack replaces an exception raised in the extension hook by a bare
    "ext_hook failed", so the hook keeps the first one to raise it again.
    """

    __slots__ = ("depth", "display", "failure", "serde", "thread_id")

    def __init__(self, serde: Serializer, thread_id: str | None) -> None:
        self.serde = serde
        self.display = serde.display
        self.thread_id = thread_id
        self.failure: BaseException | None = None
        self.depth = 0

    def unreadable(self, detail: str) -> SerializationError:
        where = f" in thread {self.thread_id!r}" if self.thread_id else ""
        return SerializationError(f"a stored value{where} is unreadable: {detail}")

    def refuse(self, type_name: str, payload: Any) -> OpaqueValue:
        if self.display:
            return OpaqueValue(type_name, payload)
        raise DisallowedType(type_name, self.thread_id)

    def refuse_tag(self, tag: str, payload: bytes, detail: str) -> OpaqueValue:
        if self.display:
            return OpaqueValue(tag, bytes(payload))
        raise self.unreadable(f"{detail} ({tag!r})")

    # msgpack

    def unpack(self, data: bytes) -> Any:
        value = ormsgpack.unpackb(data, ext_hook=self.ext_hook, option=_UNPACK_OPTIONS)
        # ormsgpack stops after the first value; bytes after it mean the blob was
        # edited or joined, so it is refused rather than read as its prefix.
        if _value_length(data) != len(data):
            raise self.unreadable("there are bytes after the stored value")
        return value

    def load_msgpack(self, data: bytes) -> Any:
        try:
            return self.unpack(data)
        except RecursionError:
            raise self.unreadable("it is nested too deeply") from None
        except Exception as exc:
            failure = self.failure or exc
            if isinstance(failure, SerializationError):
                raise failure from None
            if not isinstance(failure, Exception):
                raise failure from None
            raise self.unreadable(f"invalid msgpack ({failure})") from failure

    def ext_hook(self, code: int, data: bytes) -> Any:
        self.depth += 1
        try:
            if self.depth > _MAX_EXT_DEPTH:
                raise self.unreadable("its extensions are nested too deeply")
            return self.extension(code, data)
        except BaseException as exc:
            if self.failure is None:
                self.failure = exc
            raise
        finally:
            self.depth -= 1

    def extension(self, code: int, data: bytes) -> Any:
        if code == EXT_DELTA_SNAPSHOT:
            return DeltaSnapshot(self.unpack(data))
        if code == EXT_NUMPY_ARRAY:
            return self.ndarray(self.unpack(data))
        if code not in _CLASS_CODES:
            if self.display:
                return OpaqueValue(f"msgpack extension {code}", data)
            raise self.unreadable(f"unknown msgpack extension code {code}")
        parts = self.unpack(data)
        size = 4 if code == EXT_METHOD_SINGLE_ARG else 3
        if (
            not isinstance(parts, list)
            or len(parts) < size
            or not all(isinstance(p, str) for p in parts[:2])
        ):
            raise self.unreadable(
                f"extension {code} does not hold (module, class, payload)"
            )
        module, name, payload = parts[0], parts[1], parts[2]
        if code == EXT_METHOD_SINGLE_ARG:
            return self.call_method(module, name, parts[3], payload)
        return self.rebuild(f"{module}.{name}", module, name, code, payload)

    def call_method(self, module: str, name: str, method: Any, arg: Any) -> Any:
        type_name = f"{module}.{name}.{method}"
        function = (
            _METHODS.get((module, name, method)) if isinstance(method, str) else None
        )
        if function is None:
            return self.refuse(type_name, arg)
        try:
            return function(arg)
        except (TypeError, ValueError) as exc:
            return self.cannot_rebuild(type_name, arg, exc)

    def rebuild(
        self, type_name: str, module: str, name: str, code: int, payload: Any
    ) -> Any:
        try:
            reviver = self.serde._reviver_for(module, name)
        except SerializationError:
            if self.display:
                return OpaqueValue(type_name, payload)
            raise
        if reviver is None:
            return self.refuse(type_name, payload)
        try:
            return reviver(code, payload)
        except SerializationError:
            raise
        except Exception as exc:
            return self.cannot_rebuild(type_name, payload, exc)

    def cannot_rebuild(self, type_name: str, payload: Any, exc: Exception) -> Any:
        if self.display:
            return OpaqueValue(type_name, payload)
        raise self.unreadable(f"cannot rebuild {type_name} ({exc})") from exc

    def ndarray(self, meta: Any) -> Any:
        if self.serde._reviver_for("numpy", "ndarray") is None:
            return self.refuse("numpy.ndarray", meta)
        try:
            dtype, shape, order, buffer = meta
            import numpy

            array = numpy.frombuffer(buffer, dtype=numpy.dtype(dtype))
            return array.reshape(shape, order=order)
        except Exception as exc:
            return self.cannot_rebuild("numpy.ndarray", meta, exc)

    # json, as LangGraph wrote it before it moved to msgpack

    def load_json(self, data: bytes) -> Any:
        try:
            value = json.loads(data, object_hook=self.json_object)
        except SerializationError:
            raise
        except (ValueError, RecursionError) as exc:
            raise self.unreadable(f"invalid JSON ({exc})") from None
        if _JSON_SURROGATE_ESCAPE.search(bytes(data)) and _has_lone_surrogate(
            json.loads(data)
        ):
            raise self.unreadable("a string holds a lone UTF-16 surrogate")
        return value

    def json_object(self, obj: dict[str, Any]) -> Any:
        lc, kind, ident = obj.get("lc"), obj.get("type"), obj.get("id")
        if (
            type(lc) is not int
            or not isinstance(ident, list)
            or not ident
            or not all(isinstance(part, str) for part in ident)
        ):
            return obj
        dotted = ".".join(ident)
        if lc == 1 and kind == "constructor":
            reviver = _JSON_MESSAGES.get(tuple(ident))
            kwargs = obj.get("kwargs", {})
            if reviver is None:
                return self.refuse(dotted, kwargs)
            return self.revive_json(dotted, reviver, EXT_CONSTRUCTOR_KW_ARGS, kwargs)
        if lc == 1 and kind == "secret":
            # LangChain fills secrets from the environment; never here.
            return self.refuse(f"secret {dotted}", None)
        if lc == 1 and kind == "not_implemented":
            return self.refuse(dotted, obj.get("repr"))
        if lc == 2 and kind == "constructor" and len(ident) >= 2:
            return self.json_constructor(obj, ident)
        return obj

    def json_constructor(self, obj: dict[str, Any], ident: list[str]) -> Any:
        module, name = ".".join(ident[:-1]), ident[-1]
        args, kwargs, method = obj.get("args"), obj.get("kwargs"), obj.get("method")
        if isinstance(method, str):
            arg = args[0] if isinstance(args, list) and len(args) == 1 else args
            return self.call_method(module, name, method, arg)
        if args and kwargs:
            raise self.unreadable(f"{module}.{name} has both args and kwargs")
        if kwargs:
            return self.rebuild(
                f"{module}.{name}", module, name, EXT_CONSTRUCTOR_KW_ARGS, kwargs
            )
        return self.rebuild(
            f"{module}.{name}", module, name, EXT_CONSTRUCTOR_POS_ARGS, args or []
        )

    def revive_json(
        self, type_name: str, reviver: _Reviver, code: int, payload: Any
    ) -> Any:
        try:
            return reviver(code, payload)
        except Exception as exc:
            return self.cannot_rebuild(type_name, payload, exc)


def _has_lone_surrogate(value: Any) -> bool:
    # json pairs valid surrogate escapes into one character, so any surrogate
    # code point left in a string is a lone one.
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    if isinstance(value, dict):
        return any(
            _has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items()
        )
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def _value_length(data: bytes) -> int:
    """Return how many bytes the first msgpack value of `data` takes."""
    unpacker = msgpack.Unpacker(
        raw=True, strict_map_key=False, ext_hook=_skip_ext, max_buffer_size=0
    )
    unpacker.feed(data)
    unpacker.skip()
    return int(unpacker.tell())


def _skip_ext(code: int, data: bytes) -> None:
    return None
