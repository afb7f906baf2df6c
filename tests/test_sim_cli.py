"""`marcador sim`: run (with and without the `run` word), JSON, the attempt log, plots, compare, errors."""

from __future__ import annotations

import importlib.util
import json
from datetime import datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from marcador_cli.main import app

SCENARIO = str(Path(__file__).resolve().parents[1] / "bench" / "scenarios" / "collections-10.yaml")
KEYS = {"strategy", "seed", "agents", "sim_seconds", "wall_seconds", "attempts", "live_answers", "connected",
        "abandoned", "abandon_rate", "max_hourly_abandon_rate", "occupancy", "idle_per_connect_s"}


def _json(args: list[str]) -> dict[str, object]:
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    out: dict[str, object] = json.loads(r.output.strip().splitlines()[-1])
    return out


def test_run_prints_one_json_object_the_same_with_or_without_the_run_word() -> None:
    a = _json(["sim", SCENARIO, "--strategy", "erlang", "--duration", "1200", "--json"])
    b = _json(["sim", "run", SCENARIO, "--strategy", "erlang", "--duration", "1200", "--json"])
    assert KEYS <= set(a)
    assert a.pop("wall_seconds") is not None and b.pop("wall_seconds") is not None
    assert a == b and a["strategy"] == "erlang" and a["sim_seconds"] == 1200


def test_options_reach_the_run() -> None:
    s = _json(["sim", SCENARIO, "--strategy", "ratio", "--ratio", "1.0", "--seed", "9", "--agents", "4",
               "--duration", "900", "--tick", "0.5", "--json"])
    assert (s["strategy"], s["seed"], s["agents"], s["sim_seconds"]) == ("ratio", 9, 4, 900)


def test_attempts_out_writes_one_line_per_attempt_with_iso_times(tmp_path: Path) -> None:
    out = tmp_path / "attempts.jsonl"
    s = _json(["sim", SCENARIO, "--strategy", "oracle", "--duration", "900", "--json", "--attempts-out", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == s["attempts"]
    assert set(rows[0]) == {"call_id", "lead_id", "number", "caller_id", "dialed_at", "answered_at", "connected_at",
                            "ended_at", "outcome", "agent_id", "campaign_id", "caller_id_reason", "phone_reason"}
    first = datetime.fromisoformat(rows[0]["dialed_at"])
    assert rows[0]["dialed_at"].startswith("2026-01-05T08:00:00") and first.utcoffset() is not None
    assert sum(r["outcome"] == "connected" for r in rows) == s["connected"]


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="the plot extra is not installed")
def test_plot_writes_the_charts(tmp_path: Path) -> None:
    _json(["sim", SCENARIO, "--strategy", "progressive", "--duration", "900", "--json", "--plot", str(tmp_path)])
    assert sorted(p.name.removeprefix("collections-10-progressive-") for p in tmp_path.glob("*.png")) == [
        "abandon.png", "agents.png", "lines_per_agent.png", "occupancy.png"]


def test_compare_runs_every_strategy_on_the_same_callers_sorted_by_occupancy() -> None:
    table = _json(["sim", "compare", SCENARIO, "--duration", "900", "--json"])
    rows = table["results"]
    assert isinstance(rows, list)
    assert {r["strategy"] for r in rows} >= {"progressive", "erlang", "ratio", "vicidial", "omnidialer", "oracle"}
    occupancy = [r["occupancy"] for r in rows]
    assert occupancy == sorted(occupancy, reverse=True)
    r = CliRunner().invoke(app, ["sim", "compare", SCENARIO, "--duration", "600", "--strategies", "oracle,progressive"])
    assert r.exit_code == 0 and "oracle" in r.output and "progressive" in r.output and "erlang" not in r.output


def test_errors_say_what_is_wrong(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["sim", SCENARIO, "--strategy", "nope"])
    assert r.exit_code == 2 and "unknown strategy 'nope'" in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nagents: {count: 5}\ncalls: {p_live: 1.5}\n")
    r = CliRunner().invoke(app, ["sim", str(bad)])
    assert r.exit_code == 2 and "calls.p_live" in r.output
    r = CliRunner().invoke(app, ["sim", str(tmp_path / "missing.yaml")])
    assert r.exit_code == 2


@pytest.mark.parametrize(("args", "option", "says"), [
    (["--duration", "-5"], "--duration", "more than 0 seconds"),
    (["--tick", "0"], "--tick", "more than 0 and at most 60"),  # a tick of 0 never advanced the clock: a hang
    (["--tick", "nan"], "--tick", "more than 0 and at most 60"),
    (["--agents", "-3"], "--agents", "0 to 100000"),
    (["--seed", "-1"], "--seed", "0 or more"),  # numpy takes no negative seed: it was a traceback
    (["--strategy", "ratio", "--ratio", "0"], "--ratio", "more than 0"),
    (["--strategy", "erlang", "--ratio", "3"], "--ratio", "erlang does not use it"),
])
def test_a_bad_override_is_a_usage_error_naming_the_option(args: list[str], option: str, says: str) -> None:
    r = CliRunner().invoke(app, ["sim", SCENARIO, *args])
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.replace("│", " ").split())
    assert option in text and says in text


