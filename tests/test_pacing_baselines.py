"""Baselines behave per their published formulas; Erlang helpers match known values."""

from __future__ import annotations

import math

import pytest

from pacing.baselines import OmniDialer, Ratio, Vicidial
from pacing.queueing import erlang_a_abandon, erlang_b, erlang_c, staffing_for, suggest_dial_level
from pacing.snapshot import DialResult, HandleResult, LiveResult, PacingCaps, PacingSnapshot


def test_erlang_b_c_known_values() -> None:
    assert erlang_b(1, 1.0) == pytest.approx(0.5)
    assert erlang_b(10, 5.0) == pytest.approx(0.018385, abs=1e-5)  # standard table
    assert erlang_c(10, 5.0) == pytest.approx(0.036, abs=1e-3)
    assert erlang_c(5, 6.0) == 1.0


def test_erlang_a_tends_to_erlang_c_shape_and_staffing_meets_target() -> None:
    # patient callers abandon little; impatient ones more
    patient = erlang_a_abandon(10, 0.05, 150.0, 10_000.0)
    impatient = erlang_a_abandon(10, 0.05, 150.0, 5.0)
    assert patient < impatient < 1
    n = staffing_for(0.3, 150.0, 20.0, 0.03)
    assert erlang_a_abandon(n, 0.3, 150.0, 20.0) <= 0.03 < erlang_a_abandon(n - 1, 0.3, 150.0, 20.0)
    assert suggest_dial_level(50, 0.2, 160.0, 8.0) >= 1.0


def test_ratio_dials_fixed_lines_per_ready_agent() -> None:
    r = Ratio(PacingCaps(extra={"ratio": 3.0}))
    assert r.decide(PacingSnapshot(now=0, agents_logged_in=5, agents_ready=2, ringing_elapsed=(1.0,))) == 5


def test_vicidial_level_rises_with_idle_agents_and_halves_on_drops() -> None:
    v = Vicidial(PacingCaps(extra={"vicidial_intensity": 0.0}))
    for t in range(0, 31):
        v.decide(PacingSnapshot(now=float(t), agents_logged_in=10, agents_ready=5))
    assert v.level > 1.0
    raised = v.level
    for i in range(30):
        v.observe(LiveResult(31.0 + i / 10, connected=i % 3 == 0))  # 2 of 3 dropped in the last minute
    v.decide(PacingSnapshot(now=46.0, agents_logged_in=10, agents_ready=0, waiting_calls=3))
    assert v.level < raised
    # calls placed = round(level × agents) − live calls
    v2 = Vicidial(PacingCaps())
    assert v2.decide(PacingSnapshot(now=0, agents_logged_in=4, agents_ready=4)) == 4


def test_omnidialer_warm_up_then_expected_free_over_hit_rate() -> None:
    o = OmniDialer(PacingCaps())
    snap = PacingSnapshot(now=0, agents_logged_in=4, agents_ready=2, talking_elapsed=(100.0, 10.0))
    assert o.decide(snap) == 2  # warm-up at 1:1
    for i in range(300):
        o.observe(DialResult(float(i), 5.0, "live" if i % 4 == 0 else "none"))
    for _ in range(10):
        o.observe(HandleResult(0.0, 110.0, 10.0))
    expected = sum(1 - math.exp(-5.0 / max(1.0, 120.0 - a)) for a in (100.0, 10.0))
    want = math.floor((2 + expected) / o.p_hit * 1.0)
    assert o.decide(snap) == want


def test_vicidial_tapered_cut_does_not_depend_on_where_the_clock_starts() -> None:
    def run(t0: float) -> list[float]:
        v = Vicidial(PacingCaps())
        levels = []
        for t in range(0, 3600, 5):
            now = t0 + t
            if t % 60 == 0:
                for i in range(10):
                    v.observe(LiveResult(now, connected=i != 0))  # 10 % dropped: over the 3 % target
            v.decide(PacingSnapshot(now=now, agents_logged_in=10, agents_ready=6))
            levels.append(round(v.level, 9))
        return levels

    assert run(0.0) == run(1_767_000_000.0)


def test_baselines_count_a_retracted_connect_once_as_a_drop() -> None:
    v, o = Vicidial(PacingCaps()), OmniDialer(PacingCaps())
    for s in (v, o):
        s.observe(LiveResult(10.0, connected=True))
        s.observe(LiveResult(11.0, connected=True))
        s.observe(LiveResult(10.5, connected=False, retracts=10.0))
    assert (v._today_live, v._today_drops) == (2, 1)
    assert list(v._live_times) == [(10.0, False), (11.0, True)]  # the last minute's answer, now dropped
    assert (o.live, o.dropped) == (2, 1)
