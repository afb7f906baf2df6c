"""Baselines from their published formulas (DESIGN.md, Pacing), fed the same snapshots as `erlang`.

They exist to be compared against, in the simulator, on the same callers.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from pacing.snapshot import DialResult, LiveResult, Observation, PacingCaps, PacingSnapshot


def _room(caps: PacingCaps, snap: PacingSnapshot) -> int:
    lines = len(snap.ringing_elapsed) + snap.waiting_calls
    return min(caps.max_lines - lines, int(caps.max_lines_per_agent * snap.agents_logged_in) - lines,
               int(caps.max_calls_per_s) - snap.calls_launched_last_s)


class Ratio:
    """Power dialing: a fixed number of lines per ready agent (`caps.extra["ratio"]`, default 2)."""

    name = "ratio"

    def __init__(self, caps: PacingCaps | None = None) -> None:
        self.caps = caps or PacingCaps()
        self.ratio = float(self.caps.extra.get("ratio", 2.0))

    def observe(self, obs: Observation) -> None:
        pass

    def decide(self, snap: PacingSnapshot) -> int:
        if snap.agents_logged_in <= 0:
            return 0
        want = math.floor(self.ratio * snap.agents_ready) - len(snap.ringing_elapsed) - snap.waiting_calls
        return max(0, min(want, _room(self.caps, snap)))


class Vicidial:
    """VICIdial's adaptive dial level (AST_VDadapt / AST_VDauto_dial): 15-sample averages every second,
    the level adjusted every 15 s with an intensity, drop-percentage overrides, calls placed every 2.5 s."""

    name = "vicidial"

    def __init__(self, caps: PacingCaps | None = None) -> None:
        self.caps = caps or PacingCaps()
        extra = self.caps.extra
        self.level = float(extra.get("vicidial_start_level", 1.0))
        self.intensity = float(extra.get("vicidial_intensity", 0.0)) / 100.0  # adaptive_intensity −40..40
        self.dl_diff_target = float(extra.get("vicidial_dl_diff_target", 0.0))
        self.mode = str(extra.get("vicidial_mode", "TAPERED"))  # HARD_LIMIT | AVERAGE | TAPERED
        self.max_level = float(extra.get("vicidial_max_level", 3.0))
        self.target = self.caps.abandon_target
        self._ready: deque[float] = deque(maxlen=15)
        self._waiting: deque[float] = deque(maxlen=15)
        self._total: deque[float] = deque(maxlen=15)
        self._last_sample = -math.inf
        self._last_adapt = -math.inf
        self._last_place = -math.inf
        self._live_times: deque[tuple[float, bool]] = deque()  # (t, connected) for the last-minute override
        self._today_live = 0
        self._today_drops = 0
        self._start: float | None = None

    def observe(self, obs: Observation) -> None:
        if isinstance(obs, LiveResult):
            if obs.retracts is not None and not obs.connected and self._today_live > self._today_drops:
                # An abandon taking back a connect heard before: the same answer, now dropped.
                self._today_drops += 1
                for i in range(len(self._live_times) - 1, -1, -1):
                    if self._live_times[i] == (obs.retracts, True):
                        self._live_times[i] = (obs.retracts, False)
                        break
                else:  # the connect has left the last minute already: the drop counts there now
                    self._live_times.append((obs.t, False))
                return
            self._live_times.append((obs.t, obs.connected))
            self._today_live += 1
            self._today_drops += 0 if obs.connected else 1

    def decide(self, snap: PacingSnapshot) -> int:
        now = snap.now
        if self._start is None:
            self._start = self._last_adapt = now  # the first adjustment comes after 15 s of samples
        if snap.agents_logged_in <= 0:
            return 0
        if now - self._last_sample >= 1.0:
            self._last_sample = now
            self._ready.append(snap.agents_ready)
            self._waiting.append(snap.waiting_calls)
            self._total.append(snap.agents_logged_in)
        if now - self._last_adapt >= 15.0 and self._total:
            self._last_adapt = now
            self._adapt(now)
        if now - self._last_place < 2.5:
            return 0
        self._last_place = now
        live_calls = len(snap.ringing_elapsed) + snap.waiting_calls + len(snap.talking_elapsed)
        want = round(self.level * snap.agents_logged_in) - live_calls
        return max(0, min(want, _room(self.caps, snap)))

    def _adapt(self, now: float) -> None:
        avg_total = sum(self._total) / len(self._total)
        diff = sum(self._ready) / len(self._ready) - sum(self._waiting) / len(self._waiting)
        m = (diff + self.dl_diff_target) / max(avg_total, 1.0)
        m2 = m * abs(self.intensity - 1.0) if m < 0 else m * (self.intensity + 1.0)
        self.level = min(self.max_level, max(1.0, self.level * (1.0 + m2)))
        while self._live_times and self._live_times[0][0] < now - 60.0:
            self._live_times.popleft()
        minute = len(self._live_times)
        drops = sum(1 for _, c in self._live_times if not c)
        if minute > 20 and drops / minute > 0.5:
            self.level = max(1.0, self.level / 2.0)
        if self._today_live > 50 and self._today_drops / self._today_live > self.target:
            if self.mode == "HARD_LIMIT":
                self.level = 1.0
            elif self.mode == "AVERAGE":
                self.level = max(1.0, self.level / 2.0)
            else:  # TAPERED: the cut shrinks as the day goes on (our day: 8 h from the first decision)
                start = self._start if self._start is not None else now  # a clock may start at 0.0
                elapsed = (now - start) / 28_800.0
                self.level = max(1.0, self.level * (0.5 + 0.5 * min(1.0, elapsed)))

    def state(self) -> dict[str, Any]:
        return {"dial_level": self.level}


class OmniDialer:
    """OMniLeads' predictive pacer: C = ⌊(A_free + A_expected − C_ringing·P_hit) / P_hit · γ⌋, γ tapering to
    0.2 as the drop rate reaches its maximum, latched to 1:1 after 5 ticks at the maximum, 1:1 for warm-up."""

    name = "omnidialer"

    def __init__(self, caps: PacingCaps | None = None) -> None:
        self.caps = caps or PacingCaps()
        self.aggressiveness = float(self.caps.extra.get("omni_aggressiveness", 1.0))
        self.d_max = self.caps.abandon_target
        self.p_hit = 0.3
        self.answered = 0
        self.live = 0
        self.dropped = 0
        self._ring_sum = 0.0
        self._handle_sum = 0.0
        self._handles = 0
        self._at_max = 0
        self._latched = False

    def observe(self, obs: Observation) -> None:
        if isinstance(obs, DialResult):
            hit = obs.fate == "live"
            self.p_hit = max(0.05, 0.9 * self.p_hit + 0.1 * (1.0 if hit else 0.0))
            if hit:
                self.answered += 1
                self._ring_sum += obs.ring_s
        elif isinstance(obs, LiveResult):
            if obs.retracts is not None and not obs.connected and self.live > self.dropped:
                self.dropped += 1  # an abandon taking back a connect heard before: the same answer, now dropped
                return
            self.live += 1
            self.dropped += 0 if obs.connected else 1
        else:
            self._handle_sum += obs.talk_s + obs.wrap_s
            self._handles += 1

    def decide(self, snap: PacingSnapshot) -> int:
        if snap.agents_logged_in <= 0:
            return 0
        progressive = snap.agents_ready - len(snap.ringing_elapsed) - snap.waiting_calls
        drop = self.dropped / self.live if self.live else 0.0
        self._at_max = self._at_max + 1 if drop >= self.d_max else 0
        if self._at_max >= 5:
            self._latched = True
        elif self._latched and drop < 0.8 * self.d_max:
            self._latched = False
        if self.answered < 50 or self._latched:
            return max(0, min(progressive, _room(self.caps, snap)))
        if drop <= 0.5 * self.d_max:
            gamma = self.aggressiveness
        else:
            frac = min(1.0, (drop - 0.5 * self.d_max) / (0.5 * self.d_max))
            gamma = self.aggressiveness + (0.2 - self.aggressiveness) * frac
        mu = self._handle_sum / self._handles if self._handles else 120.0
        t_ring = self._ring_sum / max(self.answered, 1)
        busy = snap.talking_elapsed + snap.wrapup_elapsed
        expected = sum(1.0 - math.exp(-t_ring / max(1.0, mu - a)) for a in busy)
        want = math.floor((snap.agents_ready + expected - len(snap.ringing_elapsed) * self.p_hit - snap.waiting_calls)
                          / self.p_hit * gamma)
        return max(0, min(want, _room(self.caps, snap)))

    def state(self) -> dict[str, Any]:
        return {"p_hit": self.p_hit, "latched": self._latched}
