"""A clock a test can set: the runtime's epoch seconds, from a time the test picks, moving on in real time."""

from __future__ import annotations

import time


class SetClock:
    """Epoch seconds from a time a test sets, moving on in real time from there (the runtime ticks by it)."""

    def __init__(self, t: float) -> None:
        self.set(t)

    def set(self, t: float) -> None:
        self.base, self.since = t, time.monotonic()

    def __call__(self) -> float:
        return self.base + time.monotonic() - self.since
