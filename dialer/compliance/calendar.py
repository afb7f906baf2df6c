"""Calling calendars: a rule set's weekly window and holidays, turned into UTC instants per debtor-local day.

A dial at an instant is judged by the debtor's local wall clock at that instant: allowed iff the local date is an
open day (window not None, not a holiday when holidays close) and `start <= wall time < end`. Around DST changes
this gives exactly the behaviour compliance needs:
- a window edge in a nonexistent hour (spring forward) takes effect at the first real instant after it;
- an ambiguous hour (fall back) is open from the FIRST occurrence of a window start and until the SECOND occurrence of
  a window end, yet only while the wall clock reads inside the window (the repeated hour outside it stays closed),
  so no dial is ever placed at a wall-clock time outside the window.

To keep `check()` cheap, each (zone, country, local date) is compiled once into a `DayPlan`: the UTC span of the
local date and the UTC intervals open to dialing, computed exactly from the zone's offset pieces over that day.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays as _holidays

from dialer.compliance.rulesets import WEEKDAYS, RuleSet, parse_hhmm
from dialer.model import Lead

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_SAMPLE_S = 3 * 3600  # offset sampling step when looking for DST transitions (none are closer than that)
_MARGIN_S = 16 * 3600  # |UTC offset| never exceeds 14 h (plus slack for historic local mean time)
_SEARCH_DAYS = 400  # next_open gives up (None) when nothing opens within this many local days
_MAX_PLANS = 20_000  # per calendar; the cache is dropped wholesale beyond it (a plan is cheap to rebuild)

CLOSED_DAY = "closed_day"  # values match gates.Reason
HOLIDAY = "holiday"
_UNKNOWN = "holiday calendar unknown"

_zones: dict[str, ZoneInfo | None] = {}
_holiday_cache: dict[tuple[str, int], dict[int, str] | None] = {}


def zone(name: str | None) -> ZoneInfo | None:
    """The IANA zone, cached; None for None or a name the tz database does not know."""
    if name is None:
        return None
    try:
        return _zones[name]
    except KeyError:
        pass
    try:
        tz: ZoneInfo | None = ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        tz = None
    _zones[name] = tz
    return tz


def holidays_for(country: str, year: int) -> dict[int, str] | None:
    """Public holidays of `country` in `year` as {date ordinal: name}, cached; None if `holidays` lacks the country.

    `country` may name a subdivision after a dash ("ES-CT"): the country's holidays and that region's own."""
    key = (country, year)
    try:
        return _holiday_cache[key]
    except KeyError:
        pass
    code, _, subdiv = country.partition("-")
    try:
        table: dict[int, str] | None = {
            d.toordinal(): name
            for d, name in _holidays.country_holidays(code, subdiv=subdiv or None, years=year).items()
        }
    except NotImplementedError:
        table = None
    _holiday_cache[key] = table
    return table


def _offset(tz: ZoneInfo, t: float) -> float:
    off = datetime.fromtimestamp(t, tz).utcoffset()
    return off.total_seconds() if off is not None else 0.0


def _offset_pieces(tz: ZoneInfo, lo: float, hi: float) -> list[tuple[float, float, float]]:
    """[lo, hi) cut into (a, b, utc offset) pieces of constant offset; transitions found by bisection to the second."""
    pieces: list[tuple[float, float, float]] = []
    a, off_a = lo, _offset(tz, lo)
    t = lo
    while t < hi:
        nxt = min(t + _SAMPLE_S, hi)
        off_n = _offset(tz, nxt)
        if off_n != off_a:
            left, right = int(t), int(nxt)  # off(left) == off_a, off(right) != off_a
            while right - left > 1:
                mid = (left + right) // 2
                if _offset(tz, mid) == off_a:
                    left = mid
                else:
                    right = mid
            pieces.append((a, float(right), off_a))
            a, off_a = float(right), _offset(tz, right)
        t = nxt
    pieces.append((a, hi, off_a))
    return pieces


@dataclass(frozen=True, slots=True)
class DayPlan:
    """One local date in one zone: its UTC span and the UTC intervals where a dial is allowed."""

    ordinal: int  # local date (proleptic Gregorian ordinal)
    start: float  # first instant of the local date
    end: float  # first instant of the next local date
    open: tuple[tuple[float, float], ...]  # [a, b) UTC intervals, sorted, disjoint
    closed: str | None  # CLOSED_DAY / HOLIDAY when the whole day is closed
    note: str  # holiday name or why the holiday calendar is unknown
    window: tuple[str, str] | None
    calendar_unknown: bool = False  # holidays close but the country's calendar is unknown: never opens

    @property
    def day(self) -> date:
        return date.fromordinal(self.ordinal)

    @property
    def weekday(self) -> str:
        return WEEKDAYS[(self.ordinal - 1) % 7]


class Calendar:
    """A rule set's calendar with per-zone day plans cached. Pure: time always comes in as `now`."""

    __slots__ = ("_last", "_minutes", "_plans", "rule_set")

    def __init__(self, rule_set: RuleSet) -> None:
        self.rule_set = rule_set
        self._minutes = tuple(None if w is None else (parse_hhmm(w[0]), parse_hhmm(w[1])) for w in rule_set.windows)
        self._plans: dict[tuple[str, str | None, int], DayPlan] = {}
        self._last: dict[tuple[str, str | None], DayPlan] = {}

    def plan(self, tz: ZoneInfo, country: str | None, now: float) -> DayPlan:
        """The plan of the local date containing `now` (fast path: the last plan used for this zone and country)."""
        key = (tz.key, country)
        last = self._last.get(key)
        if last is not None and last.start <= now < last.end:
            return last
        ordinal = datetime.fromtimestamp(now, tz).toordinal()
        plan = self._plan_for(tz, country, ordinal)
        self._last[key] = plan
        return plan

    def allows(self, tz: ZoneInfo, country: str | None, now: float) -> bool:
        return any(a <= now < b for a, b in self.plan(tz, country, now).open)

    def next_open(self, tz: ZoneInfo, country: str | None, now: float) -> float | None:
        """Earliest instant >= now at which the calendar allows a dial.

        None when the holiday calendar is unknown or nothing opens within 400 days.
        """
        plan = self.plan(tz, country, now)
        if plan.calendar_unknown:
            return None
        for _ in range(_SEARCH_DAYS):
            for a, b in plan.open:
                if b > now:
                    return max(a, now)
            plan = self._plan_for(tz, country, plan.ordinal + 1)
        return None

    def _plan_for(self, tz: ZoneInfo, country: str | None, ordinal: int) -> DayPlan:
        key = (tz.key, country, ordinal)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()
            plan = self._plans[key] = self._build(tz, country, ordinal)
        return plan

    def _build(self, tz: ZoneInfo, country: str | None, ordinal: int) -> DayPlan:
        midnight = (ordinal - _EPOCH_ORDINAL) * 86_400.0  # local midnight as naive epoch seconds
        pieces = _offset_pieces(tz, midnight - _MARGIN_S, midnight + 86_400.0 + _MARGIN_S)
        # Instants whose wall clock falls on this local date: t + off in [midnight, midnight + 1 day).
        parts = [
            (max(a, midnight - off), min(b, midnight + 86_400.0 - off), off)
            for a, b, off in pieces
            if max(a, midnight - off) < min(b, midnight + 86_400.0 - off)
        ]
        start, end = parts[0][0], parts[-1][1]
        weekday = (ordinal - 1) % 7
        window = self.rule_set.windows[weekday]
        minutes = self._minutes[weekday]
        closed, note = self._closed(country, ordinal, minutes is None)
        opened: list[tuple[float, float]] = []
        if closed is None and minutes is not None:
            lo, hi = midnight + minutes[0] * 60.0, midnight + minutes[1] * 60.0
            for a, b, off in parts:
                oa, ob = max(a, lo - off), min(b, hi - off)
                if oa < ob:
                    if opened and opened[-1][1] >= oa:  # contiguous across a spring-forward jump
                        opened[-1] = (opened[-1][0], max(opened[-1][1], ob))
                    else:
                        opened.append((oa, ob))
        unknown = note.startswith(_UNKNOWN)
        return DayPlan(ordinal, start, end, tuple(opened), closed, note, window, unknown)

    def _closed(self, country: str | None, ordinal: int, closed_weekday: bool) -> tuple[str | None, str]:
        """(CLOSED_DAY | HOLIDAY | None, note); an unknown holiday calendar is noted even on a closed weekday."""
        closed: str | None = CLOSED_DAY if closed_weekday else None
        if not self.rule_set.holidays_closed:
            return closed, ""
        code, dash, subdiv = (country or self.rule_set.country or "").partition("-")
        country = (code.upper() + dash + subdiv) or None  # holidays wants "CO", not "co"; "Barcelona" keeps its case
        table = None if country is None else holidays_for(country, date.fromordinal(ordinal).year)
        if table is None:
            why = "no country for the debtor" if country is None else f"for country {country!r}"
            return closed or HOLIDAY, f"{_UNKNOWN}: {why}"
        name = table.get(ordinal)
        if closed is None and name is not None:
            return HOLIDAY, name
        return closed, ""


def holiday_region(lead: Lead) -> str | None:
    """The holiday calendar of `lead`: its country, or "ES-CT" when its `subdivision` field names a region."""
    subdiv = lead.fields.get("subdivision") if lead.fields else None
    return f"{lead.country}-{subdiv}" if subdiv and lead.country else lead.country


_calendars: dict[RuleSet, Calendar] = {}


def calendar_for(rule_set: RuleSet) -> Calendar:
    """A shared calendar per rule set (rule sets are frozen and hashable)."""
    cal = _calendars.get(rule_set)
    if cal is None:
        if len(_calendars) > 256:
            _calendars.clear()
        cal = _calendars[rule_set] = Calendar(rule_set)
    return cal


def next_open(rule_set: RuleSet, lead: Lead, now: float) -> float | None:
    """Earliest instant >= now at which `rule_set`'s window and holidays allow dialing `lead`.

    `now` when the rule set has no calendar; None when the debtor's zone is unknown (or nothing opens in 400 days).
    """
    if not rule_set.windowed:
        return now
    tz = zone(lead.timezone)
    if tz is None:
        return None
    return calendar_for(rule_set).next_open(tz, holiday_region(lead), now)
