"""Scenario files and the call model shared by the discrete-event simulator and the simulated PBX."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from sim.scenario import Dist, ScenarioError, draw_fate, load_scenario, parse_scenario, random_streams, value_at

SCENARIOS = Path(__file__).resolve().parents[1] / "bench" / "scenarios"


def _scenario(**over: object) -> dict[str, object]:
    base: dict[str, object] = {"name": "t", "seed": 3, "duration_s": 1800, "agents": {"count": 10},
                               "calls": {"p_live": 0.3}}
    base.update(over)
    return base


@pytest.mark.parametrize(("dist", "stat", "want"), [
    (Dist(dist="fixed", value=4), np.mean, 4.0),
    (Dist(dist="exponential", mean=5), np.mean, 5.0),
    (Dist(dist="uniform", low=2, high=6), np.mean, 4.0),
    (Dist(dist="lognormal", median=8, sigma=0.5), np.median, 8.0),
    (Dist(dist="gamma", mean=150, cv=0.8), np.mean, 150.0),
])
def test_distributions_sample_their_stated_mean_or_median(dist: Dist, stat: object, want: float) -> None:
    rng = np.random.default_rng(0)
    got = float(stat([dist.sample(rng) for _ in range(40_000)]))  # type: ignore[operator]
    assert abs(got - want) / want < 0.02, (dist.dist, got)
    assert dist.mean_value() == pytest.approx(want if dist.dist != "lognormal" else 8 * np.exp(0.125))


def test_gamma_has_its_stated_spread_and_clipping_holds() -> None:
    rng = np.random.default_rng(1)
    xs = np.array([Dist(dist="gamma", mean=150, cv=0.8).sample(rng) for _ in range(40_000)])
    assert xs.std() / xs.mean() == pytest.approx(0.8, rel=0.03)
    clipped = Dist(dist="lognormal", median=8, sigma=1.0, max=25, min=1)
    ys = [clipped.sample(rng) for _ in range(5000)]
    assert min(ys) == 1 and max(ys) == 25


def test_parameters_change_over_the_shift() -> None:
    sc = parse_scenario(_scenario(calls={"p_live": {"from": 0.3, "to": 0.1},
                                         "p_busy": [[0, 0.1], [900, 0.2], [1200, 0.05]]}))
    assert sc.p("p_live", 0) == pytest.approx(0.3)
    assert sc.p("p_live", 900) == pytest.approx(0.2)
    assert sc.p("p_live", 1800) == pytest.approx(0.1)
    assert sc.p("p_live", 99_999) == pytest.approx(0.1)
    assert sc.p("p_busy", 450) == pytest.approx(0.15)
    assert sc.p("p_busy", 1500) == pytest.approx(0.05)
    assert value_at(0.4, 1e9, 1) == 0.4
    agents = parse_scenario(_scenario(agents={"count": 10, "schedule": [{"at_s": 900, "count": 4},
                                                                        {"at_s": 1200, "count": 7}]})).agents
    assert [agents.count_at(t) for t in (0, 899, 900, 1199, 1200)] == [10, 10, 4, 4, 7]


@pytest.mark.parametrize(("data", "field", "why"), [
    (_scenario(calls={"p_live": 1.5}), r"calls\.p_live", "within 0..1"),
    (_scenario(calls={"p_live": "lots"}), r"calls\.p_live", r"expected a number, \{from: a, to: b\}"),
    (_scenario(calls={"p_live": {"from": 0.3}}), r"calls\.p_live", "expected a number"),
    (_scenario(calls={"p_live": [[0, 0.3], [10, 0.1], [5, 0.2]]}), r"calls\.p_live", "time order"),
    (_scenario(agents={"count": 3, "wrapup_s": {"dist": "gamma", "mean": 10}}), r"agents\.wrapup_s",
     "gamma needs cv"),
    (_scenario(calls={"talk_s": {"dist": "weibull", "mean": 10}}), r"calls\.talk_s\.dist", "'gamma'"),
    (_scenario(calls={"answer_delay_s": {"dist": "uniform", "low": 5, "high": 1}}), r"calls\.answer_delay_s",
     "high must be >= low"),
    (_scenario(agents={"count": -1}), r"agents\.count", "greater than or equal to 0"),
    (_scenario(agents={"count": 5, "schedule": [{"at_s": 10}]}), r"agents\.schedule\.0\.count", "Field required"),
    (_scenario(amd={"enable": True}), r"amd\.enable", "Extra inputs"),
    (_scenario(campaign={"abandon_target": 0}), r"campaign\.abandon_target", "greater than 0"),
    (_scenario(seed=-1), r"seed", "greater than or equal to 0"),  # numpy's seeds: a ValueError traceback
    (_scenario(leads={"generator": {"count": 5, "seed": -2}}), r"leads\.generator\.seed", "greater than or equal"),
    ({"name": "t"}, r"agents", "Field required"),
    (_scenario(campaigns=[{"id": "a", "rule_set": "uk-ofcom", "rule_overrides": {"min_ring_s": 5}}]),
     r"campaigns\.0\.rule_overrides", "would loosen"),  # was a ValueError traceback when the run was built
    (_scenario(recycle={"max_attempts_lead": 0}), r"recycle", "max_attempts_lead"),
])
def test_scenario_errors_name_the_field(data: dict[str, object], field: str, why: str) -> None:
    with pytest.raises(ScenarioError, match=rf"^scenario: .*{field}: .*{why}"):
        parse_scenario(data)


@pytest.mark.parametrize(("dist", "field"), [
    ({"dist": "fixed", "value": -10}, "value"),
    ({"dist": "uniform", "low": -5, "high": 3}, "low"),
    ({"dist": "gamma", "mean": 150, "cv": 0.8, "max": -1}, "max"),
    ({"dist": "lognormal", "median": 8, "sigma": 0.5, "min": -2}, "min"),
    ({"dist": "fixed", "value": float("inf")}, "value"),
])
def test_distributions_are_durations_in_seconds_never_negative_or_endless(dist: dict[str, object],
                                                                          field: str) -> None:
    """Every distribution in a scenario is a time (wrap-up, answer delay, talk, patience): a negative one was
    run as if it were 0 (a talk of -10 s ended at once), an endless one never ended."""
    with pytest.raises(ScenarioError, match=rf"^scenario: calls\.talk_s\.{field}: "):
        parse_scenario(_scenario(calls={"p_live": 0.3, "talk_s": dist}))


@pytest.mark.parametrize(("dist", "why"), [
    ({"dist": "exponential", "mean": 5, "cv": 0.5}, "exponential does not take cv"),
    ({"dist": "lognormal", "median": 8, "sigma": 0.5, "mean": 12}, "lognormal does not take mean"),
    ({"dist": "fixed", "value": 10, "low": 5, "high": 20}, "fixed does not take low, high"),
])
def test_a_parameter_the_distribution_does_not_use_is_refused_not_ignored(dist: dict[str, object],
                                                                          why: str) -> None:
    with pytest.raises(ScenarioError, match=rf"^scenario: calls\.talk_s: {why} \(it takes "):
        parse_scenario(_scenario(calls={"p_live": 0.3, "talk_s": dist}))


def test_shares_are_checked_wherever_a_schedule_bends() -> None:
    with pytest.raises(ScenarioError, match=r"> 1"):
        parse_scenario(_scenario(calls={"p_live": 0.6, "p_busy": 0.5}))
    # fine at the start and at the end, too much at t=900
    with pytest.raises(ScenarioError, match=r"^scenario: calls: p_live \+ .* is 1\.150 at t=900 s \(> 1\)"):
        parse_scenario(_scenario(calls={"p_live": [[0, 0.2], [900, 0.9], [1800, 0.2]], "p_busy": 0.2}))


def test_files_that_cannot_be_read_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nagents: [1, 2\n")
    with pytest.raises(ScenarioError, match=r"bad\.yaml: not valid YAML"):
        load_scenario(bad)
    with pytest.raises(ScenarioError, match=r"missing\.yaml: cannot read"):
        load_scenario(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ScenarioError, match=r"list\.yaml: the top level must be a mapping"):
        load_scenario(tmp_path / "list.yaml")
    (tmp_path / "field.yaml").write_text("name: x\nagents: {count: 5}\ncalls: {p_busy: 2}\n")
    with pytest.raises(ScenarioError, match=r"field\.yaml: calls\.p_busy"):
        load_scenario(tmp_path / "field.yaml")


def test_shipped_scenarios_are_the_ones_asked_for() -> None:
    sc = {p.stem: load_scenario(p) for p in SCENARIOS.glob("*.yaml")}
    assert {"collections-10", "collections-50", "collections-200", "amd-50", "drift-50", "shift-change-50"} <= set(sc)
    for name, s in sc.items():
        assert s.name == name
        assert s.duration_s == 28_800 and s.campaign.abandon_target == 0.03 and s.campaign.abandon_threshold_s == 2.0
    assert (sc["collections-10"].agents.count, sc["collections-10"].p("p_live", 0)) == (10, 0.30)
    assert (sc["collections-50"].agents.count, sc["collections-50"].p("p_live", 0)) == (50, 0.20)
    assert (sc["collections-200"].agents.count, sc["collections-200"].p("p_live", 0)) == (200, 0.15)
    amd = sc["amd-50"]
    machine_share = amd.p("p_machine", 0) / (amd.p("p_machine", 0) + amd.p("p_live", 0))
    assert amd.amd.enabled and machine_share == pytest.approx(0.35)
    drift = sc["drift-50"]
    assert drift.p("p_live", 0) == pytest.approx(0.30) and drift.p("p_live", 28_800) == pytest.approx(0.10)
    shift = sc["shift-change-50"].agents
    assert shift.count_at(0) == 50 and shift.count_at(14_400) == 25


def test_variants_load_and_differ_from_collections_50_as_named() -> None:
    # bench/variants: collections-50 with one thing changed each (README: outside the shipped set).
    base = load_scenario(SCENARIOS / "collections-50.yaml")
    v = {p.stem: load_scenario(p) for p in (SCENARIOS.parent / "variants").glob("*.yaml")}
    assert {n: s.name for n, s in v.items()} == {n: n for n in v} and len(v) == 6
    assert v["c50-plive-05"].p("p_live", 0) == 0.05 and v["c50-plive-60"].p("p_live", 0) == 0.60
    assert (v["c50-short-talk"].calls.talk_s.mean, v["c50-short-talk"].calls.talk_s.cv) == (30, 1.2)
    assert v["c50-wide-answer"].calls.answer_delay_s.sigma == 1.0
    assert (v["c50-five-agents"].agents.count, v["c50-five-agents"].agents.wrapup_s.dist) == (5, "exponential")
    assert v["c50-no-wrapup"].agents.wrapup_s.value == 0 and v["c50-no-wrapup"].campaign.abandon_threshold_s == 0.5
    for s in v.values():
        assert s.seed == base.seed and s.duration_s == base.duration_s and s.campaign.abandon_target == 0.03


def test_fates_follow_the_stated_shares() -> None:
    sc = parse_scenario(_scenario(calls={"p_live": 0.2, "p_machine": 0.1, "p_busy": 0.1, "p_fail": 0.05,
                                         "answer_delay_s": {"dist": "uniform", "low": 1, "high": 30}},
                                  amd={"enabled": True, "false_machine": 0.1, "false_human": 0.2}))
    rng = random_streams(7)[0]
    fates = [draw_fate(sc, rng, 0.0) for _ in range(40_000)]
    share = {k: sum(f.kind == k for f in fates) / len(fates) for k in ("live", "machine", "busy", "fail")}
    answered = 24 / 29  # answer delays uniform 1..30 s, the rest ring out at 25 s
    assert share["live"] == pytest.approx(0.2 * answered, abs=0.008)
    assert share["machine"] == pytest.approx(0.1 * answered, abs=0.006)
    assert share["busy"] == pytest.approx(0.1, abs=0.006) and share["fail"] == pytest.approx(0.05, abs=0.005)
    live = [f for f in fates if f.kind == "live"]
    machines = [f for f in fates if f.kind == "machine"]
    assert sum(f.amd_says_machine for f in live) / len(live) == pytest.approx(0.1, abs=0.015)
    assert sum(not f.amd_says_machine for f in machines) / len(machines) == pytest.approx(0.2, abs=0.025)
    assert all(f.answer_s < 25 for f in live + machines) and all(f.talk_s <= 15 for f in machines)


def test_every_fate_takes_the_same_draws_whatever_its_kind() -> None:
    """The n-th caller's talk time does not depend on what the callers before it did (common random numbers)."""
    a = parse_scenario(_scenario(calls={"p_live": 0.1}))
    b = parse_scenario(_scenario(calls={"p_live": 0.9, "p_busy": 0.05, "p_fail": 0.05}))
    ra, rb = random_streams(1)[0], random_streams(1)[0]
    fa = [draw_fate(a, ra, 0.0) for _ in range(500)]
    fb = [draw_fate(b, rb, 0.0) for _ in range(500)]
    assert [f.talk_s for f in fa] == [f.talk_s for f in fb]
    assert [f.kind for f in fa] != [f.kind for f in fb]


