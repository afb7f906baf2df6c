"""Strategy names → constructors, so the core and the CLI can choose by name."""

from __future__ import annotations

from collections.abc import Callable

from pacing.baselines import OmniDialer, Ratio, Vicidial
from pacing.erlang import ErlangPacer
from pacing.progressive import Progressive
from pacing.snapshot import PacingCaps, PacingStrategy

StrategyFactory = Callable[[PacingCaps], PacingStrategy]

STRATEGIES: dict[str, StrategyFactory] = {
    "progressive": Progressive,
    "erlang": ErlangPacer,
    "ratio": Ratio,
    "vicidial": Vicidial,
    "omnidialer": OmniDialer,
}


def make_strategy(name: str, caps: PacingCaps) -> PacingStrategy:
    try:
        factory = STRATEGIES[name]
    except KeyError:
        raise ValueError(f"strategy: unknown pacing strategy {name!r}; known: {sorted(STRATEGIES)}") from None
    return factory(caps)
