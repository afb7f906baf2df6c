"""The call centre in virtual time around the real `DialerCore`.

The simulator plays the PBX, the agents and the people called: it feeds the core the events Asterisk and the
agents would (answers with AMD verdicts, failures, hang-ups, agents' legs, the end of wrap-ups) at virtual
times, carries out the core's commands, and calls `core.tick` on a pacing cadence and at the core's own
deadlines. Pacing, routing and the abandon threshold are the core's own, exactly as in production.
"""

from __future__ import annotations

import gc
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

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
    DncAdd,
    Event,
    LeadRemoved,
    LeadsAvailable,
)
from dialer.model import AgentStatus, Attempt, CampaignSettings, Lead, Outcome
from pacing.registry import STRATEGIES, make_strategy
from pacing.snapshot import PacingCaps, PacingStrategy
from sim.debtors import DebtorFileError, generate_leads, read_leads, read_timed
from sim.des.kernel import Kernel
from sim.oracle import NAME as ORACLE
from sim.oracle import Oracle
from sim.scenario import CallFate, CampaignEntry, Scenario, draw_fate, random_streams

CAMPAIGN = "sim"
EPOCH = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)  # virtual t=0 (a Monday, 08:00) for timestamps in logs
ANSWERING = ("live", "machine")
READY, ON_CALL, WRAPUP = AgentStatus.READY.value, AgentStatus.ON_CALL.value, AgentStatus.WRAPUP.value
LOGGED_OUT = AgentStatus.LOGGED_OUT.value
WORKING = frozenset({READY, ON_CALL, WRAPUP})
# The far end's failure signals, as the AMI bridge would classify them (outcome, Q.850 cause).
FAILURES = {"busy": (Outcome.BUSY, 17), "fail": (Outcome.CONGESTION, 34), "no_answer": (Outcome.NO_ANSWER, 19)}


def strategy_names() -> list[str]:
    """Every strategy the simulator can run: the registry's, plus the oracle (simulator only)."""
    return [*STRATEGIES, ORACLE]


def override_problems(*, seed: int | None = None, duration_s: float | None = None, tick_s: float | None = None,
                      agents: int | None = None, ratio: float | None = None) -> list[tuple[str, str]]:
    """(field, what is wrong) for each run override outside the bounds a scenario file has for the same field
    (a tick of 0 would never advance the clock)."""
    problems = []
    if seed is not None and seed < 0:
        problems.append(("seed", f"must be 0 or more (got {seed})"))
    if duration_s is not None and not (math.isfinite(duration_s) and duration_s > 0):
        problems.append(("duration_s", f"must be more than 0 seconds (got {duration_s:g})"))
    if tick_s is not None and not (math.isfinite(tick_s) and 0 < tick_s <= 60):
        problems.append(("tick_s", f"must be more than 0 and at most 60 seconds (got {tick_s:g})"))
    if agents is not None and not 0 <= agents <= 100_000:
        problems.append(("agents", f"must be 0 to 100000 (got {agents})"))
    if ratio is not None and not (math.isfinite(ratio) and ratio > 0):
        problems.append(("ratio", f"lines per ready agent must be more than 0 (got {ratio:g})"))
    return problems


@dataclass(slots=True)
class SimCall:
    call_id: str
    fate: CallFate
    dialed_at: float
    offer_at: float | None  # when the core will be offered a person for an agent (None: never)
    state: str = "ringing"  # ringing | waiting | machine | connected | abandoning


@dataclass(slots=True)
class SimAgent:
    agent_id: str
    state: str = AgentStatus.CONNECTING.value  # as the core last announced it
    leaving: bool = False  # logout asked: finishes its call, takes no other
    free_at: float = 0.0  # end of the current call + wrap-up (known at connect: the oracle's foresight)
    wrap_s: float | None = None  # the wrap-up this agent will take after its current call


@dataclass
class SimResult:
    summary: dict[str, Any]
    attempts: list[Attempt]
    series: list[dict[str, float]] = field(default_factory=list)
    refusals: list[dict[str, Any]] = field(default_factory=list)  # the gates' refusals, in order
    start: datetime = EPOCH  # wall-clock time of t = 0


