"""PNG charts of a simulated shift (matplotlib, the `plot` extra, imported only when asked for): abandon rate
against target (cumulative and hourly), occupancy, lines per agent, agents by state."""

from __future__ import annotations

import re
from pathlib import Path

from sim.des.simulation import SimResult, hourly_abandons
from sim.scenario import Scenario


class PlotError(RuntimeError):
    """Charts cannot be drawn here (matplotlib missing)."""


def write_plots(result: SimResult, sc: Scenario, folder: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import PercentFormatter
    except ImportError:
        raise PlotError("--plot needs matplotlib: pip install 'marcador[plot]'") from None
    folder.mkdir(parents=True, exist_ok=True)
    series = result.series
    hours = [row["t"] / 3600 for row in series]
    target = sc.campaign.abandon_target
    strategy = result.summary["strategy"]
    written: list[Path] = []

    # A file name, whatever the scenario's name holds (a slash made a path into a folder that did not exist).
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{sc.name}-{strategy}").lstrip(".")

    def save(fig: object, name: str) -> None:
        path = folder / f"{stem}-{name}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")  # type: ignore[attr-defined]
        plt.close(fig)  # type: ignore[arg-type]
        written.append(path)

    # The summary's own hours (hourly_abandon_rates), each bar over the stretch of the shift it covers.
    judged = [(h.start_s / 3600, h.end_s / 3600, h.abandoned / h.live)
              for h in hourly_abandons(result.attempts, result.summary["sim_seconds"]) if h.live]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(hours, [row["abandon_rate"] for row in series], label="campaign to date")
    ax.bar([(a + b) / 2 for a, b, _ in judged], [r for _, _, r in judged],
           width=[0.8 * (b - a) for a, b, _ in judged], alpha=0.3, label="hourly")
    ax.axhline(target, color="red", linestyle="--", label=f"target {target:.0%}")
    top = max([2 * target] + [row["abandon_rate"] for row in series] + [r for _, _, r in judged])
    ax.set(xlabel="hour of shift", ylabel="abandon rate", ylim=(0, top * 1.1),
           title=f"{sc.name} · {strategy}: abandon rate")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.legend()
    save(fig, "abandon")
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(hours, [row["occupancy_interval"] for row in series], alpha=0.4, label="per interval")
    ax.plot(hours, [row["occupancy"] for row in series], label="shift to date")
    ax.set(xlabel="hour of shift", ylabel="occupancy (talk / logged-in)", ylim=(0, 1),
           title=f"{sc.name} · {strategy}: occupancy")
    ax.legend()
    save(fig, "occupancy")
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(hours, [row["lines_per_agent"] for row in series])
    ax.set(xlabel="hour of shift", ylabel="lines per logged-in agent",
           title=f"{sc.name} · {strategy}: lines (ringing + waiting) per agent")
    save(fig, "lines_per_agent")
    fig, ax = plt.subplots(figsize=(9, 4))
    states = ("ready", "on_call", "wrapup", "paused")
    ax.stackplot(hours, *[[row.get(f"agents_{s}", 0.0) for row in series] for s in states], labels=states)
    ax.set(xlabel="hour of shift", ylabel="agents", title=f"{sc.name} · {strategy}: agents by state")
    ax.legend(loc="upper right")
    save(fig, "agents")
    return written
