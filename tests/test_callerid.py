"""Caller-ID pools: local presence, stickiness, caps (property-tested against an independent count), exhaustion,
reputation rests by a statistical test, health figures, validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dialer.callerid import DAY_S, HOUR_S, CallerIdPool, PoolExhausted, area_of

NYC, NYC2, SF = "+12125550101", "+12125550102", "+14155550101"
LONDON, MANCHESTER = "+442079460001", "+441612345678"
BOGOTA, MEDELLIN = "+576012345678", "+576042345678"
ALL = [NYC, NYC2, SF, LONDON, MANCHESTER, BOGOTA, MEDELLIN]


def test_areas_of_us_uk_co_numbers() -> None:
    assert area_of("+12125551234") == "+1 212"
    assert area_of("+14155559999") == "+1 415"
    assert area_of("+442079460000") == "+44 20"
    assert area_of("+441612000000") == "+44 161"
    assert area_of("+576012000000") == "+57 601"  # Bogotá since the 2021 Colombian numbering plan
    assert area_of("+34612345678") == "ES"  # a mobile: no geographic area, the region stands in
    assert area_of("not a number") is None


@pytest.mark.parametrize(
    ("debtor", "expected"),
    [
        ("+12125559876", {NYC, NYC2}),
        ("+14155551234", {SF}),
        ("+442079461234", {LONDON}),
        ("+441619998888", {MANCHESTER}),
        ("+576019998888", {BOGOTA}),
        ("+576049998888", {MEDELLIN}),
    ],
)
def test_local_presence(debtor: str, expected: set[str]) -> None:
    pool = CallerIdPool("p", ALL)
    choice = pool.choose("lead-1", debtor, 0.0)
    assert choice.did in expected
    assert choice.reason == "local"
    assert choice.area == area_of(debtor)


def test_same_country_before_any_then_any() -> None:
    pool = CallerIdPool("p", ALL, sticky=False)
    # Miami has no DID: a US DID, never a UK or CO one.
    assert {pool.choose(f"l{i}", "+13055550123", float(i)).did for i in range(30)} <= {NYC, NYC2, SF}
    # Legacy Bogotá format "+57 1 ...": not placeable to an area, still Colombian.
    legacy = pool.choose("l", "+5716012345", 100.0)
    assert legacy.did in {BOGOTA, MEDELLIN} and legacy.reason == "pool"
    # Spain: no Spanish DID at all, any DID will do.
    assert pool.choose("l", "+34612345678", 200.0).reason == "pool"


def test_local_prefers_least_used_this_hour() -> None:
    pool = CallerIdPool("p", [NYC, NYC2, SF], sticky=False)
    first = pool.choose("a", "+12125559876", 0.0).did
    second = pool.choose("b", "+12125559877", 1.0).did
    assert {first, second} == {NYC, NYC2}
    counts = {h.did: h.hour_count for h in pool.health(2.0)}
    assert counts == {NYC: 1, NYC2: 1, SF: 0}


def test_sticky_on_repeat_and_moves_off_when_capped() -> None:
    pool = CallerIdPool("p", [NYC, NYC2, SF], hour_cap=2)
    c1 = pool.choose("debtor", "+12125559876", 0.0)
    c2 = pool.choose("debtor", "+12125559876", 60.0)
    assert c2.did == c1.did and c2.reason == "sticky"
    c3 = pool.choose("debtor", "+12125559876", 120.0)  # c1.did is at its hour cap
    assert c3.did != c1.did and c3.did in {NYC, NYC2} and c3.reason == "local"
    c4 = pool.choose("debtor", "+12125559876", 180.0)
    assert c4.did == c3.did and c4.reason == "sticky"
    # Back within caps after the hour: still sticks to the last number shown.
    assert pool.choose("debtor", "+12125559876", HOUR_S + 200.0).did == c3.did


def test_sticky_off_and_lru_bound() -> None:
    pool = CallerIdPool("p", [NYC, NYC2], sticky_max=3)
    for i in range(5):
        pool.choose(f"d{i}", "+12125559876", float(i))
    assert pool.sticky_for("d0") is None and pool.sticky_for("d1") is None
    assert pool.sticky_for("d4") is not None
    off = CallerIdPool("p", [NYC, NYC2], sticky=False)
    a = off.choose("d", "+12125559876", 0.0)
    b = off.choose("d", "+12125559876", 1.0)
    assert a.did != b.did and b.reason == "local"  # least used wins, no stickiness


def test_removed_did_not_chosen_and_sticky_moves() -> None:
    pool = CallerIdPool("p", [NYC, NYC2])
    first = pool.choose("d", "+12125559876", 0.0).did
    pool.remove(first)
    again = pool.choose("d", "+12125559876", 1.0)
    assert again.did != first and again.reason == "local"
    with pytest.raises(KeyError):
        pool.remove(first)
    pool.add(first)
    assert first in pool.dids


def test_exhausted_retry_at_hour_cap() -> None:
    pool = CallerIdPool("p", [NYC, SF], hour_cap=1)
    pool.choose("a", NYC, 0.0)
    pool.choose("b", NYC, 10.0)
    with pytest.raises(PoolExhausted) as exc:
        pool.choose("c", NYC, 20.0)
    assert exc.value.retry_at == pytest.approx(HOUR_S)
    assert "'p'" in str(exc.value)
    with pytest.raises(PoolExhausted):
        pool.choose("c", NYC, HOUR_S - 0.001)
    assert pool.choose("c", NYC, HOUR_S).did == NYC  # the DID used at 0 frees first


def test_exhausted_retry_at_day_cap_and_empty_pool() -> None:
    pool = CallerIdPool("p", [NYC], hour_cap=5, day_cap=3)
    for t in (0.0, 100.0, 5000.0):
        pool.choose("a", NYC, t)
    with pytest.raises(PoolExhausted) as exc:
        pool.choose("a", NYC, 6000.0)
    assert exc.value.retry_at == pytest.approx(DAY_S)
    empty = CallerIdPool("e", [])
    with pytest.raises(PoolExhausted) as exc2:
        empty.choose("a", NYC, 0.0)
    assert exc2.value.retry_at is None


@settings(max_examples=150, deadline=None)
@given(
    n_dids=st.integers(1, 4),
    hour_cap=st.integers(1, 4),
    day_cap=st.integers(1, 10),
    ops=st.lists(
        st.tuples(
            st.floats(0.0, 7000.0, allow_nan=False),  # gap before this op
            st.integers(0, 5),  # debtor
            st.integers(0, 9),  # op kind: 0 remove, 1 add, else choose
        ),
        max_size=120,
    ),
    seed=st.integers(0, 3),
)
def test_caps_never_exceeded(
    n_dids: int, hour_cap: int, day_cap: int, ops: list[tuple[float, int, int]], seed: int
) -> None:
    dids = [NYC, NYC2, SF, LONDON][:n_dids]
    debtors = ["+12125559876", "+14155551234", "+442079461234", "+13055550123", "+576019998888", "+34612345678"]
    pool = CallerIdPool("p", dids, hour_cap=hour_cap, day_cap=day_cap, seed=seed)
    uses: dict[str, list[float]] = {d: [] for d in dids}
    now = 0.0
    for gap, debtor, kind in ops:
        now += gap
        target = dids[debtor % n_dids]
        if kind == 0 and target in pool.dids:
            pool.remove(target)
            continue
        if kind == 1:
            pool.add(target)
            continue
        try:
            choice = pool.choose(f"lead{debtor}", debtors[debtor], now)
        except PoolExhausted as exc:
            if not pool.dids:
                assert exc.retry_at is None
                continue
            assert exc.retry_at is not None and exc.retry_at > now
            now = exc.retry_at
            choice = pool.choose(f"lead{debtor}", debtors[debtor], now)  # usable exactly at retry_at
        assert choice.did in pool.dids
        uses[choice.did].append(now)
        # Independent count: uses of this DID in the rolling hour and day ending now (this one included).
        in_hour = sum(1 for t in uses[choice.did] if t + HOUR_S > now)
        in_day = sum(1 for t in uses[choice.did] if t + DAY_S > now)
        assert in_hour <= hour_cap and in_day <= day_cap


def _simulate(rates: list[float], seed: int, dials: int, **kw: float) -> tuple[CallerIdPool, list[str]]:
    """Dial `dials` times from a pool of one area, answer with each DID's own rate; return the pool and DIDs."""
    dids = [f"+1212555{1000 + i:04d}" for i in range(len(rates))]
    rate = dict(zip(dids, rates, strict=True))
    pool = CallerIdPool("p", dids, hour_cap=100_000, day_cap=1_000_000, sticky=False, seed=seed, **kw)  # type: ignore[arg-type]
    rng = np.random.default_rng(seed)
    for i in range(dials):
        now = float(i)
        did = pool.choose(f"lead{i}", "+12125559876", now).did
        live = bool(rng.random() < rate[did])
        pool.record(did, now, answered_live=live, talk_s=float(rng.exponential(120.0)) if live else None)
    return pool, dids