class Simulation:
    """One shift of one strategy. Also the oracle's `Foresight` (sim.oracle): it knows what comes."""

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
        tick_s: float | None = None,
        series_every_s: float = 60.0,
        progress: Callable[[float], None] | None = None,
    ) -> None:
        problems = override_problems(seed=seed, duration_s=duration_s, tick_s=tick_s, agents=agents, ratio=ratio)
        if problems:
            raise ValueError("; ".join(f"{name}: {why}" for name, why in problems))
        self.sc = scenario
        self.strategy_name = strategy
        self.seed = scenario.seed if seed is None else seed
        self.duration = scenario.duration_s if duration_s is None else duration_s
        self.agent_override = agents
        self.tick_s = scenario.pacing_tick_s if tick_s is None else tick_s
        self.series_every_s = series_every_s
        self.progress = progress
        self.detect_s = scenario.amd.detect_s if scenario.amd.enabled else 0.0
        self.kernel = Kernel()
        self.rng_calls, self.rng_agents = random_streams(self.seed)
        self.calls: dict[str, SimCall] = {}
        self.agents: dict[str, SimAgent] = {}  # logged in (or logging in/out)
        self.attempts: list[Attempt] = []
        self.series: list[dict[str, float]] = []
        self._fates: deque[CallFate] = deque()  # drawn ahead only when the oracle looks ahead
        self._roster: list[str] = []  # agents the schedule keeps logged in, in login order
        self._horizon_s = 0.0  # how far ahead the oracle looks: the longest a call placed now takes to reach an agent
        self._agent_seq = 0
        self._lead_seq = 0
        self._deadline: float | None = None  # the core deadline the kernel will wake us for
        self._last_occ: tuple[float, float] = (0.0, 0.0)  # (talk, logged) at the last sample
        # The core lives in real time (its gates read calendars): t = 0 is the scenario's `start`.
        self.start = scenario.start or EPOCH
        self.base = self.start.timestamp()
        self.refusals: list[dict[str, Any]] = []
        self.entries = scenario.campaign_entries()
        self.campaign_ids = [e.id for e in self.entries]
        if strategy == ORACLE and len(self.entries) > 1:
            raise ValueError("strategy: the oracle plans for the whole floor: run it on a single-campaign scenario")
        # Each campaign's own debtors (None: an endless made-up list); leads the intake held back (no single zone).
        self._leads: dict[str, deque[Lead] | None] = {}
        self.held: list[Any] = []
        for entry in self.entries:
            self._leads[entry.id] = deque(self._load_leads(entry)) if entry.leads is not None else None
        camp = scenario.campaign
        caps = PacingCaps(max_lines=100_000, max_lines_per_agent=camp.max_lines_per_agent,
                          max_calls_per_s=camp.max_calls_per_s, abandon_target=camp.abandon_target)
        if ratio is not None:
            caps.extra["ratio"] = ratio
        caps.extra.update(extra or {})
        self.strategy = self._make_strategy(strategy, caps)
        self.core = DialerCore(CoreConfig(id_prefix="sim", strategy_factory=lambda _n, _c: self.strategy,
                                          hopper_low_water=64, hopper_batch=256, checkpoint_leads=False))
        # wrapup_s=None: wrap-ups end when the simulated agent says so, never by the core's timer (none is set).
        for i, entry in enumerate(self.entries):
            self.core.add_campaign(CampaignSettings(
                campaign_id=entry.id, name=scenario.name, strategy=strategy, abandon_target=camp.abandon_target,
                abandon_threshold_s=camp.abandon_threshold_s, ring_timeout_s=scenario.calls.no_answer_timeout_s,
                wrapup_s=None, max_lines=100_000, max_lines_per_agent=camp.max_lines_per_agent,
                max_calls_per_s=camp.max_calls_per_s, amd=scenario.amd.enabled, rule_set=entry.rule_set,
                rule_overrides=dict(entry.rule_overrides), did_pool=list(entry.did_pool),
                did_hour_cap=entry.did_hour_cap, did_day_cap=entry.did_day_cap, hopper=dict(entry.recycle),
                weight=entry.weight))
            if i:  # a pacer of its own for each further campaign (they share the agents by weight)
                self.core.set_strategy(entry.id, make_strategy(strategy, caps))
        # How long the core rings (a rule set's minimum ring may lengthen the scenario's timeout): the oracle's
        # fates drawn ahead are judged on it, like every fate at its Originate.
        self._ring_s = self.core.campaigns[self.campaign_ids[0]].settings.ring_timeout_s
        self._horizon_s = self._ring_s + self.detect_s + scenario.campaign.abandon_threshold_s
        self._handlers: dict[type, Callable[[Any], None]] = {
            Originate: self._originate, ConnectToAgent: self._connect, PlayAbandonMessage: self._play_abandon,
            Hangup: self._hangup, OriginateAgentLeg: self._agent_leg_up, HangupAgentLeg: self._agent_leg_down,
            FetchLeads: self._fetch_leads, RecordAttempt: self._record, Emit: self._emit,
        }

    def _make_strategy(self, name: str, caps: PacingCaps) -> PacingStrategy:
        if name == ORACLE:
            return Oracle(self, caps)
        return make_strategy(name, caps)

    def use_strategy(self, strategy: PacingStrategy) -> None:
        """Pace a single-campaign shift with `strategy` instead (benchmarks that instrument or inform a model)."""
        if len(self.campaign_ids) > 1:
            raise ValueError("strategy: only a single-campaign simulation takes a strategy object")
        self.strategy = strategy
        self.core.set_strategy(self.campaign_ids[0], strategy)

    # ------------------------------------------------------------------ running

    def run(self) -> SimResult:
        with _rare_gc_passes():
            return self._run_shift()

    def _run_shift(self) -> SimResult:
        started = time.perf_counter()
        k = self.kernel
        self._staff(0.0)
        if self.agent_override is None:
            for change in self.sc.agents.schedule:
                if 0 < change.at_s <= self.duration:
                    k.at(change.at_s, self._staff, change.at_s)
        self._paperwork()
        for cid in self.campaign_ids:
            self._feed(CampaignControl(cid, "start"))
        k.at(0.0, self._tick)
        k.at(0.0, self._sample)
        k.run_until(self.duration)
        if not self.series or self.series[-1]["t"] < self.duration:
            self._sample(reschedule=False)
        log = self._attempt_log()
        return SimResult(self._summary(log, time.perf_counter() - started), log, self.series, self.refusals,
                         self.start)

    def _load_leads(self, entry: CampaignEntry) -> list[Lead]:
        spec = entry.leads
        assert spec is not None
        if spec.generator is not None:
            g = spec.generator
            return generate_leads(entry.id, g.count, g.countries, g.segments, g.phones,
                                  self.seed if g.seed is None else g.seed)
        assert spec.file is not None
        leads, report = read_leads(self.sc.path(spec.file), entry.id)
        if report.rejected:
            first = report.rejected[0]
            raise DebtorFileError(f"{spec.file}: {len(report.rejected)} row(s) rejected; first: row {first.row}: "
                                  f"{first.field}: {first.reason}")
        self.held += report.held
        return leads

    def _paperwork(self) -> None:
        """DNC additions and paid-today removals, each delivered to the core at its time (before: at once)."""
        sc = self.sc
        for entry in self.entries:
            if entry.dnc is not None:
                for row in read_timed(sc.path(entry.dnc.file), "number", "added_at"):
                    self.kernel.at(max(0.0, row.at - self.base), self._feed, DncAdd(row.key, entry.id, row.at))
            if entry.removals is not None:
                for row in read_timed(sc.path(entry.removals.file), "lead_id", "removed_at"):
                    self.kernel.at(max(0.0, row.at - self.base), self._feed, LeadRemoved(entry.id, row.key))

    def _feed(self, event: Event) -> None:
        self._run(self.core.handle(event, self.kernel.now + self.base))

    def _tick(self) -> None:
        now = self.kernel.now
        self._run(self.core.tick(now + self.base))
        if now + self.tick_s <= self.duration:
            self.kernel.at(now + self.tick_s, self._tick)
        if self.progress is not None:
            self.progress(now)

    def _schedule_deadline(self) -> None:
        due = self.core.next_deadline()
        if due is not None:
            due -= self.base
        if due is not None and due <= self.duration and (self._deadline is None or due < self._deadline):
            self._deadline = due
            self.kernel.at(due, self._on_deadline, due)

    def _on_deadline(self, due: float) -> None:
        if due != self._deadline:
            return  # an earlier deadline came first and its tick already woke the core
        self._deadline = None
        due_now = self.core.next_deadline()
        if due_now is not None and due_now - self.base <= self.kernel.now:
            self._run(self.core.tick(self.kernel.now + self.base))
        else:  # that timer died meanwhile (the call was connected): like the runtime, do not wake the core
            self._schedule_deadline()

    def _run(self, cmds: list[Command]) -> None:
        handlers = self._handlers
        for cmd in cmds:
            handler = handlers.get(type(cmd))
            if handler is not None:
                handler(cmd)
        self._schedule_deadline()

    # ------------------------------------------------------------------ agents

    def _staff(self, t: float) -> None:
        want = self.agent_override if self.agent_override is not None else self.sc.agents.count_at(t)
        while len(self._roster) < want:
            self._agent_seq += 1
            agent_id = f"a{self._agent_seq:04d}"
            self._roster.append(agent_id)
            self.agents[agent_id] = SimAgent(agent_id)
            self._feed(AgentLogin(agent_id))
        while len(self._roster) > want:
            agent_id = self._roster.pop()  # the last in leave first
            self.agents[agent_id].leaving = True
            self._feed(AgentLogout(agent_id))

    def _agent_leg_up(self, cmd: OriginateAgentLeg) -> None:
        self.kernel.after(0.0, self._feed, AgentConnected(cmd.agent_id))

    def _agent_leg_down(self, cmd: HangupAgentLeg) -> None:
        self.kernel.after(0.0, self._feed, AgentDisconnected(cmd.agent_id))

    def _emit(self, cmd: Emit) -> None:
        if cmd.kind == "dial.refused":
            self.refusals.append({**cmd.data, "at": iso(self.kernel.now, self.start)})
            return
        if cmd.kind != "agent.state":
            return
        agent = self.agents.get(cmd.data["agent_id"])
        if agent is None:
            return
        state = agent.state = cmd.data["state"]
        if state == WRAPUP:
            # The agent types its notes for the wrap-up drawn when the call began, then says it is ready.
            wrap = agent.wrap_s if agent.wrap_s is not None else self.sc.agents.wrapup_s.sample(self.rng_agents)
            agent.wrap_s = None
            self.kernel.after(wrap, self._feed, AgentState(agent.agent_id, AgentStatus.READY))
        elif state == LOGGED_OUT:
            del self.agents[agent.agent_id]

    # ------------------------------------------------------------------ calls

    def _fetch_leads(self, cmd: FetchLeads) -> None:
        leads = []
        own = self._leads.get(cmd.campaign_id)
        if own is not None:  # the campaign's own debtors, until there are no more
            for _ in range(min(cmd.count, len(own))):
                leads.append(own.popleft())
            self.kernel.after(0.0, self._feed, LeadsAvailable(cmd.campaign_id, tuple(leads)))
            return
        for _ in range(cmd.count):  # an endless list of debtors
            self._lead_seq += 1
            leads.append(Lead(f"L{self._lead_seq:07d}", cmd.campaign_id, (f"+1555{self._lead_seq:07d}",)))
        self.kernel.after(0.0, self._feed, LeadsAvailable(cmd.campaign_id, tuple(leads)))

    def _next_fate(self, ring_s: float) -> CallFate:
        if self._fates:
            return self._fates.popleft()
        return draw_fate(self.sc, self.rng_calls, self.kernel.now, ring_s)

    def _reaches_agent(self, fate: CallFate) -> bool:
        return fate.kind in ANSWERING and not fate.amd_says_machine

    def _originate(self, cmd: Originate) -> None:
        fate = self._next_fate(cmd.timeout_s)
        now = self.kernel.now
        k = self.kernel
        offer = now + fate.answer_s + self.detect_s if self._reaches_agent(fate) else None
        call = self.calls[cmd.call_id] = SimCall(cmd.call_id, fate, now, offer)
        if fate.kind in ANSWERING:
            # With AMD on, the dialplan reports the answer only once AMD has decided.
            k.after(fate.answer_s + self.detect_s, self._answer, call)
        else:
            outcome, cause = FAILURES[fate.kind]
            k.after(cmd.timeout_s if fate.kind == "no_answer" else fate.answer_s, self._failed, call, outcome, cause)

    def _answer(self, call: SimCall) -> None:
        if call.state != "ringing":
            return
        machine = call.fate.amd_says_machine
        call.state = "machine" if machine else "waiting"
        self._feed(CallAnswered(call.call_id, "MACHINE" if machine else "HUMAN"))
        if call.state == "waiting" and call.fate.kind == "live" and call.fate.patience_s != float("inf"):
            self.kernel.after(call.fate.patience_s, self._gave_up, call)

    def _gave_up(self, call: SimCall) -> None:
        if call.state == "waiting":  # still nobody: the person hangs up
            self._ended(call.call_id)

    def _failed(self, call: SimCall, outcome: Outcome, cause: int) -> None:
        if self.calls.pop(call.call_id, None) is not None:
            self._feed(CallFailed(call.call_id, outcome, cause))

    def _connect(self, cmd: ConnectToAgent) -> None:
        call = self.calls.get(cmd.call_id)
        if call is None:
            return
        call.state = "connected"
        now = self.kernel.now
        wrap = self.sc.agents.wrapup_s.sample(self.rng_agents)
        agent = self.agents.get(cmd.agent_id)
        if agent is not None:
            agent.wrap_s = wrap
            agent.free_at = now + call.fate.talk_s + wrap
        self.kernel.after(0.0, self._feed, AgentJoinedCall(cmd.call_id, cmd.agent_id))
        self.kernel.after(call.fate.talk_s, self._ended, cmd.call_id)

    def _play_abandon(self, cmd: PlayAbandonMessage) -> None:
        call = self.calls.get(cmd.call_id)
        if call is not None:
            call.state = "abandoning"
            self.kernel.after(self.sc.campaign.abandon_message_s, self._ended, cmd.call_id)

    def _hangup(self, cmd: Hangup) -> None:
        self.kernel.after(0.0, self._ended, cmd.call_id)

    def _ended(self, call_id: str) -> None:
        if self.calls.pop(call_id, None) is not None:
            self._feed(CallEnded(call_id, 16))

    def _record(self, cmd: RecordAttempt) -> None:
        if cmd.attempt.ended_at is not None:  # the final upsert (the first is sent at dial time)
            # The core sends each record a copy of its own: shifted in place, not copied again.
            self.attempts.append(self._shift(cmd.attempt))

    def _virtual(self, a: Attempt) -> Attempt:
        """The core's real-time attempt in the simulator's seconds since `start` (a copy)."""
        return self._shift(a.copy())

    def _shift(self, v: Attempt) -> Attempt:
        """`v` itself, moved from real time to the simulator's seconds since `start`."""
        b = self.base
        v.dialed_at -= b
        v.answered_at = None if v.answered_at is None else v.answered_at - b
        v.connected_at = None if v.connected_at is None else v.connected_at - b
        v.ended_at = None if v.ended_at is None else v.ended_at - b
        return v

    # ------------------------------------------------------------------ the oracle's foresight

    def agents_free_at(self, now: float) -> list[float]:
        b = self.base
        return [t + b for t in self._agents_free_at(now - b)]

    def offers_due(self, now: float) -> list[float]:
        b = self.base
        return [t + b for t in self._offers_due(now - b)]

    def upcoming_offers(self, now: float) -> Iterator[float | None]:
        b = self.base
        return (None if t is None else t + b for t in self._upcoming_offers(now - b))

    def _agents_free_at(self, now: float) -> list[float]:
        leaving = self._leaving_within(now + self._horizon_s)
        out = [now if a.state == READY else max(a.free_at, now)
               for a in self.agents.values() if a.state in WORKING and not a.leaving and a.agent_id not in leaving]
        out.sort()
        return out

    def _leaving_within(self, until: float) -> frozenset[str]:
        """Agents the schedule will log out by `until` (the last logged in leave first; see `_staff`)."""
        if self.agent_override is not None:
            return frozenset()
        now = self.kernel.now
        counts = [c.count for c in self.sc.agents.schedule if now < c.at_s <= min(until, self.duration)]
        if not counts or min(counts) >= len(self._roster):
            return frozenset()
        return frozenset(self._roster[min(counts):])

    def _offers_due(self, now: float) -> list[float]:
        out = [now if c.state == "waiting" else max(c.offer_at or now, now)
               for c in self.calls.values()
               if c.state == "waiting" or (c.offer_at is not None and c.state == "ringing")]
        out.sort()
        return out

    def _upcoming_offers(self, now: float) -> Iterator[float | None]:
        fates, i = self._fates, 0
        while True:
            if i == len(fates):
                fates.append(draw_fate(self.sc, self.rng_calls, now, self._ring_s))
            fate = fates[i]
            i += 1
            yield now + fate.answer_s + self.detect_s if self._reaches_agent(fate) else None

    # ------------------------------------------------------------------ figures

    def _sample(self, reschedule: bool = True) -> None:
        now = self.kernel.now
        stats = self.core.stats(self.campaign_ids[0], now + self.base)  # agents serve every campaign: floor-wide
        # Calls and answers are each campaign's: add them up, so the charts show the floor like the summary.
        lines = live = abandoned = 0
        for cid in self.campaign_ids:
            own = stats if cid == self.campaign_ids[0] else self.core.stats(cid, now + self.base)
            lines += own["in_flight"] + own["waiting"]
            live += own["live_answers"]
            abandoned += own["abandoned"]
        agents = stats["agents"]
        logged_in = agents[READY] + agents[ON_CALL] + agents[WRAPUP]
        talk, logged = stats["talk_s"], stats["talk_s"] + stats["ready_s"] + stats["wrapup_s"]
        d_talk, d_logged = talk - self._last_occ[0], logged - self._last_occ[1]
        self._last_occ = (talk, logged)
        row = {"t": now, "abandon_rate": abandoned / live if live else 0.0,
               "occupancy": stats["occupancy"] if logged > 0 else math.nan,
               # No logged-in time in the interval: no occupancy (NaN breaks the chart's line; 0 would draw
               # idle agents who are not there).
               "occupancy_interval": d_talk / d_logged if d_logged > 0 else math.nan,
               "lines_per_agent": lines / logged_in if logged_in else 0.0,
               "lines": float(lines),
               **{f"agents_{k}": float(v) for k, v in agents.items()}}
        state = getattr(self.strategy, "state", None)
        if callable(state):
            alpha = state().get("alpha")
            if isinstance(alpha, int | float):
                row["alpha"] = float(alpha)
        self.series.append(row)
        if reschedule and now + self.series_every_s <= self.duration:
            self.kernel.at(now + self.series_every_s, self._sample)

    def _attempt_log(self) -> list[Attempt]:
        """Every dial, in dial order: finished ones as recorded, calls still up at the end as they stand
        (outcome None while ringing or waiting; a conversation in progress is already `connected`)."""
        log = self.attempts + [self._virtual(c.attempt) for c in self.core.calls.values()]
        log.sort(key=lambda a: (a.dialed_at, int(a.call_id.rpartition("-")[2])))
        return log

    def _summary(self, log: list[Attempt], wall: float) -> dict[str, Any]:
        end = self.duration
        stats = self.core.stats(self.campaign_ids[0], end + self.base)  # occupancy: the floor's (shared agents)
        refused: dict[str, int] = {}
        for cid in self.campaign_ids:
            for reason, n in self.core.stats(cid, end + self.base)["refused"].items():
                refused[reason] = refused.get(reason, 0) + n
        by: dict[str, int] = {}
        by_campaign: dict[str, int] = {}
        for a in log:
            by_campaign[a.campaign_id] = by_campaign.get(a.campaign_id, 0) + 1
        for a in log:
            key = a.outcome.value if a.outcome is not None else "in_flight"
            by[key] = by.get(key, 0) + 1
        connected, abandoned = by.get(Outcome.CONNECTED.value, 0), by.get(Outcome.ABANDONED.value, 0)
        live = connected + abandoned
        rates = [round(h.rate, 5) if h.rate is not None else None for h in hourly_abandons(log, end)]
        return {
            "scenario": self.sc.name,
            "strategy": self.strategy_name,
            "seed": self.seed,
            "agents": self.agent_override if self.agent_override is not None else self.sc.agents.count,
            "sim_seconds": end,
            "wall_seconds": round(wall, 3),
            "attempts": len(log),
            "live_answers": live,
            "connected": connected,
            "abandoned": abandoned,
            "abandon_rate": round(abandoned / live, 5) if live else 0.0,
            "abandon_target": self.sc.campaign.abandon_target,
            "max_hourly_abandon_rate": max((r for r in rates if r is not None), default=0.0),
            "hourly_abandon_rates": rates,
            "occupancy": round(stats["occupancy"], 5),
            "idle_per_connect_s": round(stats["idle_per_connect_s"], 3),
            "outcomes": dict(sorted(by.items())),
            "refused": dict(sorted(refused.items())),
            "campaigns": {cid: by_campaign.get(cid, 0) for cid in self.campaign_ids},
            "held_leads": len(self.held),
        }


