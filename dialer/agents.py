"""Agents: states, time in state, and who may take which call."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dialer.model import AgentStatus, Attempt, Lead

# States that count as logged-in time for occupancy (pauses excluded: DESIGN.md, Words and figures).
_WORKING = (AgentStatus.READY, AgentStatus.ON_CALL, AgentStatus.WRAPUP, AgentStatus.PREVIEW)


@dataclass(slots=True)
class Agent:
    agent_id: str
    campaigns: frozenset[str] = frozenset()  # empty: every campaign
    skills: dict[str, int] = field(default_factory=dict)  # skill → level (higher is better)
    status: AgentStatus = AgentStatus.LOGGED_OUT
    since: float = 0.0
    reason: str = ""
    call_id: str | None = None
    last_call_id: str | None = None
    last_campaign_id: str | None = None
    connected_at: float | None = None
    wrap_started_at: float | None = None
    logout_requested: bool = False
    pause_requested: str | None = None
    preview: Lead | None = None  # preview mode: the lead on the agent's screen
    preview_campaign: str | None = None
    preview_pick: Any = None  # the hopper's pick behind `preview` (number chosen and why)
    last_attempt: Attempt | None = None  # the call being (or last) handled: dispositions apply to it
    connects: int = 0
    rejoins: int = 0  # consecutive unexpected leg drops (reset when the leg is back)
    rejoin_gen: int = 0  # the live rejoin request; older rejoin timers are void
    leg_gen: int = 0  # the live wait for word of the agent's leg (originated or hung up); older leg timers are void
    time_in: dict[AgentStatus, float] = field(default_factory=dict)

    def serves(self, campaign_id: str, skill: str | None = None) -> bool:
        if skill is not None and skill not in self.skills:
            return False
        return not self.campaigns or campaign_id in self.campaigns


# States in which an agent is on the floor for the pacers: shared out between running campaigns (the core's
# `_agent_owners`) and counted in lines per agent.
SHARED_STATES = (AgentStatus.READY, AgentStatus.ON_CALL, AgentStatus.WRAPUP)


class AgentBoard:
    def __init__(self) -> None:
        self._agents: dict[str, Agent] = {}
        # Ready agents in the order they became ready (= longest idle first): picking is O(1) per call.
        self._ready: dict[str, Agent] = {}
        # Counts changes to who is shared out (an agent entering or leaving those states, a login with new
        # campaigns or skills), so the core recomputes the split only then, not on every pacing decision.
        self.sharing_version = 0

    def get(self, agent_id: str) -> Agent | None:
        return self._agents.get(agent_id)

    def all(self) -> Iterable[Agent]:
        return self._agents.values()

    def set_status(self, agent: Agent, status: AgentStatus, now: float, reason: str = "") -> None:
        agent.time_in[agent.status] = agent.time_in.get(agent.status, 0.0) + max(0.0, now - agent.since)
        if (agent.status in SHARED_STATES) != (status in SHARED_STATES):
            self.sharing_version += 1
        agent.status = status
        agent.since = now
        agent.reason = reason
        self._ready.pop(agent.agent_id, None)
        if status is AgentStatus.READY:
            self._ready[agent.agent_id] = agent

    def login(self, agent_id: str, campaigns: frozenset[str], now: float,
              skills: dict[str, int] | None = None) -> Agent:
        agent = self._agents.get(agent_id)
        if agent is None:
            agent = self._agents[agent_id] = Agent(agent_id=agent_id, since=now)
        agent.campaigns = campaigns
        agent.skills = dict(skills or {})
        self.sharing_version += 1
        agent.logout_requested = False
        if agent.status is AgentStatus.LOGGED_OUT:
            self.set_status(agent, AgentStatus.CONNECTING, now)
        return agent

    def connected(self, agent_id: str, now: float) -> Agent:
        agent = self._agents.get(agent_id)
        if agent is None:  # a leg we did not ask for (e.g. found in a resync): the agent works for every campaign
            agent = self._agents[agent_id] = Agent(agent_id=agent_id, since=now)
        if agent.status in (AgentStatus.LOGGED_OUT, AgentStatus.CONNECTING):
            self.set_status(agent, AgentStatus.READY, now)
        agent.rejoins = 0
        return agent

    def assign(self, agent: Agent, call_id: str, campaign_id: str, now: float) -> None:
        self.set_status(agent, AgentStatus.ON_CALL, now)
        agent.call_id = call_id
        agent.last_campaign_id = campaign_id
        agent.last_call_id = call_id
        agent.connected_at = now
        agent.wrap_started_at = None
        agent.connects += 1

    def start_wrapup(self, agent: Agent, now: float) -> None:
        self.set_status(agent, AgentStatus.WRAPUP, now)
        agent.call_id = None
        agent.wrap_started_at = now

    def pick_free(self, campaign_id: str, skill: str | None = None,
                  owners: Mapping[str, str] | None = None) -> Agent | None:
        """The ready agent serving the campaign: with the campaign's skill at the best level, then one the
        campaign paces for (`owners`: agents shared out between campaigns, see the core), then idle longest.
        Another campaign's agent still takes the call rather than let it wait."""
        def rank(agent: Agent) -> tuple[int, bool]:
            return (agent.skills[skill] if skill is not None else 0,
                    not owners or owners.get(agent.agent_id, campaign_id) == campaign_id)

        best: Agent | None = None
        best_rank = (0, False)
        for agent in self._ready.values():  # longest idle first: a later agent wins only when it ranks higher
            if agent.serves(campaign_id, skill):
                r = rank(agent)
                if best is None or r > best_rank:
                    best, best_rank = agent, r
                    if skill is None and r[1]:
                        break  # nothing ranks higher
        return best

    def serving(self, campaign_id: str, skill: str | None = None) -> Iterable[Agent]:
        if skill is None:  # the common case, kept cheap: it runs on every pacing decision
            return [a for a in self._agents.values() if not a.campaigns or campaign_id in a.campaigns]
        return [a for a in self._agents.values() if a.serves(campaign_id, skill)]

    def campaigns_of(self, agent: Agent, skills: Mapping[str, str | None]) -> list[str]:
        """The campaigns (id → skill they need) this agent may take calls from."""
        return [cid for cid, skill in skills.items() if agent.serves(cid, skill)]

    def counts(self, campaign_id: str, skill: str | None = None) -> dict[str, int]:
        out = {s.value: 0 for s in AgentStatus}
        for agent in self.serving(campaign_id, skill):
            out[agent.status.value] += 1
        return out

    def occupancy(self, campaign_id: str, now: float, skill: str | None = None) -> dict[str, float]:
        """Occupancy = talk / (ready + talk + wrap-up); idle per connect = ready time / connects."""
        talk = ready = wrap = 0.0
        connects = 0
        for agent in self.serving(campaign_id, skill):
            spent = dict(agent.time_in)
            spent[agent.status] = spent.get(agent.status, 0.0) + max(0.0, now - agent.since)
            talk += spent.get(AgentStatus.ON_CALL, 0.0)
            ready += spent.get(AgentStatus.READY, 0.0)
            wrap += spent.get(AgentStatus.WRAPUP, 0.0) + spent.get(AgentStatus.PREVIEW, 0.0)
            connects += agent.connects
        logged = talk + ready + wrap
        return {
            "occupancy": talk / logged if logged > 0 else 0.0,
            "idle_per_connect_s": ready / connects if connects else 0.0,
            "talk_s": talk,
            "ready_s": ready,
            "wrapup_s": wrap,
        }
