"""One pacing decision of the predictive model for a floor of 200 agents: median and p99 time.

    python bench/pacing_decision.py [--agents 200] [--json]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import parser, report
from pacing.erlang import ErlangPacer
from pacing.snapshot import DialResult, HandleResult, PacingCaps, PacingSnapshot


def run(agents: int, decisions: int = 2000) -> dict[str, float]:
    rng = np.random.default_rng(11)
    pacer = ErlangPacer(PacingCaps(max_lines=10 * agents, max_lines_per_agent=4.0, max_calls_per_s=1000))
    for i in range(500):
        live = bool(rng.random() < 0.15)
        pacer.observe(DialResult(float(i), float(rng.lognormal(np.log(8), 0.5)) if live else 25.0,
                                 "live" if live else "none"))
    for _ in range(200):
        pacer.observe(HandleResult(500.0, float(rng.gamma(1.56, 150 / 1.56)), 10.0))
    times = []
    for k in range(decisions):
        busy = int(agents * 0.85)
        snap = PacingSnapshot(
            now=1000.0 + k, agents_logged_in=agents, agents_ready=agents - busy - 5,
            talking_elapsed=tuple(rng.uniform(0, 400, busy)), wrapup_elapsed=tuple(rng.uniform(100, 300, 5)),
            wrapup_in_state=tuple(rng.uniform(0, 10, 5)), ringing_elapsed=tuple(rng.uniform(0, 25, agents // 2)),
            waiting_calls=int(rng.integers(0, 3)))
        started = time.perf_counter()
        pacer.decide(snap)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"agents": agents, "decisions": decisions, "decision_median_ms": round(statistics.median(times), 4),
            "decision_p99_ms": round(times[int(0.99 * len(times))], 4)}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--agents", type=int, default=200)
    args = ap.parse_args()
    result = run(args.agents)
    report(result, args.json, lambda r: (
        f"pacing_decision: {r['agents']} agents, median {r['decision_median_ms']} ms, "
              f"p99 {r['decision_p99_ms']} ms"))


if __name__ == "__main__":
    main()
