"""Hopper selection time: 1,000 picks out of a campaign of 1,000,000 leads (issue #4: ≤ 50 ms median).

Builds the leads (1-3 phones, mixed segments, stages, amounts and zones), adds them, then runs rounds of
`select(--select)` with outcomes fed back between rounds (not timed) and virtual time moving on, once with a gate
that allows everything, once with a gate refusing 30% of candidates (retry in an hour), and once through the
real compliance gates (`us-tsr-regf`: local calling window per debtor zone, 7-in-7 cap and cool-downs, a DNC
list of 100,000 numbers). Seeded: same figures' inputs on every run.

    python bench/hopper_select.py [--leads 1000000] [--select 1000] [--rounds 30] [--best-time] [--json]
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import parser, report
from dialer.compliance import DebtorHistory, DncList, Gatekeeper, load_rule_set
from dialer.hopper import Hopper, HopperRules, Pick
from dialer.model import Lead, Outcome

CAMPAIGN = "bench"
T0 = 1_750_000_000.0
SEGMENTS = ("retail", "cards", "auto", "mortgage", "smb")
ZONES = ("America/Bogota", "America/Mexico_City", "Europe/Madrid", "America/New_York", "America/Los_Angeles")
OUTCOMES = (Outcome.NO_ANSWER, Outcome.BUSY, Outcome.MACHINE, Outcome.CONNECTED, Outcome.FAILED, Outcome.ABANDONED)
OUTCOME_P = (0.45, 0.1, 0.2, 0.17, 0.05, 0.03)


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str
    retry_at: float | None


def make_leads(n: int, rng: np.random.Generator) -> list[Lead]:
    seg = rng.integers(0, len(SEGMENTS), n)
    zone = rng.integers(0, len(ZONES), n)
    dpd = rng.integers(1, 180, n)
    amount = np.round(rng.lognormal(6.0, 1.0, n), 2)
    nphones = rng.integers(1, 4, n)
    return [Lead(f"lead-{i:07d}", CAMPAIGN,
                 tuple(f"+57300{k}{i:07d}" for k in range(int(nphones[i]))),
                 country="CO", timezone=ZONES[zone[i]], amount_due=float(amount[i]), days_past_due=int(dpd[i]),
                 segment=SEGMENTS[seg[i]])
            for i in range(n)]


def run_rounds(hopper: Hopper, count: int, rounds: int, refuse: float, rng: np.random.Generator,
               start: float, real_gate: Gatekeeper | None = None) -> tuple[list[float], int, float]:
    """Times `select`; returns per-round ms, picks made, and the virtual time reached."""
    now = start
    # Refusal draws made up front, so the gate costs what a cheap real gate would (a lookup), not an RNG call.
    draws = rng.random(1 << 20)
    pos = 0

    def gate(lead: Lead, number: str, t: float) -> Refused | None:
        nonlocal pos
        pos = (pos + 1) & ((1 << 20) - 1)
        return Refused("calling window", t + 3600.0) if draws[pos] < refuse else None

    times: list[float] = []
    picked = 0
    for _ in range(rounds):
        started = time.perf_counter()
        picks: list[Pick] = hopper.select(count, now, gate if real_gate is None else real_gate.check)
        times.append((time.perf_counter() - started) * 1000)
        picked += len(picks)
        if real_gate is not None:
            for p in picks:
                real_gate.history.note_attempt(p.lead.lead_id, p.number, now)
        oc = rng.choice(len(OUTCOMES), size=len(picks), p=OUTCOME_P)
        for p, k in zip(picks, oc, strict=True):
            hopper.outcome(p.lead.lead_id, p.number, OUTCOMES[k], now + 30.0)
        now += 60.0
    return times, picked, now


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q))


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--leads", type=int, default=1_000_000)
    ap.add_argument("--select", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--refuse", type=float, default=0.3, help="share of gate calls refused in the second run")
    ap.add_argument("--best-time", action="store_true", help="order equal priorities by learnt answer rate")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    rules = HopperRules(segment_priority={"cards": 20, "retail": 10}, stage_priority={"early": 5, "late": -5},
                        best_time=args.best_time)
    leads = make_leads(args.leads, rng)
    hopper = Hopper(CAMPAIGN, rules)
    started = time.perf_counter()
    added = hopper.add(leads, T0)
    build_s = time.perf_counter() - started
    assert added == args.leads
    allow_ms, allow_n, now = run_rounds(hopper, args.select, args.rounds, 0.0, rng, T0)
    gated_ms, gated_n, now = run_rounds(hopper, args.select, args.rounds, args.refuse, rng, now)
    rules_set = load_rule_set("us-tsr-regf")
    dnc = DncList()
    dnc.add_many((lead.phones[0] for lead in leads[::10]), CAMPAIGN)
    real = Gatekeeper(rules_set, dnc, DebtorHistory.for_rule_set(rules_set), CAMPAIGN)
    real_ms, real_n, _ = run_rounds(hopper, args.select, args.rounds, 0.0, rng, now, real)
    result: dict[str, Any] = {
        "leads": args.leads, "select_count": args.select, "rounds": args.rounds, "best_time": args.best_time,
        "median_ms": round(statistics.median(allow_ms), 2), "p95_ms": round(pct(allow_ms, 95), 2),
        "gated_refuse": args.refuse,
        "gated_median_ms": round(statistics.median(gated_ms), 2), "gated_p95_ms": round(pct(gated_ms, 95), 2),
        "compliance_median_ms": round(statistics.median(real_ms), 2),
        "compliance_p95_ms": round(pct(real_ms, 95), 2),
        "picks": allow_n + gated_n + real_n, "refusals_logged": len(hopper.refusals),
        "build_s": round(build_s, 2), "counts": hopper.counts(),
    }
    report(result, args.json, lambda r: (
        f"hopper_select: select({r['select_count']}) of {r['leads']} leads: median {r['median_ms']} ms, "
        f"p95 {r['p95_ms']} ms; refusing {round(r['gated_refuse'] * 100)}%: median {r['gated_median_ms']} ms, "
        f"p95 {r['gated_p95_ms']} ms; through the compliance gates: median {r['compliance_median_ms']} ms, "
        f"p95 {r['compliance_p95_ms']} ms; build {r['build_s']} s"))


if __name__ == "__main__":
    main()
