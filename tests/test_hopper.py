"""The hopper (issue #4 item 2) and disposition codes: ordering, recycling, caps, phone ranking, callbacks, gates,
removal, the DST helper, and state-machine properties."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from dialer.dispositions import DispositionCode, DispositionSet
from dialer.hopper import DEFAULT_RECYCLE_S, Hopper, HopperRules, Pick, local_time_to_epoch
from dialer.model import Lead, Outcome

C = "camp"
T0 = 1_750_000_000.0  # a Sunday, 15:06 UTC
DISP = DispositionSet.default()


def lead(i: int | str, phones: tuple[str, ...] | None = None, amount: float = 100.0, dpd: int = 10,
         segment: str = "", tz: str | None = "America/Bogota") -> Lead:
    lid = i if isinstance(i, str) else f"L{i}"
    return Lead(lid, C, phones if phones is not None else (f"+5730000{lid}",), amount_due=amount,
                days_past_due=dpd, segment=segment, timezone=tz)


@dataclass(frozen=True)
class Refused:
    reason: str
    retry_at: float | None = None


def ids(picks: list[Pick]) -> list[str]:
    return [p.lead.lead_id for p in picks]


# ------------------------------------------------------------------------------------------------ ordering


def test_priority_by_segment_then_stage_then_amount() -> None:
    rules = HopperRules(segment_priority={"vip": 100}, stage_priority={"early": 10, "late": 5})
    h = Hopper(C, rules)
    h.add([
        lead("late-big", amount=9000, dpd=120),  # 5
        lead("early-small", amount=10, dpd=5),  # 10
        lead("early-big", amount=500, dpd=29),  # 10, more money
        lead("mid", amount=99999, dpd=30),  # 0: 30 days is intermediate
        lead("vip-late", amount=1, dpd=200, segment="vip"),  # 105
    ], T0)
    assert ids(h.select(10, T0)) == ["vip-late", "early-big", "early-small", "late-big", "mid"]


def test_stage_bounds_configurable() -> None:
    rules = HopperRules(stage_bounds=(10, 20))
    assert [rules.stage(d) for d in (0, 9, 10, 19, 20, 500)] == [
        "early", "early", "intermediate", "intermediate", "late", "late"]


def test_select_respects_count_and_never_returns_a_lead_twice_at_once() -> None:
    h = Hopper(C)
    h.add([lead(i, amount=i) for i in range(10)], T0)
    first = h.select(4, T0)
    assert ids(first) == ["L9", "L8", "L7", "L6"]
    second = h.select(100, T0)
    assert len(second) == 6 and not set(ids(first)) & set(ids(second))
    assert h.select(5, T0) == [] and h.select(0, T0) == []
    assert h.counts()["out"] == 10


def test_add_ignores_known_ids_and_rejects_other_campaigns() -> None:
    h = Hopper(C)
    assert h.add([lead(1), lead(2)], T0) == 2
    assert h.add([lead(2, amount=1e9), lead(3)], T0) == 1
    h.remove("L1", T0)
    assert h.add([lead(1)], T0) == 0  # removed stays removed
    assert ids(h.select(10, T0)) == ["L2", "L3"]
    with pytest.raises(ValueError, match="campaign"):
        h.add([Lead("x", "other", ("+1",))], T0)
    assert h.add([lead("nophone", phones=())], T0) == 1 and h.info("nophone").state == "done"  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------------ recycling


@pytest.mark.parametrize("outcome", [o for o in Outcome if o is not Outcome.CONNECTED])
def test_recycle_delay_per_outcome(outcome: Outcome) -> None:
    h = Hopper(C)
    h.add([lead(1)], T0)
    (p,) = h.select(1, T0)
    end = T0 + 40
    h.outcome("L1", p.number, outcome, end)
    delay = DEFAULT_RECYCLE_S[outcome]
    if delay > 0:
        assert h.select(1, end + delay - 1) == []
        assert h.info("L1").next_at == end + delay  # type: ignore[union-attr]
    assert ids(h.select(1, end + delay)) == ["L1"]


def test_default_delays_are_the_issue_ones() -> None:
    assert {o.value: s for o, s in DEFAULT_RECYCLE_S.items() if o is not Outcome.CONNECTED} == {
        "busy": 600, "no_answer": 7200, "congestion": 300, "failed": 3600, "machine": 14400, "abandoned": 3600,
        "lost": 0}


def test_recycle_delay_from_config() -> None:
    h = Hopper(C, HopperRules.from_config({"recycle_delays": {"busy": 60}}))
    h.add([lead(1)], T0)
    h.outcome("L1", h.select(1, T0)[0].number, Outcome.BUSY, T0)
    assert h.select(1, T0 + 59) == [] and len(h.select(1, T0 + 60)) == 1


BUSY_AT_ONCE = {**DEFAULT_RECYCLE_S, Outcome.BUSY: 0.0}


def test_caps_per_lead_end_it() -> None:
    h = Hopper(C, HopperRules(max_attempts_lead=3, max_attempts_phone=10, recycle_delays=BUSY_AT_ONCE))
    h.add([lead(1, phones=("+1", "+2"))], T0)
    now = T0
    states = []
    for _ in range(3):
        (p,) = h.select(1, now)
        states.append(h.outcome("L1", p.number, Outcome.BUSY, now))
    assert states == ["pending", "pending", "done"]
    assert h.select(1, now + 1e6) == [] and h.info("L1").attempts == 3  # type: ignore[union-attr]


def test_cap_per_phone_drops_it_then_the_lead_ends() -> None:
    h = Hopper(C, HopperRules(max_attempts_phone=2, recycle_delays=BUSY_AT_ONCE))
    h.add([lead(1, phones=("+1", "+2"))], T0)
    dialed = []
    for _ in range(10):
        picks = h.select(1, T0)
        if not picks:
            break
        dialed.append(picks[0].number)
        h.outcome("L1", picks[0].number, Outcome.BUSY, T0)
    assert sorted(dialed) == ["+1", "+1", "+2", "+2"]
    info = h.info("L1")
    assert info is not None and info.state == "done" and info.phones == () and info.phone_attempts == {"+1": 2, "+2": 2}


def test_a_dial_never_made_is_not_an_attempt_and_keeps_its_callback() -> None:
    """`lost`: the Originate was never sent (link down, dial record too late, a DID at its cap on another node). It
    used to count against both caps, so ten in a row (a link flap, a DID capped elsewhere) ended a lead never rung."""
    h = Hopper(C, HopperRules(max_attempts_lead=3, max_attempts_phone=2))
    h.add([lead(1, phones=("+1", "+2"))], T0)
    for _ in range(10):
        (p,) = h.select(1, T0)
        assert h.outcome("L1", p.number, Outcome.LOST, T0) == "pending"
    info = h.info("L1")
    assert info is not None and (info.attempts, info.phone_attempts, info.phones) == (0, {}, ("+1", "+2"))
    assert h.answer_rates.rate("", 0) == h.answer_rates.rate("", 1)  # nothing learnt either
    h.schedule_callback("L1", T0 + 50, "ana")
    (p,) = h.due_agent_callbacks("ana", T0 + 50)
    assert h.outcome("L1", p.number, Outcome.LOST, T0 + 51) == "scheduled"
    assert h.callbacks() == [("L1", T0 + 50, "ana")]  # still ana's, still due


def test_connected_with_final_disposition_ends_the_lead_and_without_it_recycles() -> None:
    h = Hopper(C)
    h.add([lead(1), lead(2)], T0)
    a, b = h.select(2, T0)
    assert h.outcome(a.lead.lead_id, a.number, Outcome.CONNECTED, T0, disposition=DISP.get("PAID")) == "done"
    assert h.outcome(b.lead.lead_id, b.number, Outcome.CONNECTED, T0, disposition=DISP.get("REFUSED")) == "scheduled"
    assert h.counts() == {"pending": 0, "out": 0, "scheduled": 1, "parked": 0, "done": 1, "removed": 0}


# ------------------------------------------------------------------------------------------------ phones


def test_phone_ranking_live_first_failed_last_otherwise_least_tried() -> None:
    h = Hopper(C, HopperRules(max_attempts_phone=10))
    h.add([lead(1, phones=("+1", "+2", "+3", "+4"))], T0)
    now = T0

    def dial(outcome: Outcome) -> Pick:
        nonlocal now
        (p,) = h.select(1, now)
        h.outcome("L1", p.number, outcome, now)
        now += 1e5
        return p

    p = dial(Outcome.FAILED)
    assert (p.number, p.reason) == ("+1", "first listed, untried")
    assert dial(Outcome.NO_ANSWER).number == "+2"  # +1 failed: last; +2 untried
    p = dial(Outcome.CONNECTED)
    assert (p.number, p.reason) == ("+3", "untried")
    p = dial(Outcome.NO_ANSWER)
    assert (p.number, p.reason) == ("+3", "answered live most recently")
    (p,) = h.select(1, now)
    assert p.number == "+3"
    h.release("L1", now)
    # +4 answers too, later: the most recent live answer goes first; +2 tried once, +4 was untried.
    h._entries["L1"].stats["+4"] = h._entries["L1"].stats["+3"].__class__()  # type: ignore[index]
    st4 = h._entries["L1"].stats["+4"]  # type: ignore[index]
    st4.attempts, st4.live, st4.last_live = 1, 1, now
    order = [n for n, _ in h._ranked(h._entries["L1"])]
    assert order == ["+4", "+3", "+2", "+1"]


def test_wrong_party_drops_the_phone_and_dnc_too() -> None:
    h = Hopper(C)
    h.add([lead(1, phones=("+1", "+2", "+3"))], T0)
    (p,) = h.select(1, T0)
    assert p.number == "+1"
    h.outcome("L1", "+1", Outcome.CONNECTED, T0, disposition=DISP.get("WRONG_PARTY"))
    assert h.info("L1").phones == ("+2", "+3")  # type: ignore[union-attr]
    (p,) = h.select(1, T0 + 1e6)
    assert p.number == "+2"
    h.outcome("L1", "+2", Outcome.CONNECTED, T0 + 1e6, disposition=DispositionCode("X", "x", dnc=True))
    assert h.info("L1").phones == ("+3",)  # type: ignore[union-attr]
    (p,) = h.select(1, T0 + 2e6)
    assert (p.number, p.reason) == ("+3", "only phone")
    assert h.outcome("L1", "+3", Outcome.CONNECTED, T0 + 2e6, disposition=DISP.get("WRONG_PARTY")) == "done"


def test_dispose_after_outcome() -> None:
    h = Hopper(C)
    h.add([lead(1, phones=("+1", "+2"))], T0)
    h.outcome("L1", h.select(1, T0)[0].number, Outcome.CONNECTED, T0)
    assert h.dispose("L1", "+1", DISP.get("WRONG_PARTY"), T0) == "scheduled"  # type: ignore[arg-type]
    assert h.info("L1").phones == ("+2",)  # type: ignore[union-attr]
    assert h.dispose("L1", "+2", DISP.get("CALLBACK"), T0, callback_at=T0 + 60) == "scheduled"  # type: ignore[arg-type]
    assert ids(h.select(1, T0 + 60)) == ["L1"]
    h.release("L1", T0 + 60)
    with pytest.raises(ValueError, match="callback_at"):
        h.dispose("L1", "+2", DISP.get("CALLBACK"), T0)  # type: ignore[arg-type]
    assert h.dispose("L1", "+2", DISP.get("PTP"), T0) == "done"  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ gates


def test_gate_refusals_recorded_rescheduled_or_parked() -> None:
    h = Hopper(C)
    h.add([lead(1, amount=3), lead(2, amount=2), lead(3, amount=1)], T0)

    def gate(ld: Lead, number: str, now: float) -> Refused | None:
        if ld.lead_id == "L1":
            return Refused("outside calling window", retry_at=T0 + 3600)
        if ld.lead_id == "L2":
            return Refused("dnc")
        return None

    assert ids(h.select(3, T0, gate)) == ["L3"]
    assert list(h.refusals) == [("L1", "+5730000L1", "outside calling window", T0), ("L2", "+5730000L2", "dnc", T0)]
    assert h.info("L1").state == "scheduled" and h.info("L2").state == "parked"  # type: ignore[union-attr]
    assert h.select(3, T0 + 3599) == []
    assert ids(h.select(3, T0 + 3600)) == ["L1"]
    assert h.unpark(T0) == 1 and ids(h.select(3, T0)) == ["L2"]


def test_refused_phone_falls_through_to_the_next() -> None:
    h = Hopper(C)
    h.add([lead(1, phones=("+1", "+2"))], T0)
    (p,) = h.select(1, T0, lambda ld, n, t: Refused("dnc") if n == "+1" else None)
    assert p.number == "+2" and p.reason == "listed order, untried; higher-ranked refused (dnc)"
    assert list(h.refusals) == [("L1", "+1", "dnc", T0)]


def test_a_phone_closed_by_the_calendar_is_not_asked_again_before_it_opens() -> None:
    # "+1" sits in a zone whose window opens in an hour, "+2" is open: every pass dials "+2", and "+1" is refused
    # (and counted) once, not on every pass until it opens.
    asked: list[tuple[str, float]] = []

    def gate(ld: Lead, n: str, t: float) -> Refused | None:
        asked.append((n, t))
        return Refused("outside_window", T0 + 3600) if n == "+1" and t < T0 + 3600 else None

    h = Hopper(C)
    h.add([lead(1, phones=("+1", "+2"))], T0)
    for k in range(5):
        (p,) = h.select(1, T0 + k * 700, gate)
        assert p.number == "+2" and p.reason.endswith("higher-ranked refused (outside_window)")
        assert h.release("L1", T0 + k * 700)
    assert [n for n, _ in asked].count("+1") == 1 and len(h.refusals) == 1
    (p,) = h.select(1, T0 + 3600, gate)  # open now: asked again, and dialed
    assert p.number == "+1" and asked[-1] == ("+1", T0 + 3600)
    # Other refusals are asked every pass (a DNC entry may be removed, an agent may be reserved).
    h2 = Hopper(C)
    h2.add([lead(1, phones=("+1", "+2"))], T0)
    for k in range(3):
        h2.select(1, T0 + k, lambda ld, n, t: Refused("abandon_recall_block", T0 + 9999) if n == "+1" else None)
        h2.release("L1", T0 + k)
    assert len(h2.refusals) == 3


def test_refusal_log_is_bounded() -> None:
    h = Hopper(C, HopperRules(refusal_log=5))
    h.add([lead(i) for i in range(20)], T0)
    assert h.select(20, T0, lambda ld, n, t: Refused("no")) == []
    assert len(h.refusals) == 5 and h.counts()["parked"] == 20


# ------------------------------------------------------------------------------------------------ removal, release


def test_remove_cancels_callbacks_and_removed_out_lead_does_not_return() -> None:
    h = Hopper(C)
    h.add([lead(1), lead(2), lead(3)], T0)
    assert h.schedule_callback("L1", T0 + 100, None)
    assert h.schedule_callback("L2", T0 + 100, "agent-7")
    assert h.remove("L1", T0) and h.remove("L2", T0)
    assert not h.remove("L1", T0) and not h.remove("nope", T0)
    assert ids(h.select(10, T0 + 200)) == ["L3"]  # L1's callback was cancelled with it
    assert h.due_agent_callbacks("agent-7", T0 + 200) == []
    assert h.info("L3").state == "out"  # type: ignore[union-attr]
    assert h.remove("L3", T0 + 300)
    assert h.outcome("L3", "+5730000L3", Outcome.NO_ANSWER, T0 + 310) == "removed"
    assert h.select(10, T0 + 1e6) == []
    assert h.counts()["removed"] == 3 and h.counts()["out"] == 0


def test_removed_out_lead_released_stays_removed_and_its_callback_is_dropped() -> None:
    h = Hopper(C)
    h.add([lead(1)], T0)
    h.select(1, T0)
    assert h.schedule_callback("L1", T0 + 50)  # asked while out: applied on return...
    assert h.remove("L1", T0)  # ...unless removed meanwhile
    assert not h.schedule_callback("L1", T0 + 60)
    assert h.release("L1", T0) and h.info("L1").state == "removed"  # type: ignore[union-attr]
    assert h.select(1, T0 + 100) == [] and not h.release("L1", T0)


def test_release_counts_no_attempt_and_restores_a_callback() -> None:
    h = Hopper(C)
    h.add([lead(1), lead(2, amount=1e6)], T0)
    h.schedule_callback("L1", T0 + 10, None)
    (p,) = h.select(1, T0 + 10)
    assert (p.lead.lead_id, p.source) == ("L1", "callback")  # due callbacks before priority
    assert h.release("L1", T0 + 11)
    assert h.info("L1").attempts == 0 and h.info("L1").callback_at == T0 + 10  # type: ignore[union-attr]
    assert ids(h.select(1, T0 + 12)) == ["L1"]


# ------------------------------------------------------------------------------------------------ callbacks


def test_agent_callbacks_only_for_their_agent() -> None:
    h = Hopper(C)
    h.add([lead(1), lead(2)], T0)
    (a, b) = h.select(2, T0)
    h.outcome("L1", a.number, Outcome.CONNECTED, T0, disposition=DISP.get("CALLBACK"), callback_at=T0 + 600,
              callback_agent="ana")
    h.outcome("L2", b.number, Outcome.CONNECTED, T0, disposition=DISP.get("CALLBACK"), callback_at=T0 + 600)
    assert h.select(10, T0 + 599) == [] and h.due_agent_callbacks("ana", T0 + 599) == []
    picks = h.select(10, T0 + 600)
    assert [(p.lead.lead_id, p.source) for p in picks] == [("L2", "callback")]
    assert h.due_agent_callbacks("bob", T0 + 600) == []
    (p,) = h.due_agent_callbacks("ana", T0 + 600)
    assert (p.lead.lead_id, p.source, p.agent_id) == ("L1", "agent_callback", "ana")
    assert h.due_agent_callbacks("ana", T0 + 600) == []  # out now


def test_callback_requires_a_time_and_reassignment() -> None:
    h = Hopper(C)
    h.add([lead(1)], T0)
    (p,) = h.select(1, T0)
    with pytest.raises(ValueError, match="callback_at"):
        h.outcome("L1", p.number, Outcome.CONNECTED, T0, disposition=DISP.get("CALLBACK"))
    assert h.info("L1").state == "out" and h.info("L1").attempts == 0  # type: ignore[union-attr]  # nothing half done
    h.outcome("L1", p.number, Outcome.CONNECTED, T0, callback_at=T0 + 5, callback_agent="ana")
    assert h.reassign_agent_callbacks("ana") == 1
    assert h.due_agent_callbacks("ana", T0 + 5) == [] and ids(h.select(1, T0 + 5)) == ["L1"]


def test_callback_refused_by_gate_keeps_its_callback() -> None:
    h = Hopper(C)
    h.add([lead(1)], T0)
    h.schedule_callback("L1", T0 + 10, "ana")
    assert h.due_agent_callbacks("ana", T0 + 10, lambda ld, n, t: Refused("window", T0 + 500)) == []
    assert h.info("L1").callback_at == T0 + 500 and h.select(1, T0 + 1000) == []  # type: ignore[union-attr]
    assert ids(h.due_agent_callbacks("ana", T0 + 500)) == ["L1"]


def test_callback_refused_with_retry_now_waits_for_the_next_call() -> None:
    """A refusal whose retry time is already due must not spin within one call (it used to loop for ever)."""
    h = Hopper(C)
    h.add([lead(1), lead(2)], T0)
    h.schedule_callback("L1", T0, None)
    h.schedule_callback("L2", T0, "ana")
    calls = 0

    def gate(ld: Lead, number: str, now: float) -> Refused:
        nonlocal calls
        calls += 1
        if calls > 50:
            raise AssertionError("gate called in a loop")
        return Refused("busy line rule", retry_at=now)

    assert h.select(5, T0, gate) == [] and h.due_agent_callbacks("ana", T0, gate) == []
    assert calls == 2 and len(h.refusals) == 2
    assert [p.source for p in h.select(5, T0)] == ["callback"]
    assert [p.source for p in h.due_agent_callbacks("ana", T0)] == ["agent_callback"]


# ------------------------------------------------------------------------------------------------ best time


def test_best_time_orders_equal_priority_by_learnt_answer_rate() -> None:
    h = Hopper(C, HopperRules(best_time=True))
    h.add([lead(f"a{i}", segment="a", amount=1000) for i in range(20)]
          + [lead(f"b{i}", segment="b", amount=1) for i in range(20)], T0)
    # Learn at this hour: segment b answers, segment a does not.
    picks = h.select(40, T0)
    for p in picks:
        h.outcome(p.lead.lead_id, p.number, Outcome.CONNECTED if p.lead.segment == "b" else Outcome.NO_ANSWER, T0)
    week = 7 * 86400
    order = [p.lead.segment for p in h.select(40, T0 + week)]
    assert order == ["b"] * 20 + ["a"] * 20
    # Off: amount decides.
    h2 = Hopper(C, HopperRules(best_time=False))
    h2.add([lead("a", segment="a", amount=1000), lead("b", segment="b", amount=1)], T0)
    h2.answer_rates.record("b", 0, True)
    assert ids(h2.select(2, T0)) == ["a", "b"]


def test_answer_rate_prior_and_local_hour() -> None:
    h = Hopper(C, HopperRules(best_time=True, answer_prior=(1.0, 4.0)))
    assert h.answer_rates.rate("x", 3) == pytest.approx(0.2)
    h.add([lead(1, tz="Asia/Kolkata")], T0)
    h.outcome("L1", h.select(1, T0)[0].number, Outcome.ABANDONED, T0)
    local = datetime.fromtimestamp(T0, ZoneInfo("Asia/Kolkata"))
    assert h.answer_rates.rate("", local.weekday() * 24 + local.hour) == pytest.approx(2 / 6)


# ------------------------------------------------------------------------------------------------ DST helper


def test_local_time_plain_nonexistent_and_ambiguous() -> None:
    ny = ZoneInfo("America/New_York")
    assert local_time_to_epoch(date(2025, 6, 2), "18:00", "America/New_York") == \
        datetime(2025, 6, 2, 18, 0, tzinfo=ny).timestamp()
    # 2025-03-09 02:30 does not exist in New York: the clock jumps 02:00 EST → 03:00 EDT at 07:00 UTC.
    assert local_time_to_epoch(date(2025, 3, 9), "02:30", "America/New_York") == \
        datetime(2025, 3, 9, 7, 0, tzinfo=UTC).timestamp()
    # 2025-11-02 01:30 happens twice: the first is EDT (05:30 UTC).
    assert local_time_to_epoch(date(2025, 11, 2), "01:30", "America/New_York") == \
        datetime(2025, 11, 2, 5, 30, tzinfo=UTC).timestamp()
    # Lord Howe moves by 30 minutes: 02:15 on 2025-10-05 is skipped, the jump is at 02:00 +10:30 = 15:30 UTC.
    assert local_time_to_epoch(date(2025, 10, 5), "02:15", "Australia/Lord_Howe") == \
        datetime(2025, 10, 4, 15, 30, tzinfo=UTC).timestamp()
    # Madrid spring forward 02:00 → 03:00 CEST at 01:00 UTC.
    assert local_time_to_epoch(date(2025, 3, 30), "02:59", "Europe/Madrid") == \
        datetime(2025, 3, 30, 1, 0, tzinfo=UTC).timestamp()
    for bad in ("18h", "24:00", "7:00", "18:60"):
        with pytest.raises(ValueError, match="HH:MM"):
            local_time_to_epoch(date(2025, 1, 1), bad, "UTC")


# ------------------------------------------------------------------------------------------------ config, dispositions


def test_rules_from_config_errors_name_the_field() -> None:
    r = HopperRules.from_config({"stage_bounds": [15, 60], "segment_priority": {"vip": 9}, "best_time": True,
                                 "max_attempts_phone": 2})
    assert r.stage_bounds == (15, 60) and r.best_time and r.recycle_delays[Outcome.NO_ANSWER] == 7200
    for cfg, msg in [
        ({"recycle_delays": {"busy": -1}}, r"hopper\.recycle_delays\.busy"),
        ({"recycle_delays": {"ringing": 5}}, r"hopper\.recycle_delays\.ringing: unknown outcome"),
        ({"max_attempts_lead": 0}, r"hopper\.max_attempts_lead"),
        ({"stage_priority": {"middle": 1}}, r"hopper\.stage_priority\.middle"),
        ({"stage_bounds": [90, 30]}, r"hopper\.stage_bounds"),
        ({"segment_priority": {"x": "high"}}, r"hopper\.segment_priority\.x"),
        ({"colour": 1}, r"hopper\.colour: unknown field"),
        ({"best_time": "yes"}, r"hopper\.best_time"),
    ]:
        with pytest.raises(ValueError, match=msg):
            HopperRules.from_config(cfg)  # type: ignore[arg-type]


def test_default_dispositions() -> None:
    codes = {c.code: c for c in DISP}
    assert {"PTP", "PAID", "CALLBACK", "REFUSED", "WRONG_PARTY", "DNC", "DISPUTE", "NO_CONTACT"} <= set(codes)
    assert codes["PTP"].promise_to_pay and codes["PAID"].final and codes["CALLBACK"].callback
    assert codes["WRONG_PARTY"].wrong_party and codes["DNC"].dnc and not codes["REFUSED"].final


def test_dispositions_from_config_errors_name_index_and_field() -> None:
    ds = DispositionSet.from_config([{"code": "PTP", "label": "Promesa", "final": True, "promise_to_pay": True},
                                     {"code": "CB", "callback": True}])
    assert len(ds) == 2 and ds.get("CB").label == "CB"  # type: ignore[union-attr]
    for entries, msg in [
        ([{"code": "A"}, {"code": "B", "final": "yes"}], r"dispositions\[1\]\.final: expected a bool"),
        ([{"label": "x"}], r"dispositions\[0\]\.code"),
        ([{"code": "A"}, {"code": "A"}], r"dispositions\[1\]\.code: duplicate"),
        ([{"code": "A", "colour": 1}], r"dispositions\[0\]\.colour: unknown field"),
        ([{"code": "A", "final": True, "callback": True}], r"dispositions\[0\]\.callback"),
        ([{"code": "A", "label": 3}], r"dispositions\[0\]\.label"),
        (["A"], r"dispositions\[0\]: expected a mapping"),
    ]:
        with pytest.raises(ValueError, match=msg):
            DispositionSet.from_config(entries)  # type: ignore[arg-type]


def test_disposition_validate_names_the_field() -> None:
    assert DISP.validate("PTP", None, 120.5, date(2025, 7, 1)).final
    assert DISP.validate("CALLBACK", T0 + 60, now=T0).callback
    for args, kw, field in [
        (("NOPE",), {}, "code"),
        (("CALLBACK",), {}, "callback_at"),
        (("CALLBACK", T0 - 1), {"now": T0}, "callback_at"),
        (("CALLBACK", float("nan")), {}, "callback_at"),
        (("PAID", T0), {}, "callback_at"),
        (("PTP", None, None, date(2025, 7, 1)), {}, "ptp_amount"),
        (("PTP", None, -5, date(2025, 7, 1)), {}, "ptp_amount"),
        (("PTP", None, 10), {}, "ptp_date"),
        (("PTP", None, 10, "2025-07-01"), {}, "ptp_date"),
        (("PAID", None, 10), {}, "ptp_amount"),
        (("PAID", None, None, date(2025, 7, 1)), {}, "ptp_date"),
    ]:
        with pytest.raises(ValueError, match=f"^{field}:"):
            DISP.validate(*args, **kw)  # type: ignore[arg-type]


def test_the_api_refuses_a_promise_in_the_past_and_dates_beyond_a_year() -> None:
    """The API checks against the wall clock (`calendar`): a promise dated before the debtor's today (the UTC date
    12 h ago) or a callback or promise more than a year ahead (epoch milliseconds sent as seconds: year 5138) was
    taken and stored. The core, whose clock may be virtual, checks only that a callback is after `now`."""
    # T0: 2025-06-15 15:06 UTC
    assert DISP.validate("PTP", None, 10, date(2025, 6, 15), now=T0, calendar=True).final
    assert DISP.validate("PTP", None, 10, date(2026, 6, 16), now=T0, calendar=True).final
    assert DISP.validate("CALLBACK", T0 + 366 * 86400, now=T0, calendar=True).callback
    for args, message in [
        (("PTP", None, 10, date(2025, 6, 14)), "ptp_date: 2025-06-14 is in the past"),
        (("PTP", None, 10, date(2026, 6, 17)), "ptp_date: 2026-06-17 is more than 366 days ahead"),
        (("CALLBACK", T0 * 1000), "callback_at: more than 366 days ahead"),
    ]:
        with pytest.raises(ValueError, match=f"^{message}"):
            DISP.validate(*args, now=T0, calendar=True)  # type: ignore[arg-type]
        DISP.validate(*args, now=T0)  # type: ignore[arg-type]  # the core takes it
    # just after midnight UTC it is still yesterday west of Greenwich: yesterday's date is a promise for today
    midnight = datetime(2025, 6, 16, 0, 30, tzinfo=UTC).timestamp()
    assert DISP.validate("PTP", None, 10, date(2025, 6, 15), now=midnight, calendar=True).final


# ------------------------------------------------------------------------------------------------ properties


class HopperMachine(RuleBasedStateMachine):
    """Random loads, selections (with a refusing gate), outcomes, releases, removals and callbacks; checks the
    invariants after every step."""

    MAX_LEAD, MAX_PHONE = 3, 2

    def __init__(self) -> None:
        super().__init__()
        # Short recycle delays, so leads come back often enough to reach their caps within a run.
        delays = {o: 0.0 for o in Outcome} | {Outcome.BUSY: 300.0, Outcome.MACHINE: 3600.0}
        self.h = Hopper(C, HopperRules(max_attempts_lead=self.MAX_LEAD, max_attempts_phone=self.MAX_PHONE,
                                       segment_priority={"s1": 3}, best_time=True, refusal_log=100_000,
                                       recycle_delays=delays))
        self.now = T0
        self.out: dict[str, str] = {}  # lead -> number, as the model sees it
        self.removed: set[str] = set()
        self.attempts: dict[str, int] = {}
        self.phone_attempts: dict[tuple[str, str], int] = {}
        self.gate_calls = 0
        self.next_id = 0

    @initialize(n=st.integers(2, 8), nphones=st.integers(1, 3))
    def load(self, n: int, nphones: int) -> None:
        self.add(n, "", nphones, 100.0, 10, "Europe/Madrid")

    @rule(n=st.integers(1, 3), segment=st.sampled_from(["", "s1", "s2"]), nphones=st.integers(0, 3),
          amount=st.floats(0, 1000), dpd=st.integers(0, 200), tz=st.sampled_from([None, "Europe/Madrid"]))
    def add(self, n: int, segment: str, nphones: int, amount: float, dpd: int, tz: str | None) -> None:
        batch = []
        for _ in range(n):
            lid = f"L{self.next_id}"
            self.next_id += 1
            batch.append(Lead(lid, C, tuple(f"+1{lid}{k}" for k in range(nphones)), amount_due=amount,
                              days_past_due=dpd, segment=segment, timezone=tz))
        assert self.h.add(batch, self.now) == n

    @rule(count=st.integers(-1, 8), refuse_every=st.sampled_from([0, 0, 0, 1, 2, 3]),
          retry=st.sampled_from([None, 0.0, 500.0]))
    def select(self, count: int, refuse_every: int, retry: float | None) -> None:
        refused_before = len(self.h.refusals)
        refusals_given = 0

        def gate(ld: Lead, number: str, now: float) -> Refused | None:
            nonlocal refusals_given
            assert ld.lead_id not in self.out and ld.lead_id not in self.removed
            self.gate_calls += 1
            if refuse_every and self.gate_calls % refuse_every == 0:
                refusals_given += 1
                return Refused(f"rule-{self.gate_calls}", None if retry is None else now + retry)
            return None

        picks = self.h.select(count, self.now, gate)
        assert len(picks) <= max(count, 0)
        got = ids(picks)
        assert len(set(got)) == len(got)
        for p in picks:
            assert p.lead.lead_id not in self.out, "selected twice at once"
            assert p.lead.lead_id not in self.removed
            assert p.number in p.lead.phones and p.reason
            assert self.attempts.get(p.lead.lead_id, 0) < self.MAX_LEAD
            assert self.phone_attempts.get((p.lead.lead_id, p.number), 0) < self.MAX_PHONE
            self.out[p.lead.lead_id] = p.number
        new = list(self.h.refusals)[refused_before:]
        assert len(new) == refusals_given and all(r[2].startswith("rule-") and r[3] == self.now for r in new)

    @precondition(lambda self: self.out)
    @rule(data=st.data(), outcome=st.sampled_from(list(Outcome)),
          disp=st.sampled_from([None] * 8 + ["PAID", "WRONG_PARTY", "REFUSED", "CALLBACK"]))
    def outcome(self, data: st.DataObject, outcome: Outcome, disp: str | None) -> None:
        lid = data.draw(st.sampled_from(sorted(self.out)))
        number = self.out.pop(lid)
        code = DISP.get(disp) if disp else None
        cb = self.now + 100 if code is not None and code.callback else None
        state = self.h.outcome(lid, number, outcome, self.now, disposition=code, callback_at=cb)
        if outcome is not Outcome.LOST:  # a dial never made is no attempt
            self.attempts[lid] = self.attempts.get(lid, 0) + 1
            self.phone_attempts[(lid, number)] = self.phone_attempts.get((lid, number), 0) + 1
        if lid in self.removed:
            assert state == "removed"

    @precondition(lambda self: self.out)
    @rule(data=st.data())
    def finish_all(self, data: st.DataObject) -> None:
        """Every call out ends (mostly unanswered): leads come back often enough to reach their caps."""
        for lid in sorted(self.out):
            number = self.out.pop(lid)
            oc = data.draw(st.sampled_from([Outcome.NO_ANSWER, Outcome.LOST, Outcome.FAILED, Outcome.CONNECTED]))
            self.h.outcome(lid, number, oc, self.now)
            if oc is not Outcome.LOST:  # a dial never made is no attempt
                self.attempts[lid] = self.attempts.get(lid, 0) + 1
                self.phone_attempts[(lid, number)] = self.phone_attempts.get((lid, number), 0) + 1

    @precondition(lambda self: self.out)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        lid = data.draw(st.sampled_from(sorted(self.out)))
        del self.out[lid]
        assert self.h.release(lid, self.now)

    @precondition(lambda self: self.next_id)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        lid = f"L{data.draw(st.integers(0, self.next_id - 1))}"
        assert self.h.remove(lid, self.now) == (lid not in self.removed)
        self.removed.add(lid)

    @precondition(lambda self: self.next_id)
    @rule(data=st.data(), agent=st.sampled_from([None, "ana"]), delay=st.floats(0, 1000))
    def callback(self, data: st.DataObject, agent: str | None, delay: float) -> None:
        lid = f"L{data.draw(st.integers(0, self.next_id - 1))}"
        ok = self.h.schedule_callback(lid, self.now + delay, agent)
        if lid in self.removed:
            assert not ok

    @rule()
    def agent_callbacks(self) -> None:
        for p in self.h.due_agent_callbacks("ana", self.now):
            assert p.lead.lead_id not in self.out and p.lead.lead_id not in self.removed
            self.out[p.lead.lead_id] = p.number

    @rule(dt=st.sampled_from([1.0, 300.0, 3600.0, 86400.0]))
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule()
    def unpark(self) -> None:
        self.h.unpark(self.now)

    @invariant()
    def consistent(self) -> None:
        counts = self.h.counts()
        assert sum(counts.values()) == len(self.h) == self.next_id
        assert counts["out"] == len(self.out)
        for lid, n in self.attempts.items():
            info = self.h.info(lid)
            assert info is not None and info.attempts == n <= self.MAX_LEAD
            assert all(v <= self.MAX_PHONE for v in info.phone_attempts.values())
        for lid in self.removed:
            assert self.h.info(lid).state in ("removed", "out")  # type: ignore[union-attr]


TestHopperMachine = HopperMachine.TestCase
TestHopperMachine.settings = settings(max_examples=150, stateful_step_count=50, deadline=None,
                                      suppress_health_check=[HealthCheck.too_slow])


@given(outcomes=st.lists(st.sampled_from(list(Outcome)), min_size=1, max_size=40), nphones=st.integers(1, 5),
       max_lead=st.integers(1, 12), max_phone=st.integers(1, 5))
@settings(max_examples=150, deadline=None)
def test_dialing_one_lead_until_it_ends_respects_both_caps(outcomes: list[Outcome], nphones: int, max_lead: int,
                                                           max_phone: int) -> None:
    h = Hopper(C, HopperRules(max_attempts_lead=max_lead, max_attempts_phone=max_phone))
    h.add([lead(1, phones=tuple(f"+{k}" for k in range(nphones)))], T0)
    now, per_phone, total = T0, dict.fromkeys(range(nphones), 0), 0
    for oc in outcomes:
        picks = h.select(3, now)
        if not picks:
            break
        (p,) = picks
        if oc is not Outcome.LOST:  # lost: the dial was never made
            per_phone[int(p.number[1:])] += 1
            total += 1
        assert total <= max_lead and max(per_phone.values()) <= max_phone
        h.outcome("L1", p.number, oc, now)
        now += 86400.0
    else:
        return
    # It ended because a cap was reached, not earlier.
    assert h.info("L1").state == "done"  # type: ignore[union-attr]
    assert total == max_lead or all(v == max_phone for v in per_phone.values())


def test_selection_order_matches_a_full_sort() -> None:
    """The buckets' merge gives the same order as sorting every eligible lead by (-priority, -amount, arrival)."""
    import random

    rnd = random.Random(3)
    rules = HopperRules(segment_priority={"a": 5, "b": 1}, stage_priority={"early": 2, "late": 1})
    h = Hopper(C, rules)
    leads = [lead(i, amount=rnd.choice([10.0, 20.0, rnd.uniform(0, 100)]), dpd=rnd.randint(0, 150),
                  segment=rnd.choice(["a", "b", "c"])) for i in range(500)]
    h.add(leads, T0)
    expected = sorted(range(500), key=lambda i: (-rules.priority(leads[i]), -leads[i].amount_due, i))
    assert ids(h.select(500, T0)) == [f"L{i}" for i in expected]


