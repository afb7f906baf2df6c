"""`oracle`: the upper bound. It knows every future caller's fate (from the simulator's drawn-ahead fates)
and when every busy agent will be free, and launches a call only when its person will find an agent.

Only the simulator can offer this foresight, so the oracle is chosen by name there, not in the registry.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

from dialer.model import AgentStatus
from pacing.snapshot import Observation, PacingCaps, PacingSnapshot

if TYPE_CHECKING:
    from sim.des.simulation import Simulation


class Oracle:
    name = "oracle"

    def __init__(self, sim: Simulation, caps: PacingCaps) -> None:
        self.sim = sim
        self.caps = caps

    def observe(self, obs: Observation) -> None:
        pass  # it needs no estimates: it knows

    def _reaches_agent(self, kind: str, amd_says_machine: bool) -> bool:
        return kind in ("live", "machine") and not amd_says_machine

    def decide(self, snap: PacingSnapshot) -> int:
        if snap.agents_logged_in <= 0:
            return 0
        sim, now = self.sim, snap.now
        lines = len(snap.ringing_elapsed) + snap.waiting_calls
        room = min(self.caps.max_lines - lines, int(self.caps.max_lines_per_agent * snap.agents_logged_in) - lines,
                   int(self.caps.max_calls_per_s) - snap.calls_launched_last_s)
        if room <= 0:
            return 0
        free: list[float] = []
        for agent in sim.core.agents.serving("sim"):
            if agent.status is AgentStatus.READY:
                free.append(now)
            elif agent.status in (AgentStatus.ON_CALL, AgentStatus.WRAPUP):
                free.append(max(now, sim.agent_free_at.get(agent.agent_id, now)))
        free.sort()
        detect = sim.sc.amd.detect_s if sim.sc.amd.enabled else 0.0
        demand: list[float] = []
        for call in sim.calls.values():
            if call.state == "waiting":
                demand.append(now)
            elif call.state == "ringing" and self._reaches_agent(call.fate.kind, call.fate.amd_says_machine):
                demand.append(call.dialed_at + call.fate.answer_s + detect)
        demand.sort()
        threshold = snap.abandon_threshold_s
        launched = 0
        for fate in sim.next_fates(room):
            if self._reaches_agent(fate.kind, fate.amd_says_machine):
                t = now + fate.answer_s + detect
                trial = demand.copy()
                bisect.insort(trial, t)
                if not _servable(trial, free, threshold):
                    break
                demand = trial
            launched += 1
        return launched


def _servable(answers: list[float], free: list[float], threshold: float) -> bool:
    """Each answer (in time order) takes the next agent to free up; it must be free within the threshold."""
    if len(answers) > len(free):
        return False
    return all(f <= a + threshold for a, f in zip(answers, free, strict=False))
