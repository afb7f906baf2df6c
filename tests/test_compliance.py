"""Compliance gates: rule-set windows and holidays, caps and cool-downs, DNC, tightening, DST edges, properties."""

from __future__ import annotations

import math
import time
from datetime import UTC, date, datetime, timedelta
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo

import holidays
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dialer.compliance import (
    RULE_SETS,
    Calendar,
    DebtorHistory,
    DncList,
    Gatekeeper,
    Reason,
    Refusal,
    RuleSet,
    load_rule_set,
    next_open,
)
from dialer.leads import zone_for_number
from dialer.model import Lead

DAY = 86_400.0
HOUR = 3_600.0
NUMBER = "+15550100123"


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> float:
    return datetime(y, mo, d, h, mi, s, tzinfo=UTC).timestamp()


def local(tz: str, y: int, mo: int, d: int, h: int = 0, mi: int = 0, fold: int = 0) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=ZoneInfo(tz), fold=fold).timestamp()


def lead(tz: str | None, country: str | None = None, lead_id: str = "L1") -> Lead:
    return Lead(lead_id=lead_id, campaign_id="C1", phones=(NUMBER,), country=country, timezone=tz)


def gate(rule_set: str | RuleSet, dnc: DncList | None = None, history: DebtorHistory | None = None) -> Gatekeeper:
    rs = load_rule_set(rule_set) if isinstance(rule_set, str) else rule_set
    return Gatekeeper(rs, DncList() if dnc is None else dnc, DebtorHistory() if history is None else history, "C1")


def reason(refusal: Refusal | None) -> Reason | None:
    return None if refusal is None else refusal.reason


# --- windows and holidays per rule set -----------------------------------------------------------------------------


def test_us_window_every_day_in_local_time() -> None:
    g, ny, la = gate("us-tsr-regf"), lead("America/New_York", "US"), lead("America/Los_Angeles", "US")
    assert reason(g.check(ny, NUMBER, local("America/New_York", 2026, 7, 4, 7, 59))) is Reason.OUTSIDE_WINDOW
    assert g.check(ny, NUMBER, local("America/New_York", 2026, 7, 4, 8, 0)) is None  # holiday and Saturday: open
    assert g.check(ny, NUMBER, local("America/New_York", 2026, 7, 5, 20, 59)) is None  # Sunday
    late = g.check(ny, NUMBER, local("America/New_York", 2026, 7, 5, 21, 0))
    assert late is not None and late.reason is Reason.OUTSIDE_WINDOW
    assert late.retry_at == local("America/New_York", 2026, 7, 6, 8, 0)
    assert "outside" in late.detail and "08:00-21:00" in late.detail
    # The same instant is judged on each debtor's own wall clock: 12:00 UTC is 08:00 NY but 05:00 LA.
    assert g.check(ny, NUMBER, utc(2026, 7, 6, 12)) is None
    early = g.check(la, NUMBER, utc(2026, 7, 6, 12))
    assert early is not None and early.retry_at == local("America/Los_Angeles", 2026, 7, 6, 8, 0)


def test_uk_window_is_operator_default() -> None:
    g, lon = gate("uk-ofcom"), lead("Europe/London", "GB")
    assert reason(g.check(lon, NUMBER, local("Europe/London", 2026, 6, 1, 7, 59))) is Reason.OUTSIDE_WINDOW
    assert g.check(lon, NUMBER, local("Europe/London", 2026, 6, 1, 8, 0)) is None
    assert reason(g.check(lon, NUMBER, local("Europe/London", 2026, 6, 1, 21, 0))) is Reason.OUTSIDE_WINDOW
    rs = RULE_SETS["uk-ofcom"]
    assert rs.count_amd_false_positives and rs.min_ring_s == 15 and rs.abandon_window_s == DAY


def test_colombia_weekdays_saturday_sunday_and_holidays() -> None:
    g, bog = gate("co-ley2300"), lead("America/Bogota", "CO")
    tz = "America/Bogota"
    assert date(2026, 12, 5).weekday() == 5 and date(2026, 12, 8).weekday() == 1
    assert g.check(bog, NUMBER, local(tz, 2026, 12, 7, 7, 0)) is None  # Monday 07:00
    assert reason(g.check(bog, NUMBER, local(tz, 2026, 12, 7, 6, 59))) is Reason.OUTSIDE_WINDOW
    assert g.check(bog, NUMBER, local(tz, 2026, 12, 7, 18, 59)) is None
    assert reason(g.check(bog, NUMBER, local(tz, 2026, 12, 7, 19, 0))) is Reason.OUTSIDE_WINDOW
    # Saturday 08:00-15:00
    assert reason(g.check(bog, NUMBER, local(tz, 2026, 12, 5, 7, 30))) is Reason.OUTSIDE_WINDOW
    assert g.check(bog, NUMBER, local(tz, 2026, 12, 5, 8, 0)) is None
    sat_late = g.check(bog, NUMBER, local(tz, 2026, 12, 5, 15, 0))
    assert sat_late is not None and sat_late.retry_at == local(tz, 2026, 12, 7, 7, 0)  # Sunday skipped
    sunday = g.check(bog, NUMBER, local(tz, 2026, 12, 6, 10, 0))
    assert sunday is not None and sunday.reason is Reason.CLOSED_DAY and sunday.retry_at == local(tz, 2026, 12, 7, 7)
    # Tuesday 2026-12-08, Immaculate Conception: closed; Monday 07:00 opens, Wednesday after the holiday
    holiday = g.check(bog, NUMBER, local(tz, 2026, 12, 8, 10, 0))
    assert holiday is not None and holiday.reason is Reason.HOLIDAY and "Immaculate" in holiday.detail
    assert holiday.retry_at == local(tz, 2026, 12, 9, 7, 0)
    # Without a country on the lead, the jurisdiction's own calendar applies.
    assert reason(g.check(lead(tz, None), NUMBER, local(tz, 2026, 12, 8, 10, 0))) is Reason.HOLIDAY
    assert g.check(lead(tz, "co"), NUMBER, local(tz, 2026, 12, 9, 10, 0)) is None  # lower-case country code


