"""RedisSaver: checkpoints on plain Redis (6 or newer, no modules).

Every write is one Lua script, so it is atomic, and a write that names the
head it expects checks the thread's head and writes inside that script: two
processes cannot both continue the same checkpoint. Nothing is ever found
by scanning keys; each question has an index that answers it directly.

A thread owns a fixed set of keys, whatever its length, so a TTL can be
renewed on all of them by every write (``P`` is the prefix, ``T`` the
thread id, ``M`` a member ``<ns>\\x1f<checkpoint id>``)::

    P:t:T:cp     hash  M -> checkpoint record (checkpoint, parent id)
    P:t:T:md     hash  M -> metadata record
    P:t:T:info   hash  M -> "<ts>\\x1f<parent>\\x1f<needs parent>\\x1f<run>"
    P:t:T:lt     hash  M -> what a timeline needs of it (see `light`)
    P:t:T:idx    zset  M, all scores 0, so ordered by id within a namespace
    P:t:T:w      hash  "M\\x1f<task id>\\x1f<idx>" -> write record
    P:t:T:ws     hash  the keys of P:t:T:w -> what a timeline needs of each
    P:t:T:wi     zset  the keys of P:t:T:w, ordered, to find one checkpoint's
    P:t:T:ns     set   the thread's namespaces
    P:t:T:meta   hash  the thread's place in the lists below and its agent
    P:t:T:lease  string  the process running the thread (expires on its own)

and global indexes, all ordered sets of members sharing score 0::

    P:threads    "<updated ts>\\x1f<T>" per thread with a root checkpoint
    P:agent:<A>  the same, for the threads of one agent
    P:all        "<T>" per thread with any checkpoint
    P:loc        "<id>\\x1f<T>\\x1f<ns>": which thread holds a checkpoint
    P:runs       "<run id>\\x1f<T>\\x1f<ns>\\x1f<id>"

The separator ``\\x1f`` may not occur in thread ids, namespaces or
checkpoint ids. With ``ttl_seconds`` every write sets that TTL on all of
the thread's keys and stretches the global indexes to at least as long; as
threads expire, each write also sweeps a few index entries of threads that
are gone. Use one TTL setting per prefix.

The scripts name keys they build themselves, so this runs on a single
Redis (with replicas), not on Redis Cluster.
"""

from __future__ import annotations

import builtins
import heapq
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

import ormsgpack
import redis

from agentmatic.checkpoint.base import (
    NO_CHECK,
    WRITES_IDX_MAP,
    BaseSaver,
    CheckpointTuple,
    PendingWrite,
    check_checkpoint_id,
    check_filter_keys,
    check_history_args,
    check_limit,
    check_namespace,
    check_state_args,
    check_thread_id,
    check_thread_page,
    checked_before,
    config_parts,
    metadata_matches,
    parent_id_of,
    thread_config,
    thread_info_from_tuple,
)
from agentmatic.checkpoint.chain import ChainKey
from agentmatic.checkpoint.light import (
    light_state,
    summarize_checkpoint,
    summarize_write,
)
from agentmatic.checkpoint.memory import _merge_metadata, config_parts_loose
from agentmatic.checkpoint.reading import (
    decode_cursor,
    encode_cursor,
    is_state_channel,
)
from agentmatic.errors import (
    CorruptCheckpoint,
    DisallowedType,
    SerializationError,
    ThreadConflict,
)
from agentmatic.state import State, ThreadInfo, ThreadPage

log = logging.getLogger(__name__)

SEP = "\x1f"
_PAGE = 128
_THREAD_KEYS = ("cp", "md", "info", "lt", "idx", "w", "ws", "wi", "ns", "meta")
_GLOBAL_KEYS = ("threads", "all", "loc", "runs", "sweep")

