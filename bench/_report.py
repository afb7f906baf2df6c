"""What every benchmark shares: its command line and how it prints (a line for people, or one JSON object last)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def parser(doc: str | None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object last")
    return ap


def one_scenario_args(ap: argparse.ArgumentParser, jobs: bool = True) -> None:
    """The options of the benchmarks that study one scenario (collections-50 unless told otherwise)."""
    default = Path(__file__).resolve().parent / "scenarios" / "collections-50.yaml"
    ap.add_argument("--scenario", default=str(default))
    ap.add_argument("--duration", type=float, default=None, help="simulated seconds (default: the scenario's)")
    if jobs:
        ap.add_argument("--jobs", type=int, default=2)


def report(result: dict[str, Any], as_json: bool, line: Callable[[dict[str, Any]], str]) -> None:
    print(json.dumps(result) if as_json else line(result))