def test_mexico_window() -> None:
    g, mx, tz = gate("mx-condusef"), lead("America/Mexico_City", "MX"), "America/Mexico_City"
    assert reason(g.check(mx, NUMBER, local(tz, 2026, 9, 16, 6, 59))) is Reason.OUTSIDE_WINDOW
    assert g.check(mx, NUMBER, local(tz, 2026, 9, 16, 7, 0)) is None  # a holiday, but holidays do not close
    assert g.check(mx, NUMBER, local(tz, 2026, 9, 20, 21, 59)) is None  # Sunday
    assert reason(g.check(mx, NUMBER, local(tz, 2026, 9, 20, 22, 0))) is Reason.OUTSIDE_WINDOW


def test_spain_weekdays_weekends_and_national_day() -> None:
    g, es, tz = gate("es-consumo"), lead("Europe/Madrid", "ES"), "Europe/Madrid"
    assert date(2026, 10, 12).weekday() == 0
    assert g.check(es, NUMBER, local(tz, 2026, 10, 9, 9, 0)) is None  # Friday
    assert reason(g.check(es, NUMBER, local(tz, 2026, 10, 9, 8, 59))) is Reason.OUTSIDE_WINDOW
    friday_late = g.check(es, NUMBER, local(tz, 2026, 10, 9, 21, 0))
    assert friday_late is not None and friday_late.reason is Reason.OUTSIDE_WINDOW
    assert friday_late.retry_at == local(tz, 2026, 10, 13, 9, 0)  # weekend and Monday's holiday skipped
    assert reason(g.check(es, NUMBER, local(tz, 2026, 10, 10, 12, 0))) is Reason.CLOSED_DAY
    assert reason(g.check(es, NUMBER, local(tz, 2026, 10, 11, 12, 0))) is Reason.CLOSED_DAY
    national = g.check(es, NUMBER, local(tz, 2026, 10, 12, 12, 0))
    assert (
        national is not None and national.reason is Reason.HOLIDAY and national.retry_at == local(tz, 2026, 10, 13, 9)
    )


def test_regional_holidays_close_the_day_for_a_lead_of_that_region() -> None:
    # 11 September (a Friday in 2026) is Catalonia's national day, not a Spanish one.
    g = gate("es-consumo")
    noon = local("Europe/Madrid", 2026, 9, 11, 12, 0)
    madrid = Lead(lead_id="L1", campaign_id="C1", phones=("+34914123456",), country="ES", timezone="Europe/Madrid")
    barcelona = Lead(lead_id="L2", campaign_id="C1", phones=("+34934123456",), country="ES",
                     timezone="Europe/Madrid", fields={"subdivision": "CT"})
    assert g.check(madrid, "+34914123456", noon) is None
    refusal = g.check(barcelona, "+34934123456", noon)
    assert refusal is not None and refusal.reason is Reason.HOLIDAY
    assert refusal.retry_at == local("Europe/Madrid", 2026, 9, 14, 9, 0)  # Monday: the weekend is closed too
    assert next_open(RULE_SETS["es-consumo"], barcelona, noon) == refusal.retry_at


def test_unknown_time_zone_is_refused_unless_no_calendar() -> None:
    now = utc(2026, 5, 5, 15)
    for tz in (None, "Mars/Olympus_Mons"):
        refusal = gate("us-tsr-regf").check(lead(tz), NUMBER, now)
        assert refusal is not None and refusal.reason is Reason.TIMEZONE_UNKNOWN and refusal.retry_at is None
        assert next_open(RULE_SETS["us-tsr-regf"], lead(tz), now) is None
    assert gate("none").check(lead(None), NUMBER, now) is None
    assert next_open(RULE_SETS["none"], lead(None), now) == now


def test_unknown_holiday_calendar_refuses_on_closing_rule_sets() -> None:
    refusal = gate("es-consumo").check(lead("Europe/Madrid", "ZZ"), NUMBER, local("Europe/Madrid", 2026, 10, 13, 12))
    assert refusal is not None and refusal.reason is Reason.HOLIDAY and "unknown" in refusal.detail
    assert refusal.retry_at is None


def test_a_phone_in_another_zone_waits_for_its_own_window() -> None:
    # Lead placed in New York (given or derived from its first phone); its second phone is a Honolulu line.
    debtor = Lead(lead_id="L1", campaign_id="C1", phones=("+12124289048", "+18089568000"), country="US",
                  timezone="America/New_York")
    g = gate("us-tsr-regf")
    now = local("America/New_York", 2026, 11, 10, 9, 0)  # 09:00 in New York is 04:00 in Honolulu
    assert g.check(debtor, "+12124289048", now) is None
    refusal = g.check(debtor, "+18089568000", now)
    assert refusal is not None and refusal.reason is Reason.OUTSIDE_WINDOW and "Pacific/Honolulu" in refusal.detail
    assert refusal.retry_at == local("Pacific/Honolulu", 2026, 11, 10, 8, 0)
    assert g.next_open(debtor, now, "+18089568000") == refusal.retry_at
    assert g.check(debtor, "+18089568000", refusal.retry_at) is None
    # 20:30 in Honolulu is 01:30 in New York: the lead's own zone still binds that phone.
    late = local("Pacific/Honolulu", 2026, 11, 10, 20, 30)
    assert reason(g.check(debtor, "+18089568000", late)) is Reason.OUTSIDE_WINDOW


