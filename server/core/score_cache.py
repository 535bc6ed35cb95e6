"""Bounded cache of model scores, so repeated requests in a session do not recompute.

A score is a pure function of (model version, user-side text, item-side text): the key
uses exactly that, so a new event (new user text), an item update (new item text) or a
model swap (new version) can never serve a stale score. No invalidation is needed.
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

    def store(self, version: str, user_text: str, item_texts: Sequence[str], scores: Sequence[float]) -> None:
        if self.max_entries <= 0:
            return
        user = self.user_key(user_text)
        for text, score in zip(item_texts, scores):
            self._data[(version, user, text)] = float(score)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def stats(self) -> dict[str, float]:
        total = self.hits + self.misses
        return {"hits": self.hits, "misses": self.misses, "size": len(self._data),
                "hit_rate": self.hits / total if total else 0.0}
