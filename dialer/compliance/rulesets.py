"""Per-jurisdiction compliance rule sets, shipped as data, and their tightening by a campaign.

A rule set says *when* a debtor may be dialed (weekly calling window in the debtor's local time, holidays) and *how
often* (attempt caps over rolling windows, cool-down after a conversation, contacts per local day, recall block after
an abandoned call). It also carries the figures the core and pacer must hold per campaign (abandon target and its
window, minimum ring time, abandon-message deadline, whether AMD false positives count as abandons); the gates do not
check those, the core does.

Figures marked "operator default" are our own sensible choices, not law: a campaign can tighten them but not loosen
them, so they were kept at the permissive end where the law says nothing (e.g. `abandon_target=1.0` = no legal cap,
the campaign's own target applies).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

DAY = 86_400.0
HOUR = 3_600.0

Window = tuple[str, str]  # ("HH:MM", "HH:MM") local wall clock, start inclusive, end exclusive; end may be "24:00"
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def parse_hhmm(value: str) -> int:
    """'HH:MM' -> minutes after local midnight (0..1440); raises ValueError on anything else."""
    if not isinstance(value, str) or len(value) != 5 or value[2] != ":" or not (value[:2] + value[3:]).isdigit():
        raise ValueError(f"time {value!r} is not 'HH:MM'")
    minutes = int(value[:2]) * 60 + int(value[3:])
    if int(value[3:]) > 59 or minutes > 1440:
        raise ValueError(f"time {value!r} is out of range 00:00..24:00")
    return minutes


@dataclass(frozen=True)
class RuleSet:
    name: str
    # Per weekday 0=Mon..6=Sun: one (start, end) window, or None for a day closed to dialing.
    windows: tuple[Window | None, ...]
    holidays_closed: bool = False  # no dial on public holidays of the debtor's country
    attempt_caps: tuple[tuple[int, float], ...] = ()  # (max attempts, rolling window seconds) per debtor
    contact_cooldown_s: float = 0.0  # no dial for this long after a conversation (connected live call)
    max_contacts_per_local_day: int | None = None  # conversations per debtor per local calendar day
    abandon_target: float = 1.0  # campaign abandon rate ceiling (abandoned / live answers); 1.0 = no legal cap
    abandon_window_s: float = 30 * DAY  # rolling window over which abandon_target is measured
    min_ring_s: float = 0.0  # ring at least this long before giving up on no answer
    abandon_message_s: float | None = None  # play the abandon message within this many seconds of answer
    abandoned_recall_block_s: float = 0.0  # after an abandoned call, no redial this long unless an agent is reserved
    count_amd_false_positives: bool = False  # estimated AMD false positives count as abandoned calls
    country: str | None = None  # holiday calendar when the lead has no country (the jurisdiction's own)

    def __post_init__(self) -> None:
        if len(self.windows) != 7:
            raise ValueError(f"{self.name}: windows needs 7 entries (Mon..Sun), got {len(self.windows)}")
        for day, window in enumerate(self.windows):
            if window is None:
                continue
            start, end = window
            if parse_hhmm(start) >= parse_hhmm(end):
                raise ValueError(f"{self.name}: windows[{day}] {start}-{end} is empty")
        for n, window_s in self.attempt_caps:
            if n < 1 or window_s <= 0:
                raise ValueError(f"{self.name}: attempt_caps entry ({n}, {window_s}) is invalid")
        if self.max_contacts_per_local_day is not None and self.max_contacts_per_local_day < 1:
            raise ValueError(f"{self.name}: max_contacts_per_local_day must be at least 1 (or None)")
        if not 0.0 <= self.abandon_target <= 1.0:
            raise ValueError(f"{self.name}: abandon_target must be within [0, 1]")

    @property
    def windowed(self) -> bool:
        """True when some dial can be refused by the calendar (then the debtor's time zone is needed)."""
        full = ("00:00", "24:00")
        return self.holidays_closed or any(w != full for w in self.windows)

    @property
    def needs_timezone(self) -> bool:
        return self.windowed or self.max_contacts_per_local_day is not None

    @property
    def history_horizon_s(self) -> float:
        """How long per-debtor history must be kept to judge every rule (a local day is at most 26 h)."""
        spans = [w for _, w in self.attempt_caps]
        spans += [self.contact_cooldown_s, self.abandoned_recall_block_s]
        if self.max_contacts_per_local_day is not None:
            spans.append(26 * HOUR)
        return max(spans, default=0.0)


def _every_day(window: Window) -> tuple[Window | None, ...]:
    return (window,) * 7


_RULE_SETS: dict[str, RuleSet] = {
    # No calendar, no caps: tests and demos. DNC still applies (the gatekeeper always checks it).
    "none": RuleSet(name="none", windows=_every_day(("00:00", "24:00"))),
    # US: TSR 16 CFR 310.4(c) calling hours 8am-9pm local; Reg F 12 CFR 1006.14: at most 7 calls in 7 days and none
    # within 7 days after a telephone conversation; TSR safe harbor: abandon <= 3% per campaign per 30 days,
    # ring >= 15 s, recorded message within 2 s.
    "us-tsr-regf": RuleSet(
        name="us-tsr-regf",
        windows=_every_day(("08:00", "21:00")),
        attempt_caps=((7, 7 * DAY),),
        contact_cooldown_s=7 * DAY,
        abandon_target=0.03,
        abandon_window_s=30 * DAY,
        min_ring_s=15.0,
        abandon_message_s=2.0,
        country="US",
    ),
    # UK: Ofcom persistent-misuse policy: abandon <= 3% per campaign per 24 h with AMD false positives estimated
    # and counted; after an abandoned call no repeat within 72 h unless an agent is reserved for it; ring >= 15 s;
    # information message within 2 s of answer. The 08:00-21:00 window is an operator default, not law.
    "uk-ofcom": RuleSet(
        name="uk-ofcom",
        windows=_every_day(("08:00", "21:00")),
        abandon_target=0.03,
        abandon_window_s=1 * DAY,
        min_ring_s=15.0,
        abandon_message_s=2.0,
        abandoned_recall_block_s=72 * HOUR,
        count_amd_false_positives=True,
        country="GB",
    ),
    # Colombia: Ley 2300 de 2023: Mon-Fri 07:00-19:00, Sat 08:00-15:00, never Sundays or holidays; one contact a day.
    "co-ley2300": RuleSet(
        name="co-ley2300",
        windows=(("07:00", "19:00"),) * 5 + (("08:00", "15:00"), None),
        holidays_closed=True,
        max_contacts_per_local_day=1,
        country="CO",
    ),
    # Mexico: CONDUSEF collection rules: 07:00-22:00 in the debtor's local time.
    "mx-condusef": RuleSet(name="mx-condusef", windows=_every_day(("07:00", "22:00")), country="MX"),
    # Spain: consumer-protection rules: weekdays 09:00-21:00, never weekends or national holidays.
    "es-consumo": RuleSet(
        name="es-consumo",
        windows=(("09:00", "21:00"),) * 5 + (None, None),
        holidays_closed=True,
        country="ES",
    ),
}

RULE_SETS: Mapping[str, RuleSet] = MappingProxyType(_RULE_SETS)


# --- tightening ---------------------------------------------------------------------------------------------------


def _day_index(key: Any) -> int:
    if isinstance(key, int) and 0 <= key <= 6:
        return key
    if isinstance(key, str) and key[:3].title() in WEEKDAYS:
        return WEEKDAYS.index(key[:3].title())
    raise ValueError(f"windows: unknown weekday {key!r} (0=Mon..6=Sun or a day name)")


def _window_override(base: RuleSet, value: Any) -> tuple[Window | None, ...]:
    """A 7-sequence or a {weekday: window|None} mapping; each day must lie inside the base day's window."""
    days: list[Window | None] = list(base.windows)
    if isinstance(value, Mapping):
        items = [(_day_index(k), v) for k, v in value.items()]
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 7:
        items = list(enumerate(value))
    else:
        raise ValueError("windows: give 7 windows (Mon..Sun) or a {weekday: window} mapping")
    for day, window in items:
        field = f"windows[{day}]"
        if window is None:
            days[day] = None
            continue
        start, end = window
        s, e = parse_hhmm(start), parse_hhmm(end)
        if s >= e:
            raise ValueError(f"{field}: {start}-{end} is empty (use None to close the day)")
        old = base.windows[day]
        if old is None:
            raise ValueError(f"{field}: {WEEKDAYS[day]} is closed in {base.name}; an override cannot open it")
        if s < parse_hhmm(old[0]) or e > parse_hhmm(old[1]):
            raise ValueError(f"{field}: {start}-{end} would loosen {base.name}'s {old[0]}-{old[1]}")
        days[day] = (start, end)
    return tuple(days)


def _clamp_edge(base: tuple[Window | None, ...], value: Any, field: str) -> tuple[Window | None, ...]:
    """window_start / window_end: a clamp on every open day; a day whose window empties becomes closed.

    A value outside every open day's window (e.g. window_start before every start) is refused: it reads like an
    attempt to widen the window, which an override cannot do. Restating an edge (equal value) is fine.
    """
    edge = parse_hhmm(value)
    out: list[Window | None] = []
    widens_all = True
    for window in base:
        if window is None:
            out.append(None)
            continue
        s, e = parse_hhmm(window[0]), parse_hhmm(window[1])
        if field == "window_start":
            widens_all &= edge < s
            s = max(s, edge)
        else:
            widens_all &= edge > e
            e = min(e, edge)
        out.append((f"{s // 60:02d}:{s % 60:02d}", f"{e // 60:02d}:{e % 60:02d}") if s < e else None)
    if widens_all:
        raise ValueError(f"{field}: {value} lies outside every day's window; an override can only tighten")
    return tuple(out)


def _caps_override(base: RuleSet, value: Any) -> tuple[tuple[int, float], ...]:
    """Replaces the caps; every base cap (n, w) must be implied by some new cap (n' <= n over w' >= w)."""
    caps = tuple((int(n), float(w)) for n, w in value)
    for n, w in base.attempt_caps:
        if not any(n2 <= n and w2 >= w for n2, w2 in caps):
            raise ValueError(f"attempt_caps: dropping or loosening {base.name}'s cap of {n} in {w:g} s is not allowed")
    return caps


# field -> "up" (may only grow), "down" (may only shrink); None on an optional field means "no limit".
_DIRECTION = {
    "contact_cooldown_s": "up",
    "min_ring_s": "up",
    "abandoned_recall_block_s": "up",
    "abandon_target": "down",
    # A shorter measuring window is the stricter one: <=x% in every short window implies <=x% over any union.
    "abandon_window_s": "down",
    "max_contacts_per_local_day": "down",
    "abandon_message_s": "down",
    "holidays_closed": "up",
    "count_amd_false_positives": "up",
}


def load_rule_set(name: str, overrides: Mapping[str, Any] | None = None) -> RuleSet:
    """The named rule set, tightened by a campaign's overrides.

    Overrides may only narrow: later start / earlier end (`windows`, `window_start`, `window_end`), fewer attempts
    (`attempt_caps`), longer cool-downs and blocks, lower abandon target, longer minimum ring, and so on.
    Raises ValueError naming the field for an unknown field or one that would loosen the rule.
    """
    base = RULE_SETS.get(name)
    if base is None:
        raise ValueError(f"unknown rule set {name!r}; known: {', '.join(sorted(RULE_SETS))}")
    if not overrides:
        return base
    changes: dict[str, Any] = {}
    windows = base.windows
    for field, value in overrides.items():
        if field == "windows":
            windows = _window_override(dataclasses.replace(base, windows=windows), value)
        elif field in ("window_start", "window_end"):
            windows = _clamp_edge(windows, value, field)
        elif field == "attempt_caps":
            changes[field] = _caps_override(base, value)
        elif field in _DIRECTION:
            old = getattr(base, field)
            if value is None:
                if old is not None:
                    raise ValueError(f"{field}: None (no limit) would loosen {base.name}'s {old}")
            elif old is not None and (value < old if _DIRECTION[field] == "up" else value > old):
                raise ValueError(f"{field}: {value} would loosen {base.name}'s {old}")
            changes[field] = value
        else:
            known = sorted([*_DIRECTION, "windows", "window_start", "window_end", "attempt_caps"])
            raise ValueError(f"{field}: unknown or fixed field; overridable: {', '.join(known)}")
    return dataclasses.replace(base, windows=windows, **changes)
