"""Caller-ID pools: which operator-owned DID to show on each dial (issue #4, item 4).

Pure and deterministic: time comes in as `now` (epoch seconds), ties are broken by a seeded numpy Generator.
The numbers are DIDs the operator owns, with hard per-DID caps; rotation spreads load for reputation and never
serves to dodge a block (a resting DID simply is not shown, nothing is disguised).

Choice order for a debtor: the sticky DID last shown to that debtor (same number on repeat calls) if usable;
else a local DID (same area as the debtor's number), least used in the last hour first; else a DID of the same
country; else any pool DID; else PoolExhausted with the earliest instant one becomes usable again.

Cost per choice is O(log n) amortised: each DID sits in three lazy-deletion heaps (its area, its country, the
whole pool) keyed by its hour count, and cap windows expire through time-ordered queues, so nothing scans the pool
and unusable DIDs wait in a heap keyed by when they become usable again (PoolExhausted's retry_at).

Reputation rests use a statistical test, not a fixed threshold: a DID with 40 attempts at 10% may be plain luck
in a 20% pool, while 400 attempts at 10% is not; a fixed cut-off either rests lucky-bad small samples or misses
large real drops. The test (one-sided two-proportion z-test of the DID against the pool without it) is run each
time a DID's attempts reach a multiple of `min_attempts`. Because the same counters are tested again and again and
many DIDs are tested, the per-look level is `significance` spent over looks (6/(π²k²) at look k, summing to 1) and
divided among the DIDs under test (Bonferroni), so `significance` bounds the chance that a pool whose DIDs all
answer alike ever rests one of them during a counter epoch. The normal approximation is conservative for the
lower tail when the answer rate is below one half (binomial lower tails are lighter than normal ones there).
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import numpy as np
import phonenumbers

HOUR_S = 3600.0
DAY_S = 86400.0
_E164_MAX_DIGITS = 15
_LOOK_SPEND = 6.0 / (math.pi**2)  # Σ 1/k² = π²/6, so Σ_k _LOOK_SPEND/k² = 1

Reason = Literal["sticky", "local", "pool"]


@dataclass(frozen=True, slots=True)
class CallerIdChoice:
    """What the core records on the attempt: the DID shown, why it was chosen, and the debtor's area it targeted
    (None when the debtor's number could not be placed)."""

    did: str
    reason: Reason
    area: str | None


@dataclass(slots=True)
class DidHealth:
    did: str
    area: str
    attempts: int
    live_answers: int
    answer_rate: float | None  # None before any attempt
    short_calls: int
    short_call_ratio: float | None  # short / live answers with a known talk time; None before any
    hour_count: int
    day_count: int
    resting_until: float | None
    rests: int


class PoolExhausted(Exception):
    """Every DID is capped or resting (or the pool is empty). retry_at: earliest instant a DID is usable again,
    None when no DID could ever be (empty pool)."""

    def __init__(self, message: str, retry_at: float | None) -> None:
        super().__init__(message)
        self.retry_at = retry_at


@dataclass(frozen=True, slots=True)
class _Place:
    area: str | None  # "+1 212", "+44 20", "+57 601", or a region code ("ES") for non-geographic numbers
    country: int | None


@lru_cache(maxsize=65536)
def _place(number: str) -> _Place:
    """Area and country of a number; lenient (unparseable → unknown) because debtor data is not ours to reject."""
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return _Place(None, None)
    cc = parsed.country_code
    nsn = phonenumbers.national_significant_number(parsed)
    if cc == 1:
        return _Place(f"+1 {nsn[:3]}" if len(nsn) >= 3 else None, 1)
    n = phonenumbers.length_of_geographical_area_code(parsed)
    if n > 0:
        return _Place(f"+{cc} {nsn[:n]}", cc)
    region = phonenumbers.region_code_for_number(parsed)
    # Region code keeps non-geographic numbers (mobiles) matchable within a country; "+cc" when even that is unknown.
    return _Place(region if region and region != "001" else f"+{cc}", cc)


def area_of(number: str) -> str | None:
    """The area key used for local presence (exposed for the core and the API)."""
    return _place(number).area


def _validate_did(did: str, index: int) -> str:
    digits = did[1:]
    ok = did.startswith("+") and digits.isdigit() and 2 <= len(digits) <= _E164_MAX_DIGITS and digits[0] != "0"
    if ok:
        try:
            ok = phonenumbers.is_valid_number(phonenumbers.parse(did, None))
        except phonenumbers.NumberParseException:
            ok = False
    if not ok:
        raise ValueError(f"did_pool[{index}]: not a valid E.164 number: {did!r}")
    return did


@dataclass(slots=True)
class _Did:
    did: str
    area: str
    country: int
    hour: deque[float] = field(default_factory=deque)  # use instants within the last hour, oldest first
    day: deque[float] = field(default_factory=deque)  # use instants within the last day, oldest first
    active: bool = True
    resting_until: float | None = None
    rests: int = 0
    version: int = 0  # bumped whenever its heap key or eligibility changes; stale heap entries are skipped
    attempts: int = 0
    live: int = 0
    short: int = 0
    timed: int = 0  # live answers with a known talk time (the short-call ratio's denominator)


_Entry = tuple[int, float, str, int]  # (hour count, seeded tiebreak, did, version)


class CallerIdPool:
    """One campaign's DIDs with caps, stickiness, local presence and reputation rests."""

    def __init__(
        self,
        pool_id: str,
        dids: Sequence[str],
        *,
        hour_cap: int = 60,
        day_cap: int = 300,
        rest_s: float = 86400.0,
        significance: float = 0.01,
        min_attempts: int = 100,
        short_call_s: float = 6.0,
        sticky: bool = True,
        seed: int = 0,
        sticky_max: int = 1_000_000,
    ) -> None:
        if hour_cap < 1 or day_cap < 1:
            raise ValueError("hour_cap and day_cap must be at least 1")
        if not 0.0 < significance < 1.0:
            raise ValueError("significance must be in (0, 1)")
        if min_attempts < 1 or rest_s < 0 or sticky_max < 1:
            raise ValueError("min_attempts and sticky_max must be ≥ 1, rest_s ≥ 0")
        self.pool_id = pool_id
        self.hour_cap = hour_cap
        self.day_cap = day_cap
        self.rest_s = rest_s
        self.significance = significance
        self.min_attempts = min_attempts
        self.short_call_s = short_call_s
        self.sticky = sticky
        self.sticky_max = sticky_max
        self._rng = np.random.default_rng(seed)
        self._now = -math.inf
        self._dids: dict[str, _Did] = {}  # active DIDs, and removed ones whose cap windows still hold uses
        self._heaps: dict[object, list[_Entry]] = {}  # group key → heap; keys: ("a", area), ("c", cc), ("*",)
        self._hour_q: deque[tuple[float, str]] = deque()  # every use, in time order, for hour-window expiry
        self._day_q: deque[tuple[float, str]] = deque()
        self._rest_q: list[tuple[float, str]] = []  # (rest end, did) heap
        self._wake: list[tuple[float, str, int]] = []  # (usable again at, did, version) heap of unusable DIDs
        self._sticky: OrderedDict[str, str] = OrderedDict()  # lead_id → DID last shown, LRU-bounded
        # Totals over DIDs whose counters are live (active, not resting): the "pool" a DID is tested against.
        self._tot_attempts = 0
        self._tot_live = 0
        self._testing = 0  # how many DIDs have live counters (the Bonferroni divisor)
        seen: set[str] = set()
        for i, did in enumerate(dids):
            _validate_did(did, i)
            if did in seen:
                raise ValueError(f"did_pool[{i}]: a duplicate of an earlier DID: {did!r}")
            seen.add(did)
            self._insert(did)

    # ---- operator changes ----------------------------------------------------------------------------------------

    def add(self, did: str) -> None:
        """Add a DID (idempotent). A DID removed and re-added keeps its cap windows: its recent uses still count."""
        _validate_did(did, len(self._active()))
        st = self._dids.get(did)
        if st is None:
            self._insert(did)
        elif not st.active:
            st.active = True
            self._counters_join(st)
            self._touch(st)

    def remove(self, did: str) -> None:
        """Stop showing a DID at once. Its uses stay in the cap windows in case it is re-added."""
        st = self._dids.get(did)
        if st is None or not st.active:
            raise KeyError(f"DID {did!r} is not in caller-ID pool {self.pool_id!r}")
        self._counters_leave(st)
        st.active = False
        st.version += 1
        if not st.day:
            del self._dids[did]

    def reconfigure(self, dids: Sequence[str], hour_cap: int, day_cap: int) -> None:
        """Take an edited pool and caps in place: the DIDs kept keep their cap windows, counters and the debtors
        they are sticky to (a new pool would start every DID's hour and day at zero, over its caps)."""
        if hour_cap < 1 or day_cap < 1:
            raise ValueError("hour_cap and day_cap must be at least 1")
        for i, did in enumerate(dids):
            _validate_did(did, i)
        wanted = set(dids)
        for st in self._active():
            if st.did not in wanted:
                self.remove(st.did)
        for did in dids:
            self.add(did)
        if (hour_cap, day_cap) != (self.hour_cap, self.day_cap):
            self.hour_cap, self.day_cap = hour_cap, day_cap
            for st in self._active():
                self._touch(st)  # eligibility and wake-up times follow the new caps

    @property
    def dids(self) -> list[str]:
        return sorted(st.did for st in self._active())

    # ---- the choice ----------------------------------------------------------------------------------------------

    def choose(self, lead_id: str, number: str, now: float) -> CallerIdChoice:
        """Pick the DID for one dial of `number` (debtor `lead_id`) and count it as a use at `now`."""
        now = self._advance(now)
        place = _place(number)
        if self.sticky:
            prev = self._sticky.get(lead_id)
            if prev is not None:
                st = self._dids.get(prev)
                if st is not None and self._eligible(st):
                    return self._use(st, lead_id, "sticky", place.area, now)
        if place.area is not None:
            st = self._pick(("a", place.area))
            if st is not None:
                return self._use(st, lead_id, "local", place.area, now)
        if place.country is not None:
            st = self._pick(("c", place.country))
            if st is not None:
                return self._use(st, lead_id, "pool", place.area, now)
        st = self._pick(("*",))
        if st is not None:
            return self._use(st, lead_id, "pool", place.area, now)
        retry = self._retry_at()
        why = "is empty" if retry is None else f"has every DID capped or resting until {retry:.0f}"
        raise PoolExhausted(f"caller-ID pool {self.pool_id!r} {why}", retry)

    def _use(self, st: _Did, lead_id: str, reason: Reason, area: str | None, now: float) -> CallerIdChoice:
        st.hour.append(now)
        st.day.append(now)
        self._hour_q.append((now, st.did))
        self._day_q.append((now, st.did))
        self._touch(st)
        if self.sticky:
            self._sticky[lead_id] = st.did
            self._sticky.move_to_end(lead_id)
            if len(self._sticky) > self.sticky_max:
                self._sticky.popitem(last=False)
        return CallerIdChoice(st.did, reason, area)

    def _eligible(self, st: _Did) -> bool:
        return (
            st.active
            and st.resting_until is None
            and len(st.hour) < self.hour_cap
            and len(st.day) < self.day_cap
        )

    def _pick(self, key: object) -> _Did | None:
        heap = self._heaps.get(key)
        while heap:
            _, _, did, version = heap[0]
            st = self._dids.get(did)
            if st is not None and st.version == version and self._eligible(st):
                return st
            heapq.heappop(heap)
        return None

    def _touch(self, st: _Did) -> None:
        """The DID's hour count or eligibility changed: invalidate its heap entries, re-enter if usable."""
        st.version += 1
        if not self._eligible(st):
            if st.active:
                heapq.heappush(self._wake, (self._eligible_at(st), st.did, st.version))
                if len(self._wake) > 64 and len(self._wake) > 4 * len(self._dids):
                    self._wake[:] = [w for w in self._wake if (x := self._dids.get(w[1])) and x.version == w[2]]
                    heapq.heapify(self._wake)
            return
        entry: _Entry = (len(st.hour), float(self._rng.random()), st.did, st.version)
        for key in (("a", st.area), ("c", st.country), ("*",)):
            heap = self._heaps.setdefault(key, [])
            heapq.heappush(heap, entry)
            if len(heap) > 64 and len(heap) > 4 * len(self._dids):
                self._compact(heap)

    def _compact(self, heap: list[_Entry]) -> None:
        """Drop stale entries; amortised O(1) per push because it runs only once the heap has grown 4× the pool."""
        live = [e for e in heap if (st := self._dids.get(e[2])) and st.version == e[3] and self._eligible(st)]
        heapq.heapify(live)
        heap[:] = live

    def _eligible_at(self, st: _Did) -> float:
        """When an unusable DID becomes usable again, if nothing else happens to it (it gets no uses meanwhile)."""
        at = -math.inf if st.resting_until is None else st.resting_until
        if len(st.hour) >= self.hour_cap:  # frees when the use that keeps it at the cap leaves the window
            at = max(at, st.hour[len(st.hour) - self.hour_cap] + HOUR_S)
        if len(st.day) >= self.day_cap:
            at = max(at, st.day[len(st.day) - self.day_cap] + DAY_S)
        return at

    def _retry_at(self) -> float | None:
        while self._wake:
            at, did, version = self._wake[0]
            st = self._dids.get(did)
            if st is not None and st.version == version:
                return at
            heapq.heappop(self._wake)
        return None

    # ---- time ----------------------------------------------------------------------------------------------------

    def _advance(self, now: float) -> float:
        """Expire cap windows and end rests up to `now`. Time never runs backwards here: an earlier `now` is read
        as the latest seen, which only keeps uses in their windows longer (caps stay safe)."""
        now = max(now, self._now)
        self._now = now
        changed: dict[str, _Did] = {}
        while self._hour_q and self._hour_q[0][0] + HOUR_S <= now:
            _, did = self._hour_q.popleft()
            st = self._dids[did]
            st.hour.popleft()
            changed[did] = st
        while self._day_q and self._day_q[0][0] + DAY_S <= now:
            _, did = self._day_q.popleft()
            st = self._dids[did]
            st.day.popleft()
            changed[did] = st
        while self._rest_q and self._rest_q[0][0] <= now:
            until, did = heapq.heappop(self._rest_q)
            st_r = self._dids.get(did)
            if st_r is not None and st_r.resting_until == until:
                self._end_rest(st_r)
                changed[did] = st_r
        for did, st in changed.items():
            if not st.active and not st.day:
                del self._dids[did]
            else:
                self._touch(st)
        return now

    # ---- reputation ----------------------------------------------------------------------------------------------

    def record(self, did: str, now: float, *, answered_live: bool, talk_s: float | None = None) -> None:
        """Outcome of a dial shown with `did`. Ignored for DIDs no longer in the pool and for DIDs resting (those
        outcomes belong to the counters the rest is about to restart)."""
        now = self._advance(now)
        st = self._dids.get(did)
        if st is None or not st.active or st.resting_until is not None:
            return
        st.attempts += 1
        self._tot_attempts += 1
        if answered_live:
            st.live += 1
            self._tot_live += 1
            if talk_s is not None:
                st.timed += 1
                if talk_s < self.short_call_s:
                    st.short += 1
        if st.attempts >= self.min_attempts and st.attempts % self.min_attempts == 0 and self._significantly_low(st):
            self._start_rest(st, now)

    def _significantly_low(self, st: _Did) -> bool:
        n1, x1 = st.attempts, st.live
        n2, x2 = self._tot_attempts - n1, self._tot_live - x1
        if n2 < self.min_attempts:  # no reference worth testing against
            return False
        p = (x1 + x2) / (n1 + n2)
        if p <= 0.0 or p >= 1.0:
            return False
        z = (x1 / n1 - x2 / n2) / math.sqrt(p * (1.0 - p) * (1.0 / n1 + 1.0 / n2))
        p_value = 0.5 * math.erfc(-z / math.sqrt(2.0))
        look = n1 // self.min_attempts
        level = self.significance * _LOOK_SPEND / (look * look) / max(1, self._testing)
        return p_value < level

    def _start_rest(self, st: _Did, now: float) -> None:
        self._counters_leave(st)
        st.resting_until = now + self.rest_s
        st.rests += 1
        heapq.heappush(self._rest_q, (st.resting_until, st.did))
        self._touch(st)

    def _end_rest(self, st: _Did) -> None:
        st.resting_until = None
        st.attempts = st.live = st.short = st.timed = 0  # a fresh chance
        if st.active:
            self._counters_join(st)

    def _counters_join(self, st: _Did) -> None:
        if st.resting_until is None:
            self._tot_attempts += st.attempts
            self._tot_live += st.live
            self._testing += 1

    def _counters_leave(self, st: _Did) -> None:
        if st.active and st.resting_until is None:
            self._tot_attempts -= st.attempts
            self._tot_live -= st.live
            self._testing -= 1

    # ---- reading -------------------------------------------------------------------------------------------------

    def health(self, now: float) -> list[DidHealth]:
        """Per active DID, sorted by DID: reputation counters (since the last rest) and cap-window counts at `now`."""
        self._advance(now)
        out = []
        for st in sorted(self._active(), key=lambda s: s.did):
            out.append(
                DidHealth(
                    did=st.did,
                    area=st.area,
                    attempts=st.attempts,
                    live_answers=st.live,
                    answer_rate=st.live / st.attempts if st.attempts else None,
                    short_calls=st.short,
                    short_call_ratio=st.short / st.timed if st.timed else None,
                    hour_count=len(st.hour),
                    day_count=len(st.day),
                    resting_until=st.resting_until,
                    rests=st.rests,
                )
            )
        return out

    def sticky_for(self, lead_id: str) -> str | None:
        return self._sticky.get(lead_id)

    # ---- internals -----------------------------------------------------------------------------------------------

    def _active(self) -> list[_Did]:
        return [st for st in self._dids.values() if st.active]

    def _insert(self, did: str) -> None:
        place = _place(did)
        assert place.area is not None and place.country is not None  # a valid DID always has both
        st = _Did(did=did, area=place.area, country=place.country)
        self._dids[did] = st
        self._counters_join(st)
        self._touch(st)
