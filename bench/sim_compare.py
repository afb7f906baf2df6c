"""Every strategy on every scenario in bench/scenarios/, same callers per scenario: the comparison tables, then
the wall time of one 8-hour collections-50 shift under the predictive strategy (target: at most 15 s).

    python bench/sim_compare.py [--dir DIR] [--scenarios GLOB] [--strategies a,b] [--jobs N] [--no-timing] [--json]

`--dir bench/variants` runs the variants of collections-50 kept there instead of the shipped scenarios.

With --json the tables go to stderr and one JSON object is printed last on stdout.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console

from bench._report import parser
from marcador_cli.sim_cmd import comparison_table, rank
from sim.des.simulation import Simulation, strategy_names
from sim.scenario import load_scenario

HERE = Path(__file__).resolve().parent
TIMED_SCENARIO = "collections-50.yaml"
TIMED_STRATEGY = "erlang"
WALL_TARGET_S = 15.0


def _one(path: str, strategy: str) -> dict[str, Any]:
    return Simulation(load_scenario(path), strategy).run().summary


def timing() -> dict[str, Any]:
    """The 8-hour collections-50 shift, alone on the machine (run it without --jobs for a clean figure)."""
    sc = load_scenario(HERE / "scenarios" / TIMED_SCENARIO)
    started = time.perf_counter()
    summary = Simulation(sc, TIMED_STRATEGY).run().summary
    wall = time.perf_counter() - started
    return {"scenario": sc.name, "strategy": TIMED_STRATEGY, "sim_seconds": sc.duration_s,
            "wall_seconds": round(wall, 2), "target_wall_seconds": WALL_TARGET_S,
            "speedup": round(sc.duration_s / wall), "attempts": summary["attempts"]}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--dir", default=str(HERE / "scenarios"), help="where the scenarios are (bench/scenarios)")
    ap.add_argument("--scenarios", default="*.yaml", help="glob inside --dir")
    ap.add_argument("--strategies", default=",".join(strategy_names()))
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel (wall seconds per run then overlap)")
    ap.add_argument("--no-timing", action="store_true", help="skip the collections-50 wall-time measurement")
    args = ap.parse_args()
    console = Console(stderr=args.json, width=120)
    names = [n.strip() for n in args.strategies.split(",") if n.strip()]
    unknown = sorted(set(names) - set(strategy_names()))
    if unknown:
        ap.error(f"unknown strategies {unknown}; known: {strategy_names()}")
    paths = sorted(Path(args.dir).glob(args.scenarios))
    if not paths:
        ap.error(f"no scenario matches {args.scenarios} in {args.dir}")
    jobs = [(str(p), n) for p in paths for n in names]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            results = list(pool.map(_one, *zip(*jobs, strict=True)))
    else:
        results = [_one(p, n) for p, n in jobs]
    report = []
    for i, path in enumerate(paths):
        sc = load_scenario(path)
        rows = rank(results[i * len(names):(i + 1) * len(names)])
        console.print(comparison_table(sc.name, sc.campaign.abandon_target, rows))
        report.append({"scenario": sc.name, "target": sc.campaign.abandon_target, "results": rows})
    out: dict[str, Any] = {"scenarios": report}
    if not args.no_timing:
        t = out["timing"] = timing()
        verdict = "within" if t["wall_seconds"] <= WALL_TARGET_S else "OVER"
        console.print(f"{t['scenario']} · {t['strategy']} · {t['sim_seconds'] / 3600:g} h simulated in "
                      f"{t['wall_seconds']} s wall ({t['speedup']}× real time; "
                      f"{verdict} the {WALL_TARGET_S:g} s target)")
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
