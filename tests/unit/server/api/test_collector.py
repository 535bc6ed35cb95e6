"""The latency-minded GC schedule: collections when idle or overdue, survivors frozen,
deep collections (frozen objects rescanned) now and then."""

import gc
import weakref

from server.api.collector import IdleCollector


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class Node:
    pass


def _cycle() -> weakref.ref:
    """A garbage cycle; the returned reference dies when the collector frees it."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_collections_run_when_idle_or_overdue_and_settings_are_restored():
    before = gc.get_threshold()
    clock, idle = Clock(), {"v": False}
    c = IdleCollector(lambda: idle["v"], idle_every_s=30, max_delay_s=120, deep_every_s=10_000, clock=clock)
    c.install()
    try:
        t0, t1, t2 = gc.get_threshold()
        assert t0 == max(before[0], 20_000) and t1 == before[1] and t2 > 10**8  # no automatic full GC
        assert c.collections == 1 and c.deep_collections == 1 and gc.get_freeze_count() > 0  # start-up frozen

        clock.t = 40
        assert not c.maybe_collect()           # due, but a request is in flight
        idle["v"] = True
        assert c.maybe_collect() and c.collections == 2 and c.deep_collections == 1
        clock.t = 50
        assert not c.maybe_collect()           # idle, but collected 10 s ago

        # A garbage cycle made now (after the last freeze) is found by the next collection.
        ref = _cycle()
        idle["v"] = False
        clock.t = 40 + 120
        assert c.maybe_collect()               # overdue: runs under load too
        assert ref() is None and c.deep_collections == 1
    finally:
        c.uninstall()
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_garbage_among_frozen_objects_waits_for_a_deep_collection():
    clock, idle = Clock(), {"v": True}
    c = IdleCollector(lambda: idle["v"], idle_every_s=30, max_delay_s=120, deep_every_s=600, clock=clock)
    c.install()
    try:
        a, b = Node(), Node()
        a.other, b.other = b, a
        ref = weakref.ref(a)
        clock.t = 30
        assert c.maybe_collect()               # the live cycle survives and is frozen
        del a, b                               # now garbage, but frozen: a light pass cannot see it
        clock.t = 60
        assert c.maybe_collect() and ref() is not None and c.deep_collections == 1
        clock.t = 590
        assert c.maybe_collect() and ref() is not None and c.deep_collections == 1
        clock.t = 600
        idle["v"] = False
        assert not c.maybe_collect()           # deep due, but busy (and a light one is not due)
        clock.t = 610
        idle["v"] = True
        assert c.maybe_collect() and c.deep_collections == 2 and ref() is None
        # Under unbroken load a deep collection still runs once overdue by max_delay_s.
        ref = _cycle()
        idle["v"] = False
        clock.t = 610 + 600 + 120
        assert c.maybe_collect() and c.deep_collections == 3 and ref() is None
    finally:
        c.uninstall()
