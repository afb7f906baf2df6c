"""`oracle`: the upper bound on pacing. It knows every future call's outcome and when every busy agent will
be free, and launches a call only when the person it will reach is sure to find an agent within the abandon
threshold: exactly enough calls that answers land as agents free up.

Foresight comes from the simulator through the `Foresight` protocol (the discrete-event simulator implements
it); production has no such thing, so the oracle is chosen by name in the simulator only, never in
pacing.registry.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Protocol

from pacing.snapshot import Observation, PacingCaps, PacingSnapshot

NAME = "oracle"


class Foresight(Protocol):
    """What only a simulator can tell: the future, as times in the simulator's clock."""

    def agents_free_at(self, now: float) -> list[float]:
        """When each agent who will keep taking calls is next free: `now` if ready, else the end of its
        current call plus wrap-up. Agents about to log out are left out. Sorted."""
        ...

    def offers_due(self, now: float) -> list[float]:
        """When each call already placed will be offered to an agent: answered by a person (or a machine AMD
        lets through), plus AMD time; `now` for people already waiting. Calls that never reach an agent are
        left out. Sorted."""
        ...

    def upcoming_offers(self, now: float) -> Iterator[float | None]:
        """For the next dials, in dial order, if placed at `now`: when each would be offered to an agent,
        or None if it never would (no answer, busy, failed, machine hung up on)."""
        ...


class Oracle:
    name = NAME

    def __init__(self, foresight: Foresight, caps: PacingCaps) -> None:
        self.foresight = foresight
        self.caps = caps

    def observe(self, obs: Observation) -> None:
        pass  # nothing to learn: it knows

    def decide(self, snap: PacingSnapshot) -> int:
        if snap.agents_logged_in <= 0:
            return 0
        lines = len(snap.ringing_elapsed) + snap.waiting_calls
        room = min(self.caps.max_lines - lines, int(self.caps.max_lines_per_agent * snap.agents_logged_in) - lines,
                   int(self.caps.max_calls_per_s) - snap.calls_launched_last_s)
        if room <= 0:
            return 0
        now, threshold = snap.now, snap.abandon_threshold_s
        free = self.foresight.agents_free_at(now)
        offers = self.foresight.offers_due(now)
        lost = abandons(offers, free, threshold)  # calls already placed that no agent will take in time
        launched = 0
        for offer in self.foresight.upcoming_offers(now):
            if launched >= room:
                break
            if offer is not None:
                trial = offers.copy()
                bisect.insort(trial, offer)
                if abandons(trial, free, threshold) > lost:
                    break  # the next dial would reach a person nobody can take: wait (calls go out in order)
                offers = trial
            launched += 1
        return launched


def abandons(offers: list[float], free: list[float], threshold: float) -> int:
    """How many offers (sorted) no agent takes within `threshold`, agents (sorted free times) serving the
    oldest waiting call first, as the core routes. Each agent takes at most one of them: an agent's next
    call lasts far longer than the horizon this looks at."""
    lost = 0
    j = 0
    for t in offers:
        if j < len(free) and free[j] <= t + threshold:
            j += 1
        else:
            lost += 1
    return lost
