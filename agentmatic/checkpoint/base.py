"""The saver contract every backend implements, in LangGraph's shapes.

A saver stores checkpoints (`put`), the writes of the tasks that ran from a
checkpoint (`put_writes`), and reads them back as `CheckpointTuple`s. The
method names, arguments and tuple layout are LangGraph's, so
`agentmatic.compat.langgraph.LangGraphSaver` can hand any saver to a
LangGraph graph. On top of that contract every saver has what the runtime
and the console need: a check that a write continues the thread's newest
checkpoint, leases so one process runs a thread at a time, and readers that
turn checkpoints into `State`s without the agent that wrote them.

Every method is synchronous at heart; the `a`-prefixed twins run it in a
worker thread, so the two can never drift apart.
"""

from __future__ import annotations

import asyncio
import builtins
import random
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from agentmatic.checkpoint.serde import Serializer
from agentmatic.errors import InvalidThreadId, ThreadConflict
from agentmatic.state import Config, State, ThreadInfo, ThreadPage

if TYPE_CHECKING:
    from agentmatic.checkpoint.chain import Chain, ChainKey

ERROR = "__error__"
SCHEDULED = "__scheduled__"
INTERRUPT = "__interrupt__"
RESUME = "__resume__"
TASKS = "__pregel_tasks"
DECISION = "__decision__"

# LangGraph stores writes to these channels at fixed negative indexes and
# replaces them on conflict; every other write keeps the first value stored.
WRITES_IDX_MAP = {ERROR: -1, SCHEDULED: -2, INTERRUPT: -3, RESUME: -4}

# Metadata keys a filter may name: letters, digits and underscores only, so
# a key can never smuggle SQL or a path into a backend's query.
FILTER_KEY_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"
)


class _NoCheck:
    def __repr__(self) -> str:
        return "NO_CHECK"


NO_CHECK: Any = _NoCheck()

PendingWrite = tuple[str, str, Any]


class CheckpointTuple(NamedTuple):
    config: Config
    checkpoint: dict[str, Any]
    metadata: dict[str, Any]
    parent_config: Config | None = None
    pending_writes: list[PendingWrite] | None = None


def thread_config(
    thread_id: str, checkpoint_id: str | None = None, checkpoint_ns: str = ""
) -> Config:
    configurable: dict[str, Any] = {
        "thread_id": thread_id,
        "checkpoint_ns": checkpoint_ns,
    }
    if checkpoint_id is not None:
        configurable["checkpoint_id"] = checkpoint_id
    return {"configurable": configurable}


def parent_id_of(tup: CheckpointTuple) -> str | None:
    """Return the id of a checkpoint's parent, or None for a thread's first."""
    return (tup.parent_config or {}).get("configurable", {}).get("checkpoint_id")


def config_parts(config: Config) -> tuple[str, str, str | None]:
    """Return `(thread_id, checkpoint_ns, checkpoint_id)` of a config."""
    if not isinstance(config, dict):
        raise InvalidThreadId(
            f"a config must be a dict with configurable, not {config!r}"
        )
    conf = config.get("configurable") or {}
    thread_id = conf.get("thread_id")
    if thread_id is None or thread_id == "":
        raise InvalidThreadId("config needs configurable.thread_id")
    return (
        check_thread_id(thread_id),
        check_namespace(conf.get("checkpoint_ns")),
        check_checkpoint_id(conf.get("checkpoint_id")),
    )


def check_thread_id(thread_id: Any) -> str:
    """Return a reader's thread id as text, refusing one that names no thread."""
    if (
        thread_id is None
        or thread_id == ""
        or isinstance(thread_id, (bool, bytes, bytearray, list, tuple, dict, set))
    ):
        raise InvalidThreadId(f"a thread id must be non-empty text, not {thread_id!r}")
    try:
        str(thread_id).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidThreadId(f"thread id {thread_id!r} is not valid text") from None
    return str(thread_id)


def check_checkpoint_id(value: Any, what: str = "checkpoint id") -> str | None:
    """Return a checkpoint id given to a reader, refusing non-text.

    None or empty text means none, as in LangGraph's savers.
    """
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{what} must be text, not {value!r}")
    return value or None


def check_namespace(value: Any) -> str:
    """Return a checkpoint namespace given to a reader ('' for none)."""
    if value is not None and not isinstance(value, str):
        raise ValueError(f"checkpoint_ns must be text, not {value!r}")
    return value or ""


