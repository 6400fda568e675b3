"""The typed serializer: round trips, LangGraph compatibility, hostile input."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import decimal
import enum
import ipaddress
import json
import pathlib
import re
import sqlite3
import sys
import uuid
import zoneinfo
from collections import deque
from pathlib import Path
from typing import Any, NamedTuple

import ormsgpack
import pydantic
import pytest
from langchain_core import messages as lc
from langchain_core.load import dumps as lc_dumps
from langgraph.checkpoint.serde.encrypted import EncryptedSerializer
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.types import Interrupt as LgInterrupt
from langgraph.types import Send as LgSend

from agentmatic.checkpoint.serde import (
    EXT_CONSTRUCTOR_KW_ARGS,
    EXT_CONSTRUCTOR_POS_ARGS,
    EXT_CONSTRUCTOR_SINGLE_ARG,
    EXT_DELTA_SNAPSHOT,
    EXT_METHOD_SINGLE_ARG,
    EXT_PYDANTIC_V2,
    DeltaSnapshot,
    Interrupt,
    OpaqueValue,
    Send,
    Serializer,
    TimeoutPolicy,
)
from agentmatic.errors import DisallowedType, SerializationError
from agentmatic.messages import (
    AIMessage,
    HumanMessage,
    RemoveMessage,
    SystemMessage,
    ToolCall,
    ToolMessage,
)

FIXTURE_DB = Path("/work/shared/fixtures/langgraph/langgraph-shared.sqlite")
KEY = b"0123456789abcdef0123456789abcdef"


# --- helpers ---------------------------------------------------------------------


def raw_ext(code: int, *parts: Any) -> bytes:
    """Return msgpack bytes for one extension, built without our encoder."""
    return ormsgpack.packb(ormsgpack.Ext(code, ormsgpack.packb(parts)))


def lc_fields(msg: lc.BaseMessage) -> dict[str, Any]:
    data = msg.model_dump()
    return {k: data.get(k) for k in FIELDS_COMPARED}


def our_fields(msg: Any) -> dict[str, Any]:
    data = msg.to_dict()
    return {k: data.get(k) for k in FIELDS_COMPARED}


FIELDS_COMPARED = (
    "content",
    "additional_kwargs",
    "response_metadata",
    "name",
    "id",
    "tool_calls",
    "invalid_tool_calls",
    "usage_metadata",
    "tool_call_id",
    "artifact",
    "status",
)


class Colour(enum.StrEnum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Pair(NamedTuple):
    left: Any
    right: Any


class Invoice(pydantic.BaseModel):
    number: int
    lines: list[str] = []


def sample_messages() -> list[Any]:
    return [
        SystemMessage(content="Be brief.", id="s1"),
        HumanMessage(content="Refund order #41", id="h1", name="alice"),
        AIMessage(
            content=[{"type": "text", "text": "Calling the tool"}],
            id="a1",
            tool_calls=[
                ToolCall(
                    name="transfer_funds",
                    args={"to": "acct-7", "amount": 40.0},
                    id="call_41",
                )
            ],
            additional_kwargs={"refusal": None},
            response_metadata={"model_name": "gpt-4o"},
            usage_metadata={"input_tokens": 3, "output_tokens": 5, "total_tokens": 8},
        ),
        ToolMessage(
            content="boom",
            tool_call_id="call_41",
            status="error",
            id="t1",
            artifact={"k": 1},
        ),
    ]


def langchain_twins() -> list[lc.BaseMessage]:
    return [
        lc.SystemMessage(content="Be brief.", id="s1"),
        lc.HumanMessage(content="Refund order #41", id="h1", name="alice"),
        lc.AIMessage(
            content=[{"type": "text", "text": "Calling the tool"}],
            id="a1",
            tool_calls=[
                {
                    "name": "transfer_funds",
                    "args": {"to": "acct-7", "amount": 40.0},
                    "id": "call_41",
                }
            ],
            additional_kwargs={"refusal": None},
            response_metadata={"model_name": "gpt-4o"},
            usage_metadata={"input_tokens": 3, "output_tokens": 5, "total_tokens": 8},
        ),
        lc.ToolMessage(
            content="boom",
            tool_call_id="call_41",
            status="error",
            id="t1",
            artifact={"k": 1},
        ),
    ]


STD_VALUES = [
    pytest.param(uuid.UUID("12345678-1234-5678-1234-567812345678"), id="uuid"),
    pytest.param(decimal.Decimal("10.50"), id="decimal"),
    pytest.param(dt.datetime(2024, 5, 1, 12, 30, 5, 123456), id="naive-datetime"),
    pytest.param(dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC), id="utc-datetime"),
    pytest.param(
        dt.datetime(2024, 5, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=-3))),
        id="offset-datetime",
    ),
    pytest.param(dt.date(2024, 2, 29), id="date"),
    pytest.param(dt.time(23, 59, 1, 5), id="naive-time"),
    pytest.param(
        dt.time(8, 0, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")), id="zoned-time"
    ),
    pytest.param(
        dt.time(8, 0, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30), "IST")),
        id="named-timezone-time",
    ),
    pytest.param(dt.timedelta(days=-2, seconds=5, microseconds=7), id="timedelta"),
    pytest.param(dt.timezone(dt.timedelta(hours=2)), id="timezone"),
    pytest.param(zoneinfo.ZoneInfo("America/New_York"), id="zoneinfo"),
    pytest.param({1, 2, 3}, id="set"),
    pytest.param(frozenset({"a"}), id="frozenset"),
    pytest.param(deque([1, "two"]), id="deque"),
    pytest.param(pathlib.Path("/tmp/a/b.txt"), id="path"),
    pytest.param(re.compile(r"^a+\d", re.IGNORECASE), id="regex"),
    pytest.param(ipaddress.IPv4Address("10.0.0.1"), id="ipv4"),
    pytest.param(ipaddress.IPv6Network("2001:db8::/32"), id="ipv6-network"),
    pytest.param(ipaddress.IPv4Interface("10.0.0.1/24"), id="ipv4-interface"),
    pytest.param({"a": [1, 2.5, None, True], 3: "int key", "b": b"raw"}, id="plain"),
    pytest.param("caf\u00e9 \U0001f600", id="unicode"),
]


# --- round trips -----------------------------------------------------------------


@pytest.mark.parametrize("value", STD_VALUES)
def test_it_round_trips_standard_types(value: Any) -> None:
    serde = Serializer()
    back = serde.loads_typed(serde.dumps_typed(value))
    assert back == value
    assert type(back) is type(value)


@pytest.mark.parametrize("value", STD_VALUES)
def test_it_writes_standard_types_byte_for_byte_as_langgraph(value: Any) -> None:
    assert Serializer().dumps_typed(value) == JsonPlusSerializer().dumps_typed(value)


@pytest.mark.parametrize(
    ("value", "tag"),
    [(None, "null"), (b"\x00\xff", "bytes"), (bytearray(b"ab"), "bytearray")],
)
def test_it_keeps_langgraphs_tags_for_none_and_raw_bytes(value: Any, tag: str) -> None:
    serde = Serializer()
    dumped = serde.dumps_typed(value)
    assert dumped[0] == tag
    assert dumped == JsonPlusSerializer().dumps_typed(value)
    back = serde.loads_typed(dumped)
    assert back == value
    assert type(back) is type(value)


def test_it_round_trips_messages_with_tool_calls() -> None:
    serde = Serializer()
    msgs = sample_messages()
    back = serde.loads_typed(serde.dumps_typed(msgs))
    assert back == msgs
    assert isinstance(back[2].tool_calls[0], ToolCall)


def test_it_round_trips_send_interrupt_and_delta_snapshot() -> None:
    serde = Serializer()
    value = [
        Send("transfer_funds", {"amount": 1}),
        Send("n", [1], TimeoutPolicy(run_timeout=3.0)),
        Interrupt({"question": "ok?"}, "int-1"),
        DeltaSnapshot(sample_messages()),
    ]
    assert serde.loads_typed(serde.dumps_typed(value)) == value


def test_it_round_trips_a_remove_message() -> None:
    serde = Serializer()
    back = serde.loads_typed(serde.dumps_typed([RemoveMessage("m1")]))
    assert isinstance(back[0], RemoveMessage)
    assert back[0].id == "m1"


def test_it_round_trips_a_standalone_tool_call() -> None:
    serde = Serializer()
    call = ToolCall(name="t", args={"a": 1}, id="c1")
    assert serde.loads_typed(serde.dumps_typed({"pending": [call]})) == {
        "pending": [call]
    }


def test_it_round_trips_allowed_dataclasses_enums_namedtuples_and_models() -> None:
    serde = Serializer(allow=[Point, Colour, Pair, Invoice])
    value = {
        "point": Point(1, 2),
        "colour": Colour.BLUE,
        "pair": Pair("a", Point(3, 4)),
        "invoice": Invoice(number=7, lines=["x"]),
    }
    back = serde.loads_typed(serde.dumps_typed(value))
    assert back == value
    assert type(back["invoice"]) is Invoice


def test_it_admits_a_type_named_as_a_dotted_string() -> None:
    serde = Serializer(allow=[f"{Point.__module__}.Point"])
    assert serde.loads_typed(serde.dumps_typed(Point(5, 6))) == Point(5, 6)


def test_it_writes_generic_types_byte_for_byte_as_langgraph() -> None:
    value = [Point(1, 2), Colour.RED, Pair(1, 2), Invoice(number=1), ValueError("x")]
    ours = Serializer(allow=[Point, Colour, Pair, Invoice])
    assert ours.dumps_typed(value) == JsonPlusSerializer().dumps_typed(value)


def test_it_refuses_to_write_a_type_it_could_not_read_back() -> None:
    with pytest.raises(DisallowedType, match="Point"):
        Serializer().dumps_typed({"state": [Point(1, 2)]})


def test_the_msgpack_shortcuts_round_trip() -> None:
    serde = Serializer()
    data = serde.dumps({"when": dt.date(2024, 1, 2)})
    assert data == serde.dumps_typed({"when": dt.date(2024, 1, 2)})[1]
    assert serde.loads(data) == {"when": dt.date(2024, 1, 2)}


def test_it_refuses_to_write_an_unknown_type() -> None:
    with pytest.raises(SerializationError, match="object"):
        Serializer().dumps_typed(object())


def test_it_refuses_to_write_an_opaque_value_back() -> None:
    with pytest.raises(SerializationError, match="OpaqueValue"):
        Serializer().dumps_typed(OpaqueValue("os.system", "ls"))


# --- compatibility with LangGraph -----------------------------------------------


def test_our_messages_are_byte_identical_to_langchains() -> None:
    ours = Serializer().dumps_typed(sample_messages())
    theirs = JsonPlusSerializer().dumps_typed(langchain_twins())
    assert ours == theirs


def test_langgraph_reads_our_messages_as_langchain_messages() -> None:
    back = JsonPlusSerializer().loads_typed(Serializer().dumps_typed(sample_messages()))
    assert [type(m) for m in back] == [
        lc.SystemMessage,
        lc.HumanMessage,
        lc.AIMessage,
        lc.ToolMessage,
    ]
    assert [lc_fields(m) for m in back] == [our_fields(m) for m in sample_messages()]


def test_langgraph_reads_our_send_interrupt_and_snapshot() -> None:
    value = [
        Send("node", {"x": 1}),
        Send("node", 2, TimeoutPolicy(run_timeout=4.0)),
        Interrupt("approve?", "i-1"),
        DeltaSnapshot([1, 2]),
    ]
    dumped = Serializer().dumps_typed(value)
    send, timed, interrupt, snapshot = JsonPlusSerializer().loads_typed(dumped)
    assert send == LgSend("node", {"x": 1})
    assert timed.timeout.run_timeout == 4.0
    assert isinstance(interrupt, LgInterrupt)
    assert (interrupt.value, interrupt.id) == ("approve?", "i-1")
    assert type(snapshot).__name__ == "_DeltaSnapshot"
    assert snapshot.value == [1, 2]


def test_we_read_langchain_messages_written_by_langgraph() -> None:
    dumped = JsonPlusSerializer().dumps_typed(langchain_twins())
    back = Serializer().loads_typed(dumped)
    assert back == sample_messages()


def test_we_read_langchain_chunks_as_plain_messages() -> None:
    chunks = [
        lc.AIMessageChunk(
            content="par", id="a", tool_calls=[{"name": "t", "args": {}, "id": "c"}]
        ),
        lc.HumanMessageChunk(content="hi"),
        lc.ToolMessageChunk(content="r", tool_call_id="c"),
        lc.SystemMessageChunk(content="s"),
    ]
    back = Serializer().loads_typed(JsonPlusSerializer().dumps_typed(chunks))
    assert [type(m) for m in back] == [
        AIMessage,
        HumanMessage,
        ToolMessage,
        SystemMessage,
    ]
    assert back[0].tool_calls == [ToolCall(name="t", args={}, id="c")]
    assert back[2].tool_call_id == "c"


def test_we_read_langgraphs_send_interrupt_and_remove_message() -> None:
    value = [
        LgSend("n", {"a": 1}),
        LgSend("n", 1, timeout=3),
        LgInterrupt("v", "id-1"),
        lc.RemoveMessage(id="gone"),
    ]
    send, timed, interrupt, removal = Serializer().loads_typed(
        JsonPlusSerializer().dumps_typed(value)
    )
    assert send == Send("n", {"a": 1})
    assert timed == Send("n", 1, TimeoutPolicy(run_timeout=3.0))
    assert interrupt == Interrupt("v", "id-1")
    assert isinstance(removal, RemoveMessage)
    assert removal.id == "gone"


def test_it_reads_the_messages_of_a_real_langgraph_database() -> None:
    serde = Serializer()
    with sqlite3.connect(FIXTURE_DB) as conn:
        rows = conn.execute(
            "SELECT thread_id, type, checkpoint FROM checkpoints"
            " ORDER BY thread_id, checkpoint_id"
        ).fetchall()
        writes = conn.execute("SELECT thread_id, type, value FROM writes").fetchall()
    assert rows
    checkpoints = [serde.loads_typed((t, blob), thread_id=tid) for tid, t, blob in rows]
    for tid, t, blob in writes:
        serde.loads_typed((t, blob), thread_id=tid)

    latest = checkpoints[[r[0] for r in rows].index("case-done") + 7]
    messages = latest["channel_values"]["messages"]
    assert [type(m) for m in messages] == [HumanMessage, HumanMessage, AIMessage]
    assert messages[0].content == "Refund order #41 for $40."
    assert messages[2].tool_calls == [
        ToolCall(
            name="transfer_funds", args={"to": "acct-7", "amount": 40.0}, id="call_41"
        )
    ]


def test_it_writes_the_real_database_back_byte_for_byte() -> None:
    serde = Serializer()
    with sqlite3.connect(FIXTURE_DB) as conn:
        rows = conn.execute("SELECT type, checkpoint FROM checkpoints").fetchall()
    for tag, blob in rows:
        assert serde.dumps_typed(serde.loads_typed((tag, blob))) == (tag, blob)


# --- the json tag of older LangGraph records ----------------------------------


def test_it_reads_langchain_json_constructors_for_messages() -> None:
    blob = lc_dumps({"messages": langchain_twins()}).encode()
    back = Serializer().loads_typed(("json", blob))
    assert back["messages"] == sample_messages()


def test_it_reads_langgraphs_old_json_constructors_for_standard_types() -> None:
    record = {
        "id": {
            "lc": 2,
            "type": "constructor",
            "id": ["uuid", "UUID"],
            "args": ["ab" * 16],
        },
        "ts": {
            "lc": 2,
            "type": "constructor",
            "id": ["datetime", "datetime"],
            "method": "fromisoformat",
            "args": ["2024-05-01T12:00:00+00:00"],
        },
        "seen": {
            "lc": 2,
            "type": "constructor",
            "id": ["builtins", "set"],
            "args": [[1, 2]],
        },
        "send": {
            "lc": 2,
            "type": "constructor",
            "id": ["langgraph", "constants", "Send"],
            "args": ["node", {"x": 1}],
        },
    }
    back = Serializer().loads_typed(("json", json.dumps(record).encode()))
    assert back == {
        "id": uuid.UUID("ab" * 16),
        "ts": dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC),
        "seen": {1, 2},
        "send": Send("node", {"x": 1}),
    }


@pytest.mark.parametrize(
    "constructor",
    [
        {
            "lc": 1,
            "type": "constructor",
            "id": ["langchain", "llms", "openai", "OpenAI"],
            "kwargs": {},
        },
        {
            "lc": 2,
            "type": "constructor",
            "id": ["os", "system"],
            "args": ["echo pwned"],
        },
        {
            "lc": 2,
            "type": "constructor",
            "id": ["subprocess", "Popen"],
            "args": [["ls"]],
        },
    ],
    ids=["lc1-llm", "lc2-os-system", "lc2-popen"],
)
def test_it_refuses_a_json_constructor_it_does_not_allow(
    constructor: dict[str, Any],
) -> None:
    blob = json.dumps({"value": constructor}).encode()
    with pytest.raises(DisallowedType) as caught:
        Serializer().loads_typed(("json", blob), thread_id="t-json")
    assert caught.value.type_name == ".".join(constructor["id"])
    assert "t-json" in str(caught.value)


def test_it_never_fills_a_json_secret_from_the_environment() -> None:
    blob = json.dumps({"lc": 1, "type": "secret", "id": ["OPENAI_API_KEY"]}).encode()
    with pytest.raises(DisallowedType, match="OPENAI_API_KEY"):
        Serializer().loads_typed(("json", blob))


# --- hostile input ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "parts", "type_name"),
    [
        (EXT_CONSTRUCTOR_SINGLE_ARG, ("os", "system", "echo pwned"), "os.system"),
        (
            EXT_CONSTRUCTOR_POS_ARGS,
            ("subprocess", "Popen", [["ls"]]),
            "subprocess.Popen",
        ),
        (
            EXT_CONSTRUCTOR_KW_ARGS,
            ("builtins", "eval", {"source": "1"}),
            "builtins.eval",
        ),
        (
            EXT_METHOD_SINGLE_ARG,
            ("os", "system", "echo pwned", "__call__"),
            "os.system.__call__",
        ),
        (
            EXT_METHOD_SINGLE_ARG,
            ("datetime", "datetime", "x", "__init_subclass__"),
            "datetime.datetime.__init_subclass__",
        ),
        (
            EXT_PYDANTIC_V2,
            ("langchain_core.messages.chat", "ChatMessage", {"content": "x"}, "m"),
            "langchain_core.messages.chat.ChatMessage",
        ),
        (
            EXT_CONSTRUCTOR_KW_ARGS,
            (__name__, "Point", {"x": 1, "y": 2}),
            f"{__name__}.Point",
        ),
    ],
    ids=[
        "os-system",
        "popen",
        "eval",
        "method-call",
        "odd-method",
        "chat-message",
        "not-allowed",
    ],
)
def test_it_refuses_a_disallowed_class(
    code: int, parts: tuple[Any, ...], type_name: str
) -> None:
    blob = raw_ext(code, *parts)
    with pytest.raises(DisallowedType) as caught:
        Serializer().loads_typed(("msgpack", blob), thread_id="t-7")
    assert caught.value.type_name == type_name
    assert caught.value.thread_id == "t-7"
    assert type_name in str(caught.value)
    assert "t-7" in str(caught.value)


def test_it_refuses_a_disallowed_class_nested_deep_inside_a_value() -> None:
    inner = ormsgpack.Ext(
        EXT_CONSTRUCTOR_SINGLE_ARG, ormsgpack.packb(("os", "system", "x"))
    )
    snapshot = ormsgpack.Ext(EXT_DELTA_SNAPSHOT, ormsgpack.packb({"a": [1, inner]}))
    blob = ormsgpack.packb({"channel_values": {"messages": snapshot}})
    with pytest.raises(DisallowedType, match=r"os\.system"):
        Serializer().loads_typed(("msgpack", blob))


def test_it_never_imports_a_module_named_by_the_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "am_serde_tripwire.py").write_text("raise SystemExit('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    blob = raw_ext(EXT_CONSTRUCTOR_KW_ARGS, "am_serde_tripwire", "Thing", {})
    with pytest.raises(DisallowedType):
        Serializer().loads_typed(("msgpack", blob))
    display = Serializer(display=True).loads_typed(("msgpack", blob))
    assert display == OpaqueValue("am_serde_tripwire.Thing", {})
    assert "am_serde_tripwire" not in sys.modules


def test_it_rejects_a_truncated_blob() -> None:
    _, blob = Serializer().dumps_typed(sample_messages())
    for cut in (1, len(blob) // 2, len(blob) - 1):
        with pytest.raises(SerializationError, match="thread 't-1'"):
            Serializer().loads_typed(("msgpack", blob[:cut]), thread_id="t-1")


def test_one_edited_byte_gives_a_value_or_a_serialization_error() -> None:
    serde = Serializer()
    _, blob = serde.dumps_typed({"messages": sample_messages(), "n": 1})
    for i in range(len(blob)):
        for replacement in (0x00, 0xC1, 0xFF, blob[i] ^ 0x01):
            edited = blob[:i] + bytes([replacement]) + blob[i + 1 :]
            with contextlib.suppress(SerializationError):
                serde.loads_typed(("msgpack", edited))


def test_an_edited_extension_code_is_reported() -> None:
    blob = bytearray(Serializer().dumps_typed(uuid.UUID(int=1))[1])
    assert blob[2] == EXT_CONSTRUCTOR_SINGLE_ARG  # ext8: marker, length, code
    blob[2] = 42
    with pytest.raises(SerializationError, match="extension code 42"):
        Serializer().loads_typed(("msgpack", bytes(blob)), thread_id="t-3")


def test_it_rejects_an_unknown_extension_code() -> None:
    blob = ormsgpack.packb([1, ormsgpack.Ext(99, b"\x01\x02")])
    with pytest.raises(SerializationError, match="extension code 99"):
        Serializer().loads_typed(("msgpack", blob))


def test_it_rejects_an_extension_without_module_and_class() -> None:
    blob = ormsgpack.packb(
        ormsgpack.Ext(EXT_CONSTRUCTOR_SINGLE_ARG, ormsgpack.packb(5))
    )
    with pytest.raises(SerializationError, match="module, class"):
        Serializer().loads_typed(("msgpack", blob))


def test_it_reports_an_allowed_type_that_cannot_be_rebuilt() -> None:
    blob = raw_ext(EXT_CONSTRUCTOR_SINGLE_ARG, "uuid", "UUID", "not-a-uuid")
    with pytest.raises(SerializationError, match=r"uuid\.UUID"):
        Serializer().loads_typed(("msgpack", blob), thread_id="t-9")


def test_it_rejects_a_lone_surrogate_in_msgpack() -> None:
    blob = b"\xa3\xed\xa0\x80"  # a 3-byte string holding U+D800 as UTF-8
    with pytest.raises(SerializationError, match="thread 't-s'"):
        Serializer().loads_typed(("msgpack", blob), thread_id="t-s")


def test_it_rejects_a_lone_surrogate_in_json() -> None:
    with pytest.raises(SerializationError, match="surrogate"):
        Serializer().loads_typed(("json", b'{"a": ["x\\ud800y"]}'))


def test_it_keeps_a_surrogate_pair_in_json() -> None:
    back = Serializer().loads_typed(
        ("json", b'{"a": "\\ud83d\\ude00", "b": "\\\\ud800"}')
    )
    assert back == {"a": "\U0001f600", "b": "\\ud800"}


def test_it_writes_a_lone_surrogate_as_langgraph_does() -> None:
    value = {"text": "bad \ud800 text"}
    assert Serializer().dumps_typed(value) == JsonPlusSerializer().dumps_typed(value)


def test_it_never_reads_pickle() -> None:
    with pytest.raises(SerializationError, match="pickle") as caught:
        Serializer().loads_typed(("pickle", b"\x80\x04K\x01."), thread_id="t-p")
    assert "t-p" in str(caught.value)


def test_it_rejects_an_unknown_tag() -> None:
    with pytest.raises(SerializationError, match="'yaml'"):
        Serializer().loads_typed(("yaml", b"a: 1"))


def test_it_rejects_invalid_json() -> None:
    with pytest.raises(SerializationError, match="JSON"):
        Serializer().loads_typed(("json", b'{"a": '))


def test_it_rejects_extensions_nested_too_deeply() -> None:
    blob = ormsgpack.packb(None)
    for _ in range(3000):
        blob = ormsgpack.packb(ormsgpack.Ext(EXT_DELTA_SNAPSHOT, blob))
    with pytest.raises(SerializationError, match="nested too deeply"):
        Serializer().loads_typed(("msgpack", blob))


# --- display mode ----------------------------------------------------------------


def test_display_mode_returns_an_opaque_value_for_a_disallowed_class() -> None:
    blob = ormsgpack.packb(
        {
            "ok": ormsgpack.Ext(
                EXT_CONSTRUCTOR_SINGLE_ARG,
                ormsgpack.packb(("decimal", "Decimal", "1.5")),
            ),
            "bad": ormsgpack.Ext(
                EXT_CONSTRUCTOR_KW_ARGS,
                ormsgpack.packb(("evil.mod", "Thing", {"a": 1})),
            ),
        }
    )
    back = Serializer(display=True).loads_typed(("msgpack", blob))
    assert back == {
        "ok": decimal.Decimal("1.5"),
        "bad": OpaqueValue("evil.mod.Thing", {"a": 1}),
    }


def test_display_mode_shows_unknown_extensions_and_tags() -> None:
    serde = Serializer(display=True)
    unknown = serde.loads_typed(("msgpack", ormsgpack.packb(ormsgpack.Ext(99, b"x"))))
    assert unknown == OpaqueValue("msgpack extension 99", b"x")
    assert serde.loads_typed(("pickle", b"\x80")) == OpaqueValue("pickle", b"\x80")


def test_display_mode_shows_a_disallowed_json_constructor() -> None:
    blob = json.dumps(
        {"lc": 2, "type": "constructor", "id": ["os", "system"], "args": ["x"]}
    )
    back = Serializer(display=True).loads_typed(("json", blob.encode()))
    assert back == OpaqueValue("os.system", ["x"])


def test_display_mode_still_rejects_corrupt_bytes() -> None:
    _, blob = Serializer().dumps_typed(sample_messages())
    with pytest.raises(SerializationError):
        Serializer(display=True).loads_typed(("msgpack", blob[:-3]))


# --- encryption ------------------------------------------------------------------


def test_it_round_trips_encrypted_values() -> None:
    serde = Serializer(encryption_key=KEY)
    for value in (None, b"raw", sample_messages()):
        tag, blob = serde.dumps_typed(value)
        assert tag.endswith("+aes")
        assert serde.loads_typed((tag, blob)) == value


def test_it_reads_unencrypted_values_when_it_has_a_key() -> None:
    dumped = Serializer().dumps_typed([1, 2])
    assert Serializer(encryption_key=KEY).loads_typed(dumped) == [1, 2]


def test_it_reads_values_encrypted_by_langgraph() -> None:
    pytest.importorskip("Crypto.Cipher.AES")
    theirs = EncryptedSerializer.from_pycryptodome_aes(key=KEY)
    dumped = theirs.dumps_typed(langchain_twins())
    assert dumped[0] == "msgpack+aes"
    assert Serializer(encryption_key=KEY).loads_typed(dumped) == sample_messages()


def test_langgraph_reads_values_we_encrypted() -> None:
    pytest.importorskip("Crypto.Cipher.AES")
    theirs = EncryptedSerializer.from_pycryptodome_aes(key=KEY)
    dumped = Serializer(encryption_key=KEY).dumps_typed(sample_messages())
    back = theirs.loads_typed(dumped)
    assert [lc_fields(m) for m in back] == [our_fields(m) for m in sample_messages()]


def test_it_needs_the_key_to_read_an_encrypted_value() -> None:
    dumped = Serializer(encryption_key=KEY).dumps_typed({"a": 1})
    with pytest.raises(SerializationError, match="encrypted") as caught:
        Serializer().loads_typed(dumped, thread_id="t-enc")
    assert "t-enc" in str(caught.value)


@pytest.mark.parametrize("key_size", [16, 24, 32])
def test_it_rejects_a_wrong_key_or_an_altered_ciphertext(key_size: int) -> None:
    key = KEY[:key_size]
    tag, blob = Serializer(encryption_key=key).dumps_typed({"a": 1})
    with pytest.raises(SerializationError, match="decrypted"):
        Serializer(encryption_key=bytes(key_size)).loads_typed((tag, blob))
    altered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(SerializationError, match="decrypted"):
        Serializer(encryption_key=key).loads_typed((tag, altered))
    assert Serializer(encryption_key=key).loads_typed((tag, blob)) == {"a": 1}


def test_it_rejects_a_key_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match="16, 24 or 32"):
        Serializer(encryption_key=b"short")


def test_it_refuses_bytes_after_the_stored_value() -> None:
    serde = Serializer()
    tag, data = serde.dumps_typed({"messages": ["hi"], "amount": 250})
    with pytest.raises(SerializationError, match="bytes after"):
        serde.loads_typed((tag, data + b"\x01"))


# -- the timeline's quick read of written messages -----------------------------------


def _packed_message(module: str, name: str, fields: dict) -> bytes:
    return ormsgpack.packb(
        ormsgpack.Ext(
            EXT_METHOD_SINGLE_ARG,
            ormsgpack.packb([module, name, fields, "model_validate_json"]),
        )
    )


def test_the_quick_read_of_messages_sees_the_calls_of_streamed_replies():
    from agentmatic.checkpoint.light import minimal_from_msgpack

    call = {"name": "refund", "args": {"amount": 5}, "id": "c1", "type": "tool_call"}
    for cls in (lc.AIMessage, lc.AIMessageChunk):
        tag, data = JsonPlusSerializer().dumps_typed(cls(content="", tool_calls=[call]))
        assert tag == "msgpack"
        (message,) = minimal_from_msgpack(data)
        assert [c.id for c in message.tool_calls] == ["c1"]
        # The full decoder reads the same calls.
        full = Serializer().loads_typed((tag, data))
        assert [c.id for c in full.tool_calls] == ["c1"]


def test_the_quick_read_leaves_anything_else_to_the_serializer():
    from agentmatic.checkpoint.light import minimal_from_msgpack

    other = _packed_message("langchain_core.messages.function", "FunctionMessage", {})
    assert minimal_from_msgpack(other) is None
    assert minimal_from_msgpack(ormsgpack.packb({"type": "ai"})) is None
    assert minimal_from_msgpack(b"\xc1") is None
