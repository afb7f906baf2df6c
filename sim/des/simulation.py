"""The call centre in virtual time around the real `DialerCore`.

The simulator plays the PBX, the agents and the people called: it feeds the core the events Asterisk would
(answers, failures, hang-ups, agents' legs and wrap-ups) at virtual times, and carries out the core's
commands. Pacing, routing and the abandon threshold are the core's own, exactly as in production.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from dialer.commands import (
    Command,
    ConnectToAgent,
    Emit,
    FetchLeads,
    Hangup,
    HangupAgentLeg,
    Originate,
    OriginateAgentLeg,
    PlayAbandonMessage,
    RecordAttempt,
)
from dialer.core import CoreConfig, DialerCore
from dialer.events import (
    AgentConnected,
    AgentDisconnected,
    AgentJoinedCall,
    AgentLogin,
    AgentLogout,
    AgentState,
    CallAnswered,
    CallEnded,
    CallFailed,
    CampaignControl,
    Event,
    LeadsAvailable,
)
from dialer.model import AgentStatus, Attempt, CampaignSettings, Lead, Outcome
from pacing.registry import make_strategy
from pacing.snapshot import PacingCaps, PacingStrategy
from sim.des.kernel import Kernel
from sim.scenario import CallFate, Scenario, draw_fate

CAMPAIGN = "sim"
EPOCH = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)  # virtual t=0 (a Monday morning) for timestamps in logs
ABANDON_MESSAGE_S = 2.0
FATE_LOOKAHEAD = 256  # fates drawn ahead of dialing, so the oracle can see the callers to come


@dataclass(slots=True)
class SimCall:
    call_id: str
    fate: CallFate
    dialed_at: float
    state: str = "ringing"  # ringing | waiting | connected | ended


@dataclass
class SimResult:
    summary: dict[str, Any]
    attempts: list[Attempt]
    series: list[dict[str, float]] = field(default_factory=list)


class Simulation:
    def __init__(
        self,
        scenario: Scenario,
        strategy: str = "erlang",
        *,
        seed: int | None = None,
        duration_s: float | None = None,
        agents: int | None = None,
        ratio: float | None = None,
        extra: dict[str, Any] | None = None,
        tick_s: float = 1.0,
        series_every_s: float = 60.0,
        progress: Callable[[float], None] | None = None,
    ) -> None:
        self.sc = scenario
        self.strategy_name = strategy
        self.seed = scenario.seed if seed is None else seed
        self.duration = scenario.duration_s if duration_s is None else duration_s
        self.agent_override = agents
        self.tick_s = tick_s
        self.series_every_s = series_every_s
        self.progress = progress
        self.kernel = Kernel()
        self.rng_calls = np.random.default_rng([self.seed, 1])
        self.rng_agents = np.random.default_rng([self.seed, 2])
        self.fates: deque[CallFate] = deque()
        self.calls: dict[str, SimCall] = {}
        self.attempts: list[Attempt] = []
        self.series: list[dict[str, float]] = []
        self.agent_free_at: dict[str, float] = {}  # when each busy agent will be free (oracle foresight)
        self._wrap: dict[str, float] = {}
        self._logged: list[str] = []
        self._agent_seq = 0
        self._lead_seq = 0
        self._deadline: float | None = None
        caps = PacingCaps(max_lines=100_000, max_lines_per_agent=scenario.campaign.max_lines_per_agent,
                          max_calls_per_s=scenario.campaign.max_calls_per_s,
                          abandon_target=scenario.campaign.abandon_target)
        if ratio is not None:
            caps.extra["ratio"] = ratio
        caps.extra.update(extra or {})
        self.strategy = self._make_strategy(strategy, caps)
        self.core = DialerCore(CoreConfig(id_prefix="sim", strategy_factory=lambda _n, _c: self.strategy,
                                          hopper_low_water=64, hopper_batch=256))
        self.core.add_campaign(CampaignSettings(
            campaign_id=CAMPAIGN, strategy=strategy, abandon_target=scenario.campaign.abandon_target,
            abandon_threshold_s=scenario.campaign.abandon_threshold_s,
            ring_timeout_s=scenario.calls.no_answer_timeout_s, wrapup_s=1e12,  # wrap-ups end by the agents
            max_lines=100_000, max_lines_per_agent=scenario.campaign.max_lines_per_agent,
            max_calls_per_s=scenario.campaign.max_calls_per_s, amd=scenario.amd.enabled))

    def _make_strategy(self, name: str, caps: PacingCaps) -> PacingStrategy:
        if name == "oracle":
            from sim.oracle import Oracle

            return Oracle(self, caps)
        return make_strategy(name, caps)

    # ------------------------------------------------------------------ running

    def run(self) -> SimResult:
        started = time.perf_counter()
        k = self.kernel
        self._staff(0.0)
        for change in self.sc.agents.schedule:
            if 0 < change.at_s < self.duration and self.agent_override is None:
                k.at(change.at_s, self._staff, change.at_s)
        self._feed(CampaignControl(CAMPAIGN, "start"))
        k.at(0.0, self._tick)
        k.at(0.0, self._sample)
        k.run_until(self.duration)
        wall = time.perf_counter() - started
        return SimResult(self._summary(wall), self.attempts, self.series)

    def _feed(self, event: Event) -> None:
        self._run(self.core.handle(event, self.kernel.now))

    def _tick(self) -> None:
        now = self.kernel.now
        self._run(self.core.tick(now))
        if now + self.tick_s < self.duration:
            self.kernel.at(now + self.tick_s, self._tick)
        if self.progress is not None:
            self.progress(now)

    def _core_timers(self) -> None:
        self._deadline = None
        self._run(self.core.tick(self.kernel.now))

    def _schedule_deadline(self) -> None:
        due = self.core.next_deadline()
        if due is not None and (self._deadline is None or due < self._deadline):
            self._deadline = due
            self.kernel.at(due, self._core_timers)

    # ------------------------------------------------------------------ staffing

    def _staff(self, t: float) -> None:
        want = self.agent_override if self.agent_override is not None else self.sc.agents.count_at(t)
        while len(self._logged) < want:
            self._agent_seq += 1
            agent_id = f"a{self._agent_seq:04d}"
            self._logged.append(agent_id)
            self._feed(AgentLogin(agent_id))
        while len(self._logged) > want:
            self._feed(AgentLogout(self._logged.pop()))

    # ------------------------------------------------------------------ commands of the core

    def _run(self, cmds: list[Command]) -> None:
        k = self.kernel
        for cmd in cmds:
            if isinstance(cmd, Originate):
                self._originate(cmd)
            elif isinstance(cmd, ConnectToAgent):
                self._connect(cmd)
            elif isinstance(cmd, PlayAbandonMessage):
                k.after(ABANDON_MESSAGE_S, self._ended, cmd.call_id)
            elif isinstance(cmd, Hangup):
                k.after(0.0, self._ended, cmd.call_id)
            elif isinstance(cmd, OriginateAgentLeg):
                k.after(0.0, self._feed, AgentConnected(cmd.agent_id))
            elif isinstance(cmd, HangupAgentLeg):
                k.after(0.0, self._feed, AgentDisconnected(cmd.agent_id))
            elif isinstance(cmd, FetchLeads):
                k.after(0.0, self._feed, LeadsAvailable(cmd.campaign_id, self._leads(cmd.count)))
            elif isinstance(cmd, RecordAttempt):
                if cmd.attempt.outcome is not None:
                    self.attempts.append(cmd.attempt)
            elif isinstance(cmd, Emit) and cmd.kind == "agent.state" and cmd.data["state"] == AgentStatus.WRAPUP:
                agent_id = cmd.data["agent_id"]
                wrap = self._wrap.pop(agent_id, None)
                if wrap is None:
                    wrap = self.sc.agents.wrapup_s.sample(self.rng_agents)
                k.after(wrap, self._feed, AgentState(agent_id, AgentStatus.READY))
        self._schedule_deadline()

    def _leads(self, count: int) -> tuple[Lead, ...]:
        out = []
        for _ in range(count):
            self._lead_seq += 1
            out.append(Lead(f"L{self._lead_seq:07d}", CAMPAIGN, (f"+1555{self._lead_seq:07d}",)))
        return tuple(out)

    def next_fates(self, n: int) -> list[CallFate]:
        """The callers the next `n` dials will reach (drawn ahead; the oracle's foresight)."""
        while len(self.fates) < max(n, FATE_LOOKAHEAD):
            self.fates.append(draw_fate(self.sc, self.rng_calls, self.kernel.now))
        return list(self.fates)[:n]

    def _originate(self, cmd: Originate) -> None:
        if not self.fates:
            self.next_fates(1)
        fate = self.fates.popleft()
        call = SimCall(cmd.call_id, fate, self.kernel.now)
        self.calls[cmd.call_id] = call
        k = self.kernel
        timeout = self.sc.calls.no_answer_timeout_s
        if fate.kind in ("live", "machine"):
            delay = fate.answer_s + (self.sc.amd.detect_s if self.sc.amd.enabled else 0.0)
            k.after(delay, self._answer, call)
        elif fate.kind == "busy":
            k.after(fate.answer_s, self._failed, call, Outcome.BUSY, 17)
        elif fate.kind == "fail":
            k.after(fate.answer_s, self._failed, call, Outcome.FAILED, 1)
        else:
            k.after(timeout, self._failed, call, Outcome.NO_ANSWER, 19)

    def _answer(self, call: SimCall) -> None:
        if call.state != "ringing":
            return
        call.state = "waiting"
        amd = "MACHINE" if call.fate.amd_says_machine else "HUMAN"
        self._feed(CallAnswered(call.call_id, amd))
        if call.state == "waiting" and math.isfinite(call.fate.patience_s) and amd == "HUMAN":
            self.kernel.after(call.fate.patience_s, self._gave_up, call)

    def _gave_up(self, call: SimCall) -> None:
        if call.state == "waiting":  # still nobody: the person hangs up
            self._ended(call.call_id)

    def _failed(self, call: SimCall, outcome: Outcome, cause: int) -> None:
        if call.state == "ringing":
            call.state = "ended"
            self.calls.pop(call.call_id, None)
            self._feed(CallFailed(call.call_id, outcome, cause))

    def _connect(self, cmd: ConnectToAgent) -> None:
        call = self.calls.get(cmd.call_id)
        if call is None:
            return
        call.state = "connected"
        now = self.kernel.now
        # A machine put through to an agent: the agent hears a greeting and hangs up.
        talk = call.fate.talk_s if call.fate.kind == "live" else min(call.fate.talk_s, 15.0)
        wrap = self.sc.agents.wrapup_s.sample(self.rng_agents)
        self._wrap[cmd.agent_id] = wrap
        self.agent_free_at[cmd.agent_id] = now + talk + wrap
        self.kernel.after(0.0, self._feed, AgentJoinedCall(cmd.call_id, cmd.agent_id))
        self.kernel.after(talk, self._ended, cmd.call_id)

    def _ended(self, call_id: str) -> None:
        call = self.calls.pop(call_id, None)
        if call is None:
            return
        call.state = "ended"
        self._feed(CallEnded(call_id, 16))

    # ------------------------------------------------------------------ figures

    def _sample(self) -> None:
        now = self.kernel.now
        stats = self.core.stats(CAMPAIGN, now)
        agents = stats["agents"]
        logged = agents["ready"] + agents["on_call"] + agents["wrapup"]
        lines = stats["in_flight"] + stats["waiting"]
        row = {"t": now, "abandon_rate": stats["abandon_rate"], "occupancy": stats["occupancy"],
               "lines_per_agent": lines / logged if logged else 0.0, **{f"agents_{k}": float(v)
                                                                         for k, v in agents.items()}}
        alpha = getattr(self.strategy, "state", None)
        if callable(alpha):
            row["alpha"] = float(alpha().get("alpha", float("nan")))
        self.series.append(row)
        if now + self.series_every_s <= self.duration:
            self.kernel.at(now + self.series_every_s, self._sample)

    def _summary(self, wall: float) -> dict[str, Any]:
        end = self.duration
        stats = self.core.stats(CAMPAIGN, end)
        by: dict[str, int] = {}
        hourly: dict[int, list[int]] = {}
        for a in self.attempts:
            out = a.outcome.value if a.outcome else "none"
            by[out] = by.get(out, 0) + 1
            if a.outcome is not None and a.outcome.live and a.answered_at is not None:
                h = hourly.setdefault(int(a.answered_at // 3600), [0, 0])
                h[0] += 1
                h[1] += a.outcome is Outcome.ABANDONED
        live = by.get("connected", 0) + by.get("abandoned", 0)
        abandoned = by.get("abandoned", 0)
        max_hourly = max((ab / n for n, ab in hourly.values() if n), default=0.0)
        return {
            "scenario": self.sc.name,
            "strategy": self.strategy_name,
            "seed": self.seed,
            "agents": self.agent_override if self.agent_override is not None else self.sc.agents.count,
            "sim_seconds": end,
            "wall_seconds": round(wall, 3),
            "attempts": len(self.attempts),
            "live_answers": live,
            "connected": by.get("connected", 0),
            "abandoned": abandoned,
            "abandon_rate": round(abandoned / live, 5) if live else 0.0,
            "max_hourly_abandon_rate": round(max_hourly, 5),
            "occupancy": round(stats["occupancy"], 5),
            "idle_per_connect_s": round(stats["idle_per_connect_s"], 3),
            "outcomes": dict(sorted(by.items())),
        }


def iso(t: float | None) -> str | None:
    return None if t is None else (EPOCH + timedelta(seconds=t)).isoformat()


def attempt_row(a: Attempt) -> dict[str, Any]:
    return {"call_id": a.call_id, "lead_id": a.lead_id, "number": a.number, "caller_id": a.caller_id,
            "dialed_at": iso(a.dialed_at), "answered_at": iso(a.answered_at), "connected_at": iso(a.connected_at),
            "ended_at": iso(a.ended_at), "outcome": a.outcome.value if a.outcome else None, "agent_id": a.agent_id}