@pytest.mark.parametrize(("phone", "country", "rule_set"), [
    ("+34612345678", "ES", "es-consumo"),  # Madrid or the Canaries (an hour behind)
    ("+351912345678", "PT", "uk-ofcom"),  # Lisbon or the Azores (an hour behind)
    ("+16052223333", "US", "us-tsr-regf"),  # Denver or North Dakota (Central)
])
def test_a_lead_of_several_zones_is_dialed_only_when_open_in_every_one(phone: str, country: str,
                                                                         rule_set: str) -> None:
    debtor = Lead(lead_id="L1", campaign_id="C1", phones=(phone,), country=country, timezone=None)
    candidates = [ZoneInfo(z) for z in zone_for_number(phone)[1]]
    assert len(candidates) == 2
    rs = load_rule_set(rule_set)
    g, cal = gate(rs), Calendar(rs)
    start = utc(2026, 3, 23)  # two weeks over the EU and after the US daylight-saving change, every 5 minutes
    dialable = 0
    for step in range(14 * 24 * 12):
        now = start + step * 300
        refusal = g.check(debtor, phone, now)
        in_all = all(cal.allows(tz, country, now) for tz in candidates)
        assert (refusal is None) == in_all, datetime.fromtimestamp(now, UTC)
        if refusal is None:
            dialable += 1
        else:
            assert refusal.reason is not Reason.TIMEZONE_UNKNOWN and refusal.retry_at is not None
            assert refusal.retry_at > now and g.check(debtor, phone, refusal.retry_at) is None
    assert dialable > 0


def test_contacts_per_day_of_a_lead_of_several_zones_count_on_every_zone_s_day() -> None:
    # A Spanish mobile (Madrid or the Canaries) under one contact a day: a conversation at 23:30 in the Canaries is
    # already the next day in Madrid, so the next day counts it too; the day after, the lead may be dialed again.
    rs = load_rule_set("es-consumo", {"max_contacts_per_local_day": 1})
    h = DebtorHistory.for_rule_set(rs)
    g = Gatekeeper(rs, DncList(), h, "C1")
    debtor = Lead(lead_id="L1", campaign_id="C1", phones=("+34612345678",), country="ES", timezone=None)
    h.note_contact("L1", local("Atlantic/Canary", 2026, 11, 9, 23, 30))  # Mon 23:30 Canaries, Tue 00:30 Madrid
    tuesday = local("Europe/Madrid", 2026, 11, 10, 12, 0)
    refusal = g.check(debtor, "+34612345678", tuesday)
    assert refusal is not None and refusal.reason is Reason.DAILY_CONTACT_CAP
    assert refusal.retry_at == local("Europe/Madrid", 2026, 11, 11, 10, 0)  # 09:00 Canaries, open in both
    assert g.check(debtor, "+34612345678", refusal.retry_at) is None


# --- caps, cool-downs, recall block ----------------------------------------------------------------------------------


def test_us_seven_in_seven_rolling() -> None:
    hist = DebtorHistory()
    g, ny = gate("us-tsr-regf", history=hist), lead("America/New_York", "US")
    first = utc(2026, 4, 6, 15)  # 11:00 NY
    for day in range(7):
        assert g.check(ny, NUMBER, first + day * DAY) is None
        hist.note_attempt("L1", NUMBER, first + day * DAY)
    eighth = g.check(ny, NUMBER, first + 6 * DAY + HOUR)
    assert eighth is not None and eighth.reason is Reason.ATTEMPT_CAP and eighth.retry_at == first + 7 * DAY
    assert "7 attempt(s)" in eighth.detail
    assert reason(g.check(ny, NUMBER, first + 7 * DAY - 1)) is Reason.ATTEMPT_CAP
    assert g.check(ny, NUMBER, first + 7 * DAY) is None  # the oldest aged out
    assert g.check(lead("America/New_York", "US", "L2"), NUMBER, first + 6 * DAY + HOUR) is None  # per debtor


def test_us_no_call_within_seven_days_of_a_conversation() -> None:
    hist = DebtorHistory()
    g, ny = gate("us-tsr-regf", history=hist), lead("America/New_York", "US")
    talk = utc(2026, 4, 6, 15)
    hist.note_attempt("L1", NUMBER, talk)
    hist.note_contact("L1", talk + 60)
    blocked = g.check(ny, NUMBER, talk + 60 + 7 * DAY - 1)
    assert blocked is not None and blocked.reason is Reason.CONTACT_COOLDOWN
    assert blocked.retry_at == talk + 60 + 7 * DAY
    assert g.check(ny, NUMBER, talk + 60 + 7 * DAY) is None


def test_uk_72h_abandon_block_and_reserved_agent() -> None:
    hist = DebtorHistory()
    g, lon = gate("uk-ofcom", history=hist), lead("Europe/London", "GB")
    abandoned = local("Europe/London", 2026, 6, 1, 10)
    hist.note_attempt("L1", NUMBER, abandoned)
    hist.note_abandon("L1", abandoned)
    blocked = g.check(lon, NUMBER, abandoned + 71 * HOUR)
    assert blocked is not None and blocked.reason is Reason.ABANDON_RECALL_BLOCK
    assert blocked.retry_at == abandoned + 72 * HOUR and "agent is reserved" in blocked.detail
    assert g.check(lon, NUMBER, abandoned + 71 * HOUR, agent_reserved=True) is None
    assert g.check(lon, NUMBER, abandoned + 72 * HOUR) is None
    # US has no such block.
    assert gate("us-tsr-regf", history=hist).check(lead("Europe/London"), NUMBER, abandoned + HOUR) is None