# Shared Lua helpers. Strings are compared only through sorted-set order
# (memcmp): Lua's own `<` on strings follows the server's locale.
_LUA_LIB = r"""
local SEP = "\31"
local function split(s)
  local out, start = {}, 1
  while true do
    local i = string.find(s, SEP, start, true)
    if not i then out[#out + 1] = string.sub(s, start); return out end
    out[#out + 1] = string.sub(s, start, i - 1)
    start = i + 1
  end
end
local function top(idx, ns)
  local r = redis.call("ZREVRANGEBYLEX", idx, "(" .. ns .. " ", "[" .. ns .. SEP,
    "LIMIT", 0, 1)
  if #r == 0 then return false end
  return string.sub(r[1], #ns + 2)
end
local function bottom(idx, ns)
  local r = redis.call("ZRANGEBYLEX", idx, "[" .. ns .. SEP, "(" .. ns .. " ",
    "LIMIT", 0, 1)
  if #r == 0 then return false end
  return string.sub(r[1], #ns + 2)
end
local function chunked(cmd, key, items)
  for i = 1, #items, 500 do
    redis.call(cmd, key, unpack(items, i, math.min(i + 499, #items)))
  end
end
local function zchunked(key, items)
  for i = 1, #items, 250 do
    local args = {}
    for j = i, math.min(i + 249, #items) do
      args[#args + 1] = 0; args[#args + 1] = items[j]
    end
    redis.call("ZADD", key, unpack(args))
  end
end
local function writes_of(wi, member)
  return redis.call("ZRANGEBYLEX", wi, "[" .. member .. SEP,
    "(" .. member .. " ")
end
local function hmget(key, fields)
  local out = {}
  for i = 1, #fields, 500 do
    local part = redis.call("HMGET", key,
      unpack(fields, i, math.min(i + 499, #fields)))
    for _, v in ipairs(part) do out[#out + 1] = v end
  end
  return out
end
-- The run id sits after the third separator of an info value.
local function run_of(info)
  if not info then return false end
  local p = split(info)
  if #p < 4 or string.sub(p[4], 1, 1) ~= "1" then return false end
  local rest = string.sub(info, #p[1] + #p[2] + #p[3] + 4)
  return string.sub(rest, 2)
end
-- Refresh the thread's place in P:threads (and its agent's list).
local function reposition(prefix, keys, thread)
  local meta, threads = keys.meta, keys.threads
  local old = redis.call("HGET", meta, "pos")
  local agent = redis.call("HGET", meta, "agent")
  local head = top(keys.idx, "")
  local pos = false
  if head then
    local info = redis.call("HGET", keys.info, SEP .. head) or ""
    pos = split(info)[1] .. SEP .. thread
  end
  if old and old ~= pos then
    redis.call("ZREM", threads, old)
    if agent then redis.call("ZREM", prefix .. ":agent:" .. agent, old) end
  end
  if pos then
    redis.call("ZADD", threads, 0, pos)
    if agent then redis.call("ZADD", prefix .. ":agent:" .. agent, 0, pos) end
    redis.call("HSET", meta, "pos", pos)
  else
    redis.call("HDEL", meta, "pos")
  end
  return pos
end
local function thread_keys(prefix, thread)
  local base = prefix .. ":t:" .. thread .. ":"
  return {cp = base .. "cp", md = base .. "md", info = base .. "info",
    lt = base .. "lt", ws = base .. "ws",
    idx = base .. "idx", w = base .. "w", wi = base .. "wi", ns = base .. "ns",
    meta = base .. "meta", lease = base .. "lease",
    threads = prefix .. ":threads", all = prefix .. ":all",
    loc = prefix .. ":loc", runs = prefix .. ":runs",
    sweep = prefix .. ":sweep"}
end
local THREAD_KEYS = {"cp", "md", "info", "lt", "idx", "w", "ws", "wi", "ns",
  "meta"}
local GLOBAL_KEYS = {"threads", "all", "loc", "runs", "sweep"}
local function expire(prefix, keys, ttl)
  if ttl <= 0 then return end
  for _, name in ipairs(THREAD_KEYS) do redis.call("PEXPIRE", keys[name], ttl) end
  local agent = redis.call("HGET", keys.meta, "agent")
  local globals = {}
  for _, name in ipairs(GLOBAL_KEYS) do globals[#globals + 1] = keys[name] end
  if agent then globals[#globals + 1] = prefix .. ":agent:" .. agent end
  -- A global index must outlive every thread it lists: only ever stretch it.
  for _, key in ipairs(globals) do
    if redis.call("PTTL", key) < ttl then redis.call("PEXPIRE", key, ttl) end
  end
end
-- Delete one checkpoint (member = ns SEP id) of a thread and its writes.
local function drop(prefix, keys, thread, member)
  local gone = redis.call("HDEL", keys.cp, member)
  redis.call("HDEL", keys.md, member)
  redis.call("HDEL", keys.lt, member)
  local run = run_of(redis.call("HGET", keys.info, member))
  redis.call("HDEL", keys.info, member)
  redis.call("ZREM", keys.idx, member)
  local fields = writes_of(keys.wi, member)
  if #fields > 0 then
    chunked("HDEL", keys.w, fields)
    chunked("HDEL", keys.ws, fields)
    chunked("ZREM", keys.wi, fields)
  end
  local p = split(member)
  local ns, cid = p[1], p[2]
  redis.call("ZREM", keys.loc, cid .. SEP .. thread .. SEP .. ns)
  if run then
    redis.call("ZREM", keys.runs, run .. SEP .. thread .. SEP .. ns .. SEP .. cid)
  end
  return gone
end
-- After deletions: forget empty namespaces, move or drop the thread's entries.
local function settle(prefix, keys, thread, namespaces)
  for _, ns in ipairs(namespaces) do
    if not top(keys.idx, ns) then redis.call("SREM", keys.ns, ns) end
  end
  reposition(prefix, keys, thread)
  if redis.call("SCARD", keys.ns) == 0 then
    redis.call("ZREM", keys.all, thread)
  end
end
"""

# KEYS: none. ARGV: prefix, thread, ns, id, checkpoint record, metadata
# record, info, check ("0" none, "1" expected id, "2" expected empty thread),
# expected id, run flag+id ("0" or "1<run>"), agent flag+name, ttl ms,
# root flag ("1" when ns is ""), timeline summary.
_PUT = (
    _LUA_LIB
    + r"""
local prefix, thread, ns, cid = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local keys = thread_keys(prefix, thread)
local head = top(keys.idx, ns)
if ARGV[8] == "1" and head ~= ARGV[9] then return {"conflict", head} end
if ARGV[8] == "2" and head then return {"conflict", head} end
local member = ns .. SEP .. cid
-- Stored checkpoints never change: the first write stays.
if redis.call("HEXISTS", keys.cp, member) == 1 then
  if ARGV[8] ~= "0" then return {"exists", head} end
  return {"ok", head}
end
redis.call("HSET", keys.cp, member, ARGV[5])
redis.call("HSET", keys.md, member, ARGV[6])
redis.call("HSET", keys.info, member, ARGV[7])
redis.call("HSET", keys.lt, member, ARGV[14])
redis.call("ZADD", keys.idx, 0, member)
redis.call("SADD", keys.ns, ns)
redis.call("ZADD", keys.all, 0, thread)
redis.call("ZADD", keys.loc, 0, cid .. SEP .. thread .. SEP .. ns)
if string.sub(ARGV[10], 1, 1) == "1" then
  local run = string.sub(ARGV[10], 2)
  redis.call("ZADD", keys.runs, 0, run .. SEP .. thread .. SEP .. ns .. SEP .. cid)
end
if string.sub(ARGV[11], 1, 1) == "1" then
  redis.call("HSETNX", keys.meta, "agent", string.sub(ARGV[11], 2))
end
redis.call("HSET", keys.meta, "thread", thread)
if ns == "" then reposition(prefix, keys, thread) end
local ttl = tonumber(ARGV[12])
expire(prefix, keys, ttl)
if ttl > 0 then
  -- Sweep a few entries of expired threads out of the global indexes.
  local function sweep(zkey, field, thread_of)
    local cursor = redis.call("HGET", keys.sweep, field)
    local lo = "-"
    if cursor then lo = "(" .. cursor end
    local items = redis.call("ZRANGEBYLEX", zkey, lo, "+", "LIMIT", 0, 8)
    if #items < 8 then
      redis.call("HDEL", keys.sweep, field)
    else
      redis.call("HSET", keys.sweep, field, items[#items])
    end
    for _, m in ipairs(items) do
      local t = thread_of(split(m))
      if redis.call("EXISTS", prefix .. ":t:" .. t .. ":meta") == 0 then
        redis.call("ZREM", zkey, m)
      end
    end
  end
  sweep(keys.loc, "loc", function(p) return p[2] end)
  sweep(keys.runs, "runs", function(p) return p[#p - 2] end)
  sweep(keys.threads, "threads", function(p) return p[2] end)
  sweep(keys.all, "all", function(p) return p[1] end)
  redis.call("PEXPIRE", keys.sweep, ttl)
end
return {"ok", head}
"""
)