@pytest.mark.parametrize("seed", range(5))
def test_truly_worse_did_rests(seed: int) -> None:
    pool, dids = _simulate([0.2] * 10 + [0.05], seed, dials=11 * 400)
    rests = {h.did: h.rests for h in pool.health(11 * 400.0)}
    assert rests[dids[10]] >= 1
    assert all(rests[d] == 0 for d in dids[:10])


def test_equal_rates_rarely_rest_any() -> None:
    false_rests = 0
    for seed in range(20):
        pool, _ = _simulate([0.2] * 11, seed, dials=11 * 400)
        false_rests += sum(h.rests for h in pool.health(11 * 400.0))
    assert false_rests <= 1


def test_small_samples_do_not_rest() -> None:
    # 0 answers in 20 attempts against a 20% pool is p ≈ 0.01 by itself, but below min_attempts nothing is tested.
    pool = CallerIdPool("p", [NYC, NYC2], min_attempts=100)
    for i in range(500):
        pool.record(NYC2, float(i), answered_live=i % 5 == 0)
    for i in range(20):
        pool.record(NYC, 500.0 + i, answered_live=False)
    assert all(h.resting_until is None for h in pool.health(600.0))


def test_rest_lasts_rest_s_then_counters_restart() -> None:
    pool = CallerIdPool("p", [NYC, NYC2, SF], min_attempts=50, rest_s=1000.0, hour_cap=10_000, day_cap=10_000)
    for i in range(600):
        pool.record(NYC2 if i % 2 else SF, float(i), answered_live=i % 5 < 2)  # 40% answer
    for _ in range(50):
        pool.record(NYC, 600.0, answered_live=False)
    h = {x.did: x for x in pool.health(600.0)}[NYC]
    assert h.resting_until == 1600.0 and h.rests == 1 and h.attempts == 50
    pool.record(NYC, 700.0, answered_live=True)  # an outcome arriving while resting is not counted
    assert {x.did: x for x in pool.health(700.0)}[NYC].attempts == 50
    chosen = {pool.choose(f"l{i}", "+12125559876", 700.0 + i).did for i in range(200)}
    assert NYC not in chosen
    h = {x.did: x for x in pool.health(1600.0)}[NYC]
    assert h.resting_until is None and h.attempts == 0 and h.live_answers == 0 and h.rests == 1
    assert pool.choose("fresh", "+12125559876", 1600.0).did == NYC  # least used this hour: it was resting


