"""A tamper-evident chain over a thread's checkpoints (opt-in per saver).

A saver built with ``chain_key=`` stores, in every checkpoint's metadata, a
``chain`` record::

    {"v": 1, "mac": hex, "parent_id": id or None, "parent_mac": hex,
     "writes": hex}

`mac` is an HMAC-SHA256, under a key the database never holds, over the
checkpoint, its metadata (without ``chain``), its namespace and id, its
parent's id and MAC, and a digest of the parent's pending writes. Those
writes are part of what a checkpoint means: the message log is stored as
deltas, so a step's messages live in the writes of its parent. Someone who
can edit the database but does not know the key can change no checkpoint,
no parent link and no finished task's writes without `verify` naming the
checkpoint where the chain breaks.

Each record carries its parent's MAC, so a checkpoint stays verifiable when
retention deletes its parent. A deletion made through the saver (retention,
`prune`, `delete_for_runs`) leaves an *anchor* on each surviving child: a
write on the ``__chain__`` channel, itself MACed, saying which parent went.
A parent that vanished without an anchor is a broken link.

What the chain cannot show: that the newest checkpoints were deleted (there
is no later checkpoint to miss them; compare `VerifyReport.head` with a
head recorded elsewhere to catch that), and changes to the writes of a
thread's newest checkpoint until the next checkpoint is written.

The MAC is computed over values as the saver's serializer reads them back,
in a canonical form (sorted keys, sets in a fixed order, tuples as lists),
so it does not depend on how a backend lays out its bytes.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from agentmatic.checkpoint.serde import DeltaSnapshot, OpaqueValue, Serializer
from agentmatic.errors import ChainBroken, SerializationError

if TYPE_CHECKING:
    from agentmatic.checkpoint.base import BaseSaver, CheckpointTuple

CHAIN_KEY_ENV = "AGENTMATIC_CHAIN_KEY"
# Anchors are writes on this channel, under a task id that names the parent.
ANCHOR_CHANNEL = "__chain__"
ANCHOR_TASK_PREFIX = "__chain__:"
MIN_KEY_BYTES = 16
VERSION = 1

ChainKey = bytes | str | Literal[True] | None


def resolve_key(chain_key: ChainKey | bool) -> bytes | None:
    """Return the HMAC key a saver's `chain_key=` argument names, or None.

    `True` reads ``AGENTMATIC_CHAIN_KEY`` from the environment; bytes or a
    string are the key itself. A missing or short key is a configuration
    error and raises `ValueError`.
    """
    if chain_key is None or chain_key is False:
        return None
    if chain_key is True:
        raw = os.environ.get(CHAIN_KEY_ENV)
        if not raw:
            raise ValueError(
                f"chain_key=True needs the environment variable {CHAIN_KEY_ENV}"
            )
        key = raw.encode()
    elif isinstance(chain_key, str):
        key = chain_key.encode()
    elif isinstance(chain_key, bytes):
        key = chain_key
    else:
        raise ValueError("chain_key must be bytes, a string, True or None")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"a chain key needs at least {MIN_KEY_BYTES} bytes")
    return key


class Chain:
    """Seals checkpoints with linked MACs and checks them."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"a chain key needs at least {MIN_KEY_BYTES} bytes")
        self._key = key

    @classmethod
    def from_key(cls, chain_key: ChainKey | bool) -> Chain | None:
        """Return a chain for a `chain_key=` argument, or None when it is off."""
        key = resolve_key(chain_key)
        return cls(key) if key is not None else None

    def __repr__(self) -> str:
        return "Chain(<key hidden>)"

    # -- sealing ---------------------------------------------------------------

    def seal(
        self,
        saver: BaseSaver,
        thread_id: str,
        checkpoint_ns: str,
        parent_id: str | None,
        checkpoint: dict[str, Any],
        metadata: dict[str, Any],
        *,
        resealed_from: str = "",
    ) -> dict[str, Any]:
        """Return `metadata` with the checkpoint's chain record added.

        `resealed_from` is the MAC the checkpoint had before (it is stored
        again with its delta values inlined): a child sealed on that MAC still
        links to it, as the new MAC vouches for the old one.
        """
        from agentmatic.checkpoint.base import thread_config

        parent = (
            saver.get_tuple(thread_config(thread_id, parent_id, checkpoint_ns))
            if parent_id
            else None
        )
        body = {k: v for k, v in metadata.items() if k != "chain"}
        serde = saver.display_serde
        record: dict[str, Any] = {
            "v": VERSION,
            "parent_id": parent_id,
            "parent_mac": _mac_of(parent.metadata) if parent else "",
            "writes": writes_digest(parent.pending_writes if parent else None),
        }
        if resealed_from:
            record["resealed_from"] = resealed_from
        record["mac"] = self._mac(
            checkpoint_ns,
            str(checkpoint["id"]),
            record,
            _digest(_roundtrip(serde, checkpoint)),
            _digest(_roundtrip(serde, body)),
        )
        return {**body, "chain": record}

    def _mac(
        self,
        ns: str,
        checkpoint_id: str,
        record: dict[str, Any],
        checkpoint_digest: str,
        metadata_digest: str,
    ) -> str:
        fields = [
            "agentmatic-chain",
            VERSION,
            ns,
            checkpoint_id,
            record.get("parent_id") or "",
            record.get("parent_mac") or "",
            record.get("writes") or "",
            checkpoint_digest,
            metadata_digest,
        ]
        if record.get("resealed_from"):
            fields += ["resealed_from", str(record["resealed_from"])]
        message = _PACKER.dumps(fields)
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    # -- anchors -----------------------------------------------------------------

    def anchor_mac(
        self, ns: str, child_id: str, parent_id: str, parent_mac: str
    ) -> str:
        message = _PACKER.dumps(
            ["agentmatic-anchor", VERSION, ns, child_id, parent_id, parent_mac]
        )
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def anchor(
        self,
        saver: BaseSaver,
        thread_id: str,
        checkpoint_ns: str,
        checkpoint_ids: Iterable[str],
    ) -> int:
        """Record, on each surviving child, that its parent is being deleted.

        Call before deleting `checkpoint_ids`; return how many anchors were
        written.
        """
        from agentmatic.checkpoint.base import thread_config

        doomed = set(checkpoint_ids)
        if not doomed:
            return 0
        tuples = list(saver.list(thread_config(thread_id, checkpoint_ns=checkpoint_ns)))
        by_id = {t.checkpoint["id"]: t for t in tuples}
        written = 0
        for tup in tuples:
            cid = tup.checkpoint["id"]
            parent_id = _parent_id(tup)
            if cid in doomed or parent_id not in doomed:
                continue
            parent_macs = _macs_of(by_id[parent_id].metadata)
            if not parent_macs:
                continue
            # The MAC the child was sealed on: the parent's own, or the one it
            # had before it was resealed with its values inlined.
            sealed_on = ((tup.metadata or {}).get("chain") or {}).get("parent_mac")
            parent_mac = sealed_on if sealed_on in parent_macs else parent_macs[0]
            self._write_anchor(saver, tup, checkpoint_ns, parent_id, parent_mac)
            written += 1
        return written

    def anchor_orphans(
        self,
        saver: BaseSaver,
        thread_id: str,
        checkpoint_ns: str,
        checkpoint_ids: Iterable[str],
    ) -> int:
        """After deleting `checkpoint_ids`, anchor each child of one of them
        that `anchor` did not see (written between it and the delete).

        The anchor records the parent MAC the child was sealed on. Return how
        many anchors were written.
        """
        from agentmatic.checkpoint.base import thread_config

        doomed = set(checkpoint_ids)
        if not doomed:
            return 0
        tuples = list(saver.list(thread_config(thread_id, checkpoint_ns=checkpoint_ns)))
        present = {t.checkpoint["id"] for t in tuples}
        written = 0
        for tup in tuples:
            cid = tup.checkpoint["id"]
            parent_id = _parent_id(tup)
            if parent_id not in doomed or parent_id in present:
                continue
            record = (tup.metadata or {}).get("chain")
            if not isinstance(record, dict) or not record.get("parent_mac"):
                continue
            if self._anchored(tup, checkpoint_ns, cid, parent_id, record):
                continue
            self._write_anchor(
                saver, tup, checkpoint_ns, parent_id, str(record["parent_mac"])
            )
            written += 1
        return written

    def _write_anchor(
        self,
        saver: BaseSaver,
        tup: CheckpointTuple,
        checkpoint_ns: str,
        parent_id: str,
        parent_mac: str,
    ) -> None:
        """Store, as a write on the child `tup`, that `parent_id` was deleted."""
        cid = str(tup.checkpoint["id"])
        value = {
            "v": VERSION,
            "parent_id": parent_id,
            "parent_mac": parent_mac,
            "mac": self.anchor_mac(checkpoint_ns, cid, parent_id, parent_mac),
        }
        saver.put_writes(
            tup.config, [(ANCHOR_CHANNEL, value)], ANCHOR_TASK_PREFIX + parent_id
        )

    # -- verifying ---------------------------------------------------------------

    def check(
        self,
        tup: CheckpointTuple,
        parent: CheckpointTuple | None,
        serde: Serializer,
    ) -> str | None:
        """Return why this checkpoint breaks the chain, or None if it holds.

        `parent` is the stored parent, or None when there is none (or it is
        gone); problems with the parent's own content are the parent's.
        """
        conf = tup.config["configurable"]
        ns, cid = str(conf.get("checkpoint_ns") or ""), str(conf["checkpoint_id"])
        record = (tup.metadata or {}).get("chain")
        if not isinstance(record, dict) or not isinstance(record.get("mac"), str):
            return "no chain record"
        actual_parent = _parent_id(tup)
        if record.get("parent_id") != actual_parent:
            return (
                f"its parent link was changed (sealed with parent "
                f"{record.get('parent_id')!r}, stored with {actual_parent!r})"
            )
        body = {k: v for k, v in tup.metadata.items() if k != "chain"}
        try:
            expected = self._mac(
                ns,
                cid,
                record,
                _digest(_normalize(tup.checkpoint)),
                _digest(_normalize(body)),
            )
        except (TypeError, ValueError, SerializationError) as exc:
            return f"its content cannot be canonicalized ({exc})"
        if not hmac.compare_digest(expected, record["mac"]):
            return "its content does not match its MAC (checkpoint or metadata edited)"
        if actual_parent is None:
            return None if not record.get("parent_mac") else "a root with a parent MAC"
        if parent is None:
            if self._anchored(tup, ns, cid, actual_parent, record):
                return None
            return (
                f"its parent {actual_parent!r} is missing and no anchor records "
                "its deletion"
            )
        if (record.get("parent_mac") or "") not in (_macs_of(parent.metadata) or [""]):
            return "its parent's MAC is not the one it was sealed with"
        return None

    def writes_changed(self, child: CheckpointTuple, parent: CheckpointTuple) -> bool:
        """Return whether `parent`'s writes differ from those `child` was sealed on."""
        record = (child.metadata or {}).get("chain") or {}
        return record.get("writes") != writes_digest(parent.pending_writes)

    def _anchored(
        self,
        tup: CheckpointTuple,
        ns: str,
        cid: str,
        parent_id: str,
        record: dict[str, Any],
    ) -> bool:
        for _task, channel, value in tup.pending_writes or []:
            if channel != ANCHOR_CHANNEL or not isinstance(value, dict):
                continue
            if value.get("parent_id") != parent_id:
                continue
            parent_mac = str(value.get("parent_mac") or "")
            expected = self.anchor_mac(ns, cid, parent_id, parent_mac)
            if parent_mac == record.get("parent_mac") and hmac.compare_digest(
                expected, str(value.get("mac") or "")
            ):
                return True
        return False


