"""What the pacer learns from outcomes: answer probability, time to answer, handle time, wrap-up.

Each estimator is plain, deterministic and cheap to update; each exposes a confidence (an effective sample
size) so the pacer knows when to stop warming up.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
from scipy import optimize, special


class AnswerRate:
    """Live-answer probability with exponential time decay: an attempt `half_life_s` old weighs half."""

    def __init__(self, half_life_s: float = 1800.0, prior: float = 0.2, prior_weight: float = 2.0) -> None:
        self.half_life_s = half_life_s
        self._lam = math.log(2) / half_life_s
        self._live = prior * prior_weight
        self._total = prior_weight
        self._t: float | None = None
        self.samples = 0

    def _decay(self, t: float) -> None:
        if self._t is not None and t > self._t:
            f = math.exp(-self._lam * (t - self._t))
            self._live *= f
            self._total *= f
        self._t = t if self._t is None else max(self._t, t)

    def add(self, t: float, live: bool) -> None:
        self._decay(t)
        self._live += 1.0 if live else 0.0
        self._total += 1.0
        self.samples += 1

    @property
    def p(self) -> float:
        return self._live / self._total if self._total > 0 else 0.0

    @property
    def confidence(self) -> float:
        """Effective number of attempts behind the estimate."""
        return self._total


class _RecentSorted:
    """The last `window` samples, also kept sorted: an empirical distribution that forgets old data."""

    def __init__(self, window: int) -> None:
        self._recent: deque[float] = deque(maxlen=window)
        # The samples sorted, in an array shifted in place as samples come and go: decisions read it every second
        # and samples arrive about as often, so neither a rebuild per change nor a second sorted copy pays.
        self._buf = np.zeros(window)
        self._n = 0
        self.version = 0  # counts samples, so readers can cache what they derive from the distribution

    def add(self, x: float) -> None:
        n = self._n
        if n == self._recent.maxlen:
            i = int(self._buf[:n].searchsorted(self._recent[0], side="left"))
            self._buf[i:n - 1] = self._buf[i + 1:n]
            n -= 1
        self._recent.append(x)
        j = int(self._buf[:n].searchsorted(x, side="right"))
        self._buf[j + 1:n + 1] = self._buf[j:n]  # numpy copies overlapping slices safely
        self._buf[j] = x
        self._n = n + 1
        self.version += 1

    @property
    def _sorted_array(self) -> np.ndarray:
        return self._buf[:self._n]

    @property
    def confidence(self) -> float:
        return float(self._n)


class AnswerTime(_RecentSorted):
    """Time from dial to answer, G(t) = P(answered by t | answered), the empirical CDF of recent answers.

    Only answered calls give a time; a call that reached the no-answer timeout is counted by `AnswerRate`,
    not here (it is the right-censored part the rate already accounts for).
    """

    def __init__(self, window: int = 400, prior_median_s: float = 8.0) -> None:
        super().__init__(window)
        self._prior = prior_median_s

    def cdf(self, t: np.ndarray) -> np.ndarray:
        if not self._n:  # before any answer: a lognormal around the prior median
            with np.errstate(divide="ignore"):
                z = (np.log(np.maximum(t, 1e-9)) - math.log(self._prior)) / 0.5
            return np.asarray(0.5 * special.erfc(-z / math.sqrt(2)))
        return self._sorted_array.searchsorted(t, side="right") / self._n

    def quantile(self, q: float) -> float:
        if not self._n:
            return self._prior
        return float(self._buf[min(self._n - 1, int(q * self._n))])

    def midpoints(self, k: int) -> np.ndarray:
        """`k` evenly spread quantiles (midpoints): answer times that stand for the whole distribution."""
        return np.asarray([self.quantile((i + 0.5) / k) for i in range(k)], dtype=float)


class UnansweredRing(_RecentSorted):
    """How long calls that do not reach a person keep ringing: busy and failures end within seconds, no-answers
    at the timeout. A call still ringing after those seconds is more likely to be answered than the raw live
    rate says; this survival is what the conditional answer probability of a ringing call divides by."""

    def __init__(self, window: int = 400) -> None:
        super().__init__(window)

    def survival(self, elapsed: np.ndarray, timeout_s: float) -> np.ndarray:
        """P(still ringing after `elapsed` | not a live answer); before any sample, until the timeout."""
        if not self._n:
            return np.asarray(elapsed < timeout_s, dtype=float)
        srt = self._sorted_array
        survival: np.ndarray = 1.0 - srt.searchsorted(elapsed, side="right") / len(srt)
        return survival


class HandleTime:
    """Handle time (talk + wrap-up) as a gamma distribution, fitted by maximum likelihood with right-censoring:
    calls still going count as "at least this long". Refitted every `refit_every` completions."""

    def __init__(self, window: int = 600, refit_every: int = 25, prior_mean_s: float = 120.0) -> None:
        self._done: deque[float] = deque(maxlen=window)
        self.refit_every = refit_every
        self._since_fit = 0
        self.shape = 1.0
        self.scale = prior_mean_s
        self.fits = 0
        self._table_for = (0.0, 0.0)
        self._grid = self._log_s = np.zeros(0)

    def add(self, handle_s: float, censored_now: tuple[float, ...] = ()) -> None:
        self._done.append(max(handle_s, 1e-3))
        self._since_fit += 1
        if self._since_fit >= self.refit_every or len(self._done) in (5, 10):
            self.refit(censored_now)

    def refit(self, censored: tuple[float, ...] = ()) -> None:
        self._since_fit = 0
        x = np.asarray(self._done)
        if len(x) < 3:
            return
        c = np.asarray([v for v in censored if v > 0.0])
        mean, var = float(x.mean()), float(x.var()) or 1.0
        k0, th0 = max(mean * mean / var, 0.05), max(var / mean, 1e-3)  # method of moments: the starting point

        log_x, n = np.log(x), len(x)  # the same in every evaluation of the likelihood

        def nll(params: np.ndarray) -> float:
            k, th = math.exp(params[0]), math.exp(params[1])
            # np.add.reduce: np.sum's own reduction, without its Python wrapper
            ll = float(np.add.reduce((k - 1) * log_x - x / th)) - n * (special.gammaln(k) + k * math.log(th))
            if len(c):
                ll += float(np.add.reduce(np.log(np.maximum(special.gammaincc(k, c / th), 1e-300))))
            return -ll

        res = optimize.minimize(nll, np.log([k0, th0]), method="Nelder-Mead",
                                options={"xatol": 1e-3, "fatol": 1e-3, "maxiter": 200})
        if res.success or res.fun < nll(np.log([k0, th0])):
            self.shape, self.scale = float(math.exp(res.x[0])), float(math.exp(res.x[1]))
        else:
            self.shape, self.scale = k0, th0
        self.fits += 1

    def survival(self, t: np.ndarray) -> np.ndarray:
        """S(t) of the fitted gamma. Decisions read it for every talking agent every second: it comes from a
        table of log S over (0, S⁻¹(1e-14)], rebuilt at each refit, linear between points packed towards 0
        where log S bends most (relative error under 1e-5 for shapes 0.7 to 60, 2e-4 at 0.3; past the table,
        1e-14)."""
        if self._table_for != (self.shape, self.scale):
            top = float(special.gammainccinv(self.shape, 1e-14))
            self._grid = top * np.linspace(0.0, 1.0, 4097) ** 3  # dense near 0, where log S bends most
            self._log_s = np.log(np.maximum(special.gammaincc(self.shape, self._grid), 1e-300))
            self._table_for = (self.shape, self.scale)
        return np.exp(np.interp(np.maximum(t, 0.0) / self.scale, self._grid, self._log_s))

    def end_within(self, elapsed: np.ndarray, horizon: float | np.ndarray) -> np.ndarray:
        """P(ends within `horizon` | lasted `elapsed`), broadcasting. Far out in the tail, where the survival
        underflows, a gamma is memoryless at rate 1/scale."""
        s_now = np.maximum(self.survival(elapsed), 1e-300)
        q = 1.0 - self.survival(elapsed + horizon) / s_now  # within [0, 1]: the survival never increases
        return self._tail_memoryless(q, s_now, horizon)

    def end_within_each(self, elapsed: np.ndarray, horizons: np.ndarray) -> np.ndarray:
        """`end_within(elapsed[:, None], horizons[:, None, :])` (K × m × W) for m elapsed times and K × W
        horizons, the same numbers from one table lookup for both survivals (the pacer's hot path: each numpy
        call on these small arrays costs more than its arithmetic)."""
        m = len(elapsed)
        k, w = horizons.shape
        t = np.empty(m * (1 + k * w))
        t[:m] = elapsed
        np.add(elapsed[:, None], horizons[:, None, :], out=t[m:].reshape(k, m, w))
        s = self.survival(t)
        s_now = np.maximum(s[:m, None], 1e-300)
        q = s[m:].reshape(k, m, w)
        q /= s_now
        np.subtract(1.0, q, out=q)
        return self._tail_memoryless(q, s_now, horizons[:, None, :])

    def _tail_memoryless(self, q: np.ndarray, s_now: np.ndarray, horizon: float | np.ndarray) -> np.ndarray:
        """`q` where the survival so far is above 1e-12; past it, where the table underflows, a gamma is
        memoryless at rate 1/scale. Rare: most calls skip building the second case."""
        keep = s_now > 1e-12
        if np.logical_and.reduce(keep, axis=None):  # keep.all() without its Python wrapper
            return q
        return np.where(keep, q, -np.expm1(-np.asarray(horizon) / self.scale))

    @property
    def mean(self) -> float:
        return self.shape * self.scale

    @property
    def confidence(self) -> float:
        return float(len(self._done))


class WrapTime(_RecentSorted):
    """Wrap-up seconds: the empirical distribution of recent wrap-ups (often nearly fixed, so it is worth
    knowing exactly: an agent 7 s into a 10 s wrap-up is free in 3 s)."""

    def __init__(self, prior_s: float = 10.0, window: int = 400) -> None:
        super().__init__(window)
        self.prior_s = prior_s
        self._distinct = np.zeros(0)
        self._distinct_version = -1

    @property
    def mean(self) -> float:
        return sum(self._sorted_array.tolist()) / self._n if self._n else self.prior_s

    def quantiles(self, k: int = 5) -> np.ndarray:
        """`k` evenly spread quantiles (midpoints), to integrate over the wrap-up that follows a call."""
        if not self._n:
            return np.full(k, self.prior_s)
        idx = ((np.arange(k) + 0.5) / k * self._n).astype(int)
        return self._sorted_array[np.minimum(idx, self._n - 1)]

    def distinct_quantiles(self) -> np.ndarray:
        """`quantiles()` without repeats (a fixed wrap-up is one value, not five): fewer cases to integrate."""
        if self._distinct_version != self.version:
            q = self.quantiles()  # sorted: repeats sit side by side
            self._distinct = q[np.concatenate([[True], q[1:] != q[:-1]])]
            self._distinct_version = self.version
        return self._distinct

    def end_within(self, in_state: np.ndarray, horizon: float | np.ndarray) -> np.ndarray:
        """P(wrap-up over within `horizon` | already `in_state` seconds into it), empirically (broadcasts)."""
        if not self._n:
            return np.asarray((in_state + horizon) >= self.prior_s, dtype=float)
        srt = self._sorted_array
        n = len(srt)
        done_now = srt.searchsorted(in_state, side="right")
        done_then = srt.searchsorted(in_state + horizon, side="right")
        alive = n - done_now
        # The usual case, every agent short of the longest wrap-up: no guard against 0 needed (alive.all() without
        # its Python wrapper).
        if np.logical_and.reduce(alive, axis=None):
            ended: np.ndarray = (done_then - done_now) / alive
            return ended
        return np.where(alive > 0, (done_then - done_now) / np.maximum(alive, 1), 1.0)
