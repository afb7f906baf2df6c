"""The sans-IO dialer core: events in, commands out, time passed in (modelled on h11).

The core owns every decision (what to dial, which agent gets an answered call, when a call is abandoned)
and no I/O. Three shells drive it: the asyncio runtime against Asterisk, the same runtime against the
simulated PBX, and the discrete-event simulator in virtual time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from dialer.agents import SHARED_STATES, Agent, AgentBoard
from dialer.callerid import CallerIdPool, PoolExhausted
from dialer.commands import (
    AskDisposition,
    CheckpointLead,
    Command,
    ConnectToAgent,
    Emit,
    FetchLeads,
    Hangup,
    HangupAgentLeg,
    Originate,
    OriginateAgentLeg,
    PersistDnc,
    PlayAbandonMessage,
    RecordAttempt,
    ReleaseLead,
)
from dialer.compliance import DebtorHistory, DncList, Gatekeeper, Refusal, RuleSet, load_rule_set
from dialer.compliance.dnc import lookup_key
from dialer.dispositions import DispositionCode, DispositionSet
from dialer.events import (
    AMD_HANGUP,
    AdoptCall,
    AgentConnected,
    AgentDisconnected,
    AgentJoinedCall,
    AgentLegHeld,
    AgentLogin,
    AgentLogout,
    AgentMissing,
    AgentState,
    CallAnswered,
    CallEnded,
    CallFailed,
    CallProgress,
    CampaignControl,
    DebtorHistorySeed,
    Disposition,
    DncAdd,
    DncSnapshot,
    Event,
    LeadRemoved,
    LeadsAvailable,
    LeadsTaken,
    LeaseLost,
    PbxLink,
    PreviewDial,
    PreviewRequest,
    PreviewSkip,
    ScheduleCallback,
    SharedAbandon,
    StoredDisposition,
    StoreLink,
)
from dialer.hopper import Hopper, HopperRules, Pick
from dialer.model import (
    AgentStatus,
    Attempt,
    CampaignSettings,
    CampaignStatus,
    Lead,
    Outcome,
    StoredCode,
    outcome_for_cause,
)
from pacing.registry import make_strategy
from pacing.snapshot import DialResult, HandleResult, LiveResult, PacingCaps, PacingSnapshot, PacingStrategy

PREVIEW = "preview"  # dialing mode where agents pick and dial leads themselves; the pacer launches nothing

# How long past the abandon threshold the PBX holds an answered call the engine has neither connected nor
# released (engine stopped, AMI link down) before playing the safe-harbour message itself: never a silent hold.
HOLD_GRACE_S = 5


def hold_limit_s(abandon_threshold_s: float) -> int:
    """Whole seconds the dialplan holds an answered call waiting for the engine (MARCADOR_HOLD_S)."""
    return math.ceil(abandon_threshold_s) + HOLD_GRACE_S


# AMD results that mean "a machine answered"; anything else is treated as a person (the safe side for abandons).
MACHINE_AMD = frozenset({"MACHINE"})


class CoreError(ValueError):
    """A command to the core that cannot be honoured (unknown campaign, bad state)."""


@dataclass(slots=True)
class CoreConfig:
    id_prefix: str = "c"
    hopper_low_water: int = 20  # fetch more leads when fewer than this are buffered per campaign
    hopper_batch: int = 100
    strategy_factory: Callable[[str, PacingCaps], PacingStrategy] = make_strategy
    agent_rejoin_delay_s: float = 2.0  # after an unexpected leg drop, call the agent's phone again (doubling)
    agent_rejoin_max_delay_s: float = 30.0
    agent_rejoin_attempts: int = 8  # consecutive failed rejoins before the agent is logged out (about 2.5 min)
    # An agent whose leg was originated or hung up and of which the PBX says nothing for this long (the action
    # failed without an event) is logged out, reason "leg timeout", rather than left connecting for ever. Above
    # the agent leg's own ring timeout (30 s).
    agent_leg_timeout_s: float = 60.0
    # A customer still up this long after its agent's leg left is hung up: Asterisk ends it at once (end_marked),
    # but one that joined the room just after the leg left (past the dialplan's room check) would wait in silence.
    orphan_hangup_s: float = 3.0
    # A disposition may come after its wrap-up ended (the wrap-up timer, the agent's own ready, its leg dropped) and
    # is then taken once, late, without touching the agent: the calls each agent handled are kept for it, the last
    # `late_disposition_calls` of them (at least 1), each for `late_disposition_s` after it ended.
    late_disposition_s: float = 3600.0
    late_disposition_calls: int = 10
    # Each change to a held lead's hopper state (a call's outcome, a code, a callback) goes to the store as a
    # `CheckpointLead`, so that a node that dies hands its leads on with their recycle and callback times. The
    # simulator, whose store never outlives the core, turns it off.
    checkpoint_leads: bool = True


@dataclass(slots=True)
class Call:
    attempt: Attempt
    state: str = "dialing"  # dialing | ringing | waiting | connected | abandoning | ending
    abandon_at: float | None = None
    ended: bool = False
    reserved_agent: str | None = None  # preview: the agent who dialed it takes it, nobody else


@dataclass(slots=True)
class HandledCall:
    """A connected call an agent handled, kept after it ended for its disposition (on time or late)."""

    agent_id: str
    attempt: Attempt  # final; its `disposition` is set once one was taken
    kept_from: float | None = None  # kept `late_disposition_s` from this (default: the attempt's end)


@dataclass(frozen=True, slots=True)
class _LateDisposition:
    """A disposition taken while its lead was out on another call (or on a preview screen): it steers the lead
    when the lead is back."""

    number: str
    code: DispositionCode
    outcome: Outcome  # the disposed call's outcome, for the store if the code ends the lead
    callback_at: float | None
    callback_agent: str | None
    call_id: str  # the disposed call


@dataclass(slots=True)
class CampaignState:
    settings: CampaignSettings
    strategy: PacingStrategy
    hopper: Hopper
    rule_set: RuleSet
    gate: Gatekeeper
    dispositions: DispositionSet
    pool: CallerIdPool | None = None  # None: the campaign's fixed caller ID
    # Every DID capped or resting until then: nothing is picked (it used to pick, gate and release every tick).
    dids_back_at: float | None = None
    status: CampaignStatus = CampaignStatus.CREATED
    fetch_pending: bool = False
    exhausted: bool = False  # the store had nothing last time; retried on a slow cadence
    last_fetch_at: float = float("-inf")
    launches: deque[float] = field(default_factory=deque)  # originate times in the last second
    in_flight: dict[str, float] = field(default_factory=dict)  # dialing/ringing call id → dialed at
    waiting: dict[str, None] = field(default_factory=dict)  # answered, unconnected (insertion = answer order)
    outcomes: dict[str, int] = field(default_factory=dict)
    attempts: int = 0
    live_answers: int = 0
    connected: int = 0
    abandoned: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # gate refusals by reason
    # Callbacks for leads not in the hopper yet (leased, their LeadsAvailable still queued): applied when they come.
    later_callbacks: dict[str, tuple[float, str | None]] = field(default_factory=dict)
    ended_by_rules: list[str] = field(default_factory=list)  # leads a hopper-rule edit ended, for the store
    # Lead id → dispositions taken while the lead was out (`_LateDisposition`), applied in order when it is back.
    dispositions_held: dict[str, list[_LateDisposition]] = field(default_factory=dict)


class DialerCore:
    """Plain object: `handle(event, now)` and `tick(now)` return the commands to carry out."""

    def __init__(self, config: CoreConfig | None = None) -> None:
        self.config = config or CoreConfig()
        self.campaigns: dict[str, CampaignState] = {}
        self.agents = AgentBoard()
        # The last split of shared agents between running campaigns, and what it was computed from.
        self._owners_key: tuple[Any, ...] = ()
        self._owners: dict[str, str] = {}
        self.calls: dict[str, Call] = {}
        self._seq = 0
        self._timers: list[tuple[float, int, str, str]] = []  # (due, seq, kind, key)
        self._timer_seq = 0
        self.pbx_up = True  # shells without a link notion never send PbxLink
        self.store_up = True  # likewise StoreLink: a dial that cannot be recorded is not made
        self.dnc = DncList()  # global and per-campaign entries, shared by every campaign's gate
        # Each debtor's attempts, conversations and abandons, shared by every campaign's gate: caps and cool-downs
        # are per debtor (lead id), so a debtor loaded into two campaigns is not called twice as often.
        self.history = DebtorHistory(horizon_s=86_400.0, max_per_lead=1)
        self._dnc_unstored: set[tuple[str | None, str]] = set()  # DNC entries of ours the store may not hold yet
        self._pruned_at = float("-inf")
        # Connected calls whose agent may still post (or has posted) their disposition: call id → call, in the order
        # they ended; and each agent's, oldest first (`CoreConfig.late_disposition_calls`, `late_disposition_s`).
        self._handled: dict[str, HandledCall] = {}
        self._handled_by_agent: dict[str, deque[str]] = {}

    # ------------------------------------------------------------------ campaigns

    def _apply_dnc_snapshot(self, event: DncSnapshot, now: float, out: list[Command]) -> None:
        cid = event.campaign_id
        if cid is not None and cid not in self.campaigns:
            return
        held = self.dnc.entries(cid)
        # The store holds numbers as the API and intake write them: each is its own key (no parse per number, so
        # reloading a 100,000-number list costs milliseconds, not seconds of the core's loop).
        wanted = {lookup_key(n): n for n in event.numbers}
        self._dnc_unstored -= {(cid, key) for key in wanted}
        added = [n for key, n in wanted.items() if key not in held]
        for number in added:
            self.dnc.add(number, cid, now)
        gone = [key for key, at in held.items()
                if key not in wanted and at < event.taken_at and (cid, key) not in self._dnc_unstored]
        for key in gone:
            self.dnc.remove(key, cid)
        self._unpark_freed(gone, cid, now)
        if added or gone:
            out.append(Emit("dnc.synced", {"campaign_id": cid, "added": len(added), "removed": len(gone)}))

    def remove_dnc(self, number: str, campaign_id: str | None, now: float) -> bool:
        """Take `number` off the global list (campaign_id None) or a campaign's; False if it was not on it."""
        if not self.dnc.remove(number, campaign_id):
            return False
        self._unpark_freed([number], campaign_id, now)
        return True

    def _unpark_freed(self, numbers: list[str], campaign_id: str | None, now: float) -> None:
        """Leads parked because these entries refused their numbers (no other phone left to dial) go back to be
        gated again: they used to stay parked for good. One pass over each hopper, whatever the count."""
        if not numbers:
            return
        freed = DncList()  # the list's own matching (every spelling, national entries) tells which phones they hit
        for number in numbers:
            freed.add(number)
        for cid, camp in self.campaigns.items():
            if campaign_id is None or cid == campaign_id:
                camp.hopper.unpark(now, camp.hopper.parked_with(lambda phone: freed.lookup(phone) is not None))

    def add_campaign(self, settings: CampaignSettings) -> None:
        # Everything is built (and so validated) before anything changes: a bad setting leaves the campaign as it was.
        rule_set = load_rule_set(settings.rule_set, settings.rule_overrides or None)
        rules = HopperRules.from_config(settings.hopper)
        dispositions = DispositionSet.from_config(settings.dispositions) if settings.dispositions \
            else DispositionSet.default()
        pool = CallerIdPool(settings.campaign_id, settings.did_pool, hour_cap=settings.did_hour_cap,
                            day_cap=settings.did_day_cap) if settings.did_pool else None
        # The rule set binds the campaign: its abandon ceiling, minimum ring and abandon-message time win when tighter.
        settings = dataclasses.replace(
            settings,
            abandon_target=min(settings.abandon_target, rule_set.abandon_target),
            ring_timeout_s=max(settings.ring_timeout_s, rule_set.min_ring_s),
            abandon_threshold_s=min(settings.abandon_threshold_s, rule_set.abandon_message_s or math.inf),
        )
        existing = self.campaigns.get(settings.campaign_id)
        if existing is not None:
            existing.settings = settings
            existing.dispositions = dispositions
            if rules != existing.hopper.rules:
                # Leads ended by a lowered cap are done: the store hears it at the next pacing pass.
                existing.ended_by_rules.extend(existing.hopper.set_rules(rules))
            if rule_set != existing.rule_set:
                existing.rule_set = rule_set
                self.history.widen_for(rule_set)
                existing.gate = Gatekeeper(rule_set, self.dnc, self.history, settings.campaign_id)
            if pool is None or existing.pool is None:
                existing.pool = pool
            else:  # in place: the DIDs kept must keep their cap windows and sticky debtors
                existing.pool.reconfigure(settings.did_pool, settings.did_hour_cap, settings.did_day_cap)
            existing.dids_back_at = None  # a DID added or a cap raised may be usable now
            return
        caps = PacingCaps(
            max_lines=settings.max_lines,
            max_lines_per_agent=settings.max_lines_per_agent,
            max_calls_per_s=settings.max_calls_per_s,
            abandon_target=settings.abandon_target,
        )
        strategy = _NoDial() if settings.strategy == PREVIEW else self.config.strategy_factory(settings.strategy, caps)
        self.history.widen_for(rule_set)
        gate = Gatekeeper(rule_set, self.dnc, self.history, settings.campaign_id)
        self.campaigns[settings.campaign_id] = CampaignState(
            settings=settings, strategy=strategy, hopper=Hopper(settings.campaign_id, rules), rule_set=rule_set,
            gate=gate, dispositions=dispositions, pool=pool)

    def set_strategy(self, campaign_id: str, strategy: PacingStrategy) -> None:
        self._campaign(campaign_id).strategy = strategy

    def _campaign(self, campaign_id: str) -> CampaignState:
        try:
            return self.campaigns[campaign_id]
        except KeyError:
            raise CoreError(f"campaign_id: unknown campaign {campaign_id!r}") from None

    # ------------------------------------------------------------------ entry points

    def handle(self, event: Event, now: float) -> list[Command]:
        out: list[Command] = []
        match event:
            case CallProgress():
                call = self.calls.get(event.call_id)
                if call is not None and call.state == "dialing":
                    call.state = "ringing"
            case CallAnswered():
                self._on_answered(event, now, out)
            case CallFailed():
                self._on_failed(event, now, out)
            case CallEnded():
                self._on_ended(event, now, out)
            case AgentLogin():
                agent = self.agents.login(event.agent_id, event.campaigns, now, dict(event.skills))
                out.append(OriginateAgentLeg(agent.agent_id))
                self._await_leg(agent, now)
                out.append(self._agent_emit(agent))
            case AgentLogout():
                leaving = self.agents.get(event.agent_id)
                if leaving is not None and leaving.status is not AgentStatus.LOGGED_OUT:
                    leaving.logout_requested = True
                    if leaving.status is AgentStatus.PREVIEW:
                        self._drop_preview(leaving, now)  # a lead on screen, not dialed: back to the hopper
                    if leaving.status in (AgentStatus.READY, AgentStatus.PAUSED, AgentStatus.CONNECTING):
                        # Out of the ready pool at once: no call may be routed to an agent who is leaving.
                        self.agents.set_status(leaving, AgentStatus.PAUSED, now, reason="logging out")
                        out.append(HangupAgentLeg(leaving.agent_id))
                        self._await_leg(leaving, now)
                        out.append(self._agent_emit(leaving))
                    # on a call or in wrap-up: the leg is hung up when the wrap-up ends
            case AgentConnected():
                agent = self.agents.connected(event.agent_id, now)
                out.append(self._agent_emit(agent))
                self._serve_waiting(agent, now, out)
            case AgentDisconnected():
                self._on_agent_disconnected(event, now, out)
            case AgentLegHeld():
                held = self.agents.get(event.agent_id)
                if held is not None and held.status is AgentStatus.CONNECTING:
                    # Its phone is on a call the PBX side will see end: not a leg lost without word, so no leg
                    # timeout (the agent stays connecting, not routed calls, until its leg joins its room).
                    held.leg_gen += 1
                    self.agents.set_status(held, AgentStatus.CONNECTING, now, reason=event.reason)
                    out.append(self._agent_emit(held))
            case AgentJoinedCall():
                call = self.calls.get(event.call_id)
                if call is not None and call.attempt.agent_id == event.agent_id:
                    out.append(Emit("call.joined", {"call_id": event.call_id, "agent_id": event.agent_id}))
            case AgentMissing():
                self._on_agent_missing(event, now, out)
            case AgentState():
                self._on_agent_state(event, now, out)
            case Disposition():
                self._on_disposition(event, now, out)
            case AdoptCall():
                att = event.attempt
                if att.call_id not in self._handled and att.agent_id is not None:
                    # Kept from now: the other run may have left before the call ended (no `ended_at`).
                    self._note_handled(att.agent_id, att.copy(), kept_from=max(att.ended_at or now, now))
            case LeadsAvailable():
                camp = self._campaign(event.campaign_id)
                if event.fetched:
                    camp.fetch_pending = False
                    camp.exhausted = not event.leads
                camp.hopper.add(event.leads, now, event.states)
                if camp.later_callbacks:  # callbacks asked for before these leads were loaded here
                    for lead in event.leads:
                        asked = camp.later_callbacks.pop(lead.lead_id, None)
                        if asked is not None and camp.hopper.schedule_callback(lead.lead_id, asked[0], asked[1]):
                            self._checkpoint(camp, lead.lead_id, out)
            case DebtorHistorySeed():
                self._seed_history(self._campaign(event.campaign_id), event)
            case DncSnapshot():
                self._apply_dnc_snapshot(event, now, out)
            case DncAdd():
                self.dnc.add(event.number, event.campaign_id, now if event.added_at is None else event.added_at)
                out.append(Emit("dnc.added", {"campaign_id": event.campaign_id}))
            case ScheduleCallback():
                camp = self._campaign(event.campaign_id)
                if not camp.hopper.schedule_callback(event.lead_id, event.at, event.agent_id):
                    if camp.hopper.info(event.lead_id) is not None:
                        raise CoreError(f"lead_id: {event.lead_id!r} is done or removed: no callback")
                    camp.later_callbacks[event.lead_id] = (event.at, event.agent_id)  # not loaded here yet
                else:
                    self._checkpoint(camp, event.lead_id, out)
                out.append(Emit("callback.scheduled", {"campaign_id": event.campaign_id, "lead_id": event.lead_id,
                                                       "at": event.at, "agent_id": event.agent_id}))
            case StoredDisposition():
                self._on_stored_disposition(event, now, out)
            case LeadRemoved():
                camp = self._campaign(event.campaign_id)
                info = camp.hopper.info(event.lead_id)
                if camp.hopper.remove(event.lead_id, now) and info is not None and info.state != "out":
                    out.append(ReleaseLead(event.campaign_id, event.lead_id, Outcome.LOST, final=True))
                # out on a call: the call ends normally and the lead is let go with its outcome
            case LeaseLost():
                self._on_lease_lost(event, now, out)
            case LeadsTaken():
                taken = self.campaigns.get(event.campaign_id)
                if taken is not None:
                    for lead_id in event.lead_ids:
                        taken.hopper.let_go(lead_id)
            case CampaignControl():
                self._on_campaign_control(event, now, out)
            case PbxLink():
                self._on_pbx_link(event, now, out)
            case StoreLink():
                self.store_up = event.up
                out.append(Emit("store.link", {"up": event.up}))
            case SharedAbandon():
                camp = self._campaign(event.campaign_id)
                shared = getattr(camp.strategy, "shared_abandon", None)
                if shared is not None:
                    shared(event.live, event.abandoned)
            case PreviewRequest():
                self._on_preview_request(event, now, out)
            case PreviewDial():
                self._on_preview_dial(event, now, out)
            case PreviewSkip():
                self._on_preview_skip(event, now, out)
        return out

    @staticmethod
    def _seed_history(camp: CampaignState, event: DebtorHistorySeed) -> None:
        """Merge the store's instants with what this node already holds of the debtor (in time order)."""
        h, lead_id = camp.gate.history, event.lead_id
        attempts = sorted(set(h.attempts(lead_id)) | set(event.attempts))
        contacts = sorted(set(h.contacts(lead_id)) | set(event.contacts))
        abandons = sorted(set(h.abandons(lead_id)) | set(event.abandons))
        wrong = sorted(set(h.wrong_parties(lead_id)) | set(event.wrong_parties))
        h.forget(lead_id)
        for t in attempts:
            h.note_attempt(lead_id, "", t)
        for t in wrong:  # first: a contact known (here or in the store) to be a wrong party is not noted
            h.note_wrong_party(lead_id, t)
        for t in contacts:
            h.note_contact(lead_id, t)
        for t in abandons:
            h.note_abandon(lead_id, t)

    # ------------------------------------------------------------------ preview mode

    def _on_preview_request(self, event: PreviewRequest, now: float, out: list[Command]) -> None:
        agent = self.agents.get(event.agent_id)
        camp = self._campaign(event.campaign_id)
        if agent is None or agent.status is not AgentStatus.READY or \
                not agent.serves(event.campaign_id, camp.settings.skill):
            raise CoreError(f"agent_id: {event.agent_id!r} is not a ready agent of campaign {event.campaign_id!r}")
        picks: list[Pick] = []
        if camp.dispositions_held:  # a lead back since the last tick takes its late code before it is offered
            self._settle_held(camp, now, out)
        if camp.status is CampaignStatus.RUNNING:
            # Own callbacks first; compliance holds for previews too (the agent reserved is the one dialing).
            gate = self._gate(camp, out, agent_reserved=True)
            picks = camp.hopper.due_agent_callbacks(agent.agent_id, now, gate, count=1) \
                or camp.hopper.select(1, now, gate)
        if not picks:
            self._maybe_fetch(camp, now, out)
            out.append(Emit("preview.none", {"agent_id": agent.agent_id, "campaign_id": event.campaign_id}))
            return
        lead = picks[0].lead
        agent.preview_pick = picks[0]
        agent.preview, agent.preview_campaign = lead, event.campaign_id
        self.agents.set_status(agent, AgentStatus.PREVIEW, now)
        out.append(self._agent_emit(agent))
        out.append(Emit("preview.offer", {"agent_id": agent.agent_id, "campaign_id": event.campaign_id,
                                          "lead_id": lead.lead_id, "phones": list(lead.phones),
                                          "fields": dict(lead.fields)}))
        self._maybe_fetch(camp, now, out)

    def _take_preview(self, agent_id: str) -> tuple[Agent, CampaignState, Lead]:
        agent = self.agents.get(agent_id)
        if agent is None or agent.status is not AgentStatus.PREVIEW or agent.preview is None:
            raise CoreError(f"agent_id: {agent_id!r} has no lead on screen")
        lead, camp = agent.preview, self._campaign(agent.preview_campaign or "")
        agent.preview = agent.preview_campaign = None
        return agent, camp, lead

    def _drop_preview(self, agent: Agent, now: float) -> None:
        """The agent can no longer act on its preview (leg dropped, logging out). A lead on screen and not dialed
        goes back to the hopper unattempted (it used to stay out for good); one already dialed comes back with its
        call's outcome, and the call, reserved for nobody now, goes to any free agent if answered."""
        if agent.status is AgentStatus.PREVIEW and agent.preview is not None:
            camp = self.campaigns.get(agent.preview_campaign or "")
            dialed = any(c.reserved_agent == agent.agent_id for c in self.calls.values())
            if camp is not None and not dialed:
                camp.hopper.release(agent.preview.lead_id, now)
                self.agents.set_status(agent, AgentStatus.READY, now)
        agent.preview = agent.preview_campaign = agent.preview_pick = None

    def _on_preview_dial(self, event: PreviewDial, now: float, out: list[Command]) -> None:
        if not (self.pbx_up and self.store_up):
            raise CoreError("the PBX link or the store is down: nothing can be dialed now")
        agent, camp, lead = self._take_preview(event.agent_id)
        agent.preview, agent.preview_campaign = lead, camp.settings.campaign_id  # on screen while it rings
        pick = agent.preview_pick if agent.preview_pick is not None and agent.preview_pick.lead is lead \
            else Pick(lead, lead.phone, "first")
        refusal = camp.gate.check(lead, pick.number, now, agent_reserved=True)  # the rules may have changed
        if refusal is not None:
            agent.preview = agent.preview_campaign = None
            agent.preview_pick = None
            self._note_refusal(camp, lead.lead_id, pick.number, refusal, out)
            camp.hopper.release(lead.lead_id, now)
            self._end_wrapup_or_pause(agent, now, out)
            raise CoreError(f"lead {lead.lead_id}: {refusal.reason.value}: {refusal.detail}")
        agent.preview_pick = None
        call_id = self._dial(camp, pick, now, out)
        if call_id is None:
            agent.preview = agent.preview_campaign = None
            self._end_wrapup_or_pause(agent, now, out)
            raise CoreError(f"campaign {camp.settings.campaign_id}: no caller ID available now")
        self.calls[call_id].reserved_agent = agent.agent_id

    def _on_preview_skip(self, event: PreviewSkip, now: float, out: list[Command]) -> None:
        agent, camp, lead = self._take_preview(event.agent_id)
        agent.preview_pick = None
        camp.hopper.release(lead.lead_id, now)  # back unattempted
        self._end_wrapup_or_pause(agent, now, out)

    def _on_pbx_link(self, event: PbxLink, now: float, out: list[Command]) -> None:
        self.pbx_up = event.up
        out.append(Emit("pbx.link", {"up": event.up}))
        if not event.up:
            return
        for agent in self.agents.all():  # legs lost while the link was down: call the phones back now
            if agent.status is AgentStatus.CONNECTING and not agent.logout_requested:
                agent.rejoin_gen += 1
                out.append(OriginateAgentLeg(agent.agent_id))
                self._await_leg(agent, now)
            elif self._waits_on_leg(agent):  # a hangup sent before the outage: its word is timed from now
                self._await_leg(agent, now)

    def tick(self, now: float) -> list[Command]:
        out: list[Command] = []
        self._run_timers(now, out)
        for camp in self.campaigns.values():
            if camp.ended_by_rules:  # add_campaign returns no commands: the store hears of them here
                for lead_id in camp.ended_by_rules:
                    out.append(ReleaseLead(camp.settings.campaign_id, lead_id, Outcome.LOST, final=True))
                camp.ended_by_rules.clear()
        prune = now - self._pruned_at >= 3600.0  # debtor histories shed what no rule can look at any more
        if prune:
            self._pruned_at = now
            self.history.prune(now)
        self._prune_handled(now)
        for camp in self.campaigns.values():
            if camp.dispositions_held:
                self._settle_held(camp, now, out)
            if camp.status is CampaignStatus.RUNNING:
                self._pace(camp, now, out)
        return out

    def next_deadline(self) -> float | None:
        while self._timers and not self._timer_live(self._timers[0]):
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    # ------------------------------------------------------------------ calls

    def _on_answered(self, event: CallAnswered, now: float, out: list[Command]) -> None:
        call = self.calls.get(event.call_id)
        if call is None or call.state not in ("dialing", "ringing"):
            return
        camp = self.campaigns[call.attempt.campaign_id]
        camp.in_flight.pop(event.call_id, None)
        att = call.attempt
        att.answered_at = now
        att.amd = event.amd
        ring_s = now - att.dialed_at
        if event.amd.upper() in MACHINE_AMD:
            camp.strategy.observe(DialResult(now, ring_s, "machine"))
            att.outcome = Outcome.MACHINE
            call.state = "ending"
            out.append(Hangup(att.call_id))
            return
        camp.strategy.observe(DialResult(now, ring_s, "live"))
        camp.live_answers += 1
        # A line already gone is never handed to an agent: it waits like any unserved answer, and the CallEnded
        # that follows makes it abandoned (no message to play).
        gone = event.amd.upper() == AMD_HANGUP
        if call.reserved_agent is not None and not gone:
            reserved = self.agents.get(call.reserved_agent)
            if reserved is not None and reserved.status is AgentStatus.PREVIEW:
                reserved.preview = reserved.preview_campaign = None
                self._connect(call, reserved, now, out)
                return
        agent = None if gone else self.agents.pick_free(camp.settings.campaign_id, camp.settings.skill,
                                                        self._agent_owners())
        if agent is not None:
            self._connect(call, agent, now, out)
            return
        call.state = "waiting"
        call.abandon_at = now + camp.settings.abandon_threshold_s
        camp.waiting[att.call_id] = None
        self._add_timer(call.abandon_at, "abandon", att.call_id)
        out.append(Emit("call.waiting", {"call_id": att.call_id, "campaign_id": att.campaign_id}))

    def _connect(self, call: Call, agent: Agent, now: float, out: list[Command]) -> None:
        att = call.attempt
        camp = self.campaigns[att.campaign_id]
        camp.waiting.pop(att.call_id, None)
        call.state = "connected"
        call.abandon_at = None
        att.agent_id = agent.agent_id
        att.connected_at = now
        att.outcome = Outcome.CONNECTED
        camp.connected += 1
        camp.strategy.observe(LiveResult(now, connected=True))
        self.agents.assign(agent, att.call_id, att.campaign_id, now)
        agent.last_attempt = att
        out.append(ConnectToAgent(att.call_id, agent.agent_id))
        out.append(self._agent_emit(agent))
        out.append(Emit("call.connected", {"call_id": att.call_id, "agent_id": agent.agent_id,
                                           "campaign_id": att.campaign_id}))

    def _abandon(self, call: Call, now: float, out: list[Command], *, play_message: bool = True,
                 retracts: float | None = None) -> None:
        att = call.attempt
        camp = self.campaigns[att.campaign_id]
        camp.waiting.pop(att.call_id, None)
        call.state = "abandoning"
        call.abandon_at = None
        att.outcome = Outcome.ABANDONED
        camp.abandoned += 1
        camp.strategy.observe(LiveResult(now, connected=False, retracts=retracts))
        if play_message:
            out.append(PlayAbandonMessage(att.call_id))
        out.append(Emit("call.abandoned", {"call_id": att.call_id, "campaign_id": att.campaign_id}))

    def _on_agent_missing(self, event: AgentMissing, now: float, out: list[Command]) -> None:
        """The debtor sent into the agent's room found no agent there (its leg had left before the customer
        joined), and the dialplan is already playing the safe-harbour message. Nobody took the call: the connect
        is undone and it counts as abandoned (DESIGN.md, Words and figures), with no wrap-up to wait for."""
        call = self.calls.get(event.call_id)
        if call is None or call.ended or call.state != "connected" or call.attempt.agent_id != event.agent_id:
            return
        att = call.attempt
        camp = self.campaigns[att.campaign_id]
        camp.connected -= 1
        connected_at = att.connected_at
        att.agent_id = att.connected_at = None  # as any abandoned attempt: no agent, never connected
        agent = self.agents.get(event.agent_id)
        if agent is not None:
            agent.connects -= 1
            if agent.call_id == att.call_id:
                # The leg's drop has not reached us yet, but the room is empty: no further customer may be sent
                # there. The leg is hung up (whatever state it is in) so that its AgentDisconnected calls the phone
                # back into its room, or completes a logout asked for meanwhile.
                agent.call_id = None
                self.agents.set_status(agent, AgentStatus.CONNECTING, now, reason="rejoining")
                out.append(HangupAgentLeg(agent.agent_id))
                self._await_leg(agent, now)
                out.append(self._agent_emit(agent))
            # else the core already saw the leg drop: the agent is rejoining or logged out, as that left it.
        # The pacer heard "connected" at the connect: the abandon retracts it (LiveResult.retracts), so the pacer
        # counts this live answer once, as abandoned, as the campaign's own counts do.
        self._abandon(call, now, out, play_message=False, retracts=connected_at)  # the dialplan plays the message

    def _on_failed(self, event: CallFailed, now: float, out: list[Command]) -> None:
        call = self._live_call(event.call_id)
        if call is None:
            return
        att = call.attempt
        camp = self.campaigns[att.campaign_id]
        if call.state in ("dialing", "ringing"):
            if event.cause is not Outcome.LOST:  # a dial never made (or lost in a crash) says nothing of callers
                camp.strategy.observe(
                    DialResult(now, now - att.dialed_at, "none", timed_out=event.cause is Outcome.NO_ANSWER)
                )
            att.outcome = event.cause
        elif call.state == "waiting":
            # A failure report after the answer (e.g. a reconnect lost the trace): the person was not served.
            self._abandon(call, now, out, play_message=False)
        att.hangup_cause = event.hangup_cause
        self._finish(call, now, out)

    def _live_call(self, call_id: str) -> Call | None:
        """The call `call_id` if it has not ended: an end reported twice (a failure after a hangup, a refused
        dial's end after the PBX's) is taken once."""
        call = self.calls.get(call_id)
        return None if call is None or call.ended else call

    def _on_lease_lost(self, event: LeaseLost, now: float, out: list[Command]) -> None:
        """A dial the store refused for its lease: the call ends as a lost dial, with nothing recorded of it (it
        never happened) and its lead let go without a word to the store (not ours: the store's state of it, or
        its new holder's, is the one that counts). Late codes held for the lead go to the store instead."""
        call = self._live_call(event.call_id)
        if call is None:
            return
        call.attempt.outcome = Outcome.LOST
        self._finish(call, now, out, made=False)
        camp, lead_id = self.campaigns[call.attempt.campaign_id], call.attempt.lead_id
        for late in camp.dispositions_held.pop(lead_id, []):
            out.append(self._ask_store(camp, lead_id, late))

    def _on_ended(self, event: CallEnded, now: float, out: list[Command]) -> None:
        call = self._live_call(event.call_id)
        if call is None:
            return
        att = call.attempt
        camp = self.campaigns[att.campaign_id]
        att.hangup_cause = event.hangup_cause
        if call.state in ("dialing", "ringing"):
            # Hung up before any answer we saw: the fate is a failure of the attempt, never a silent redial.
            camp.strategy.observe(DialResult(now, now - att.dialed_at, "none"))
            att.outcome = Outcome.FAILED if event.hangup_cause is None else outcome_for_cause(event.hangup_cause)
        elif call.state == "waiting":
            # The person hung up while waiting for an agent: abandoned (DESIGN.md, Words and figures).
            self._abandon(call, now, out, play_message=False)  # no message to play: the line is gone
        elif call.state == "connected" and att.agent_id is not None:
            self._note_handled(att.agent_id, att)
            agent = self.agents.get(att.agent_id)
            if agent is not None and agent.call_id == att.call_id:
                self.agents.start_wrapup(agent, now)
                if camp.settings.wrapup_s is not None:  # None: the agent (or a disposition) ends it
                    self._add_timer(now + camp.settings.wrapup_s, "wrapup", agent.agent_id + "\x00" + att.call_id)
                out.append(self._agent_emit(agent))
        self._finish(call, now, out)

    def _finish(self, call: Call, now: float, out: list[Command], *, made: bool = True) -> None:
        """A call is over: its attempt recorded, its lead recycled or let go, `call.ended` emitted. Not `made` (the
        store refused its dial for the lead's lease): nothing recorded or emitted, and the lead, no longer this
        node's, leaves the hopper without a word to the store."""
        att = call.attempt
        camp = self.campaigns[att.campaign_id]
        call.ended = True
        att.ended_at = now
        if att.outcome is None:
            att.outcome = Outcome.FAILED
        camp.in_flight.pop(att.call_id, None)
        camp.waiting.pop(att.call_id, None)
        outcome = att.outcome.value
        camp.outcomes[outcome] = camp.outcomes.get(outcome, 0) + 1
        del self.calls[att.call_id]
        if call.reserved_agent is not None and att.connected_at is None:
            waiting_agent = self.agents.get(call.reserved_agent)
            if waiting_agent is not None and waiting_agent.status is AgentStatus.PREVIEW:
                waiting_agent.preview = waiting_agent.preview_campaign = None
                self._end_wrapup_or_pause(waiting_agent, now, out)  # back to ready (or the pause it asked for)
        record_at = len(out)
        if made:
            out.append(RecordAttempt(att.copy()))
        if att.outcome is Outcome.CONNECTED:
            camp.gate.history.note_contact(att.lead_id, att.connected_at or now)
        elif att.outcome is Outcome.ABANDONED:
            camp.gate.history.note_abandon(att.lead_id, att.answered_at or now)
        # A lost dial was never made: the DID was shown to nobody, so its answer rate learns nothing from it.
        if camp.pool is not None and att.caller_id_reason not in (None, "campaign") and att.outcome is not Outcome.LOST:
            talk = now - att.connected_at if att.connected_at is not None else None
            camp.pool.record(att.caller_id, now, answered_live=att.outcome.live, talk_s=talk)
        if made:
            self._lead_back(camp, att.lead_id, att.number, att.outcome, now, out, checkpoint_at=record_at)
            out.append(Emit("call.ended", att.as_dict()))
        else:
            with contextlib.suppress(ValueError):  # back from being out, then let go
                camp.hopper.outcome(att.lead_id, att.number, att.outcome, now)
            camp.hopper.let_go(att.lead_id)

    # ------------------------------------------------------------------ agents

    def _on_agent_state(self, event: AgentState, now: float, out: list[Command]) -> None:
        agent = self.agents.get(event.agent_id)
        if agent is None or agent.status in (AgentStatus.LOGGED_OUT, AgentStatus.CONNECTING):
            return
        if event.state is AgentStatus.PAUSED:
            if agent.status is AgentStatus.READY:
                self.agents.set_status(agent, AgentStatus.PAUSED, now, reason=event.reason)
            else:
                agent.pause_requested = event.reason or "paused"  # takes effect when the call is wrapped up
        elif event.state is AgentStatus.READY:
            agent.pause_requested = None
            if agent.status in (AgentStatus.PAUSED, AgentStatus.WRAPUP):
                self._end_wrapup_or_pause(agent, now, out)
                return
        elif event.state is AgentStatus.WRAPUP:
            return
        out.append(self._agent_emit(agent))

    def _on_disposition(self, event: Disposition, now: float, out: list[Command]) -> None:
        # The attempt is already final; the disposition steers the lead and, on time, completes the agent's wrap-up.
        for agent in self.agents.all():
            if agent.last_call_id == event.call_id and agent.status is AgentStatus.WRAPUP:
                done = agent.last_attempt
                camp = self.campaigns.get(agent.last_campaign_id or "")
                self._dispose(event, agent.agent_id, done if done is not None and done.call_id == event.call_id
                              else None, camp, now, out, late=False)
                self._end_wrapup_or_pause(agent, now, out)
                return
        # Late: the wrap-up is over (its timer, the agent's ready, its leg dropped) and the agent may be on another
        # call. The call is steered as on time; the agent is left as it is.
        handled = self._handled.get(event.call_id)
        if handled is None:
            raise CoreError(f"call_id: {event.call_id!r} is not a call an agent handled (unknown, not over, or "
                            f"older than {self.config.late_disposition_s:g} s or the agent's last "
                            f"{self.config.late_disposition_calls} calls)")
        done = handled.attempt
        if done.disposition is not None:
            raise CoreError(f"call_id: {event.call_id!r} already has its disposition ({done.disposition}): "
                            "one per call")
        self._dispose(event, handled.agent_id, done, self.campaigns.get(done.campaign_id), now, out, late=True)

    def _dispose(self, event: Disposition, agent_id: str, done: Attempt | None, camp: CampaignState | None,
                 now: float, out: list[Command], *, late: bool) -> None:
        """What a disposition does to its call's lead, on time or late: DNC, wrong party, the lead ended, called
        back or its phone dropped; the attempt recorded again with it; call.disposition emitted."""
        scheduled: float | None = None
        held = stored = False
        if camp is not None and done is not None:
            ptp_date = date.fromisoformat(event.ptp_date) if event.ptp_date else None
            code = camp.dispositions.validate(event.code, event.callback_at, event.ptp_amount, ptp_date, now=now)
            if code.dnc:
                cid = camp.settings.campaign_id
                self.dnc.add(done.number, cid, now)  # before the next dial, whatever the lead's state
                # Until a snapshot of the shared store shows it, no snapshot may take it off again.
                self._dnc_unstored.add((cid, lookup_key(done.number)))
                out.append(PersistDnc(done.number, cid))
            if code.wrong_party and done.outcome is Outcome.CONNECTED and done.connected_at is not None:
                # Not a conversation with the debtor: no Reg F 7-day block, no contact cap; still a call
                # toward the attempt caps. The store hears it from this disposition's RecordAttempt.
                camp.gate.history.note_wrong_party(done.lead_id, done.connected_at)
            info = camp.hopper.info(done.lead_id)
            before = info.state if info is not None else None
            callback_agent = agent_id if event.own_callback else None
            late_code = _LateDisposition(done.number, code, done.outcome or Outcome.CONNECTED, event.callback_at,
                                         callback_agent, done.call_id)
            if before == "out":
                # Out again (a short recycle delay, a callback, a preview screen): the hopper takes it when it is back.
                held = True
                scheduled = event.callback_at
                camp.dispositions_held.setdefault(done.lead_id, []).append(late_code)
            elif before not in (None, "done", "removed"):
                scheduled = event.callback_at
                after = camp.hopper.dispose(done.lead_id, done.number, code, now,
                                            callback_at=event.callback_at, callback_agent=callback_agent)
                if after in ("done", "removed"):
                    out.append(ReleaseLead(camp.settings.campaign_id, done.lead_id, done.outcome
                                           or Outcome.CONNECTED, final=True))
                else:
                    self._checkpoint(camp, done.lead_id, out)
            elif before is None and code.steers_lead:
                # Handed back to the store (campaign stopped, node leaving; another node may hold it now): the store
                # applies the code wherever the lead is. It used to do nothing: a debtor who paid was called again.
                stored = True
                scheduled = event.callback_at
                out.append(self._ask_store(camp, done.lead_id, late_code))
            # The attempt keeps what the code carried (GET /attempts, the stored history), not only the event.
            done.disposition = event.code
            done.ptp_amount = event.ptp_amount
            done.ptp_date = ptp_date.isoformat() if ptp_date is not None else None
            done.callback_at = scheduled
            out.append(RecordAttempt(done.copy()))
        # callback_at: the callback scheduled, or asked of the store (None where the lead is no longer dialed: nothing
        # was); `held`: the lead was out on another call, and takes the code (and its callback) when that call is
        # over; `stored`: the lead is no longer held here, the store was asked to apply the code wherever the lead
        # is (its answer follows as `lead.disposition`).
        out.append(Emit("call.disposition", {"call_id": event.call_id, "code": event.code, "agent_id": agent_id,
                                             "callback_at": scheduled,
                                             "ptp_amount": event.ptp_amount, "ptp_date": event.ptp_date,
                                             "late": late, "held": held, "stored": stored}))

    @staticmethod
    def _ask_store(camp: CampaignState, lead_id: str, late: _LateDisposition) -> AskDisposition:
        """The store command that applies a code to its lead wherever the lead is: what the hopper would do (end
        the lead, drop the dialed phone) and the callback it asked for."""
        code, effect = late.code, None
        if code.final or code.wrong_party or code.dnc:
            effect = StoredCode(code.code, late.call_id, late.number, late.outcome, final=code.final,
                                drop=code.wrong_party or code.dnc)
        return AskDisposition(camp.settings.campaign_id, lead_id, effect,
                              late.callback_at if code.callback else None,
                              late.callback_agent if code.callback else None)

    def _on_stored_disposition(self, event: StoredDisposition, now: float, out: list[Command]) -> None:
        """A code another node took for a lead held here, kept for it in the store: applied as a late disposition
        (held while the lead is out on a call). A lead that left this hopper meanwhile gets it through the store
        again."""
        camp = self._campaign(event.campaign_id)
        stored, lead_id = event.code, event.lead_id
        code = DispositionCode(stored.code, stored.code, final=stored.final, wrong_party=stored.drop)
        info = camp.hopper.info(lead_id)
        if info is None:
            out.append(AskDisposition(event.campaign_id, lead_id, stored))
            result = "stored"
        elif info.state in ("done", "removed"):
            result = info.state
        elif info.state == "out":
            camp.dispositions_held.setdefault(lead_id, []).append(
                _LateDisposition(stored.number, code, stored.outcome, None, None, stored.call_id))
            result = "held"
        elif camp.hopper.dispose(lead_id, stored.number, code, now) in ("done", "removed"):
            out.append(ReleaseLead(event.campaign_id, lead_id, stored.outcome, final=True))
            result = "ended"
        else:
            result = "applied"
            self._checkpoint(camp, lead_id, out)
        out.append(Emit("lead.disposition", {"campaign_id": event.campaign_id, "lead_id": lead_id,
                                             "call_id": stored.call_id, "code": stored.code, "result": result}))

    def _apply_held(self, camp: CampaignState, lead_id: str, now: float) -> Outcome | None:
        """The dispositions held for a lead now back in the hopper (not out): applied in order. The outcome to
        tell the store if they ended the lead, else None."""
        for late in camp.dispositions_held.pop(lead_id, ()):
            state = camp.hopper.dispose(lead_id, late.number, late.code, now, callback_at=late.callback_at,
                                        callback_agent=late.callback_agent)
            if state in ("done", "removed"):
                return late.outcome
        return None

    def _settle_held(self, camp: CampaignState, now: float, out: list[Command]) -> None:
        """Held dispositions of leads that came back without an outcome (a preview skipped, a dial not made)."""
        for lead_id in list(camp.dispositions_held):
            info = camp.hopper.info(lead_id)
            if info is None or info.state in ("done", "removed"):
                del camp.dispositions_held[lead_id]  # ended meanwhile, or no longer here: nothing left to steer
            elif info.state != "out":
                ended = self._apply_held(camp, lead_id, now)
                if ended is not None:
                    out.append(ReleaseLead(camp.settings.campaign_id, lead_id, ended, final=True))
                else:
                    self._checkpoint(camp, lead_id, out)

    def handled_call(self, call_id: str) -> HandledCall | None:
        """The connected call `call_id` an agent handled, while it is kept for a disposition (see `CoreConfig`)."""
        return self._handled.get(call_id)

    def _note_handled(self, agent_id: str, attempt: Attempt, kept_from: float | None = None) -> None:
        self._handled[attempt.call_id] = HandledCall(agent_id, attempt, kept_from)
        recent = self._handled_by_agent.setdefault(agent_id, deque())
        recent.append(attempt.call_id)
        while len(recent) > max(1, self.config.late_disposition_calls):
            self._handled.pop(recent.popleft(), None)

    def _prune_handled(self, now: float) -> None:
        """Calls that ended more than `late_disposition_s` ago take no disposition any more (oldest first)."""
        limit = now - self.config.late_disposition_s
        while self._handled:
            call_id, oldest = next(iter(self._handled.items()))
            since = oldest.attempt.ended_at if oldest.kept_from is None else oldest.kept_from
            if since is not None and since >= limit:
                return
            del self._handled[call_id]
            recent = self._handled_by_agent.get(oldest.agent_id)
            if recent is not None:
                if recent and recent[0] == call_id:
                    recent.popleft()
                if not recent:
                    del self._handled_by_agent[oldest.agent_id]

    def _end_wrapup_or_pause(self, agent: Agent, now: float, out: list[Command]) -> None:
        if agent.status is AgentStatus.WRAPUP and agent.wrap_started_at is not None and agent.connected_at is not None:
            camp = self.campaigns.get(agent.last_campaign_id or "")
            if camp is not None:
                talk = agent.wrap_started_at - agent.connected_at
                camp.strategy.observe(HandleResult(now, talk_s=talk, wrap_s=now - agent.wrap_started_at))
        if agent.logout_requested:
            out.append(HangupAgentLeg(agent.agent_id))
            self.agents.set_status(agent, AgentStatus.PAUSED, now, reason="logging out")
            self._await_leg(agent, now)
        elif agent.pause_requested:
            self.agents.set_status(agent, AgentStatus.PAUSED, now, reason=agent.pause_requested)
            agent.pause_requested = None
        else:
            self.agents.set_status(agent, AgentStatus.READY, now)
        out.append(self._agent_emit(agent))
        stopped = self.campaigns.get(agent.last_campaign_id or "")
        if stopped is not None and stopped.status is CampaignStatus.STOPPED:
            self._hand_back(stopped, out)  # the lead held for this wrap-up's disposition
        self._serve_waiting(agent, now, out)

    def _on_agent_disconnected(self, event: AgentDisconnected, now: float, out: list[Command]) -> None:
        gone = self.agents.get(event.agent_id)
        if gone is None or gone.status is AgentStatus.LOGGED_OUT:
            return
        if gone.call_id is not None and gone.status is AgentStatus.ON_CALL:
            # The call normally ends on its own events (end_marked); if it has not after a grace, it is hung up.
            self._add_timer(now + self.config.orphan_hangup_s, "orphan", f"{gone.agent_id}\x00{gone.call_id}")
        gone.call_id = None  # the agent no longer holds the call
        gone.leg_gen += 1  # word of the leg: no timeout (a rejoin's origination is timed when it is sent)
        self._drop_preview(gone, now)
        if gone.logout_requested or gone.rejoins >= self.config.agent_rejoin_attempts:
            reason = "" if gone.logout_requested else "phone unreachable"
            self.agents.set_status(gone, AgentStatus.LOGGED_OUT, now, reason=reason)
            gone.logout_requested = False
            gone.rejoins = 0
        else:
            # The leg dropped without a logout (PBX restart, link loss): call the agent's phone back, now if
            # the link is up, or when it comes back (rejoins are not spent while nothing can be sent).
            self.agents.set_status(gone, AgentStatus.CONNECTING, now, reason="rejoining")
            if self.pbx_up:
                gone.rejoins += 1
                gone.rejoin_gen += 1
                delay = min(self.config.agent_rejoin_max_delay_s,
                            self.config.agent_rejoin_delay_s * 2 ** (gone.rejoins - 1))
                self._add_timer(now + delay, "rejoin", f"{gone.agent_id}\x00{gone.rejoin_gen}")
        out.append(self._agent_emit(gone))

    @staticmethod
    def _waits_on_leg(agent: Agent) -> bool:
        """The agent's leg was originated or hung up, and the agent waits for the PBX's word of it: connecting, or
        out of the ready pool for a logout (a logout waiting for its wrap-up to end has sent nothing yet)."""
        return agent.status is AgentStatus.CONNECTING or \
            (agent.logout_requested and agent.status is AgentStatus.PAUSED)

    def _await_leg(self, agent: Agent, now: float) -> None:
        """The PBX was asked to originate or hang up the agent's leg: if no word of it comes back within
        `agent_leg_timeout_s` (the action failed without an event), `_leg_timed_out` logs the agent out."""
        agent.leg_gen += 1
        self._add_timer(now + self.config.agent_leg_timeout_s, "leg", f"{agent.agent_id}\x00{agent.leg_gen}")

    def _leg_timed_out(self, agent: Agent, now: float, out: list[Command]) -> None:
        """No word of the agent's leg in time: logged out as a logout ends (its preview lead, if any, goes back; its
        own callbacks fall due to the campaign), reason "leg timeout", and whatever is left of the leg is hung up
        (a leg that still comes up later is hung up as soon as the PBX announces it)."""
        self._drop_preview(agent, now)
        out.append(HangupAgentLeg(agent.agent_id))
        self.agents.set_status(agent, AgentStatus.LOGGED_OUT, now, reason="leg timeout")
        agent.logout_requested = False
        agent.rejoins = 0
        agent.leg_gen += 1
        out.append(self._agent_emit(agent))

    def _serve_waiting(self, agent: Agent, now: float, out: list[Command]) -> None:
        """A newly free agent takes the longest-waiting answered call it may serve."""
        if agent.status is not AgentStatus.READY:
            return
        best: Call | None = None
        for cid in self.agents.campaigns_of(agent, {c: st.settings.skill for c, st in self.campaigns.items()}):
            camp = self.campaigns[cid]
            for call_id in camp.waiting:
                call = self.calls[call_id]
                if best is None or (call.attempt.answered_at or 0) < (best.attempt.answered_at or 0):
                    best = call
                break  # dict keeps answer order: the first is the oldest of this campaign
        if best is not None:
            self._connect(best, agent, now, out)

    def _agent_emit(self, agent: Agent) -> Emit:
        return Emit("agent.state", {"agent_id": agent.agent_id, "state": agent.status.value,
                                    "reason": agent.reason, "since": agent.since})

    # ------------------------------------------------------------------ campaign control and pacing

    def _on_campaign_control(self, event: CampaignControl, now: float, out: list[Command]) -> None:
        camp = self._campaign(event.campaign_id)
        if event.action == "start":
            if camp.status is CampaignStatus.STOPPED:
                camp.exhausted = False
            camp.status = CampaignStatus.RUNNING
            self._maybe_fetch(camp, now, out)
        elif event.action == "pause":
            # A campaign this node never ran takes the pause too: it dials nothing either way, and its figures
            # must say paused (as every node's API does), not created.
            if camp.status in (CampaignStatus.RUNNING, CampaignStatus.CREATED):
                camp.status = CampaignStatus.PAUSED
        elif event.action == "stop":
            camp.status = CampaignStatus.STOPPED
            self._hand_back(camp, out)
        out.append(Emit("campaign.state", {"campaign_id": camp.settings.campaign_id, "status": camp.status.value}))

    def _maybe_fetch(self, camp: CampaignState, now: float, out: list[Command]) -> None:
        if camp.fetch_pending or camp.hopper.pending >= self.config.hopper_low_water:
            return
        if camp.exhausted and now - camp.last_fetch_at < 5.0:
            return  # an empty store is asked again every few seconds, not every tick
        camp.fetch_pending = True
        camp.last_fetch_at = now
        out.append(FetchLeads(camp.settings.campaign_id, self.config.hopper_batch))

    def snapshot(self, campaign_id: str, now: float) -> PacingSnapshot:
        camp = self._campaign(campaign_id)
        s = camp.settings
        ready = 0
        talking: list[float] = []
        wrap_total: list[float] = []
        wrap_in: list[float] = []
        agents = self.agents.serving(campaign_id, s.skill)
        owner = self._agent_owners()
        if owner:  # shared out to another campaign: that one paces for it
            agents = [a for a in agents if owner.get(a.agent_id, campaign_id) == campaign_id]
        ready_st, call_st, wrap_st = AgentStatus.READY, AgentStatus.ON_CALL, AgentStatus.WRAPUP
        # Busy agents, on this campaign's call or another's: when one frees, it is this campaign's to dial for.
        for agent in agents:
            st = agent.status
            if st is call_st:  # the usual state first: this loop runs for every agent on every tick
                talking.append(now - (agent.connected_at or now))
            elif st is ready_st:
                ready += 1
            elif st is wrap_st:
                wrap_total.append(now - (agent.connected_at or now))
                wrap_in.append(now - (agent.wrap_started_at or now))
        logged = ready + len(talking) + len(wrap_total)
        while camp.launches and camp.launches[0] <= now - 1.0:
            camp.launches.popleft()
        ringing = tuple([now - t for t in camp.in_flight.values()])  # a list first: quicker than a generator
        return PacingSnapshot(
            now=now,
            agents_logged_in=logged,
            agents_ready=ready,
            talking_elapsed=tuple(talking),
            wrapup_elapsed=tuple(wrap_total),
            wrapup_in_state=tuple(wrap_in),
            ringing_elapsed=ringing,
            waiting_calls=len(camp.waiting),
            calls_launched_last_s=len(camp.launches),
            abandon_threshold_s=s.abandon_threshold_s,
            ring_timeout_s=s.ring_timeout_s,
        )

    def _agent_owners(self) -> dict[str, str]:
        """Which running campaign paces for each agent that several running campaigns could use.

        Whole agents, shared in proportion to campaign weights (each agent goes to the eligible campaign with
        the fewest agents per unit of weight so far; ties by campaign id), so two campaigns never both dial
        for the same agent. Agents only one campaign can use are not listed.
        """
        running = [c for c in self.campaigns.values() if c.status is CampaignStatus.RUNNING]
        if len(running) < 2:
            return {}
        key = (self.agents.sharing_version,
               tuple((c.settings.campaign_id, c.settings.weight, c.settings.skill) for c in running))
        if key == self._owners_key:
            return self._owners
        given: dict[str, int] = {c.settings.campaign_id: 0 for c in running}
        owners: dict[str, str] = {}
        for agent in sorted(self.agents.all(), key=lambda a: a.agent_id):
            if agent.status not in SHARED_STATES:
                continue
            eligible = [c.settings for c in running if agent.serves(c.settings.campaign_id, c.settings.skill)]
            if len(eligible) < 2:
                continue
            pick = min(eligible, key=lambda st: (given[st.campaign_id] / st.weight, st.campaign_id))
            given[pick.campaign_id] += 1
            owners[agent.agent_id] = pick.campaign_id
        self._owners_key, self._owners = key, owners
        return owners

    def _pace(self, camp: CampaignState, now: float, out: list[Command]) -> None:
        self._maybe_fetch(camp, now, out)
        if not (self.pbx_up and self.store_up):
            return  # nothing can be sent or recorded: leads stay in the hopper rather than fail unsent
        if camp.dids_back_at is not None:
            if now < camp.dids_back_at:
                return
            camp.dids_back_at = None
        if camp.hopper.has_agent_callbacks:
            self._orphan_callbacks(camp, now)
        if camp.settings.strategy != PREVIEW and camp.hopper.has_agent_callbacks:  # preview: the owner asks
            self._serve_agent_callbacks(camp, now, out)
        snap = self.snapshot(camp.settings.campaign_id, now)
        if snap.agents_logged_in == 0:
            return  # never dial with nobody to take the call, whatever a strategy says
        n = camp.strategy.decide(snap)
        s = camp.settings
        lines = len(camp.in_flight) + len(camp.waiting)
        n = min(n, s.max_lines - lines, int(s.max_lines_per_agent * snap.agents_logged_in) - lines,
                int(s.max_calls_per_s) - snap.calls_launched_last_s)
        if n > 0:
            picks = camp.hopper.select(n, now, self._gate(camp, out))
            for i, pick in enumerate(picks):
                if self._dial(camp, pick, now, out) is None:  # no caller ID within caps: the rest wait
                    for rest in picks[i:]:
                        camp.hopper.release(rest.lead.lead_id, now)
                    break
        self._maybe_fetch(camp, now, out)

    def _orphan_callbacks(self, camp: CampaignState, now: float) -> None:
        """A due callback owned by an agent who is logged out (or unknown here, or no longer serves the campaign)
        goes to the campaign: its owner would only dial it once logged in, and the debtor was promised the time.
        An owner who is paused, busy or connecting keeps it: they are on shift and take it when ready."""
        cid, skill = camp.settings.campaign_id, camp.settings.skill
        for agent_id in camp.hopper.callback_owners():
            owner = self.agents.get(agent_id)
            if owner is None or owner.status is AgentStatus.LOGGED_OUT or not owner.serves(cid, skill):
                camp.hopper.reassign_agent_callbacks(agent_id, None, due_by=now)

    def _serve_agent_callbacks(self, camp: CampaignState, now: float, out: list[Command]) -> None:
        """A ready agent with a callback of its own due dials it now, reserved for it (never abandoned, never
        another agent's), as in preview; the pacer counts the rest of the floor."""
        cid = camp.settings.campaign_id
        gate = self._gate(camp, out, agent_reserved=True)
        for agent in list(self.agents.serving(cid, camp.settings.skill)):
            if agent.status is not AgentStatus.READY:
                continue
            picks = camp.hopper.due_agent_callbacks(agent.agent_id, now, gate, count=1)
            if not picks:
                continue
            pick = picks[0]
            agent.preview, agent.preview_campaign = pick.lead, cid
            self.agents.set_status(agent, AgentStatus.PREVIEW, now, reason="callback")
            out.append(self._agent_emit(agent))
            call_id = self._dial(camp, pick, now, out)
            if call_id is None:  # no caller ID within caps now: the callback waits, the agent is free
                camp.hopper.release(pick.lead.lead_id, now)
                agent.preview = agent.preview_campaign = None
                self._end_wrapup_or_pause(agent, now, out)
                return
            self.calls[call_id].reserved_agent = agent.agent_id

    def _gate(self, camp: CampaignState, out: list[Command], *,
              agent_reserved: bool = False) -> Callable[[Lead, str, float], Refusal | None]:
        """The campaign's compliance gate as the hopper calls it; every refusal is counted and emitted."""
        gate = camp.gate

        def check(lead: Lead, number: str, now: float) -> Refusal | None:
            refusal = gate.check(lead, number, now, agent_reserved=agent_reserved)
            if refusal is not None:
                self._note_refusal(camp, lead.lead_id, number, refusal, out)
            return refusal

        return check

    @staticmethod
    def _note_refusal(camp: CampaignState, lead_id: str, number: str, refusal: Refusal, out: list[Command]) -> None:
        reason = refusal.reason.value
        camp.refused[reason] = camp.refused.get(reason, 0) + 1
        out.append(Emit("dial.refused", {"campaign_id": camp.settings.campaign_id, "lead_id": lead_id,
                                         "number": number, "reason": reason, "detail": refusal.detail,
                                         "retry_at": refusal.retry_at}))

    def _lead_back(self, camp: CampaignState, lead_id: str, number: str, outcome: Outcome, now: float,
                   out: list[Command], *, checkpoint_at: int | None = None) -> None:
        """A dialed lead's call is over: the hopper recycles it or lets it go (then the store hears it is done).
        A recycled lead's checkpoint goes at `checkpoint_at` in `out`: ahead of the call's final record, so that a
        node killed between the two writes leaves the call in flight (written `lost`, the lead held back) with the
        lead's new state, never the outcome without the state (the lead back afresh, dialed again at once)."""
        try:
            state = camp.hopper.outcome(lead_id, number, outcome, now)
        except ValueError:  # not out from this hopper (e.g. dialed before a restart): the store decides
            out.append(ReleaseLead(camp.settings.campaign_id, lead_id, outcome, final=outcome.live))
            return
        if lead_id in camp.dispositions_held and state not in ("done", "removed"):
            ended = self._apply_held(camp, lead_id, now)  # a late disposition taken while it was on this call
            if ended is not None:
                state, outcome = "done", ended
        if state in ("done", "removed"):
            out.append(ReleaseLead(camp.settings.campaign_id, lead_id, outcome, final=True))
        elif camp.status is CampaignStatus.STOPPED:
            self._hand_back(camp, out)  # back from its last call after the stop: nothing here will dial it
        else:
            self._checkpoint(camp, lead_id, out, at=checkpoint_at)

    def _checkpoint(self, camp: CampaignState, lead_id: str, out: list[Command], *, at: int | None = None) -> None:
        """The hopper's state of a lead held here, changed just now, for the store to keep with its lease (see
        `CheckpointLead`), at the end of `out` or at index `at`. Nothing for a lead not waiting here (out on a
        call: its outcome checkpoints it)."""
        if not self.config.checkpoint_leads:
            return
        handoff = camp.hopper.handoff_state(lead_id)
        if handoff is not None:
            cmd = CheckpointLead(camp.settings.campaign_id, lead_id, handoff[0])
            if at is None:
                out.append(cmd)
            else:
                out.insert(at, cmd)

    def leave(self) -> list[Command]:
        """The node is going away (its runtime stops): every lead still held goes back to the store, the one kept
        for a wrap-up's disposition too (no disposition can reach this node any more; left, it would stay leased
        until its lease ran out)."""
        out: list[Command] = []
        for camp in self.campaigns.values():
            self._hand_back(camp, out, keep_wrapping=False)
        return out

    def _hand_back(self, camp: CampaignState, out: list[Command], *, keep_wrapping: bool = True) -> None:
        """A stopped campaign's waiting leads go back to the store untouched (not attempted, not final), except
        the lead of a call an agent is still wrapping up: its disposition (PAID, a callback...) must reach it
        first, or the store would hand out a debtor who just paid. It goes when the wrap-up ends."""
        cid = camp.settings.campaign_id
        wrapping = frozenset(a.last_attempt.lead_id for a in self.agents.all()
                             if keep_wrapping and a.status is AgentStatus.WRAPUP and a.last_campaign_id == cid
                             and a.last_attempt is not None)
        for lead_id in camp.hopper.drain(keep=wrapping):
            # With what the hopper knew of it, so that whichever node leases it next goes on from there.
            handoff = camp.hopper.handoff_state(lead_id)
            state, eligible_at = handoff if handoff is not None else (None, None)
            out.append(ReleaseLead(cid, lead_id, Outcome.LOST, final=False, state=state, eligible_at=eligible_at))

    def _dial(self, camp: CampaignState, pick: Pick, now: float, out: list[Command]) -> str | None:
        s = camp.settings
        lead = pick.lead
        caller_id, cid_reason = s.caller_id, "campaign"
        if camp.pool is not None:
            try:
                choice = camp.pool.choose(lead.lead_id, pick.number, now)
            except PoolExhausted as exc:
                out.append(Emit("did.exhausted", {"campaign_id": s.campaign_id, "retry_at": exc.retry_at}))
                camp.dids_back_at = math.inf if exc.retry_at is None else exc.retry_at
                return None
            caller_id, cid_reason = choice.did, choice.reason
        self._seq += 1
        call_id = f"{self.config.id_prefix}-{self._seq}"
        camp.gate.history.note_attempt(lead.lead_id, pick.number, now)
        att = Attempt(call_id=call_id, campaign_id=s.campaign_id, lead_id=lead.lead_id, number=pick.number,
                      caller_id=caller_id, dialed_at=now, caller_id_reason=cid_reason, phone_reason=pick.reason)
        self.calls[call_id] = Call(attempt=att)
        camp.in_flight[call_id] = now
        camp.launches.append(now)
        camp.attempts += 1
        out.append(RecordAttempt(att.copy()))
        out.append(Originate(call_id=call_id, campaign_id=s.campaign_id, lead_id=lead.lead_id, number=pick.number,
                             caller_id=caller_id, timeout_s=s.ring_timeout_s,
                             variables={"MARCADOR_CALL_ID": call_id, "MARCADOR_CAMPAIGN": s.campaign_id,
                                        "MARCADOR_AMD": "1" if s.amd else "0",
                                        "MARCADOR_HOLD_S": str(hold_limit_s(s.abandon_threshold_s))}))
        out.append(Emit("call.dialed", {"call_id": call_id, "campaign_id": s.campaign_id, "lead_id": lead.lead_id,
                                        "number": pick.number, "caller_id": caller_id,
                                        "caller_id_reason": cid_reason, "phone_reason": pick.reason}))
        return call_id

    # ------------------------------------------------------------------ timers

    def _add_timer(self, due: float, kind: str, key: str) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (due, self._timer_seq, kind, key))

    def _timer_live(self, timer: tuple[float, int, str, str]) -> bool:
        _, _, kind, key = timer
        if kind == "abandon":
            call = self.calls.get(key)
            return call is not None and call.state == "waiting"
        if kind == "rejoin":
            agent_id, _, gen = key.partition("\x00")
            rejoining = self.agents.get(agent_id)
            return (rejoining is not None and rejoining.status is AgentStatus.CONNECTING and self.pbx_up
                    and str(rejoining.rejoin_gen) == gen)
        if kind == "leg":
            agent_id, _, gen = key.partition("\x00")
            waiting = self.agents.get(agent_id)
            # The link down stops the clock: when it is back, the legs are called again and timed from then.
            return waiting is not None and str(waiting.leg_gen) == gen and self.pbx_up and self._waits_on_leg(waiting)
        agent_id, _, call_id = key.partition("\x00")
        if kind == "orphan":
            call = self.calls.get(call_id)
            return (call is not None and not call.ended and call.state == "connected"
                    and call.attempt.agent_id == agent_id)
        agent = self.agents.get(agent_id)
        return agent is not None and agent.status is AgentStatus.WRAPUP and agent.last_call_id == call_id

    def _run_timers(self, now: float, out: list[Command]) -> None:
        while self._timers and self._timers[0][0] <= now:
            timer = heapq.heappop(self._timers)
            if not self._timer_live(timer):
                continue
            _, _, kind, key = timer
            if kind == "abandon":
                self._abandon(self.calls[key], now, out)
            elif kind == "rejoin":
                rejoining = self.agents.get(key.partition("\x00")[0])
                if rejoining is not None:
                    out.append(OriginateAgentLeg(rejoining.agent_id))
                    self._await_leg(rejoining, now)
            elif kind == "leg":
                waiting = self.agents.get(key.partition("\x00")[0])
                if waiting is not None:
                    self._leg_timed_out(waiting, now, out)
            elif kind == "orphan":
                out.append(Hangup(key.partition("\x00")[2]))
            else:
                agent = self.agents.get(key.partition("\x00")[0])
                if agent is not None:
                    self._end_wrapup_or_pause(agent, now, out)

    # ------------------------------------------------------------------ figures

    def stats(self, campaign_id: str, now: float) -> dict[str, Any]:
        camp = self._campaign(campaign_id)
        occ = self.agents.occupancy(campaign_id, now, camp.settings.skill)
        agents = self.agents.counts(campaign_id, camp.settings.skill)
        working = sum(agents.get(s.value, 0) for s in SHARED_STATES)
        lines = len(camp.in_flight) + len(camp.waiting)
        return {
            "campaign_id": campaign_id,
            "status": camp.status.value,
            "strategy": camp.strategy.name,
            "attempts": camp.attempts,
            "outcomes": dict(camp.outcomes),
            "live_answers": camp.live_answers,
            "connected": camp.connected,
            "abandoned": camp.abandoned,
            "abandon_rate": camp.abandoned / camp.live_answers if camp.live_answers else 0.0,
            "abandon_target": camp.settings.abandon_target,
            "in_flight": len(camp.in_flight),
            "waiting": len(camp.waiting),
            "hopper": camp.hopper.counts(),
            "refused": dict(camp.refused),
            "agents": agents,
            "lines_per_agent": lines / working if working else 0.0,  # lines up per ready, talking or wrapping agent
            **occ,
        }


class _NoDial:
    """Preview campaigns: the pacer launches nothing; agents dial."""

    name = PREVIEW

    def observe(self, obs: object) -> None:
        pass

    def decide(self, snap: PacingSnapshot) -> int:
        return 0