def test_colombia_one_contact_per_local_day() -> None:
    hist = DebtorHistory()
    tz = "America/Bogota"  # UTC-5: the local day is not the UTC day
    g, bog = gate("co-ley2300", history=hist), lead(tz, "CO")
    hist.note_contact("L1", local(tz, 2026, 12, 14, 18, 0))  # Monday 18:00 = 23:00 UTC
    again = g.check(bog, NUMBER, local(tz, 2026, 12, 14, 18, 30))  # Tuesday 00:30 UTC but still Monday locally
    assert again is not None and again.reason is Reason.DAILY_CONTACT_CAP
    assert again.retry_at == local(tz, 2026, 12, 15, 7, 0) and "2026-12-14" in again.detail
    assert g.check(bog, NUMBER, local(tz, 2026, 12, 15, 7, 0)) is None
    # A conversation that ended after 19:00 local (00:30 UTC Tuesday) still belongs to Monday.
    hist2 = DebtorHistory()
    hist2.note_contact("L1", local(tz, 2026, 12, 14, 19, 30))
    assert gate("co-ley2300", history=hist2).check(bog, NUMBER, local(tz, 2026, 12, 15, 8, 0)) is None


def test_history_prunes_past_horizon() -> None:
    hist = DebtorHistory(horizon_s=7 * DAY)
    hist.note_attempt("L1", NUMBER, 0.0)
    hist.note_attempt("L1", NUMBER, 8 * DAY)
    assert hist.attempts("L1") == (8 * DAY,)
    hist.note_contact("L2", 0.0)
    assert len(hist) == 2
    assert hist.prune(8 * DAY) == 1 and len(hist) == 1
    hist.note_attempt("L1", NUMBER, 5 * DAY)  # late report stays sorted
    assert hist.attempts("L1") == (5 * DAY, 8 * DAY)
    with pytest.raises(ValueError, match="history"):
        Gatekeeper(RULE_SETS["us-tsr-regf"], DncList(), DebtorHistory(horizon_s=DAY), "C1")
    assert DebtorHistory.for_rule_set(RULE_SETS["us-tsr-regf"]).horizon_s == 7 * DAY


# --- DNC -----------------------------------------------------------------------------------------------------------


def test_dnc_global_campaign_and_added_at() -> None:
    dnc = DncList()
    now = utc(2026, 5, 5, 16)
    ny = lead("America/New_York", "US")
    mine = Gatekeeper(RULE_SETS["us-tsr-regf"], dnc, DebtorHistory(), "C1")
    other = Gatekeeper(RULE_SETS["us-tsr-regf"], dnc, DebtorHistory(), "C2")
    assert mine.check(ny, NUMBER, now) is None
    dnc.add("+1 555-010-0123", campaign_id="C1")  # formatting does not matter
    refusal = mine.check(ny, NUMBER, now)
    assert refusal is not None and refusal.reason is Reason.DNC_CAMPAIGN and refusal.retry_at is None
    assert NUMBER not in refusal.detail  # masked
    assert other.check(ny, NUMBER, now) is None
    dnc.add(NUMBER)
    assert reason(other.check(ny, NUMBER, now)) is Reason.DNC_GLOBAL
    assert reason(mine.check(ny, NUMBER, now)) is Reason.DNC_GLOBAL  # global wins
    assert dnc.remove(NUMBER) and not dnc.remove(NUMBER)
    assert other.check(ny, NUMBER, now) is None
    # A DNC file effective at a given instant: not before, from then on (even at night the reason is DNC first).
    later = "+15550100999"
    assert dnc.add_many([later, "+15550100998"], added_at=now + HOUR) == 2
    assert mine.check(ny, later, now + HOUR - 1) is None
    assert reason(mine.check(ny, later, now + HOUR)) is Reason.DNC_GLOBAL
    assert dnc.contains(later) and not dnc.contains(later, now=now) and dnc.contains(later, "C9", now + HOUR)
    assert not dnc.add(later, added_at=now + 2 * HOUR)  # the earlier effective time is kept
    assert dnc.add(later, added_at=now) and dnc.contains(later, now=now)


@pytest.mark.parametrize(("entry", "dialed"), [
    ("+44 (0)20 7946 0958", "+442079460958"),  # UK trunk zero kept in brackets
    ("+4402079460958", "+442079460958"),
    ("0044 20 7946 0958", "+442079460958"),  # international prefix 00
    ("tel:+44-20-7946-0958", "+442079460958"),
    ("+1 212-555-0100 ext. 12", "+12125550100"),  # the extension's line is blocked
    ("+12125550100;ext=12", "+12125550100"),
    ("+57\u00a0300\u00a0123\u00a04567", "+573001234567"),  # a spreadsheet's no-break spaces
    ("+57/300/123/4567", "+573001234567"),
    ("+52 1 55 1234 5678", "+525512345678"),  # Mexico's old mobile "1"
    ("020 7946 0958", "+442079460958"),  # national forms: no country code to read, matched on national digits
    ("300 123 4567", "+573001234567"),
    ("(212) 555-0100", "+12125550100"),
    ("1-212-555-0100", "+12125550100"),
    ("06 1234 5678", "+390612345678"),  # Italy keeps its leading zero in E.164
])
def test_a_dnc_number_is_blocked_in_any_spelling(entry: str, dialed: str) -> None:
    now = utc(2026, 5, 5, 16)
    for campaign_id in (None, "C1"):
        dnc = DncList()
        dnc.add(entry, campaign_id=campaign_id)
        assert dnc.contains(dialed, "C1", now), (entry, campaign_id)
        assert reason(gate("none", dnc).check(lead("UTC"), dialed, now)) in (Reason.DNC_GLOBAL, Reason.DNC_CAMPAIGN)
        assert not dnc.contains("+573109876543", "C1", now)  # other numbers stay dialable
        assert dnc.remove(entry, campaign_id) and not dnc.contains(dialed, "C1", now)


# --- tightening ----------------------------------------------------------------------------------------------------


