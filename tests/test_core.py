"""Unit tests of the sans-IO core: events in, commands out, time passed in."""

from __future__ import annotations

import dataclasses
from dataclasses import replace

import pytest

from dialer.commands import (
    AskDisposition,
    CheckpointLead,
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
from dialer.compliance import Reason
from dialer.core import CoreConfig, CoreError, DialerCore
from dialer.events import (
    AdoptCall,
    AgentConnected,
    AgentDisconnected,
    AgentLegHeld,
    AgentLogin,
    AgentLogout,
    AgentMissing,
    AgentState,
    CallAnswered,
    CallEnded,
    CallFailed,
    CampaignControl,
    DebtorHistorySeed,
    Disposition,
    DncAdd,
    DncSnapshot,
    LeadsAvailable,
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
from dialer.model import AgentStatus, Attempt, CampaignSettings, Lead, Outcome, StoredCode, outcome_for_cause


def of(cmds, kind):
    return [c for c in cmds if isinstance(c, kind)]


def make(n_leads=10, agents=("a1",), **settings):
    core = DialerCore(CoreConfig(id_prefix="t"))
    core.add_campaign(CampaignSettings(campaign_id="c1", **settings))
    for a in agents:
        assert of(core.handle(AgentLogin(a), 0.0), OriginateAgentLeg) == [OriginateAgentLeg(a)]
        core.handle(AgentConnected(a), 0.0)
    cmds = core.handle(CampaignControl("c1", "start"), 0.0)
    assert of(cmds, FetchLeads)
    leads = tuple(Lead(f"L{i}", "c1", (f"+1555010{i:04d}",)) for i in range(n_leads))
    core.handle(LeadsAvailable("c1", leads), 0.0)
    return core


def test_the_originate_tells_the_dialplan_how_long_to_hold_an_answered_call():
    # past the abandon threshold + 5 s with no word from the engine, marcador-answered plays the abandon message
    (orig,) = of(make(abandon_threshold_s=2.5).tick(1.0), Originate)
    assert orig.variables["MARCADOR_HOLD_S"] == "8"
    (orig,) = of(make().tick(1.0), Originate)
    assert orig.variables["MARCADOR_HOLD_S"] == "7"


def test_progressive_dials_one_per_ready_agent_and_records_attempt():
    core = make(agents=("a1", "a2"))
    cmds = core.tick(1.0)
    origs = of(cmds, Originate)
    assert len(origs) == 2
    assert {o.variables["MARCADOR_CALL_ID"] for o in origs} == {o.call_id for o in origs}
    recs = of(cmds, RecordAttempt)
    assert [r.attempt.outcome for r in recs] == [None, None]
    # nothing more while those two are in flight
    assert not of(core.tick(2.0), Originate)


def test_never_dials_without_agents():
    core = make(agents=())
    assert not of(core.tick(1.0), Originate)


def test_answer_connects_to_free_agent_then_wrapup_then_ready():
    core = make(wrapup_s=5.0)
    (orig,) = of(core.tick(1.0), Originate)
    cmds = core.handle(CallAnswered(orig.call_id), 3.0)
    assert of(cmds, ConnectToAgent) == [ConnectToAgent(orig.call_id, "a1")]
    assert core.agents.get("a1").status is AgentStatus.ON_CALL
    cmds = core.handle(CallEnded(orig.call_id, 16), 30.0)
    (rec,) = of(cmds, RecordAttempt)
    assert rec.attempt.outcome is Outcome.CONNECTED and rec.attempt.ended_at == 30.0
    # A conversation without a final disposition: the hopper keeps the lead for another day, the store is not told.
    assert not of(cmds, ReleaseLead)
    info = core.campaigns["c1"].hopper.info(orig.lead_id)
    assert info.state == "scheduled" and info.next_at == 30.0 + 86400
    assert core.agents.get("a1").status is AgentStatus.WRAPUP
    assert core.next_deadline() == 35.0
    core.tick(35.0)
    assert core.agents.get("a1").status is AgentStatus.READY


def test_disposition_ends_wrapup_early():
    core = make(wrapup_s=60.0)
    (orig,) = of(core.tick(1.0), Originate)
    core.handle(CallAnswered(orig.call_id), 2.0)
    core.handle(CallEnded(orig.call_id), 10.0)
    with pytest.raises(ValueError, match="ptp_amount"):
        core.handle(Disposition(orig.call_id, "PTP"), 11.0)  # a promise without its amount is refused, named
    cmds = core.handle(Disposition(orig.call_id, "PTP", ptp_amount=120.0, ptp_date="2026-12-15"), 12.0)
    assert core.agents.get("a1").status is AgentStatus.READY
    (rel,) = of(cmds, ReleaseLead)  # a final code ends the lead: the store hears it is done
    assert rel.final and rel.lead_id == orig.lead_id
    (rec,) = of(cmds, RecordAttempt)
    # The promise is kept on the attempt (it was only in the call.disposition event).
    assert (rec.attempt.disposition, rec.attempt.ptp_amount, rec.attempt.ptp_date) == ("PTP", 120.0, "2026-12-15")
    assert rec.attempt.callback_at is None


def test_the_promise_date_is_recorded_on_the_attempt_as_an_iso_date():
    core = make(wrapup_s=60.0)
    (orig,) = of(core.tick(1.0), Originate)
    core.handle(CallAnswered(orig.call_id), 2.0)
    core.handle(CallEnded(orig.call_id), 10.0)
    cmds = core.handle(Disposition(orig.call_id, "PTP", ptp_amount=80.25, ptp_date="20261215"), 11.0)
    (rec,) = of(cmds, RecordAttempt)
    assert (rec.attempt.ptp_amount, rec.attempt.ptp_date) == (80.25, "2026-12-15")


def test_dnc_disposition_and_callbacks_steer_the_lead():
    core = make(wrapup_s=60.0, n_leads=2, agents=("a1",))
    (o1,) = of(core.tick(1.0), Originate)
    core.handle(CallAnswered(o1.call_id), 2.0)
    core.handle(CallEnded(o1.call_id), 10.0)
    cmds = core.handle(Disposition(o1.call_id, "CALLBACK", callback_at=500.0, own_callback=True), 11.0)
    assert core.campaigns["c1"].hopper.info(o1.lead_id).callback_agent == "a1"
    (rec,) = of(cmds, RecordAttempt)  # the callback agreed is kept on the attempt
    assert (rec.attempt.callback_at, rec.attempt.ptp_amount, rec.attempt.ptp_date) == (500.0, None, None)
    (o2,) = of(core.tick(12.0), Originate)
    assert o2.lead_id != o1.lead_id
    core.handle(CallAnswered(o2.call_id), 13.0)
    core.handle(CallEnded(o2.call_id), 20.0)
    cmds = core.handle(Disposition(o2.call_id, "DNC"), 21.0)
    assert core.dnc.contains(o2.number, "c1", 21.0)
    assert of(cmds, PersistDnc) == [PersistDnc(o2.number, "c1")]  # the shared store keeps it for every node
    # a snapshot of the store read before that write landed does not take it off again; once shown, it may
    core.handle(DncSnapshot("c1", frozenset(), taken_at=30.0), 31.0)
    assert core.dnc.contains(o2.number, "c1", 31.0)
    core.handle(DncSnapshot("c1", frozenset({o2.number}), taken_at=40.0), 41.0)
    core.handle(DncSnapshot("c1", frozenset(), taken_at=50.0), 51.0)  # then taken off the list by someone
    assert not core.dnc.contains(o2.number, "c1", 51.0)
    with pytest.raises(CoreError):
        core.handle(Disposition("nope", "PAID"), 22.0)


def test_abandon_after_threshold_when_no_agent_free():
    core = make(agents=("a1",), strategy="progressive", abandon_threshold_s=2.0)
    (o1,) = of(core.tick(1.0), Originate)
    core.handle(CallAnswered(o1.call_id), 2.0)  # a1 takes it
    # force a second call in flight by hand: pause can't, so use a second agent that then pauses
    core.handle(AgentLogin("a2"), 2.0)
    core.handle(AgentConnected("a2"), 2.0)
    (o2,) = of(core.tick(2.5), Originate)
    core.handle(AgentState("a2", AgentStatus.PAUSED), 2.6)
    cmds = core.handle(CallAnswered(o2.call_id), 3.0)
    assert not of(cmds, ConnectToAgent)
    assert core.next_deadline() == 5.0
    assert not of(core.tick(4.9), PlayAbandonMessage)
    cmds = core.tick(5.0)
    assert of(cmds, PlayAbandonMessage) == [PlayAbandonMessage(o2.call_id)]
    cmds = core.handle(CallEnded(o2.call_id), 8.0)
    assert of(cmds, RecordAttempt)[0].attempt.outcome is Outcome.ABANDONED
    st = core.stats("c1", 8.0)
    assert st["live_answers"] == 2 and st["abandoned"] == 1 and st["abandon_rate"] == 0.5


def test_waiting_call_goes_to_agent_freed_within_threshold():
    core = make(agents=("a1", "a2"), wrapup_s=1.0)
    o1, o2 = of(core.tick(1.0), Originate)
    core.handle(CallAnswered(o1.call_id), 2.0)
    core.handle(AgentState("a2", AgentStatus.PAUSED), 2.0)
    core.handle(CallEnded(o1.call_id), 2.5)
    cmds = core.handle(CallAnswered(o2.call_id), 3.0)  # a1 in wrap-up, a2 paused: waits
    assert not of(cmds, ConnectToAgent)
    cmds = core.tick(3.5)  # a1's wrap-up ends at 3.5 → takes the waiting call
    assert of(cmds, ConnectToAgent) == [ConnectToAgent(o2.call_id, "a1")]
    assert not of(core.tick(10.0), PlayAbandonMessage)


def test_customer_hanging_up_while_waiting_is_abandoned_without_message():
    core = make(agents=("a1", "a2"))
    o1, o2 = of(core.tick(1.0), Originate)
    core.handle(CallAnswered(o1.call_id), 2.0)
    core.handle(AgentState("a2", AgentStatus.PAUSED), 2.0)
    core.handle(CallAnswered(o2.call_id), 2.1)
    cmds = core.handle(CallEnded(o2.call_id), 2.5)
    assert not of(cmds, PlayAbandonMessage)
    assert of(cmds, RecordAttempt)[0].attempt.outcome is Outcome.ABANDONED
    assert not of(core.tick(10.0), PlayAbandonMessage)


def test_failures_are_classified_and_released_for_recycling():
    core = make(agents=("a1",))
    (o,) = of(core.tick(1.0), Originate)
    cmds = core.handle(CallFailed(o.call_id, Outcome.BUSY, 17), 5.0)
    (rec,) = of(cmds, RecordAttempt)
    assert rec.attempt.outcome is Outcome.BUSY and rec.attempt.hangup_cause == 17
    assert not of(cmds, ReleaseLead)  # recycled by the core's hopper: busy → again in 10 min
    assert core.campaigns["c1"].hopper.info(o.lead_id).next_at == 5.0 + 600
    assert core.stats("c1", 5.0)["outcomes"] == {"busy": 1}


def test_machine_is_hung_up_and_not_counted_live():
    core = make()
    (o,) = of(core.tick(1.0), Originate)
    cmds = core.handle(CallAnswered(o.call_id, amd="MACHINE"), 4.0)
    assert of(cmds, Hangup) == [Hangup(o.call_id)]
    cmds = core.handle(CallEnded(o.call_id), 4.1)
    assert of(cmds, RecordAttempt)[0].attempt.outcome is Outcome.MACHINE
    assert core.stats("c1", 5.0)["live_answers"] == 0


def test_pause_and_stop_campaign():
    core = make(agents=("a1",))
    core.handle(CampaignControl("c1", "pause"), 0.5)
    assert not of(core.tick(1.0), Originate)
    core.handle(CampaignControl("c1", "start"), 1.5)
    assert of(core.tick(2.0), Originate)
    cmds = core.handle(CampaignControl("c1", "stop"), 2.5)
    released = of(cmds, ReleaseLead)
    assert len(released) == 9 and not any(r.final for r in released)


def test_a_campaign_never_run_here_takes_a_pause_and_dials_nothing():
    # A node started into a campaign paused through another node: its core said created in its figures.
    core = DialerCore(CoreConfig(id_prefix="t"))
    core.add_campaign(CampaignSettings(campaign_id="c1"))
    core.handle(AgentLogin("a1"), 0.0)
    core.handle(AgentConnected("a1"), 0.0)
    cmds = core.handle(CampaignControl("c1", "pause"), 0.5)
    assert not of(cmds, FetchLeads) and core.stats("c1", 0.5)["status"] == "paused"
    assert not of(core.tick(1.0), Originate)
    assert of(core.handle(CampaignControl("c1", "start"), 1.5), FetchLeads)


def test_a_lead_back_from_its_call_after_the_stop_goes_back_to_the_store():
    core = make(agents=("a1",))
    (o,) = of(core.tick(1.0), Originate)
    released = of(core.handle(CampaignControl("c1", "stop"), 2.0), ReleaseLead)
    assert len(released) == 9 and o.lead_id not in {r.lead_id for r in released}
    (rel,) = of(core.handle(CallFailed(o.call_id, Outcome.BUSY, 17), 3.0), ReleaseLead)
    assert rel.lead_id == o.lead_id and not rel.final
    assert core.campaigns["c1"].hopper.counts()["scheduled"] == 0


def test_a_disposition_posted_after_the_stop_still_steers_the_lead():
    # The lead of a call being wrapped up used to go back to the store (not final) at the stop or at the call's end:
    # a PAID posted in wrap-up then changed nothing, and the debtor who paid was dialed again at the next start.
    core = make(n_leads=3, agents=("a1", "a2"), wrapup_s=60.0)
    o1, o2 = of(core.tick(1.0), Originate)
    for o in (o1, o2):
        core.handle(CallAnswered(o.call_id), 3.0)
    core.handle(CallEnded(o1.call_id, 16), 5.0)  # a1 wraps up before the stop, a2 is still talking
    released = of(core.handle(CampaignControl("c1", "stop"), 10.0), ReleaseLead)
    assert [r.lead_id for r in released] == ["L2"]
    assert not of(core.handle(CallEnded(o2.call_id, 16), 20.0), ReleaseLead)  # wrap-up: its disposition may come
    (paid,) = of(core.handle(Disposition(o1.call_id, "PAID"), 25.0), ReleaseLead)
    assert paid == ReleaseLead("c1", o1.lead_id, Outcome.CONNECTED, final=True)
    # No disposition: the wrap-up ends on its timer and the lead goes back to the store then, not final.
    assert of(core.tick(80.0), ReleaseLead) == [ReleaseLead("c1", o2.lead_id, Outcome.LOST, final=False)]
    assert core.campaigns["c1"].hopper.waiting() == []


def test_a_node_leaving_hands_back_the_lead_kept_for_a_wrap_up():
    # The stop keeps a wrap-up's lead for its disposition; a node that then goes away (runtime stop) must let it
    # go: it stayed leased (bench/multinode.py: 2-3 leads "lost" at every run's end, until their leases ran out).
    core = make(n_leads=2, agents=("a1",), wrapup_s=60.0)
    (o,) = of(core.tick(1.0), Originate)
    core.handle(CallAnswered(o.call_id), 3.0)
    core.handle(CallEnded(o.call_id, 16), 5.0)
    released = of(core.handle(CampaignControl("c1", "stop"), 10.0), ReleaseLead)
    assert len(released) == 1 and released[0].lead_id != o.lead_id  # the other lead; o's is kept for the wrap-up
    assert core.leave() == [ReleaseLead("c1", o.lead_id, Outcome.LOST, final=False)]
    assert core.leave() == []


def test_logout_after_call_hangs_up_agent_leg():
    core = make(wrapup_s=2.0)
    (o,) = of(core.tick(1.0), Originate)
    core.handle(CallAnswered(o.call_id), 2.0)
    core.handle(AgentLogout("a1"), 3.0)
    core.handle(CallEnded(o.call_id), 4.0)
    cmds = core.tick(6.0)
    assert of(cmds, HangupAgentLeg) == [HangupAgentLeg("a1")]


def test_occupancy_counts_talk_over_logged_in_time():
    core = make(wrapup_s=10.0)
    (o,) = of(core.tick(10.0), Originate)
    core.handle(CallAnswered(o.call_id), 20.0)
    core.handle(CallEnded(o.call_id), 80.0)
    core.tick(90.0)
    st = core.stats("c1", 100.0)
    # ready 0→20 and 90→100 (30 s), talk 20→80 (60 s), wrap 80→90 (10 s)
    assert abs(st["occupancy"] - 60 / 100) < 1e-9
    assert abs(st["idle_per_connect_s"] - 30.0) < 1e-9


def test_agent_leg_dropped_without_logout_is_called_back_then_given_up():
    core = make()
    cmds = core.handle(AgentDisconnected("a1"), 5.0)
    assert core.agents.get("a1").status is AgentStatus.CONNECTING
    assert not of(cmds, OriginateAgentLeg)
    assert not of(core.tick(6.0), Originate)  # nobody ready: nothing dialed
    assert of(core.tick(7.5), OriginateAgentLeg) == [OriginateAgentLeg("a1")]
    core.handle(AgentConnected("a1"), 8.0)
    assert core.agents.get("a1").status is AgentStatus.READY
    # a phone that keeps failing is logged out after the configured attempts
    t = 10.0
    delays = []
    for _ in range(CoreConfig().agent_rejoin_attempts):
        core.handle(AgentDisconnected("a1"), t)
        due = core.next_deadline()
        delays.append(due - t)
        assert of(core.tick(due), OriginateAgentLeg) == [OriginateAgentLeg("a1")]
        t = due + 1
    assert delays[:5] == [2.0, 4.0, 8.0, 16.0, 30.0]  # backing off, capped
    core.handle(AgentDisconnected("a1"), t)
    assert core.agents.get("a1").status is AgentStatus.LOGGED_OUT


def test_agent_leg_dropped_after_logout_request_logs_out():
    core = make()
    core.handle(AgentLogout("a1"), 1.0)
    core.handle(AgentDisconnected("a1"), 1.5)
    assert core.agents.get("a1").status is AgentStatus.LOGGED_OUT
    assert not of(core.tick(10.0), OriginateAgentLeg)


def test_stop_then_start_keeps_a_leads_recycle_delay_attempts_and_callback():
    core = make(n_leads=1, agents=("a1",))
    (o,) = of(core.tick(1.0), Originate)
    core.handle(CallFailed(o.call_id, Outcome.NO_ANSWER, 19), 20.0)
    core.handle(ScheduleCallback("c1", "L0", at=5000.0), 21.0)
    assert of(core.handle(CampaignControl("c1", "stop"), 30.0), ReleaseLead)  # back to the store, not final
    core.handle(CampaignControl("c1", "start"), 40.0)
    core.handle(LeadsAvailable("c1", (Lead("L0", "c1", ("+15550100000",)),)), 41.0)  # the store leases it again
    assert not of(core.tick(42.0), Originate)  # it used to be redialed at once, as a new lead
    info = core.campaigns["c1"].hopper.info("L0")
    assert (info.attempts, info.callback_at) == (1, 5000.0)
    assert [o.lead_id for o in of(core.tick(5000.0), Originate)] == ["L0"]


def test_a_lead_handed_back_carries_its_hopper_state_to_the_next_nodes_core():
    # Another node's core leasing the lead used to start afresh: the no-answer redialed at once, the callback lost.
    core = make(n_leads=1, agents=("a1",))
    (o,) = of(core.tick(1.0), Originate)
    core.handle(CallFailed(o.call_id, Outcome.NO_ANSWER, 19), 20.0)
    core.handle(ScheduleCallback("c1", "L0", at=5000.0, agent_id="a1"), 21.0)
    (back,) = of(core.handle(CampaignControl("c1", "stop"), 30.0), ReleaseLead)
    assert (back.final, back.eligible_at) == (False, 5000.0) and back.state is not None
    other = make(n_leads=0, agents=("b1",))
    other.handle(LeadsAvailable("c1", (Lead("L0", "c1", ("+15550100000",)),), {"L0": back.state}), 41.0)
    assert not of(other.tick(42.0), Originate)
    info = other.campaigns["c1"].hopper.info("L0")
    assert (info.attempts, info.callback_at, info.callback_agent) == (1, 5000.0, "a1")
    # a1 is not on this node: the campaign takes the callback when due, as for an owner logged out
    assert [o.lead_id for o in of(other.tick(5000.0), Originate)] == ["L0"]


def test_each_change_to_a_held_leads_state_is_checkpointed_for_the_store():
    """A node that dies cannot hand its leads back: each change the hopper makes to a lead it holds goes out as a
    `CheckpointLead` with the state a hand-back would carry, for the store to keep with the lease."""
    core = make(n_leads=2, agents=("a1",), wrapup_s=60.0)
    (o,) = of(core.tick(1.0), Originate)
    cmds = core.handle(CallFailed(o.call_id, Outcome.NO_ANSWER, 19), 20.0)
    (cp,), (rec,) = of(cmds, CheckpointLead), of(cmds, RecordAttempt)
    assert cmds.index(cp) < cmds.index(rec)  # killed between the two: the call in flight, the state kept
    recycled = core.campaigns["c1"].hopper.handoff_state(o.lead_id)
    assert recycled is not None and (cp.campaign_id, cp.lead_id, dict(cp.state)) == ("c1", o.lead_id, recycled[0])
    assert cp.state["n"] == 1 and cp.state["t"] > 20.0  # its attempt and its recycle time
    (cp,) = of(core.handle(ScheduleCallback("c1", o.lead_id, at=5000.0, agent_id="a1"), 21.0), CheckpointLead)
    assert (cp.state["cb"], cp.state["ag"]) == (5000.0, "a1")
    (o2,) = of(core.tick(22.0), Originate)
    core.handle(CallAnswered(o2.call_id), 23.0)
    core.handle(CallEnded(o2.call_id), 30.0)
    (cp,) = of(core.handle(Disposition(o2.call_id, "CALLBACK", callback_at=900.0), 31.0), CheckpointLead)
    assert (cp.lead_id, cp.state["cb"]) == (o2.lead_id, 900.0)
    assert not of(core.handle(ScheduleCallback("c1", "L9", at=600.0), 32.0), CheckpointLead)  # not held here
    quiet = DialerCore(CoreConfig(id_prefix="q", checkpoint_leads=False))  # the simulator's
    quiet.add_campaign(CampaignSettings(campaign_id="c1"))
    quiet.handle(AgentLogin("a1"), 0.0)
    quiet.handle(AgentConnected("a1"), 0.0)
    quiet.handle(CampaignControl("c1", "start"), 0.0)
    quiet.handle(LeadsAvailable("c1", (Lead("L0", "c1", ("+15550100000",)),)), 0.0)
    (o,) = of(quiet.tick(1.0), Originate)
    assert not of(quiet.handle(CallFailed(o.call_id, Outcome.NO_ANSWER, 19), 20.0), CheckpointLead)


def test_link_down_stops_dialing_and_link_back_calls_agents_back_once():
    core = make(agents=("a1", "a2"))
    core.handle(PbxLink(False), 1.0)
    assert not of(core.tick(2.0), Originate)  # leads stay in the hopper, none fail unsent
    core.handle(AgentDisconnected("a1"), 2.5)
    assert not of(core.tick(10.0), OriginateAgentLeg)  # no rejoin spent while nothing can be sent
    cmds = core.handle(PbxLink(True), 11.0)
    assert of(cmds, OriginateAgentLeg) == [OriginateAgentLeg("a1")]
    assert not of(core.tick(20.0), OriginateAgentLeg)
    core.handle(AgentConnected("a1"), 21.0)
    assert core.agents.get("a1").status is AgentStatus.READY


def test_store_down_stops_dialing_until_it_answers_again():
    core = make(agents=("a1", "a2"))
    core.handle(StoreLink(False), 1.0)
    assert not of(core.tick(2.0), Originate)
    with pytest.raises(CoreError):
        core.handle(PreviewDial("a1"), 2.0)
    core.handle(StoreLink(True), 3.0)
    assert len(of(core.tick(3.0), Originate)) == 2


def test_shared_abandon_counts_reach_the_predictive_pacer():
    core = make(agents=("a1",), strategy="erlang")
    core.handle(SharedAbandon("c1", live=1000, abandoned=80), 1.0)
    controller = core.campaigns["c1"].strategy.controller  # type: ignore[attr-defined]
    assert controller.rate == pytest.approx(0.08)  # other nodes' abandons count against the target here
    core.handle(SharedAbandon("c1", live=0, abandoned=0), 1.0)  # progressive ignores it; erlang resets
    assert controller.rate == 0.0


def test_an_agents_own_callback_is_dialed_for_that_agent_when_due():
    core = make(n_leads=5, agents=("a1", "a2"))
    core.handle(ScheduleCallback("c1", "L4", at=50.0, agent_id="a2"), 1.0)
    core.handle(ScheduleCallback("c1", "L9", at=60.0, agent_id="a1"), 1.0)  # not loaded yet: waits for the lead
    assert core.campaigns["c1"].later_callbacks == {"L9": (60.0, "a1")}
    first = of(core.tick(2.0), Originate)
    assert "L4" not in {o.lead_id for o in first}  # not before its time
    for o in first:
        core.handle(CallFailed(o.call_id, Outcome.BUSY, 17), 3.0)
    cmds = core.tick(51.0)
    (cb,) = [o for o in of(cmds, Originate) if o.lead_id == "L4"]
    assert core.agents.get("a2").status is AgentStatus.PREVIEW  # reserved for its owner
    assert of(core.handle(CallAnswered(cb.call_id), 55.0), ConnectToAgent) == [ConnectToAgent(cb.call_id, "a2")]


def test_an_owned_callback_whose_agent_logged_out_goes_to_the_campaign_when_due():
    # The owner logged out (or is unknown here): the callback is not left waiting for ever, nor fired before its time.
    core = make(n_leads=3, agents=("a1", "a2"))
    core.handle(ScheduleCallback("c1", "L2", at=100.0, agent_id="a2"), 1.0)
    core.handle(ScheduleCallback("c1", "L1", at=100.0, agent_id="ghost"), 1.0)
    core.handle(AgentLogout("a2"), 2.0)
    core.handle(AgentDisconnected("a2"), 2.5)
    (first,) = of(core.tick(3.0), Originate)
    assert first.lead_id == "L0"
    core.handle(CallFailed(first.call_id, Outcome.BUSY, 17), 4.0)
    assert not of(core.tick(99.0), Originate)
    (cb,) = of(core.tick(100.0), Originate)  # one ready agent: the first due callback, as the campaign's
    assert cb.lead_id in ("L1", "L2") and core.agents.get("a1").status is AgentStatus.READY
    core.handle(CallFailed(cb.call_id, Outcome.BUSY, 17), 101.0)
    (cb2,) = of(core.tick(102.0), Originate)
    assert {cb.lead_id, cb2.lead_id} == {"L1", "L2"}
    assert core.campaigns["c1"].hopper.callbacks() == []


def test_an_owned_callback_waits_for_its_paused_or_busy_agent():
    core = make(n_leads=2, agents=("a1", "a2"))
    core.handle(ScheduleCallback("c1", "L1", at=50.0, agent_id="a2"), 1.0)
    core.handle(AgentState("a2", AgentStatus.PAUSED, "lunch"), 2.0)
    for o in of(core.tick(3.0), Originate):
        core.handle(CallFailed(o.call_id, Outcome.BUSY, 17), 4.0)
    assert all(o.lead_id != "L1" for o in of(core.tick(60.0), Originate))  # still a2's
    assert core.campaigns["c1"].hopper.info("L1").callback_agent == "a2"


def test_answered_call_goes_to_best_skill_level_then_longest_idle():
    core = DialerCore(CoreConfig(id_prefix="t"))
    core.add_campaign(CampaignSettings(campaign_id="c1", skill="legal"))
    core.handle(AgentLogin("novice", skills=(("legal", 1),)), 0.0)
    core.handle(AgentLogin("expert", skills=(("legal", 5),)), 0.0)
    core.handle(AgentLogin("other", skills=(("spanish", 9),)), 0.0)
    for a in ("novice", "other", "expert"):
        core.handle(AgentConnected(a), 1.0)
    core.handle(CampaignControl("c1", "start"), 1.0)
    core.handle(LeadsAvailable("c1", tuple(Lead(f"L{i}", "c1", (f"+1555{i:07d}",)) for i in range(5))), 1.0)
    origs = of(core.tick(2.0), Originate)
    assert len(origs) == 2  # only the two agents with the skill count as ready
    cmds = core.handle(CallAnswered(origs[0].call_id), 3.0)
    assert of(cmds, ConnectToAgent) == [ConnectToAgent(origs[0].call_id, "expert")]
    cmds = core.handle(CallAnswered(origs[1].call_id), 3.5)
    assert of(cmds, ConnectToAgent) == [ConnectToAgent(origs[1].call_id, "novice")]


def test_shared_agents_are_split_by_campaign_weight_never_double_counted():
    core = DialerCore(CoreConfig(id_prefix="t"))
    core.add_campaign(CampaignSettings(campaign_id="big", weight=3.0))
    core.add_campaign(CampaignSettings(campaign_id="small", weight=1.0))
    for i in range(8):
        core.handle(AgentLogin(f"a{i}"), 0.0)
        core.handle(AgentConnected(f"a{i}"), 0.0)
    for cid in ("big", "small"):
        core.handle(CampaignControl(cid, "start"), 0.0)
        core.handle(LeadsAvailable(cid, tuple(Lead(f"{cid}{i}", cid, (f"+1555{i:07d}",)) for i in range(20))), 0.0)
    assert core.snapshot("big", 1.0).agents_ready == 6
    assert core.snapshot("small", 1.0).agents_ready == 2
    origs = of(core.tick(1.0), Originate)
    assert len(origs) == 8  # progressive: one line per agent in all, never one per agent per campaign
    assert sum(o.campaign_id == "big" for o in origs) == 6
    # The split is kept between decisions and follows every change it depends on.
    ready = lambda cid, t: core.snapshot(cid, t).agents_logged_in  # noqa: E731
    core.handle(AgentLogout("a0"), 2.0)
    core.handle(AgentLogout("a1"), 2.0)
    assert (ready("big", 2.0), ready("small", 2.0)) == (4, 2)  # six left to share, 3:1 as near as whole agents go
    core.handle(AgentLogin("a4", frozenset({"small"})), 3.0)  # now only small's: five left to share
    assert (ready("big", 3.0), ready("small", 3.0)) == (4, 2)
    core.add_campaign(CampaignSettings(campaign_id="small", weight=4.0))  # small now weighs more than big
    assert (ready("big", 4.0), ready("small", 4.0)) == (2, 4)


def _two_campaigns_one_shared_agent(strategy: str = "progressive") -> DialerCore:
    """Campaigns a and z; x2 may work for both (shared out to a: ties go by campaign id), x3 only for z."""
    core = DialerCore(CoreConfig(id_prefix="t"))
    for cid in ("a", "z"):
        core.add_campaign(CampaignSettings(campaign_id=cid, weight=1.0, strategy=strategy))
    core.handle(AgentLogin("x2"), 0.0)
    core.handle(AgentLogin("x3", frozenset({"z"})), 0.0)
    for agent in ("x2", "x3"):  # x2 is ready first: idle longest
        core.handle(AgentConnected(agent), 0.0)
    for cid in ("a", "z"):
        core.handle(CampaignControl(cid, "start"), 0.0)
        core.handle(LeadsAvailable(cid, tuple(Lead(f"{cid}{i}", cid, (f"+1555{i:07d}",)) for i in range(5))), 0.0)
    return core


def test_a_campaign_s_answers_go_to_the_agents_it_paces_for_first():
    core = _two_campaigns_one_shared_agent()
    by = {o.campaign_id: o.call_id for o in of(core.tick(1.0), Originate)}
    # z's call answers first: it gets x3, its own, though x2 has been idle longer; a's then gets x2.
    assert of(core.handle(CallAnswered(by["z"]), 5.0), ConnectToAgent) == [ConnectToAgent(by["z"], "x3")]
    assert of(core.handle(CallAnswered(by["a"]), 6.0), ConnectToAgent) == [ConnectToAgent(by["a"], "x2")]
    # Busy, each still counts for the one campaign that paces for it.
    for cid in ("a", "z"):
        snap = core.snapshot(cid, 7.0)
        assert (snap.agents_logged_in, snap.agents_ready, len(snap.talking_elapsed)) == (1, 0, 1)


def test_an_answer_takes_another_campaign_s_free_agent_rather_than_wait():
    core = _two_campaigns_one_shared_agent("ratio")  # two lines per ready agent
    calls = of(core.tick(1.0), Originate)
    z1, z2 = [o.call_id for o in calls if o.campaign_id == "z"]
    assert of(core.handle(CallAnswered(z1), 5.0), ConnectToAgent) == [ConnectToAgent(z1, "x3")]
    assert of(core.handle(CallAnswered(z2), 5.5), ConnectToAgent) == [ConnectToAgent(z2, "x2")]  # a's, but free
    # Busy on z's call, x2 is still a's to pace for, not z's.
    assert [core.snapshot(cid, 6.0).agents_logged_in for cid in ("a", "z")] == [1, 1]


def test_preview_mode_agent_sees_lead_dials_it_and_gets_the_call():
    core = make(n_leads=3, agents=("a1", "a2"), strategy="preview")
    assert not of(core.tick(1.0), Originate)  # the pacer launches nothing in preview mode
    cmds = core.handle(PreviewRequest("a1", "c1"), 2.0)
    (offer,) = [c for c in cmds if isinstance(c, Emit) and c.kind == "preview.offer"]
    assert offer.data["lead_id"] == "L0" and core.agents.get("a1").status is AgentStatus.PREVIEW
    (o,) = of(core.handle(PreviewDial("a1"), 5.0), Originate)
    # a2 is ready and idle longer, but the previewed call is reserved for a1
    cmds = core.handle(CallAnswered(o.call_id), 9.0)
    assert of(cmds, ConnectToAgent) == [ConnectToAgent(o.call_id, "a1")]


def test_preview_skip_returns_lead_and_failed_preview_frees_agent():
    core = make(n_leads=3, agents=("a1",), strategy="preview")
    core.handle(PreviewRequest("a1", "c1"), 1.0)
    assert not of(core.handle(PreviewSkip("a1"), 2.0), ReleaseLead)
    assert core.campaigns["c1"].hopper.info("L0").state == "pending"  # back unattempted
    assert core.agents.get("a1").status is AgentStatus.READY
    core.handle(PreviewRequest("a1", "c1"), 3.0)
    (o,) = of(core.handle(PreviewDial("a1"), 4.0), Originate)
    core.handle(CallFailed(o.call_id, Outcome.BUSY), 6.0)
    assert core.agents.get("a1").status is AgentStatus.READY
    with pytest.raises(CoreError):
        core.handle(PreviewDial("a1"), 7.0)  # nothing on screen


def test_a_lead_on_screen_goes_back_when_the_agent_leg_drops_or_the_agent_logs_out():
    core = make(n_leads=2, agents=("a1", "a2"), strategy="preview")
    core.handle(PreviewRequest("a1", "c1"), 1.0)
    hopper = core.campaigns["c1"].hopper
    assert hopper.info("L0").state == "out"
    core.handle(AgentDisconnected("a1"), 2.0)  # the phone dropped before the agent dialed
    assert hopper.info("L0").state == "pending"  # it used to stay out for good
    core.handle(AgentConnected("a1"), 4.0)
    a1 = core.agents.get("a1")
    assert a1.status is AgentStatus.READY and a1.preview is None
    with pytest.raises(CoreError):
        core.handle(PreviewDial("a1"), 5.0)  # nothing on screen any more
    # Logging out with a lead on screen: the lead goes back and the leg is hung up at once.
    core.handle(PreviewRequest("a2", "c1"), 6.0)
    cmds = core.handle(AgentLogout("a2"), 7.0)
    assert of(cmds, HangupAgentLeg) == [HangupAgentLeg("a2")]
    assert hopper.counts()["out"] == 0 and core.agents.get("a2").preview is None
    # A previewed call already ringing is not released: its own outcome brings the lead back.
    core.handle(PreviewRequest("a1", "c1"), 8.0)
    (o,) = of(core.handle(PreviewDial("a1"), 9.0), Originate)
    core.handle(AgentDisconnected("a1"), 10.0)
    assert hopper.info(o.lead_id).state == "out"
    core.handle(CallFailed(o.call_id, Outcome.BUSY, 17), 12.0)
    assert hopper.info(o.lead_id).state == "scheduled" and hopper.info(o.lead_id).attempts == 1


def test_logout_of_a_ready_agent_takes_it_out_of_the_ready_pool_at_once():
    core = make(agents=("a1", "a2"))
    cmds = core.handle(AgentLogout("a1"), 1.0)
    assert of(cmds, HangupAgentLeg) == [HangupAgentLeg("a1")]
    assert core.agents.get("a1").status is AgentStatus.PAUSED
    (o,) = of(core.tick(2.0), Originate)  # only a2 counts as ready now
    assert of(core.handle(CallAnswered(o.call_id), 3.0), ConnectToAgent) == [ConnectToAgent(o.call_id, "a2")]


def test_wrapup_without_timeout_waits_for_the_agent():
    core = make(wrapup_s=None)
    (o,) = of(core.tick(1.0), Originate)
    core.handle(CallAnswered(o.call_id), 2.0)
    core.handle(CallEnded(o.call_id), 3.0)
    core.tick(10_000.0)
    assert core.agents.get("a1").status is AgentStatus.WRAPUP
    core.handle(AgentState("a1", AgentStatus.READY), 10_001.0)
    assert core.agents.get("a1").status is AgentStatus.READY


def test_attempt_copies_keep_every_field() -> None:
    import dataclasses

    from dialer.model import Attempt

    values = {f.name: f"v-{f.name}" for f in dataclasses.fields(Attempt)}
    att = Attempt(**values)  # type: ignore[arg-type]
    copy = att.copy()
    assert copy == att and copy is not att


def test_a_number_taken_off_dnc_frees_the_leads_parked_by_it():
    # A lead whose only phone was refused as DNC is parked (no retry time); nothing used to unpark it.
    core = DialerCore(CoreConfig(id_prefix="t"))
    core.add_campaign(CampaignSettings(campaign_id="c1"))
    core.handle(DncAdd("+15550100001"), 0.0)
    core.handle(DncAdd("+15550100002", "c1"), 0.0)
    core.handle(AgentLogin("a1"), 0.0)
    core.handle(AgentConnected("a1"), 0.0)
    core.handle(CampaignControl("c1", "start"), 0.0)
    core.handle(LeadsAvailable("c1", (Lead("L1", "c1", ("+15550100001",)), Lead("L2", "c1", ("+15550100002",)))),
                0.0)
    assert not of(core.tick(1.0), Originate) and not of(core.tick(2.0), Originate)
    assert not core.remove_dnc("+15550100009", None, 3.0)  # not on the list: nothing changes
    assert not core.remove_dnc("+15550100002", None, 3.0)  # on the campaign's list, not the global one
    assert core.remove_dnc("+1 555 010 0001", None, 3.0)  # any spelling of the entry
    (orig,) = of(core.tick(4.0), Originate)
    assert orig.lead_id == "L1"
    core.handle(CallFailed(orig.call_id, Outcome.BUSY), 5.0)
    assert core.remove_dnc("+15550100002", "c1", 6.0)
    assert [o.lead_id for o in of(core.tick(7.0), Originate)] == ["L2"]


def test_a_pool_of_capped_dids_waits_for_its_retry_time_instead_of_picking_every_tick():
    # Every DID at its cap: the core used to pick, gate, release and emit did.exhausted on every tick.
    core = make(n_leads=5, agents=("a1", "a2", "a3"), did_pool=["+12125550101"], did_hour_cap=1)
    first = core.tick(1.0)
    assert len(of(first, Originate)) == 1
    assert [e.kind for e in of(first, Emit) if e.kind == "did.exhausted"] == ["did.exhausted"]
    later = [c for t in range(2, 600) for c in core.tick(float(t))]
    assert not of(later, Originate) and not [e for e in of(later, Emit) if e.kind in ("did.exhausted", "dial.refused")]
    assert len(of(core.tick(3601.5), Originate)) == 1  # the hour cap frees the DID: dialing resumes


def test_editing_a_campaigns_did_pool_or_caps_keeps_the_caps_and_sticky_dids():
    dids = ["+12125550100", "+12125550101"]
    settings = CampaignSettings(campaign_id="c1", did_pool=dids, did_hour_cap=2, did_day_cap=100)
    core = DialerCore(CoreConfig(id_prefix="t"))
    core.add_campaign(settings)
    for i in range(10):
        core.handle(AgentLogin(f"a{i}"), 0.0)
        core.handle(AgentConnected(f"a{i}"), 0.0)
    core.handle(CampaignControl("c1", "start"), 0.0)
    core.handle(LeadsAvailable("c1", tuple(Lead(f"L{i}", "c1", (f"+1212555{i:04d}",)) for i in range(50))), 0.0)
    used: dict[str, int] = {}

    def run(t: float) -> list[Originate]:
        origs = of(core.tick(t), Originate)
        for o in origs:
            used[o.caller_id] = used.get(o.caller_id, 0) + 1
            core.handle(CallFailed(o.call_id, Outcome.BUSY, 17), t + 1)
        return origs

    first = run(1.0)
    assert used == dict.fromkeys(dids, 2)
    # A DID added mid-hour: the two in use keep their hour's count (a new pool used to start them at zero).
    core.add_campaign(dataclasses.replace(settings, did_pool=[*dids, "+12125550102"]))
    run(10.0)
    run(20.0)
    assert used == {**dict.fromkeys(dids, 2), "+12125550102": 2}
    # A lower cap on the same DIDs binds at once (it used to be ignored until a restart).
    core.add_campaign(dataclasses.replace(settings, did_pool=[*dids, "+12125550102"], did_hour_cap=1))
    pool = core.campaigns["c1"].pool
    assert pool is not None and pool.hour_cap == 1
    assert pool.sticky_for(first[0].lead_id) == first[0].caller_id  # the debtor keeps its number
    assert not run(100.0)
    assert len(run(3625.0)) == 3  # the hour passed: one call a DID under the new cap


def test_editing_a_campaigns_hopper_rules_takes_effect_on_the_leads_it_holds():
    settings = CampaignSettings(campaign_id="c1", hopper={"max_attempts_lead": 3})
    core = DialerCore(CoreConfig(id_prefix="t"))
    core.add_campaign(settings)
    core.handle(AgentLogin("a1"), 0.0)
    core.handle(AgentConnected("a1"), 0.0)
    core.handle(CampaignControl("c1", "start"), 0.0)
    core.handle(LeadsAvailable("c1", (Lead("L0", "c1", ("+15550100000",), segment="small"),
                                      Lead("L2", "c1", ("+15550100002",), segment="small"),
                                      Lead("L1", "c1", ("+15550100001",), segment="vip"))), 0.0)
    (o,) = of(core.tick(1.0), Originate)
    assert o.lead_id == "L0"  # listed first, nothing ranks it lower yet
    core.handle(CallFailed(o.call_id, Outcome.BUSY, 17), 2.0)
    # Fewer attempts, a shorter busy delay, and vip first: it used to be ignored until a restart.
    core.handle(CampaignControl("c1", "pause"), 3.0)
    core.add_campaign(dataclasses.replace(settings, hopper={
        "max_attempts_lead": 1, "recycle_delays": {"busy": 60}, "segment_priority": {"vip": 10}}))
    hopper = core.campaigns["c1"].hopper
    assert hopper.rules.max_attempts_lead == 1
    core.handle(CampaignControl("c1", "start"), 4.0)
    cmds = core.tick(5.0)
    assert [o.lead_id for o in of(cmds, Originate)] == ["L1"]  # vip now goes before L2
    assert hopper.info("L0").state == "done"  # type: ignore[union-attr]  # at the new cap, and the store is told
    assert ReleaseLead("c1", "L0", Outcome.LOST, final=True) in of(cmds, ReleaseLead)


def test_a_dial_never_made_does_not_count_against_its_dids_answer_rate():
    core = make(n_leads=2, agents=("a1",), did_pool=["+12125550101"])
    (o,) = of(core.tick(1.0), Originate)
    core.handle(CallFailed(o.call_id, Outcome.LOST), 2.0)  # not sent: the DID was shown to nobody
    pool = core.campaigns["c1"].pool
    assert pool is not None
    assert pool.health(3.0)[0].attempts == 0
    (o,) = of(core.tick(3.0), Originate)
    core.handle(CallFailed(o.call_id, Outcome.NO_ANSWER, 19), 30.0)
    assert pool.health(31.0)[0].attempts == 1


def test_a_dnc_snapshot_from_the_shared_store_adds_and_removes_but_keeps_what_came_after_it():
    core = DialerCore(CoreConfig(id_prefix="t"))
    core.add_campaign(CampaignSettings(campaign_id="c1"))
    core.handle(DncAdd("+15550100001"), 10.0)  # on the store's list too, then taken off there by another node
    core.handle(DncAdd("+15550100003"), 30.0)  # added here after the snapshot was read: its write may be later
    core.handle(AgentLogin("a1"), 0.0)
    core.handle(AgentConnected("a1"), 0.0)
    core.handle(CampaignControl("c1", "start"), 0.0)
    core.handle(LeadsAvailable("c1", (Lead("L1", "c1", ("+15550100001",)),)), 0.0)
    assert not of(core.tick(11.0), Originate)  # parked by the DNC refusal
    cmds = core.handle(DncSnapshot(None, frozenset({"+15550100002"}), taken_at=20.0), 40.0)
    assert [c.data for c in of(cmds, Emit) if c.kind == "dnc.synced"] == [
        {"campaign_id": None, "added": 1, "removed": 1}]
    assert core.dnc.lookup("+15550100002", None, 41.0) is not None
    assert core.dnc.lookup("+15550100003", None, 41.0) is not None
    assert core.dnc.lookup("+15550100001", None, 41.0) is None
    assert [o.lead_id for o in of(core.tick(42.0), Originate)] == ["L1"]  # unparked by the removal
    assert not of(core.handle(DncSnapshot("nope", frozenset({"+15550100009"}), 50.0), 50.0), Emit)


def test_a_call_connected_to_an_agent_whose_leg_had_left_is_abandoned_and_the_agent_rejoins():
    # The dialplan found no agent in the room (DialerNoAgent) and plays the safe-harbour message: nobody took the
    # call. It used to stay "connected", the agent "on call" with an empty room that the next debtor was sent to.
    core = make(agents=("a1",), wrapup_s=5.0)
    (o1,) = of(core.tick(1.0), Originate)
    assert of(core.handle(CallAnswered(o1.call_id), 2.0), ConnectToAgent) == [ConnectToAgent(o1.call_id, "a1")]
    cmds = core.handle(AgentMissing(o1.call_id, "a1"), 2.1)
    assert not of(cmds, PlayAbandonMessage)  # the dialplan is already playing it
    assert [c.data for c in cmds if isinstance(c, Emit) and c.kind == "call.abandoned"] == [
        {"call_id": o1.call_id, "campaign_id": "c1"}]
    # The core had not heard the leg drop: the agent takes no call until its leg is back in the room.
    a1 = core.agents.get("a1")
    assert a1.status is AgentStatus.CONNECTING and a1.call_id is None and a1.connects == 0
    assert of(cmds, HangupAgentLeg) == [HangupAgentLeg("a1")]
    st = core.stats("c1", 2.1)
    assert (st["live_answers"], st["connected"], st["abandoned"], st["abandon_rate"]) == (1, 0, 1, 1.0)
    assert not of(core.tick(2.5), Originate)  # nobody ready: nothing dialed
    (rec,) = of(core.handle(CallEnded(o1.call_id, 16), 4.0), RecordAttempt)  # the message played, hung up
    assert rec.attempt.outcome is Outcome.ABANDONED
    assert rec.attempt.agent_id is None and rec.attempt.connected_at is None and rec.attempt.answered_at == 2.0
    assert a1.status is AgentStatus.CONNECTING  # no wrap-up for a call it never had
    with pytest.raises(CoreError):
        core.handle(Disposition(o1.call_id, "PAID"), 4.5)
    assert core.stats("c1", 4.0)["outcomes"] == {"abandoned": 1}
    core.handle(AgentDisconnected("a1"), 4.2)  # the leg's drop arrives: its phone is called back
    assert of(core.tick(core.next_deadline()), OriginateAgentLeg) == [OriginateAgentLeg("a1")]
    core.handle(AgentConnected("a1"), 7.0)
    assert a1.status is AgentStatus.READY
    (o2,) = of(core.tick(7.5), Originate)
    assert of(core.handle(CallAnswered(o2.call_id), 8.0), ConnectToAgent) == [ConnectToAgent(o2.call_id, "a1")]


def test_no_agent_in_the_room_after_the_core_saw_the_leg_drop_leaves_the_agent_as_that_left_it():
    core = make(agents=("a1", "a2"))
    o1, o2 = of(core.tick(1.0), Originate)
    core.handle(AgentState("a2", AgentStatus.PAUSED), 1.5)
    core.handle(CallAnswered(o1.call_id), 2.0)  # to a1
    core.handle(AgentDisconnected("a1"), 2.05)  # the drop is processed before the room's verdict
    rejoin_at = core.next_deadline()
    cmds = core.handle(AgentMissing(o1.call_id, "a1"), 2.1)
    assert not of(cmds, HangupAgentLeg) and not of(cmds, PlayAbandonMessage)
    assert core.agents.get("a1").status is AgentStatus.CONNECTING and core.next_deadline() == rejoin_at
    assert core.stats("c1", 2.1)["connected"] == 0 and core.stats("c1", 2.1)["abandoned"] == 1
    # a verdict for another agent, or repeated, changes nothing
    assert core.handle(AgentMissing(o1.call_id, "a2"), 2.2) == []
    assert core.handle(AgentMissing(o1.call_id, "a1"), 2.3) == []
    core.handle(CallEnded(o1.call_id, 16), 4.0)
    assert core.stats("c1", 4.0)["outcomes"] == {"abandoned": 1}
    assert core.handle(AgentMissing(o1.call_id, "a1"), 4.1) == []
    # a leg dropped after a logout request: logged out, not called back
    core.handle(AgentState("a2", AgentStatus.READY), 5.0)
    assert of(core.handle(CallAnswered(o2.call_id), 6.0), ConnectToAgent) == [ConnectToAgent(o2.call_id, "a2")]
    core.handle(AgentLogout("a2"), 6.1)
    core.handle(AgentDisconnected("a2"), 6.2)
    core.handle(AgentMissing(o2.call_id, "a2"), 6.3)
    assert core.agents.get("a2").status is AgentStatus.LOGGED_OUT
    assert core.stats("c1", 6.3)["abandoned"] == 2


@pytest.mark.parametrize("strategy", ["erlang", "vicidial", "omnidialer"])
def test_an_agent_missing_abandon_retracts_the_connect_the_pacer_heard(strategy):
    # The pacer heard "connected" at the connect; the room was empty and the call is abandoned. It must hear the
    # abandon as a retraction of that connect: one live answer (not two), one abandoned.
    core = make(agents=("a1",), strategy=strategy)
    (o1,) = of(core.tick(1.0), Originate)
    assert of(core.handle(CallAnswered(o1.call_id), 2.0), ConnectToAgent) == [ConnectToAgent(o1.call_id, "a1")]
    core.handle(AgentMissing(o1.call_id, "a1"), 2.1)
    pacer = core.campaigns["c1"].strategy
    counts = {"erlang": lambda p: p.controller.counts,
              "vicidial": lambda p: (p._today_live, p._today_drops),
              "omnidialer": lambda p: (p.live, p.dropped)}[strategy](pacer)
    assert counts == (1, 1)


@pytest.mark.parametrize("cause", [21, 27, 41])
def test_rejected_and_temporary_failure_causes_are_congestion_and_retried_soon(cause):
    # Asterisk reports Q.850 21 (call rejected), 27 (destination out of order) and 41 (temporary failure) as
    # CONGESTION (sig_pri queues the congestion control; DIALSTATUS CONGESTION): the lead takes congestion's
    # recycling (5 min), not a final failure's (1 h, and its phone ranked last).
    assert outcome_for_cause(cause) is Outcome.CONGESTION
    core = make(agents=("a1",))
    (o,) = of(core.tick(1.0), Originate)
    (rec,) = of(core.handle(CallEnded(o.call_id, cause), 5.0), RecordAttempt)
    assert rec.attempt.outcome is Outcome.CONGESTION and rec.attempt.hangup_cause == cause
    assert core.campaigns["c1"].hopper.info(o.lead_id).next_at == 5.0 + 300
    assert core.stats("c1", 5.0)["outcomes"] == {"congestion": 1}


def test_a_wrong_party_conversation_does_not_block_the_debtor_but_counts_as_a_call():
    # Reg F: no call within 7 days after a telephone conversation *with the debtor*; a wrong party is not one.
    # The call still counts toward the debtor's 7 calls in 7 days.
    t0 = 1_775_487_600.0  # 2026-04-06 15:00 UTC, 11:00 in New York
    core = DialerCore(CoreConfig(id_prefix="t"))
    core.add_campaign(CampaignSettings(campaign_id="c1", rule_set="us-tsr-regf", wrapup_s=None))
    core.handle(AgentLogin("a1"), t0)
    core.handle(AgentConnected("a1"), t0)
    core.handle(CampaignControl("c1", "start"), t0)
    debtor = Lead("L1", "c1", ("+12125550101", "+12125550102"), timezone="America/New_York", country="US")
    core.handle(LeadsAvailable("c1", (debtor,)), t0)
    (o,) = of(core.tick(t0 + 1), Originate)
    core.handle(CallAnswered(o.call_id), t0 + 10)
    core.handle(CallEnded(o.call_id, 16), t0 + 70)
    gate = core.campaigns["c1"].gate
    blocked = gate.check(debtor, "+12125550102", t0 + 3600)
    assert blocked is not None and blocked.reason is Reason.CONTACT_COOLDOWN  # a conversation, so far
    core.handle(Disposition(o.call_id, "WRONG_PARTY"), t0 + 80)
    assert core.history.contacts("L1") == () and core.history.attempts("L1") == (t0 + 1,)
    assert gate.check(debtor, "+12125550102", t0 + 3600) is None
    for day in range(1, 7):  # six more calls: with the wrong party's, seven in seven days
        core.history.note_attempt("L1", "+12125550102", t0 + day * 86_400.0)
    capped = gate.check(debtor, "+12125550102", t0 + 6 * 86_400.0 + 3600)
    assert capped is not None and capped.reason is Reason.ATTEMPT_CAP
    # the store's history, seeded back (this node's or another's), does not bring the conversation back
    core.handle(DebtorHistorySeed("c1", "L1", (t0 + 1,), (t0 + 10,), ()), t0 + 90)
    assert core.history.contacts("L1") == ()


def _agent_states(cmds):
    return [(c.data["agent_id"], c.data["state"], c.data["reason"]) for c in cmds
            if isinstance(c, Emit) and c.kind == "agent.state"]


def _agent(core, agent_id):
    agent = core.agents.get(agent_id)
    assert agent is not None
    return agent


def test_an_agent_whose_leg_hangup_never_comes_back_is_logged_out_after_the_leg_timeout():
    # The room was empty (AgentMissing): the core hangs the leg up and waits for its drop to call the phone back.
    # The hangup failed and no event came: the agent used to stay "connecting" for ever.
    core = make(agents=("a1",), wrapup_s=5.0)
    (o1,) = of(core.tick(1.0), Originate)
    core.handle(CallAnswered(o1.call_id), 2.0)
    assert of(core.handle(AgentMissing(o1.call_id, "a1"), 2.1), HangupAgentLeg) == [HangupAgentLeg("a1")]
    a1 = core.agents.get("a1")
    assert a1.status is AgentStatus.CONNECTING
    core.tick(62.0)
    assert a1.status is AgentStatus.CONNECTING  # not yet: 60 s by default
    assert core.next_deadline() == 62.1
    cmds = core.tick(62.1)
    assert a1.status is AgentStatus.LOGGED_OUT and a1.reason == "leg timeout"
    assert _agent_states(cmds) == [("a1", "logged_out", "leg timeout")]
    assert of(cmds, HangupAgentLeg) == [HangupAgentLeg("a1")]  # whatever is left of the leg, once more
    assert not of(core.tick(70.0), Originate)  # nobody to dial for
    # a late word of the leg changes nothing more
    core.handle(AgentDisconnected("a1"), 80.0)
    assert a1.status is AgentStatus.LOGGED_OUT and core.next_deadline() is None


def test_agent_leg_timeouts_follow_the_legs():
    core = DialerCore(CoreConfig(id_prefix="t", agent_leg_timeout_s=30.0))
    core.add_campaign(CampaignSettings(campaign_id="c1"))
    # a login whose origination never answers or fails
    core.handle(AgentLogin("a1"), 0.0)
    cmds = core.tick(30.0)
    assert _agent_states(cmds) == [("a1", "logged_out", "leg timeout")]
    # a leg that comes up in time: no timeout
    core.handle(AgentLogin("a2"), 100.0)
    core.handle(AgentConnected("a2"), 110.0)
    assert core.next_deadline() is None and _agent(core, "a2").status is AgentStatus.READY
    # a logout whose hangup never reports back: logged out all the same, with the reason
    cmds = core.handle(AgentLogout("a2"), 200.0)
    assert of(cmds, HangupAgentLeg) == [HangupAgentLeg("a2")]
    assert core.tick(229.0) == [] and _agent(core, "a2").reason == "logging out"
    assert _agent_states(core.tick(230.0)) == [("a2", "logged_out", "leg timeout")]
    # a rejoin's origination: timed from the rejoin, not from the drop; the PBX link down stops the clock
    core.handle(AgentLogin("a3"), 300.0)
    core.handle(AgentConnected("a3"), 301.0)
    core.handle(AgentDisconnected("a3"), 302.0)
    assert of(core.tick(304.0), OriginateAgentLeg) == [OriginateAgentLeg("a3")]
    core.handle(PbxLink(False), 310.0)
    assert core.tick(334.0) == [] and _agent(core, "a3").status is AgentStatus.CONNECTING
    assert of(core.handle(PbxLink(True), 400.0), OriginateAgentLeg) == [OriginateAgentLeg("a3")]
    assert _agent(core, "a3").status is AgentStatus.CONNECTING and core.next_deadline() == 430.0
    core.handle(AgentConnected("a3"), 405.0)
    assert core.next_deadline() is None and _agent(core, "a3").status is AgentStatus.READY


def test_a_held_agent_leg_is_not_timed_out_and_a_logout_still_ends_it():
    # The PBX side holds the leg while the agent's phone is on a call from before a restart (AgentLegHeld): that
    # call may last minutes, and the 60 s leg timeout would log the agent out mid-call.
    core = DialerCore(CoreConfig(id_prefix="t"))
    core.add_campaign(CampaignSettings(campaign_id="c1"))
    core.handle(AgentLogin("a1"), 0.0)
    cmds = core.handle(AgentLegHeld("a1", "on a call from before the restart"), 0.1)
    assert _agent_states(cmds) == [("a1", "connecting", "on a call from before the restart")]
    assert core.tick(600.0) == [] and _agent(core, "a1").status is AgentStatus.CONNECTING
    core.handle(AgentConnected("a1"), 601.0)
    assert _agent(core, "a1").status is AgentStatus.READY
    # a logout while held: the hang-up goes to the PBX side, which answers with the leg's end
    core.handle(AgentLogin("a2"), 700.0)
    core.handle(AgentLegHeld("a2", "on a call from before the restart"), 700.1)
    assert of(core.handle(AgentLogout("a2"), 710.0), HangupAgentLeg) == [HangupAgentLeg("a2")]
    core.handle(AgentDisconnected("a2"), 710.0)
    assert _agent(core, "a2").status is AgentStatus.LOGGED_OUT
    # a word that comes for an agent not waiting on its leg changes nothing
    assert core.handle(AgentLegHeld("a1", "on a call from before the restart"), 720.0) == []
    assert _agent(core, "a1").status is AgentStatus.READY


def test_a_customer_left_alone_when_the_agent_leg_drops_is_hung_up_after_a_grace():
    # Asterisk ends the customer (end_marked) when the agent's leg leaves; a customer who joined the room just
    # after the leg left (past the dialplan's room check) would wait there in silence: the core hangs it up.
    core = make(agents=("a1", "a2"))
    o1, o2 = of(core.tick(1.0), Originate)
    core.handle(AgentState("a2", AgentStatus.PAUSED), 1.5)
    assert of(core.handle(CallAnswered(o1.call_id), 2.0), ConnectToAgent) == [ConnectToAgent(o1.call_id, "a1")]
    assert not of(core.handle(AgentDisconnected("a1"), 30.0), Hangup)  # PBX's own end comes first, normally
    grace = core.config.orphan_hangup_s
    assert not of(core.tick(30.0 + grace - 0.1), Hangup)
    assert of(core.tick(30.0 + grace), Hangup) == [Hangup(o1.call_id)]
    assert not of(core.tick(40.0), Hangup)  # once
    (rec,) = of(core.handle(CallEnded(o1.call_id, 16), 40.5), RecordAttempt)
    assert rec.attempt.outcome is Outcome.CONNECTED and rec.attempt.agent_id == "a1"
    # The PBX ended the customer itself: nothing to hang up. The room found empty: the message plays on.
    core.handle(AgentState("a2", AgentStatus.READY), 41.0)
    assert of(core.handle(CallAnswered(o2.call_id), 41.5), ConnectToAgent) == [ConnectToAgent(o2.call_id, "a2")]
    core.handle(AgentDisconnected("a2"), 60.0)
    core.handle(CallEnded(o2.call_id, 16), 60.01)
    assert not of(core.tick(70.0), Hangup)
    core.handle(AgentConnected("a1"), 71.0)
    (o3, *_) = of(core.tick(72.0), Originate)
    assert of(core.handle(CallAnswered(o3.call_id), 73.0), ConnectToAgent) == [ConnectToAgent(o3.call_id, "a1")]
    core.handle(AgentDisconnected("a1"), 73.05)
    core.handle(AgentMissing(o3.call_id, "a1"), 73.1)
    assert Hangup(o3.call_id) not in core.tick(90.0)


# ---------------------------------------------------------------------------------------------- late dispositions


def _talk_then_wrapup_timer(core, o, at):
    """The call `o` dialed at `at` is answered and ended by the debtor; the wrap-up timer then ends the wrap-up
    (the agent is ready). The dials of that tick (the agent's next call)."""
    core.handle(CallAnswered(o.call_id), at + 1)
    core.handle(CallEnded(o.call_id, 16), at + 9)
    return of(core.tick(at + 9 + core.campaigns["c1"].settings.wrapup_s), Originate)


def _first_call_wrapped_up(core):
    (o,) = of(core.tick(1.0), Originate)
    return o, _talk_then_wrapup_timer(core, o, 1.0)


def _disposition_event(cmds):
    (emit,) = [c for c in of(cmds, Emit) if c.kind == "call.disposition"]
    return emit.data


def test_a_dnc_posted_after_the_wrapup_timer_still_blocks_the_number():
    # It used to be refused (not in wrap-up): the debtor who asked not to be called stayed dialable.
    core = make(n_leads=1, wrapup_s=5.0, hopper={"recycle_delays": {"connected": 30}})
    o, redial = _first_call_wrapped_up(core)
    assert not redial and core.agents.get("a1").status is AgentStatus.READY
    cmds = core.handle(Disposition(o.call_id, "DNC"), 16.0)
    assert core.dnc.contains(o.number, "c1", 16.0)
    assert of(cmds, PersistDnc) == [PersistDnc(o.number, "c1")]
    (rec,) = of(cmds, RecordAttempt)
    assert rec.attempt.call_id == o.call_id and rec.attempt.disposition == "DNC"
    assert rec.attempt.outcome is Outcome.CONNECTED
    # its only phone dropped: the lead is done, and the store hears it
    assert of(cmds, ReleaseLead) == [ReleaseLead("c1", o.lead_id, Outcome.CONNECTED, final=True)]
    data = _disposition_event(cmds)
    assert data["late"] is True and data["agent_id"] == "a1" and data["code"] == "DNC"
    assert not _agent_states(cmds) and core.agents.get("a1").status is AgentStatus.READY
    assert not of(core.tick(100.0), Originate)  # past the 30 s recycle delay: never dialed again


def test_a_late_callback_is_scheduled_and_a_late_promise_to_pay_is_recorded():
    core = make(n_leads=2, wrapup_s=5.0)
    o1, (o2,) = _first_call_wrapped_up(core)
    cmds = core.handle(Disposition(o1.call_id, "CALLBACK", callback_at=500.0, own_callback=True), 20.0)
    info = core.campaigns["c1"].hopper.info(o1.lead_id)
    assert (info.callback_at, info.callback_agent) == (500.0, "a1")
    assert _disposition_event(cmds)["callback_at"] == 500.0
    (rec,) = of(cmds, RecordAttempt)
    assert (rec.attempt.disposition, rec.attempt.callback_at) == ("CALLBACK", 500.0)
    _talk_then_wrapup_timer(core, o2, 21.0)
    with pytest.raises(ValueError, match="ptp_amount"):  # validated as on time
        core.handle(Disposition(o2.call_id, "PTP"), 40.0)
    cmds = core.handle(Disposition(o2.call_id, "PTP", ptp_amount=120.0, ptp_date="2026-12-15"), 41.0)
    (rec,) = of(cmds, RecordAttempt)
    assert rec.attempt.call_id == o2.call_id and rec.attempt.disposition == "PTP"
    assert (rec.attempt.ptp_amount, rec.attempt.ptp_date) == (120.0, "2026-12-15")
    assert of(cmds, ReleaseLead) == [ReleaseLead("c1", o2.lead_id, Outcome.CONNECTED, final=True)]  # PTP is final
    data = _disposition_event(cmds)
    assert (data["ptp_amount"], data["ptp_date"], data["late"]) == (120.0, "2026-12-15", True)


def test_a_late_disposition_leaves_an_agent_on_its_next_call_as_it_is():
    core = make(n_leads=2, wrapup_s=5.0)
    o1, (o2,) = _first_call_wrapped_up(core)
    core.handle(CallAnswered(o2.call_id), 17.0)
    a1 = core.agents.get("a1")
    assert a1.status is AgentStatus.ON_CALL and a1.call_id == o2.call_id
    cmds = core.handle(Disposition(o1.call_id, "WRONG_PARTY"), 18.0)
    assert not _agent_states(cmds) and not of(cmds, HangupAgentLeg)
    assert a1.status is AgentStatus.ON_CALL and a1.call_id == o2.call_id and a1.last_call_id == o2.call_id
    assert core.campaigns["c1"].hopper.info(o1.lead_id).phones == ()  # the wrong party's phone is dropped
    # the call in hand goes on as usual: its own wrap-up and disposition
    core.handle(CallEnded(o2.call_id, 16), 30.0)
    assert a1.status is AgentStatus.WRAPUP
    cmds = core.handle(Disposition(o2.call_id, "PAID"), 31.0)
    assert _disposition_event(cmds)["late"] is False and a1.status is AgentStatus.READY


def test_a_second_disposition_of_a_call_is_refused_naming_it():
    core = make(n_leads=2, wrapup_s=5.0)
    o1, (o2,) = _first_call_wrapped_up(core)
    core.handle(Disposition(o1.call_id, "REFUSED"), 20.0)  # late
    with pytest.raises(CoreError, match=f"call_id: '{o1.call_id}' already has its disposition \\(REFUSED\\)"):
        core.handle(Disposition(o1.call_id, "DNC"), 21.0)
    assert not core.dnc.contains(o1.number, "c1", 21.0)
    core.handle(CallAnswered(o2.call_id), 23.0)
    core.handle(CallEnded(o2.call_id, 16), 24.0)
    core.handle(Disposition(o2.call_id, "PAID"), 25.0)  # on time
    with pytest.raises(CoreError, match="already has its disposition"):
        core.handle(Disposition(o2.call_id, "PAID"), 26.0)
    with pytest.raises(CoreError, match="call_id: 'nope'"):
        core.handle(Disposition("nope", "PAID"), 27.0)


def test_a_late_disposition_of_a_lead_out_again_steers_it_when_it_is_back():
    # The lead was recycled and dialed again before the late code came: it is held and applied when that call ends.
    core = make(n_leads=1, wrapup_s=5.0, hopper={"recycle_delays": {"connected": 1}})
    o1, (o2,) = _first_call_wrapped_up(core)  # the lead is due again from 11, the wrap-up ends at 15
    assert o2.lead_id == o1.lead_id
    cmds = core.handle(Disposition(o1.call_id, "PAID"), 17.0)
    assert _disposition_event(cmds)["held"] is True and not of(cmds, ReleaseLead)
    assert of(cmds, RecordAttempt)[0].attempt.disposition == "PAID"
    cmds = core.handle(CallFailed(o2.call_id, Outcome.BUSY, 17), 18.0)
    assert of(cmds, ReleaseLead) == [ReleaseLead("c1", o1.lead_id, Outcome.CONNECTED, final=True)]
    assert core.campaigns["c1"].hopper.info(o1.lead_id).state == "done"
    assert not of(core.tick(10_000.0), Originate)


def test_a_held_callback_is_recorded_on_the_attempt_as_scheduled():
    core = make(n_leads=1, wrapup_s=5.0, hopper={"recycle_delays": {"connected": 1}})
    o1, (o2,) = _first_call_wrapped_up(core)  # the lead is out again on o2
    cmds = core.handle(Disposition(o1.call_id, "CALLBACK", callback_at=900.0), 17.0)
    assert _disposition_event(cmds)["held"] is True and _disposition_event(cmds)["callback_at"] == 900.0
    (rec,) = of(cmds, RecordAttempt)
    assert (rec.attempt.call_id, rec.attempt.callback_at) == (o1.call_id, 900.0)
    core.handle(CallFailed(o2.call_id, Outcome.BUSY, 17), 18.0)
    assert core.campaigns["c1"].hopper.info(o1.lead_id).callback_at == 900.0


def test_a_late_dnc_of_a_lead_on_a_preview_screen_holds_when_it_is_skipped():
    core = make(n_leads=1, agents=("a1", "a2"), wrapup_s=5.0, hopper={"recycle_delays": {"connected": 1}})
    core.handle(AgentState("a2", AgentStatus.PAUSED), 0.5)
    (o1,) = of(core.tick(1.0), Originate)
    core.handle(CallAnswered(o1.call_id), 2.0)
    core.handle(CallEnded(o1.call_id, 16), 10.0)
    core.handle(AgentState("a1", AgentStatus.PAUSED), 11.0)  # taken when the wrap-up ends
    assert not of(core.tick(15.0), Originate)
    core.handle(AgentState("a2", AgentStatus.READY), 15.5)
    core.handle(PreviewRequest("a2", "c1"), 16.0)
    assert core.campaigns["c1"].hopper.info(o1.lead_id).state == "out"  # on a2's screen
    cmds = core.handle(Disposition(o1.call_id, "DNC"), 17.0)
    assert _disposition_event(cmds)["held"] is True and core.dnc.contains(o1.number, "c1", 17.0)
    core.handle(PreviewSkip("a2"), 18.0)
    assert of(core.tick(19.0), ReleaseLead) == [ReleaseLead("c1", o1.lead_id, Outcome.CONNECTED, final=True)]
    assert core.campaigns["c1"].hopper.info(o1.lead_id).state == "done"


def test_a_call_another_run_handled_is_kept_for_its_disposition_from_its_adoption():
    """A call from the run before a restart, as the store has it (the old run left before it ended: no end): kept
    `late_disposition_s` from when this run took it, then forgotten; its code steers its lead as a late one."""
    core = make(n_leads=2, agents=(), wrapup_s=5.0)  # nobody here to dial the lead meanwhile
    old = Attempt("n-1-4", "c1", "L0", "+15550100000", "1000", 100.0, 108.0, 108.5, None, Outcome.CONNECTED, "a9")
    core.handle(AdoptCall(old), 200.0)
    assert core.handled_call("n-1-4").attempt == old
    core.tick(200.0 + 3600.0)  # kept an hour from its adoption (no end to count from)
    cmds = core.handle(Disposition("n-1-4", "WRONG_PARTY"), 3800.0)
    assert _disposition_event(cmds)["late"] is True and _disposition_event(cmds)["agent_id"] == "a9"
    assert core.campaigns["c1"].hopper.info("L0").phones == ()  # the wrong party's phone is dropped
    (recorded,) = of(cmds, RecordAttempt)
    assert recorded.attempt.disposition == "WRONG_PARTY" and recorded.attempt.ended_at is None
    core.handle(AdoptCall(replace(old, call_id="n-1-5", ended_at=150.0)), 3800.0)
    core.tick(3800.0 + 3600.1)
    with pytest.raises(CoreError, match="not a call an agent handled"):
        core.handle(Disposition("n-1-5", "PAID"), 7401.0)


def test_late_dispositions_are_taken_for_an_agents_last_calls_within_the_age_limit():
    core = DialerCore(CoreConfig(id_prefix="t", late_disposition_s=600.0, late_disposition_calls=2))
    core.add_campaign(CampaignSettings(campaign_id="c1", wrapup_s=5.0))
    core.handle(AgentLogin("a1"), 0.0)
    core.handle(AgentConnected("a1"), 0.0)
    core.handle(CampaignControl("c1", "start"), 0.0)
    core.handle(LeadsAvailable("c1", tuple(Lead(f"L{i}", "c1", (f"+1555010{i:04d}",)) for i in range(5))), 0.0)
    (o,) = of(core.tick(1.0), Originate)
    calls = [o]
    for at in (1.0, 15.0, 29.0):  # each next call is dialed as the wrap-up before it ends
        (o,) = _talk_then_wrapup_timer(core, calls[-1], at)
        calls.append(o)
    # ended at 10, 24 and 38: the agent's last two are kept, the one before is forgotten
    with pytest.raises(CoreError, match=f"call_id: '{calls[0].call_id}' is not a call an agent handled"):
        core.handle(Disposition(calls[0].call_id, "PAID"), 50.0)
    core.handle(Disposition(calls[1].call_id, "PAID"), 50.0)
    core.tick(38.0 + 600.0)  # kept 600 s after it ended
    core.handle(Disposition(calls[2].call_id, "REFUSED"), 638.0)
    core.tick(24.0 + 600.0 + 0.1)
    with pytest.raises(CoreError, match="already has its disposition"):  # disposed calls are kept alike
        core.handle(Disposition(calls[2].call_id, "PAID"), 639.0)
    core.handle(CallAnswered(calls[3].call_id), 640.0)
    core.handle(CallEnded(calls[3].call_id, 16), 641.0)
    core.tick(646.0)
    core.tick(641.0 + 600.1)
    with pytest.raises(CoreError, match="not a call an agent handled"):
        core.handle(Disposition(calls[3].call_id, "PAID"), 1242.0)
    assert not core._handled_by_agent.get("a1")  # nothing left behind once all aged out


def test_a_call_whose_agent_leg_dropped_takes_its_disposition_late():
    # No wrap-up was started (the leg was gone when the call ended): the agent still talked to the debtor.
    core = make(n_leads=1, wrapup_s=5.0)
    (o,) = of(core.tick(1.0), Originate)
    core.handle(CallAnswered(o.call_id), 2.0)
    core.handle(AgentDisconnected("a1"), 5.0)
    core.handle(CallEnded(o.call_id, 16), 5.5)
    assert core.agents.get("a1").status is AgentStatus.CONNECTING
    cmds = core.handle(Disposition(o.call_id, "DNC"), 10.0)
    assert core.dnc.contains(o.number, "c1", 10.0) and _disposition_event(cmds)["late"] is True
    assert core.agents.get("a1").status is AgentStatus.CONNECTING


def test_an_on_time_disposition_of_a_lead_redialed_during_the_wrap_up_is_held_for_it():
    # A recycle delay shorter than the wrap-up let another agent's dial take the lead out again: the hopper refused
    # the disposition ("out on a call"), the event failed and the agent stayed in wrap-up with the code lost.
    core = make(n_leads=1, agents=("a1", "a2"), wrapup_s=60.0, hopper={"recycle_delays": {"connected": 0}})
    (o1,) = of(core.tick(1.0), Originate)
    core.handle(CallAnswered(o1.call_id), 2.0)
    core.handle(CallEnded(o1.call_id, 16), 10.0)
    (o2,) = of(core.tick(11.0), Originate)  # for a2
    assert o2.lead_id == o1.lead_id
    cmds = core.handle(Disposition(o1.call_id, "PAID"), 12.0)
    data = _disposition_event(cmds)
    assert (data["late"], data["held"]) == (False, True)
    assert core.agents.get("a1").status is AgentStatus.READY
    (rel,) = of(core.handle(CallFailed(o2.call_id, Outcome.NO_ANSWER, 19), 40.0), ReleaseLead)
    assert rel == ReleaseLead("c1", o1.lead_id, Outcome.CONNECTED, final=True)


# ------------------------------------------------------------------------------------- late codes through the store


def _handed_back_after_its_wrap_up(n_leads=1):
    """The campaign stops during the wrap-up of a call; the wrap-up timer ends it and the lead goes back to the store
    (no longer in this node's hopper). The call."""
    core = make(n_leads=n_leads, wrapup_s=5.0)
    (o,) = of(core.tick(1.0), Originate)
    core.handle(CallAnswered(o.call_id), 2.0)
    core.handle(CallEnded(o.call_id, 16), 10.0)
    core.handle(CampaignControl("c1", "stop"), 11.0)
    back = of(core.tick(15.0), ReleaseLead)
    assert [(r.lead_id, r.final) for r in back] == [(o.lead_id, False)]
    assert core.campaigns["c1"].hopper.info(o.lead_id) is None
    return core, o


def test_a_dial_refused_for_its_lost_lease_leaves_no_trace_and_lets_the_lead_go():
    """The store refused the dial record (the lease expired while the node could not renew it): the call was never
    made. It ends with nothing recorded and no release (the lead is not this node's to release), the lead leaves
    the hopper, and a late code held for it goes to the store instead of being lost with it."""
    core = make(n_leads=1, wrapup_s=5.0, hopper={"recycle_delays": {"connected": 10}})
    o, redial = _first_call_wrapped_up(core)
    assert not redial
    (o2,) = of(core.tick(40.0), Originate)  # recycled: out on its next dial
    assert o2.lead_id == o.lead_id
    assert _disposition_event(core.handle(Disposition(o.call_id, "PAID"), 40.5))["held"] is True
    cmds = core.handle(LeaseLost(o2.call_id), 41.0)
    assert not of(cmds, RecordAttempt) and not of(cmds, ReleaseLead)
    assert not [c for c in of(cmds, Emit) if c.kind == "call.ended"]
    assert of(cmds, AskDisposition) == [AskDisposition("c1", o.lead_id, StoredCode(
        "PAID", o.call_id, o.number, Outcome.CONNECTED, final=True, drop=False))]
    assert core.campaigns["c1"].hopper.info(o.lead_id) is None and o2.call_id not in core.calls
    assert core.agents.get("a1").status is AgentStatus.READY
    assert not of(core.tick(100.0), Originate)  # nothing left here to dial
    assert core.handle(LeaseLost(o2.call_id), 101.0) == []  # said twice: nothing more


def test_a_late_final_code_for_a_lead_handed_back_asks_the_store_to_end_it():
    # It used to do nothing to the lead: the store handed the debtor who just paid to the next node to dial.
    core, o = _handed_back_after_its_wrap_up()
    cmds = core.handle(Disposition(o.call_id, "PAID"), 20.0)
    assert of(cmds, AskDisposition) == [AskDisposition("c1", o.lead_id, StoredCode(
        "PAID", o.call_id, o.number, Outcome.CONNECTED, final=True, drop=False))]
    assert not of(cmds, ReleaseLead)  # the lease is gone: the store ends it wherever it is
    data = _disposition_event(cmds)
    assert (data["late"], data["held"], data["stored"], data["callback_at"]) == (True, False, True, None)
    assert of(cmds, RecordAttempt)[0].attempt.disposition == "PAID"


def test_a_late_wrong_party_or_callback_for_a_lead_handed_back_goes_to_the_store():
    core, o = _handed_back_after_its_wrap_up()
    cmds = core.handle(Disposition(o.call_id, "WRONG_PARTY"), 20.0)
    assert of(cmds, AskDisposition) == [AskDisposition("c1", o.lead_id, StoredCode(
        "WRONG_PARTY", o.call_id, o.number, Outcome.CONNECTED, final=False, drop=True))]
    core, o = _handed_back_after_its_wrap_up()
    cmds = core.handle(Disposition(o.call_id, "CALLBACK", callback_at=900.0, own_callback=True), 20.0)
    assert of(cmds, AskDisposition) == [AskDisposition("c1", o.lead_id, None, 900.0, "a1")]
    data = _disposition_event(cmds)
    assert (data["stored"], data["callback_at"]) == (True, 900.0)  # it used to say null: no callback was made
    assert of(cmds, RecordAttempt)[0].attempt.callback_at == 900.0
    # A code that changes nothing for the lead (a refusal) asks nothing of the store.
    core, o = _handed_back_after_its_wrap_up()
    cmds = core.handle(Disposition(o.call_id, "REFUSED"), 20.0)
    assert not of(cmds, AskDisposition) and _disposition_event(cmds)["stored"] is False


def _lead_event(cmds):
    (emit,) = [c for c in of(cmds, Emit) if c.kind == "lead.disposition"]
    return emit.data


def test_a_code_kept_in_the_store_for_a_lead_held_here_steers_it_as_a_late_disposition():
    core = make(n_leads=3, wrapup_s=5.0)
    hop = core.campaigns["c1"].hopper
    paid = StoredCode("PAID", "n2-7", "+15550100000", Outcome.CONNECTED, final=True, drop=False)
    cmds = core.handle(StoredDisposition("c1", "L0", paid), 1.0)  # waiting here: ended at once
    assert of(cmds, ReleaseLead) == [ReleaseLead("c1", "L0", Outcome.CONNECTED, final=True)]
    assert hop.info("L0").state == "done" and _lead_event(cmds)["result"] == "ended"
    wrong = StoredCode("WRONG_PARTY", "n2-8", "+15550100001", Outcome.CONNECTED, final=False, drop=True)
    (o,) = of(core.tick(2.0), Originate)
    assert o.lead_id == "L1"
    cmds = core.handle(StoredDisposition("c1", "L1", wrong), 3.0)  # out on a call here: held until it is back
    assert _lead_event(cmds)["result"] == "held" and not of(cmds, ReleaseLead)
    cmds = core.handle(CallFailed(o.call_id, Outcome.BUSY, 17), 4.0)
    assert of(cmds, ReleaseLead) == [ReleaseLead("c1", "L1", Outcome.CONNECTED, final=True)]  # its only phone
    # Gone from this hopper meanwhile (handed back): the code goes to the store again.
    core.handle(CampaignControl("c1", "stop"), 5.0)
    cmds = core.handle(StoredDisposition("c1", "L2", paid), 6.0)
    assert of(cmds, AskDisposition) == [AskDisposition("c1", "L2", paid)]
    assert _lead_event(cmds)["result"] == "stored"
    assert _lead_event(core.handle(StoredDisposition("c1", "L0", paid), 7.0))["result"] == "done"
