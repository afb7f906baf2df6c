"""A tiny event kernel: a heap of (time, sequence, action). Time only moves forward, ties keep their order."""

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
        self._seq += 1
        heapq.heappush(self._heap, (max(t, self.now), self._seq, fn, args))

    def after(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        self.at(self.now + delay, fn, *args)

    def next_time(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def step(self) -> None:
        t, _, fn, args = heapq.heappop(self._heap)
        self.now = t
        fn(*args)

    def run_until(self, end: float, before_step: Callable[[float], None] | None = None) -> None:
        while self._heap and self._heap[0][0] <= end:
            if before_step is not None:
                before_step(self._heap[0][0])
            self.step()
        self.now = max(self.now, end)