def checked_before(before: Any) -> str | None:
    """Return the checkpoint id of a `before` config, refusing a malformed one."""
    if before is None:
        return None
    conf = before.get("configurable") if isinstance(before, dict) else None
    if not isinstance(conf, dict):
        raise ValueError(f"before must be a config with configurable, not {before!r}")
    return check_checkpoint_id(conf.get("checkpoint_id"), "before")


def check_thread_page(agent: Any, limit: Any, cursor: Any) -> None:
    """Check the arguments of `list_threads`: a page holds at least one thread."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a whole number of at least 1, not {limit!r}")
    for name, value in (("agent", agent), ("cursor", cursor)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{name} must be text, not {value!r}")


def check_history_args(
    thread_id: Any, limit: Any, before: Any, checkpoint_ns: Any
) -> tuple[str, str | None, str]:
    """Check a history read's arguments; return its thread, `before` and namespace."""
    check_limit(limit)
    return (
        check_thread_id(thread_id),
        check_checkpoint_id(before, "before"),
        check_namespace(checkpoint_ns),
    )


def check_state_args(thread_id: Any, checkpoint_id: Any) -> tuple[str, str | None]:
    """Check a state read's arguments; return them as text."""
    return check_thread_id(thread_id), check_checkpoint_id(checkpoint_id)


def check_filter_keys(filter: dict[str, Any] | None) -> dict[str, Any]:
    """Return the filter, refusing keys that are not plain identifiers."""
    if not filter:
        return {}
    if not isinstance(filter, dict):
        raise ValueError(f"a metadata filter must be a dict, not {filter!r}")
    for key in filter:
        if not isinstance(key, str) or not key or not set(key) <= FILTER_KEY_CHARS:
            raise ValueError(f"metadata filter key {key!r} is not a plain identifier")
    return filter


def check_limit(limit: int | None) -> int | None:
    """Return a history or listing limit, refusing negative ones on every saver."""
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a whole number of at least 0, not {limit!r}")
    return limit


def metadata_matches(metadata: dict[str, Any], filter: dict[str, Any]) -> bool:
    return all(metadata.get(k) == v for k, v in filter.items())


def next_version(current: str | int | float | None) -> str:
    """Return a version greater than `current`, in LangGraph's string format."""
    if current is None:
        number = 0
    elif isinstance(current, (int, float)):
        number = int(current)
    else:
        number = int(str(current).split(".")[0])
    return f"{number + 1:032}.{random.random():016}"  # noqa: S311