def test_drain_hands_back_waiting_leads_and_keeps_those_on_a_call() -> None:
    hop = Hopper("c")
    hop.add([Lead(f"L{i}", "c", (f"+1212555{i:04d}",)) for i in range(4)], 0.0)
    (out,) = hop.select(1, 0.0)
    hop.schedule_callback("L3", 500.0)
    gone = hop.drain()
    assert sorted(gone) == sorted({"L0", "L1", "L2", "L3"} - {out.lead.lead_id})
    assert hop.counts()["pending"] == 0 and hop.counts()["scheduled"] == 0 and hop.counts()["out"] == 1
    assert hop.select(5, 1000.0) == []  # nothing drained comes back, callbacks included
    assert hop.outcome(out.lead.lead_id, out.number, Outcome.BUSY, 10.0) == "scheduled"


def test_a_lead_drained_and_loaded_again_keeps_its_attempts_delays_and_callback() -> None:
    """Stop then start: the store hands the drained leads back, and they used to come back as new leads: dialed at
    once despite a recycle delay, their attempts and callbacks forgotten (over max_attempts_lead in a few cycles)."""
    hop = Hopper("c", HopperRules(max_attempts_lead=2))
    leads = [Lead(f"L{i}", "c", (f"+1212555{i:04d}",)) for i in range(3)]
    hop.add(leads, 0.0)
    a, b, c = hop.select(3, 0.0)
    hop.outcome(a.lead.lead_id, a.number, Outcome.NO_ANSWER, 10.0)  # back at 10 + 7200
    hop.outcome(b.lead.lead_id, b.number, Outcome.BUSY, 10.0)
    hop.schedule_callback(b.lead.lead_id, 5000.0, "ana")
    hop.outcome(c.lead.lead_id, c.number, Outcome.BUSY, 10.0)
    assert sorted(hop.drain()) == ["L0", "L1", "L2"]
    assert hop.info("L0") is None and hop.select(5, 20.0) == []
    assert hop.add(leads, 30.0) == 3  # the store leased them again
    assert ids(hop.select(5, 620.0)) == ["L2"]  # busy at 10: due at 610, not at 30
    assert hop.info("L0").next_at == 7210.0 and hop.info("L0").attempts == 1  # type: ignore[union-attr]
    assert hop.info("L1").callback_at == 5000.0 and hop.info("L1").callback_agent == "ana"  # type: ignore[union-attr]
    (p,) = hop.select(5, 7210.0)
    assert hop.outcome(p.lead.lead_id, p.number, Outcome.NO_ANSWER, 7220.0) == "done"  # its second attempt: the cap
    assert hop.remove("L1", 7300.0)