# ARGV: prefix, thread, ttl ms, then (field, record, summary, replace flag).
_PUT_WRITES = (
    _LUA_LIB
    + r"""
local keys = thread_keys(ARGV[1], ARGV[2])
for i = 4, #ARGV, 4 do
  local field, value = ARGV[i], ARGV[i + 1]
  if ARGV[i + 3] == "1" or redis.call("HSETNX", keys.w, field, value) == 1 then
    redis.call("HSET", keys.w, field, value)
    redis.call("HSET", keys.ws, field, ARGV[i + 2])
    redis.call("ZADD", keys.wi, 0, field)
  end
end
expire(ARGV[1], keys, tonumber(ARGV[3]))
return 1
"""
)

# ARGV: prefix, thread, ns, then checkpoint ids ("" = the namespace's newest).
# Returns per found checkpoint: {id, cp record, md record, write fields, writes}.
_GET = (
    _LUA_LIB
    + r"""
local keys = thread_keys(ARGV[1], ARGV[2])
local ns = ARGV[3]
local out = {}
for i = 4, #ARGV do
  local cid = ARGV[i]
  if cid == "" then cid = top(keys.idx, ns) end
  if cid then
    local member = ns .. SEP .. cid
    local rec = redis.call("HGET", keys.cp, member)
    if rec then
      local fields = writes_of(keys.wi, member)
      local values = {}
      if #fields > 0 then values = hmget(keys.w, fields) end
      out[#out + 1] = {cid, rec, redis.call("HGET", keys.md, member) or "",
        fields, values}
    end
  end
end
return out
"""
)

# ARGV: prefix, thread, ns, before id ("" none), count, metadata-only flag.
_PAGE_SCRIPT = (
    _LUA_LIB
    + r"""
local keys = thread_keys(ARGV[1], ARGV[2])
local ns = ARGV[3]
local hi = "(" .. ns .. " "
if ARGV[4] ~= "" then hi = "(" .. ns .. SEP .. ARGV[4] end
local members = redis.call("ZREVRANGEBYLEX", keys.idx, hi, "[" .. ns .. SEP,
  "LIMIT", 0, tonumber(ARGV[5]))
local out = {}
for _, member in ipairs(members) do
  local cid = string.sub(member, #ns + 2)
  local md = redis.call("HGET", keys.md, member) or ""
  if ARGV[6] == "1" then
    out[#out + 1] = {cid, "", md, {}, {}}
  else
    local fields = writes_of(keys.wi, member)
    local values = {}
    if #fields > 0 then values = hmget(keys.w, fields) end
    out[#out + 1] = {cid, redis.call("HGET", keys.cp, member) or "", md, fields,
      values}
  end
end
return out
"""
)

# ARGV: prefix, thread, ns, before id ("" none), count, then checkpoint ids
# ("" = the newest); with ids, before and count are ignored. Returns per
# checkpoint: {id, metadata record, summary, info, write summaries}.
_LIGHT = (
    _LUA_LIB
    + r"""
local keys = thread_keys(ARGV[1], ARGV[2])
local ns = ARGV[3]
local members = {}
if #ARGV > 5 then
  for i = 6, #ARGV do
    local cid = ARGV[i]
    if cid == "" then cid = top(keys.idx, ns) end
    if cid then members[#members + 1] = ns .. SEP .. cid end
  end
else
  local hi = "(" .. ns .. " "
  if ARGV[4] ~= "" then hi = "(" .. ns .. SEP .. ARGV[4] end
  members = redis.call("ZREVRANGEBYLEX", keys.idx, hi, "[" .. ns .. SEP,
    "LIMIT", 0, tonumber(ARGV[5]))
end
local out = {}
for _, member in ipairs(members) do
  local lt = redis.call("HGET", keys.lt, member)
  if lt then
    local fields = writes_of(keys.wi, member)
    local summaries = {}
    if #fields > 0 then summaries = hmget(keys.ws, fields) end
    out[#out + 1] = {string.sub(member, #ns + 2),
      redis.call("HGET", keys.md, member) or "", lt,
      redis.call("HGET", keys.info, member) or "", summaries}
  end
end
return out
"""
)

# ARGV: prefix, thread, ns, then checkpoint ids. Returns how many went.
_DELETE = (
    _LUA_LIB
    + r"""
local prefix, thread, ns = ARGV[1], ARGV[2], ARGV[3]
local keys = thread_keys(prefix, thread)
local count = 0
for i = 4, #ARGV do
  count = count + drop(prefix, keys, thread, ns .. SEP .. ARGV[i])
end
settle(prefix, keys, thread, {ns})
return count
"""
)

