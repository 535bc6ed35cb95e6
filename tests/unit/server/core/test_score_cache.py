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
