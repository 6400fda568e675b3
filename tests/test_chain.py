"""The tamper-evident chain on MemorySaver, RedisSaver and S3Saver."""

from __future__ import annotations

import sqlite3
import uuid
from typing import Any

import ormsgpack
import pytest

from agentmatic.checkpoint.base import thread_config
from agentmatic.checkpoint.chain import CHAIN_KEY_ENV, verify
from agentmatic.checkpoint.memory import MemorySaver
from agentmatic.errors import ChainBroken
from tests.s3server import BUCKET
from tests.test_runtime import ask, build, cfg

KEY = b"k" * 32


class Backend:
    """Makes savers of one kind and edits their stored bytes behind their back."""

    def __init__(self, kind: str, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self.request = request
        self.made: list[Any] = []

    def saver(self, **kwargs: Any) -> Any:
        if self.kind == "memory":
            saver: Any = MemorySaver(**kwargs)
        elif self.kind == "sqlite":
            from agentmatic.checkpoint.sqlite import SQLiteSaver

            tmp = self.request.getfixturevalue("tmp_path")
            saver = SQLiteSaver(tmp / f"chain-{len(self.made)}.sqlite", **kwargs)
        elif self.kind == "redis":
            from agentmatic.checkpoint.redis import RedisSaver

            url = self.request.getfixturevalue("redis_url")
            prefix = self.request.getfixturevalue("redis_prefix")
            saver = RedisSaver(url, prefix=f"{prefix}:{len(self.made)}", **kwargs)
        else:
            from agentmatic.checkpoint.s3 import S3Saver

            self.request.getfixturevalue("s3_server")
            prefix = self.request.getfixturevalue("s3_prefix")
            saver = S3Saver(prefix=f"{prefix}{len(self.made)}", page_size=2, **kwargs)
        self.made.append(saver)
        return saver

    def flip_checkpoint_byte(self, saver: Any, thread_id: str, cid: str, at: float):
        """Flip one byte of the stored checkpoint, `at` of the way into its blob."""

        def flip(raw: bytes, blob: bytes) -> bytes:
            start = raw.find(blob)
            assert start >= 0
            edited = bytearray(raw)
            edited[start + int(len(blob) * at)] ^= 0x01
            return bytes(edited)

        if self.kind == "memory":
            item = saver._threads[thread_id][""][cid]
            tag, blob = item.checkpoint
            item.checkpoint = (tag, flip(blob, blob))
        elif self.kind == "sqlite":
            with sqlite3.connect(saver.path) as conn:
                (blob,) = conn.execute(
                    "SELECT checkpoint FROM checkpoints WHERE thread_id = ? "
                    "AND checkpoint_id = ?",
                    (thread_id, cid),
                ).fetchone()
                conn.execute(
                    "UPDATE checkpoints SET checkpoint = ? WHERE thread_id = ? "
                    "AND checkpoint_id = ?",
                    (flip(blob, blob), thread_id, cid),
                )
        elif self.kind == "redis":
            key, field = f"{saver.prefix}:t:{thread_id}:cp", f"\x1f{cid}"
            raw = saver.client.hget(key, field)
            blob = ormsgpack.unpackb(raw)[1]
            saver.client.hset(key, field, flip(raw, blob))
        else:
            key = saver._cp_key(thread_id, "", cid)
            raw = saver.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            blob = ormsgpack.unpackb(raw)["checkpoint"][1]
            saver.client.put_object(Bucket=BUCKET, Key=key, Body=flip(raw, blob))

    def drop_checkpoint(self, saver: Any, thread_id: str, cid: str) -> None:
        """Delete a checkpoint the way someone with database access would."""
        if self.kind == "memory":
            del saver._threads[thread_id][""][cid]
        elif self.kind == "sqlite":
            with sqlite3.connect(saver.path) as conn:
                conn.execute(
                    "DELETE FROM checkpoints WHERE thread_id = ? AND checkpoint_id = ?",
                    (thread_id, cid),
                )
        elif self.kind == "redis":
            saver.client.hdel(f"{saver.prefix}:t:{thread_id}:cp", f"\x1f{cid}")
            saver.client.zrem(f"{saver.prefix}:t:{thread_id}:idx", f"\x1f{cid}")
        else:
            saver.client.delete_object(
                Bucket=BUCKET, Key=saver._cp_key(thread_id, "", cid)
            )
            saver._update(thread_id, "", _without(saver, cid))


def _without(saver: Any, cid: str) -> Any:
    def mutate(manifest: Any, created: list[str]) -> Any:
        entries = [e for e in saver._all_entries(manifest) if e["id"] != cid]
        saver._rebuild(
            thread_id="-", ns="", manifest=manifest, entries=entries, created=created
        )
        return manifest

    return mutate


@pytest.fixture(params=["memory", "sqlite", "redis", "s3"])
def backend(request: pytest.FixtureRequest) -> Any:
    made = Backend(request.param, request)
    yield made
    for saver in made.made:
        saver.close()


def paid(saver: Any, thread_id: str = "t") -> list[Any]:
    """Run a refund that pauses and is approved; return the history."""
    agent, _bank = build(saver=saver)
    ask(agent, thread_id, "Refund $250")
    agent.invoke(None, cfg(thread_id))
    return saver.get_state_history(thread_id)


def test_an_untouched_chain_verifies(backend):
    saver = backend.saver(chain_key=KEY)
    history = paid(saver)
    report = verify(saver, "t")
    assert report.ok, report.broken
    assert report.checked == len(history)
    assert report.head == history[0].checkpoint_id
    assert all("mac" in s.metadata["chain"] for s in history)


@pytest.mark.parametrize("at", [0.25, 0.5, 0.9])
def test_editing_one_byte_of_a_stored_checkpoint_names_it(backend, at):
    saver = backend.saver(chain_key=KEY)
    history = paid(saver)
    target = history[len(history) // 2].checkpoint_id
    backend.flip_checkpoint_byte(saver, "t", target, at)
    report = verify(saver, "t")
    assert not report.ok
    assert report.checkpoint_id == target
    assert [b.checkpoint_id for b in report.broken] == [target]
    with pytest.raises(ChainBroken, match=target):
        report.raise_if_broken()


def test_editing_a_finished_tasks_write_names_the_checkpoint_it_belongs_to(backend):
    saver = backend.saver(chain_key=KEY)
    history = paid(saver)
    # The model's reply is a write on the checkpoint before the last one.
    parent = saver.get_tuple(cfg("t", history[1].checkpoint_id))
    task_id, channel, value = parent.pending_writes[0]
    saver.put_writes(parent.config, [(channel, value)], task_id + "-forged")
    report = verify(saver, "t")
    assert report.checkpoint_id == parent.checkpoint["id"]
    assert "pending writes changed" in report.reason


def test_a_checkpoint_deleted_behind_the_savers_back_breaks_its_child(backend):
    saver = backend.saver(chain_key=KEY)
    history = paid(saver)
    gone, child = history[3].checkpoint_id, history[2].checkpoint_id
    backend.drop_checkpoint(saver, "t", gone)
    report = verify(saver, "t")
    assert report.checkpoint_id == child
    assert "missing" in report.reason


def test_deletions_through_the_saver_keep_the_chain_verifiable(backend):
    saver = backend.saver(chain_key=KEY)
    history = paid(saver)
    saver.delete_checkpoints("t", "", [s.checkpoint_id for s in history[-3:]])
    report = verify(saver, "t")
    assert report.ok, report.broken
    assert report.anchored == 1

    saver.prune(["t"])
    report = verify(saver, "t")
    assert report.ok, report.broken
    assert report.checked == 1


def test_a_copied_thread_verifies(backend):
    saver = backend.saver(chain_key=KEY)
    paid(saver)
    saver.copy_thread("t", "t-copy")
    assert verify(saver, "t-copy").ok


def test_a_thread_written_without_a_key_does_not_verify(backend):
    saver = backend.saver()
    history = paid(saver)
    report = verify(saver, "t", chain_key=KEY)
    assert report.checkpoint_id == history[-1].checkpoint_id
    assert "without a chain key" in report.reason


def test_another_key_breaks_the_first_checkpoint(backend):
    saver = backend.saver(chain_key=KEY)
    history = paid(saver)
    reader = backend.saver(chain_key=b"another key, 32 bytes long......")
    if backend.kind == "memory":
        reader = saver
        reader.chain = type(saver.chain)(b"another key, 32 bytes long......")
    else:
        reader = type(saver).__new__(type(saver))
        reader.__dict__.update(saver.__dict__)
        reader.chain = backend.made[-1].chain
    report = verify(reader, "t")
    assert report.checkpoint_id == history[-1].checkpoint_id


def test_the_key_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(CHAIN_KEY_ENV, "an environment key of 32 bytes..")
    saver = MemorySaver(chain_key=True)
    paid(saver)
    assert verify(saver, "t").ok
    # verify can be given the key for a saver built without one.
    assert verify(MemorySaver(), "nothing").ok
    plain = MemorySaver()
    plain._threads = saver._threads
    plain._heads = saver._heads
    plain._writes = saver._writes
    assert verify(plain, "t").ok


def test_a_missing_or_short_key_is_refused(monkeypatch):
    monkeypatch.delenv(CHAIN_KEY_ENV, raising=False)
    with pytest.raises(ValueError, match=CHAIN_KEY_ENV):
        MemorySaver(chain_key=True)
    with pytest.raises(ValueError, match="16 bytes"):
        MemorySaver(chain_key=b"short")


def test_the_key_is_never_stored(backend):
    saver = backend.saver(chain_key=KEY)
    paid(saver)
    for tup in saver.list(thread_config("t")):
        assert KEY.decode() not in repr(tup)
    assert "k" * 32 not in repr(saver.chain)


def test_a_chain_starts_where_the_key_was_turned_on():
    saver = MemorySaver()
    agent, _ = build(saver=saver)
    ask(agent, "t", "Refund $40")
    before = len(saver.get_state_history("t"))
    saver.chain = type(MemorySaver(chain_key=KEY).chain)(KEY)
    ask(agent, "t", "Refund $30")
    report = verify(saver, "t")
    assert report.ok, report.broken
    assert report.unchained == before


def test_stripping_the_chain_from_a_newer_checkpoint_is_caught():
    saver = MemorySaver(chain_key=KEY)
    history = paid(saver)
    target = history[1].checkpoint_id
    item = saver._threads["t"][""][target]
    meta = saver.serde.loads_typed(item.metadata)
    del meta["chain"]
    item.metadata = saver.serde.dumps_typed(meta)
    report = verify(saver, "t")
    assert report.checkpoint_id == target
    assert report.reason == "no chain record"


def test_a_thread_id_of_another_thread_changes_nothing():
    saver = MemorySaver(chain_key=KEY)
    paid(saver, "a")
    paid(saver, "b")
    assert verify(saver, "a").ok and verify(saver, "b").ok
    assert verify(saver, f"none-{uuid.uuid4()}").checked == 0