# -- verify ------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokenLink:
    """One checkpoint where the chain does not hold, and why."""

    checkpoint_id: str | None
    checkpoint_ns: str
    reason: str


@dataclass(frozen=True)
class VerifyReport:
    """What `verify` found in one thread, oldest problem first."""

    thread_id: str
    checked: int
    anchored: int
    unchained: int
    head: str | None
    broken: tuple[BrokenLink, ...]

    @property
    def ok(self) -> bool:
        return not self.broken

    @property
    def first(self) -> BrokenLink | None:
        """Return the oldest broken link, or None."""
        return self.broken[0] if self.broken else None

    @property
    def checkpoint_id(self) -> str | None:
        """Return the id of the checkpoint where the chain first breaks."""
        return self.broken[0].checkpoint_id if self.broken else None

    @property
    def reason(self) -> str | None:
        return self.broken[0].reason if self.broken else None

    def raise_if_broken(self) -> None:
        """Raise `ChainBroken` naming the first broken link, if there is one."""
        if self.broken:
            link = self.broken[0]
            raise ChainBroken(self.thread_id, str(link.checkpoint_id), link.reason)


def verify(
    saver: BaseSaver, thread_id: str, *, chain_key: ChainKey | bool = None
) -> VerifyReport:
    """Check every checkpoint of a thread (all namespaces) against its chain.

    The key is the saver's own, else `chain_key` (``True``: from
    ``AGENTMATIC_CHAIN_KEY``). Stored values are read in display mode, so a
    type name edited into something not on the allow-list still shows up
    as a broken MAC rather than an error.
    """
    chain = saver.chain or Chain.from_key(True if chain_key is None else chain_key)
    if chain is None:
        raise ValueError("verify needs a chain key")
    tuples, unreadable = _read_thread(saver, thread_id)
    by_key = {
        (str(t.config["configurable"].get("checkpoint_ns") or ""), _cid(t)): t
        for t in tuples
    }
    problems: list[tuple[str, BrokenLink]] = [
        (cid or "", BrokenLink(cid, ns, f"unreadable: {detail}"))
        for ns, cid, detail in unreadable
    ]
    unreadable_ids = {(ns, cid) for ns, cid, _ in unreadable}
    chained_seen: set[str] = set()
    anchored = unchained = 0
    for tup in sorted(tuples, key=_cid):
        ns, cid = str(tup.config["configurable"].get("checkpoint_ns") or ""), _cid(tup)
        parent_id = _parent_id(tup)
        parent = by_key.get((ns, parent_id)) if parent_id else None
        record = (tup.metadata or {}).get("chain")
        if not isinstance(record, dict):
            if ns in chained_seen:
                problems.append((cid, BrokenLink(cid, ns, "no chain record")))
            else:
                unchained += 1
            continue
        chained_seen.add(ns)
        if parent_id and (ns, parent_id) in unreadable_ids:
            continue
        reason = chain.check(tup, parent, saver.display_serde)
        if reason is not None:
            problems.append((cid, BrokenLink(cid, ns, reason)))
            continue
        if parent_id and parent is None:
            anchored += 1
        if parent is not None and chain.writes_changed(tup, parent):
            problems.append(
                (
                    parent_id or "",
                    BrokenLink(
                        parent_id,
                        ns,
                        f"its pending writes changed after child {cid!r} was "
                        "sealed on them",
                    ),
                )
            )
    if tuples and not chained_seen:
        oldest = min(tuples, key=_cid)
        problems.append(
            (
                _cid(oldest),
                BrokenLink(
                    _cid(oldest),
                    str(oldest.config["configurable"].get("checkpoint_ns") or ""),
                    "no chain record: the thread was written without a chain key",
                ),
            )
        )
    problems.sort(key=lambda p: p[0])
    heads = [
        _cid(t) for t in tuples if not t.config["configurable"].get("checkpoint_ns")
    ]
    return VerifyReport(
        thread_id=thread_id,
        checked=len(tuples) + len(unreadable),
        anchored=anchored,
        unchained=unchained,
        head=max(heads) if heads else None,
        broken=tuple(link for _, link in problems),
    )


