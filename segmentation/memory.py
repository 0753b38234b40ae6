"""A worker process's decode memory budget, shared by its concurrent events.

Each event reserves the peak bytes its image will need (`peak_bytes`, from the header's size and
mode) before the pixels are decoded, and holds them until its outputs are written; an event whose
reservation does not fit waits, in arrival order, until others release theirs or its deadline
passes. So concurrent large images take turns instead of together exceeding the instance's
memory. `MemoryBudget(None)` counts reservations but never waits (no budget configured).
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable, Iterator

from segmentation.errors import MemoryBudgetBusyError

MIB = 1024 * 1024

# Bytes a decoded pixel of each mode takes in Pillow (RGB is stored as 4 bytes, like RGBA).
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
# RGB-sized copies alive at the peak: the upright RGB image, the overview's copy and one crop
# (drawn beside each other); a source of another mode is held beside its RGB conversion.
_WORKING_BYTES_PER_PIXEL = 12


def peak_bytes(width: int, height: int, mode: str, *, decoder_buffer: bool = False) -> int:
    """Estimated peak bytes to decode, convert and draw a `width` x `height` image of `mode`.

    `decoder_buffer`: the decoder keeps its own copy of the pixels while Pillow's is filled
    (HEIF, AVIF).

    >>> peak_bytes(1000, 1000, "RGB"), peak_bytes(1000, 1000, "L"), peak_bytes(1000, 1000, "F")
    (12000000, 13000000, 16000000)
    """
    per_pixel = _WORKING_BYTES_PER_PIXEL
    if mode != "RGB":
        per_pixel += _BYTES_PER_PIXEL.get(mode, 4)
    if decoder_buffer:
        per_pixel += 4
    return width * height * per_pixel


class MemoryBudget:
    """A thread-safe byte budget; `capacity` None: unbounded (reservations are only counted)."""

    def __init__(self, capacity: int | None, *, clock: Callable[[], float] = time.monotonic):
        self.capacity = capacity
        self._clock = clock
        self._condition = threading.Condition()
        self._waiting: collections.deque[object] = collections.deque()
        self.in_use = 0
        self.peak = 0
        self.waits = 0

    @classmethod
    def from_limits(
        cls, memory_limit_mib: int, fraction: float, *, clock: Callable[[], float] = time.monotonic
    ) -> MemoryBudget:
        """The budget of MEMORY_LIMIT_MIB x DECODE_MEMORY_FRACTION; unbounded when either is 0."""
        if memory_limit_mib <= 0 or fraction <= 0:
            return cls(None, clock=clock)
        return cls(int(memory_limit_mib * MIB * fraction), clock=clock)

    def fits(self, nbytes: int) -> bool:
        """Whether `nbytes` could ever be reserved (alone, with nothing else held)."""
        return self.capacity is None or nbytes <= self.capacity

    def acquire(self, nbytes: int, *, deadline: float) -> None:
        """Reserve `nbytes`, waiting (first come, first served) while others hold the budget.

        Raises `MemoryBudgetBusyError` when `deadline` (on the budget's clock) passes first, and
        ValueError when `nbytes` can never fit."""
        if not self.fits(nbytes):
            raise ValueError(f"{nbytes} bytes can never fit a budget of {self.capacity}")
        ticket = object()
        with self._condition:
            self._waiting.append(ticket)
            try:
                waited = False
                while self._waiting[0] is not ticket or not self._room_for(nbytes):
                    remaining = deadline - self._clock()
                    if remaining <= 0:
                        raise MemoryBudgetBusyError(
                            f"waited until the retry deadline for {nbytes // MIB} MiB of the decode memory "
                            f"budget ({self._mib(self.capacity)} MiB, {self._mib(self.in_use)} MiB held by "
                            "other events of this worker)"
                        )
                    waited = True
                    self._condition.wait(remaining)
                self.in_use += nbytes
                self.peak = max(self.peak, self.in_use)
                self.waits += waited
            finally:
                self._waiting.remove(ticket)
                self._condition.notify_all()

    def release(self, nbytes: int) -> None:
        with self._condition:
            self.in_use -= nbytes
            self._condition.notify_all()

    @contextlib.contextmanager
    def reservation(self, deadline: float) -> Iterator[Reservation]:
        """A `Reservation` for one event; whatever it reserved is released when the block ends."""
        held = Reservation(self, deadline)
        try:
            yield held
        finally:
            held.release()

    def _room_for(self, nbytes: int) -> bool:
        return self.capacity is None or self.in_use + nbytes <= self.capacity

    @staticmethod
    def _mib(nbytes: int | None) -> str:
        return "unlimited" if nbytes is None else str(round(nbytes / MIB))


class Reservation:
    """One event's share of a `MemoryBudget`, bounded by the event's deadline."""

    def __init__(self, budget: MemoryBudget, deadline: float):
        self.budget = budget
        self.deadline = deadline
        self.held = 0

    @property
    def capacity(self) -> int | None:
        return self.budget.capacity

    def fits(self, nbytes: int) -> bool:
        return self.budget.fits(nbytes)

    def reserve(self, nbytes: int) -> None:
        self.budget.acquire(nbytes, deadline=self.deadline)
        self.held += nbytes

    def release(self) -> None:
        if self.held:
            self.budget.release(self.held)
            self.held = 0