def test_overrides_that_tighten_are_applied() -> None:
    rs = load_rule_set(
        "us-tsr-regf",
        {
            "window_start": "09:00",
            "window_end": "20:00",
            "attempt_caps": [(5, 7 * DAY), (2, DAY)],
            "contact_cooldown_s": 10 * DAY,
            "abandon_target": 0.02,
            "min_ring_s": 20,
            "abandon_message_s": 1.5,
            "max_contacts_per_local_day": 1,
        },
    )
    assert rs.windows == (("09:00", "20:00"),) * 7
    assert rs.attempt_caps == ((5, 7 * DAY), (2, DAY)) and rs.abandon_target == 0.02 and rs.min_ring_s == 20
    g, ny = gate(rs), lead("America/New_York", "US")
    assert reason(g.check(ny, NUMBER, local("America/New_York", 2026, 5, 5, 8, 30))) is Reason.OUTSIDE_WINDOW
    co = load_rule_set("co-ley2300", {"windows": {"Sat": None, 0: ("08:00", "12:00")}, "holidays_closed": True})
    assert co.windows[5] is None and co.windows[0] == ("08:00", "12:00") and co.windows[1] == ("07:00", "19:00")
    es = load_rule_set("es-consumo", {"window_end": "14:00"})
    assert es.windows[0] == ("09:00", "14:00") and es.windows[5] is None
    assert load_rule_set("mx-condusef", {"window_start": "23:00"}).windows == (None,) * 7  # closing is tightening
    assert load_rule_set("none") is RULE_SETS["none"]