def _read_thread(
    saver: BaseSaver, thread_id: str
) -> tuple[list[CheckpointTuple], list[tuple[str, str | None, str]]]:
    """Return a thread's readable checkpoints and `(ns, id, why)` for the rest."""
    # A shallow copy that decodes in display mode: same storage, no revival.
    reader = copy.copy(saver)
    reader.serde = saver.display_serde
    config: dict[str, Any] = {"configurable": {"thread_id": thread_id}}
    try:
        return list(reader.list(config)), []
    except SerializationError:
        pass
    # Something is unreadable: walk one checkpoint at a time to step past it.
    tuples: list[CheckpointTuple] = []
    unreadable: list[tuple[str, str | None, str]] = []
    before: dict[str, Any] | None = None
    while True:
        try:
            found = list(reader.list(config, before=before, limit=1))
        except SerializationError as exc:
            cid = getattr(exc, "checkpoint_id", None)
            ns = getattr(exc, "checkpoint_ns", "") or ""
            unreadable.append((ns, cid, str(exc)))
            if cid is None:
                return tuples, unreadable
            before = {"configurable": {"checkpoint_id": cid}}
            continue
        if not found:
            return tuples, unreadable
        tuples.extend(found)
        before = {"configurable": {"checkpoint_id": _cid(found[-1])}}


