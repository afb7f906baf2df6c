"""Independent compliance audit of an attempt log (the simulator's --attempts-out), for the Colombian rule set
(Ley 2300: Mon–Fri 07:00–19:00, Sat 08:00–15:00, never Sundays or holidays, at most one contact a day) with a
7-in-7-days attempt cap, DNC additions and paid-today removals.

It reads only the files (attempt log, lead file, DNC file, removals file) and re-derives everything with
zoneinfo, phonenumbers and holidays directly; it shares no code with `dialer.compliance`, so a bug there cannot
hide here.

    python tests/audit_attempts.py ATTEMPTS.jsonl LEADS.csv [--dnc DNC.csv] [--removals REMOVALS.csv]

Prints one line per violation and a summary; exit status 1 when any rule was broken.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import holidays
import phonenumbers
from phonenumbers import timezone as pn_timezone

WINDOWS = {0: (time(7), time(19)), 1: (time(7), time(19)), 2: (time(7), time(19)), 3: (time(7), time(19)),
           4: (time(7), time(19)), 5: (time(8), time(15))}  # Sunday (6): closed
CAP, CAP_WINDOW = 7, timedelta(days=7)


def _number_zones(number: str) -> list[str]:
    zones = pn_timezone.time_zones_for_number(phonenumbers.parse(number))
    return [z for z in zones if z != "Etc/Unknown"]


def _zones(row: dict[str, str], dialed: str) -> list[str]:
    """Where the dial must be allowed: the lead's zone, or every zone its first number may be in; and the dialed
    number's own zone when that number has exactly one (a second phone may ring in another zone)."""
    zones = [row["timezone"]] if row.get("timezone") else _number_zones(row["phone"])
    own = _number_zones(dialed)
    if zones and len(own) == 1 and own[0] not in zones:
        zones.append(own[0])
    return zones


def audit(attempts: list[dict], leads: dict[str, dict[str, str]], dnc: dict[str, datetime],
          removed: dict[str, datetime]) -> list[str]:
    problems: list[str] = []
    by_lead: dict[str, list[dict]] = defaultdict(list)
    calendars: dict[tuple[str, int], holidays.HolidayBase] = {}
    for a in attempts:
        cid, lead = a["call_id"], leads.get(a["lead_id"])
        if lead is None:
            problems.append(f"{cid}: lead {a['lead_id']} is not in the lead file")
            continue
        phones = [lead[k] for k in ("phone", "phone2", "phone3", "phone4", "phone5") if lead.get(k)]
        if a["number"] not in phones:
            problems.append(f"{cid}: number is not one of lead {a['lead_id']}'s phones")
        at = datetime.fromisoformat(a["dialed_at"])
        if a["number"] in dnc and dnc[a["number"]] <= at:
            problems.append(f"{cid}: dialed a DNC number (on the list since {dnc[a['number']].isoformat()})")
        if a["lead_id"] in removed and removed[a["lead_id"]] <= at:
            problems.append(f"{cid}: dialed lead {a['lead_id']} removed at {removed[a['lead_id']].isoformat()}")
        zones = _zones(lead, a["number"])
        if not zones:
            problems.append(f"{cid}: dialed lead {a['lead_id']} whose time zone is not known")
            continue
        for zone in zones:
            local = at.astimezone(ZoneInfo(zone))
            key = (lead["country"], local.year)
            if key not in calendars:
                calendars[key] = holidays.country_holidays(lead["country"], years=local.year)
            window = WINDOWS.get(local.weekday())
            if window is None:
                problems.append(f"{cid}: dialed on a Sunday ({local.isoformat()})")
            elif not window[0] <= local.time() < window[1]:
                problems.append(f"{cid}: dialed outside {window[0]:%H:%M}-{window[1]:%H:%M} ({local.isoformat()})")
            if local.date() in calendars[key]:
                problems.append(f"{cid}: dialed on a holiday of {lead['country']} ({local.date()})")
        local = at.astimezone(ZoneInfo(zones[0]))
        by_lead[a["lead_id"]].append({**a, "_at": at, "_local_day": local.date()})
    for lead_id, rows in by_lead.items():
        rows.sort(key=lambda r: r["_at"])
        contacted_days: set[date] = set()
        busy_until = datetime.min.replace(tzinfo=rows[0]["_at"].tzinfo)
        for i, r in enumerate(rows):
            if r["_local_day"] in contacted_days:
                problems.append(f"{r['call_id']}: second dial of {lead_id} on a day it was already reached")
            if r["_at"] < busy_until:
                problems.append(f"{r['call_id']}: {lead_id} dialed while its previous call was still up")
            window_start = r["_at"] - CAP_WINDOW
            recent = [x for x in rows[:i] if x["_at"] > window_start]
            if len(recent) >= CAP:
                problems.append(f"{r['call_id']}: attempt {len(recent) + 1} for {lead_id} within 7 days")
            if r["outcome"] == "connected":
                contacted_days.add(r["_local_day"])
            ended = r.get("ended_at")
            busy_until = max(busy_until, datetime.fromisoformat(ended) if ended else datetime.max.replace(
                tzinfo=r["_at"].tzinfo))
    return problems


def _timed(path: Path, key: str, when: str) -> dict[str, datetime]:
    with path.open(newline="", encoding="utf-8") as fh:
        return {row[key]: datetime.fromisoformat(row[when]) for row in csv.DictReader(fh)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("attempts", type=Path)
    ap.add_argument("leads", type=Path)
    ap.add_argument("--dnc", type=Path)
    ap.add_argument("--removals", type=Path)
    args = ap.parse_args(argv)
    attempts = [json.loads(line) for line in args.attempts.read_text(encoding="utf-8").splitlines() if line]
    with args.leads.open(newline="", encoding="utf-8") as fh:
        leads = {row["lead_id"]: row for row in csv.DictReader(fh)}
    dnc = _timed(args.dnc, "number", "added_at") if args.dnc else {}
    removed = _timed(args.removals, "lead_id", "removed_at") if args.removals else {}
    problems = audit(attempts, leads, dnc, removed)
    for p in problems:
        print(p)
    print(f"{len(attempts)} attempts audited, {len(problems)} violation(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
