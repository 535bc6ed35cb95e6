from server.core.score_cache import ScoreCache


def test_hits_only_for_same_version_user_and_item_text():
    c = ScoreCache(10)
    assert c.lookup("1", "user", ["a", "b"]) == [None, None]
    c.store("1", "user", ["a", "b"], [0.5, 0.25])
    assert c.lookup("1", "user", ["a", "b", "c"]) == [0.5, 0.25, None]
    assert c.lookup("2", "user", ["a"]) == [None]  # model swap
    assert c.lookup("1", "user+new event", ["a"]) == [None]  # history changed
    assert c.stats()["hits"] == 2 and c.stats()["misses"] == 5


def test_bounded_lru_and_disabled():
    c = ScoreCache(2)
    c.store("1", "u", ["a", "b"], [1, 2])
    c.lookup("1", "u", ["a"])  # a is now most recent
    c.store("1", "u", ["c"], [3])
    assert c.lookup("1", "u", ["a", "b", "c"]) == [1, None, 3]
    off = ScoreCache(0)
    off.store("1", "u", ["a"], [1])
    assert off.lookup("1", "u", ["a"]) == [None] and off.stats()["size"] == 0


def test_forget_drops_every_text_the_users_requests_stored_under():
    c = ScoreCache(100)
    c.store("1", "alice: no history", ["a", "b"], [1, 2], owner="alice")
    c.store("1", "alice: after one click", ["a", "b", "c"], [3, 4, 5], owner="alice")
    c.store("2", "alice: after one click", ["a"], [6], owner="alice")  # a new model version
    c.store("1", "bob's history", ["a", "b"], [7, 8], owner="bob")
    assert c.forget("alice") == 6
    assert c.lookup("1", "alice: no history", ["a", "b"]) == [None, None]
    assert c.lookup("1", "alice: after one click", ["a", "b", "c"]) == [None] * 3
    assert c.lookup("2", "alice: after one click", ["a"]) == [None]
    assert c.lookup("1", "bob's history", ["a", "b"]) == [7, 8]  # other users keep theirs
    assert c.forget("alice") == 0  # idempotent
    assert c.forget("nobody") == 0
    assert c.stats()["size"] == 2


def test_forget_includes_texts_shared_with_other_users():
    # Two cold users render the same user text: forgetting one drops the shared entries too.
    c = ScoreCache(100)
    c.store("1", "no history", ["a"], [1], owner="alice")
    c.store("1", "no history", ["b"], [2], owner="bob")
    assert c.forget("alice") == 2
    assert c.lookup("1", "no history", ["a", "b"]) == [None, None]
    assert c.forget("bob") == 0  # the text is gone from bob's index with its entries
    assert c._texts == {} and c._owners == {}


def test_the_owner_index_follows_evictions():
    c = ScoreCache(3)
    for i in range(50):
        c.store("1", f"text of u{i}", ["a", "b"], [1, 2], owner=f"u{i}")
        c.lookup("1", f"text of u{i}", ["a"])
    # Only the user keys with live entries (and their owners) stay indexed.
    assert c.stats()["size"] == 3
    assert set(c._owners) == {"u48", "u49"} and len(c._texts) == 2
    assert sum(len(r[0]) for r in c._texts.values()) == 3
    assert c.forget("u0") == 0 and c.forget("u48") == 1 and c.forget("u49") == 2
    assert c.stats()["size"] == 0 and c._texts == {} and c._owners == {}


def test_overwriting_entries_keeps_the_count_exact_and_no_owner_still_evicts():
    c = ScoreCache(4)
    c.store("1", "t", ["a", "b"], [1, 2], owner="u")
    c.store("1", "t", ["a", "b"], [3, 4], owner="u")  # same keys again (concurrent misses)
    c.store("1", "anon", ["x", "y"], [5, 6])
    assert len(c._texts[ScoreCache.user_key("t")][0]) == 2
    assert c.forget("u") == 2 and c.lookup("1", "anon", ["x", "y"]) == [5, 6]
    c.store("1", "anon", ["p", "q", "r"], [1, 1, 1])  # evicts one of anon's, without an owner
    assert c.stats()["size"] == 4 and len(c._texts[ScoreCache.user_key("anon")][0]) == 4
    off = ScoreCache(0)
    off.store("1", "t", ["a"], [1], owner="u")
    assert off.forget("u") == 0
