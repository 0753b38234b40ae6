"""Backoff with jitter, server retry delays and the deadline."""

import pytest

from segmentation.errors import PermanentError, TransientError
from segmentation.retry import retry_call


class FakeClock:
    """A clock that advances only when the code under test sleeps."""

    def __init__(self):
        self.now = 0.0
        self.sleeps = []

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds

    def __call__(self):
        return self.now


def failing(times, error):
    calls = []

    def func():
        calls.append(1)
        if len(calls) <= times:
            raise error
        return len(calls)

    return func, calls


def test_backoff_grows_and_stays_within_its_cap():
    clock = FakeClock()
    func, _calls = failing(6, TransientError("503"))
    assert retry_call(func, deadline=1000, base_delay=1, max_delay=8, sleep=clock.sleep, clock=clock) == 7
    assert len(clock.sleeps) == 6
    assert all(0 <= wait <= min(8, 2**attempt) for attempt, wait in enumerate(clock.sleeps))


def test_server_retry_delay_is_a_lower_bound():
    clock = FakeClock()
    func, _ = failing(2, TransientError("429", retry_after=7.5))
    retry_call(func, deadline=100, base_delay=0.01, sleep=clock.sleep, clock=clock)
    assert clock.sleeps == [7.5, 7.5]


def test_gives_up_with_the_last_error_when_the_next_wait_would_cross_the_deadline():
    clock = FakeClock()
    func, calls = failing(100, TransientError("still 503", retry_after=4))
    with pytest.raises(TransientError, match="still 503"):
        retry_call(func, deadline=10, sleep=clock.sleep, clock=clock)
    assert len(calls) == 3 and clock.now <= 10


def test_permanent_errors_are_not_retried():
    clock = FakeClock()
    func, calls = failing(1, PermanentError("bad image"))
    with pytest.raises(PermanentError):
        retry_call(func, deadline=100, sleep=clock.sleep, clock=clock)
    assert calls == [1] and clock.sleeps == []