def test_a_drained_lead_removed_meanwhile_does_not_come_back() -> None:
    hop = Hopper("c")
    lead0 = Lead("L0", "c", ("+12125550000",))
    hop.add([lead0], 0.0)
    (p,) = hop.select(1, 0.0)
    hop.outcome("L0", p.number, Outcome.BUSY, 1.0)
    hop.drain()
    assert hop.remove("L0", 2.0)  # paid today while the campaign was stopped
    hop.add([lead0], 3.0)
    assert hop.select(1, 1e6) == []


def test_lowered_phone_cap_drops_the_phones_at_it_and_ends_leads_left_with_none() -> None:
    hop = Hopper("c")
    hop.add([Lead("L0", "c", ("+12125550000", "+12125550001")), Lead("L1", "c", ("+12125550002",))], 0.0)
    for t in (0.0, 1000.0):
        for p in hop.select(2, t):
            hop.outcome(p.lead.lead_id, p.number, Outcome.BUSY, t + 1)
    assert hop.info("L0").phone_attempts == {"+12125550001": 1, "+12125550000": 1}  # type: ignore[union-attr]
    assert hop.set_rules(HopperRules(max_attempts_phone=3)) == []
    assert hop.set_rules(HopperRules(max_attempts_phone=2)) == ["L1"]  # its one phone tried twice
    assert hop.info("L0").state == "scheduled"  # type: ignore[union-attr]
    assert hop.set_rules(HopperRules(max_attempts_phone=1)) == ["L0"]
    assert hop.info("L0").state == "done" and hop.select(5, 1e6) == []  # type: ignore[union-attr]


