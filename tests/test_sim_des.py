"""The discrete-event simulator: determinism, reconciliation of its log with its summary, the call model,
scenario validation, and the CLI."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from marcador_cli.main import app
from sim.des.simulation import Simulation
from sim.scenario import Dist, ScenarioError, load_scenario, parse_scenario, value_at

SCENARIOS = Path(__file__).resolve().parents[1] / "bench" / "scenarios"


def _scenario(**over: object) -> dict[str, object]:
    base: dict[str, object] = {"name": "t", "seed": 3, "duration_s": 1800, "agents": {"count": 10},
                               "calls": {"p_live": 0.3}}
    base.update(over)
    return base


def test_same_seed_same_result_and_other_seed_differs() -> None:
    sc = parse_scenario(_scenario())
    a = Simulation(sc, "erlang").run().summary
    b = Simulation(sc, "erlang").run().summary
    c = Simulation(sc, "erlang", seed=4).run().summary
    for s in (a, b, c):
        s.pop("wall_seconds")
    assert a == b and a != c


@pytest.mark.parametrize("strategy", ["progressive", "erlang", "ratio", "vicidial", "omnidialer", "oracle"])
def test_attempt_log_reconciles_with_summary(strategy: str) -> None:
    result = Simulation(parse_scenario(_scenario()), strategy, ratio=2.0).run()
    s = result.summary
    by = Counter(a.outcome.value for a in result.attempts if a.outcome)
    assert s["attempts"] == len(result.attempts) == sum(by.values())
    assert s["connected"] == by["connected"] and s["abandoned"] == by["abandoned"]
    assert s["live_answers"] == s["connected"] + s["abandoned"]
    assert s["outcomes"] == dict(sorted(by.items()))
    for a in result.attempts:
        assert a.ended_at is not None and a.ended_at >= a.dialed_at
        if a.outcome and a.outcome.value == "connected":
            assert a.agent_id and a.connected_at is not None and a.answered_at is not None
            assert a.connected_at - a.answered_at <= 2.0 + 1e-9
    assert 0 < s["occupancy"] < 1


def test_progressive_never_abandons_and_oracle_never_abandons() -> None:
    sc = parse_scenario(_scenario(duration_s=3600))
    for strategy in ("progressive", "oracle"):
        assert Simulation(sc, strategy).run().summary["abandoned"] == 0


def test_distributions_sample_their_stated_parameters() -> None:
    rng = np.random.default_rng(0)
    cases = [(Dist(dist="fixed", value=4), np.mean, 4.0), (Dist(dist="exponential", mean=5), np.mean, 5.0),
             (Dist(dist="uniform", low=2, high=6), np.mean, 4.0), (Dist(dist="lognormal", median=8, sigma=0.5),
                                                                   np.median, 8.0),
             (Dist(dist="gamma", mean=150, cv=0.8), np.mean, 150.0)]
    for dist, stat, want in cases:
        got = float(stat([dist.sample(rng) for _ in range(20_000)]))  # type: ignore[operator]
        assert abs(got - want) / want < 0.03, (dist.dist, got)
    clipped = Dist(dist="lognormal", median=8, sigma=1.0, max=25, min=1)
    xs = [clipped.sample(rng) for _ in range(5000)]
    assert min(xs) >= 1 and max(xs) <= 25


def test_parameters_change_over_the_shift_and_agents_follow_their_schedule() -> None:
    sc = parse_scenario(_scenario(calls={"p_live": {"from": 0.3, "to": 0.1}},
                                  agents={"count": 10, "schedule": [{"at_s": 900, "count": 4}]}))
    assert value_at(sc.calls.p_live, 0, 1800) == pytest.approx(0.3)
    assert value_at(sc.calls.p_live, 1800, 1800) == pytest.approx(0.1)
    assert sc.agents.count_at(899) == 10 and sc.agents.count_at(900) == 4
    result = Simulation(sc, "progressive").run()
    # agents leaving finish their call, but none of them takes a new one
    late = {a.agent_id for a in result.attempts if a.connected_at is not None and a.connected_at > 900}
    early = {a.agent_id for a in result.attempts if a.connected_at is not None and a.connected_at <= 900}
    assert len(late) <= 4 < len(early)


def test_scenario_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"calls\.p_live"):
        parse_scenario(_scenario(calls={"p_live": 1.5}))
    with pytest.raises(ScenarioError, match=r"agents\.wrapup_s.*gamma needs cv"):
        parse_scenario(_scenario(agents={"count": 3, "wrapup_s": {"dist": "gamma", "mean": 10}}))
    with pytest.raises(ScenarioError, match="> 1"):
        parse_scenario(_scenario(calls={"p_live": 0.6, "p_busy": 0.5}))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nagents: [1, 2\n")
    with pytest.raises(ScenarioError, match=r"bad\.yaml: not valid YAML"):
        load_scenario(bad)


def test_shipped_scenarios_load() -> None:
    names = {load_scenario(p).name for p in SCENARIOS.glob("*.yaml")}
    assert {"collections-10", "collections-50", "collections-200", "amd-50", "drift-50", "shift-change-50"} <= names
    amd = load_scenario(SCENARIOS / "amd-50.yaml")
    share = amd.p("p_machine", 0) / (amd.p("p_machine", 0) + amd.p("p_live", 0))
    assert amd.amd.enabled and abs(share - 0.35) < 1e-9


def test_cli_json_attempts_out_and_compare(tmp_path: Path) -> None:
    runner = CliRunner()
    scenario = str(SCENARIOS / "collections-10.yaml")
    out = tmp_path / "attempts.jsonl"
    r = runner.invoke(app, ["sim", scenario, "--strategy", "erlang", "--duration", "1800", "--json",
                            "--attempts-out", str(out)])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output.strip().splitlines()[-1])
    for key in ("strategy", "seed", "agents", "sim_seconds", "wall_seconds", "attempts", "live_answers", "connected",
                "abandoned", "abandon_rate", "max_hourly_abandon_rate", "occupancy", "idle_per_connect_s"):
        assert key in summary
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == summary["attempts"]
    assert rows[0]["dialed_at"].endswith("+00:00") and set(rows[0]) == {
        "call_id", "lead_id", "number", "caller_id", "dialed_at", "answered_at", "connected_at", "ended_at",
        "outcome", "agent_id"}
    r = runner.invoke(app, ["sim", "compare", scenario, "--duration", "900", "--json"])
    assert r.exit_code == 0, r.output
    table = json.loads(r.output.strip().splitlines()[-1])
    assert {row["strategy"] for row in table["results"]} == {"progressive", "erlang", "ratio", "vicidial",
                                                              "omnidialer", "oracle"}
    occ = [row["occupancy"] for row in table["results"]]
    assert occ == sorted(occ, reverse=True)
    r = runner.invoke(app, ["sim", scenario, "--strategy", "nope"])
    assert r.exit_code != 0 and "unknown strategy" in r.output


def test_cli_plots(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["sim", str(SCENARIOS / "collections-10.yaml"), "--strategy", "progressive",
                                 "--duration", "900", "--json", "--plot", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert len(list(tmp_path.glob("*.png"))) == 4
