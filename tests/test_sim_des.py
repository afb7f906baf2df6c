"""The discrete-event simulator around the real core: the kernel, determinism, the attempt log against the
summary, the call flow it plays (wrap-ups, abandons, patience, AMD, shift changes) and the oracle."""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter, defaultdict
from typing import Any

import pytest

from dialer.model import Attempt, Outcome
from sim.des.kernel import Kernel
from sim.des.simulation import CAMPAIGN, SimResult, Simulation, attempt_row, strategy_names
from sim.oracle import abandons
from sim.scenario import ScenarioError, parse_scenario

STRATEGIES = strategy_names()  # the registry's (as others add theirs) and the oracle


def _scenario(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "t", "seed": 3, "duration_s": 1800, "agents": {"count": 10},
                            "calls": {"p_live": 0.3}}
    base.update(over)
    return base


def _run(strategy: str = "erlang", **over: Any) -> SimResult:
    options = over.pop("options", {})
    return Simulation(parse_scenario(_scenario(**over)), strategy, **options).run()


def _outcome(a: Attempt) -> str | None:
    return a.outcome.value if a.outcome is not None else None


def test_kernel_runs_in_time_order_and_keeps_ties_in_order() -> None:
    k = Kernel()
    seen: list[tuple[float, str]] = []

    def note(label: str) -> None:
        seen.append((k.now, label))
        if label == "b":
            k.after(0.0, note, "b-then")  # same instant: after everything already due now
            k.at(-5.0, note, "past")  # never back in time

    k.at(2.0, note, "c")
    k.at(1.0, note, "a")
    k.at(1.5, note, "b")
    k.at(1.5, note, "b2")
    k.at(9.0, note, "late")
    k.run_until(5.0)
    assert seen == [(1.0, "a"), (1.5, "b"), (1.5, "b2"), (1.5, "b-then"), (1.5, "past"), (2.0, "c")]
    assert k.now == 5.0 and len(k) == 1 and k.next_time() == 9.0


def test_same_seed_gives_byte_identical_json_and_log() -> None:
    def once(seed: int | None = None) -> tuple[str, str]:
        result = _run("erlang", options={"seed": seed})
        summary = dict(result.summary)
        summary.pop("wall_seconds")
        return json.dumps(summary), "\n".join(json.dumps(attempt_row(a)) for a in result.attempts)

    a, b, c = once(), once(), once(4)
    assert a == b
    assert a[0] != c[0]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_attempt_log_reconciles_with_the_summary_and_the_core(strategy: str) -> None:
    sim = Simulation(parse_scenario(_scenario()), strategy, ratio=2.5)
    result = sim.run()
    s, log = result.summary, result.attempts
    by = Counter(_outcome(a) or "in_flight" for a in log)
    assert s["attempts"] == len(log) == sum(by.values())
    assert s["outcomes"] == dict(sorted(by.items()))
    assert s["connected"] == by["connected"] and s["abandoned"] == by["abandoned"]
    assert s["live_answers"] == s["connected"] + s["abandoned"]
    assert s["abandon_rate"] == pytest.approx(s["abandoned"] / s["live_answers"], abs=1e-5)
    core = sim.core.stats(CAMPAIGN, sim.duration)
    assert core["attempts"] == s["attempts"] and core["connected"] == s["connected"]
    assert core["abandoned"] == s["abandoned"]
    assert len({a.call_id for a in log}) == len(log)
    last_end: dict[str, float] = {}  # leads are recycled by the core's hopper, never dialed twice at once
    for a in log:
        assert a.dialed_at >= last_end.get(a.lead_id, float("-inf"))
        last_end[a.lead_id] = a.ended_at if a.ended_at is not None else float("inf")
    assert [a.dialed_at for a in log] == sorted(a.dialed_at for a in log)
    for a in log:
        assert a.ended_at is None or a.ended_at >= a.dialed_at
        if a.outcome is Outcome.CONNECTED:
            assert a.agent_id and a.answered_at is not None and a.connected_at is not None
            assert a.connected_at - a.answered_at <= 2.0 + 1e-9  # the core's threshold, as in production
        if a.outcome is Outcome.ABANDONED:
            assert a.agent_id is None and a.connected_at is None
    assert 0 < s["occupancy"] < 1
    assert s["max_hourly_abandon_rate"] >= s["abandon_rate"] - 1e-9 or s["live_answers"] == 0


