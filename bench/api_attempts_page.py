"""Attempt history paging: GET /api/v1/attempts over a large history in the in-memory store.

Records `--attempts` attempts (one campaign, dial times half a second apart, 1 in 50 abandoned), then asks the API
in-process (httpx over ASGI) `--requests` times each for: the first page, a page starting at a cursor half way,
and a page of abandoned calls only. Prints the median per kind. Before the store paged (every attempt read,
filtered and sorted per request) each took about 1 s at 300,000 attempts.

    python bench/api_attempts_page.py [--attempts 300000] [--requests 20] [--json]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.app import _encode_cursor, create_app
from bench._report import parser, report
from dialer.core import DialerCore
from dialer.memory_store import InMemoryStore
from dialer.model import Attempt, CampaignSettings, Outcome
from dialer.runtime import Runtime
from tests.harness.scripted_pbx import ScriptedPbx

T0 = 1_700_000_000.0


async def run(attempts: int, requests: int) -> dict[str, Any]:
    store = InMemoryStore()
    await store.save_campaign(CampaignSettings(campaign_id="c1"))
    for i in range(attempts):
        await store.record_attempt(Attempt(f"k{i:07d}", "c1", f"L{i}", "+573001234567", "1000", T0 + i / 2,
                                           outcome=Outcome.ABANDONED if i % 50 == 7 else Outcome.BUSY))
    middle = (await store.attempts_page("c1", since=T0 + attempts / 4, limit=1))[0]
    queries = {"first": {}, "cursor": {"cursor": _encode_cursor(middle)}, "abandoned": {"outcome": "abandoned"}}
    app = create_app(Runtime(DialerCore(), store, ScriptedPbx()))  # /attempts reads the store only: not started
    out: dict[str, Any] = {"attempts": attempts}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as api:
        for name, params in queries.items():
            took = []
            for _ in range(requests):
                started = time.perf_counter()
                r = await api.get("/api/v1/attempts", params={"campaign_id": "c1", "limit": 100, **params})
                took.append(time.perf_counter() - started)
                assert r.status_code == 200 and len(r.json()["items"]) == 100, r.text
            out[f"{name}_p50_ms"] = round(statistics.median(took) * 1000, 2)
    return out


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--attempts", type=int, default=300_000)
    ap.add_argument("--requests", type=int, default=20)
    args = ap.parse_args()
    result = asyncio.run(run(args.attempts, args.requests))
    report(result, args.json, lambda r: (f"{r['attempts']} attempts: page p50 {r['first_p50_ms']} ms (first), "
                                         f"{r['cursor_p50_ms']} ms (from a cursor), "
                                         f"{r['abandoned_p50_ms']} ms (abandoned only)"))


if __name__ == "__main__":
    main()
