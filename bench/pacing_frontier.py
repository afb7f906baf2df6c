"""How much occupancy each strategy can buy with abandons: its frontier on one scenario.

Each strategy is run with its aggressiveness held fixed at several settings, on the same seed:
- `erlang` with its controller switched off, at a fixed α (the abandon chance a call may carry);
- `ratio` at a fixed number of lines per ready agent;
- `omnidialer` at a fixed aggressiveness γ (its taper towards the drop cap left on).
For each, the frontier is read at the target: the best occupancy of a run at or under it, and the occupancy
at the target itself, interpolated between the two runs either side. `erlang` as shipped (its controller
steering α) and the oracle are printed for reference. A flat frontier means abandons buy little: the idle time
left is not caution but what cannot be known when the calls are placed.

    python bench/pacing_frontier.py [--scenario PATH] [--duration S] [--jobs N] [--json]
"""

from __future__ import annotations

import itertools
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import one_scenario_args, parser, report
from sim.des.simulation import Simulation
from sim.scenario import load_scenario

HERE = Path(__file__).resolve().parent
# (strategy, setting) pairs: α for erlang, lines per ready agent for ratio, γ for omnidialer.
SWEEPS: dict[str, tuple[float, ...]] = {
    "erlang": (0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.06, 0.1),
    "ratio": (2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0),
    "omnidialer": (0.5, 1.0, 2.0),
}


def run_point(path: str, strategy: str, setting: float | None, duration: float | None) -> dict[str, Any]:
    sc = load_scenario(path)
    extra: dict[str, float] = {}
    ratio = None
    if strategy == "erlang" and setting is not None:  # the controller off: α stays at the setting
        extra = {"gain": 0.0, "alpha0": setting / sc.campaign.abandon_target}
    elif strategy == "ratio":
        ratio = setting
    elif strategy == "omnidialer" and setting is not None:
        extra = {"omni_aggressiveness": setting}
    s = Simulation(sc, strategy, duration_s=duration, ratio=ratio, extra=extra).run().summary
    return {"strategy": strategy, "setting": setting, "occupancy": round(s["occupancy"], 4),
            "abandon_rate": round(s["abandon_rate"], 4),
            "max_hourly_abandon_rate": round(s["max_hourly_abandon_rate"], 4)}


def at_target(points: list[dict[str, Any]], target: float) -> dict[str, float | None]:
    """The best occupancy at or under the target, and the occupancy at the target itself: interpolated on the
    frontier (the best occupancy reached at each abandon rate or less) between the runs either side of it."""
    pts = sorted((p["abandon_rate"], p["occupancy"]) for p in points)
    frontier: list[tuple[float, float]] = []
    for rate, occ in pts:
        if not frontier or occ > frontier[-1][1]:
            frontier.append((rate, occ))
    under = [occ for rate, occ in frontier if rate <= target]
    best = max(under, default=None)
    at: float | None = None
    for (r0, o0), (r1, o1) in itertools.pairwise(frontier):
        if r0 <= target <= r1:
            at = o0 + (o1 - o0) * (target - r0) / (r1 - r0) if r1 > r0 else o1
    return {"best_under_target": best, "at_target": round(at, 4) if at is not None else None}


def main() -> None:
    ap = parser(__doc__)
    one_scenario_args(ap)
    args = ap.parse_args()
    target = load_scenario(args.scenario).campaign.abandon_target
    jobs: list[tuple[str, float | None]] = [(name, v) for name, values in SWEEPS.items() for v in values]
    jobs += [("erlang", None), ("oracle", None)]
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(run_point, [args.scenario] * len(jobs), [j[0] for j in jobs], [j[1] for j in jobs],
                             [args.duration] * len(jobs)))
    fixed = [r for r in rows if r["setting"] is not None]
    frontiers = {name: at_target([r for r in fixed if r["strategy"] == name], target) for name in SWEEPS}
    shipped = next(r for r in rows if r["strategy"] == "erlang" and r["setting"] is None)
    oracle = next(r for r in rows if r["strategy"] == "oracle")
    result = {"scenario": Path(args.scenario).stem, "target": target, "points": fixed, "frontiers": frontiers,
              "erlang_shipped": shipped, "oracle": oracle}

    def lines(r: dict[str, Any]) -> str:
        out = [f"pacing_frontier: {r['scenario']} (target {100 * r['target']:.1f} %)"]
        for p in r["points"]:
            out.append(f"  {p['strategy']:<11} {p['setting']:>6g}  occupancy {p['occupancy']:.3f}  abandon "
                       f"{100 * p['abandon_rate']:5.2f} % (max hourly {100 * p['max_hourly_abandon_rate']:5.2f} %)")
        for name, f in r["frontiers"].items():
            best, at = f["best_under_target"], f["at_target"]
            out.append(f"  frontier {name:<11} best at or under target "
                       f"{'-' if best is None else f'{best:.3f}'}, at the target {'-' if at is None else f'{at:.3f}'}")
        for label, p in (("erlang as shipped", r["erlang_shipped"]), ("oracle", r["oracle"])):
            out.append(f"  {label:<20} occupancy {p['occupancy']:.3f}  abandon {100 * p['abandon_rate']:.2f} %")
        return "\n".join(out)

    report(result, args.json, lines)


if __name__ == "__main__":
    main()
