"""Redis feature store, for several gateways sharing one store.

Layout (every key starts with ``key_prefix``, default ``"rerankd:"``, so deployments can
share a server; a hash-tagged prefix such as ``"{rerankd}:"`` puts all keys in one slot,
which makes the multi-key commands below valid on Redis Cluster too):

* ``<p>item:<item_id>``  string, JSON ``{"title", "text", "attributes"}``; ``get_items`` is
  one ``MGET`` whatever the number of ids.
* ``<p>ev:<user_id>``    sorted set of the user's newest ``history_len`` events. Score: the
  event timestamp; member: 16 hex digits of a global sequence number, then the JSON
  payload. Redis orders equal scores by member bytes, so ``ZREVRANGE`` yields
  ``ts DESC, seq DESC``, the same order as SQLite.
* ``<p>seq``             the global sequence counter (``INCRBY``).
* ``<p>idem:<key>``      an applied idempotency key, expiring after ``idempotency_ttl_s``
  (default 7 days): a key repeated within that window is not applied twice; after it,
  it would be (SQLite remembers keys forever).
* ``<p>uidem:<user_id>`` sorted set of the idempotency keys (full key names) of the user's
  applied events, scored by their expiry time, pruned and expiring with them: what
  ``forget_user`` deletes besides the history (an idempotency key may name the user).

``record_events`` runs one Lua script, which Redis executes atomically: it checks every
idempotency key, then appends and trims, so a batch is applied all or none and
concurrent writers from any number of gateways lose nothing.

``forget_user`` runs one script too: it deletes the user's history, that index and every
idempotency key the two name, atomically. Redis keeps what was deleted in the append-only
file until its next rewrite (``BGREWRITEAOF``, or automatic by size); a deployment that must
erase from disk promptly rewrites it after erasures. The script deletes keys it finds
(not declared in ``KEYS``): on Redis Cluster use a hash-tagged ``key_prefix``.

Durability is the server's: rerankd requires ``appendonly yes`` and ``appendfsync always``
(Redis fsyncs the AOF before it replies, so an acknowledged write survives a killed
``redis-server``); the default ``everysec`` may lose about the last second, and the first
write logs a warning when the server is not configured so (``CONFIG GET``; skipped where
``CONFIG`` is disabled).

Redis down (connection refused or lost, still loading its AOF after a restart, a read-only
replica, a failed AOF write): every method raises ``server.errors.Unavailable``, which the
gateway answers ``UNAVAILABLE``; nothing was acknowledged, so a client may retry (with
idempotency keys, a retried batch is applied once). The connection pool reconnects by itself
once the server is back.

Differences from ``SqliteStore``: only the newest ``history_len`` events per user are
kept, so ``recent_events(limit > history_len)`` returns at most ``history_len``; and a
batch holding a non-finite timestamp is rejected with ``ValueError`` (SQLite silently
drops a NaN-timestamp event and counts it as a duplicate).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    ClusterDownError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from server.errors import Unavailable
from server.types import Event, Item, RecordResult

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "rerankd:"
IDEMPOTENCY_TTL_S = 7 * 24 * 3600

# KEYS[1]            sequence counter
# KEYS[3i-1], [3i], [3i+1]  history key, idempotency key, user's idempotency index of event i
# ARGV[1], ARGV[2]   history_len, idempotency TTL in seconds
# ARGV[3n+3]         now (Unix seconds, the client's clock): the index's expiry scores
# ARGV[3i]           "1" when event i carries an idempotency key
# ARGV[3i+1]         score: the timestamp exactly as Python's repr wrote it. It goes to
#                    ZADD untouched: a Lua number would print with 14 digits only.
# ARGV[3i+2]         payload
# Returns the number of events applied. All checks run before the first write, because a
# script that fails halfway keeps its earlier writes.
_RECORD_LUA = """
local n = (#KEYS - 1) / 3
local hist = tonumber(ARGV[1])
local now = tonumber(ARGV[3 * n + 3])
local expiry = now + tonumber(ARGV[2])
local seen, keep, accepted = {}, {}, 0
for i = 1, n do
  local score = tonumber(ARGV[3 * i + 1])
  if score == nil or score ~= score then
    return redis.error_reply('ERR invalid timestamp ' .. ARGV[3 * i + 1])
  end
  local dup = false
  if ARGV[3 * i] == '1' then
    local idem = KEYS[3 * i]
    if seen[idem] or redis.call('EXISTS', idem) == 1 then
      dup = true
    else
      seen[idem] = true
    end
  end
  if not dup then
    accepted = accepted + 1
    keep[accepted] = i
  end
end
if accepted == 0 then
  return 0
end
local seq = redis.call('INCRBY', KEYS[1], accepted) - accepted
local touched, indexed = {}, {}
for j = 1, accepted do
  local i = keep[j]
  seq = seq + 1
  if ARGV[3 * i] == '1' then
    redis.call('SET', KEYS[3 * i], seq, 'EX', ARGV[2])
    redis.call('ZADD', KEYS[3 * i + 1], expiry, KEYS[3 * i])
    indexed[KEYS[3 * i + 1]] = true
  end
  redis.call('ZADD', KEYS[3 * i - 1], ARGV[3 * i + 1], string.format('%016x', seq) .. ARGV[3 * i + 2])
  touched[KEYS[3 * i - 1]] = true
end
for key in pairs(touched) do
  redis.call('ZREMRANGEBYRANK', key, 0, -hist - 1)
end
for key in pairs(indexed) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. now)
  redis.call('EXPIRE', key, ARGV[2])