@dataclass(frozen=True, slots=True)
class HourlyAbandons:
    """Live answers and abandons among the calls answered in one hour of the shift [start_s, end_s)."""

    start_s: float
    end_s: float
    live: int
    abandoned: int

    @property
    def rate(self) -> float | None:
        return self.abandoned / self.live if self.live else None  # None: no live answer, no rate to judge


def hourly_abandons(log: list[Attempt], duration_s: float) -> list[HourlyAbandons]:
    """One entry per hour of the shift, in order, hours without live answers included (so the n-th entry is
    always the n-th hour). An answer at the very end of the shift counts in its last hour.

    A shift that does not end on the hour has its last hour judged over its last 60 minutes (overlapping the
    hour before): judged alone, a tail of a minute holds a handful of answers, and one abandon among them
    would decide the worst hour (collections-10 for 61 minutes: 1 of 7, 14 %). A shift under an hour is one
    hour, the whole of it."""
    n = max(1, math.ceil(duration_s / 3600))
    last_start = max(0.0, duration_s - 3600)
    counts = [[0, 0] for _ in range(n)]
    for a in log:
        if a.outcome is not None and a.outcome.live and a.answered_at is not None:
            ab = a.outcome is Outcome.ABANDONED
            h = int(a.answered_at // 3600)
            if h < n - 1:  # a clock hour before the last
                counts[h][0] += 1
                counts[h][1] += ab
            if a.answered_at >= last_start:  # the last hour (every answer from (n - 1) h on is in it)
                counts[-1][0] += 1
                counts[-1][1] += ab
    return [HourlyAbandons(i * 3600.0 if i < n - 1 else last_start, min((i + 1) * 3600.0, duration_s), live, ab)
            for i, (live, ab) in enumerate(counts)]


@contextmanager
def _rare_gc_passes(gen0: int = 50_000) -> Iterator[None]:
    """Run the cyclic garbage collector less often for a while (the thresholds are restored after).

    A shift keeps every attempt, lead and timer it makes (hundreds of thousands of objects) and frees the rest by
    reference counting, so the collector's passes find almost nothing (20 objects in a collections-50 shift), yet
    they took about 0.6 s of it, mostly full passes over that growing heap; 0.06 s with this threshold. Cycles are
    still collected, only in larger batches."""
    old = gc.get_threshold()
    gc.set_threshold(max(gen0, old[0]), *old[1:])
    try:
        yield
    finally:
        gc.set_threshold(*old)


def iso(t: float | None, start: datetime = EPOCH) -> str | None:
    """Virtual seconds → ISO 8601 with the start's offset."""
    return None if t is None else (start + timedelta(seconds=t)).isoformat()


def attempt_row(a: Attempt, start: datetime = EPOCH) -> dict[str, Any]:
    """One line of the attempt log (--attempts-out)."""
    return {"call_id": a.call_id, "lead_id": a.lead_id, "number": a.number, "caller_id": a.caller_id,
            "dialed_at": iso(a.dialed_at, start), "answered_at": iso(a.answered_at, start),
            "connected_at": iso(a.connected_at, start), "ended_at": iso(a.ended_at, start),
            "outcome": a.outcome.value if a.outcome else None, "agent_id": a.agent_id, "campaign_id": a.campaign_id,
            "caller_id_reason": a.caller_id_reason, "phone_reason": a.phone_reason}
