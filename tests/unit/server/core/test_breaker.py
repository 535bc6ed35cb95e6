"""The circuit breaker's states, on a fake clock."""

import pytest

from server.core.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def breaker(failures=3, open_s=1.0):
    clock = Clock()
    return CircuitBreaker(failures, open_s, clock=clock), clock


def test_opens_after_n_consecutive_failures_only():
    b, _ = breaker(3)
    for _ in range(2):
        assert b.allow()
        b.failure()
    b.success()  # a success in between starts the count again
    for _ in range(2):
        b.failure()
    assert b.state == CLOSED and b.allow()
    b.failure()
    assert b.state == OPEN and not b.allow()
    assert b.transitions[OPEN] == 1


def test_half_open_lets_exactly_one_probe_through_after_the_cool_down():
    b, clock = breaker(1, open_s=2.0)
    b.failure()
    clock.t += 1.9
    assert not b.allow() and b.state == OPEN
    clock.t += 0.2
    assert b.state == HALF_OPEN
    assert b.allow()  # the probe
    assert not b.allow() and not b.allow()  # everyone else waits for its verdict
    b.success()
    assert b.state == CLOSED and b.allow() and b.allow()
    assert b.transitions == {OPEN: 1, HALF_OPEN: 1, CLOSED: 1}


def test_a_failed_probe_opens_for_another_cool_down():
    b, clock = breaker(1, open_s=1.0)
    b.failure()
    clock.t += 1.0
    assert b.allow()
    b.failure()
    assert b.state == OPEN and not b.allow()
    clock.t += 0.99
    assert not b.allow()
    clock.t += 0.02
    assert b.allow()


def test_a_probe_without_verdict_lets_the_next_request_probe():
    b, clock = breaker(1, open_s=1.0)
    b.failure()
    clock.t += 1.5
    assert b.allow()
    assert not b.allow()
    b.release()  # the probe's caller hung up
    assert b.allow()


def test_late_failures_while_open_do_not_extend_the_cool_down():
    b, clock = breaker(2, open_s=1.0)
    b.failure()
    b.failure()
    clock.t += 0.5
    b.failure()  # a call let through before the circuit opened
    clock.t += 0.5
    assert b.allow()


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError):
        CircuitBreaker(0)
    with pytest.raises(ValueError):
        CircuitBreaker(1, -1.0)
