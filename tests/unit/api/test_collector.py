"""The latency-minded GC schedule: full collections when idle or overdue, survivors frozen."""

import gc

from server.api.collector import IdleCollector


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_full_collections_run_when_idle_or_overdue_and_settings_are_restored():
    before = gc.get_threshold()
    clock, idle = Clock(), {"v": False}
    c = IdleCollector(lambda: idle["v"], idle_every_s=30, max_delay_s=120, clock=clock)
    c.install()
    try:
        assert gc.get_threshold()[:2] == before[:2] and gc.get_threshold()[2] > 10**8  # no automatic full GC
        assert c.collections == 1 and gc.get_freeze_count() > 0  # start-up survivors frozen

        clock.t = 40
        assert not c.maybe_collect()           # due, but a request is in flight
        idle["v"] = True
        assert c.maybe_collect() and c.collections == 2
        clock.t = 50
        assert not c.maybe_collect()           # idle, but collected 10 s ago

        # A garbage cycle made now is found by the next full collection.
        class Node:
            pass

        a, b = Node(), Node()
        a.other, b.other = b, a
        del a, b
        idle["v"] = False
        clock.t = 40 + 120
        assert c.maybe_collect()               # overdue: runs under load too
        assert not any(type(o).__name__ == "Node" for o in gc.get_objects())
    finally:
        c.uninstall()
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