@pytest.mark.parametrize("strategy", ["progressive", "oracle"])
def test_never_abandons_when_every_call_has_an_agent(strategy: str) -> None:
    """Progressive never has more lines than ready agents; the oracle knows who answers and when agents free."""
    result = _run(strategy, duration_s=3600, agents={"count": 8})
    assert result.summary["abandoned"] == 0 and result.summary["connected"] > 50
    if strategy == "progressive":
        assert all(row["lines"] <= row["agents_ready"] + row["agents_on_call"] + row["agents_wrapup"]
                   for row in result.series)


def test_agents_serve_one_call_at_a_time_and_take_their_wrapup() -> None:
    result = _run("ratio", agents={"count": 6, "wrapup_s": {"dist": "fixed", "value": 7}}, options={"ratio": 3.0})
    calls: dict[str, list[Attempt]] = defaultdict(list)
    for a in result.attempts:
        if a.agent_id is not None:
            calls[a.agent_id].append(a)
    assert len(calls) == 6
    for handled in calls.values():
        handled.sort(key=lambda a: a.connected_at or 0.0)
        for before, after in itertools.pairwise(handled):
            assert before.ended_at is not None and after.connected_at is not None
            assert after.connected_at >= before.ended_at + 7 - 1e-9


def test_abandoned_calls_hear_the_message_and_impatient_people_hang_up() -> None:
    over = {"agents": {"count": 4}, "options": {"ratio": 4.0}}

    def waits(result: SimResult) -> set[float]:
        """Answer → hang-up of the abandoned calls that ended."""
        return {round(a.ended_at - a.answered_at, 6) for a in result.attempts
                if a.outcome is Outcome.ABANDONED and a.ended_at is not None and a.answered_at is not None}

    assert waits(_run("ratio", **over)) == {4.0}  # the 2 s threshold, then the 2 s message
    impatient = _run("ratio", calls={"p_live": 0.3, "patience_s": {"dist": "fixed", "value": 0.5}}, **over)
    assert waits(impatient) == {0.5}


def test_amd_hangs_up_on_machines_and_makes_its_mistakes() -> None:
    sc = {"calls": {"p_live": 0.2, "p_machine": 0.2}, "agents": {"count": 20}, "duration_s": 3600,
          "amd": {"enabled": True, "detect_s": 2.5, "false_machine": 0.1, "false_human": 0.3}}
    result = _run("progressive", **sc)
    by = result.summary["outcomes"]
    answered = by["machine"] + by["connected"] + by.get("abandoned", 0)
    # hung up as machines: 70 % of machines and 10 % of people, out of equal shares
    assert by["machine"] / answered == pytest.approx((0.7 + 0.1) / 2, abs=0.05)
    for a in result.attempts:
        if a.outcome is Outcome.MACHINE:
            assert a.agent_id is None and a.ended_at == a.answered_at
    off = _run("progressive", **{**sc, "amd": {"enabled": False}})
    assert "machine" not in off.summary["outcomes"]  # without AMD machines reach agents as people


def test_agents_leaving_finish_their_call_and_take_no_other() -> None:
    result = _run("erlang", agents={"count": 10, "schedule": [{"at_s": 900, "count": 4}]})
    late = {a.agent_id for a in result.attempts if a.connected_at is not None and a.connected_at > 900}
    early = {a.agent_id for a in result.attempts if a.connected_at is not None and a.connected_at <= 900}
    assert len(late) <= 4 < len(early)
    assert result.series[-1]["agents_logged_out"] >= 5  # those on a call at 900 s leave when it is wrapped up


