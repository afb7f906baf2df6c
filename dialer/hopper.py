"""The hopper: which leads, and which of their phones, a campaign dials next (issue #4, item 2).

Pure and deterministic: time comes in as `now` (epoch seconds), no I/O. Compliance stays in the gate the caller
passes to `select`; the hopper only records refusals and reschedules.

Data structure (1,000 picks out of 1,000,000 leads in well under 50 ms): leads eligible now live in *buckets*, one
per priority (per priority, segment and time zone when best-time-to-call ordering is on), each a heap keyed by
(-amount, ticket). Leads waiting for a recycle delay or a refusal's retry time sit in one time-ordered heap and move
into their bucket when due; callbacks have their own heaps (campaign-wide, and one per owning agent). `select`
merges the buckets' tops in a small heap keyed by (-priority, -answer rate, -amount, ticket), so a pick costs two
heap operations. Every state change gives the lead a new ticket: heap items with an old ticket are stale and are
dropped when they surface (lazy deletion), so removal and rescheduling are O(1) or O(log n).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from dialer.dispositions import DispositionCode
from dialer.model import Lead, Outcome

STAGES = ("early", "intermediate", "late")

DEFAULT_RECYCLE_S: dict[Outcome, float] = {
    Outcome.BUSY: 600.0,
    Outcome.NO_ANSWER: 7200.0,
    Outcome.CONGESTION: 300.0,
    Outcome.FAILED: 3600.0,
    Outcome.MACHINE: 14400.0,
    Outcome.ABANDONED: 3600.0,
    Outcome.LOST: 0.0,
    # A conversation that ended without a final disposition is worth another try, not today.
    Outcome.CONNECTED: 86400.0,
}

# Lead states (ints: compared on every pick).
PENDING, OUT, SCHEDULED, PARKED, DONE, REMOVED = range(6)
STATE_NAMES = ("pending", "out", "scheduled", "parked", "done", "removed")

# Where a pick came from.
QUEUE, CALLBACK, AGENT_CALLBACK = "queue", "callback", "agent_callback"


class Refusal(Protocol):
    """What a gate returns to refuse a dial; `retry_at` (epoch seconds) is read when present."""

    @property
    def reason(self) -> str: ...


Gate = Callable[[Lead, str, float], Refusal | None]


def allow_all(lead: Lead, number: str, now: float) -> None:
    return None


# Refusals by the calling calendar (gates.Reason values): they depend only on the number's zones and the time, never
# on who dials, so a phone so refused is not asked about again, nor counted, before its retry time.
CALENDAR_REFUSALS = frozenset({"outside_window", "holiday", "closed_day"})


# ---------------------------------------------------------------------------------------------------- rules


def _int(where: str, value: Any, low: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
        raise ValueError(f"{where}: expected an integer{'' if low is None else f' ≥ {low}'}, got {value!r}")
    return value


def _seconds(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{where}: expected seconds ≥ 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class HopperRules:
    """Ordering and recycling rules of one campaign. Priority = segment priority + stage priority (a weight of
    100 on segments makes the order lexicographic); ties go to the higher amount due."""

    stage_bounds: tuple[int, int] = (30, 90)  # days past due: early < 30 ≤ intermediate < 90 ≤ late
    segment_priority: Mapping[str, int] = field(default_factory=dict)
    stage_priority: Mapping[str, int] = field(default_factory=dict)
    recycle_delays: Mapping[Outcome, float] = field(default_factory=lambda: dict(DEFAULT_RECYCLE_S))
    max_attempts_lead: int = 10
    max_attempts_phone: int = 4
    best_time: bool = False  # order leads of equal priority by the learnt answer rate at their local hour
    answer_prior: tuple[float, float] = (1.0, 4.0)  # Beta(α, β) prior of the live-answer rate (mean 1/5)
    refusal_log: int = 10_000  # refusals kept in `Hopper.refusals`

    def __post_init__(self) -> None:
        lo, hi = self.stage_bounds
        _int("stage_bounds[0]", lo, 0)
        _int("stage_bounds[1]", hi, 0)
        if lo > hi:
            raise ValueError(f"stage_bounds: early bound {lo} is above the late bound {hi}")
        for seg, p in self.segment_priority.items():
            _int(f"segment_priority.{seg}", p)
        for stage, p in self.stage_priority.items():
            if stage not in STAGES:
                raise ValueError(f"stage_priority.{stage}: unknown stage (known: {', '.join(STAGES)})")
            _int(f"stage_priority.{stage}", p)
        for oc, s in self.recycle_delays.items():
            if not isinstance(oc, Outcome):
                raise ValueError(f"recycle_delays.{oc}: not an Outcome")
            _seconds(f"recycle_delays.{oc.value}", s)
        _int("max_attempts_lead", self.max_attempts_lead, 1)
        _int("max_attempts_phone", self.max_attempts_phone, 1)
        if not isinstance(self.best_time, bool):
            raise ValueError(f"best_time: expected a bool, got {self.best_time!r}")
        a, b = self.answer_prior
        if not (isinstance(a, int | float) and isinstance(b, int | float) and a > 0 and b > 0):
            raise ValueError(f"answer_prior: expected two positive numbers, got {self.answer_prior!r}")
        _int("refusal_log", self.refusal_log, 1)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> HopperRules:
        """From a config mapping (YAML/JSON): outcome and stage names as strings; recycle delays given are merged
        over the defaults. Errors name the field: `hopper.recycle_delays.busy: expected seconds ≥ 0, got -1`."""
        known = {"stage_bounds", "segment_priority", "stage_priority", "recycle_delays", "max_attempts_lead",
                 "max_attempts_phone", "best_time", "answer_prior", "refusal_log"}
        for key in cfg:
            if key not in known:
                raise ValueError(f"hopper.{key}: unknown field (known: {', '.join(sorted(known))})")
        kw: dict[str, Any] = {}
        try:
            if "stage_bounds" in cfg:
                sb = cfg["stage_bounds"]
                if not isinstance(sb, list | tuple) or len(sb) != 2:
                    raise ValueError(f"stage_bounds: expected [early_below, late_from], got {sb!r}")
                kw["stage_bounds"] = (sb[0], sb[1])
            for name in ("segment_priority", "stage_priority"):
                if name in cfg:
                    if not isinstance(cfg[name], Mapping):
                        raise ValueError(f"{name}: expected a mapping, got {cfg[name]!r}")
                    kw[name] = {str(k): v for k, v in cfg[name].items()}
            if "recycle_delays" in cfg:
                rd = cfg["recycle_delays"]
                if not isinstance(rd, Mapping):
                    raise ValueError(f"recycle_delays: expected a mapping, got {rd!r}")
                delays = dict(DEFAULT_RECYCLE_S)
                for k, v in rd.items():
                    try:
                        oc = Outcome(k)
                    except ValueError:
                        raise ValueError(f"recycle_delays.{k}: unknown outcome "
                                         f"(known: {', '.join(o.value for o in Outcome)})") from None
                    delays[oc] = _seconds(f"recycle_delays.{k}", v)
                kw["recycle_delays"] = delays
            if "answer_prior" in cfg:
                ap = cfg["answer_prior"]
                if not isinstance(ap, list | tuple) or len(ap) != 2:
                    raise ValueError(f"answer_prior: expected [alpha, beta], got {ap!r}")
                kw["answer_prior"] = (ap[0], ap[1])
            for name in ("max_attempts_lead", "max_attempts_phone", "best_time", "refusal_log"):
                if name in cfg:
                    kw[name] = cfg[name]
            return cls(**kw)
        except ValueError as exc:
            raise ValueError(f"hopper.{exc}") from None

    def stage(self, days_past_due: int) -> str:
        lo, hi = self.stage_bounds
        return "early" if days_past_due < lo else "intermediate" if days_past_due < hi else "late"

    def priority(self, lead: Lead) -> int:
        return self.segment_priority.get(lead.segment, 0) + self.stage_priority.get(self.stage(lead.days_past_due), 0)


# ---------------------------------------------------------------------------------------------------- time


def local_time_to_epoch(day: date, hhmm: str, tz: str) -> float:
    """Epoch seconds of wall time `hhmm` ("HH:MM") on `day` in IANA zone `tz`. A wall time skipped by a DST jump
    moves forward to the first real instant (the jump itself); a repeated one takes its first occurrence."""
    try:
        hh, mm = hhmm.split(":")
        if len(hh) != 2 or len(mm) != 2:
            raise ValueError
        hour, minute = int(hh), int(mm)
        if not (0 <= hour < 24 and 0 <= minute < 60):
            raise ValueError
    except ValueError:
        raise ValueError(f"time: expected 'HH:MM', got {hhmm!r}") from None
    zone = ZoneInfo(tz)
    wall = datetime(day.year, day.month, day.day, hour, minute)
    first = wall.replace(tzinfo=zone, fold=0)  # fold=0: the first occurrence of a repeated wall time
    t0 = first.timestamp()
    if datetime.fromtimestamp(t0, zone).replace(tzinfo=None) == wall:
        return t0
    # Skipped: fold=0 read it with the offset before the jump (an instant after it), fold=1 with the offset after
    # (an instant before it). The jump lies between: find the first second whose offset differs from the earlier.
    lo = int(wall.replace(tzinfo=zone, fold=1).timestamp())
    hi = int(t0)
    before = datetime.fromtimestamp(lo, zone).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == before:
            lo = mid
        else:
            hi = mid
    return float(hi)


class _LocalClock:
    """Hour of the week (0 = Monday 00h) in a zone, cached by quarter hour (every offset in use is a multiple)."""

    __slots__ = ("_cache", "_zones")

    def __init__(self) -> None:
        self._zones: dict[str, ZoneInfo | None] = {}
        self._cache: dict[tuple[str | None, int], int] = {}

    def hour_of_week(self, t: float, tz: str | None) -> int:
        key = (tz, int(t // 900))
        how = self._cache.get(key)
        if how is None:
            if tz not in self._zones and tz is not None:
                try:
                    self._zones[tz] = ZoneInfo(tz)
                except (ValueError, KeyError, OSError):
                    self._zones[tz] = None  # unknown zone: learn on UTC rather than fail a call's outcome
            zone = self._zones.get(tz) if tz is not None else None
            local = datetime.fromtimestamp(key[1] * 900, zone or UTC)
            how = local.weekday() * 24 + local.hour
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[key] = how
        return how


class AnswerRateByHour:
    """Live-answer rate per (segment, hour of week in the debtor's zone): posterior mean of Beta(α, β)."""

    __slots__ = ("_counts", "alpha", "beta")

    def __init__(self, alpha: float = 1.0, beta: float = 4.0) -> None:
        self.alpha, self.beta = alpha, beta
        self._counts: dict[tuple[str, int], list[int]] = {}  # -> [live answers, attempts]

    def record(self, segment: str, how: int, live: bool) -> None:
        c = self._counts.get((segment, how))
        if c is None:
            c = self._counts[(segment, how)] = [0, 0]
        c[0] += live
        c[1] += 1

    def rate(self, segment: str, how: int) -> float:
        c = self._counts.get((segment, how))
        live, n = (c[0], c[1]) if c else (0, 0)
        return (live + self.alpha) / (n + self.alpha + self.beta)


# ---------------------------------------------------------------------------------------------------- state


@dataclass(frozen=True, slots=True)
class Pick:
    """A lead to dial now, the number chosen and why; `source` is queue, callback or agent_callback."""

    lead: Lead
    number: str
    reason: str
    source: str = QUEUE
    agent_id: str | None = None  # agent_callback: the agent who owns it


@dataclass(frozen=True, slots=True)
class LeadInfo:
    state: str
    attempts: int
    phones: tuple[str, ...]  # still usable, listed order
    phone_attempts: dict[str, int]
    next_at: float | None
    callback_at: float | None
    callback_agent: str | None


class _PhoneStat:
    __slots__ = ("attempts", "failed", "last_failed", "last_live", "live")

    def __init__(self) -> None:
        self.attempts = 0
        self.live = 0
        self.failed = 0
        self.last_live = -math.inf
        self.last_failed = -math.inf


class _Bucket:
    __slots__ = ("heap", "priority", "segment", "tz")

    def __init__(self, priority: int, segment: str, tz: str | None) -> None:
        self.heap: list[tuple[float, int, _Entry]] = []
        self.priority, self.segment, self.tz = priority, segment, tz


_NO_BUCKET = _Bucket(0, "", None)  # an entry's bucket until it is restored (`Hopper.add` picks the real one)


class _Entry:
    __slots__ = ("attempts", "bucket", "cb_agent", "cb_at", "dropped", "gone", "later_cb", "lead", "neg_amount",
                 "next_at", "out_at", "out_cb", "out_number", "out_source", "state", "stats", "ticket", "waits")

    def __init__(self, lead: Lead, bucket: _Bucket) -> None:
        self.lead = lead
        self.bucket = bucket
        self.neg_amount = -float(lead.amount_due)
        self.state = -1
        self.ticket = -1
        self.attempts = 0
        self.stats: dict[str, _PhoneStat] | None = None
        self.dropped: set[str] | None = None
        self.next_at: float | None = None
        self.cb_at: float | None = None
        self.cb_agent: str | None = None
        self.out_number: str | None = None
        self.out_at = 0.0
        self.out_source = QUEUE
        self.out_cb: tuple[float, str | None] | None = None  # the callback a pick came from (release restores it)
        self.later_cb: tuple[float, str | None] | None = None  # asked for while out: applied when it returns
        self.gone = False  # removed while out: never comes back
        self.waits: dict[str, tuple[float, str]] | None = None  # phone -> (closed until, reason): calendar refusals


STATE_VERSION = 1  # of `Hopper.handoff_state`'s mapping; a state of another version is ignored (a fresh start)


def state_with_callback(state: Mapping[str, Any] | None, at: float, agent_id: str | None) -> dict[str, Any]:
    """A lead's hand-off state (`Hopper.handoff_state`'s mapping) with a callback asked through the store merged in:
    the asked one wins over any the state held. A state of another version starts afresh with the callback."""
    doc: dict[str, Any] = dict(state) if isinstance(state, Mapping) and state.get("v") == STATE_VERSION \
        else {"v": STATE_VERSION}
    doc["cb"] = at
    if agent_id:
        doc["ag"] = agent_id
    else:
        doc.pop("ag", None)
    return doc


def state_with_dropped(state: Mapping[str, Any] | None, dropped: Iterable[int]) -> dict[str, Any]:
    """A lead's hand-off state with phones dropped through the store merged in (`Store.ask_disposition`: a wrong
    party or DNC code taken by a node that no longer held the lead), phones named by their place in the lead's list
    as in the state. A state of another version starts afresh with them."""
    doc: dict[str, Any] = dict(state) if isinstance(state, Mapping) and state.get("v") == STATE_VERSION \
        else {"v": STATE_VERSION}
    doc["d"] = sorted({int(i) for i in doc.get("d", ())} | {int(i) for i in dropped})
    return doc


def _finite(t: float) -> float | None:
    return t if math.isfinite(t) else None


def _entry_from_state(lead: Lead, doc: Mapping[str, Any]) -> _Entry | None:
    """An entry as a drained one is kept (`Hopper.drain`), from `Hopper.handoff_state`'s mapping: `Hopper.add`
    restores it as it restores a drained lead. None if the mapping is of another version or malformed."""
    if not isinstance(doc, Mapping) or doc.get("v") != STATE_VERSION:
        return None
    phones = lead.phones
    try:
        e = _Entry(lead, _NO_BUCKET)
        e.attempts = int(doc.get("n", 0))
        for i, attempts, live, failed, last_live, last_failed in doc.get("p", ()):
            if 0 <= i < len(phones):
                st = _PhoneStat()
                st.attempts, st.live, st.failed = int(attempts), int(live), int(failed)
                st.last_live = -math.inf if last_live is None else float(last_live)
                st.last_failed = -math.inf if last_failed is None else float(last_failed)
                if e.stats is None:
                    e.stats = {}
                e.stats[phones[i]] = st
        dropped = {phones[i] for i in doc.get("d", ()) if 0 <= i < len(phones)}
        e.dropped = dropped or None
        waits = {phones[i]: (float(until), str(why)) for i, until, why in doc.get("w", ()) if 0 <= i < len(phones)}
        e.waits = waits or None
        e.next_at = None if doc.get("t") is None else float(doc["t"])
        e.cb_at = None if doc.get("cb") is None else float(doc["cb"])
        e.cb_agent = None if e.cb_at is None or doc.get("ag") is None else str(doc["ag"])
    except (TypeError, ValueError):
        return None
    return e


# ---------------------------------------------------------------------------------------------------- hopper


class Hopper:
    """The next leads to dial for one campaign. A lead is in exactly one state: pending (eligible), out (being
    dialed), scheduled (recycle delay, refusal retry or callback), parked (refused with no retry time), done or
    removed."""

    def __init__(self, campaign_id: str, rules: HopperRules | None = None) -> None:
        self.campaign_id = campaign_id
        self.rules = rules or HopperRules()
        self.refusals: deque[tuple[str, str, str, float]] = deque(maxlen=self.rules.refusal_log)
        self.answer_rates = AnswerRateByHour(*self.rules.answer_prior)
        self._clock = _LocalClock()
        self._entries: dict[str, _Entry] = {}
        self._buckets: dict[tuple[Any, ...], _Bucket] = {}
        self._timed: list[tuple[float, int, _Entry]] = []
        self._callbacks: list[tuple[float, int, _Entry]] = []
        self._agent_cbs: dict[str, list[tuple[float, int, _Entry]]] = {}
        self._counts = [0] * len(STATE_NAMES)
        self._seq = 0
        # Leads drained back to the store (campaign stopped), with their attempts, delays and callbacks: the store
        # keeps none of that, so a lead it leases here again takes its state back rather than start afresh.
        self._dormant: dict[str, _Entry] = {}

    # -------------------------------------------------------------- transitions (each gives a new ticket)

    def _set(self, e: _Entry, state: int) -> int:
        if e.state >= 0:
            self._counts[e.state] -= 1
        self._counts[state] += 1
        e.state = state
        self._seq += 1
        e.ticket = self._seq
        return self._seq

    def _to_pending(self, e: _Entry) -> None:
        e.next_at = None
        heapq.heappush(e.bucket.heap, (e.neg_amount, self._set(e, PENDING), e))

    def _to_timed(self, e: _Entry, at: float, now: float) -> None:
        if at <= now:
            self._to_pending(e)
            return
        e.next_at = at
        heapq.heappush(self._timed, (at, self._set(e, SCHEDULED), e))

    def _to_callback(self, e: _Entry, at: float, agent_id: str | None) -> None:
        e.next_at, e.cb_at, e.cb_agent = None, at, agent_id
        heap = self._callbacks if agent_id is None else self._agent_cbs.setdefault(agent_id, [])
        heapq.heappush(heap, (at, self._set(e, SCHEDULED), e))

    def _end(self, e: _Entry, state: int) -> None:
        e.next_at = e.cb_at = e.cb_agent = None
        e.out_cb = e.later_cb = None
        self._set(e, state)

    def _park(self, e: _Entry) -> None:
        e.next_at = None
        self._set(e, PARKED)

    def set_rules(self, rules: HopperRules) -> list[str]:
        """Take edited rules for the leads held: ordering re-sorts the pending ones, new delays apply to outcomes
        from now on, lowered caps drop the phones and end the leads (not out on a call) already at them. Returns
        the ids of the leads so ended: the store must hear they are done."""
        old, self.rules = self.rules, rules
        if rules.refusal_log != old.refusal_log:
            self.refusals = deque(self.refusals, maxlen=rules.refusal_log)
        self.answer_rates.alpha, self.answer_rates.beta = rules.answer_prior
        if (rules.stage_bounds, rules.segment_priority, rules.stage_priority, rules.best_time) != \
                (old.stage_bounds, old.segment_priority, old.stage_priority, old.best_time):
            self._buckets = {}
            for e in self._entries.values():
                e.bucket = self._bucket_for(e.lead)
                if e.state == PENDING:  # same ticket: still valid, now in its new bucket
                    heapq.heappush(e.bucket.heap, (e.neg_amount, e.ticket, e))
        ended: list[str] = []
        if rules.max_attempts_lead < old.max_attempts_lead or rules.max_attempts_phone < old.max_attempts_phone:
            for lead_id, e in self._entries.items():
                if e.state not in (PENDING, SCHEDULED, PARKED):
                    continue  # out: its outcome applies the caps; done or removed: nothing to do
                for number, st in (e.stats or {}).items():
                    if st.attempts >= rules.max_attempts_phone:
                        self._drop_phone(e, number)
                if e.attempts >= rules.max_attempts_lead or not self._active(e):
                    self._end(e, DONE)
                    ended.append(lead_id)
        return ended

    # -------------------------------------------------------------- loading and removal

    def _bucket_for(self, lead: Lead) -> _Bucket:
        prio = self.rules.priority(lead)
        key: tuple[Any, ...] = (prio, lead.segment, lead.timezone) if self.rules.best_time else (prio,)
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = _Bucket(prio, lead.segment, lead.timezone)
        return b

    def add(self, leads: Iterable[Lead], now: float,
            states: Mapping[str, Mapping[str, Any]] | None = None) -> int:
        """Add leads, eligible at once; ids already known (even removed or done) are left untouched. Returns how
        many were new. A lead of another campaign is an error (nothing is added). A lead this hopper drained, or
        one with a state in `states` (`handoff_state`, kept by the store when another node handed it back), takes
        its attempts, phones, recycle time and callback back rather than start afresh."""
        batch = list(leads)
        for lead in batch:
            if lead.campaign_id != self.campaign_id:
                raise ValueError(f"lead {lead.lead_id!r} belongs to campaign {lead.campaign_id!r}, "
                                 f"not {self.campaign_id!r}")
        fresh: dict[int, tuple[_Bucket, list[tuple[float, int, _Entry]]]] = {}
        entries = self._entries
        lo, hi = self.rules.stage_bounds
        by_key: dict[tuple[str, int, str | None], _Bucket] = {}  # (segment, stage, zone) -> bucket, this batch
        added = pending = 0
        seq = self._seq
        dormant = self._dormant
        back: list[_Entry] = []
        for lead in batch:
            if lead.lead_id in entries:
                continue
            if (dormant and lead.lead_id in dormant) or (states and lead.lead_id in states):
                e_back = dormant.pop(lead.lead_id, None)
                # The store's state is the latest: another node may have dialed the lead since it left here.
                held = states.get(lead.lead_id) if states else None
                if held is not None:
                    e_back = _entry_from_state(lead, held) or e_back
                if e_back is not None:
                    e_back.lead, e_back.neg_amount = lead, -float(lead.amount_due)
                    entries[lead.lead_id] = e_back
                    back.append(e_back)
                    added += 1
                    continue
            dpd = lead.days_past_due
            key = (lead.segment, 0 if dpd < lo else 1 if dpd < hi else 2, lead.timezone)
            b = by_key.get(key)
            if b is None:
                b = by_key[key] = self._bucket_for(lead)
            e = entries[lead.lead_id] = _Entry(lead, b)
            added += 1
            if not lead.phones:
                self._seq = seq
                self._end(e, DONE)
                seq = self._seq
                continue
            slot = fresh.get(id(b))
            if slot is None:
                slot = fresh[id(b)] = (b, [])
            # Inlined `_set(e, PENDING)`: this loop runs a million times on a campaign load.
            seq += 1
            e.state, e.ticket = PENDING, seq
            pending += 1
            slot[1].append((e.neg_amount, seq, e))
        self._seq = seq
        self._counts[PENDING] += pending
        for b, items in fresh.values():
            # Bulk loads: heapify (O(n)) beats n pushes once the batch is a fair share of the bucket.
            if len(items) * 16 >= len(b.heap):
                b.heap.extend(items)
                heapq.heapify(b.heap)
            else:
                for it in items:
                    heapq.heappush(b.heap, it)
        for e in back:
            e.bucket = self._bucket_for(e.lead)
            if e.cb_at is not None:
                self._to_callback(e, e.cb_at, e.cb_agent)
            elif e.next_at is not None:
                self._to_timed(e, e.next_at, now)
            else:
                self._to_pending(e)  # pending or parked before: gated afresh
        return added

    def remove(self, lead_id: str, now: float) -> bool:
        """Remove a lead at once (paid today...): never selected again, its callbacks cancelled. A lead out on a
        call stays out until its outcome or release, which then ends it. False if unknown or already removed."""
        e = self._entries.get(lead_id)
        if e is None and lead_id in self._dormant:  # drained: removed like any lead held here, never back
            e = self._entries[lead_id] = self._dormant.pop(lead_id)
        if e is None or e.state == REMOVED or e.gone:
            return False
        if e.state == OUT:
            e.gone = True
            e.out_cb = e.later_cb = None
            return True
        self._end(e, REMOVED)
        return True

    def parked_with(self, phone: Callable[[str], bool]) -> list[str]:
        """Parked leads with a phone `phone` picks out (for a DNC entry taken off its list)."""
        return [lid for lid, e in self._entries.items() if e.state == PARKED and any(map(phone, e.lead.phones))]

    def unpark(self, now: float, lead_ids: Iterable[str] | None = None) -> int:
        """Put parked leads back (a gate's refusal without retry time no longer holds). Returns how many."""
        ids = [lid for lid, e in self._entries.items() if e.state == PARKED] if lead_ids is None else lead_ids
        n = 0
        for lid in ids:
            e = self._entries.get(lid)
            if e is None or e.state != PARKED:
                continue
            if e.cb_at is not None:
                self._to_callback(e, max(e.cb_at, now), e.cb_agent)
            else:
                self._to_pending(e)
            n += 1
        return n

    # -------------------------------------------------------------- selection

    def _promote(self, now: float) -> None:
        timed = self._timed
        while timed and timed[0][0] <= now:
            _, ticket, e = heapq.heappop(timed)
            if ticket == e.ticket:
                self._to_pending(e)

    def _active(self, e: _Entry) -> list[str]:
        if e.dropped is None:
            return list(e.lead.phones)
        return [p for p in e.lead.phones if p not in e.dropped]

    def _ranked(self, e: _Entry) -> list[tuple[str, str]]:
        """The lead's usable phones, best first, each with why it stands there: phones answered live (most recent,
        then most often) first, then untried / least tried in listed order, phones whose last news was a failure
        (unallocated, invalid) last."""
        phones = self._active(e)
        if len(phones) <= 1:
            return [(p, "only phone") for p in phones]
        if e.stats is None:
            return [(p, "first listed, untried" if i == 0 else "listed order, untried") for i, p in enumerate(phones)]
        keyed: list[tuple[tuple[float, ...], str, str]] = []
        for i, p in enumerate(phones):
            st = e.stats.get(p)
            if st is None:
                keyed.append(((1, 0, i), p, "untried"))
            elif st.failed and st.last_failed >= st.last_live:
                keyed.append(((2, st.failed, st.attempts, i), p, "failed before: last resort"))
            elif st.live:
                keyed.append(((0, -st.last_live, -st.live, i), p, "answered live most recently"))
            else:
                keyed.append(((1, st.attempts, i), p, "least tried"))
        keyed.sort()
        out = [(p, why) for _, p, why in keyed]
        if len(out) > 1 and keyed[0][0][0] == 0 and keyed[1][0][0] == 0:
            out[1] = (out[1][0], "answered live before")
        return out

    def _try(self, e: _Entry, now: float, gate: Gate, source: str) -> Pick | None:
        """Gate the lead's phones in rank order; the first allowed goes out. All refused: every refusal recorded,
        the lead rescheduled at the earliest retry time given, or parked when none was."""
        ranked = self._ranked(e)
        if not ranked:
            self._end(e, DONE)
            return None
        retry: float | None = None
        first_refusal: str | None = None
        for number, why in ranked:
            wait = e.waits.get(number) if e.waits is not None else None
            if wait is not None and wait[0] > now:
                if first_refusal is None:
                    first_refusal = wait[1]
                if retry is None or wait[0] < retry:
                    retry = wait[0]
                continue
            refusal = gate(e.lead, number, now)
            if refusal is None:
                if first_refusal is not None:
                    why = f"{why}; higher-ranked refused ({first_refusal})"
                agent = e.cb_agent
                if source != QUEUE:
                    e.out_cb = (e.cb_at if e.cb_at is not None else now, agent)
                e.next_at = e.cb_at = e.cb_agent = None
                e.out_number, e.out_at, e.out_source = number, now, source
                self._set(e, OUT)
                return Pick(e.lead, number, why, source, agent if source == AGENT_CALLBACK else None)
            reason = str(refusal.reason)
            self.refusals.append((e.lead.lead_id, number, reason, now))
            if first_refusal is None:
                first_refusal = reason
            at = getattr(refusal, "retry_at", None)
            if at is not None and (retry is None or at < retry):
                retry = float(at)
            if at is not None and at > now and reason in CALENDAR_REFUSALS:
                if e.waits is None:
                    e.waits = {}
                e.waits[number] = (float(at), reason)
        if source == QUEUE:
            if retry is None:
                self._park(e)
            else:
                # Never before the next select: a retry time in the past must not loop within this one.
                e.next_at = max(retry, now)
                heapq.heappush(self._timed, (e.next_at, self._set(e, SCHEDULED), e))
        elif retry is None:
            self._park(e)  # keeps cb_at / cb_agent for unpark
        else:
            self._to_callback(e, max(retry, now), e.cb_agent)
        return None

    def _rates(self, now: float) -> dict[int, float]:
        """Answer rate at this hour per bucket (by id), for best-time ordering; one zone lookup per bucket."""
        clock, rates = self._clock, self.answer_rates
        return {id(b): rates.rate(b.segment, clock.hour_of_week(now, b.tz)) for b in self._buckets.values()}

    def select(self, count: int, now: float, gate: Gate = allow_all) -> list[Pick]:
        """Up to `count` leads to dial now, each marked out: due campaign-wide callbacks first (earliest first),
        then by priority, best-time answer rate (when on), amount due. Gated candidates are skipped."""
        picks: list[Pick] = []
        if count <= 0:
            return picks
        self._promote(now)
        cbs = self._callbacks
        # Only callbacks queued before this call: one refused with a retry time ≤ now is pushed back due, and must
        # wait for the next call (tickets grow, so anything pushed meanwhile has a larger one).
        before = self._seq
        while cbs and len(picks) < count and cbs[0][0] <= now and cbs[0][1] <= before:
            _, ticket, e = heapq.heappop(cbs)
            if ticket == e.ticket:
                pick = self._try(e, now, gate, CALLBACK)
                if pick is not None:
                    picks.append(pick)
        if len(picks) >= count:
            return picks
        rates = self._rates(now) if self.rules.best_time else None
        tops: list[tuple[int, float, float, int, _Bucket]] = []
        for b in self._buckets.values():
            h = b.heap
            while h and h[0][1] != h[0][2].ticket:
                heapq.heappop(h)
            if h:
                tops.append((-b.priority, -rates[id(b)] if rates else 0.0, h[0][0], h[0][1], b))
        heapq.heapify(tops)
        while tops and len(picks) < count:
            top = tops[0]
            h = top[4].heap
            e = heapq.heappop(h)[2]  # valid: tops are cleaned before they enter `tops`
            pick = self._try(e, now, gate, QUEUE)
            if pick is not None:
                picks.append(pick)
            while h and h[0][1] != h[0][2].ticket:
                heapq.heappop(h)
            if h:
                heapq.heapreplace(tops, (top[0], top[1], h[0][0], h[0][1], top[4]))
            else:
                heapq.heappop(tops)
        return picks

    def due_agent_callbacks(self, agent_id: str, now: float, gate: Gate = allow_all,
                            count: int | None = None) -> list[Pick]:
        """The callbacks owned by `agent_id` that are due, earliest first, marked out; they go to that agent only
        and `select` never returns them. Pass the campaign's gate: compliance holds for callbacks too."""
        picks: list[Pick] = []
        heap = self._agent_cbs.get(agent_id)
        before = self._seq  # as in `select`: a callback refused and pushed back due waits for the next call
        while heap and heap[0][0] <= now and heap[0][1] <= before and (count is None or len(picks) < count):
            _, ticket, e = heapq.heappop(heap)
            if ticket == e.ticket:
                pick = self._try(e, now, gate, AGENT_CALLBACK)
                if pick is not None:
                    picks.append(pick)
        return picks

    def reassign_agent_callbacks(self, agent_id: str, to_agent: str | None = None, due_by: float | None = None) -> int:
        """Hand an agent's pending callbacks (only those due by `due_by` when given) to another agent, or to the
        campaign (None): e.g. the agent left."""
        heap = self._agent_cbs.pop(agent_id, [])
        keep: list[tuple[float, int, _Entry]] = []
        n = 0
        for item in heap:
            at, ticket, e = item
            if ticket != e.ticket:
                continue
            if due_by is not None and at > due_by:
                keep.append(item)
            else:
                self._to_callback(e, at, to_agent)
                n += 1
        if keep:
            heapq.heapify(keep)
            self._agent_cbs[agent_id] = keep
        return n

    def callback_owners(self) -> list[str]:
        """The agents who own a callback here (some entries may be stale)."""
        return [agent_id for agent_id, heap in self._agent_cbs.items() if heap]

    # -------------------------------------------------------------- results

    def schedule_callback(self, lead_id: str, at: float, agent_id: str | None = None) -> bool:
        """Call the lead back at `at` (epoch seconds; see `local_time_to_epoch`), by `agent_id` only when given.
        A lead out on a call gets it when the call's outcome comes back. False if the lead is done, removed or
        unknown."""
        if not math.isfinite(at):
            raise ValueError(f"at: expected epoch seconds, got {at!r}")
        e = self._entries.get(lead_id)
        if e is None or e.state in (DONE, REMOVED) or e.gone:
            return False
        if e.state == OUT:
            e.later_cb = (at, agent_id)
        else:
            self._to_callback(e, at, agent_id)
        return True

    def _drop_phone(self, e: _Entry, number: str) -> None:
        if e.dropped is None:
            e.dropped = set()
        e.dropped.add(number)

    def _record_phone(self, e: _Entry, number: str, outcome: Outcome, now: float) -> None:
        if number not in e.lead.phones:
            return
        if e.stats is None:
            e.stats = {}
        st = e.stats.get(number)
        if st is None:
            st = e.stats[number] = _PhoneStat()
        st.attempts += 1
        if outcome.live:
            st.live += 1
            st.last_live = now
        elif outcome is Outcome.FAILED:
            st.failed += 1
            st.last_failed = now
        if st.attempts >= self.rules.max_attempts_phone:
            self._drop_phone(e, number)

    def _settle(self, e: _Entry, number: str, disposition: DispositionCode | None, now: float,
                callback: tuple[float, str | None] | None, recycle_at: float | None) -> str:
        """Where a lead back from a call (or newly disposed) goes: ended, called back, or recycled."""
        if disposition is not None and (disposition.wrong_party or disposition.dnc) and number in e.lead.phones:
            self._drop_phone(e, number)
        if e.gone:
            self._end(e, REMOVED)
        elif (disposition is not None and disposition.final) or e.attempts >= self.rules.max_attempts_lead \
                or not self._active(e):
            self._end(e, DONE)
        elif callback is not None:
            self._to_callback(e, callback[0], callback[1])
        elif recycle_at is not None:
            self._to_timed(e, recycle_at, now)
        return STATE_NAMES[e.state]

    @staticmethod
    def _check_callback(disposition: DispositionCode | None, callback_at: float | None) -> None:
        if disposition is not None and disposition.callback and callback_at is None:
            raise ValueError(f"callback_at: required for disposition {disposition.code}")
        if callback_at is not None and not math.isfinite(callback_at):
            raise ValueError(f"callback_at: expected epoch seconds, got {callback_at!r}")

    def outcome(self, lead_id: str, number: str, outcome: Outcome, now: float, *,
                disposition: DispositionCode | None = None, callback_at: float | None = None,
                callback_agent: str | None = None) -> str:
        """Take a lead back from a call: count the attempt (lead and phone; not for `lost`, a dial never made), learn
        the answer rate, then end it (final disposition, a cap reached, no usable phone left, removed meanwhile),
        schedule its callback, or recycle it after the outcome's delay. Returns the lead's new state name."""
        e = self._entries.get(lead_id)
        if e is None or e.state != OUT:
            raise ValueError(f"lead {lead_id!r} is not out on a call")
        outcome = Outcome(outcome)
        self._check_callback(disposition, callback_at)
        if outcome is Outcome.LOST:
            # The dial was never made (not sent, its record too late, a DID capped on another node): no attempt,
            # nothing learnt, and the callback it came from stands. Counted, ten in a row (a link flap) ended a
            # lead that never rang.
            callback = (callback_at, callback_agent) if callback_at is not None else e.later_cb or e.out_cb
        else:
            e.attempts += 1
            self.answer_rates.record(e.lead.segment, self._clock.hour_of_week(e.out_at, e.lead.timezone),
                                     outcome.live)
            self._record_phone(e, number, outcome, now)
            callback = (callback_at, callback_agent) if callback_at is not None else e.later_cb
        e.out_cb = e.later_cb = None
        delay = self.rules.recycle_delays.get(outcome, 0.0)
        return self._settle(e, number, disposition, now, callback, now + delay)

    def dispose(self, lead_id: str, number: str, disposition: DispositionCode, now: float, *,
                callback_at: float | None = None, callback_agent: str | None = None) -> str:
        """Apply a disposition posted after the call's outcome came back (wrap-up): a final code ends the lead,
        wrong_party/dnc drop `number`, a callback is scheduled. No attempt is counted."""
        e = self._entries.get(lead_id)
        if e is None:
            raise ValueError(f"lead {lead_id!r} is unknown")
        if e.state == OUT:
            raise ValueError(f"lead {lead_id!r} is out on a call: pass the disposition with its outcome")
        self._check_callback(disposition, callback_at)
        if e.state in (DONE, REMOVED):
            return STATE_NAMES[e.state]
        callback = (callback_at, callback_agent) if callback_at is not None else None
        return self._settle(e, number, disposition, now, callback, None)

    def release(self, lead_id: str, now: float) -> bool:
        """Back unattempted (preview skip, link down before dialing): no attempt counted; a callback it came from
        is restored. False if the lead is not out."""
        e = self._entries.get(lead_id)
        if e is None or e.state != OUT:
            return False
        callback = e.later_cb or e.out_cb
        e.out_cb = e.later_cb = None
        if e.gone:
            self._end(e, REMOVED)
        elif callback is not None:
            self._to_callback(e, callback[0], callback[1])
        else:
            self._to_pending(e)
        return True

    def drain(self, keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Let go of every lead not out on a call, not finished and not in `keep` (campaign stopped): their ids, to
        hand back to the store untouched. Leads out on a call stay until their outcome comes back. What the hopper
        knew of a drained lead (attempts, phones, recycle time, callback) is kept aside and restored if it is added
        again."""
        gone = [lead_id for lead_id in self.waiting() if lead_id not in keep]
        for lead_id in gone:
            e = self._entries.pop(lead_id)
            self._counts[e.state] -= 1
            e.ticket = e.state = -1  # stale in every heap: lazily dropped
            self._dormant[lead_id] = e
        return gone

    def let_go(self, lead_id: str) -> bool:
        """Forget a waiting lead that is no longer this node's (its lease lost): nothing kept aside, the store's
        state of it is the one that counts. False if it is not waiting here (out on a call, ended, unknown)."""
        e = self._entries.get(lead_id)
        if e is None or e.state not in (PENDING, SCHEDULED, PARKED):
            return False
        del self._entries[lead_id]
        self._counts[e.state] -= 1
        e.ticket = e.state = -1  # stale in every heap: lazily dropped
        return True

    def handoff_state(self, lead_id: str) -> tuple[dict[str, Any], float | None] | None:
        """What the hopper knows of a lead it drained (`drain`) or holds waiting, for the store to keep with the
        lead so that the node leasing it next (`add(..., states=)`) goes on from there: a small versioned JSON-able
        mapping, and the time before which it must not be dialed (its callback, else its recycle or retry time;
        None: at once). Phones are named by their place in the lead's list, never by number. None if the lead is
        neither drained nor waiting here (out on a call, ended, unknown)."""
        e = self._dormant.get(lead_id)
        if e is None:
            e = self._entries.get(lead_id)
            if e is None or e.state not in (PENDING, SCHEDULED, PARKED):
                return None
        phones = e.lead.phones
        doc: dict[str, Any] = {"v": STATE_VERSION}
        if e.attempts:
            doc["n"] = e.attempts
        if e.stats:
            doc["p"] = [[phones.index(p), st.attempts, st.live, st.failed, _finite(st.last_live),
                         _finite(st.last_failed)] for p, st in e.stats.items() if p in phones]
        if e.dropped:
            doc["d"] = sorted(phones.index(p) for p in e.dropped if p in phones)
        if e.waits:
            doc["w"] = [[phones.index(p), until, why] for p, (until, why) in e.waits.items() if p in phones]
        if e.next_at is not None:
            doc["t"] = e.next_at
        if e.cb_at is not None:
            doc["cb"] = e.cb_at
            if e.cb_agent is not None:
                doc["ag"] = e.cb_agent
        return doc, e.cb_at if e.cb_at is not None else e.next_at

    # -------------------------------------------------------------- reading

    def waiting(self) -> list[str]:
        """The leads held here that are still to be dialed (pending, scheduled or parked): their ids."""
        return [lead_id for lead_id, e in self._entries.items() if e.state in (PENDING, SCHEDULED, PARKED)]

    def counts(self) -> dict[str, int]:
        return dict(zip(STATE_NAMES, self._counts, strict=True))

    @property
    def pending(self) -> int:
        """Leads eligible now (cheap: the core asks twice per pacing pass)."""
        return self._counts[PENDING]

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def has_agent_callbacks(self) -> bool:
        """Some agent owns a callback (cheap: the pacer asks every tick)."""
        return any(self._agent_cbs.values())

    def lead(self, lead_id: str) -> Lead | None:
        e = self._entries.get(lead_id)
        return None if e is None else e.lead

    def callbacks(self) -> list[tuple[str, float, str | None]]:
        """Scheduled callbacks (lead id, when, owning agent or None), earliest first; those of leads out on a
        call (asked for during the call) included."""
        out: list[tuple[str, float, str | None]] = []
        for lead_id, e in self._entries.items():
            if e.state == SCHEDULED and e.cb_at is not None:
                out.append((lead_id, e.cb_at, e.cb_agent))
            elif e.state == OUT and e.later_cb is not None:
                out.append((lead_id, e.later_cb[0], e.later_cb[1]))
        out.sort(key=lambda x: (x[1], x[0]))
        return out

    def info(self, lead_id: str) -> LeadInfo | None:
        e = self._entries.get(lead_id)
        if e is None:
            return None
        return LeadInfo(
            state=STATE_NAMES[e.state], attempts=e.attempts, phones=tuple(self._active(e)),
            phone_attempts={p: st.attempts for p, st in (e.stats or {}).items()},
            next_at=e.next_at, callback_at=e.cb_at, callback_agent=e.cb_agent)