# ARGV: prefix, thread, keep-latest flag. Deletes a thread, or all but each
# namespace's newest checkpoint.
_DELETE_THREAD = (
    _LUA_LIB
    + r"""
local prefix, thread = ARGV[1], ARGV[2]
local keys = thread_keys(prefix, thread)
local namespaces = redis.call("SMEMBERS", keys.ns)
if ARGV[3] == "1" then
  for _, ns in ipairs(namespaces) do
    local newest = top(keys.idx, ns)
    local members = redis.call("ZRANGEBYLEX", keys.idx, "[" .. ns .. SEP,
      "(" .. ns .. " ")
    for _, member in ipairs(members) do
      if member ~= ns .. SEP .. newest then drop(prefix, keys, thread, member) end
    end
  end
  settle(prefix, keys, thread, namespaces)
  return 1
end
local members = redis.call("ZRANGE", keys.idx, 0, -1)
for _, member in ipairs(members) do
  local p = split(member)
  redis.call("ZREM", keys.loc, p[2] .. SEP .. thread .. SEP .. p[1])
  local run = run_of(redis.call("HGET", keys.info, member))
  if run then
    redis.call("ZREM", keys.runs, run .. SEP .. thread .. SEP .. member)
  end
end
local pos = redis.call("HGET", keys.meta, "pos")
local agent = redis.call("HGET", keys.meta, "agent")
if pos then
  redis.call("ZREM", keys.threads, pos)
  if agent then redis.call("ZREM", prefix .. ":agent:" .. agent, pos) end
end
redis.call("ZREM", keys.all, thread)
for _, name in ipairs(THREAD_KEYS) do redis.call("DEL", keys[name]) end
redis.call("DEL", keys.lease)
return 1
"""
)

# ARGV: prefix, source thread, target thread, ttl ms.
_COPY = (
    _LUA_LIB
    + r"""
local prefix, src, dst = ARGV[1], ARGV[2], ARGV[3]
local s, d = thread_keys(prefix, src), thread_keys(prefix, dst)
local members = redis.call("ZRANGE", s.idx, 0, -1)
if #members == 0 then return 0 end
local zmembers = {}
for _, member in ipairs(members) do
  for _, name in ipairs({"cp", "md", "info", "lt"}) do
    local v = redis.call("HGET", s[name], member)
    if v then redis.call("HSET", d[name], member, v) end
  end
  zmembers[#zmembers + 1] = member
  local p = split(member)
  redis.call("ZADD", d.loc, 0, p[2] .. SEP .. dst .. SEP .. p[1])
  local run = run_of(redis.call("HGET", s.info, member))
  if run then redis.call("ZADD", d.runs, 0, run .. SEP .. dst .. SEP .. member) end
  local fields = writes_of(s.wi, member)
  if #fields > 0 then
    local old = writes_of(d.wi, member)
    if #old > 0 then
      chunked("HDEL", d.w, old); chunked("HDEL", d.ws, old)
      chunked("ZREM", d.wi, old)
    end
    local values, summaries = hmget(s.w, fields), hmget(s.ws, fields)
    for j, f in ipairs(fields) do
      redis.call("HSET", d.w, f, values[j])
      if summaries[j] then redis.call("HSET", d.ws, f, summaries[j]) end
    end
    zchunked(d.wi, fields)
  end
end
zchunked(d.idx, zmembers)
local namespaces = redis.call("SMEMBERS", s.ns)
chunked("SADD", d.ns, namespaces)
redis.call("ZADD", d.all, 0, dst)
redis.call("HSET", d.meta, "thread", dst)
local agent = redis.call("HGET", s.meta, "agent")
if agent then redis.call("HSETNX", d.meta, "agent", agent) end
reposition(prefix, d, dst)
expire(prefix, d, tonumber(ARGV[4]))
return #members
"""
)

_ACQUIRE = r"""
local holder = redis.call("GET", KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
return 1
"""

_RELEASE = r"""
if redis.call("GET", KEYS[1]) == ARGV[1] then redis.call("DEL", KEYS[1]) end
return 1
"""