# -- canonical form ----------------------------------------------------------------

_PACKER = Serializer()


def _roundtrip(serde: Serializer, value: Any) -> Any:
    """Return `value` as the serializer reads it back, canonicalized."""
    return _normalize(serde.loads_typed(serde.dumps_typed(value)))


def _normalize(value: Any) -> Any:
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: (type(kv[0]).__name__, str(kv[0])))
        return {k: _normalize(v) for k, v in items}
    if isinstance(value, DeltaSnapshot):
        return ["__delta__", _normalize(value.value)]
    if isinstance(value, (list, tuple)):
        return [_normalize(v) for v in value]
    if isinstance(value, (set, frozenset)):
        members = [_normalize(v) for v in value]
        return ["__set__", sorted(members, key=_PACKER.dumps)]
    if isinstance(value, OpaqueValue):
        return ["__opaque__", value.type_name, _normalize(value.fields)]
    return value


def _digest(normalized: Any) -> str:
    return hashlib.sha256(_PACKER.dumps(normalized)).hexdigest()


def writes_digest(writes: Sequence[tuple[str, str, Any]] | None) -> str:
    """Return a digest of pending writes, ignoring chain anchors and order."""
    rows = sorted(
        (_PACKER.dumps([task, channel, _normalize(value)]))
        for task, channel, value in writes or []
        if channel != ANCHOR_CHANNEL
    )
    return hashlib.sha256(
        b"".join(hashlib.sha256(r).digest() for r in rows)
    ).hexdigest()


def _mac_of(metadata: dict[str, Any] | None) -> str:
    record = (metadata or {}).get("chain")
    if isinstance(record, dict) and isinstance(record.get("mac"), str):
        return str(record["mac"])
    return ""


def _macs_of(metadata: dict[str, Any] | None) -> list[str]:
    """Return a checkpoint's MAC and, if it was resealed, the one before."""
    mac = _mac_of(metadata)
    if not mac:
        return []
    before = ((metadata or {}).get("chain") or {}).get("resealed_from")
    return [mac, str(before)] if isinstance(before, str) and before else [mac]


def _parent_id(tup: CheckpointTuple) -> str | None:
    if not tup.parent_config:
        return None
    parent = tup.parent_config["configurable"].get("checkpoint_id")
    return str(parent) if parent else None


def _cid(tup: CheckpointTuple) -> str:
    return str(tup.config["configurable"]["checkpoint_id"])


__all__ = [
    "ANCHOR_CHANNEL",
    "CHAIN_KEY_ENV",
    "BrokenLink",
    "Chain",
    "ChainKey",
    "VerifyReport",
    "resolve_key",
    "verify",
    "writes_digest",
]
