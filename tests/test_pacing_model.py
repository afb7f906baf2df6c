"""The predictive model and its estimators: recovery of known parameters, caps, monotonicity, the controller."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pacing.erlang import AbandonController, ErlangPacer, expected_excess, poisson_binomial
from pacing.estimators import AnswerRate, AnswerTime, HandleTime, WrapTime
from pacing.registry import STRATEGIES, make_strategy
from pacing.snapshot import DialResult, HandleResult, LiveResult, PacingCaps, PacingSnapshot, PacingStrategy


def test_poisson_binomial_matches_brute_force_and_excess_matches_definition() -> None:
    rng = np.random.default_rng(3)
    for n in (0, 1, 5, 7, 40):
        q = rng.random(n)
        pmf = poisson_binomial(q)
        sims = (rng.random((200_000, n)) < q).sum(axis=1) if n else np.zeros(200_000, dtype=int)
        emp = np.bincount(sims, minlength=n + 1) / len(sims)
        assert np.allclose(pmf, emp, atol=0.01) and abs(pmf.sum() - 1) < 1e-9
    px, pc = np.array([0.2, 0.5, 0.3]), np.array([0.6, 0.4])
    brute = sum(px[x] * pc[c] * max(x - c, 0) for x in range(3) for c in range(2))
    assert abs(expected_excess(px, pc) - brute) < 1e-12


def test_estimators_recover_known_parameters() -> None:
    rng = np.random.default_rng(7)
    rate = AnswerRate(half_life_s=1e9)
    for i, live in enumerate(rng.random(5000) < 0.23):
        rate.add(float(i), bool(live))
    assert abs(rate.p - 0.23) < 0.015
    times = AnswerTime(window=5000)
    for x in rng.lognormal(np.log(8), 0.5, 5000):
        times.add(float(x))
    assert abs(times.quantile(0.5) - 8) < 0.4
    # gamma handle times, with a third of the calls still going (right-censored): the fit stays unbiased
    shape, mean = 1.56, 150.0
    full = rng.gamma(shape, mean / shape, 3000)
    cut = rng.uniform(0, 400, 3000)
    handle = HandleTime(window=3000, refit_every=10_000)
    for x, c in zip(full, cut, strict=True):
        if x <= c:
            handle._done.append(float(x))
    censored = tuple(float(c) for x, c in zip(full, cut, strict=True) if x > c)
    handle.refit(censored)
    assert abs(handle.mean - mean) / mean < 0.08 and abs(handle.shape - shape) / shape < 0.2
    naive = HandleTime(window=3000, refit_every=10_000)
    naive._done.extend(handle._done)
    naive.refit(())
    assert naive.mean < handle.mean  # ignoring the calls still going would bias the mean down
    wrap = WrapTime()
    for _ in range(50):
        wrap.add(10.0)
    assert list(wrap.end_within(np.array([7.0, 2.0]), 4.0)) == [1.0, 0.0]


def _warm(caps: PacingCaps | None = None) -> ErlangPacer:
    pacer = ErlangPacer(caps or PacingCaps(max_lines=500, max_lines_per_agent=4.0, max_calls_per_s=50.0))
    rng = np.random.default_rng(1)
    t = 0.0
    for _ in range(400):
        t += 1.0
        live = bool(rng.random() < 0.2)
        pacer.observe(DialResult(t, float(rng.lognormal(np.log(8), 0.5)) if live else 25.0,
                                 "live" if live else "none"))
    for _ in range(100):
        pacer.observe(HandleResult(t, float(rng.gamma(1.56, 150 / 1.56)), 10.0))
    assert pacer.warmed_up
    return pacer


snapshots = st.builds(
    lambda ready, busy, ringing, waiting, launched, elapsed: PacingSnapshot(
        now=1000.0, agents_logged_in=ready + busy, agents_ready=ready,
        talking_elapsed=tuple(elapsed[i % len(elapsed)] for i in range(busy)),
        ringing_elapsed=tuple(elapsed[i % len(elapsed)] % 25 for i in range(ringing)),
        waiting_calls=waiting, calls_launched_last_s=launched),
    st.integers(0, 60), st.integers(0, 60), st.integers(0, 120), st.integers(0, 5), st.integers(0, 60),
    st.lists(st.floats(0, 600), min_size=1, max_size=8))

WARM = _warm()


@settings(max_examples=150, deadline=None)
@given(snapshots)
def test_never_dials_without_agents_and_never_past_caps(snap: PacingSnapshot) -> None:
    for name in STRATEGIES:
        caps = PacingCaps(max_lines=80, max_lines_per_agent=2.0, max_calls_per_s=10)
        if name == "erlang":
            WARM.caps = caps
            strategy: PacingStrategy = WARM
        else:
            strategy = make_strategy(name, caps)
        n = strategy.decide(snap)
        lines = len(snap.ringing_elapsed) + snap.waiting_calls
        assert n >= 0
        if snap.agents_logged_in == 0:
            assert n == 0, name
        assert lines + n <= max(lines, caps.max_lines), name
        assert lines + n <= max(lines, int(caps.max_lines_per_agent * snap.agents_logged_in)), name
        assert snap.calls_launched_last_s + n <= max(snap.calls_launched_last_s, caps.max_calls_per_s), name


@settings(max_examples=150, deadline=None)
@given(snapshots)
def test_more_ready_agents_never_means_fewer_calls(snap: PacingSnapshot) -> None:
    more = PacingSnapshot(now=snap.now, agents_logged_in=snap.agents_logged_in + 1, agents_ready=snap.agents_ready + 1,
                          talking_elapsed=snap.talking_elapsed, ringing_elapsed=snap.ringing_elapsed,
                          waiting_calls=snap.waiting_calls, calls_launched_last_s=snap.calls_launched_last_s)
    assert WARM.decide(more) >= WARM.decide(snap)


def test_progressive_warm_up_then_predictive_dials_ahead() -> None:
    cold = ErlangPacer()
    snap = PacingSnapshot(now=0.0, agents_logged_in=10, agents_ready=10)
    assert cold.decide(snap) == 10  # warm-up: one line per ready agent
    assert _warm().decide(snap) > 10  # with p_live 0.2 learned, it dials several lines per ready agent


def test_controller_pulls_alpha_down_above_target_and_up_below() -> None:
    high, low = AbandonController(0.03), AbandonController(0.03)
    start = high.alpha
    for i in range(400):
        high.observe(connected=i % 10 != 0)  # 10% abandoned
        low.observe(connected=True)  # none abandoned
    assert high.alpha < start < low.alpha


def test_observations_reach_the_controller() -> None:
    pacer = ErlangPacer()
    a0 = pacer.controller.alpha
    for _ in range(20):
        pacer.observe(LiveResult(1.0, connected=False))
    assert pacer.controller.alpha < a0 and pacer.state()["measured_abandon_rate"] == 1.0
