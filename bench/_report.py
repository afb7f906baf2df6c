"""What every benchmark shares: its command line and how it prints (a line for people, or one JSON object last)."""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from collections.abc import Callable, Iterator
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


@contextlib.contextmanager
def redis_url(bench: str) -> Iterator[str]:
    """A Redis of its own for one benchmark (loopback, a temporary directory), stopped afterwards."""
    from tests.harness.redis import start_server  # only the Redis benchmarks need the test harness

    with tempfile.TemporaryDirectory(prefix="marcador-bench-redis-") as tmp:
        try:
            server = start_server(Path(tmp))
        except (FileNotFoundError, RuntimeError) as exc:
            raise SystemExit(f"{bench}: {exc}") from None
        try:
            yield server.url
        finally:
            server.stop()
