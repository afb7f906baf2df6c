"""The compliance gates the core runs before every dial, and the per-debtor history they read.

`Gatekeeper.check()` returns None when the dial may go ahead, else the first failing gate as a `Refusal` with a reason
code, a human detail (numbers masked) and `retry_at`, the earliest instant that gate could pass:
- DNC: never (None);
- time zone unknown: None (it will not become known by waiting);
- window / closed day / holiday: the calendar's next opening, in every zone the dial must respect (see
  `dialzones`; None when the holiday calendar is unknown);
- attempt cap: when the oldest counted attempt ages out; cool-downs and the abandon recall block: when they end;
- contacts per local day: the next local day's window opening.
Gates are checked in that order. Abandon-rate targets, minimum ring and the abandon message are campaign-level
figures in the rule set that the core and pacer hold; they are not per-dial gates.
"""

from __future__ import annotations

from bisect import insort
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from zoneinfo import ZoneInfo

from dialer.compliance.calendar import Calendar, DayPlan, holiday_region, zone
from dialer.compliance.dialzones import DialZones
from dialer.compliance.dnc import DncList, DncScope
from dialer.compliance.rulesets import DAY, RuleSet
from dialer.logs import mask_number
from dialer.model import Lead


class Reason(StrEnum):
    DNC_GLOBAL = "dnc_global"
    DNC_CAMPAIGN = "dnc_campaign"
    TIMEZONE_UNKNOWN = "timezone_unknown"
    OUTSIDE_WINDOW = "outside_window"
    HOLIDAY = "holiday"
    CLOSED_DAY = "closed_day"
    ATTEMPT_CAP = "attempt_cap"
    CONTACT_COOLDOWN = "contact_cooldown"
    DAILY_CONTACT_CAP = "daily_contact_cap"
    ABANDON_RECALL_BLOCK = "abandon_recall_block"


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: Reason
    detail: str
    retry_at: float | None  # earliest instant this gate could pass; None: not by waiting


class DebtorHistory:
    """Per-debtor attempt, contact (connected conversation) and abandon instants, pruned past `horizon_s`.

    A conversation an agent found to be with a wrong party is not a conversation with the debtor: its instant
    leaves the contacts (no cool-down, no contact cap) and is remembered, so that no merge brings it back; the call
    stays an attempt.

    Pure and in memory: one bounded deque per lead and kind. `max_per_lead` bounds each deque; it must be at least
    the largest attempt cap (only the most recent N attempts matter to an N-attempt cap).
    """

    __slots__ = ("_abandons", "_attempts", "_contacts", "_wrong", "horizon_s", "max_per_lead")

    def __init__(self, horizon_s: float = 30 * DAY, max_per_lead: int = 64) -> None:
        self.horizon_s = horizon_s
        self.max_per_lead = max_per_lead
        self._attempts: dict[str, deque[float]] = {}
        self._contacts: dict[str, deque[float]] = {}
        self._abandons: dict[str, deque[float]] = {}
        self._wrong: dict[str, deque[float]] = {}  # conversations with a wrong party (not contacts)

    @classmethod
    def for_rule_set(cls, rule_set: RuleSet) -> DebtorHistory:
        """The smallest history that can judge `rule_set` (at least one day kept)."""
        caps = [n for n, _ in rule_set.attempt_caps] + [rule_set.max_contacts_per_local_day or 0]
        return cls(horizon_s=max(rule_set.history_horizon_s, DAY), max_per_lead=max([1, *caps]))

    def widen_for(self, rule_set: RuleSet) -> None:
        """Keep enough for `rule_set` too (one history serves every campaign's gate, whatever its rules)."""
        need = DebtorHistory.for_rule_set(rule_set)
        self.horizon_s = max(self.horizon_s, need.horizon_s)
        if need.max_per_lead > self.max_per_lead:
            self.max_per_lead = need.max_per_lead
            for table in (self._attempts, self._contacts, self._abandons, self._wrong):
                for lead_id, q in table.items():
                    table[lead_id] = deque(q, maxlen=self.max_per_lead)

    def _note(self, table: dict[str, deque[float]], lead_id: str, now: float) -> None:
        q = table.get(lead_id)
        if q is None:
            q = table[lead_id] = deque(maxlen=self.max_per_lead)
        if q and now < q[-1]:  # late report: keep the deque sorted (rare)
            items = list(q)
            insort(items, now)
            q.clear()
            q.extend(items)
        else:
            q.append(now)
        cutoff = now - self.horizon_s
        while q and q[0] < cutoff:
            q.popleft()

    def note_attempt(self, lead_id: str, number: str, now: float) -> None:
        """A dial of `number` for the debtor (caps are per debtor, whichever of their numbers was dialed)."""
        self._note(self._attempts, lead_id, now)

    def note_contact(self, lead_id: str, now: float) -> None:
        """A conversation: a live call connected to an agent (unless already known to be with a wrong party)."""
        if now in self._wrong.get(lead_id, ()):
            return
        self._note(self._contacts, lead_id, now)

    def note_wrong_party(self, lead_id: str, at: float) -> None:
        """The conversation connected at `at` was with a wrong party: not a contact with the debtor."""
        self._note(self._wrong, lead_id, at)
        q = self._contacts.get(lead_id)
        if q is not None and at in q:
            q.remove(at)
            if not q:
                del self._contacts[lead_id]

    def note_abandon(self, lead_id: str, now: float) -> None:
        self._note(self._abandons, lead_id, now)

    def attempts(self, lead_id: str) -> tuple[float, ...]:
        return tuple(self._attempts.get(lead_id, ()))

    def contacts(self, lead_id: str) -> tuple[float, ...]:
        return tuple(self._contacts.get(lead_id, ()))

    def abandons(self, lead_id: str) -> tuple[float, ...]:
        return tuple(self._abandons.get(lead_id, ()))

    def wrong_parties(self, lead_id: str) -> tuple[float, ...]:
        return tuple(self._wrong.get(lead_id, ()))

    def forget(self, lead_id: str) -> None:
        for table in (self._attempts, self._contacts, self._abandons, self._wrong):
            table.pop(lead_id, None)

    def prune(self, now: float) -> int:
        """Drop entries older than the horizon and leads left with none; returns how many leads were dropped."""
        cutoff = now - self.horizon_s
        dropped = 0
        for table in (self._attempts, self._contacts, self._abandons, self._wrong):
            for lead_id in list(table):
                q = table[lead_id]
                while q and q[0] < cutoff:
                    q.popleft()
                if not q:
                    del table[lead_id]
                    dropped += 1
        return dropped

    def __len__(self) -> int:
        return len(self._attempts.keys() | self._contacts.keys() | self._abandons.keys() | self._wrong.keys())


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:g} h" if seconds < 2 * DAY else f"{seconds / DAY:g} days"