def test_random_streams_are_reproducible_and_independent() -> None:
    c1, a1 = random_streams(5)
    c2, a2 = random_streams(5)
    assert c1.random() == c2.random() and a1.random() == a2.random()
    c3, a3 = random_streams(5)
    assert c3.random() != a3.random()


def test_the_simulated_pbx_judges_its_callers_on_the_originates_ring_time() -> None:
    """The simulated PBX rings as long as the Originate asks (a rule set's minimum ring may lengthen the
    scenario's timeout): a person who picks up at 12 s answers a 15 s ring, not a 10 s one."""
    from sim.pbx import ScenarioCallModel

    sc = parse_scenario({"name": "t", "agents": {"count": 1}, "calls": {
        "p_live": 0.8, "p_busy": 0.0, "p_fail": 0.0, "answer_delay_s": {"dist": "fixed", "value": 12},
        "no_answer_timeout_s": 10}})
    kinds = {}
    for ring in (10.0, 15.0):
        model = ScenarioCallModel(sc, seed=1)
        kinds[ring] = Counter(model.fate("+15550000001", ring).kind for _ in range(200))
    assert set(kinds[10.0]) == {"no_answer"}
    assert kinds[15.0]["answer"] > 100 and set(kinds[15.0]) == {"answer", "no_answer"}


