"""Lead leasing throughput of the Redis store against one local redis-server (started here, AOF on).

Loads a campaign's leads, then several tasks (each its own node, as several dialer nodes would) lease
them in batches until the hopper is empty; checks no lead was given twice. Also times single releases,
the runtime's per-call write.

    python bench/lease_throughput.py [--leads 200000] [--batch 100] [--tasks 8] [--json]
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import parser, redis_url, report
from dialer.model import CampaignSettings, Lead, Outcome
from dialer.redis_store import RedisStore
from dialer.store_factory import open_store

CAMPAIGN = "bench"


def make_leads(n: int) -> list[Lead]:
    return [Lead(f"lead-{i:07d}", CAMPAIGN, (f"+1555{i:07d}",), {"debt": 100 + i % 900, "account": f"A{i}"})
            for i in range(n)]


async def run(url: str, leads: int, batch: int, tasks: int, releases: int) -> dict[str, Any]:
    stores = []
    for i in range(tasks):
        s = open_store(url, node_id=f"bench-{i}")
        assert isinstance(s, RedisStore)
        stores.append(s)
    try:
        main = stores[0]
        await main.save_campaign(CampaignSettings(campaign_id=CAMPAIGN))
        data = make_leads(leads)
        started = time.perf_counter()
        added = await main.add_leads(CAMPAIGN, data)
        load_s = time.perf_counter() - started
        assert added == leads

        async def leaser(store: RedisStore) -> list[str]:
            got: list[str] = []
            while True:
                part = await store.lease_leads(CAMPAIGN, batch, time.time())
                if not part:
                    return got
                got += [lead.lead_id for lead in part]

        started = time.perf_counter()
        results = await asyncio.gather(*(leaser(s) for s in stores))
        lease_s = time.perf_counter() - started
        taken = [lid for r in results for lid in r]
        assert len(taken) == leads and len(set(taken)) == leads, "a lead was leased twice or lost"

        # Releases, one awaited call each as the runtime's writer does them (one writer per node).
        per_task = releases // tasks

        async def releaser(store: RedisStore, mine: list[str]) -> None:
            for lid in mine[:per_task]:
                await store.release_lead(CAMPAIGN, lid, Outcome.NO_ANSWER, True, time.time())

        started = time.perf_counter()
        await asyncio.gather(*(releaser(s, r) for s, r in zip(stores, results, strict=True)))
        release_s = time.perf_counter() - started
        counts = await main.lead_counts(CAMPAIGN)
        assert counts["done"] == per_task * tasks
        return {
            "leads": leads, "batch": batch, "tasks": tasks,
            "load_s": round(load_s, 3), "loads_per_s": round(leads / load_s),
            "lease_s": round(lease_s, 3), "leases_per_s": round(leads / lease_s),
            "releases": per_task * tasks, "releases_per_s": round(per_task * tasks / release_s),
            "duplicates": 0,
        }
    finally:
        for s in stores:
            await s.aclose()


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--leads", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--releases", type=int, default=20_000, help="leases released one by one afterwards")
    args = ap.parse_args()
    with redis_url("lease_throughput") as url:
        result = asyncio.run(run(url, args.leads, args.batch, args.tasks, args.releases))
    report(result, args.json, lambda r: (
        f"lease_throughput: {r['leases_per_s']} leases/s ({r['leads']} leads, batches of {r['batch']}, "
        f"{r['tasks']} tasks); load {r['loads_per_s']} leads/s; release {r['releases_per_s']}/s"))


if __name__ == "__main__":
    main()