def test_a_lead_handed_to_another_hopper_with_its_state_keeps_attempts_phones_delays_and_callback() -> None:
    """Another node's hopper leasing a drained lead used to start afresh: dialed at once despite a recycle delay,
    its attempts (and cap), dropped phones, calendar waits and callback forgotten. With `handoff_state` (what the
    store keeps, as JSON) it goes on exactly as the same hopper would."""
    rules = HopperRules(max_attempts_lead=3, max_attempts_phone=1)
    a, b = Hopper("c", rules), Hopper("c", rules)
    leads = [Lead(f"L{i}", "c", (f"+1212555{i:04d}", f"+1646555{i:04d}")) for i in range(4)]
    a.add(leads, 0.0)
    p0, p1, p2, p3 = a.select(4, 0.0)
    a.outcome("L0", p0.number, Outcome.NO_ANSWER, 10.0)  # back at 7210, its first phone at its cap (dropped)
    a.outcome("L1", p1.number, Outcome.BUSY, 10.0)
    a.schedule_callback("L1", 5000.0, "ana")
    a.outcome("L2", p2.number, Outcome.BUSY, 10.0)
    a.schedule_callback("L2", 4000.0)
    a.outcome("L3", p3.number, Outcome.BUSY, 10.0)  # due at 610
    drained = a.drain()
    assert sorted(drained) == ["L0", "L1", "L2", "L3"]
    handed = {lid: h for lid in drained if (h := a.handoff_state(lid)) is not None}
    assert a.handoff_state("nope") is None
    for lid, (state, _) in handed.items():  # phones by their place in the lead's list, never by number
        assert "+1" not in json.dumps(state), lid
    assert {lid: at for lid, (_, at) in handed.items()} == {"L0": 7210.0, "L1": 5000.0, "L2": 4000.0, "L3": 610.0}
    states = {lid: json.loads(json.dumps(state)) for lid, (state, _) in handed.items()}  # as the store keeps them
    assert b.add(leads, 30.0, states) == 4
    assert b.select(5, 609.0) == []
    assert ids(b.select(5, 610.0)) == ["L3"]
    assert ids(b.select(5, 4000.0)) == ["L2"]  # the campaign-wide callback at its time
    assert b.info("L1").callback_at == 5000.0 and b.info("L1").callback_agent == "ana"  # type: ignore[union-attr]
    assert b.due_agent_callbacks("ana", 5000.0)[0].lead.lead_id == "L1"
    info = b.info("L0")
    assert info is not None and (info.attempts, info.next_at, info.phones) == (1, 7210.0, ("+16465550000",))
    assert info.phone_attempts == {"+12125550000": 1}
    (p,) = b.select(5, 7210.0)
    assert p.number == "+16465550000"  # its dropped phone stays dropped
    assert b.outcome("L0", p.number, Outcome.NO_ANSWER, 7220.0) == "done"  # no phone left within its cap


def test_a_hopper_state_of_another_version_or_malformed_starts_afresh() -> None:
    hop = Hopper("c")
    leads = [Lead(f"L{i}", "c", (f"+1212555{i:04d}",)) for i in range(3)]
    states: dict[str, dict[str, Any]] = {"L0": {"v": 99, "n": 5, "t": 1e9}, "L1": {"v": 1, "n": "x"},
              "L2": {"v": 1, "p": [[7, 1, 0, 0, None, None]]}}
    assert hop.add(leads, 0.0, states) == 3
    assert ids(hop.select(5, 0.0)) == ["L0", "L1", "L2"]
    assert hop.info("L2").phone_attempts == {}  # type: ignore[union-attr]  # no such phone: ignored