def test_the_oracle_is_left_out_of_a_floor_of_several_campaigns_with_a_word_not_a_traceback() -> None:
    floor = str(Path(SCENARIO).parents[1] / "floor" / "three-campaigns-50.yaml")
    r = CliRunner().invoke(app, ["sim", "compare", floor, "--duration", "60"])
    assert r.exit_code == 0, r.output
    assert "erlang" in r.output and "no oracle row" in r.output
    for args in (["sim", floor, "--strategy", "oracle"], ["sim", "compare", floor, "--strategies", "erlang,oracle"]):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 2 and "single campaign" in " ".join(r.output.replace("│", " ").split())


def test_the_simulation_refuses_bad_overrides_from_python_too() -> None:
    from sim.des.simulation import Simulation
    from sim.scenario import load_scenario

    sc = load_scenario(Path(SCENARIO))
    with pytest.raises(ValueError, match="tick_s: must be more than 0"):
        Simulation(sc, "erlang", tick_s=0.0)
    with pytest.raises(ValueError, match=r"duration_s: .*; ratio: "):
        Simulation(sc, "ratio", duration_s=-1.0, ratio=-2.0)
    with pytest.raises(ValueError, match=r"seed: must be 0 or more"):
        Simulation(sc, "erlang", seed=-1)


def _text(output: str) -> str:
    return " ".join(output.replace("│", " ").split())


def test_output_files_go_into_folders_made_for_them(tmp_path: Path) -> None:
    """The README's `--attempts-out build/attempts.jsonl` failed with a traceback, after the whole run, where
    build/ did not exist yet (a fresh clone)."""
    attempts, refusals = tmp_path / "build" / "a.jsonl", tmp_path / "build" / "deeper" / "r.jsonl"
    s = _json(["sim", SCENARIO, "--duration", "600", "--json", "--attempts-out", str(attempts),
               "--refusals-out", str(refusals)])
    assert len(attempts.read_text().splitlines()) == s["attempts"]
    assert refusals.read_text() == ""  # no gates in this scenario: an empty log, not a missing one
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.jsonl", "build", "deeper", "r.jsonl"]  # no temp file


@pytest.mark.parametrize("option", ["--attempts-out", "--refusals-out"])
def test_an_output_file_that_cannot_be_one_is_refused_before_the_run(tmp_path: Path, option: str) -> None:
    (tmp_path / "a-file").write_text("kept\n")
    for path, says in ((tmp_path, "is a folder"), (tmp_path / "a-file" / "x.jsonl", "is not a folder")):
        r = CliRunner().invoke(app, ["sim", SCENARIO, "--duration", "600", "--json", option, str(path)])
        assert r.exit_code == 2, r.output
        assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
        assert option in _text(r.output) and says in _text(r.output) and "\"attempts\"" not in r.output  # no run
    assert (tmp_path / "a-file").read_text() == "kept\n"


