"""Retry transient failures with exponential backoff and full jitter, within a deadline.

One helper serves every I/O edge (Gemini, Cloud Storage, BigQuery): each edge converts its
client's exceptions into `TransientError` (retry) or `PermanentError` (don't), and
`retry_call` does the waiting. A server-given retry delay (`TransientError.retry_after`)
is honoured as a lower bound. When the next wait would cross the deadline the last
`TransientError` is raised, so the function fails and the platform redelivers the event.

>>> from segmentation import logs; logs.set_level("ERROR")  # keep the example's output quiet
>>> attempts = []
>>> def flaky():
...     attempts.append(1)
...     if len(attempts) < 3:
...         raise TransientError("503")
...     return "done"
>>> retry_call(flaky, deadline=time.monotonic() + 5, base_delay=0.001)
'done'
>>> len(attempts)
3
>>> logs.set_level("INFO")
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from segmentation.errors import TransientError
from segmentation.logs import log_event

T = TypeVar("T")


def retry_call(
    func: Callable[[], T],
    *,
    deadline: float,
    what: str = "call",
    base_delay: float = 1.0,
    max_delay: float = 32.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Call `func` until it returns, raises a non-transient error, or the deadline passes.

    `deadline` is a `time.monotonic()` instant. Waits grow as base_delay * 2**attempt with
    full jitter, capped at `max_delay`, and never shorter than the server's `retry_after`.
    """
    attempt = 0
    while True:
        try:
            return func()
        except TransientError as exc:
            backoff = random.uniform(0, min(max_delay, base_delay * 2**attempt))
            wait = max(backoff, exc.retry_after or 0.0)
            remaining = deadline - clock()
            if wait >= remaining:
                raise
            attempt += 1
            log_event(
                "WARNING",
                f"{what} failed transiently; retrying",
                attempt=attempt,
                wait_s=round(wait, 3),
                error=str(exc)[:300],
            )
            sleep(wait)