def test_a_file_that_is_not_utf8_text_names_the_file(tmp_path: Path) -> None:
    """A binary or Latin-1 file was a UnicodeDecodeError traceback."""
    (tmp_path / "latin.yaml").write_bytes(b"name: se\xf1or\nagents: {count: 5}\n")
    with pytest.raises(ScenarioError, match=r"latin\.yaml: not UTF-8 text"):
        load_scenario(tmp_path / "latin.yaml")


@pytest.mark.parametrize(("over", "field"), [
    ({"duration_s": float("inf")}, "duration_s"),  # ran for ever
    ({"campaign": {"abandon_threshold_s": float("inf")}}, r"campaign\.abandon_threshold_s"),  # a traceback
    ({"campaign": {"max_calls_per_s": float("nan")}}, r"campaign\.max_calls_per_s"),
    ({"calls": {"no_answer_timeout_s": float("inf")}}, r"calls\.no_answer_timeout_s"),  # rang for ever
    ({"calls": {"machine_talk_s": float("inf")}}, r"calls\.machine_talk_s"),
    ({"calls": {"p_live": [[float("nan"), 0.2], [10, 0.3]]}}, r"calls\.p_live"),
    ({"calls": {"p_live": [[0, 0.2], [float("inf"), 0.3]]}}, r"calls\.p_live"),
    ({"agents": {"count": 5, "schedule": [{"at_s": float("inf"), "count": 2}]}}, r"agents\.schedule\.0\.at_s"),
    ({"amd": {"detect_s": float("inf")}}, r"amd\.detect_s"),
])
def test_numbers_in_a_scenario_are_finite(over: dict[str, object], field: str) -> None:
    """YAML's .inf and .nan: a shift of .inf seconds never ended, an endless abandon threshold was a traceback."""
    with pytest.raises(ScenarioError, match=rf"^scenario: {field}: "):
        parse_scenario(_scenario(**over))