class RedisSaver(BaseSaver):
    """A saver on plain Redis: fast, and fine with losing state on a crash.

    `url` is a redis-py URL (``redis://host:6379/0``); `client` may be given
    instead. `prefix` starts every key. With `ttl_seconds` a thread and all
    its keys expire that long after its last write. `allow` admits more
    types to be rebuilt from stored values; `chain_key` turns on the
    tamper-evident chain (see `agentmatic.checkpoint.chain`).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "agentmatic",
        ttl_seconds: float | None = None,
        allow: Iterable[Any] = (),
        chain_key: ChainKey | bool = None,
        client: redis.Redis | None = None,
    ) -> None:
        super().__init__(allow=allow, chain_key=chain_key)
        if SEP in prefix or not prefix:
            raise ValueError("prefix must be non-empty and free of \\x1f")
        if ttl_seconds is not None and ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive (or None for no TTL)")
        self.prefix = prefix
        self.ttl_ms = int(ttl_seconds * 1000) if ttl_seconds else 0
        self.client: redis.Redis = client or redis.Redis.from_url(url)
        self._put_script = self.client.register_script(_PUT)
        self._put_writes_script = self.client.register_script(_PUT_WRITES)
        self._get_script = self.client.register_script(_GET)
        self._page_script = self.client.register_script(_PAGE_SCRIPT)
        self._light_script = self.client.register_script(_LIGHT)
        self._delete_script = self.client.register_script(_DELETE)
        self._delete_thread_script = self.client.register_script(_DELETE_THREAD)
        self._copy_script = self.client.register_script(_COPY)
        self._acquire_script = self.client.register_script(_ACQUIRE)
        self._release_script = self.client.register_script(_RELEASE)

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()

    def thread_keys(self, thread_id: str) -> builtins.list[str]:
        """Return every key a thread may own (not the global indexes)."""
        base = f"{self.prefix}:t:{_check(thread_id, 'thread id')}:"
        return [base + name for name in (*_THREAD_KEYS, "lease")]

    def global_keys(self) -> builtins.list[str]:
        """Return the keys of the global indexes (not the per-agent lists)."""
        return [f"{self.prefix}:{name}" for name in _GLOBAL_KEYS]

    # -- reads ---------------------------------------------------------------

    def get_tuple(self, config: dict[str, Any]) -> CheckpointTuple | None:
        """Return the named checkpoint, or the thread's newest when none is named."""
        thread_id, ns, checkpoint_id = config_parts(config)
        rows = self._get(thread_id, ns, [checkpoint_id or ""])
        return self._tuple(thread_id, ns, rows[0]) if rows else None

    def _get(self, thread_id: str, ns: str, ids: Sequence[str]) -> builtins.list[Any]:
        _check(thread_id, "thread id")
        _check(ns, "checkpoint_ns")
        for cid in ids:
            _check(cid, "checkpoint id")
        return list(self._get_script(args=[self.prefix, thread_id, ns, *ids]) or [])

    def _tuple(self, thread_id: str, ns: str, row: Sequence[Any]) -> CheckpointTuple:
        cid = _text(row[0])
        try:
            c_tag, c_blob, parent = _unpack(row[1], 3)
            m_tag, m_blob = _unpack(row[2], 2)
            writes = []
            for field, value in zip(row[3], row[4], strict=True):
                if value is None:
                    continue
                task_id, idx = _write_field_parts(_text(field))
                channel, tag, blob, path = _unpack(value, 4)
                writes.append((str(path), task_id, idx, str(channel), (tag, blob)))
            writes.sort(key=lambda w: (w[0], w[1], w[2]))
            pending: builtins.list[PendingWrite] = [
                (task_id, channel, self.serde.loads_typed(blob, thread_id=thread_id))
                for _path, task_id, _idx, channel, blob in writes
            ]
            checkpoint = self.serde.loads_typed((c_tag, c_blob), thread_id=thread_id)
            metadata = self.serde.loads_typed((m_tag, m_blob), thread_id=thread_id)
            _check_shape(checkpoint, metadata, cid)
        except DisallowedType:
            raise
        except (SerializationError, ValueError, TypeError) as exc:
            raise CorruptCheckpoint(thread_id, cid, str(exc)) from exc
        return CheckpointTuple(
            config=thread_config(thread_id, cid, ns),
            checkpoint=checkpoint,
            metadata=metadata,
            parent_config=thread_config(thread_id, parent, ns) if parent else None,
            pending_writes=pending,
        )

    def list(
        self,
        config: dict[str, Any] | None,
        *,
        filter: dict[str, Any] | None = None,
        before: dict[str, Any] | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """Yield checkpoints newest first."""
        filter = check_filter_keys(filter)
        thread_id, ns, checkpoint_id = (
            config_parts_loose(config) if config is not None else (None, None, None)
        )
        check_limit(limit)
        before_id = checked_before(before)
        if limit is not None and limit <= 0:
            return
        if thread_id is None:
            source = self._list_everywhere(ns, before_id, filter, limit)
        elif ns is None:
            namespaces = sorted(
                _text(n) for n in self.client.smembers(self._key(thread_id, "ns"))
            )
            source = heapq.merge(
                *(
                    self._list_namespace(thread_id, n, before_id, filter, limit)
                    for n in namespaces
                ),
                key=lambda t: t.checkpoint["id"],
                reverse=True,
            )
        else:
            source = self._list_namespace(thread_id, ns, before_id, filter, limit)
        count = 0
        for tup in source:
            if checkpoint_id is not None and tup.checkpoint["id"] != checkpoint_id:
                continue
            yield tup
            count += 1
            if limit is not None and count >= limit:
                return

    def _list_namespace(
        self,
        thread_id: str,
        ns: str,
        before_id: str | None,
        filter: dict[str, Any],
        limit: int | None,
    ) -> Iterator[CheckpointTuple]:
        """Yield one namespace's checkpoints newest first, a page at a time."""
        _check(thread_id, "thread id")
        _check(ns, "checkpoint_ns")
        cursor = _check(before_id, "checkpoint id") if before_id else ""
        size = min(limit, _PAGE) if limit and not filter else _PAGE
        while True:
            rows = self._page_script(
                args=[self.prefix, thread_id, ns, cursor, size, "0"]
            )
            for row in rows:
                if filter:
                    meta = self._metadata(thread_id, _text(row[0]), row[2])
                    if not metadata_matches(meta, filter):
                        continue
                yield self._tuple(thread_id, ns, row)
            if len(rows) < size:
                return
            cursor = _text(rows[-1][0])

    def _list_everywhere(
        self,
        ns: str | None,
        before_id: str | None,
        filter: dict[str, Any],
        limit: int | None,
    ) -> Iterator[CheckpointTuple]:
        """Yield checkpoints of every thread newest first, through P:loc."""
        key = f"{self.prefix}:loc"
        high = f"({_check(before_id, 'checkpoint id')}" if before_id else "+"
        while True:
            members = [
                _text(m)
                for m in self.client.zrevrangebylex(key, high, "-", start=0, num=_PAGE)
            ]
            for member in members:
                cid, thread_id, member_ns = member.split(SEP)
                if ns is not None and member_ns != ns:
                    continue
                rows = self._get(thread_id, member_ns, [cid])
                if not rows:
                    continue
                if filter:
                    meta = self._metadata(thread_id, cid, rows[0][2])
                    if not metadata_matches(meta, filter):
                        continue
                yield self._tuple(thread_id, member_ns, rows[0])
            if len(members) < _PAGE:
                return
            high = "(" + members[-1]

    def _metadata(self, thread_id: str, checkpoint_id: str, raw: Any) -> Any:
        try:
            tag, blob = _unpack(raw, 2)
            return self.serde.loads_typed((tag, blob), thread_id=thread_id)
        except DisallowedType:
            raise
        except (SerializationError, ValueError, TypeError) as exc:
            raise CorruptCheckpoint(thread_id, checkpoint_id, str(exc)) from exc

    def head_id(self, thread_id: str, checkpoint_ns: str = "") -> str | None:
        """Return the id of the namespace's newest checkpoint, or None."""
        thread_id = check_thread_id(thread_id)
        checkpoint_ns = check_namespace(checkpoint_ns)
        _check(checkpoint_ns, "checkpoint_ns")
        found = self.client.zrevrangebylex(
            self._key(thread_id, "idx"),
            f"({checkpoint_ns} ",
            f"[{checkpoint_ns}{SEP}",
            start=0,
            num=1,
        )
        return _text(found[0])[len(checkpoint_ns) + 1 :] if found else None

    def find_checkpoint(self, checkpoint_id: str) -> CheckpointTuple | None:
        """Return the checkpoint with this id in any thread, or None."""
        check_checkpoint_id(checkpoint_id)
        _check(checkpoint_id, "checkpoint id")
        members = self.client.zrangebylex(
            f"{self.prefix}:loc",
            f"[{checkpoint_id}{SEP}",
            f"({checkpoint_id} ",
            start=0,
            num=16,
        )
        for member in members:
            _cid, thread_id, ns = _text(member).split(SEP)
            rows = self._get(thread_id, ns, [checkpoint_id])
            if rows:
                return self._tuple(thread_id, ns, rows[0])
        return None

    def thread_ids(self) -> Iterator[str]:
        """Yield every thread id once, from the index of threads."""
        key = f"{self.prefix}:all"
        low = "-"
        while True:
            batch = [
                _text(m)
                for m in self.client.zrangebylex(key, low, "+", start=0, num=_PAGE)
            ]
            for thread_id in batch:
                if self.client.exists(self._key(thread_id, "meta")):
                    yield thread_id
            if len(batch) < _PAGE:
                return
            low = "(" + batch[-1]

    # -- writes --------------------------------------------------------------

    def put(
        self,
        config: dict[str, Any],
        checkpoint: dict[str, Any],
        metadata: dict[str, Any],
        new_versions: dict[str, Any],
        *,
        expected_head: Any = NO_CHECK,
    ) -> dict[str, Any]:
        """Store a checkpoint in one script, checking `expected_head` first."""
        thread_id, ns, parent_id = config_parts(config)
        cid = _check(str(checkpoint["id"]), "checkpoint id")
        _check(thread_id, "thread id")
        _check(ns, "checkpoint_ns")
        merged = self.sealed_metadata(
            thread_id, ns, parent_id, checkpoint, _merge_metadata(config, metadata)
        )
        c_tag, c_blob = self.serde.dumps_typed(checkpoint)
        m_tag, m_blob = self.serde.dumps_typed(merged)
        run = merged.get("run_id")
        agent = merged.get("agent")
        needs_parent = parent_id is not None and _needs_parent(checkpoint)
        info = SEP.join(
            [
                str(checkpoint.get("ts") or "").replace(SEP, ""),
                _check(parent_id or "", "parent checkpoint id"),
                "1" if needs_parent else "0",
                "0" if run is None else "1" + str(run),
            ]
        )
        if expected_head is NO_CHECK:
            check, expected = "0", ""
        elif expected_head is None:
            check, expected = "2", ""
        else:
            check, expected = "1", str(expected_head)
        result = self._put_script(
            args=[
                self.prefix,
                thread_id,
                ns,
                cid,
                ormsgpack.packb([c_tag, c_blob, parent_id]),
                ormsgpack.packb([m_tag, m_blob]),
                info,
                check,
                expected,
                "0" if run is None else "1" + str(run),
                "0" if agent is None else "1" + str(agent),
                self.ttl_ms,
                "1" if ns == "" else "0",
                ormsgpack.packb(summarize_checkpoint(self.serde, checkpoint)),
            ]
        )
        if _text(result[0]) == "exists":
            raise ThreadConflict(thread_id, f"checkpoint {cid!r} is already stored")
        if _text(result[0]) == "conflict":
            head = _text(result[1]) if result[1] is not None else None
            raise ThreadConflict(
                thread_id,
                f"expected newest checkpoint {expected_head!r} but it is "
                f"{head!r}; another writer advanced the thread",
            )
        return thread_config(thread_id, cid, ns)

    def put_writes(
        self,
        config: dict[str, Any],
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store a task's writes; a plain write keeps the first value stored."""
        thread_id, ns, checkpoint_id = config_parts(config)
        if checkpoint_id is None:
            raise ValueError("put_writes needs configurable.checkpoint_id")
        _check(thread_id, "thread id")
        member = f"{_check(ns, 'checkpoint_ns')}{SEP}"
        member += _check(checkpoint_id, "checkpoint id")
        args: builtins.list[Any] = [self.prefix, thread_id, self.ttl_ms]
        for i, (channel, value) in enumerate(writes):
            idx = WRITES_IDX_MAP.get(channel, i)
            tag, blob = self.serde.dumps_typed(value)
            summary = summarize_write(
                task_id, idx, channel, task_path, (tag, blob), value
            )
            args += [
                f"{member}{SEP}{task_id}{SEP}{idx}",
                ormsgpack.packb([channel, tag, blob, task_path]),
                ormsgpack.packb(summary),
                "1" if idx < 0 else "0",
            ]
        self._put_writes_script(args=args)

    # -- deletes and copies --------------------------------------------------

    def delete_thread(self, thread_id: str) -> None:
        """Delete every checkpoint, write, index entry and the lease of a thread."""
        self._delete_thread_script(
            args=[self.prefix, _check(thread_id, "thread id"), "0"]
        )

    def delete_checkpoints(
        self, thread_id: str, checkpoint_ns: str, checkpoint_ids: Sequence[str]
    ) -> int:
        """Delete these checkpoints and their writes; return how many went."""
        ids = [_check(str(c), "checkpoint id") for c in checkpoint_ids]
        if not ids:
            return 0
        self.keep_children_whole(thread_id, checkpoint_ns, ids)
        self.anchor_deletions(thread_id, checkpoint_ns, ids)
        count = 0
        for start in range(0, len(ids), 500):
            count += int(
                self._delete_script(
                    args=[
                        self.prefix,
                        _check(thread_id, "thread id"),
                        _check(checkpoint_ns, "checkpoint_ns"),
                        *ids[start : start + 500],
                    ]
                )
            )
        self.anchor_orphans(thread_id, checkpoint_ns, ids)
        return count

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints (and their writes) whose metadata run_id is listed."""
        doomed: dict[tuple[str, str], builtins.list[str]] = {}
        for run in {str(r) for r in run_ids}:
            members = self.client.zrangebylex(
                f"{self.prefix}:runs", f"[{run}{SEP}", f"({run} "
            )
            for raw in members:
                text = _text(raw)
                head, thread_id, ns, cid = text.rsplit(SEP, 3)
                if head == run:
                    doomed.setdefault((thread_id, ns), []).append(cid)
        for (thread_id, ns), ids in doomed.items():
            self.delete_checkpoints(thread_id, ns, ids)

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint and write of one thread into another."""
        self._copy_script(
            args=[
                self.prefix,
                _check(source_thread_id, "thread id"),
                _check(target_thread_id, "thread id"),
                self.ttl_ms,
            ]
        )

    def prune(
        self,
        thread_ids: Sequence[str],
        *,
        strategy: Literal["keep_latest", "delete"] = "keep_latest",
    ) -> None:
        """Keep only each namespace's newest checkpoint, or delete the threads."""
        for thread_id in thread_ids:
            if strategy == "delete":
                self.delete_thread(thread_id)
                continue
            for raw_ns in self.client.smembers(self._key(thread_id, "ns")):
                ns = _text(raw_ns)
                newest = self.get_tuple(thread_config(thread_id, None, ns))
                if newest is None:
                    continue
                self._store_whole(newest)
                # Only what is older than the head just made whole: a checkpoint
                # a runner appended since may still rebuild from that head.
                head = str(newest.checkpoint["id"])
                older = [c for c in self._ids(thread_id, ns) if c < head]
                self.delete_checkpoints(thread_id, ns, older)

    def _rewrite(
        self,
        tup: CheckpointTuple,
        checkpoint: dict[str, Any],
        metadata: dict[str, Any],
    ) -> None:
        conf = tup.config["configurable"]
        thread_id, ns = conf["thread_id"], conf["checkpoint_ns"]
        member = f"{ns}{SEP}{conf['checkpoint_id']}"
        parent = parent_id_of(tup)
        c_tag, c_blob = self.serde.dumps_typed(checkpoint)
        m_tag, m_blob = self.serde.dumps_typed(metadata)
        info = _text(self.client.hget(self._key(thread_id, "info"), member) or b"")
        parts = info.split(SEP, 3) if info.count(SEP) >= 3 else ["", "", "", "0"]
        parts[2] = "0"
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(
            self._key(thread_id, "cp"), member, ormsgpack.packb([c_tag, c_blob, parent])
        )
        pipe.hset(self._key(thread_id, "md"), member, ormsgpack.packb([m_tag, m_blob]))
        pipe.hset(self._key(thread_id, "info"), member, SEP.join(parts))
        pipe.hset(
            self._key(thread_id, "lt"),
            member,
            ormsgpack.packb(summarize_checkpoint(self.serde, checkpoint)),
        )
        pipe.execute()

    def _ids(self, thread_id: str, ns: str) -> builtins.list[str]:
        """Return one namespace's checkpoint ids, oldest first."""
        members = self.client.zrangebylex(
            self._key(thread_id, "idx"), f"[{ns}{SEP}", f"({ns} "
        )
        return [_text(m)[len(ns) + 1 :] for m in members]

    # -- leases --------------------------------------------------------------

    def acquire_lease(self, thread_id: str, owner: str, ttl_seconds: float) -> bool:
        """Take or renew the thread's run lease; False while another owner holds it."""
        ms = max(1, int(ttl_seconds * 1000))
        key = self._key(thread_id, "lease")
        return bool(self._acquire_script(keys=[key], args=[owner, ms]))

    def release_lease(self, thread_id: str, owner: str) -> None:
        """Give the lease back if `owner` still holds it."""
        self._release_script(keys=[self._key(thread_id, "lease")], args=[owner])

    # -- readers -------------------------------------------------------------

    def get_state_history(
        self,
        thread_id: str,
        *,
        limit: int | None = None,
        before: str | None = None,
        values: bool = True,
        checkpoint_ns: str = "",
    ) -> builtins.list[State]:
        """Return the thread's states newest first, read without its agent.

        With ``values=False`` only the summaries kept beside each checkpoint
        are read, a page of 128 per command: no checkpoint, no message.
        """
        thread_id, before, checkpoint_ns = check_history_args(
            thread_id, limit, before, checkpoint_ns
        )
        if values:
            return super().get_state_history(
                thread_id,
                limit=limit,
                before=before,
                values=True,
                checkpoint_ns=checkpoint_ns,
            )
        _check(thread_id, "thread id")
        _check(checkpoint_ns, "checkpoint_ns")
        rows: builtins.list[Any] = []
        cursor = _check(before, "checkpoint id") if before else ""
        while limit is None or len(rows) < limit:
            size = _PAGE if limit is None else min(_PAGE, limit - len(rows))
            page = self._light_script(
                args=[self.prefix, thread_id, checkpoint_ns, cursor, size]
            )
            rows.extend(page)
            if len(page) < size:
                break
            cursor = _text(page[-1][0])
        return self._light_states(thread_id, checkpoint_ns, rows)

    def get_state(
        self, thread_id: str, checkpoint_id: str | None = None, *, values: bool = True
    ) -> State | None:
        """Return the newest (or the named) state of a thread, or None."""
        thread_id, checkpoint_id = check_state_args(thread_id, checkpoint_id)
        if values:
            return super().get_state(thread_id, checkpoint_id, values=True)
        rows = self._light_script(
            args=[self.prefix, thread_id, "", "", 0, checkpoint_id or ""]
        )
        states = self._light_states(thread_id, "", rows)
        return states[0] if states else None

    def _light_states(
        self, thread_id: str, ns: str, rows: Sequence[Any]
    ) -> builtins.list[State]:
        """Build states from summary rows, reading parents the rows lack."""
        entries = [self._light_entry(thread_id, row) for row in rows]
        by_id = {e["id"]: e for e in entries}
        missing = sorted(
            {e["parent"] for e in entries if e["parent"] and e["parent"] not in by_id}
        )
        if missing:
            extra = self._light_script(
                args=[self.prefix, thread_id, ns, "", 0, *missing]
            )
            for row in extra:
                entry = self._light_entry(thread_id, row)
                by_id[entry["id"]] = entry
        states = []
        for entry in entries:
            parent = by_id.get(entry["parent"]) if entry["parent"] else None
            states.append(
                light_state(
                    self.display_serde,
                    thread_id,
                    ns,
                    entry,
                    self._metadata(thread_id, entry["id"], entry["meta"]),
                    parent["writes"] if parent else None,
                )
            )
        return states

    def _light_entry(self, thread_id: str, row: Sequence[Any]) -> dict[str, Any]:
        cid = _text(row[0])
        try:
            light = ormsgpack.unpackb(row[2])
            ts, parent, _needs, _run = _text(row[3]).split(SEP, 3)
            writes = [ormsgpack.unpackb(w) for w in row[4] if w is not None]
        except (ormsgpack.MsgpackDecodeError, ValueError, TypeError) as exc:
            raise CorruptCheckpoint(thread_id, cid, f"its summary: {exc}") from exc
        return {
            "id": cid,
            "parent": parent or None,
            "ts": ts or None,
            "meta": row[1],
            "light": light,
            "writes": writes,
        }

    def list_threads(
        self, *, agent: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> ThreadPage:
        """Return threads by newest activity from the index, `limit` at a time."""
        check_thread_page(agent, limit, cursor)
        key = f"{self.prefix}:threads" if agent is None else f"{self.prefix}:agent:"
        if agent is not None:
            key += agent
        high = "+"
        if cursor:
            updated_at, after_id = decode_cursor(cursor)
            high = f"({updated_at}{SEP}{after_id}"
        infos: builtins.list[ThreadInfo] = []
        more = False
        while len(infos) <= limit:
            want = limit + 1 - len(infos)
            members = [
                _text(m)
                for m in self.client.zrevrangebylex(key, high, "-", start=0, num=want)
            ]
            for member in members:
                if len(infos) == limit:
                    more = True
                    break
                info = self._thread_info(member.split(SEP, 1)[1])
                if info is None:
                    # The thread expired or was emptied: drop its stale entry.
                    self.client.zrem(key, member)
                    continue
                if agent is not None and info.agent != agent:
                    continue
                infos.append(info)
            if more or len(members) < want:
                break
            high = "(" + members[-1]
        next_cursor = None
        if more and infos:
            last = infos[-1]
            next_cursor = encode_cursor(last.updated_at or "", last.thread_id)
        return ThreadPage(threads=infos, next_cursor=next_cursor)

    def _thread_info(self, thread_id: str) -> ThreadInfo | None:
        idx = self._key(thread_id, "idx")
        pipe = self.client.pipeline(transaction=False)
        pipe.zrangebylex(idx, f"[{SEP}", "( ", start=0, num=1)
        pipe.zlexcount(idx, f"[{SEP}", "( ")
        oldest_raw, count = pipe.execute()
        if not oldest_raw:
            return None
        heads = self.get_state_history(thread_id, limit=1, values=False)
        if not heads:
            return None
        head = heads[0]
        oldest_member = _text(oldest_raw[0])
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(self._key(thread_id, "md"), oldest_member)
        pipe.hget(self._key(thread_id, "info"), oldest_member)
        raw_meta, raw_info = pipe.execute()
        first_meta = dict(self._metadata(thread_id, oldest_member[1:], raw_meta or b""))
        first_meta["created_at"] = _text(raw_info or b"").split(SEP)[0] or None
        head_tuple = CheckpointTuple(
            config=head.config,
            checkpoint={"id": head.checkpoint_id, "ts": head.created_at},
            metadata=head.metadata,
            parent_config=head.parent_config,
        )
        return thread_info_from_tuple(head_tuple, first_meta, head.next, int(count))

    def retention_rows(self, thread_id: str | None = None) -> Iterator[tuple[Any, ...]]:
        """Yield ``(thread_id, ns, checkpoint_id, parent_id, ts, needs_parent,
        metadata)`` per checkpoint (of one thread, if given), decoding none."""
        threads = list(self.thread_ids()) if thread_id is None else [thread_id]
        for thread_id in threads:
            pipe = self.client.pipeline(transaction=False)
            pipe.hgetall(self._key(thread_id, "info"))
            pipe.hgetall(self._key(thread_id, "md"))
            infos, metas = pipe.execute()
            for raw_member, raw_info in infos.items():
                member = _text(raw_member)
                ns, cid = member.rsplit(SEP, 1)
                ts, parent, needs, _run = _text(raw_info).split(SEP, 3)
                meta = self._metadata(thread_id, cid, metas.get(raw_member, b""))
                yield (
                    thread_id,
                    ns,
                    cid,
                    parent or None,
                    ts or None,
                    needs == "1",
                    dict(meta),
                )

    def _key(self, thread_id: str, name: str) -> str:
        return f"{self.prefix}:t:{_check(thread_id, 'thread id')}:{name}"


def _check(value: str, what: str) -> str:
    if SEP in value:
        raise ValueError(f"a {what} may not contain the character \\x1f: {value!r}")
    return value


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _unpack(raw: Any, size: int) -> list[Any]:
    """Return a stored record's fields, refusing anything of another shape."""
    if not isinstance(raw, bytes) or not raw:
        raise ValueError("the stored record is missing")
    try:
        fields = ormsgpack.unpackb(raw)
    except ormsgpack.MsgpackDecodeError as exc:
        raise ValueError(f"the stored record is not msgpack ({exc})") from None
    if not isinstance(fields, list) or len(fields) != size:
        raise ValueError(f"the stored record does not hold {size} fields")
    return fields


def _check_shape(checkpoint: Any, metadata: Any, checkpoint_id: str) -> None:
    if not isinstance(checkpoint, dict) or checkpoint.get("id") != checkpoint_id:
        raise ValueError("the stored checkpoint is not this checkpoint's mapping")
    if not isinstance(metadata, dict):
        raise ValueError("the stored metadata is not a mapping")


def _write_field_parts(field: str) -> tuple[str, int]:
    """Return ``(task_id, idx)`` of a write field ``ns SEP id SEP task SEP idx``."""
    _ns, _cid, rest = field.split(SEP, 2)
    task_id, _, idx = rest.rpartition(SEP)
    return task_id, int(idx)


def _needs_parent(checkpoint: dict[str, Any]) -> bool:
    stored = checkpoint.get("channel_values") or {}
    return any(
        is_state_channel(ch) and ch not in stored
        for ch in checkpoint.get("channel_versions") or {}
    )


__all__ = ["RedisSaver"]
