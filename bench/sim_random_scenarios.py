"""The figures on scenarios nobody tuned for: floors drawn at random from the scenario schema, every strategy on
the same callers, and the issue's checks on each.

Each scenario draws (from `--seed`): agents 5–150, wrap-up fixed, exponential or uniform; a live-answer share
0.05–0.60, sometimes drifting over the shift; machines with AMD on or off; busy and failure shares; answer
delays lognormal or gamma; the ring timeout; talk times gamma or lognormal, 20 s to 5 min; people who hang up
while waiting, or not; half the agents leaving mid-shift, or not; a target of 2–5 %.

Checks on `erlang`, as for the shipped scenarios: abandon rate at or under the target, worst hour at most twice
the target (the issue's 6 % for its 3 %), and occupancy above every baseline (`progressive`, `ratio`,
`vicidial`, `omnidialer`) that stays at or under the target. The oracle runs too, for reference (its
occupancy bounds what any strategy can reach on those callers). A failure prints the scenario as YAML, to
keep and re-run with `marcador sim`.

    python bench/sim_random_scenarios.py [--count N] [--seed S] [--duration S] [--jobs N] [--json]
"""

from __future__ import annotations

import math
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import parser, report
from sim.des.simulation import Simulation
from sim.scenario import parse_scenario

BASELINES = ("progressive", "ratio", "vicidial", "omnidialer")
STRATEGIES = ("erlang", "oracle", *BASELINES)
HOURLY_FACTOR = 2.0  # the worst hour may reach this × the target: 6 % for 3 %, as the issue has it


def _r(x: float, digits: int = 3) -> float:
    return round(float(x), digits)