def test_every_strategy_runs_and_the_oracle_is_the_upper_bound() -> None:
    assert {"progressive", "erlang", "ratio", "vicidial", "omnidialer", "oracle"} <= set(STRATEGIES)
    occupancy = {s: _run(s, options={"ratio": 2.0}).summary["occupancy"] for s in STRATEGIES}
    assert occupancy["oracle"] == max(occupancy.values())
    assert occupancy["oracle"] > 0.9  # near talk / (talk + wrap-up) = 150 / 160


def test_oracle_knows_who_leaves_and_when() -> None:
    result = _run("oracle", agents={"count": 12, "schedule": [{"at_s": 600, "count": 3}, {"at_s": 1200, "count": 9}]})
    assert result.summary["abandoned"] == 0 and result.summary["occupancy"] > 0.9


def test_oracle_counts_the_calls_no_agent_can_take() -> None:
    assert abandons([], [0.0], 2.0) == 0
    assert abandons([1.0, 1.0], [0.0, 2.5], 2.0) == 0  # the second waits 1.5 s
    assert abandons([1.0, 1.0], [0.0, 3.5], 2.0) == 1
    assert abandons([1.0, 5.0], [4.0], 2.0) == 1  # the agent free at 4 s takes the first; nobody for the second
    assert abandons([1.0, 2.0, 3.0], [10.0, 11.0], 2.0) == 3


def test_duration_and_agents_can_be_overridden() -> None:
    result = _run("progressive", options={"duration_s": 600, "agents": 3})
    s = result.summary
    assert s["sim_seconds"] == 600 and s["agents"] == 3
    assert max(a.dialed_at for a in result.attempts) <= 600
    assert len({a.agent_id for a in result.attempts if a.agent_id}) <= 3


def test_several_campaigns_share_the_floor_by_weight_with_their_own_debtors_and_lists(tmp_path) -> None:
    dnc = tmp_path / "dnc.csv"
    sc = parse_scenario(_scenario(
        start="2026-11-02T14:00:00+00:00", duration_s=3600, agents={"count": 12},
        campaigns=[
            {"id": "us", "weight": 3, "leads": {"generator": {"count": 400, "countries": ["US"]}},
             "dnc": {"file": str(dnc)}},
            {"id": "co", "weight": 1, "leads": {"generator": {"count": 400, "countries": ["CO"]}}},
        ]))
    sim = Simulation(sc, "progressive")
    us_leads = list(sim._leads["us"] or [])
    blocked = us_leads[0].phones[0]
    dnc.write_text(f"number,added_at\n{blocked},2026-11-02T13:00:00+00:00\n")
    result = sim.run()
    by = Counter(a.campaign_id for a in result.attempts)
    assert by["us"] > 2 * by["co"] > 0  # 3:1 by weight, both dialed
    for a in result.attempts:
        assert a.number.startswith("+1" if a.campaign_id == "us" else "+57")
        assert a.number != blocked  # the us campaign's DNC list
    assert result.summary["campaigns"] == {"us": by["us"], "co": by["co"]}
    assert result.summary["refused"].get("dnc_campaign", 0) >= 1


def test_the_charts_series_is_the_floors_on_a_floor_of_several_campaigns() -> None:
    """The plotted abandon rate and lines are the whole floor's, like the summary and the agents they share."""
    result = _run("ratio", duration_s=2700, agents={"count": 12},
                  campaigns=[{"id": "a", "weight": 3}, {"id": "b", "weight": 1}], options={"ratio": 2.5})
    last, s = result.series[-1], result.summary
    up = Counter(a.campaign_id for a in result.attempts if a.outcome is None)  # ringing or waiting at the end
    assert set(up) == {"a", "b"}
    assert last["lines"] == sum(up.values())
    assert last["abandon_rate"] == pytest.approx(s["abandon_rate"], abs=1e-5)


