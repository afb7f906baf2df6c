"""Where the predictive model's gap to the oracle comes from: `erlang` on one scenario as shipped, then told
what only the simulator knows, one estimate at a time, with the oracle for reference.

- `agents known`: when every busy agent will be free replaces the model's estimate of agents free by τ + θ.
- `calls known`: when every call already placed will reach an agent (and which never will) replaces its
  estimate of the answers already coming by τ. The calls it is about to place stay unknown.
- `live rate known`: the scenario's chance that a call reaches an agent, at that moment of the shift, replaces
  the model's decayed estimate of it (how much the estimate's own noise costs).

Nothing else changes (same estimates otherwise, same controller, same callers), so the occupancy each variant
gains is what that knowledge is worth to this model at the same abandon target.

    python bench/pacing_foresight.py [--scenario PATH] [--duration S] [--jobs N] [--json]
"""

from __future__ import annotations

import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import one_scenario_args, parser, report
from pacing.erlang import ErlangPacer
from pacing.estimators import AnswerRate
from pacing.snapshot import PacingCaps, PacingSnapshot
from sim.des.simulation import Simulation
from sim.scenario import load_scenario

HERE = Path(__file__).resolve().parent
VARIANTS = {"as shipped": (False, False), "agents known": (True, False), "calls known": (False, True),
            "both known": (True, True)}
LIVE_RATE_KNOWN = "live rate known"


class KnownRate(AnswerRate):
    """The live rate the scenario sets at this moment: p_live (and, with AMD, what it lets through) times the
    chance a person answers before the ring timeout (the answer delay may reach it)."""

    def __init__(self, sim: Simulation) -> None:
        super().__init__()
        self.sim = sim
        sc = sim.sc
        # The share of answer delays under the timeout, from a fixed sample (known to about 0.1 %).
        rng = np.random.default_rng(0)
        delays = np.fromiter((sc.calls.answer_delay_s.sample(rng) for _ in range(100_000)), float)
        self.in_time = float((delays < sc.calls.no_answer_timeout_s).mean())

    @property
    def p(self) -> float:
        sc, t = self.sim.sc, self.sim.kernel.now
        live, machine = sc.p("p_live", t), sc.p("p_machine", t)
        if sc.amd.enabled:  # people AMD takes for machines never reach an agent; machines it takes for people do
            live, machine = live * (1.0 - sc.amd.false_machine), machine * sc.amd.false_human
        else:
            machine = 0.0
        return (live + machine) * self.in_time


class ForesightedErlang(ErlangPacer):
    """`erlang` with one or both of its estimates replaced by the simulator's foresight."""

    def __init__(self, caps: PacingCaps, sim: Simulation, agents: bool, calls: bool) -> None:
        super().__init__(caps)
        self.sim, self.agents, self.calls = sim, agents, calls

    def _floor(self, snap: PacingSnapshot, taus: np.ndarray, p: float) -> tuple[np.ndarray, np.ndarray]:
        cdf_free, ahead = super()._floor(snap, taus, p)
        if self.agents:  # agents free by τ + θ, counted: a step from 0 to 1 at that count
            free = np.asarray(self.sim.agents_free_at(snap.now))
            counts = [int((free <= snap.now + t + snap.abandon_threshold_s).sum()) for t in taus]
            cdf_free = np.asarray([[1.0 if x >= c else 0.0 for x in range(max(counts) + 1)] for c in counts])
        if self.calls:  # answers by τ from the calls already placed, counted: all the mass on that count
            offers = np.asarray(self.sim.offers_due(snap.now))
            counts = [int((offers <= snap.now + t).sum()) for t in taus]
            ahead = np.asarray([[1.0 if y == c else 0.0 for y in range(max(counts) + 1)] for c in counts])
        return cdf_free, ahead


def run_variant(path: str, variant: str, duration: float | None) -> dict[str, Any]:
    sc = load_scenario(path)
    if variant == "oracle":
        summary = Simulation(sc, "oracle", duration_s=duration).run().summary
    else:
        sim = Simulation(sc, "erlang", duration_s=duration)
        shipped = sim.strategy
        assert isinstance(shipped, ErlangPacer)
        if variant == LIVE_RATE_KNOWN:
            shipped.answer_rate = KnownRate(sim)
        elif variant != "as shipped":  # same caps (the scenario's), the model's own code for all the rest
            sim.use_strategy(ForesightedErlang(shipped.caps, sim, *VARIANTS[variant]))
        summary = sim.run().summary
    return {"variant": variant, "occupancy": round(summary["occupancy"], 4),
            "abandon_rate": round(summary["abandon_rate"], 4),
            "max_hourly_abandon_rate": round(summary["max_hourly_abandon_rate"], 4),
            "idle_per_connect_s": round(summary["idle_per_connect_s"], 2)}


def main() -> None:
    ap = parser(__doc__)
    one_scenario_args(ap)
    args = ap.parse_args()
    names = [*VARIANTS, LIVE_RATE_KNOWN, "oracle"]
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(run_variant, [args.scenario] * len(names), names, [args.duration] * len(names)))
    result = {"scenario": Path(args.scenario).stem, "variants": rows}
    report(result, args.json, lambda r: "\n".join(
        [f"pacing_foresight: {r['scenario']}"]
        + [f"  {v['variant']:<15} occupancy {v['occupancy']:.3f}  abandon {100 * v['abandon_rate']:.2f} % "
           f"(max hourly {100 * v['max_hourly_abandon_rate']:.2f} %)  idle/connect {v['idle_per_connect_s']:.1f} s"
           for v in r["variants"]]))


if __name__ == "__main__":
    main()
