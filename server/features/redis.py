"""Redis feature store, for several gateways sharing one store; single Redis or Redis Cluster.

Key layout v2 (every key starts with ``key_prefix``, default ``"rerankd:"``, so deployments
can share a server). Every key of one user carries the hash tag ``{<user_id>}``, so on Redis
Cluster a user's keys share one slot (and the scripts below may touch them together) while
users, and items, spread over the cluster:

* ``<p>item:<item_id>``  string, JSON ``{"title", "text", "attributes"}``; ``get_items`` is
  one ``MGET`` whatever the number of ids (on a cluster: one per slot, pipelined).
* ``<p>ev:{<user_id>}``  sorted set of the user's newest ``history_len`` events. Score: the
  event timestamp; member: 16 hex digits of the user's sequence number, then the JSON
  payload. Redis orders equal scores by member bytes, so ``ZREVRANGE`` yields
  ``ts DESC, seq DESC``, the same order as SQLite.
* ``<p>seq:{<user_id>}`` the user's sequence counter (``INCR``).
* ``<p>idem:{<user_id>}:<key>``  an applied idempotency key of the user, expiring after
  ``idempotency_ttl_s`` (default 7 days): a key repeated within that window is not applied
  twice; after it, it would be (SQLite remembers keys forever). Keys are scoped per user:
  the same key sent for another user is another event (SQLite: a duplicate).
* ``<p>uidem:{<user_id>}`` sorted set of the idempotency keys (full key names) of the user's
  applied events, scored by their expiry time, pruned and expiring with them: what
  ``forget_user`` deletes besides the history (an idempotency key may name the user).
* ``<p>invalidate``      pub/sub channel, no key: each write of items and each
  ``forget_user`` is announced there (``server.features.invalidation`` follows it, so other
  gateways drop their cached copies at once).

Layout v1 (before per-user hash tags: ``ev:<user>``, ``uidem:<user>``, ``idem:<key>``, a
global ``seq``) is not read: histories are windows of recent events that refill as users
act, so an upgrade from v1 starts them empty; delete the old keys (``redis-cli --scan
--pattern '<p>ev:*'`` etc.) or use a new ``key_prefix``. Items are unchanged.

``record_events`` runs one Lua script, which Redis executes atomically: it checks every
idempotency key, then appends and trims, so concurrent writers from any number of gateways
lose nothing. On a single Redis (and on a cluster with a hash-tagged ``key_prefix``, such as
``"{rerankd}:"``, which puts every key in one slot) a whole batch is one script: all or
none. On a cluster otherwise a batch is applied per user, one script per user (a user's
events all or none; the users of a batch independently: a failure can leave some users'
events applied, which a retry with idempotency keys completes without duplicates).

``forget_user`` runs one script too: it deletes the user's history, that index, the counter
and every idempotency key the two name, atomically (all in the user's slot). Redis keeps
what was deleted in the append-only file until its next rewrite (``BGREWRITEAOF``, or
automatic by size); a deployment that must erase from disk promptly rewrites it after
erasures.

Redis Cluster: add ``cluster=true`` to the URL (``redis://host:port?cluster=true``; any node
of the cluster; ``rediss://`` for TLS); redis-py's ``RedisCluster`` then follows the slots.
Writes of several items are one ``MSET`` per slot, so an upsert batch is not atomic across
slots (each item is).

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
drops a NaN-timestamp event and counts it as a duplicate); idempotency keys are per user
(SQLite: global).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import time
import uuid
from collections.abc import Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
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
from server.features.base import IMPRESSION_RETENTION_S
from server.types import Event, Impression, Item, RecordResult

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "rerankd:"
IDEMPOTENCY_TTL_S = 7 * 24 * 3600

# KEYS[4i-3..4i]    event i's user's history, idempotency key, idempotency index, sequence
#                    counter (on a cluster every key of one call is in one user's slot)
# ARGV[1], ARGV[2]   history_len, idempotency TTL in seconds
# ARGV[3n+3]         now (Unix seconds, the client's clock): the index's expiry scores
# ARGV[3i]           "1" when event i carries an idempotency key
# ARGV[3i+1]         score: the timestamp exactly as Python's repr wrote it. It goes to
#                    ZADD untouched: a Lua number would print with 14 digits only.
# ARGV[3i+2]         payload
# Returns the number of events applied. All checks run before the first write, because a
# script that fails halfway keeps its earlier writes.
_RECORD_LUA = """
local n = #KEYS / 4
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
    local idem = KEYS[4 * i - 2]
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
local touched, indexed = {}, {}
for j = 1, accepted do
  local i = keep[j]
  local seq = redis.call('INCR', KEYS[4 * i])
  if ARGV[3 * i] == '1' then
    redis.call('SET', KEYS[4 * i - 2], seq, 'EX', ARGV[2])
    redis.call('ZADD', KEYS[4 * i - 1], expiry, KEYS[4 * i - 2])
    indexed[KEYS[4 * i - 1]] = true
  end
  redis.call('ZADD', KEYS[4 * i - 3], ARGV[3 * i + 1], string.format('%016x', seq) .. ARGV[3 * i + 2])
  touched[KEYS[4 * i - 3]] = true
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