class BaseSaver(ABC):
    """A checkpoint store; subclasses implement the storage primitives."""

    serde: Serializer
    # The tamper-evident chain (`chain_key=`); None when the saver keeps none.
    chain: Chain | None = None

    def __init__(
        self,
        *,
        serde: Serializer | None = None,
        allow: Iterable[Any] = (),
        chain_key: ChainKey | bool = None,
    ):
        self.serde = serde or Serializer(allow=allow)
        self.display_serde = Serializer(allow=allow, display=True)
        if chain_key is not None and chain_key is not False:
            from agentmatic.checkpoint.chain import Chain

            self.chain = Chain.from_key(chain_key)

    # -- storage primitives ------------------------------------------------

    @abstractmethod
    def get_tuple(self, config: Config) -> CheckpointTuple | None:
        """Return the named checkpoint, or the thread's newest when none is named."""

    @abstractmethod
    def list(
        self,
        config: Config | None,
        *,
        filter: dict[str, Any] | None = None,
        before: Config | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """Yield checkpoints newest first."""

    @abstractmethod
    def put(
        self,
        config: Config,
        checkpoint: dict[str, Any],
        metadata: dict[str, Any],
        new_versions: dict[str, Any],
        *,
        expected_head: Any = NO_CHECK,
    ) -> Config:
        """Store a checkpoint whose parent is the checkpoint `config` names.

        With `expected_head` (a checkpoint id, or None for a new thread) the
        write happens only if that is still the newest checkpoint of the
        thread and namespace; otherwise `ThreadConflict` is raised and nothing
        is stored.
        """

    def put_step(
        self,
        config: Config,
        step_writes: Sequence[tuple[str, str, Sequence[tuple[str, Any]]]],
        checkpoint: dict[str, Any],
        metadata: dict[str, Any],
        new_versions: dict[str, Any],
        *,
        expected_head: Any = NO_CHECK,
    ) -> Config:
        """Store the writes of tasks that ran from `config`, then the checkpoint
        that follows them; a saver may do both in one transaction.

        `step_writes` holds `(task_id, task_path, writes)` for each task.
        """
        for task_id, task_path, writes in step_writes:
            self.put_writes(config, writes, task_id, task_path)
        return self.put(
            config, checkpoint, metadata, new_versions, expected_head=expected_head
        )

    @abstractmethod
    def put_writes(
        self,
        config: Config,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store a task's writes against the checkpoint `config` names."""

    @abstractmethod
    def delete_thread(self, thread_id: str) -> None: ...

    @abstractmethod
    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints (and their writes) whose metadata run_id is listed."""

    @abstractmethod
    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None: ...

    @abstractmethod
    def prune(
        self,
        thread_ids: Sequence[str],
        *,
        strategy: Literal["keep_latest", "delete"] = "keep_latest",
    ) -> None:
        """Keep only each namespace's newest checkpoint, or delete the threads."""

    @abstractmethod
    def delete_checkpoints(
        self, thread_id: str, checkpoint_ns: str, checkpoint_ids: Sequence[str]
    ) -> int:
        """Delete these checkpoints and their writes; return how many went."""

    @abstractmethod
    def acquire_lease(self, thread_id: str, owner: str, ttl_seconds: float) -> bool:
        """Take or renew the thread's run lease; False while another owner holds it."""

    @abstractmethod
    def release_lease(self, thread_id: str, owner: str) -> None: ...

    def get_next_version(self, current: str | int | float | None, channel: Any) -> str:
        return next_version(current)

    def find_checkpoint(self, checkpoint_id: str) -> CheckpointTuple | None:
        """Return the checkpoint with this id in any thread, or None."""
        check_checkpoint_id(checkpoint_id)
        return find_checkpoint_by_scan(self, checkpoint_id)

    def history_links(
        self, thread_id: str, checkpoint_ns: str = ""
    ) -> builtins.list[tuple[str, str | None]]:
        """Return `(checkpoint id, parent id)` of every checkpoint, newest first.

        The shape of a thread's history without its states: enough to lay
        out its branches before reading one page of them.
        """
        return [
            (
                tup.checkpoint["id"],
                tup.parent_config["configurable"].get("checkpoint_id")
                if tup.parent_config
                else None,
            )
            for tup in self.list(thread_config(thread_id, checkpoint_ns=checkpoint_ns))
        ]

    def head_id(self, thread_id: str, checkpoint_ns: str = "") -> str | None:
        thread_id = check_thread_id(thread_id)
        checkpoint_ns = check_namespace(checkpoint_ns)
        tup = self.get_tuple(thread_config(thread_id, checkpoint_ns=checkpoint_ns))
        return tup.checkpoint["id"] if tup else None

    def ensure_head(
        self, thread_id: str, checkpoint_ns: str, expected_head: Any
    ) -> None:
        if expected_head is NO_CHECK:
            return
        head = self.head_id(thread_id, checkpoint_ns)
        if head != expected_head:
            raise ThreadConflict(
                thread_id,
                f"expected newest checkpoint {expected_head!r} but it is {head!r}; "
                "another writer advanced the thread",
            )

    # -- the tamper-evident chain: every backend calls these two -------------

    def sealed_metadata(
        self,
        thread_id: str,
        checkpoint_ns: str,
        parent_id: str | None,
        checkpoint: dict[str, Any],
        metadata: dict[str, Any],
        *,
        resealed_from: str = "",
    ) -> dict[str, Any]:
        """Return the metadata `put` stores: with the chain record when chained.

        Call it in `put` on the final metadata (after config keys are merged
        in), before serializing; without a chain it returns `metadata` as is.
        """
        if self.chain is None:
            return metadata
        return self.chain.seal(
            self,
            thread_id,
            checkpoint_ns,
            parent_id,
            checkpoint,
            metadata,
            resealed_from=resealed_from,
        )

    def keep_children_whole(
        self, thread_id: str, checkpoint_ns: str, checkpoint_ids: Sequence[str]
    ) -> None:
        """Before deleting checkpoints, store their remaining children whole.

        A child's delta value (the message log) is its parent's plus the
        writes stored on the parent, and both go with the parent: each child
        that keeps its value that way is stored again with it inlined, so it
        stays readable and resumable. Call it, before `anchor_deletions`,
        from every method that deletes some (not all) of a thread.
        """
        doomed = {str(c) for c in checkpoint_ids}
        if not doomed:
            return
        for tup in self._children_of(thread_id, checkpoint_ns, doomed):
            self._store_whole(tup)

    def _store_whole(self, tup: CheckpointTuple) -> None:
        """Store a checkpoint again with its delta values inlined, if it has any."""
        inlined = self.with_values_inlined(tup)
        if inlined is not None:
            self._rewrite(tup, *inlined)

    def _children_of(
        self, thread_id: str, checkpoint_ns: str, parents: set[str]
    ) -> builtins.list[CheckpointTuple]:
        """Return the checkpoints, not among `parents`, whose parent is."""
        return [
            tup
            for tup in self.list(thread_config(thread_id, checkpoint_ns=checkpoint_ns))
            if tup.checkpoint["id"] not in parents and parent_id_of(tup) in parents
        ]

    def _rewrite(
        self,
        tup: CheckpointTuple,
        checkpoint: dict[str, Any],
        metadata: dict[str, Any],
    ) -> None:
        """Store a checkpoint again in place, its delta values inlined: only
        `prune` and `keep_children_whole` do, for one about to lose its
        ancestors."""
        raise NotImplementedError(f"{type(self).__name__} cannot rewrite")

    def anchor_deletions(
        self, thread_id: str, checkpoint_ns: str, checkpoint_ids: Sequence[str]
    ) -> None:
        """Before deleting checkpoints, anchor their surviving children's chain.

        Call it from every method that deletes some (not all) checkpoints of
        a thread: `delete_checkpoints`, `prune`, `delete_for_runs`.
        """
        if self.chain is not None and checkpoint_ids:
            self.chain.anchor(self, thread_id, checkpoint_ns, checkpoint_ids)

    def anchor_orphans(
        self, thread_id: str, checkpoint_ns: str, checkpoint_ids: Sequence[str]
    ) -> None:
        """After deleting checkpoints, anchor children written since
        `anchor_deletions` ran (a branch started on one of them meanwhile)."""
        if self.chain is not None and checkpoint_ids:
            self.chain.anchor_orphans(self, thread_id, checkpoint_ns, checkpoint_ids)

    def with_values_inlined(
        self, tup: CheckpointTuple
    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """Return the checkpoint with its delta channels stored whole, and its
        metadata (sealed again when chained); None if nothing is missing.

        For a checkpoint about to lose its ancestors (`prune` keeps only the
        newest), whose delta channels' values live in those ancestors.
        """
        from agentmatic.checkpoint.reading import ValueResolver, is_state_channel
        from agentmatic.checkpoint.serde import DeltaSnapshot

        conf = tup.config["configurable"]
        ns = str(conf.get("checkpoint_ns") or "")
        stored = dict(tup.checkpoint.get("channel_values") or {})
        missing = [
            ch
            for ch in tup.checkpoint.get("channel_versions") or {}
            if is_state_channel(ch) and ch not in stored
        ]
        if not missing:
            return None
        resolver = ValueResolver(self, conf["thread_id"], ns)
        resolver.add([tup])
        values = resolver.values(tup)
        for ch in missing:
            if ch in values:
                stored[ch] = DeltaSnapshot(values[ch])
        checkpoint = {**tup.checkpoint, "channel_values": stored}
        parent = parent_id_of(tup)
        old = dict(tup.metadata or {})
        record = old.get("chain")
        # Children sealed on the old MAC stay linked (a runner may have
        # appended one since `tup` was read).
        before = record.get("mac") if isinstance(record, dict) else None
        metadata = self.sealed_metadata(
            conf["thread_id"],
            ns,
            parent,
            checkpoint,
            old,
            resealed_from=before if isinstance(before, str) else "",
        )
        return checkpoint, metadata

    def close(self) -> None:  # noqa: B027 - savers without connections keep it
        """Release connections; the saver is not used afterwards."""

    # -- readers that need no agent ----------------------------------------

    def get_state_history(
        self,
        thread_id: str,
        *,
        limit: int | None = None,
        before: str | None = None,
        values: bool = True,
        checkpoint_ns: str = "",
    ) -> builtins.list[State]:
        """Return the thread's states newest first, read without its agent."""
        from agentmatic.checkpoint.reading import history

        thread_id, before, checkpoint_ns = check_history_args(
            thread_id, limit, before, checkpoint_ns
        )
        return history(
            self,
            thread_id,
            limit=limit,
            before=before,
            values=values,
            checkpoint_ns=checkpoint_ns,
        )

    def get_state(
        self, thread_id: str, checkpoint_id: str | None = None, *, values: bool = True
    ) -> State | None:
        """Return the newest (or the named) state of a thread, or None."""
        thread_id, checkpoint_id = check_state_args(thread_id, checkpoint_id)
        from agentmatic.checkpoint.reading import read_state

        return read_state(self, thread_id, checkpoint_id, values=values)

    def list_threads(
        self, *, agent: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> ThreadPage:
        """Return threads by newest activity, `limit` at a time."""
        check_thread_page(agent, limit, cursor)
        from agentmatic.checkpoint.reading import list_threads_by_scan

        return list_threads_by_scan(self, agent=agent, limit=limit, cursor=cursor)

    def thread_ids(self) -> Iterator[str]:
        """Yield every thread id once (order unspecified)."""
        seen: set[str] = set()
        for tup in self.list(None):
            tid = tup.config["configurable"]["thread_id"]
            if tid not in seen:
                seen.add(tid)
                yield tid

    # -- async twins ---------------------------------------------------------

    async def aget_tuple(self, config: Config) -> CheckpointTuple | None:
        return await asyncio.to_thread(self.get_tuple, config)

    async def alist(
        self,
        config: Config | None,
        *,
        filter: dict[str, Any] | None = None,
        before: Config | None = None,
        limit: int | None = None,
    ) -> Any:
        items = await asyncio.to_thread(
            lambda: list(self.list(config, filter=filter, before=before, limit=limit))
        )
        for item in items:
            yield item

    async def aput(
        self,
        config: Config,
        checkpoint: dict[str, Any],
        metadata: dict[str, Any],
        new_versions: dict[str, Any],
        *,
        expected_head: Any = NO_CHECK,
    ) -> Config:
        return await asyncio.to_thread(
            lambda: self.put(
                config, checkpoint, metadata, new_versions, expected_head=expected_head
            )
        )

    async def aput_writes(
        self,
        config: Config,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await asyncio.to_thread(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await asyncio.to_thread(self.delete_thread, thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await asyncio.to_thread(self.delete_for_runs, run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await asyncio.to_thread(self.copy_thread, source_thread_id, target_thread_id)

    async def aprune(
        self,
        thread_ids: Sequence[str],
        *,
        strategy: Literal["keep_latest", "delete"] = "keep_latest",
    ) -> None:
        await asyncio.to_thread(lambda: self.prune(thread_ids, strategy=strategy))

    async def aget_state_history(
        self,
        thread_id: str,
        *,
        limit: int | None = None,
        before: str | None = None,
        values: bool = True,
    ) -> builtins.list[State]:
        return await asyncio.to_thread(
            lambda: self.get_state_history(
                thread_id, limit=limit, before=before, values=values
            )
        )

    async def aget_state(
        self, thread_id: str, checkpoint_id: str | None = None, *, values: bool = True
    ) -> State | None:
        return await asyncio.to_thread(
            lambda: self.get_state(thread_id, checkpoint_id, values=values)
        )

    async def alist_threads(
        self, *, agent: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> ThreadPage:
        return await asyncio.to_thread(
            lambda: self.list_threads(agent=agent, limit=limit, cursor=cursor)
        )


def thread_info_from_tuple(
    tup: CheckpointTuple,
    first_meta: dict[str, Any] | None,
    next_nodes: tuple[str, ...],
    count: int | None,
) -> ThreadInfo:
    conf = tup.config["configurable"]
    meta = tup.metadata or {}
    first = first_meta or {}
    return ThreadInfo(
        thread_id=conf["thread_id"],
        checkpoint_id=conf["checkpoint_id"],
        created_at=first.get("created_at"),
        updated_at=tup.checkpoint.get("ts"),
        step=int(meta.get("step", -1)),
        source=str(meta.get("source", "")),
        next=next_nodes,
        agent=first.get("agent") or meta.get("agent"),
        started_by=first.get("started_by") or meta.get("started_by"),
        checkpoints=count,
        forked_from=first.get("forked_from"),
    )


def find_checkpoint_by_scan(
    saver: BaseSaver, checkpoint_id: str
) -> CheckpointTuple | None:
    for tup in saver.list(None):
        if tup.checkpoint["id"] == checkpoint_id:
            return tup
    return None