@pytest.mark.parametrize(
    ("name", "overrides", "field"),
    [
        ("us-tsr-regf", {"window_start": "07:00"}, "window_start"),
        ("us-tsr-regf", {"window_end": "22:00"}, "window_end"),
        ("us-tsr-regf", {"windows": {2: ("08:00", "21:30")}}, r"windows\[2\]"),
        ("co-ley2300", {"windows": {"Sat": ("07:00", "15:00")}}, r"windows\[5\]"),
        ("co-ley2300", {"windows": {6: ("10:00", "12:00")}}, r"windows\[6\]"),
        ("us-tsr-regf", {"attempt_caps": [(8, 7 * DAY)]}, "attempt_caps"),
        ("us-tsr-regf", {"attempt_caps": [(7, 6 * DAY)]}, "attempt_caps"),
        ("us-tsr-regf", {"attempt_caps": []}, "attempt_caps"),
        ("us-tsr-regf", {"contact_cooldown_s": DAY}, "contact_cooldown_s"),
        ("us-tsr-regf", {"abandon_target": 0.05}, "abandon_target"),
        ("us-tsr-regf", {"abandon_window_s": 60 * DAY}, "abandon_window_s"),
        ("us-tsr-regf", {"min_ring_s": 10}, "min_ring_s"),
        ("us-tsr-regf", {"abandon_message_s": 3}, "abandon_message_s"),
        ("us-tsr-regf", {"abandon_message_s": None}, "abandon_message_s"),
        ("uk-ofcom", {"abandoned_recall_block_s": HOUR}, "abandoned_recall_block_s"),
        ("uk-ofcom", {"count_amd_false_positives": False}, "count_amd_false_positives"),
        ("es-consumo", {"holidays_closed": False}, "holidays_closed"),
        ("co-ley2300", {"max_contacts_per_local_day": 2}, "max_contacts_per_local_day"),
        ("co-ley2300", {"max_contacts_per_local_day": None}, "max_contacts_per_local_day"),
        ("co-ley2300", {"shoe_size": 42}, "shoe_size"),
        ("co-ley2300", {"name": "mine"}, "name"),
        ("co-ley2300", {"country": "US"}, "country"),
    ],
)
def test_overrides_that_loosen_or_are_unknown_are_rejected(name: str, overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        load_rule_set(name, overrides)


def test_unknown_rule_set_lists_known_ones() -> None:
    with pytest.raises(ValueError, match=r"co-ley2300.*es-consumo.*mx-condusef.*none.*uk-ofcom.*us-tsr-regf"):
        load_rule_set("fr-bloctel")


# --- DST ------------------------------------------------------------------------------------------------------------


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


@pytest.mark.parametrize(
    ("tz", "overrides", "from_iso", "opens_iso"),
    [
        # US spring forward 2026-03-08 02:00 EST -> 03:00 EDT: a 02:30 start opens at 03:00 EDT.
        ("America/New_York", {"window_start": "02:30"}, "2026-03-08T00:00-05:00", "2026-03-08T07:00+00:00"),
        # US fall back 2026-11-01 02:00 EDT -> 01:00 EST: a 01:30 start opens at the first 01:30 (EDT) ...
        ("America/New_York", {"window_start": "01:30"}, "2026-11-01T00:00-04:00", "2026-11-01T05:30+00:00"),
        # ... and during the repeated 01:00-01:30 (EST) it is closed again until the second 01:30.
        ("America/New_York", {"window_start": "01:30"}, "2026-11-01T01:10-05:00", "2026-11-01T06:30+00:00"),
        # An end at 01:30 on the fall-back night: the repeated hour reads 01:00-01:30 again and reopens.
        ("America/New_York", {"window_end": "01:30"}, "2026-11-01T01:40-04:00", "2026-11-01T06:00+00:00"),
        ("America/New_York", {"window_end": "01:30"}, "2026-11-01T01:30-05:00", "2026-11-02T05:00+00:00"),
        # An end at 02:30 on the spring-forward night closes at the jump (02:00 EST): next is Mar 9 00:00 EDT.
        ("America/New_York", {"window_end": "02:30"}, "2026-03-08T03:00-04:00", "2026-03-09T04:00+00:00"),
        # EU spring forward 2026-03-29 (01:00 UTC): Madrid 02:00 -> 03:00, London 01:00 -> 02:00.
        ("Europe/Madrid", {"window_start": "02:30"}, "2026-03-29T00:00+01:00", "2026-03-29T01:00+00:00"),
        ("Europe/London", {"window_start": "01:30"}, "2026-03-29T00:00+00:00", "2026-03-29T01:00+00:00"),
        # EU fall back 2026-10-25 (01:00 UTC): Madrid repeats 02:00-03:00.
        ("Europe/Madrid", {"window_start": "02:30"}, "2026-10-25T00:00+02:00", "2026-10-25T00:30+00:00"),
        ("Europe/Madrid", {"window_end": "02:30"}, "2026-10-25T02:45+02:00", "2026-10-25T01:00+00:00"),
        ("Europe/London", {"window_start": "01:30"}, "2026-10-25T01:10+00:00", "2026-10-25T01:30+00:00"),
    ],
)
def test_next_open_across_dst(tz: str, overrides: dict[str, str], from_iso: str, opens_iso: str) -> None:
    rs = load_rule_set("none", overrides)
    debtor = lead(tz)
    now, opens = _ts(from_iso), _ts(opens_iso)
    assert next_open(rs, debtor, now) == opens
    g = gate(rs)
    assert g.next_open(debtor, now) == opens
    assert g.check(debtor, NUMBER, opens) is None
    if opens > now:
        refused = g.check(debtor, NUMBER, opens - 1)
        assert refused is not None and refused.reason is Reason.OUTSIDE_WINDOW and refused.retry_at == opens


@pytest.mark.parametrize(
    ("tz", "edge", "last_iso"),
    [
        # The window end in an ambiguous hour is the SECOND occurrence: last allowed second just before it.
        ("America/New_York", "01:30", "2026-11-01T06:29:59+00:00"),
        ("Europe/Madrid", "02:30", "2026-10-25T01:29:59+00:00"),
        ("Europe/London", "01:30", "2026-10-25T01:29:59+00:00"),
        # In a nonexistent hour the window ends at the jump.
        ("America/New_York", "02:30", "2026-03-08T06:59:59+00:00"),
        ("Europe/Madrid", "02:30", "2026-03-29T00:59:59+00:00"),
    ],
)
def test_window_end_across_dst_never_calls_outside_wall_clock(tz: str, edge: str, last_iso: str) -> None:
    g, debtor = gate(load_rule_set("none", {"window_end": edge})), lead(tz)
    last = _ts(last_iso)
    assert g.check(debtor, NUMBER, last) is None
    assert reason(g.check(debtor, NUMBER, last + 1)) is Reason.OUTSIDE_WINDOW
    # Every allowed second of that night reads before the edge on the wall clock.
    end_minutes = int(edge[:2]) * 60 + int(edge[3:])
    zone = ZoneInfo(tz)
    for t in range(int(last) - 4 * 3600, int(last) + 3600, 60):
        wall = datetime.fromtimestamp(t, zone)
        allowed = g.check(debtor, NUMBER, float(t)) is None
        assert allowed == (wall.hour * 60 + wall.minute < end_minutes), wall


# --- properties against an independent re-computation --------------------------------------------------------------

ZONES = [
    "America/New_York",
    "America/Bogota",
    "America/Mexico_City",
    "Europe/Madrid",
    "Europe/London",
    "Australia/Lord_Howe",  # 30-minute DST shift
    "America/Santiago",  # DST changes at local midnight
    "America/Havana",  # midnight transitions too
    "Asia/Kolkata",
    None,
    "Nowhere/Atlantis",
]
COUNTRIES = ["US", "CO", "MX", "ES", "GB", None, "ZZ"]
PROPERTY_RULE_SETS = [
    *RULE_SETS.values(),
    load_rule_set("none", {"window_start": "01:30", "window_end": "02:30"}),  # lives in the DST hours
    load_rule_set("none", {"window_start": "00:00", "window_end": "00:30", "max_contacts_per_local_day": 1}),
    load_rule_set("us-tsr-regf", {"attempt_caps": [(3, 2 * DAY), (5, 7 * DAY)], "max_contacts_per_local_day": 1}),
]
_TRANSITIONS = [utc(2026, 3, 8, 7), utc(2026, 11, 1, 6), utc(2026, 3, 29, 1), utc(2026, 10, 25, 1), utc(2026, 9, 6, 4)]
times = st.one_of(
    st.floats(min_value=utc(2026, 1, 1), max_value=utc(2027, 12, 31), allow_nan=False),
    st.tuples(st.sampled_from(_TRANSITIONS), st.floats(min_value=-30 * HOUR, max_value=30 * HOUR)).map(sum),
)
ages = st.lists(st.floats(min_value=-HOUR, max_value=10 * DAY), max_size=9)


@cache
def _holiday_dates(country: str, year: int) -> frozenset[date] | None:
    try:
        return frozenset(holidays.country_holidays(country, years=year))
    except NotImplementedError:
        return None


def expected_window_reason(rs: RuleSet, debtor: Lead, now: float) -> Reason | None:
    """Straight from the rule text: the wall clock at `now` in the debtor's zone.

    The second is floored: window edges fall on whole seconds, and fromtimestamp would round 20:59:59.9999999 up.
    """
    wall = datetime.fromtimestamp(math.floor(now), ZoneInfo(debtor.timezone or "UTC"))
    window = rs.windows[wall.weekday()]
    if window is None:
        return Reason.CLOSED_DAY
    if rs.holidays_closed:
        country = debtor.country or rs.country
        table = _holiday_dates(country, wall.year) if country else None
        if table is None or wall.date() in table:
            return Reason.HOLIDAY
    minute = wall.hour * 60 + wall.minute
    start, end = (int(x[:2]) * 60 + int(x[3:]) for x in window)
    return None if start <= minute < end else Reason.OUTSIDE_WINDOW


def expected_reasons(
    rs: RuleSet,
    debtor: Lead,
    now: float,
    attempts: list[float],
    contacts: list[float],
    abandons: list[float],
    dnc_global: float | None,
    dnc_campaign: float | None,
    agent_reserved: bool,
) -> set[Reason]:
    out: set[Reason] = set()
    if dnc_global is not None and dnc_global <= now:
        out.add(Reason.DNC_GLOBAL)
    if dnc_campaign is not None and dnc_campaign <= now:
        out.add(Reason.DNC_CAMPAIGN)
    known = debtor.timezone in ZONES and debtor.timezone not in (None, "Nowhere/Atlantis")
    uses_calendar = rs.windows != (("00:00", "24:00"),) * 7 or rs.holidays_closed
    if (uses_calendar or rs.max_contacts_per_local_day is not None) and not known:
        return out | {Reason.TIMEZONE_UNKNOWN}
    if uses_calendar and (why := expected_window_reason(rs, debtor, now)) is not None:
        out.add(why)
    for n, window in rs.attempt_caps:
        if sum(1 for t in attempts if now - t < window) >= n:
            out.add(Reason.ATTEMPT_CAP)
    if rs.contact_cooldown_s > 0 and any(now - t < rs.contact_cooldown_s for t in contacts):
        out.add(Reason.CONTACT_COOLDOWN)
    if rs.max_contacts_per_local_day is not None:
        zone = ZoneInfo(debtor.timezone or "UTC")
        today = datetime.fromtimestamp(math.floor(now), zone).date()
        if (
            sum(1 for t in contacts if datetime.fromtimestamp(math.floor(t), zone).date() == today)
            >= rs.max_contacts_per_local_day
        ):
            out.add(Reason.DAILY_CONTACT_CAP)
    block = rs.abandoned_recall_block_s
    if block > 0 and not agent_reserved and any(now - t < block for t in abandons):
        out.add(Reason.ABANDON_RECALL_BLOCK)
    return out


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rs=st.sampled_from(PROPERTY_RULE_SETS),
    tz=st.sampled_from(ZONES),
    country=st.sampled_from(COUNTRIES),
    now=times,
    attempt_ages=ages,
    contact_ages=ages,
    abandon_ages=ages,
    dnc_global=st.none() | st.floats(min_value=-DAY, max_value=DAY),
    dnc_campaign=st.none() | st.floats(min_value=-DAY, max_value=DAY),
    agent_reserved=st.booleans(),
)
def test_check_agrees_with_independent_recomputation(
    rs: RuleSet,
    tz: str | None,
    country: str | None,
    now: float,
    attempt_ages: list[float],
    contact_ages: list[float],
    abandon_ages: list[float],
    dnc_global: float | None,
    dnc_campaign: float | None,
    agent_reserved: bool,
) -> None:
    debtor = lead(tz, country)
    hist, dnc = DebtorHistory(), DncList()
    attempts, contacts, abandons = ([now - a for a in ages] for ages in (attempt_ages, contact_ages, abandon_ages))
    for t in sorted(attempts):
        hist.note_attempt("L1", NUMBER, t)
    for t in sorted(contacts):
        hist.note_contact("L1", t)
    for t in sorted(abandons):
        hist.note_abandon("L1", t)
    if dnc_global is not None:
        dnc.add(NUMBER, added_at=now + dnc_global)
    if dnc_campaign is not None:
        dnc.add(NUMBER, campaign_id="C1", added_at=now + dnc_campaign)
    g = Gatekeeper(rs, dnc, hist, "C1")
    refusal = g.check(debtor, NUMBER, now, agent_reserved=agent_reserved)
    glob = None if dnc_global is None else now + dnc_global
    camp = None if dnc_campaign is None else now + dnc_campaign
    expected = expected_reasons(rs, debtor, now, attempts, contacts, abandons, glob, camp, agent_reserved)
    if refusal is None:
        assert not expected  # allowed => inside the window, not a holiday, no cap exceeded, not on DNC
    else:
        assert isinstance(refusal.reason, Reason) and refusal.detail
        assert refusal.reason in expected, (refusal, expected)
        assert NUMBER not in refusal.detail
        never = (Reason.DNC_GLOBAL, Reason.DNC_CAMPAIGN, Reason.TIMEZONE_UNKNOWN)
        holiday_country = country or rs.country
        unknown = rs.holidays_closed and (holiday_country is None or _holiday_dates(holiday_country, 2026) is None)
        if refusal.reason in never or (unknown and refusal.reason in (Reason.HOLIDAY, Reason.CLOSED_DAY)):
            assert refusal.retry_at is None
        else:
            assert refusal.retry_at is not None and refusal.retry_at > now
    if expected & {Reason.DNC_GLOBAL, Reason.DNC_CAMPAIGN}:
        assert refusal is not None and refusal.reason in (Reason.DNC_GLOBAL, Reason.DNC_CAMPAIGN)


