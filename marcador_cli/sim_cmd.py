"""`marcador sim`: run a scenario in virtual time against the real core, or compare every strategy on it.

    marcador sim SCENARIO.yaml [--strategy erlang] [--json] [--attempts-out F.jsonl] [--plot DIR]
    marcador sim compare SCENARIO.yaml [--json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from typer.core import TyperGroup

from pacing.registry import STRATEGIES
from sim.des.simulation import SimResult, Simulation, attempt_row
from sim.scenario import Scenario, ScenarioError, load_scenario

STRATEGY_NAMES = [*STRATEGIES, "oracle"]


class _RunByDefault(TyperGroup):
    """`marcador sim FILE.yaml` means `marcador sim run FILE.yaml`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=_RunByDefault, no_args_is_help=True,
                  help="Discrete-event call-centre simulator (virtual time) driving the real dialer core.")


def _load(path: Path) -> Scenario:
    try:
        return load_scenario(path)
    except ScenarioError as exc:
        raise typer.BadParameter(str(exc), param_hint="SCENARIO") from None


def simulate(sc: Scenario, strategy: str, *, seed: int | None = None, duration: float | None = None,
             agents: int | None = None, ratio: float | None = None, show_progress: bool = False) -> SimResult:
    if strategy not in STRATEGY_NAMES:
        raise typer.BadParameter(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGY_NAMES)}",
                                 param_hint="--strategy")
    total = duration if duration is not None else sc.duration_s
    if not show_progress:
        return Simulation(sc, strategy, seed=seed, duration_s=duration, agents=agents, ratio=ratio).run()
    with Progress(TextColumn(f"{sc.name} · {strategy}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeRemainingColumn(), transient=True) as progress:
        task = progress.add_task("sim", total=total)
        step = max(60.0, total / 200)
        last = [0.0]

        def tick(t: float) -> None:
            if t - last[0] >= step:
                last[0] = t
                progress.update(task, completed=t)

        return Simulation(sc, strategy, seed=seed, duration_s=duration, agents=agents, ratio=ratio,
                          progress=tick).run()


@app.command("run")
def run(
    scenario: Annotated[Path, typer.Argument(help="scenario YAML", exists=True, dir_okay=False)],
    strategy: Annotated[str, typer.Option(help="|".join(STRATEGY_NAMES))] = "erlang",
    ratio: Annotated[float | None, typer.Option(help="lines per ready agent for --strategy ratio")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed (default: the scenario's)")] = None,
    duration: Annotated[float | None, typer.Option(help="simulated seconds (default: the scenario's)")] = None,
    agents: Annotated[int | None, typer.Option(help="agents logged in all shift (overrides the scenario)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    attempts_out: Annotated[Path | None, typer.Option(help="write one JSON line per attempt")] = None,
    plot: Annotated[Path | None, typer.Option(help="write PNG charts into this folder")] = None,
) -> None:
    """Simulate one strategy over the scenario's shift."""
    sc = _load(scenario)
    result = simulate(sc, strategy, seed=seed, duration=duration, agents=agents, ratio=ratio,
                      show_progress=sys.stdout.isatty() and not as_json)
    if attempts_out is not None:
        with attempts_out.open("w", encoding="utf-8") as fh:
            for a in result.attempts:
                fh.write(json.dumps(attempt_row(a)) + "\n")
    if plot is not None:
        from sim.plots import write_plots

        write_plots(result, sc, plot)
    s = result.summary
    if as_json:
        print(json.dumps(s))
        return
    console = Console()
    table = Table(title=f"{sc.name} · {strategy} · seed {s['seed']}")
    for key in ("attempts", "live_answers", "connected", "abandoned", "abandon_rate", "max_hourly_abandon_rate",
                "occupancy", "idle_per_connect_s", "wall_seconds"):
        table.add_row(key, str(s[key]))
    table.show_header = False
    console.print(table)


@app.command("compare")
def compare(
    scenario: Annotated[Path, typer.Argument(help="scenario YAML", exists=True, dir_okay=False)],
    seed: Annotated[int | None, typer.Option(help="random seed (default: the scenario's)")] = None,
    duration: Annotated[float | None, typer.Option(help="simulated seconds (default: the scenario's)")] = None,
    strategies: Annotated[str, typer.Option(help="comma-separated")] = ",".join(STRATEGY_NAMES),
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Run every strategy on the same callers and compare: sorted by occupancy, with abandon rates."""
    sc = _load(scenario)
    rows = [simulate(sc, name.strip(), seed=seed, duration=duration,
                     show_progress=sys.stdout.isatty() and not as_json).summary
            for name in strategies.split(",") if name.strip()]
    rows.sort(key=lambda r: r["occupancy"], reverse=True)
    if as_json:
        print(json.dumps({"scenario": sc.name, "target": sc.campaign.abandon_target, "results": rows}))
        return
    Console().print(comparison_table(sc.name, sc.campaign.abandon_target, rows))


def comparison_table(name: str, target: float, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{name}: strategies by occupancy (abandon target {target:.1%})")
    for col in ("strategy", "occupancy", "abandon", "max hourly", "idle/connect s", "connected", "attempts", "wall s"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for r in rows:
        over = r["abandon_rate"] > target
        table.add_row(r["strategy"], f"{r['occupancy']:.3f}",
                      f"[red]{r['abandon_rate']:.2%}[/red]" if over else f"{r['abandon_rate']:.2%}",
                      f"{r['max_hourly_abandon_rate']:.2%}", f"{r['idle_per_connect_s']:.1f}", str(r["connected"]),
                      str(r["attempts"]), f"{r['wall_seconds']:.1f}")
    return table
