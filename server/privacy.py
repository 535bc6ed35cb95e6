"""A keyed hash that stands for a user id wherever one is needed outside the feature store
(log lines, trace attributes).

HMAC-SHA256 under ``privacy.user_id_hash_key``, truncated to 64 bits: equal ids give equal
references (a user's requests can be followed through logs and traces), while without
the key nobody can test a guessed id against a reference, as they could with a plain hash
of a short or sequential id. With an empty key every process draws its own random key, so
references then differ between processes and restarts.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

# 16 hex digits (64 bits): collisions stay negligible for any realistic number of users.
REF_HEX = 16
REF_PREFIX = "u:"


class UserIdHasher:
    """``hasher(user_id)`` -> ``"u:<16 hex>"``; the key never appears in its ``repr``."""

    __slots__ = ("_key", "ephemeral")

    def __init__(self, key: str = ""):
        self.ephemeral = not key
        self._key = key.encode() if key else secrets.token_bytes(32)

    def __call__(self, user_id: str) -> str:
        return REF_PREFIX + hmac.digest(self._key, user_id.encode(), hashlib.sha256).hex()[:REF_HEX]

    def __repr__(self) -> str:
        return f"UserIdHasher(ephemeral={self.ephemeral})"
