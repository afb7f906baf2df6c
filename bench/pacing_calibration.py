"""Is the predictive model right about what it predicts? At every decision `erlang` forecasts, for each answer
time τ it looks at, how many answers are already coming by τ (waiting calls and calls ringing) and how many
agents will be free by τ + θ. The simulator knows both counts; this compares them, decision by decision.

For each τ (the model's answer-time quantile midpoints, three of them here at every decision; the shipped
model takes more on small floors), over the shift:
- forecast mean against the mean of what happened, and the forecast variance against the mean squared error;
- the randomised PIT (where what happened falls in the forecast distribution, ties split at random): ten
  deciles that each hold about 10 % of the decisions when the forecast distribution is right, not only its mean.

A calibrated model that still falls short of the oracle is short of information, not of arithmetic
(`bench/pacing_foresight.py` shows which information).

    python bench/pacing_calibration.py [--scenario PATH] [--duration S] [--skip S] [--json]

`--skip S` leaves out the decisions of the first S seconds, while the estimates are still learning (the live
rate is read from calls that have ended, and in the first minutes those are mostly the quick ones).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import one_scenario_args, parser, report
from pacing.erlang import ErlangPacer
from pacing.snapshot import PacingCaps, PacingSnapshot
from sim.des.simulation import Simulation
from sim.scenario import load_scenario

HERE = Path(__file__).resolve().parent


class CalibratedErlang(ErlangPacer):
    """`erlang`, unchanged, noting each forecast next to what the simulator knows will happen."""

    def __init__(self, caps: PacingCaps, sim: Simulation, seed: int = 1) -> None:
        super().__init__(caps)
        self.answer_points = 3  # the same three answer times at every decision, so each τ# is one quantile
        self.sim = sim
        self.rng = np.random.default_rng(seed)  # only to split ties in the PIT
        self.rows: list[tuple[int, str, float, float, float, float]] = []  # (k, what, mean, var, actual, pit)
        self.skip_until = -float("inf")  # simulated time (the core's clock) before which nothing is noted

    def _floor(self, snap: PacingSnapshot, taus: np.ndarray, p: float) -> tuple[np.ndarray, np.ndarray]:
        cdf_free, ahead = super()._floor(snap, taus, p)
        if snap.now < self.skip_until:
            return cdf_free, ahead
        offers = np.asarray(self.sim.offers_due(snap.now))
        free = np.asarray(self.sim.agents_free_at(snap.now))
        for k, tau in enumerate(taus):
            answers = int((offers <= snap.now + tau).sum())
            agents = int((free <= snap.now + tau + snap.abandon_threshold_s).sum())
            self._note(k, "answers", ahead[k], answers)
            self._note(k, "agents", np.diff(cdf_free[k], prepend=0.0), agents)
        return cdf_free, ahead

    def _note(self, k: int, what: str, pmf: np.ndarray, actual: int) -> None:
        xs = np.arange(len(pmf))
        mean = float(pmf @ xs)
        var = float(pmf @ xs ** 2) - mean * mean
        below = float(pmf[:actual].sum()) if actual > 0 else 0.0
        at = float(pmf[actual]) if actual < len(pmf) else 0.0
        self.rows.append((k, what, mean, var, float(actual), below + float(self.rng.random()) * at))


def calibrate(path: str, duration: float | None = None, skip_s: float = 0.0,
              pacer_class: type[CalibratedErlang] = CalibratedErlang) -> dict[str, Any]:
    sim = Simulation(load_scenario(path), "erlang", duration_s=duration)
    shipped = sim.strategy
    assert isinstance(shipped, ErlangPacer)
    pacer = pacer_class(shipped.caps, sim)
    pacer.skip_until = sim.base + skip_s
    sim.use_strategy(pacer)
    summary = sim.run().summary
    rows = []
    ks = sorted({r[0] for r in pacer.rows})
    for what in ("answers", "agents"):
        for k in ks:
            got = np.asarray([r[2:] for r in pacer.rows if r[0] == k and r[1] == what])
            mean, var, actual, pit = got.T
            deciles = np.histogram(pit, bins=10, range=(0.0, 1.0))[0] / len(pit)
            rows.append({"what": what, "tau_index": k, "decisions": len(got),
                         "forecast_mean": round(float(mean.mean()), 4), "actual_mean": round(float(actual.mean()), 4),
                         "forecast_var": round(float(var.mean()), 4),
                         "mean_sq_error": round(float(((actual - mean) ** 2).mean()), 4),
                         "pit_deciles": [round(float(d), 4) for d in deciles],
                         "pit_worst_decile_gap": round(float(np.abs(deciles - 0.1).max()), 4)})
    return {"scenario": Path(path).stem, "occupancy": summary["occupancy"], "abandon_rate": summary["abandon_rate"],
            "rows": rows}


def _line(r: dict[str, Any]) -> str:
    out = [f"pacing_calibration: {r['scenario']} (erlang: occupancy {r['occupancy']:.3f}, "
           f"abandon {100 * r['abandon_rate']:.2f} %)",
           "  forecast of          τ#  decisions  mean: forecast / actual   variance: forecast / mse   "
           "PIT worst decile gap"]
    for row in r["rows"]:
        what = "answers coming by τ" if row["what"] == "answers" else "agents free by τ+θ"
        out.append(f"  {what:<20} {row['tau_index']:>2}  {row['decisions']:>9}  {row['forecast_mean']:>8.3f} / "
                   f"{row['actual_mean']:<8.3f}       {row['forecast_var']:>7.3f} / {row['mean_sq_error']:<7.3f}    "
                   f"{100 * row['pit_worst_decile_gap']:.1f} points")
    return "\n".join(out)


def main() -> None:
    ap = parser(__doc__)
    one_scenario_args(ap, jobs=False)
    ap.add_argument("--skip", type=float, default=0.0, help="leave out the first S simulated seconds (default 0)")
    args = ap.parse_args()
    report(calibrate(args.scenario, args.duration, args.skip), args.json, _line)


if __name__ == "__main__":
    main()
