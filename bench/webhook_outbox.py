"""What the webhook outbox costs and what it saves, against one local redis-server (started here, AOF on).

1. Cost: `--events` events offered at `--rate` per second to a local endpoint that answers 200 at once (in this
   process: it shares the CPU), through a node on Redis (every event in its outbox until delivered) and through one
   on the in-memory store (the outbox is the process's own: no Redis write). Prints events delivered, offer-to-
   delivery latency (p50, p99) and the Redis commands the outbox sent per event (INFO commandstats: HSET, HDEL,
   SADD); then the same number offered at once: how fast one sender delivers them.
2. Saved: the endpoint is down while a node queues `--queued` events; the node is then gone without a word (its
   tasks cancelled, nothing flushed: what kill -9 leaves). Another node (lease TTL `--ttl` s) takes its outbox over
   once the endpoint is back; prints how many of the events arrived, how many twice, and how long after the node
   went.

    python bench/webhook_outbox.py [--events 4000] [--rate 200] [--queued 2000] [--ttl 3] [--json]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.events import OutEvent
from api.webhooks import DELIVERY_HEADER, Webhooks
from bench._report import parser, redis_url, report
from config.settings import WebhookSettings
from dialer.memory_store import InMemoryStore
from dialer.ports import Store
from dialer.redis_store import RedisStore
from dialer.store_factory import open_store
from tests.test_api_events import http_server

SECRET = "bench-webhook-secret"


class Endpoint:
    """Answers `status`; notes when each delivery id first arrived with a 200, and how often."""

    def __init__(self) -> None:
        self.status = 200
        self.arrived: dict[str, float] = {}
        self.twice = 0

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            await request.body()
            if self.status == 200:
                delivery = request.headers[DELIVERY_HEADER]
                if delivery in self.arrived:
                    self.twice += 1
                else:
                    self.arrived[delivery] = time.perf_counter()
            return Response(status_code=self.status)

        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])


def _hook(base: str) -> WebhookSettings:
    return WebhookSettings(url=f"{base}/hook", secret=SECRET,  # type: ignore[arg-type]
                           backoff_base_s=0.2, backoff_max_s=0.2, max_attempts=50, queue_size=50_000)


async def _commands(r: Redis) -> dict[str, int]:
    stats = await r.info("commandstats")
    return {name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("hset", "hdel", "sadd")}


async def _cost(store: Store, base: str, ep: Endpoint, events: int, rate: float, r: Redis | None) -> dict[str, Any]:
    hooks = Webhooks([_hook(base)], store=store)
    hooks.start()
    await hooks.drain(5)
    before = await _commands(r) if r is not None else {}
    offered: dict[int, float] = {}
    start = time.perf_counter()
    for seq in range(1, events + 1):
        offered[seq] = time.perf_counter()
        hooks(OutEvent(seq, "call.ended", {"call_id": f"c{seq}", "outcome": "no_answer", "number": "+5730****567"},
                       time.time()))
        lag = start + seq / rate - time.perf_counter() if rate > 0 else 0.0
        if lag > 0:
            await asyncio.sleep(lag)
        elif seq % 50 == 0:
            await asyncio.sleep(0)
    await hooks.drain(120)
    wall = time.perf_counter() - start
    instance = hooks.senders[0].body(OutEvent(0, "x", {}, 0.0))  # the delivery ids' prefix, from a body
    prefix = instance.decode().split('"id":"', 1)[1].rsplit("-", 1)[0]
    lat = sorted((ep.arrived[f"{prefix}-{seq}"] - t) * 1000 for seq, t in offered.items()
                 if f"{prefix}-{seq}" in ep.arrived)
    after = await _commands(r) if r is not None else {}
    await hooks.aclose()
    out: dict[str, Any] = {"delivered": len(lat), "events_per_s": round(len(lat) / wall), "wall_s": round(wall, 2),
                           "p50_ms": round(statistics.median(lat), 2), "p99_ms": round(lat[int(len(lat) * 0.99)], 2)}
    if r is not None:
        out["redis_commands_per_event"] = round(sum(after[k] - before[k] for k in after) / events, 3)
    return out


async def _saved(url: str, base: str, ep: Endpoint, queued: int, ttl: float) -> dict[str, Any]:
    ep.status = 503
    gone_store = open_store(f"{url}&lease_ttl={ttl}", node_id="gone")
    assert isinstance(gone_store, RedisStore)
    await gone_store.heartbeat(now=time.time())
    gone = Webhooks([_hook(base)], store=gone_store)
    for seq in range(1, queued + 1):
        gone(OutEvent(seq, "call.ended", {"call_id": f"c{seq}"}, time.time()))
    outbox = f"{gone_store.prefix}{{wh}}:outbox:gone"
    while await gone_store._r.hlen(outbox) < queued:
        await asyncio.sleep(0.01)
    # Gone without a word: every task cancelled, nothing delivered, kept or struck off.
    for task in [s._task for s in gone.senders] + [gone.keeper._task, gone.outbox._task if gone.outbox else None,
                                                  gone._claims]:
        if task is not None:
            task.cancel()
    went = time.perf_counter()
    ep.status = 200
    ep.arrived.clear()
    taker_store = open_store(f"{url}&lease_ttl={ttl}", node_id="taker")
    taker = Webhooks([_hook(base)], store=taker_store)
    taker.start()
    while len(ep.arrived) < queued and time.perf_counter() - went < ttl * 4 + 30:
        await asyncio.sleep(0.05)
    result = {"queued": queued, "delivered": len(ep.arrived), "twice": ep.twice,
              "delivered_after_s": round(max(ep.arrived.values(), default=went) - went, 2), "lease_ttl_s": ttl}
    await taker.aclose()
    for s in (gone_store, taker_store):
        await s.aclose()  # type: ignore[attr-defined]
    return result


async def run(url: str, events: int, rate: float, queued: int, ttl: float) -> dict[str, Any]:
    ep = Endpoint()
    r = Redis.from_url(url.split("?")[0])
    try:
        async with http_server(ep.app()) as base:
            out: dict[str, Any] = {"events": events, "rate": rate}
            for name, paced in (("", rate), ("burst_", 0.0)):
                ep.arrived.clear()
                out[f"{name}memory"] = await _cost(InMemoryStore(), base, ep, events, paced, None)
                ep.arrived.clear()
                redis_store = open_store(url, node_id=f"cost{name}")
                out[f"{name}redis"] = await _cost(redis_store, base, ep, events, paced, r)
                await redis_store.aclose()  # type: ignore[attr-defined]
            saved = await _saved(url, base, ep, queued, ttl)
    finally:
        await r.aclose()
    return out | {"kill": saved}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--events", type=int, default=4000)
    ap.add_argument("--rate", type=float, default=200.0, help="events offered per second")
    ap.add_argument("--queued", type=int, default=2000, help="events queued in the node that goes")
    ap.add_argument("--ttl", type=float, default=3.0, help="lease TTL of the nodes in the second part")
    args = ap.parse_args()
    with redis_url("webhook_outbox") as url:
        result = asyncio.run(run(f"{url}?prefix=bench:", args.events, args.rate, args.queued, args.ttl))
    report(result, args.json, lambda r: (
        f"webhook_outbox: {r['events']} events at {r['rate']:.0f}/s; on Redis {r['redis']['delivered']} delivered, "
        f"p50 {r['redis']['p50_ms']} ms p99 {r['redis']['p99_ms']} ms, "
        f"{r['redis']['redis_commands_per_event']} Redis commands/event (in memory: p50 {r['memory']['p50_ms']} ms "
        f"p99 {r['memory']['p99_ms']} ms); all at once: {r['burst_redis']['events_per_s']} events/s on Redis, "
        f"{r['burst_memory']['events_per_s']}/s in memory; node gone with {r['kill']['queued']} queued: "
        f"{r['kill']['delivered']} delivered by another ({r['kill']['twice']} twice), the last "
        f"{r['kill']['delivered_after_s']} s after (lease TTL {r['kill']['lease_ttl_s']} s)"))


if __name__ == "__main__":
    main()