def test_several_campaigns_are_given_per_campaign_and_not_to_the_oracle() -> None:
    with pytest.raises(ScenarioError, match="per campaign"):
        parse_scenario(_scenario(rule_set="us-tsr-regf", campaigns=[{"id": "a"}]))
    two = parse_scenario(_scenario(campaigns=[{"id": "a"}, {"id": "b"}]))
    with pytest.raises(ValueError, match="oracle"):
        Simulation(two, "oracle")


def _rate_between(log: list[Attempt], start: float, end: float) -> float | None:
    """Abandoned / live answers among the calls answered in [start, end] (independent of the simulator's own)."""
    live = [a for a in log if a.outcome is not None and a.outcome.live and a.answered_at is not None
            and start <= a.answered_at <= end]
    return round(sum(a.outcome is Outcome.ABANDONED for a in live) / len(live), 5) if live else None


def test_a_last_partial_hour_is_judged_over_the_shifts_last_sixty_minutes() -> None:
    """A 61-minute shift: its second 'hour' is 60 s of answers; judged alone, a single abandon among a handful
    would decide the worst hour. It is judged over 60..3660 s instead."""
    result = _run("ratio", duration_s=3660, options={"ratio": 2.5})
    s, log = result.summary, result.attempts
    assert s["hourly_abandon_rates"] == [_rate_between(log, 0, 3600 - 1e-9), _rate_between(log, 60, 3660)]
    assert s["max_hourly_abandon_rate"] == max(s["hourly_abandon_rates"])


def test_hours_without_live_answers_keep_their_place_in_the_hourly_rates() -> None:
    """Nobody logged in for the second hour: it has no rate (null), and the third hour stays third."""
    result = _run("progressive", duration_s=3 * 3600,
                  agents={"count": 10, "schedule": [{"at_s": 3000, "count": 0}, {"at_s": 7200, "count": 10}]})
    s, log = result.summary, result.attempts
    assert s["hourly_abandon_rates"] == [_rate_between(log, 0, 3600 - 1e-9), None,
                                         _rate_between(log, 7200, 10800)]
    assert s["hourly_abandon_rates"][2] is not None


def test_occupancy_has_no_value_while_nobody_is_logged_in() -> None:
    """With no logged-in time in an interval there is no occupancy: the chart breaks its line there instead
    of drawing agents idle (0) who are not there."""
    result = _run("progressive", duration_s=3 * 3600,
                  agents={"count": 10, "schedule": [{"at_s": 3000, "count": 0}, {"at_s": 7200, "count": 10}]})
    empty = [r for r in result.series if 4000 <= r["t"] <= 7200]
    full = [r for r in result.series if 60 <= r["t"] <= 3000 or r["t"] >= 7260]
    assert empty and all(r["agents_ready"] + r["agents_on_call"] + r["agents_wrapup"] == 0 for r in empty)
    assert all(math.isnan(r["occupancy_interval"]) for r in empty)
    assert all(0 < r["occupancy_interval"] <= 1 for r in full)
    assert math.isnan(result.series[0]["occupancy"]) and result.series[0]["t"] == 0  # nobody has worked yet


@pytest.mark.parametrize("strategy", ["progressive", "oracle"])
def test_people_are_judged_on_the_ring_the_core_asks_for(strategy: str) -> None:
    """A rule set's minimum ring (Ofcom and Reg F/TSR: 15 s, here as an override) lengthens a scenario's 10 s
    timeout: the core rings 15 s, so people who pick up at 12 s answer. The callers were judged on the 10 s
    and every one of them counted as a no answer while the line rang on."""
    result = _run(strategy, duration_s=1200, agents={"count": 4}, rule_overrides={"min_ring_s": 15},
                  calls={"p_live": 0.87, "answer_delay_s": {"dist": "fixed", "value": 12},
                         "no_answer_timeout_s": 10})
    out = Counter(_outcome(a) for a in result.attempts)
    assert out["connected"] > 20 and out["no_answer"] == 0  # the rest are busy or fail at once
    assert {a.answered_at - a.dialed_at for a in result.attempts if a.answered_at is not None} == {12.0}