def test_plot_into_a_file_is_refused_before_the_run(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("kept\n")
    r = CliRunner().invoke(app, ["sim", SCENARIO, "--duration", "600", "--json", "--plot", str(tmp_path / "a-file")])
    assert r.exit_code == 2 and "--plot" in _text(r.output) and "not a folder" in _text(r.output), r.output
    assert (tmp_path / "a-file").read_text() == "kept\n"


def test_a_failed_write_leaves_no_output_half_done(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every output is written aside and put in place only once all are written: a run whose plots fail leaves
    neither an attempt log nor a half-filled plot folder, and an old attempt log is kept as it was."""
    import sim.des.plots

    def broken(result: object, sc: object, folder: Path) -> list[Path]:
        (folder / "half.png").write_bytes(b"\x89PNG")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sim.des.plots, "write_plots", broken)
    old = tmp_path / "old.jsonl"
    old.write_text("previous run\n")
    r = CliRunner().invoke(app, ["sim", SCENARIO, "--duration", "600", "--json", "--attempts-out", str(old),
                                 "--refusals-out", str(tmp_path / "new" / "r.jsonl"),
                                 "--plot", str(tmp_path / "plots")])
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert "No space left on device" in _text(r.output)
    assert old.read_text() == "previous run\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["old.jsonl"]


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="the plot extra is not installed")
def test_charts_of_a_scenario_whose_name_has_a_slash_land_in_the_plot_folder(tmp_path: Path) -> None:
    """`name: ops/north` made the chart paths point into a sub-folder that did not exist: a traceback."""
    sc = tmp_path / "sc.yaml"
    sc.write_text("name: ops/north\nduration_s: 600\nagents: {count: 3}\n")
    _json(["sim", str(sc), "--json", "--plot", str(tmp_path / "plots")])
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        f"ops_north-erlang-{c}.png" for c in ("abandon", "agents", "lines_per_agent", "occupancy")]


@pytest.mark.parametrize(("extra", "files", "says"), [
    ("leads: {file: nope.csv}", {}, "nope.csv: cannot read"),
    ("leads: {file: leads.csv}", {"leads.csv": "lead_id,phone\nx1,+15551234567\n"},
     "leads.csv: missing required columns"),
    ("leads: {generator: {count: 5, countries: [ZZ]}}", {}, "no made-up numbers for 'ZZ'"),
    ("dnc: {file: dnc.csv}", {"dnc.csv": "number,added_at\n+15551234567,yesterday\n"},
     "dnc.csv: row 1: added_at: not an ISO date-time"),
    ("removals: {file: gone.csv}", {"gone.csv": b"lead_id,removed_at\nL\xf1,2026-01-05T09:00:00Z\n"},
     "gone.csv: not UTF-8 text"),
    ("rule_set: us-tsr-regf\nrule_overrides: {bogus: 1}", {}, "rule_overrides: bogus: unknown or fixed field"),
    ("recycle: {max_attempts: 3}", {}, "recycle: max_attempts: unknown field"),
])
def test_the_scenarios_own_files_and_rules_are_usage_errors_not_tracebacks(
        tmp_path: Path, extra: str, files: dict[str, str | bytes], says: str) -> None:
    """A debtor, DNC or removals file that cannot be used, and rule overrides or recycle rules the core refuses,
    were tracebacks (DebtorFileError, LeadFileError, ValueError) when the simulation was built."""
    for name, body in files.items():
        (tmp_path / name).write_bytes(body if isinstance(body, bytes) else body.encode())
    sc = tmp_path / "sc.yaml"
    sc.write_text(f"name: t\nduration_s: 600\nagents: {{count: 3}}\n{extra}\n")
    r = CliRunner().invoke(app, ["sim", str(sc), "--json"])
    assert r.exit_code == 2, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    squeezed = "".join(r.output.replace("│", "").split())  # long paths wrap anywhere in the box
    assert "SCENARIO" in squeezed and says.replace(" ", "") in squeezed, r.output


def test_compare_needs_a_strategy_and_runs_each_once() -> None:
    """`--strategies ,` printed an empty table with exit 0; a name given twice was run twice."""
    r = CliRunner().invoke(app, ["sim", "compare", SCENARIO, "--strategies", " , "])
    assert r.exit_code == 2 and "--strategies" in _text(r.output) and "no strategy" in _text(r.output), r.output
    table = _json(["sim", "compare", SCENARIO, "--duration", "300", "--strategies", "ratio,progressive,ratio",
                   "--json"])
    rows = table["results"]
    assert isinstance(rows, list) and sorted(row["strategy"] for row in rows) == ["progressive", "ratio"]


def test_options_may_come_before_the_scenario() -> None:
    """`marcador sim --json FILE` said `No such option: --json`: the short form took options only after the file."""
    a = _json(["sim", "--duration", "300", "--json", SCENARIO])
    b = _json(["sim", SCENARIO, "--duration", "300", "--json"])
    assert a.pop("wall_seconds") is not None and b.pop("wall_seconds") is not None and a == b
    c = _json(["sim", "--duration", "300", "compare", SCENARIO, "--strategies", "progressive", "--json"])
    rows = c["results"]
    assert isinstance(rows, list) and [row["strategy"] for row in rows] == ["progressive"]
    r = CliRunner().invoke(app, ["sim", "--help"])
    assert r.exit_code == 0 and "compare" in r.output


def test_an_output_may_not_overwrite_the_scenario_or_another_output(tmp_path: Path) -> None:
    """`--attempts-out` naming the scenario file replaced the scenario with the log; the attempt and refusal logs
    given one path kept only the refusals."""
    sc = tmp_path / "sc.yaml"
    sc.write_text("name: t\nduration_s: 300\nagents: {count: 3}\n")
    log = tmp_path / "out.jsonl"
    for args, says in ((["--attempts-out", str(sc)], "the scenario file"),
                       (["--attempts-out", str(log), "--refusals-out", str(tmp_path / "." / "out.jsonl")],
                        "--attempts-out names the same file")):
        r = CliRunner().invoke(app, ["sim", str(sc), "--json", *args])
        assert r.exit_code == 2 and says in _text(r.output), r.output
    assert sc.read_text() == "name: t\nduration_s: 300\nagents: {count: 3}\n" and not log.exists()