end
return accepted
"""

# KEYS[1], KEYS[2]   the user's history and idempotency index
# ARGV[1]            the idempotency key prefix
# Deletes the history, the index and the idempotency keys named by either (the history's
# payloads also name keys recorded before the index existed); returns the events removed.
_FORGET_LUA = """
local removed = redis.call('ZCARD', KEYS[1])
local doomed = {}
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local ok, payload = pcall(cjson.decode, string.sub(member, 17))
  if ok and type(payload) == 'table' and type(payload[5]) == 'string' and payload[5] ~= '' then
    doomed[#doomed + 1] = ARGV[1] .. payload[5]
  end
end
for _, key in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  doomed[#doomed + 1] = key
end
for i = 1, #doomed, 500 do
  redis.call('DEL', unpack(doomed, i, math.min(i + 499, #doomed)))
end
redis.call('DEL', KEYS[1], KEYS[2])
return removed
"""

_SEQ_HEX = 16  # width of the sequence prefix of a history member

# Errors that mean "Redis cannot serve now", not "this request is wrong". BusyLoadingError
# (restarted, still reading its AOF) is a ConnectionError.
_DOWN = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, TryAgainError, ClusterDownError)


def _is_down(exc: Exception) -> bool:
    # MISCONF: Redis refuses writes because it cannot persist them (AOF write failed).
    return isinstance(exc, _DOWN) or (isinstance(exc, ResponseError) and str(exc).startswith("MISCONF"))


def store_errors(method):
    """Raise ``Unavailable`` (UNAVAILABLE, with the cause) when Redis is down, instead of
    letting a redis-py exception become INTERNAL. Decorates every ``RedisStore`` method that
    talks to the server."""

    @functools.wraps(method)
    async def wrapper(self, *args, **kwargs):
        try:
            return await method(self, *args, **kwargs)
        except RedisError as exc:
            if not _is_down(exc):
                raise
            raise Unavailable(f"feature store (redis) unavailable: {type(exc).__name__}: {exc}") from exc

    return wrapper


def _split_prefix(url: str) -> tuple[str, str | None]:
    """Remove ``key_prefix=`` from the URL's query (redis-py rejects unknown arguments)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = None
    rest = []
    for name, value in query:
        if name == "key_prefix":
            prefix = value
        else:
            rest.append((name, value))
    return urlunsplit(parts._replace(query=urlencode(rest))), prefix


class RedisStore:
    """``FeatureStore`` over Redis (``redis.asyncio``; one connection pool per store).

    ``url`` is any redis-py URL (``redis://host:port/db``, ``rediss://``, ``unix://``);
    it may carry ``?key_prefix=...``, which ``key_prefix`` overrides.
    """

    def __init__(
        self,
        url: str,
        *,
        history_len: int = 20,
        key_prefix: str | None = None,
        idempotency_ttl_s: int = IDEMPOTENCY_TTL_S,
    ):
        if history_len < 1:
            raise ValueError("history_len must be at least 1")
        url, url_prefix = _split_prefix(url)
        self.prefix = key_prefix if key_prefix is not None else (url_prefix or DEFAULT_PREFIX)
        self.history_len = history_len
        self.idempotency_ttl_s = int(idempotency_ttl_s)
        # redis-py's default retries timeouts 10 times with backoff up to 10 s: too long for
        # a request path, and a retried timed-out write may apply twice. Retry briefly, and
        # only on connection errors (e.g. pooled connections dead after a Redis restart).
        self._r = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            retry=Retry(ExponentialBackoff(cap=0.25, base=0.02), 3, (RedisConnectionError,)),
        )
        self._record = self._r.register_script(_RECORD_LUA)
        self._forget = self._r.register_script(_FORGET_LUA)
        self._item = f"{self.prefix}item:"
        self._ev = f"{self.prefix}ev:"
        self._idem = f"{self.prefix}idem:"
        self._user_idem = f"{self.prefix}uidem:"
        self._seq = f"{self.prefix}seq"
        self._durability_checked = False

    async def durability_problem(self) -> str | None:
        """Why acknowledged writes might not survive a killed ``redis-server`` (None: they
        will, or the server does not let us read its configuration)."""
        try:
            conf = await self._r.config_get("append*")
        except ResponseError:  # CONFIG disabled or renamed (managed Redis)
            return None
        if conf.get("appendonly") != "yes" or conf.get("appendfsync") != "always":
            return (f"redis runs with appendonly={conf.get('appendonly')} "
                    f"appendfsync={conf.get('appendfsync')}: acknowledged events can be lost if it "
                    "crashes; rerankd requires appendonly yes, appendfsync always")
        return None

    # -- items -----------------------------------------------------------------------
    @store_errors
    async def get_items(self, item_ids: Sequence[str]) -> dict[str, Item]:
        ids = list(dict.fromkeys(item_ids))
        if not ids:
            return {}
        values = await self._r.mget([self._item + i for i in ids])
        out: dict[str, Item] = {}
        for item_id, raw in zip(ids, values):
            if raw is not None:
                d = json.loads(raw)
                out[item_id] = Item(item_id, d["title"], d["text"], d["attributes"])
        return out

    @store_errors
    async def upsert_items(self, items: Sequence[Item]) -> int:
        if not items:
            return 0
        # MSET is atomic and, like SQLite's upsert, lets the last duplicate in a batch win.
        await self._r.mset({
            self._item + i.item_id: json.dumps(
                {"title": i.title, "text": i.text, "attributes": i.attributes}, sort_keys=True
            )
            for i in items
        })
        return len(items)

    @store_errors
    async def delete_items(self, item_ids: Sequence[str]) -> int:
        ids = list(dict.fromkeys(item_ids))
        if not ids:
            return 0
        return int(await self._r.delete(*[self._item + i for i in ids]))

    # -- events ----------------------------------------------------------------------
    @store_errors
    async def record_events(self, events: Sequence[Event]) -> RecordResult:
        if not events:
            return RecordResult(0, 0)
        if not self._durability_checked:  # before the store's first write
            problem = await self.durability_problem()
            self._durability_checked = True
            if problem:
                log.warning("%s", problem)
        keys = [self._seq]
        args: list[str | int] = [self.history_len, self.idempotency_ttl_s]
        for i, e in enumerate(events):
            ts = float(e.timestamp)
            if math.isnan(ts):
                # The field, not the event: its repr would carry the user id into the logs.
                raise ValueError(f"events[{i}].timestamp is not a number")
            # SQLite stores a NaN value as NULL; do the same.
            value = None if e.value is None or math.isnan(e.value) else float(e.value)
            keys += [self._ev + e.user_id, self._idem + (e.idempotency_key or ""), self._user_idem + e.user_id]
            args += [
                "1" if e.idempotency_key else "0",
                repr(ts),
                json.dumps([e.item_id, e.event_type, ts, value, e.idempotency_key or ""]),
            ]
        args.append(repr(time.time()))
        accepted = int(await self._record(keys=keys, args=args))
        return RecordResult(accepted=accepted, duplicates=len(events) - accepted)

    @store_errors
    async def forget_user(self, user_id: str) -> int:
        return int(await self._forget(keys=[self._ev + user_id, self._user_idem + user_id], args=[self._idem]))

    @store_errors
    async def recent_events(self, user_id: str, limit: int | None = None) -> list[Event]:
        limit = limit or self.history_len
        stop = -1 if limit < 0 else limit - 1  # a negative limit means all, as in SQLite
        members = await self._r.zrevrange(self._ev + user_id, 0, stop)
        out = []
        for m in members:
            item_id, event_type, ts, value, key = json.loads(m[_SEQ_HEX:])
            out.append(Event(user_id, item_id, event_type, ts, value, key))
        return out

    async def close(self) -> None:
        await self._r.aclose()
