"""Turns at the end of an event, taken in arrival order.

When many events of one instance wait for Gemini together (a burst, or a fixed model latency),
their answers come back together, and the threads that then draw the crops and the overview
share the worker's GIL and the instance's cores: every one of them finishes drawing at the end of
the burst, all of them late (processor sharing is the worst order for jobs of one size), and the
next burst starts in the same step. Taking turns in arrival order finishes the first event's
drawing after one event's work, the second after two, ...; their next events then arrive spread
out and find the cores free. A turn covers the drawing and the sending of the uploads (the
pipeline ends it at most `TURN_UPLOAD_WAIT_S` after the uploads start): round trips to storage
and BigQuery take tens of milliseconds in production and use little CPU, and holding a turn
through them would make each event wait for the others' network.

A turn is not a lock: a waiter whose turn has not come after `patience` seconds goes ahead
without one, so a slow holder (a huge photo) delays the others by at most that much and never
stops them.

>>> turns = Turns(slots=1, patience=1.0)
>>> with turns.turn() as had_turn:
...     had_turn
True
>>> with Turns(slots=0, patience=1.0).turn() as had_turn:  # 0: no turns, everyone goes at once
...     had_turn
False
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Iterator


class Turns:
    """At most `slots` threads hold a turn at once; the others wait in arrival order, each for at
    most `patience` seconds. `slots=0` turns the queue off."""

    def __init__(self, slots: int, patience: float):
        if slots < 0 or patience < 0:
            raise ValueError("slots and patience must be >= 0")
        self.slots = slots
        self.patience = patience
        self._lock = threading.Lock()
        self._free = slots
        self._waiting: collections.deque[threading.Lock] = collections.deque()

    @contextlib.contextmanager
    def turn(self) -> Iterator[bool]:
        """Wait for a turn (in arrival order, at most `patience` s); yields whether one was had."""
        had = self._take() if self.slots else False
        try:
            yield had
        finally:
            if had:
                self._give_back()

    def _take(self) -> bool:
        with self._lock:
            if self._free and not self._waiting:
                self._free -= 1
                return True
            handed = threading.Lock()
            handed.acquire()
            self._waiting.append(handed)
        # `_give_back` hands its turn to the first waiter directly (releases its lock), so a thread
        # arriving meanwhile cannot take it out of order.
        if handed.acquire(timeout=self.patience):
            return True
        with self._lock:
            try:
                self._waiting.remove(handed)
            except ValueError:  # handed a turn just as the patience ran out: it is ours
                return True
        return False

    def _give_back(self) -> None:
        with self._lock:
            if self._waiting:
                self._waiting.popleft().release()
            else:
                self._free += 1