def test_exhausted_retry_at_rest_end() -> None:
    pool = CallerIdPool("p", [NYC, NYC2], min_attempts=10, rest_s=500.0, hour_cap=1)
    for i in range(200):
        pool.record(NYC2, float(i), answered_live=i % 2 == 0)
    for _ in range(10):
        pool.record(NYC, 200.0, answered_live=False)
    pool.choose("a", NYC, 300.0)  # NYC2 used, at its hour cap; NYC rests until 700
    with pytest.raises(PoolExhausted) as exc:
        pool.choose("b", NYC, 301.0)
    assert exc.value.retry_at == 700.0
    assert pool.choose("b", NYC, 700.0).did == NYC


def test_health_figures() -> None:
    pool = CallerIdPool("p", [NYC, SF], short_call_s=6.0, sticky=False)
    pool.choose("a", "+12125559876", 0.0)
    pool.choose("b", "+12125559876", 10.0)
    pool.choose("c", "+12125559876", 4000.0)
    pool.record(NYC, 10.0, answered_live=True, talk_s=3.0)
    pool.record(NYC, 11.0, answered_live=True, talk_s=30.0)
    pool.record(NYC, 12.0, answered_live=True)
    pool.record(NYC, 13.0, answered_live=False)
    pool.record("+19999999999", 14.0, answered_live=True)  # unknown DID: ignored
    h = {x.did: x for x in pool.health(4000.0)}
    n = h[NYC]
    assert (n.attempts, n.live_answers, n.short_calls) == (4, 3, 1)
    assert n.answer_rate == 0.75 and n.short_call_ratio == 0.5
    assert n.area == "+1 212" and n.resting_until is None and n.rests == 0
    # NYC is the only local DID and within caps, so all three dials showed it; only 4000 is in the hour at 4000.
    assert (n.hour_count, n.day_count) == (1, 3)
    assert (h[SF].hour_count, h[SF].day_count) == (0, 0)
    assert [x.day_count for x in pool.health(DAY_S + 10.0)] == [1, 0]  # 0 and 10 left the day window
    assert h[SF].answer_rate is None and h[SF].short_call_ratio is None


def test_invalid_did_rejected_with_index() -> None:
    with pytest.raises(ValueError, match=r"^did_pool\[1\]: not a valid E\.164 number: '12125550101'$"):
        CallerIdPool("p", [NYC, "12125550101"])
    with pytest.raises(ValueError, match=r"^did_pool\[2\]: .*'\+1212555'"):
        CallerIdPool("p", [NYC, SF, "+1212555"])
    with pytest.raises(ValueError, match=r"^did_pool\[1\]: a duplicate"):
        CallerIdPool("p", [NYC, NYC])
    with pytest.raises(ValueError, match=r"not a valid E\.164"):
        CallerIdPool("p", [NYC]).add("+44 20 7946 0001")


def test_deterministic_for_a_seed() -> None:
    def run(seed: int) -> list[str]:
        pool = CallerIdPool("p", [f"+1212555{1000 + i:04d}" for i in range(20)], seed=seed, sticky=False)
        return [pool.choose(f"l{i}", "+12125559876", float(i)).did for i in range(300)]

    assert run(7) == run(7)
    assert run(7) != run(8)
