"""The keyed hash that stands for user ids in logs and traces."""

import re

from server.privacy import REF_HEX, UserIdHasher


def test_same_key_same_reference_and_no_trace_of_the_id():
    a, b = UserIdHasher("k1"), UserIdHasher("k1")
    ref = a("alice@example.com")
    assert ref == b("alice@example.com")  # stable across processes that share the key
    assert re.fullmatch(rf"u:[0-9a-f]{{{REF_HEX}}}", ref)
    assert "alice" not in ref
    assert a("alice@example.com") != a("bob@example.com")


def test_the_reference_depends_on_the_key():
    # A plain hash of a guessable id could be reversed by trying ids; without the key it cannot.
    assert UserIdHasher("k1")("42") != UserIdHasher("k2")("42")
    import hashlib

    assert UserIdHasher("k1")("42")[2:] not in hashlib.sha256(b"42").hexdigest()


def test_empty_key_draws_a_random_key_per_hasher_and_repr_hides_the_key():
    x, y = UserIdHasher(""), UserIdHasher("")
    assert x.ephemeral and x("42") != y("42")
    keyed = UserIdHasher("s3cret-key")
    assert not keyed.ephemeral and "s3cret" not in repr(keyed)
