"""`marcador sim`: run a scenario in virtual time against the real core, or compare every strategy on it.

    marcador sim [run] SCENARIO.yaml [--strategy erlang] [--json] [--attempts-out F.jsonl] [--plot DIR]
    marcador sim compare SCENARIO.yaml [--json]
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from typer.core import TyperGroup

from sim.debtors import DebtorFileError
from sim.des.simulation import SimResult, Simulation, attempt_row, override_problems, strategy_names
from sim.oracle import NAME as ORACLE
from sim.scenario import Scenario, ScenarioError, load_scenario


class _RunByDefault(TyperGroup):
    """`marcador sim FILE.yaml ...` means `marcador sim run FILE.yaml ...`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            if args[0].startswith("-") and "compare" in args:  # `sim --seed 3 compare FILE`: options go after it
                args.remove("compare")
                args = ["compare", *args]
            else:  # `sim FILE ...` and `sim --json FILE ...` are `sim run ...`
                args = ["run", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=_RunByDefault, no_args_is_help=True,
                  help="Discrete-event call-centre simulator (virtual time) driving the real dialer core.")


def _load(path: Path) -> Scenario:
    try:
        return load_scenario(path)
    except ScenarioError as exc:
        raise typer.BadParameter(str(exc), param_hint="SCENARIO") from None


_OPTION = {"seed": "--seed", "duration_s": "--duration", "tick_s": "--tick", "agents": "--agents", "ratio": "--ratio"}


def _check_overrides(**overrides: Any) -> None:
    for name, why in override_problems(**overrides):
        raise typer.BadParameter(why, param_hint=_OPTION[name])


def _check_strategy(name: str) -> None:
    known = strategy_names()
    if name not in known:
        raise typer.BadParameter(f"unknown strategy {name!r}; known: {', '.join(known)}", param_hint="--strategy")