# KEYS[1..3]         the user's history, idempotency index and sequence counter
# ARGV[1]            the user's idempotency key prefix (``<p>idem:{<user>}:``)
# Deletes the three and the idempotency keys named by the history or the index (the
# history's payloads also name keys recorded before the index existed); returns the events
# removed. Those keys are not in KEYS, but they carry the user's hash tag: the same slot.
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
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
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


def _split_prefix(url: str) -> tuple[str, str | None, bool]:
    """Remove ``key_prefix=`` and ``cluster=`` from the URL's query (redis-py rejects unknown
    arguments); returns (url, prefix or None, cluster)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = None
    cluster = False
    rest = []
    for name, value in query:
        if name == "key_prefix":
            prefix = value
        elif name == "cluster":
            if value.lower() not in ("true", "1", "yes", "false", "0", "no"):
                raise ValueError(f"store url: cluster={value!r}, expected true or false")
            cluster = value.lower() in ("true", "1", "yes")
        else:
            rest.append((name, value))
    return urlunsplit(parts._replace(query=urlencode(rest))), prefix, cluster


def _hash_tag(key: str) -> str | None:
    """The part of ``key`` Redis Cluster hashes when it has a hash tag (None: the whole key)."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    return key[start + 1:end] if end > start + 1 else None


