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

``record_events`` runs one Lua script, which Redis executes atomically: it checks every
idempotency key, then appends and trims, so a batch is applied all or none and
concurrent writers from any number of gateways lose nothing.

Durability is the server's: with ``appendonly yes`` and ``appendfsync always`` an
acknowledged write survives a killed ``redis-server``; the default ``everysec`` may lose
about the last second.

Differences from ``SqliteStore``: only the newest ``history_len`` events per user are
kept, so ``recent_events(limit > history_len)`` returns at most ``history_len``; and a
batch holding a non-finite timestamp is rejected with ``ValueError`` (SQLite silently
drops a NaN-timestamp event and counts it as a duplicate).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from server.types import Event, Item, RecordResult

DEFAULT_PREFIX = "rerankd:"
IDEMPOTENCY_TTL_S = 7 * 24 * 3600

# KEYS[1]            sequence counter
# KEYS[2i], [2i+1]   history key and idempotency key of event i (i = 1..n)
# ARGV[1], ARGV[2]   history_len, idempotency TTL in seconds
# ARGV[3i]           "1" when event i carries an idempotency key
# ARGV[3i+1]         score: the timestamp exactly as Python's repr wrote it. It goes to
#                    ZADD untouched: a Lua number would print with 14 digits only.
# ARGV[3i+2]         payload
# Returns the number of events applied. All checks run before the first write, because a
# script that fails halfway keeps its earlier writes.
_RECORD_LUA = """
local n = (#KEYS - 1) / 2
local hist = tonumber(ARGV[1])
local seen, keep, accepted = {}, {}, 0
for i = 1, n do
  local score = tonumber(ARGV[3 * i + 1])
  if score == nil or score ~= score then
    return redis.error_reply('ERR invalid timestamp ' .. ARGV[3 * i + 1])
  end
  local dup = false
  if ARGV[3 * i] == '1' then
    local idem = KEYS[2 * i + 1]
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
local touched = {}
for j = 1, accepted do
  local i = keep[j]
  seq = seq + 1
  if ARGV[3 * i] == '1' then
    redis.call('SET', KEYS[2 * i + 1], seq, 'EX', ARGV[2])
  end
  redis.call('ZADD', KEYS[2 * i], ARGV[3 * i + 1], string.format('%016x', seq) .. ARGV[3 * i + 2])
  touched[KEYS[2 * i]] = true
end
for key in pairs(touched) do
  redis.call('ZREMRANGEBYRANK', key, 0, -hist - 1)
end
return accepted
"""

_SEQ_HEX = 16  # width of the sequence prefix of a history member


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
        self._item = f"{self.prefix}item:"
        self._ev = f"{self.prefix}ev:"
        self._idem = f"{self.prefix}idem:"
        self._seq = f"{self.prefix}seq"

    # -- items -----------------------------------------------------------------------
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

    async def delete_items(self, item_ids: Sequence[str]) -> int:
        ids = list(dict.fromkeys(item_ids))
        if not ids:
            return 0
        return int(await self._r.delete(*[self._item + i for i in ids]))

    # -- events ----------------------------------------------------------------------
    async def record_events(self, events: Sequence[Event]) -> RecordResult:
        if not events:
            return RecordResult(0, 0)
        keys = [self._seq]
        args: list[str | int] = [self.history_len, self.idempotency_ttl_s]
        for e in events:
            ts = float(e.timestamp)
            if math.isnan(ts):
                raise ValueError(f"event timestamp is not a number: {e!r}")
            # SQLite stores a NaN value as NULL; do the same.
            value = None if e.value is None or math.isnan(e.value) else float(e.value)
            keys += [self._ev + e.user_id, self._idem + (e.idempotency_key or "")]
            args += [
                "1" if e.idempotency_key else "0",
                repr(ts),
                json.dumps([e.item_id, e.event_type, ts, value, e.idempotency_key or ""]),
            ]
        accepted = int(await self._record(keys=keys, args=args))
        return RecordResult(accepted=accepted, duplicates=len(events) - accepted)

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