def test_an_agent_change_after_the_shift_ends_is_refused() -> None:
    """A change at 9000 s in a 1800 s shift (minutes for seconds, a shorter copy of a file) was ignored without a
    word. At the very end it is allowed (it changes nothing), like a change in a --duration run that ends before it."""
    with pytest.raises(ScenarioError, match=r"^scenario: agents\.schedule\.1\.at_s: 9000 s is after the end of "
                                            r"the shift \(duration_s 1800\)"):
        parse_scenario(_scenario(agents={"count": 5, "schedule": [{"at_s": 60, "count": 3},
                                                                  {"at_s": 9000, "count": 2}]}))
    parse_scenario(_scenario(agents={"count": 5, "schedule": [{"at_s": 1800, "count": 2}]}))


def test_a_key_given_twice_is_refused_with_its_line(tmp_path: Path) -> None:
    """YAML keeps the last of two equal keys without a word: the first `p_live` here was silently dropped."""
    f = tmp_path / "twice.yaml"
    f.write_text("name: t\nagents: {count: 5}\ncalls:\n  p_live: 0.3\n  p_busy: 0.1\n  p_live: 0.05\n")
    with pytest.raises(ScenarioError, match=r"twice\.yaml: line 6: calls\.p_live given twice \(first on line 4\)"):
        load_scenario(f)


