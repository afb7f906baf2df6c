"""The webhook outbox: every event a sender queues is in the store until it is delivered or kept, so a node killed
outright (kill -9) loses none. The proof is two `marcador run` processes on a real Redis: the first, its endpoint
down, is SIGKILLed with events queued; the next (the same node restarted, or another node) delivers every one."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from api.events import OutEvent
from api.metrics import render_metrics
from api.webhook_outbox import Outbox
from api.webhooks import DELIVERY_HEADER, Webhooks
from dialer.memory_store import InMemoryStore
from dialer.ports import FailedWebhook, OutboxEntry
from tests.harness.redis import RedisServer
from tests.harness.services import free_port
from tests.test_api import api_env
from tests.test_api_events import http_server
from tests.test_webhooks import SECRET, Switch, _hook

ROOT = Path(__file__).resolve().parents[1]


class CountingStore(InMemoryStore):
    """Records each outbox write; fails the first `fail` of them (a store down)."""

    def __init__(self, fail: int = 0) -> None:
        super().__init__()
        self.fail = fail
        self.writes: list[tuple[list[str], list[str]]] = []

    async def outbox_write(self, puts: Sequence[OutboxEntry], dones: Sequence[tuple[str, str]]) -> None:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("store down")
        self.writes.append(([e.delivery for e in puts], [d for _, d in dones]))
        await super().outbox_write(puts, dones)


async def _until(check: object, what: str, seconds: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while not check():  # type: ignore[operator]
        assert loop.time() < end, what
        await asyncio.sleep(0.02)


async def test_an_event_delivered_before_its_write_went_out_is_never_written() -> None:
    store = CountingStore()
    taken: list[Sequence[FailedWebhook]] = []
    box = Outbox(store, 100, lambda: 0.0, lambda _node, rows: taken.append(rows))
    box.put("h", "call.ended", "d1", b"{}")
    box.put("h", "call.ended", "d2", b"{}")
    box.done("h", "d1")  # delivered before the writer ran
    await box.drain(5)
    box.done("h", "d2")
    await box.drain(5)
    assert store.writes == [(["d2"], []), ([], ["d2"])]
    assert store._outbox == {} and taken == []
    await box.aclose(1)


async def test_outbox_writes_wait_for_a_store_that_is_down_and_lose_nothing() -> None:
    store = CountingStore(fail=3)
    box = Outbox(store, 100, lambda: 0.0, lambda _node, _rows: None)
    for n in range(5):
        box.put("h", "call.ended", f"d{n}", b"{}")
    await asyncio.sleep(0.05)
    box.done("h", "d0")  # given up: once kept it leaves, whatever became of the failed writes
    await box.drain(10)
    assert box.backlog == 0
    assert sorted(d for _, d in store._outbox) == ["d1", "d2", "d3", "d4"]
    await box.aclose(1)


class SwallowingStore(InMemoryStore):
    """A write that takes the cancel meant for its caller, as a Redis client may when it lands mid-command."""

    async def outbox_write(self, puts: Sequence[OutboxEntry], dones: Sequence[tuple[str, str]]) -> None:
        try:
            await asyncio.sleep(0.3)
        except asyncio.CancelledError:
            pass
        await super().outbox_write(puts, dones)


async def test_the_outbox_stops_even_when_a_write_takes_its_cancel() -> None:
    """Shutdown hung for good (1 run in 2 on Redis): the outbox was stopped mid-write, its drain having counted a
    write of dones alone as nothing owed, and the Redis client took the cancel."""
    box = Outbox(SwallowingStore(), 100, lambda: 0.0, lambda _node, _rows: None, linger_s=0)
    box.put("h", "call.ended", "d1", b"{}")
    await asyncio.sleep(0.05)  # the write is in progress
    loop = asyncio.get_running_loop()
    began = loop.time()
    # (A wait_for would not do: its own cancel, suppressed where the old code awaited the task, ended the wait.)
    closing = loop.create_task(box.aclose(0))
    await asyncio.wait([closing], timeout=5)
    assert closing.done(), f"the outbox did not stop ({loop.time() - began:.1f} s)"


async def test_an_event_stays_in_the_outbox_until_delivered_or_kept() -> None:
    store = InMemoryStore()
    rx = Switch(status=503)
    async with http_server(rx.app()) as base:
        hooks = Webhooks([_hook(base, max_attempts=3, backoff_base_s=0.05, backoff_max_s=0.05)], store=store)
        for seq in (1, 2, 3):
            hooks(OutEvent(seq, "call.ended", {"seq": seq}, 0.0))
        await _until(lambda: len(store._outbox) == 3 and rx.got, "three events in the outbox")
        rx.status = 404  # the first is refused (kept), the others too
        await hooks.drain(10)
        assert store._outbox == {}  # each kept, then out of the outbox
        assert [r.reason for r in await store.failed_webhooks()] == ["HTTP 404"] * 3
        rx.status = 200
        hooks(OutEvent(4, "call.ended", {"seq": 4}, 0.0))
        await hooks.drain(10)
        assert store._outbox == {} and len(rx.delivered()) == 1
        await hooks.aclose()


async def test_what_an_earlier_run_left_in_the_outbox_is_redelivered_at_start() -> None:
    store = InMemoryStore()
    rx = Switch(status=200)
    async with http_server(rx.app()) as base:
        label = "http://127.0.0.1:" + base.rsplit(":", 1)[1]
        bodies = [json.dumps({"type": "call.ended", "data": {"seq": n}, "id": f"old-{n}", "ts": 0.0}) for n in (1, 2)]
        await store.outbox_write([OutboxEntry(label, "call.ended", f"old-{n}", b, n)
                                  for n, b in zip((1, 2), bodies, strict=True)], [])
        hooks = Webhooks([_hook(base)], store=store)
        hooks.start()
        await _until(lambda: len(rx.delivered()) == 2, "the earlier run's two events delivered")
        assert [b.decode() for b, _ in rx.delivered()] == bodies  # the same bodies, in order
        assert [h[DELIVERY_HEADER.lower()] for _, h in rx.delivered()] == ["old-1", "old-2"]
        await hooks.drain(10)
        assert store._outbox == {} and await store.failed_webhooks() == [] and hooks.taken_over == 2
        async with api_env() as env:
            text = render_metrics(env.runtime, webhooks=hooks)[0].decode()
        assert "marcador_webhook_taken_over_total 2.0" in text and "marcador_webhook_outbox_backlog 0.0" in text
        await hooks.aclose()


def _config(path: Path, store_url: str, node: str, port: int, hook: str) -> Path:
    doc = {"store_url": store_url, "node_id": node, "api": {"host": "127.0.0.1", "port": port, "webhooks": [
        {"url": hook, "secret": SECRET, "backoff_base_s": 30, "backoff_max_s": 30, "max_attempts": 50}]},
        "demo": {"leads": 300, "agents": 10, "strategy": "progressive"}, "pbx": {"speed": 5}}
    path.write_text(json.dumps(doc))  # JSON is YAML
    return path


async def _node(cfg: Path) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARCADOR_")}
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "marcador_cli.main", "run", "--config", str(cfg),
                                                cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL)


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


@pytest.mark.redis
@pytest.mark.parametrize("next_node", ["node1", "node2"], ids=["the-node-restarted", "another-node"])
async def test_events_queued_in_a_node_killed_outright_are_delivered_by_the_next(
        redis_server: RedisServer, tmp_path: Path, next_node: str) -> None:
    """The endpoint is down while node1 runs: its events queue, each in its outbox in Redis. node1 is SIGKILLed.
    Then the endpoint is back and the next node (node1 again at once, or node2 once node1's heartbeat is older than
    the lease TTL) delivers every one of them once, with its body and delivery id, and nothing is left kept."""
    prefix = f"ob{uuid.uuid4().hex[:8]}:"
    url = f"{redis_server.url}?prefix={prefix}&lease_ttl=3"
    outbox_key = f"{prefix}{{wh}}:outbox:node1"
    r: aioredis.Redis = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    rx = Switch(status=503)
    first = second = None
    try:
        async with http_server(rx.app()) as base:
            hook = f"{base}/hook"
            first = await _node(_config(tmp_path / "n1.yaml", url, "node1", free_port(), hook))
            for _ in range(600):  # events queue behind the first, which the endpoint refuses (retried in 30 s)
                if await r.hlen(outbox_key) >= 20:
                    break
                await asyncio.sleep(0.05)
            assert await r.hlen(outbox_key) >= 20, "node1 queued no events in its outbox"
            first.kill()  # kill -9: nothing is flushed
            await first.wait()
            left = {str(k).split("\n", 1)[1] for k in await r.hkeys(outbox_key)}
            seqs = sorted(int(d.rsplit("-", 1)[1]) for d in left)
            assert seqs == list(range(seqs[0], seqs[-1] + 1))  # every event node1 queued, none missing between
            tried = {h[DELIVERY_HEADER.lower()]: b for b, h, _ in rx.got}
            assert set(tried) <= left  # the one the endpoint refused is among them

            rx.status = 200
            second = await _node(_config(tmp_path / "n2.yaml", url, next_node, free_port(), hook))

            def delivered() -> dict[str, list[bytes]]:
                out: dict[str, list[bytes]] = {}
                for b, h in rx.delivered():
                    out.setdefault(h[DELIVERY_HEADER.lower()], []).append(b)
                return out

            await _until(lambda: left <= set(delivered()), "node1's events delivered", 60)
            got = delivered()
            assert all(len(got[d]) == 1 for d in left)  # each once
            assert {d: json.loads(got[d][0])["id"] for d in left} == {d: d for d in left}
            assert all(got[d][0] == b for d, b in tried.items())  # the same bytes as first tried
            still = {str(k).split("\n", 1)[1] for k in await r.hkeys(outbox_key)}  # node1 restarted has its own
            assert not still & left
            for _ in range(100):  # delivered, they leave the kept list (written by a background task)
                if await r.hlen(f"{prefix}{{wh}}:failed") == 0:
                    break
                await asyncio.sleep(0.05)
            assert await r.hlen(f"{prefix}{{wh}}:failed") == 0
    finally:
        for proc in (first, second):
            if proc is not None:
                await _kill(proc)
        await r.aclose()


async def test_a_node_without_webhooks_writes_no_outbox() -> None:
    store = CountingStore()
    hooks = Webhooks([], store=store)
    hooks(OutEvent(1, "call.ended", {}, 0.0))
    await asyncio.sleep(0.05)
    assert hooks.outbox is None and store.writes == []
    await hooks.aclose()