class RedisStore:
    """``FeatureStore`` over Redis (``redis.asyncio``; one connection pool per store).

    ``url`` is any redis-py URL (``redis://host:port/db``, ``rediss://``, ``unix://``);
    it may carry ``?key_prefix=...``, which ``key_prefix`` overrides, and ``cluster=true``
    (Redis Cluster, through any of its nodes).

    Key helpers (``_item_key``, ``_ev_key``, ``_idem_key``, ...) name every key: code that
    reads or writes the store's keys uses them, so the layout lives here alone.
    """

    def __init__(
        self,
        url: str,
        *,
        history_len: int = 20,
        key_prefix: str | None = None,
        idempotency_ttl_s: int = IDEMPOTENCY_TTL_S,
        impression_retention_s: float = IMPRESSION_RETENTION_S,
    ):
        if history_len < 1:
            raise ValueError("history_len must be at least 1")
        url, url_prefix, self.cluster = _split_prefix(url)
        self.prefix = key_prefix if key_prefix is not None else (url_prefix or DEFAULT_PREFIX)
        if "{" in self.prefix and _hash_tag(self.prefix) is None:
            # "{" without "}": each key's tag would end inside the user id, differently per key.
            raise ValueError(f"key_prefix {self.prefix!r}: a '{{' needs its '}}' (a hash tag)")
        # Every key in one slot (no cluster, or a hash-tagged prefix): a batch is one script.
        self.one_slot = not self.cluster or _hash_tag(self.prefix) is not None
        self.history_len = history_len
        self.idempotency_ttl_s = int(idempotency_ttl_s)
        self.impression_retention_s = max(1, int(impression_retention_s))
        # redis-py's default retries timeouts 10 times with backoff up to 10 s: too long for
        # a request path, and a retried timed-out write may apply twice. Retry briefly, and
        # only on connection errors (e.g. pooled connections dead after a Redis restart).
        client = RedisCluster if self.cluster else aioredis.Redis
        self._r = client.from_url(
            url,
            decode_responses=True,
            retry=Retry(ExponentialBackoff(cap=0.25, base=0.02), 3, (RedisConnectionError,)),
        )
        self._record = self._r.register_script(_RECORD_LUA)
        self._forget = self._r.register_script(_FORGET_LUA)
        self._item = f"{self.prefix}item:"
        # Pub/sub channel announcing item writes and erased users (``_announce``).
        self.changes_channel = f"{self.prefix}invalidate"
        # Names this store object in its announcements, so its own gateway can skip them.
        self.instance_id = uuid.uuid4().hex
        self._durability_checked = False

    # -- key layout v2 (see the module docstring) --------------------------------------
    def _item_key(self, item_id: str) -> str:
        return self._item + item_id

    def _ev_key(self, user_id: str) -> str:
        """The user's history (sorted set)."""
        return f"{self.prefix}ev:{{{user_id}}}"

    def _user_idem_key(self, user_id: str) -> str:
        """The user's idempotency index (sorted set of full key names)."""
        return f"{self.prefix}uidem:{{{user_id}}}"

    def _idem_prefix(self, user_id: str) -> str:
        return f"{self.prefix}idem:{{{user_id}}}:"

    def _idem_key(self, user_id: str, key: str) -> str:
        """An applied idempotency key of the user."""
        return self._idem_prefix(user_id) + key

    def _seq_key(self, user_id: str) -> str:
        """The user's sequence counter."""
        return f"{self.prefix}seq:{{{user_id}}}"

    def _user_keys(self, user_id: str) -> list[str]:
        """Every fixed-name key of the user (the idempotency keys come on top)."""
        return [self._ev_key(user_id), self._user_idem_key(user_id), self._seq_key(user_id)]

    # Impressions (online evaluation): keyed by request id, indexed per UTC day and per user.
    def _imp_key(self, request_id: str) -> str:
        """What one Rerank reply showed (string, JSON)."""
        return f"{self.prefix}imp:{{{request_id}}}"

    def _imp_events_key(self, request_id: str) -> str:
        """Events sent with the request id (list of JSON payloads)."""
        return f"{self.prefix}impev:{{{request_id}}}"

    def _imp_day_key(self, ts: float) -> str:
        """Request ids shown on the UTC day of ``ts`` (sorted set scored by time): the report's scan."""
        return f"{self.prefix}impday:{time.strftime('%Y%m%d', time.gmtime(ts))}"

    def _user_imp_key(self, user_id: str) -> str:
        """The user's request ids (sorted set scored by time): what ``forget_user`` erases."""
        return f"{self.prefix}uimp:{{{user_id}}}"

    async def pubsub(self):
        """A pub/sub object on this store's server (on a cluster: one node, chosen from the
        slot map, which is read first; pub/sub messages reach every node), for following
        ``changes_channel``. Raises redis-py's errors when the server cannot be reached."""
        if self.cluster:
            await self._r.initialize()
        return self._r.pubsub()

    async def _announce(self, **change) -> None:
        """Publish a change on ``changes_channel``. Best effort: the write is done and
        acknowledged whatever happens here; a gateway that misses the message serves its
        cached copy until the item cache's TTL (``server.features.invalidation``)."""
        try:
            await self._r.publish(self.changes_channel, json.dumps({"origin": self.instance_id, **change}))
        except RedisError as exc:
            log.warning("could not announce a store change on %s: %s", self.changes_channel, exc)

    async def durability_problem(self) -> str | None:
        """Why acknowledged writes might not survive a killed ``redis-server`` (None: they
        will, or the server does not let us read its configuration)."""
        try:
            if self.cluster:  # every primary holds some users' events
                replies = await self._r.config_get("append*", target_nodes=RedisCluster.PRIMARIES)
                confs = list(replies.values()) if isinstance(replies, dict) and "appendonly" not in replies \
                    else [replies]
            else:
                confs = [await self._r.config_get("append*")]
        except ResponseError:  # CONFIG disabled or renamed (managed Redis)
            return None
        for conf in confs:
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
        keys = [self._item + i for i in ids]
        values = await (self._r.mget_nonatomic(keys) if self.cluster else self._r.mget(keys))
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
        # MSET is atomic and, like SQLite's upsert, lets the last duplicate in a batch win
        # (on a cluster: one MSET per slot, so atomic per item only).
        values = {
            self._item + i.item_id: json.dumps(
                {"title": i.title, "text": i.text, "attributes": i.attributes}, sort_keys=True
            )
            for i in items
        }
        await (self._r.mset_nonatomic(values) if self.cluster else self._r.mset(values))
        await self._announce(items=list(dict.fromkeys(i.item_id for i in items)))
        return len(items)

    @store_errors
    async def delete_items(self, item_ids: Sequence[str]) -> int:
        ids = list(dict.fromkeys(item_ids))
        if not ids:
            return 0
        deleted = int(await self._r.delete(*[self._item + i for i in ids]))
        await self._announce(items=ids)
        return deleted

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
        # Every event is checked and encoded before the first call: a bad one applies nothing.
        calls: dict[str, tuple[list[str], list[str | int]]] = {}  # one script call per slot group
        for i, e in enumerate(events):
            ts = float(e.timestamp)
            if math.isnan(ts):
                # The field, not the event: its repr would carry the user id into the logs.
                raise ValueError(f"events[{i}].timestamp is not a number")
            # SQLite stores a NaN value as NULL; do the same.
            value = None if e.value is None or math.isnan(e.value) else float(e.value)
            keys, args = calls.setdefault("" if self.one_slot else e.user_id, ([], []))
            keys += [self._ev_key(e.user_id), self._idem_key(e.user_id, e.idempotency_key or ""),
                     self._user_idem_key(e.user_id), self._seq_key(e.user_id)]
            args += [
                "1" if e.idempotency_key else "0",
                repr(ts),
                json.dumps([e.item_id, e.event_type, ts, value, e.idempotency_key or ""]
                           + ([e.request_id] if e.request_id else [])),
            ]
        now = repr(time.time())
        runs = [self._record(keys=keys, args=[self.history_len, self.idempotency_ttl_s, *args, now])
                for keys, args in calls.values()]
        accepted = sum(int(n) for n in (await asyncio.gather(*runs) if len(runs) > 1 else [await runs[0]]))
        await self._record_attributed([e for e in events if e.request_id])
        return RecordResult(accepted=accepted, duplicates=len(events) - accepted)

    @store_errors
    async def forget_user(self, user_id: str) -> int:
        removed = int(await self._forget(keys=self._user_keys(user_id), args=[self._idem_prefix(user_id)]))
        await self._forget_impressions(user_id)
        # Even when nothing was stored: another gateway may hold scores from before a restart.
        await self._announce(forget=user_id)
        return removed

    @store_errors
    async def recent_events(self, user_id: str, limit: int | None = None) -> list[Event]:
        limit = limit or self.history_len
        stop = -1 if limit < 0 else limit - 1  # a negative limit means all, as in SQLite
        members = await self._r.zrevrange(self._ev_key(user_id), 0, stop)
        out = []
        for m in members:
            item_id, event_type, ts, value, key, *rest = json.loads(m[_SEQ_HEX:])
            out.append(Event(user_id, item_id, event_type, ts, value, key, rest[0] if rest else ""))
        return out

    # -- impressions (online evaluation) ---------------------------------------------------
    # Writes span slots (a key per request id, day and user): non-transactional pipelines, each
    # command atomic on its own. Everything expires after ``impression_retention_s``.
    async def _record_attributed(self, events: Sequence[Event]) -> None:
        """Events that name a request id, kept under it for the report (every copy: the
        report counts one per request, item and type, so retries and duplicates do no harm)."""
        if not events:
            return
        pipe = self._r.pipeline(transaction=False)
        for e in events:
            key = self._imp_events_key(e.request_id)
            value = None if e.value is None or math.isnan(e.value) else float(e.value)
            pipe.rpush(key, json.dumps([e.user_id, e.item_id, e.event_type, float(e.timestamp), value,
                                        e.idempotency_key or ""]))
            pipe.expire(key, self.impression_retention_s)
        await pipe.execute()

    @store_errors
    async def record_impressions(self, impressions: Sequence[Impression]) -> int:
        if not impressions:
            return 0
        ttl = self.impression_retention_s
        now = time.time()
        pipe = self._r.pipeline(transaction=False)
        for imp in impressions:
            pipe.set(self._imp_key(imp.request_id), json.dumps(
                [imp.user_id, imp.model_name, imp.model_version, imp.degraded_reason, list(imp.item_ids),
                 imp.timestamp]), ex=ttl)
            day = self._imp_day_key(imp.timestamp)
            pipe.zadd(day, {imp.request_id: imp.timestamp})
            pipe.expire(day, ttl + 86400)
            user = self._user_imp_key(imp.user_id)
            pipe.zadd(user, {imp.request_id: imp.timestamp})
            pipe.zremrangebyscore(user, "-inf", f"({now - ttl!r}")
            pipe.expire(user, ttl)
        await pipe.execute()
        return len(impressions)

    async def _shown_since(self, since: float) -> list[str]:
        """Request ids in the day indexes shown at or after ``since`` (retention bounds it)."""
        now = time.time()
        since = max(since, now - self.impression_retention_s)
        days = []
        day = since - since % 86400
        while day <= now:
            days.append(self._imp_day_key(day))
            day += 86400
        pipe = self._r.pipeline(transaction=False)
        for key in days:
            pipe.zrangebyscore(key, since, "+inf")
        return [rid for ids in await pipe.execute() for rid in ids]

    async def _get_many(self, keys: Sequence[str], command: str, *args) -> list:
        out = []
        for start in range(0, len(keys), 1000):
            pipe = self._r.pipeline(transaction=False)
            for key in keys[start:start + 1000]:
                getattr(pipe, command)(key, *args)
            out += await pipe.execute()
        return out

    @store_errors
    async def export_impressions(self, since: float = 0.0) -> list[Impression]:
        rids = await self._shown_since(since)
        out = []
        for rid, raw in zip(rids, await self._get_many([self._imp_key(r) for r in rids], "get")):
            if raw is not None:  # expired, or erased by forget_user
                user, name, version, degraded, items, ts = json.loads(raw)
                out.append(Impression(rid, user, name, version, tuple(items), ts, degraded))
        return sorted(out, key=lambda i: i.timestamp)

    @store_errors
    async def export_attributed_events(self, since: float = 0.0) -> list[Event]:
        """Events sent with the request id of an impression shown since ``since`` (unlike SQLite,
        not those naming an unknown or expired request id)."""
        rids = await self._shown_since(since)
        out = []
        for rid, payloads in zip(rids, await self._get_many([self._imp_events_key(r) for r in rids],
                                                            "lrange", 0, -1)):
            for raw in payloads:
                user, item, event_type, ts, value, idem = json.loads(raw)
                if ts >= since:
                    out.append(Event(user, item, event_type, ts, value, idem, rid))
        return sorted(out, key=lambda e: e.timestamp)

    async def _forget_impressions(self, user_id: str) -> None:
        """Erase the user's impressions and the events kept under them (after the history:
        a failure here leaves them to a repeated ``forget_user``, or to their expiry)."""
        key = self._user_imp_key(user_id)
        shown = await self._r.zrange(key, 0, -1, withscores=True)
        pipe = self._r.pipeline(transaction=False)
        for rid, ts in shown:
            pipe.delete(self._imp_key(rid))
            pipe.delete(self._imp_events_key(rid))
            pipe.zrem(self._imp_day_key(ts), rid)
        pipe.delete(key)
        await pipe.execute()

    # -- offline export (training on the store's own logs) ---------------------------------
    @staticmethod
    def _around(key_of) -> tuple[str, str]:
        """(head, tail) of the keys ``key_of`` names: every such key is head + id + tail."""
        head, _, tail = key_of("\0").partition("\0")
        return head, tail

    @store_errors
    async def _scan(self, key_of) -> list[tuple[str, str]]:
        """(key, id) of every key ``key_of`` (a key helper) names, by SCAN (the prefix's glob
        characters escaped)."""
        head, tail = self._around(key_of)
        esc = lambda t: "".join("\\" + c if c in "*?[]\\" else c for c in t)  # noqa: E731
        keys = {k async for k in self._r.scan_iter(match=esc(head) + "*" + esc(tail), count=1000)}
        return sorted((k, k[len(head):len(k) - len(tail)]) for k in keys)

    @store_errors
    async def _user_events(self, key: str, user: str) -> list[Event]:
        """One history's events, oldest-recorded (lowest sequence number) first."""
        out = []
        for m in sorted(await self._r.zrange(key, 0, -1), key=lambda m: m[:_SEQ_HEX]):
            item_id, event_type, ts, value, idem, *rest = json.loads(m[_SEQ_HEX:])
            out.append(Event(user, item_id, event_type, ts, value, idem, rest[0] if rest else ""))
        return out

    async def export_events(self, batch: int = 10_000):
        """Every user's retained events (the newest ``history_len``), user by user, each user's
        oldest-recorded first."""
        out: list[Event] = []
        for key, user in await self._scan(self._ev_key):
            out += await self._user_events(key, user)
            if len(out) >= batch:
                yield out
                out = []
        if out:
            yield out

    async def export_items(self, batch: int = 10_000):
        """Every item, by key (read through ``get_items``, so a cluster's slots are followed)."""
        ids = [item_id for _, item_id in await self._scan(self._item_key)]
        for start in range(0, len(ids), batch):
            found = await self.get_items(ids[start:start + batch])
            yield list(found.values())

    async def close(self) -> None:
        await self._r.aclose()