@pytest.mark.parametrize(("over", "field"), [
    ({"seed": True}, "seed"),
    ({"duration_s": True}, "duration_s"),
    ({"agents": {"count": True}}, r"agents\.count"),
    ({"calls": {"p_live": 0.3, "talk_s": {"dist": "fixed", "value": False}}}, r"calls\.talk_s\.value"),
    ({"campaigns": [{"id": "a", "weight": True}]}, r"campaigns\.0\.weight"),
])
def test_yes_and_no_are_not_numbers(over: dict[str, object], field: str) -> None:
    """YAML reads `yes`, `no`, `true` as booleans, and a number field took them as 1 and 0 (`seed: yes` ran seed 1,
    `count: true` one agent)."""
    with pytest.raises(ScenarioError, match=rf"^scenario: {field}: expected a number, got a yes/no"):
        parse_scenario(_scenario(**over))
    parse_scenario(_scenario(amd={"enabled": True}, recycle={"best_time": False}))  # true yes/no fields


@pytest.mark.parametrize(("over", "field"), [
    ({"seed": "7"}, "seed"),
    ({"duration_s": "3600"}, "duration_s"),
    ({"agents": {"count": "5"}}, r"agents\.count"),
    ({"agents": {"count": 5, "schedule": [{"at_s": "60", "count": 3}]}}, r"agents\.schedule\.0\.at_s"),
    ({"calls": {"p_live": 0.3, "talk_s": {"dist": "fixed", "value": "90"}}}, r"calls\.talk_s\.value"),
    ({"campaign": {"abandon_target": "0.03"}}, r"campaign\.abandon_target"),
])
def test_a_quoted_number_is_refused_naming_the_field(over: dict[str, object], field: str) -> None:
    """`count: "5"` ran five agents: pydantic reads a numeric string as the number, and a quoted cell is most
    often pasted from elsewhere. Text fields keep their quotes."""
    with pytest.raises(ScenarioError, match=rf"^scenario: {field}: expected a number, got a quoted string "
                                            r"\('.*'\): remove the quotes$"):
        parse_scenario(_scenario(**over))
    assert parse_scenario(_scenario(name="2024")).name == "2024"


def test_two_agent_changes_at_one_moment_are_refused() -> None:
    """Two schedule entries with one at_s: the last silently won, the first was never applied."""
    with pytest.raises(ScenarioError, match=r"agents\.schedule: .*changes 0 and 1 are both at_s 900: one count"):
        parse_scenario(_scenario(agents={"count": 5, "schedule": [{"at_s": 900, "count": 2},
                                                                  {"at_s": 900, "count": 4}]}))
