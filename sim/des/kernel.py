"""A tiny event kernel: a heap of (time, sequence, action). Time only moves forward; events due at the same
time run in the order they were scheduled, so a run is a pure function of its inputs."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any


class Kernel:
    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0

    def at(self, t: float, fn: Callable[..., None], *args: Any) -> None:
        """Run `fn(*args)` at virtual time `t` (now, if `t` is in the past)."""
        self._seq += 1
        heapq.heappush(self._heap, (t if t > self.now else self.now, self._seq, fn, args))

    def after(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        # `at(self.now + delay, ...)` inlined: most events are scheduled this way.
        t = self.now + delay
        self._seq += 1
        heapq.heappush(self._heap, (t if t > self.now else self.now, self._seq, fn, args))

    def next_time(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)

    def run_until(self, end: float) -> None:
        """Run every event due at or before `end`, then stand the clock at `end`."""
        heap, pop = self._heap, heapq.heappop
        while heap and heap[0][0] <= end:
            t, _, fn, args = pop(heap)
            self.now = t
            fn(*args)
        if end > self.now:
            self.now = end
