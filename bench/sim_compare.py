"""Every strategy on every scenario in bench/scenarios/, same callers per scenario: the comparison table.

    python bench/sim_compare.py [--scenarios GLOB] [--strategies a,b] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console

from marcador_cli.sim_cmd import STRATEGY_NAMES, comparison_table
from sim.des.simulation import Simulation
from sim.scenario import load_scenario

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default="*.yaml", help="glob inside bench/scenarios")
    ap.add_argument("--strategies", default=",".join(STRATEGY_NAMES))
    ap.add_argument("--json", action="store_true", help="print one JSON object last")
    args = ap.parse_args()
    console = Console(stderr=args.json, width=120)
    report = []
    for path in sorted((HERE / "scenarios").glob(args.scenarios)):
        sc = load_scenario(path)
        rows = [Simulation(sc, name).run().summary for name in args.strategies.split(",")]
        rows.sort(key=lambda r: r["occupancy"], reverse=True)
        console.print(comparison_table(sc.name, sc.campaign.abandon_target, rows))
        report.append({"scenario": sc.name, "target": sc.campaign.abandon_target, "results": rows})
    if args.json:
        print(json.dumps({"scenarios": report}))


if __name__ == "__main__":
    main()
