"""The predictive pacer (DESIGN.md, Pacing): launch the most calls whose expected excess of answers over
free agents at the look-ahead horizon stays within α of the expected answers.

    C = I + Σᵢ Bernoulli(qᵢ)               agents free by H (qᵢ from the censored gamma handle-time fit)
    X = W + Σⱼ Bernoulli(rⱼ) + Bin(n, p·G(H))  answers by H (W: answered calls already waiting)
    (a talking agent frees when talk, fitted as a censored gamma, plus the wrap-up that follows are over;
    an agent in wrap-up by the empirical wrap-up distribution)
    n* = max{ n : E[(X − C)⁺] ≤ α·E[X] }

pmfs are exact (Poisson-binomials by a vectorised product of generating functions, then convolutions),
and n* is found by bisection since E[(X − C)⁺] − α·E[X] grows with n. α itself is steered by
`AbandonController` so the measured abandon rate settles just under the target.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import special

from pacing.estimators import AnswerRate, AnswerTime, HandleTime, WrapTime
from pacing.snapshot import DialResult, HandleResult, LiveResult, Observation, PacingCaps, PacingSnapshot


def poisson_binomial(q: np.ndarray) -> np.ndarray:
    """pmf of a sum of independent Bernoulli(qᵢ): the product of (1 − qᵢ + qᵢ z), expanded exactly."""
    q = q[q > 1e-12]  # a Bernoulli that never fires adds nothing (and would only cost time)
    n = len(q)
    if n == 0:
        return np.ones(1)
    if n <= 6:  # a few terms: direct expansion is exact and cheaper than the transform
        pmf = np.zeros(n + 1)
        pmf[0] = 1.0
        for i, qi in enumerate(q):
            pmf[1:i + 2] = pmf[1:i + 2] * (1.0 - qi) + pmf[:i + 1] * qi
            pmf[0] *= 1.0 - qi
        return pmf
    # Evaluate the generating function at the n+1 roots of unity, then invert (one vectorised pass). Real
    # coefficients make the values conjugate-symmetric: half the roots suffice (rfft layout).
    half = (n + 1) // 2 + 1
    w = np.exp(-2j * np.pi * np.arange(half) / (n + 1))
    values = np.prod((1.0 - q)[:, None] + np.outer(q, w), axis=0)
    pmf = np.clip(np.fft.irfft(values, n + 1), 0.0, None)
    return np.asarray(pmf / pmf.sum())


def excess_weights(pmf_c: np.ndarray, size: int) -> np.ndarray:
    """h(x) = E[(x − C)⁺] for x = 0..size−1, so that E[(X − C)⁺] = Σₓ P(X = x)·h(x) for independent X, C."""
    c = np.arange(len(pmf_c))
    cdf = np.concatenate([[0.0], np.cumsum(pmf_c)])  # cdf[x] = P(C < x)
    partial = np.concatenate([[0.0], np.cumsum(c * pmf_c)])  # Σ_{c < x} c·P(C = c)
    x = np.arange(size)
    idx = np.minimum(x, len(pmf_c))
    return np.asarray(x * cdf[idx] - partial[idx])


def expected_excess(pmf_x: np.ndarray, pmf_c: np.ndarray) -> float:
    """E[(X − C)⁺] for independent X, C on 0..len−1."""
    return float(np.dot(pmf_x, excess_weights(pmf_c, len(pmf_x))))


class AbandonController:
    """Steers α so the measured abandon rate converges to the target from below.

    Every live answer nudges log α: up a little when connected, down a lot when abandoned, balanced at a
    setpoint under the target (a multiplicative-weights integral controller; it needs no model of the floor).
    Early on the nudges are smaller, so a few unlucky abandons cannot swing it.
    """

    def __init__(self, target: float, margin: float = 0.95, gain: float = 0.08, alpha0: float = 0.05,
                 alpha_range: tuple[float, float] = (0.0005, 0.3), se_k: float = 1.5) -> None:
        self.target = target
        self.se_k = se_k
        self.margin = margin
        self.setpoint = margin * target
        self.gain = gain
        self.lo, self.hi = alpha_range
        self.alpha = alpha0 * target  # start low: the rate approaches its target from below
        self.live = 0
        self.abandoned = 0
        self._shared = (0, 0)  # campaign-wide (live, abandoned) from every node, as last synced
        self._since = [0, 0]  # this node's answers since that sync

    def sync(self, live: int, abandoned: int) -> None:
        """Campaign-wide counts from the shared store (several nodes): the rate the aim compares against."""
        self._shared = (live, abandoned)
        self._since = [0, 0]

    def observe(self, connected: bool) -> None:
        self.live += 1
        self.abandoned += 0 if connected else 1
        self._since[0] += 1
        self._since[1] += 0 if connected else 1
        y = 0.0 if connected else 1.0
        g = self.gain * min(1.0, self.live / 50.0 + 0.2)
        # The setpoint sits below the target by the measured rate's own uncertainty (1.5 standard errors),
        # so a small floor with few answers aims lower than a big one: the rate ends under the target.
        t = self.target
        self.setpoint = max(0.3 * t, min(self.margin * t, t - self.se_k * math.sqrt(t * (1 - t) / max(self.live, 50))))
        # Aim lower while the campaign-to-date rate is above the setpoint, so it comes back under the target
        # (on small floors a few unlucky abandons would otherwise keep it above for hours).
        aim = min(self.setpoint, max(0.2 * self.setpoint, 2 * self.setpoint - self.rate))
        self.alpha = min(self.hi, max(self.lo, self.alpha * math.exp(g * (aim - y))))

    @property
    def rate(self) -> float:
        live, abandoned = self.live, self.abandoned
        if self._shared[0]:
            live, abandoned = self._shared[0] + self._since[0], self._shared[1] + self._since[1]
        return abandoned / live if live else 0.0


class ErlangPacer:
    """`erlang`: the predictive strategy."""

    name = "erlang"

    def __init__(self, caps: PacingCaps | None = None) -> None:
        self.caps = caps or PacingCaps()
        self.answer_rate = AnswerRate()
        self.answer_time = AnswerTime()
        self.talk = HandleTime(prior_mean_s=120.0)  # talk time; the wrap-up that follows is `self.wrap`
        self.wrap = WrapTime()
        self.controller = AbandonController(self.caps.abandon_target,
                                            margin=float(self.caps.extra.get("margin", 0.95)),
                                            alpha0=float(self.caps.extra.get("alpha0", 0.05)),
                                            gain=float(self.caps.extra.get("gain", 0.08)),
                                            se_k=float(self.caps.extra.get("se_k", 1.5)))
        self.warmup_answers = int(self.caps.extra.get("warmup_answers", 30))
        self.warmup_handles = int(self.caps.extra.get("warmup_handles", 15))
        self.horizon_qs = [float(x) for x in str(self.caps.extra.get("horizons", "0.5")).split(",")]
        self._talking: tuple[float, ...] = ()
        self.last_n = 0
        self.last_expected_answers = 0.0
        self.last_expected_free = 0.0

    # ------------------------------------------------------------------ learning

    def observe(self, obs: Observation) -> None:
        if isinstance(obs, DialResult):
            self.answer_rate.add(obs.t, obs.fate == "live")
            if obs.fate == "live":
                self.answer_time.add(obs.ring_s)
        elif isinstance(obs, LiveResult):
            self.controller.observe(obs.connected)
        elif isinstance(obs, HandleResult):
            self.wrap.add(obs.wrap_s)
            self.talk.add(obs.talk_s, self._talking)

    def shared_abandon(self, live: int, abandoned: int) -> None:
        self.controller.sync(live, abandoned)

    @property
    def warmed_up(self) -> bool:
        return (self.answer_time.confidence >= self.warmup_answers
                and self.talk.confidence >= self.warmup_handles)

    # ------------------------------------------------------------------ deciding

    def decide(self, snap: PacingSnapshot) -> int:
        if snap.agents_logged_in <= 0:
            return 0
        self._talking = snap.talking_elapsed
        in_flight = len(snap.ringing_elapsed) + snap.waiting_calls
        room = min(self.caps.max_lines - in_flight,
                   int(self.caps.max_lines_per_agent * snap.agents_logged_in) - in_flight,
                   int(self.caps.max_calls_per_s) - snap.calls_launched_last_s)
        if room <= 0:
            return 0
        if not self.warmed_up:  # progressive until the estimates can be trusted
            return max(0, min(room, snap.agents_ready - in_flight))
        n = self._predict(snap, room)
        self.last_n = n
        return n

    def _predict(self, snap: PacingSnapshot, room: int) -> int:
        # The bound must hold at each look-ahead horizon (answers spread in time; so do agents freeing up).
        # Measured on collections-50: averaging the bound over several horizons instead gains 0.003 occupancy
        # for twice the time, and the controller's setpoint moves occupancy by as little: the single median
        # horizon stays.
        n = room
        for q in self.horizon_qs:
            n = min(n, self._largest(self._slack_at(snap, n, max(1.0, self.answer_time.quantile(q))), n))
            if n == 0:
                break
        return n

    def _largest(self, slack: Callable[[int], float], room: int) -> int:
        """The largest n ≤ room with slack(n) ≥ 0 (slack shrinks as n grows): gallop from the last size, bisect."""
        if slack(0) < -1e-12:  # tolerance: float noise, not a rule
            return 0
        lo, hi = 0, max(1, min(room, self.last_n or 1))
        while hi < room and slack(hi) >= -1e-12:
            lo, hi = hi, min(room, hi * 2)
        if slack(hi) >= -1e-12:
            return hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if slack(mid) >= -1e-12 else (lo, mid)
        return lo

    def _slack_at(self, snap: PacingSnapshot, room: int, horizon: float) -> Callable[[int], float]:
        """n ↦ α·E[X] − E[(X − C)⁺] at `horizon`: X answers by then (ringing + n new), C agents free by then
        plus the abandon threshold."""
        p = min(max(self.answer_rate.p, 1e-4), 1.0)
        # Agents free by the horizon: the ready ones, plus each busy one by its conditional end probability:
        # talking agents must finish talking and then wrap up; agents in wrap-up only finish it.
        reach = horizon + snap.abandon_threshold_s
        talking = np.asarray(snap.talking_elapsed, dtype=float)
        q_talk = np.zeros(0)
        if len(talking):
            wraps = self.wrap.quantiles()
            budget = reach - wraps[None, :]  # time left to finish talking, for each possible wrap-up length
            s_now = self.talk.survival(talking)[:, None]
            s_then = self.talk.survival(talking[:, None] + np.maximum(budget, 0.0))
            with np.errstate(divide="ignore", invalid="ignore"):
                per_wrap = np.where((budget > 0) & (s_now > 1e-12), 1.0 - s_then / s_now, 0.0)
            q_talk = np.clip(per_wrap.mean(axis=1), 0.0, 1.0)
        q_wrap = self.wrap.end_within(np.asarray(snap.wrapup_in_state, dtype=float), reach)
        q = np.concatenate([q_talk, q_wrap])
        pmf_c = np.concatenate([np.zeros(snap.agents_ready), poisson_binomial(q)])
        # Answers by the horizon from calls already ringing.
        e = np.asarray(snap.ringing_elapsed, dtype=float)
        if len(e):
            g_now, g_then = self.answer_time.cdf(e), self.answer_time.cdf(e + horizon)
            alive = e < snap.ring_timeout_s
            denom = p * (1.0 - g_now) + (1.0 - p) * alive
            with np.errstate(divide="ignore", invalid="ignore"):
                r = np.where(denom > 1e-12, p * (g_then - g_now) / denom, 0.0)
            pmf_ring = poisson_binomial(np.clip(r, 0.0, 1.0))
        else:
            pmf_ring = np.ones(1)
        pmf_known = np.concatenate([np.zeros(snap.waiting_calls), pmf_ring])  # waiting calls: certain demand
        s = p * float(self.answer_time.cdf(np.asarray([horizon]))[0])
        alpha = self.controller.alpha
        self.last_expected_free = float(np.dot(pmf_c, np.arange(len(pmf_c))))
        known_mean = float(np.dot(pmf_known, np.arange(len(pmf_known))))
        self.last_expected_answers = known_mean + s * max(self.last_n, 0)
        h = excess_weights(pmf_c, len(pmf_known) + room + 1)
        ks = np.arange(room + 1)

        def slack(n: int) -> float:
            # X = known answers + Binomial(n, s)
            if n == 0:
                pmf_x = pmf_known
            else:
                k = ks[:n + 1]
                log_pmf = (special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1)
                           + k * math.log(s) + (n - k) * math.log1p(-s)) if 0 < s < 1 else None
                binom = np.exp(log_pmf) if log_pmf is not None else (k == (n if s >= 1 else 0)).astype(float)
                pmf_x = np.convolve(pmf_known, binom)
            return alpha * (known_mean + n * s) - float(np.dot(pmf_x, h[:len(pmf_x)]))

        return slack

    def state(self) -> dict[str, Any]:
        """Estimates and the controller's α, for metrics and the simulator's charts."""
        return {
            "alpha": self.controller.alpha,
            "p_live": self.answer_rate.p,
            "answer_median_s": self.answer_time.quantile(0.5),
            "talk_mean_s": self.talk.mean,
            "talk_shape": self.talk.shape,
            "wrap_mean_s": self.wrap.mean,
            "warmed_up": self.warmed_up,
            "measured_abandon_rate": self.controller.rate,
            "last_n": self.last_n,
        }