def draw(rng: np.random.Generator, index: int, duration_s: float) -> dict[str, Any]:
    """One scenario as YAML-ready data: every field within what a collections floor sees."""
    agents = round(math.exp(rng.uniform(math.log(5), math.log(150))))
    wrap = rng.choice(["fixed", "exponential", "uniform"])
    wrapup = ({"dist": "fixed", "value": _r(rng.uniform(0, 30), 1)} if wrap == "fixed"
              else {"dist": "exponential", "mean": _r(rng.uniform(3, 30), 1)} if wrap == "exponential"
              else {"dist": "uniform", "low": 2.0, "high": _r(rng.uniform(5, 40), 1)})
    p_live = _r(rng.uniform(0.05, 0.60))
    live: Any = p_live
    if rng.random() < 0.3:  # the live share drifts over the shift, up or down
        live = {"from": p_live, "to": _r(min(0.6, max(0.03, p_live * rng.uniform(0.3, 2.0))))}
    amd = bool(rng.random() < 0.3)
    p_machine = _r(rng.uniform(0.02, 0.25)) if amd or rng.random() < 0.2 else 0.0
    p_busy, p_fail = _r(rng.uniform(0, 0.15)), _r(rng.uniform(0, 0.15))
    top = max(p_live, live["to"]) if isinstance(live, dict) else p_live
    spare = 0.95 - top - p_machine  # at least 0.10: live ≤ 0.60, machines ≤ 0.25
    if p_busy + p_fail > spare:
        scale = spare / (p_busy + p_fail)
        p_busy, p_fail = _r(p_busy * scale), _r(p_fail * scale)
    timeout = _r(rng.uniform(18, 40), 0)
    median = rng.uniform(4, 14)
    delay = ({"dist": "lognormal", "median": _r(median, 1), "sigma": _r(rng.uniform(0.2, 1.0), 2), "max": timeout}
             if rng.random() < 0.7 else
             {"dist": "gamma", "mean": _r(median * 1.1, 1), "cv": _r(rng.uniform(0.2, 0.9), 2), "max": timeout})
    mean_talk = math.exp(rng.uniform(math.log(20), math.log(300)))
    talk = ({"dist": "gamma", "mean": _r(mean_talk, 0), "cv": _r(rng.uniform(0.3, 1.5), 2)} if rng.random() < 0.6
            else {"dist": "lognormal", "median": _r(mean_talk * 0.8, 0), "sigma": _r(rng.uniform(0.3, 1.0), 2)})
    calls: dict[str, Any] = {"p_live": live, "p_machine": p_machine, "p_busy": p_busy, "p_fail": p_fail,
                             "answer_delay_s": delay, "no_answer_timeout_s": timeout, "talk_s": talk}
    if rng.random() < 0.3:
        calls["patience_s"] = {"dist": "exponential", "mean": _r(rng.uniform(2, 20), 1), "min": 0.5}
    agent_spec: dict[str, Any] = {"count": agents, "wrapup_s": wrapup}
    if rng.random() < 0.25 and agents >= 4:
        agent_spec["schedule"] = [{"at_s": duration_s / 2, "count": agents // 2}]
    target = _r(rng.choice([0.02, 0.03, 0.03, 0.03, 0.05]), 2)
    return {"name": f"random-{index}", "seed": int(rng.integers(1, 10_000)), "duration_s": duration_s,
            "agents": agent_spec, "calls": calls,
            "campaign": {"abandon_target": target, "abandon_threshold_s": 2.0},
            "amd": {"enabled": amd, "detect_s": _r(rng.uniform(1.5, 3.5), 1), "false_machine": 0.05,
                    "false_human": 0.15}}


def run_one(data: dict[str, Any], strategy: str) -> dict[str, Any]:
    s = Simulation(parse_scenario(data, data["name"]), strategy).run().summary
    return {k: s[k] for k in ("scenario", "strategy", "occupancy", "abandon_rate", "max_hourly_abandon_rate")}


def judge(data: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The checks on one scenario's runs."""
    target = data["campaign"]["abandon_target"]
    erlang = next(r for r in runs if r["strategy"] == "erlang")
    oracle = next(r for r in runs if r["strategy"] == "oracle")
    fair = [r for r in runs if r["strategy"] in BASELINES and r["abandon_rate"] <= target]
    best = max(fair, key=lambda r: r["occupancy"], default=None)
    failures = []
    if erlang["abandon_rate"] > target:
        failures.append(f"abandon {erlang['abandon_rate']:.4f} over the target {target}")
    if erlang["max_hourly_abandon_rate"] > HOURLY_FACTOR * target:
        failures.append(f"worst hour {erlang['max_hourly_abandon_rate']:.4f} over {HOURLY_FACTOR * target:g}")
    if best is not None and best["occupancy"] >= erlang["occupancy"]:
        failures.append(f"{best['strategy']} keeps agents busier ({best['occupancy']:.4f} ≥ {erlang['occupancy']:.4f})")
    return {"scenario": data["name"], "agents": data["agents"]["count"], "target": target,
            "erlang": erlang, "oracle": oracle, "best_baseline": best, "failures": failures,
            "yaml": yaml.safe_dump(data, sort_keys=False) if failures else None}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--count", type=int, default=10, help="scenarios to draw")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--duration", type=float, default=28800.0, help="simulated seconds per shift")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    scenarios = [draw(rng, i + 1, args.duration) for i in range(args.count)]
    jobs = [(sc, name) for sc in scenarios for name in STRATEGIES]
    with ProcessPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(run_one, [j[0] for j in jobs], [j[1] for j in jobs]))
    per = len(STRATEGIES)
    verdicts = [judge(sc, runs[i * per:(i + 1) * per]) for i, sc in enumerate(scenarios)]
    result = {"seed": args.seed, "count": args.count, "duration_s": args.duration, "scenarios": verdicts,
              "passed": sum(not v["failures"] for v in verdicts)}

    def lines(r: dict[str, Any]) -> str:
        out = [f"sim_random_scenarios: {r['passed']} of {r['count']} scenarios pass (seed {r['seed']}, "
               f"{r['duration_s'] / 3600:g} h each)"]
        for v in r["scenarios"]:
            e, b = v["erlang"], v["best_baseline"]
            base = "none at or under target" if b is None else f"{b['strategy']} {b['occupancy']:.3f}"
            out.append(f"  {v['scenario']:<10} {v['agents']:>3} agents, target {100 * v['target']:.0f} %: erlang "
                       f"{e['occupancy']:.3f} at {100 * e['abandon_rate']:.2f} % (worst hour "
                       f"{100 * e['max_hourly_abandon_rate']:.2f} %), oracle {v['oracle']['occupancy']:.3f}; "
                       f"best baseline {base}"
                       + ("" if not v["failures"] else "  FAIL: " + "; ".join(v["failures"])))
        for v in r["scenarios"]:
            if v["yaml"]:
                out.append(f"--- {v['scenario']}\n{v['yaml']}")
        return "\n".join(out)

    report(result, args.json, lines)


if __name__ == "__main__":
    main()
