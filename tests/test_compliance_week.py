"""A simulated week over debtors in five countries (the Friday before the US daylight-saving change, a Colombian
holiday, DNC additions and paid-today removals mid-run): the independent audit finds no attempt outside any rule."""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path

from sim.des.simulation import Simulation, attempt_row
from sim.scenario import load_scenario
from tests.audit_attempts import audit

WEEK = Path(__file__).resolve().parents[1] / "bench" / "week"


def _timed(name: str, key: str, when: str) -> dict[str, datetime]:
    with (WEEK / name).open(newline="") as fh:
        return {r[key]: datetime.fromisoformat(r[when]) for r in csv.DictReader(fh)}


def test_a_simulated_week_dials_nothing_outside_any_rule() -> None:
    sc = load_scenario(WEEK / "week-compliance.yaml")
    result = Simulation(sc, "progressive").run()
    rows = [attempt_row(a, result.start) for a in result.attempts]
    with (WEEK / "leads.csv").open(newline="") as fh:
        leads = {r["lead_id"]: r for r in csv.DictReader(fh)}
    dnc, removed = _timed("dnc.csv", "number", "added_at"), _timed("removals.csv", "lead_id", "removed_at")
    assert audit(rows, leads, dnc, removed) == []
    assert len(rows) > 3000
    reasons = {r["reason"] for r in result.refusals}
    assert {"outside_window", "closed_day", "dnc_campaign", "attempt_cap"} <= reasons
    assert all(r["reason"] and r["detail"] for r in result.refusals)
    # The additions landed mid-run: some DNC numbers were dialed before their entry took effect, none after.
    before = {r["number"] for r in rows
              if r["number"] in dnc and datetime.fromisoformat(r["dialed_at"]) < dnc[r["number"]]}
    assert before
    # Every choice is on the attempt: the caller ID and why, the phone and why.
    assert {r["caller_id_reason"] for r in rows} <= {"sticky", "local", "pool"}
    assert all(r["caller_id"].startswith("+") and r["phone_reason"] for r in rows)


def test_the_audit_catches_each_kind_of_violation() -> None:
    leads = {"L1": {"lead_id": "L1", "phone": "+576014729445", "country": "CO", "timezone": "America/Bogota"}}

    def at(iso: str, call: str, outcome: str = "no_answer", number: str = "+576014729445") -> dict:
        return {"call_id": call, "lead_id": "L1", "number": number, "dialed_at": iso, "ended_at": iso,
                "outcome": outcome}
    rows = [
        at("2026-11-01T10:00:00-05:00", "sunday"),
        at("2026-11-02T10:00:00-05:00", "holiday"),  # Colombia's All Saints' Monday
        at("2026-11-03T06:30:00-05:00", "early"),
        at("2026-11-03T10:00:00-05:00", "contact", "connected"),
        at("2026-11-03T11:00:00-05:00", "again"),
        at("2026-11-04T10:00:00-05:00", "dnc"),
        at("2026-11-04T11:00:00-05:00", "other", number="+576014729446"),
    ]
    problems = audit(rows, leads, {"+576014729445": datetime.fromisoformat("2026-11-04T00:00:00-05:00")},
                     {"L1": datetime.fromisoformat("2026-11-05T00:00:00-05:00")})
    flagged = {p.split(":")[0] for p in problems}
    assert flagged == {"sunday", "holiday", "early", "again", "dnc", "other"}


def test_the_audit_checks_every_zone_a_number_may_be_in() -> None:
    leads = {"uk": {"lead_id": "uk", "phone": "+447911123456", "country": "GB", "timezone": ""},
             "es": {"lead_id": "es", "phone": "+34612345678", "country": "ES", "timezone": ""}}

    def at(iso: str, lead: str) -> dict:
        return {"call_id": f"{lead}@{iso}", "lead_id": lead, "number": leads[lead]["phone"], "dialed_at": iso,
                "ended_at": iso, "outcome": "no_answer"}
    # 07:30 in London (and Jersey, Guernsey, Man); 07:30 in Madrid is 06:30 in the Canaries.
    problems = audit([at("2026-11-10T07:30:00+00:00", "uk"), at("2026-11-11T07:30:00+01:00", "es")], leads, {}, {})
    assert [p.split(":")[0] for p in problems] == ["es@2026-11-11T07"]


def test_the_audit_judges_a_second_phone_on_its_own_clock_too() -> None:
    # It judged every dial on the lead's zone, so a Los Angeles second phone of a New York debtor dialed at 06:23
    # its own time passed (221 such dials on the week bench before the gates judged each number's own zone).
    leads = {"L1": {"lead_id": "L1", "phone": "+12125550100", "phone2": "+12135550100", "country": "US",
                    "timezone": "America/New_York"}}

    def at(iso: str, number: str) -> dict:
        return {"call_id": f"{number}@{iso}", "lead_id": "L1", "number": number, "dialed_at": iso, "ended_at": iso,
                "outcome": "no_answer"}
    rows = [at("2026-11-05T09:23:00-05:00", "+12125550100"), at("2026-11-06T09:23:00-05:00", "+12135550100"),
            at("2026-11-09T12:00:00-05:00", "+12135550100")]
    assert [p.split(":")[0] for p in audit(rows, leads, {}, {})] == ["+12135550100@2026-11-06T09"]