@settings(max_examples=300, deadline=None)
@given(
    rs=st.sampled_from([r for r in PROPERTY_RULE_SETS if r.windowed]),
    tz=st.sampled_from([z for z in ZONES if z not in (None, "Nowhere/Atlantis")]),
    country=st.sampled_from(["US", "CO", "ES", None]),
    now=times,
)
def test_next_open_is_the_first_open_instant(rs: RuleSet, tz: str, country: str | None, now: float) -> None:
    debtor = lead(tz, country)
    opens = next_open(rs, debtor, now)
    assert opens is not None and opens >= now
    assert expected_window_reason(rs, debtor, opens) is None
    # Nothing earlier is open: probe the gap evenly and just before the opening.
    if opens > now:
        probes = [now + (opens - now) * k / 64 for k in range(64)] + [max(now, opens - 1)]
        for t in probes:
            if t >= opens:  # a float step can round onto the opening itself (now a hair before midnight)
                continue
            assert expected_window_reason(rs, debtor, t) is not None, datetime.fromtimestamp(t, ZoneInfo(tz))


def test_check_throughput_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    """Timing for the report, not an assertion: a debtor inside the window with a few attempts on record."""
    hist = DebtorHistory()
    g, ny = gate("us-tsr-regf", history=hist), lead("America/New_York", "US")
    now = utc(2026, 5, 5, 16)
    for k in range(3):
        hist.note_attempt("L1", NUMBER, now - (k + 1) * DAY)
    n = 50_000
    start = time.perf_counter()
    for i in range(n):
        g.check(ny, NUMBER, now + i * 0.01)
    rate = n / (time.perf_counter() - start)
    with capsys.disabled():
        print(f"\ncompliance check(): {rate:,.0f} checks/s (us-tsr-regf, in window, 3 attempts on record)")
    assert g.check(ny, NUMBER, now) is None