class Gatekeeper:
    """Runs every gate of one campaign's rule set; one instance per campaign, shared DNC and history."""

    __slots__ = (
        "_abandons",
        "_attempts",
        "_cal",
        "_caps",
        "_contacts",
        "_needs_tz",
        "_windowed",
        "_zones",
        "campaign_id",
        "dnc",
        "history",
        "rule_set",
    )

    def __init__(self, rule_set: RuleSet, dnc: DncList, history: DebtorHistory, campaign_id: str) -> None:
        need = max([0, *(n for n, _ in rule_set.attempt_caps), rule_set.max_contacts_per_local_day or 0])
        if history.horizon_s < rule_set.history_horizon_s or history.max_per_lead < need:
            raise ValueError(
                f"history keeps {history.horizon_s:g} s / {history.max_per_lead} entries per lead; rule set "
                f"{rule_set.name} needs {rule_set.history_horizon_s:g} s / {need} (use DebtorHistory.for_rule_set)"
            )
        self.rule_set = rule_set
        self.dnc = dnc
        self.history = history
        self.campaign_id = campaign_id
        self._cal = Calendar(rule_set)
        self._caps = rule_set.attempt_caps
        self._needs_tz = rule_set.needs_timezone
        self._windowed = rule_set.windowed
        self._zones = DialZones()
        # Bound once: check() is the hot path.
        self._attempts = history._attempts
        self._contacts = history._contacts
        self._abandons = history._abandons

    def next_open(self, lead: Lead, now: float, number: str | None = None) -> float | None:
        """Earliest instant >= now the window and holidays allow (for dialing `number` when given: in every zone
        that dial must respect); None when the zone is unknown."""
        if not self.rule_set.windowed:
            return now
        if number is None:
            tz = zone(lead.timezone)
            return None if tz is None else self._cal.next_open(tz, holiday_region(lead), now)
        zones = self._zones.for_dial(lead, number)
        return None if zones is None else self._open_in_all(zones, holiday_region(lead), now)

    def _open_in_all(self, zones: tuple[ZoneInfo, ...], country: str | None, now: float) -> float | None:
        """Earliest instant >= now open in every zone: each zone's next opening from the latest found, until they
        agree; None when one zone never opens or they share no open instant within 400 days."""
        t = now
        while t - now < 400 * DAY:
            latest = t
            for tz in zones:
                opens = self._cal.next_open(tz, country, t)
                if opens is None:
                    return None
                latest = max(latest, opens)
            if latest == t:
                return t
            t = latest
        return None

    def check(self, lead: Lead, number: str, now: float, *, agent_reserved: bool = False) -> Refusal | None:
        """None if `number` of `lead` may be dialed at `now`, else the first failing gate."""
        scope = self.dnc.lookup(number, self.campaign_id, now)
        if scope is not None:
            if scope is DncScope.GLOBAL:
                return Refusal(Reason.DNC_GLOBAL, f"{mask_number(number)} is on the global DNC list", None)
            return Refusal(
                Reason.DNC_CAMPAIGN, f"{mask_number(number)} is on the DNC list of campaign {self.campaign_id}", None
            )
        rs = self.rule_set
        zones: tuple[ZoneInfo, ...] = ()
        plans: tuple[DayPlan, ...] = ()
        if self._needs_tz:
            found = self._zones.for_dial(lead, number)
            if found is None:
                what = "no time zone" if lead.timezone is None else f"unknown time zone {lead.timezone!r}"
                return Refusal(
                    Reason.TIMEZONE_UNKNOWN, f"lead {lead.lead_id}: {what}; {rs.name} needs local time", None
                )
            zones = found
            region = holiday_region(lead)
            if len(zones) == 1:  # the common case, kept cheap
                plans = (self._cal.plan(zones[0], region, now),)
            else:
                plans = tuple([self._cal.plan(tz, region, now) for tz in zones])
            if self._windowed:
                for i, plan in enumerate(plans):
                    for a, b in plan.open:
                        if a <= now < b:
                            break
                    else:
                        return self._closed(lead, zones, zones[i], plan, now)
        lead_id = lead.lead_id
        if rs.abandoned_recall_block_s and not agent_reserved:
            q = self._abandons.get(lead_id)
            if q and now - q[-1] < rs.abandoned_recall_block_s:
                until = q[-1] + rs.abandoned_recall_block_s
                return Refusal(
                    Reason.ABANDON_RECALL_BLOCK,
                    f"lead {lead_id}: call abandoned {_hours(now - q[-1])} ago; no redial within "
                    f"{_hours(rs.abandoned_recall_block_s)} unless an agent is reserved",
                    until,
                )
        if rs.contact_cooldown_s or rs.max_contacts_per_local_day is not None:
            q = self._contacts.get(lead_id)
            if q:
                if rs.contact_cooldown_s and now - q[-1] < rs.contact_cooldown_s:
                    return Refusal(
                        Reason.CONTACT_COOLDOWN,
                        f"lead {lead_id}: conversation {_hours(now - q[-1])} ago; cool-down "
                        f"{_hours(rs.contact_cooldown_s)}",
                        q[-1] + rs.contact_cooldown_s,
                    )
                cap = rs.max_contacts_per_local_day
                if cap is not None and plans:
                    # Several zones: a conversation on the local day of any of them counts (the safe side).
                    today = sum(1 for t in q if any(p.start <= t < p.end for p in plans))
                    if today >= cap:
                        end = max(p.end for p in plans)
                        retry = self._open_in_all(zones, holiday_region(lead), end) if rs.windowed else end
                        return Refusal(
                            Reason.DAILY_CONTACT_CAP,
                            f"lead {lead_id}: {today} conversation(s) on local day {plans[0].day.isoformat()}; "
                            f"at most {cap} a day",
                            retry,
                        )
        if self._caps:
            q = self._attempts.get(lead_id)
            if q:
                for n, window in self._caps:
                    # Allowed iff fewer than n attempts in the last `window`: the n-th most recent must be out of it.
                    if len(q) >= n and now - q[-n] < window:
                        count = sum(1 for t in q if now - t < window)
                        return Refusal(
                            Reason.ATTEMPT_CAP,
                            f"lead {lead_id}: {count} attempt(s) in the last {_hours(window)}; at most {n}",
                            q[-n] + window,
                        )
        return None

    def _closed(self, lead: Lead, zones: tuple[ZoneInfo, ...], tz: ZoneInfo, plan: DayPlan, now: float) -> Refusal:
        retry = self._open_in_all(zones, holiday_region(lead), now)
        local = datetime.fromtimestamp(now, tz)
        where = f"{local:%a %Y-%m-%d %H:%M} {tz.key}"
        if len(zones) > 1:
            where += f" (the dial must suit every zone of {', '.join(z.key for z in zones)})"
        if plan.closed == Reason.HOLIDAY:
            return Refusal(Reason.HOLIDAY, f"lead {lead.lead_id}: {where} is a holiday ({plan.note})", retry)
        if plan.closed == Reason.CLOSED_DAY:
            return Refusal(Reason.CLOSED_DAY, f"lead {lead.lead_id}: {where}: no calls on {plan.weekday}", retry)
        assert plan.window is not None
        start, end = plan.window
        return Refusal(
            Reason.OUTSIDE_WINDOW,
            f"lead {lead.lead_id}: {where} is outside the {start}-{end} calling window of {self.rule_set.name}",
            retry,
        )
