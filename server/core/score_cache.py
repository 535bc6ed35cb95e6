"""Bounded cache of model scores, so repeated requests in a session do not recompute.

A score is a pure function of (model version, user-side text, item-side text): the key
uses exactly that, so a new event (new user text), an item update (new item text) or a
model swap (new version) can never serve a stale score. No invalidation is needed.

Forgetting a user (``forget``): keys hold no user id, so ``store`` also notes which users'
requests stored scores under each user text, and the keys under each text (an index that
follows evictions: a user text leaves it with its last entry). ``forget(user_id)`` drops
every entry under every text the user's requests were scored with (each history state, each
context text), including entries other users with the identical text would have hit (they
are recomputed), in time proportional to those entries, not to the cache. The pipeline names
an owner only when the user's own events shaped the text (see ``Pipeline._score``).
Each gateway process has its own cache and ``forget`` reaches only that one. With a Redis
store, the store announces the erasure and every other gateway calls ``forget`` too
(``server.features.invalidation``). Otherwise (SQLite, or a message lost while a gateway's
subscription was down), the others' entries are keyed by a digest of user texts rendered
from the erased history: once the history is gone no request renders those texts again, so
they are never served, and they leave as the LRU evicts them (there is no expiry); calling
ForgetUser on every gateway removes them at once (the store part is idempotent).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence


class ScoreCache:
    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self._data: OrderedDict[tuple[str, bytes, str], float] = OrderedDict()
        self.hits = self.misses = 0
        # user key -> (its live cache keys, user ids whose requests stored under it)
        self._texts: dict[bytes, tuple[dict[tuple[str, bytes, str], None], set[str]]] = {}
        # user id -> user keys its requests stored scores under
        self._owners: dict[str, set[bytes]] = {}

    @staticmethod
    def user_key(user_text: str) -> bytes:
        # User texts can be long (ten titles); a digest keeps the keys small.
        return hashlib.blake2b(user_text.encode(), digest_size=16).digest()

    def lookup(self, version: str, user_text: str, item_texts: Sequence[str]) -> list[float | None]:
        """Cached score per item text, or None where it must be computed."""
        if self.max_entries <= 0:
            self.misses += len(item_texts)
            return [None] * len(item_texts)
        user = self.user_key(user_text)
        out: list[float | None] = []
        for text in item_texts:
            key = (version, user, text)
            score = self._data.get(key)
            if score is not None:
                self._data.move_to_end(key)
            out.append(score)
        found = sum(s is not None for s in out)
        self.hits += found
        self.misses += len(out) - found
        return out

    def store(self, version: str, user_text: str, item_texts: Sequence[str], scores: Sequence[float],
              owner: str | None = None) -> None:
        """Cache scores; ``owner``: the user id of the request, for ``forget``."""
        if self.max_entries <= 0 or not item_texts:
            return
        user = self.user_key(user_text)
        data = self._data
        record = self._texts.get(user)
        if record is None:
            record = self._texts[user] = ({}, set())
        new = [(version, user, text) for text in item_texts]
        data.update(zip(new, map(float, scores)))
        record[0].update(dict.fromkeys(new))
        if owner is not None and owner not in record[1]:
            record[1].add(owner)
            self._owners.setdefault(owner, set()).add(user)
        texts = self._texts
        while len(data) > self.max_entries:
            key, _ = data.popitem(last=False)
            keys = texts[key[1]][0]
            del keys[key]
            if not keys:
                self._release(key[1])

    def _release(self, user: bytes) -> None:
        """Drop a user key with no entries left from the index."""
        record = self._texts.pop(user, None)
        if record is None:
            return
        for owner in record[1]:
            keys = self._owners.get(owner)
            if keys is not None:
                keys.discard(user)
                if not keys:
                    del self._owners[owner]

    def forget(self, owner: str) -> int:
        """Drop every entry stored under a user text of ``owner``'s requests; returns how many
        (0 when none: idempotent)."""
        removed = 0
        for user in self._owners.pop(owner, ()):
            record = self._texts.get(user)
            if record is None:
                continue
            for key in record[0]:
                del self._data[key]
            removed += len(record[0])
            self._release(user)
        return removed

    def stats(self) -> dict[str, float]:
        total = self.hits + self.misses
        return {"hits": self.hits, "misses": self.misses, "size": len(self._data),
                "hit_rate": self.hits / total if total else 0.0}