def test_every_time_zone_day_plan_covers_the_day() -> None:
    """Day plans tile time: the plan of any instant contains it, across a year of a DST zone."""
    g, debtor = gate("mx-condusef"), lead("Australia/Lord_Howe")
    t = utc(2026, 1, 1)
    while t < utc(2027, 1, 1):
        plan = g._cal.plan(ZoneInfo("Australia/Lord_Howe"), None, t)
        assert plan.start <= t < plan.end
        assert plan.day == datetime.fromtimestamp(t, ZoneInfo("Australia/Lord_Howe")).date()
        t += 5 * HOUR + 17
    assert timedelta(seconds=plan.end - plan.start) <= timedelta(hours=25)
    assert g.check(debtor, NUMBER, utc(2026, 6, 1, 1)) is None  # 11:00 at Lord Howe


def test_a_campaign_whose_rule_set_changes_keeps_its_debtors_history() -> None:
    # A PATCH of rule_set or rule_overrides built a fresh history: caps and cool-downs were forgotten mid-campaign.
    from dialer.core import CoreConfig, DialerCore
    from dialer.model import CampaignSettings

    core = DialerCore(CoreConfig(id_prefix="rs"))
    core.add_campaign(CampaignSettings(campaign_id="c", rule_set="us-tsr-regf"))
    first = utc(2026, 4, 6, 15)  # 11:00 in New York
    for day in range(7):
        core.campaigns["c"].gate.history.note_attempt("L1", NUMBER, first + day * DAY)
    core.campaigns["c"].gate.history.note_contact("L2", first)
    core.add_campaign(CampaignSettings(campaign_id="c", rule_set="us-tsr-regf",
                                       rule_overrides={"window_start": "09:00", "window_end": "20:00"}))
    g = core.campaigns["c"].gate
    assert g.rule_set.windows[0] == ("09:00", "20:00")  # the new rule set is in force
    ny = lead("America/New_York", "US")
    assert reason(g.check(ny, NUMBER, first + 6 * DAY + HOUR)) is Reason.ATTEMPT_CAP
    assert reason(g.check(lead("America/New_York", "US", "L2"), NUMBER, first + DAY)) is Reason.CONTACT_COOLDOWN
    assert g.check(lead("America/New_York", "US", "L3"), NUMBER, first + DAY) is None


def test_caps_count_a_debtors_calls_from_every_campaign() -> None:
    # Each campaign kept its own history, so a debtor loaded into two Reg F campaigns could get 14 calls in 7 days.
    from dialer.core import CoreConfig, DialerCore
    from dialer.model import CampaignSettings

    core = DialerCore(CoreConfig(id_prefix="x"))
    core.add_campaign(CampaignSettings(campaign_id="early", rule_set="none"))
    core.add_campaign(CampaignSettings(campaign_id="late", rule_set="us-tsr-regf"))
    first = utc(2026, 4, 6, 15)  # 11:00 in New York
    for day in range(7):
        core.campaigns["early"].gate.history.note_attempt("L1", NUMBER, first + day * DAY)
    late, ny = core.campaigns["late"].gate, lead("America/New_York", "US")
    assert reason(late.check(ny, NUMBER, first + 6 * DAY + HOUR)) is Reason.ATTEMPT_CAP
    assert late.check(lead("America/New_York", "US", "L2"), NUMBER, first + 6 * DAY + HOUR) is None
    # the history keeps what the strictest rule set needs, whichever campaign came first
    assert core.history.horizon_s >= 7 * DAY and core.history.max_per_lead >= 7


def test_a_wrong_party_conversation_is_no_contact_but_stays_an_attempt() -> None:
    hist = DebtorHistory()
    g, ny = gate("us-tsr-regf", history=hist), lead("America/New_York", "US")
    talk = utc(2026, 4, 6, 15)
    hist.note_attempt("L1", NUMBER, talk)
    hist.note_contact("L1", talk + 60)
    hist.note_wrong_party("L1", talk + 60)
    assert hist.contacts("L1") == () and hist.wrong_parties("L1") == (talk + 60,)
    assert g.check(ny, NUMBER, talk + HOUR) is None  # no 7-day block after it
    hist.note_contact("L1", talk + 60)  # noted again (a merge, a late report): still not a contact
    assert hist.contacts("L1") == ()
    for day in range(1, 7):
        hist.note_attempt("L1", NUMBER, talk + day * DAY)
    assert reason(g.check(ny, NUMBER, talk + 6 * DAY + HOUR)) is Reason.ATTEMPT_CAP  # 7 calls, the wrong party's too
    # nor toward a contacts-per-day cap (Colombia: one a day)
    co_hist = DebtorHistory()
    co, bog = gate("co-ley2300", history=co_hist), lead("America/Bogota", "CO")
    morning = local("America/Bogota", 2026, 4, 7, 9)  # a Tuesday
    co_hist.note_attempt("L1", NUMBER, morning)
    co_hist.note_contact("L1", morning + 60)
    assert reason(co.check(bog, NUMBER, morning + HOUR)) is Reason.DAILY_CONTACT_CAP
    co_hist.note_wrong_party("L1", morning + 60)
    assert co.check(bog, NUMBER, morning + HOUR) is None
