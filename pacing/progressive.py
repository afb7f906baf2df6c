"""Progressive (1:1) pacing: one call in flight per ready agent, never more."""

from __future__ import annotations

from pacing.snapshot import Observation, PacingCaps, PacingSnapshot


class Progressive:
    name = "progressive"

    def __init__(self, caps: PacingCaps | None = None) -> None:
        self.caps = caps or PacingCaps()

    def observe(self, obs: Observation) -> None:
        pass  # progressive learns nothing

    def decide(self, snap: PacingSnapshot) -> int:
        if snap.agents_logged_in <= 0:
            return 0
        in_flight = len(snap.ringing_elapsed) + snap.waiting_calls
        n = snap.agents_ready - in_flight
        n = min(n, self.caps.max_lines - in_flight)
        n = min(n, int(self.caps.max_calls_per_s) - snap.calls_launched_last_s)
        return max(0, n)