def simulate(sc: Scenario, strategy: str, *, seed: int | None = None, duration: float | None = None,
             agents: int | None = None, ratio: float | None = None, tick: float | None = None,
             show_progress: bool = False, origin: str = "scenario") -> SimResult:
    """One run; a progress bar in virtual time when asked (a terminal). `origin` names the scenario's file in
    errors."""
    _check_strategy(strategy)
    options: dict[str, Any] = {"seed": seed, "duration_s": duration, "agents": agents, "ratio": ratio, "tick_s": tick}
    if not show_progress:
        return _run(sc, strategy, origin, options)
    total = duration if duration is not None else sc.duration_s
    columns = (TextColumn(f"{sc.name} · {strategy}"), BarColumn(), TextColumn("{task.percentage:>3.0f}% of the shift"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task("sim", total=total)
        step = max(60.0, total / 200)  # redraw every 0.5 % of the shift, not every tick
        last = [0.0]

        def advance(t: float) -> None:
            if t - last[0] >= step:
                last[0] = t
                progress.update(task, completed=t)

        return _run(sc, strategy, origin, {**options, "progress": advance})


def _run(sc: Scenario, strategy: str, origin: str, options: dict[str, Any]) -> SimResult:
    """Build and run the simulation. A debtor, DNC or removals file that cannot be used (read as the simulation
    is built and as its run starts), or campaign settings the core refuses, is a usage error naming the file (and
    row), not a traceback. (The run's overrides and the oracle's floor are checked before.)"""
    try:
        sim = Simulation(sc, strategy, **options)
    except ValueError as exc:  # DebtorFileError and the core's refusals of a campaign's settings
        raise typer.BadParameter(f"{origin}: {exc}", param_hint="SCENARIO") from None
    try:
        return sim.run()
    except DebtorFileError as exc:  # the DNC and removals files, read when the run starts
        raise typer.BadParameter(f"{origin}: {exc}", param_hint="SCENARIO") from None


@app.command("run")
def run(
    scenario: Annotated[Path, typer.Argument(help="scenario YAML", exists=True, dir_okay=False)],
    strategy: Annotated[str, typer.Option(help=f"one of: {', '.join(strategy_names())}")] = "erlang",
    ratio: Annotated[float | None, typer.Option(help="lines per ready agent for --strategy ratio")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed (default: the scenario's)")] = None,
    duration: Annotated[float | None, typer.Option(help="simulated seconds (default: the scenario's)")] = None,
    agents: Annotated[int | None, typer.Option(help="agents logged in all shift (overrides the scenario)")] = None,
    tick: Annotated[float | None, typer.Option(help="pacing tick, virtual seconds (default: the scenario's)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    attempts_out: Annotated[Path | None, typer.Option(help="write one JSON line per attempt")] = None,
    refusals_out: Annotated[Path | None, typer.Option(
        help="write one JSON line per dial the compliance gates refused (reason, detail, retry_at)")] = None,
    plot: Annotated[Path | None, typer.Option(help="write PNG charts into this folder (needs matplotlib)")] = None,
) -> None:
    """Simulate one strategy over the scenario's shift (`marcador sim SCENARIO` is short for this)."""
    sc = _load(scenario)
    _check_strategy(strategy)
    _check_overrides(seed=seed, duration_s=duration, tick_s=tick, agents=agents, ratio=ratio)
    if ratio is not None and strategy != "ratio":
        raise typer.BadParameter(f"sets the lines per ready agent of --strategy ratio; {strategy} does not use it",
                                 param_hint="--ratio")
    if strategy == ORACLE and len(sc.campaign_entries()) > 1:
        raise typer.BadParameter(f"the oracle plans for a single campaign's floor; {sc.name} has "
                                 f"{len(sc.campaign_entries())} campaigns", param_hint="--strategy")
    if plot is not None:
        _need_matplotlib()
    _check_output_file(attempts_out, "--attempts-out")
    _check_output_file(refusals_out, "--refusals-out")
    if plot is not None and plot.exists() and not plot.is_dir():
        raise typer.BadParameter(f"{plot} exists and is not a folder", param_hint="--plot")
    _check_output_file(plot, "--plot", folder=True)
    _check_distinct(scenario, attempts_out, refusals_out)
    result = simulate(sc, strategy, seed=seed, duration=duration, agents=agents, ratio=ratio, tick=tick,
                      show_progress=sys.stdout.isatty() and not as_json, origin=str(scenario))
    _write_outputs(result, sc, attempts_out, refusals_out, plot)
    s = result.summary
    if as_json:
        print(json.dumps(s))
        return
    table = Table(title=f"{sc.name} · {strategy} · seed {s['seed']}", show_header=False)
    for key in ("agents", "attempts", "live_answers", "connected", "abandoned", "abandon_rate",
                "max_hourly_abandon_rate", "occupancy", "idle_per_connect_s", "sim_seconds", "wall_seconds"):
        table.add_row(key, str(s[key]))
    Console().print(table)


def _check_output_file(path: Path | None, option: str, *, folder: bool = False) -> None:
    """Before the run: an output that could never be written is a usage error now, not a traceback after it."""
    if path is None:
        return
    if not folder and path.is_dir():
        raise typer.BadParameter(f"{path} is a folder; give a file name", param_hint=option)
    for parent in path.parents:  # the nearest one that exists must be a folder (the rest are made)
        if parent.exists():
            if not parent.is_dir():
                raise typer.BadParameter(f"{parent} is not a folder", param_hint=option)
            break


def _check_distinct(scenario: Path, attempts_out: Path | None, refusals_out: Path | None) -> None:
    """An output must not replace the scenario file, nor the other output (the second written would win)."""
    def same(a: Path, b: Path) -> bool:
        return a.resolve() == b.resolve()

    for path, option in ((attempts_out, "--attempts-out"), (refusals_out, "--refusals-out")):
        if path is not None and same(path, scenario):
            raise typer.BadParameter(f"{path} is the scenario file", param_hint=option)
    if attempts_out is not None and refusals_out is not None and same(attempts_out, refusals_out):
        raise typer.BadParameter(f"--attempts-out names the same file ({attempts_out})", param_hint="--refusals-out")


def _write_outputs(result: SimResult, sc: Scenario, attempts_out: Path | None, refusals_out: Path | None,
                   plot: Path | None) -> None:
    """The attempt and refusal logs and the charts, all or none: each is written aside (a hidden temporary beside
    its place) and put in place only once every one is written. Folders are made as needed; on a failure the
    temporaries and the folders made for them are removed, and files already there are left as they were."""
    umask = os.umask(0o022)
    os.umask(umask)
    made: list[Path] = []
    temps: list[Path] = []
    staged: list[tuple[Path, Path]] = []  # (written aside, its place)
    try:
        for path, rows in ((attempts_out, (attempt_row(a, result.start) for a in result.attempts)),
                           (refusals_out, iter(result.refusals))):
            if path is None:
                continue
            _make_folder(path.parent, made)
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            temps.append(Path(name))
            os.fchmod(fd, 0o666 & ~umask)  # as `open` would have made it (mkstemp's are private)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                for row in rows:
                    fh.write(json.dumps(row) + "\n")
            staged.append((Path(name), path))
        if plot is not None:
            from sim.des import plots

            _make_folder(plot.parent, made)
            aside = Path(tempfile.mkdtemp(prefix=f".{plot.name}.", dir=plot.parent))
            temps.append(aside)
            for chart in plots.write_plots(result, sc, aside):
                staged.append((chart, plot / chart.name))
            _make_folder(plot, made)
        for aside_path, path in staged:
            os.replace(aside_path, path)
    except BaseException as exc:  # Ctrl-C too: no temporary left behind
        for temp in temps:
            shutil.rmtree(temp, ignore_errors=True) if temp.is_dir() else temp.unlink(missing_ok=True)
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty
        if not isinstance(exc, OSError):
            raise
        where = f": {exc.filename}" if exc.filename else ""
        Console(stderr=True, soft_wrap=True).print(
            f"sim: cannot write the run's output{where}: {exc.strerror or exc}; nothing written", style="red",
            markup=False)
        raise typer.Exit(1) from None
    for temp in temps:
        if temp.is_dir():
            shutil.rmtree(temp, ignore_errors=True)


def _make_folder(folder: Path, made: list[Path]) -> None:
    """`mkdir -p`, noting each folder it made (outermost first)."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    for p in reversed(missing):
        p.mkdir()
        made.append(p)


def _need_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise typer.BadParameter("needs matplotlib: pip install 'marcador[plot]'", param_hint="--plot") from None


@app.command("compare")
def compare(
    scenario: Annotated[Path, typer.Argument(help="scenario YAML", exists=True, dir_okay=False)],
    seed: Annotated[int | None, typer.Option(help="random seed (default: the scenario's)")] = None,
    duration: Annotated[float | None, typer.Option(help="simulated seconds (default: the scenario's)")] = None,
    strategies: Annotated[str | None, typer.Option(
        help="comma-separated (default: all; without the oracle on a floor of several campaigns)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Run every strategy on the same callers (same seed) and compare: sorted by occupancy, with abandon rates."""
    sc = _load(scenario)
    _check_overrides(seed=seed, duration_s=duration)
    several = len(sc.campaign_entries()) > 1
    default = [n for n in strategy_names() if not (several and n == ORACLE)]  # the oracle plans one campaign
    names = list(dict.fromkeys(n.strip() for n in strategies.split(",") if n.strip())) if strategies else default
    if not names:  # `--strategies ,`: an empty table was no answer
        raise typer.BadParameter("no strategy named; give one or more, comma-separated, or leave the option out "
                                 "for all", param_hint="--strategies")
    for name in names:
        _check_strategy(name)
    if several and ORACLE in names:
        raise typer.BadParameter(f"the oracle plans for a single campaign's floor; {sc.name} has "
                                 f"{len(sc.campaign_entries())} campaigns", param_hint="--strategies")
    rows = [simulate(sc, name, seed=seed, duration=duration, show_progress=sys.stdout.isatty() and not as_json,
                     origin=str(scenario)).summary for name in names]
    rows = rank(rows)
    if as_json:
        print(json.dumps({"scenario": sc.name, "target": sc.campaign.abandon_target, "results": rows}))
        return
    Console().print(comparison_table(sc.name, sc.campaign.abandon_target, rows))
    if several and not strategies:
        Console().print(f"(no oracle row: the oracle plans for a single campaign's floor, and {sc.name} has "
                        f"{len(sc.campaign_entries())} campaigns)")


def rank(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best occupancy first (ties: lower abandon rate, then name, so the order never depends on run order)."""
    return sorted(rows, key=lambda r: (-r["occupancy"], r["abandon_rate"], r["strategy"]))


def comparison_table(name: str, target: float, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{name}: by occupancy; abandon target {target:.1%} (red: over it)", box=box.SIMPLE_HEAD,
                  caption="occup. talk / logged-in time · aband. abandoned / live answers · max/h worst clock hour · "
                          "idle s ready time per connect · conn. connected calls")
    table.add_column("strategy", no_wrap=True, min_width=11)
    # short headers: the table fits 80 columns (pipes, CI logs)
    for col in ("occup.", "aband.", "max/h", "idle s", "conn.", "attempts", "wall s"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        def pct(x: float) -> str:
            return f"[red]{x:.2%}[/red]" if x > target else f"{x:.2%}"

        table.add_row(r["strategy"], f"{r['occupancy']:.3f}", pct(r["abandon_rate"]),
                      pct(r["max_hourly_abandon_rate"]), f"{r['idle_per_connect_s']:.1f}", str(r["connected"]),
                      str(r["attempts"]), f"{r['wall_seconds']:.1f}")
    return table
