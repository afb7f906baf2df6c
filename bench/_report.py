"""What every benchmark shares: its command line and how it prints (a line for people, or one JSON object last)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any


def parser(doc: str | None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object last")
    return ap


def report(result: dict[str, Any], as_json: bool, line: Callable[[dict[str, Any]], str]) -> None:
    print(json.dumps(result) if as_json else line(result))
