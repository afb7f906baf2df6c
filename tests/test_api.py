"""The REST API over a running runtime (in-memory store, a scripted PBX stand-in): leads upload (CSV and JSON,
bad rows, idempotent retries, big streamed files), lead removal, readiness, attempts paging, campaign update,
dispositions."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import httpx
import pytest

from api.app import IdempotencyCache, _Lines, create_app
from config.settings import ApiSettings
from dialer.core import CoreConfig, DialerCore
from dialer.events import Disposition
from dialer.memory_store import InMemoryStore
from dialer.model import Attempt, CampaignSettings, CampaignStatus, Lead, Outcome
from dialer.ports import CampaignBusy, CampaignChange
from dialer.redis_store import RedisStore
from dialer.runtime import Runtime, RuntimeConfig
from dialer.store_factory import open_store
from tests.harness.clock import SetClock
from tests.harness.redis import RedisServer
from tests.harness.scripted_pbx import ScriptedPbx

# A promise date the API takes on any day the suite runs (a fixed one falls into the past).
PTP_DATE = (date.today() + timedelta(days=14)).isoformat()
HEADER = "lead_id,phone,country,timezone,amount_due,days_past_due,segment"


class DownStore(InMemoryStore):
    """An in-memory store whose ping can be made to fail or hang, as a Redis that went away; and whose campaign
    reads can be made slow, as a network store's are."""

    def __init__(self) -> None:
        super().__init__()
        self.mode = "up"
        self.slow_reads = False
        self.busy = False  # update_campaign gives up (as a Redis store whose campaign other nodes keep editing)

    async def get_campaign(self, campaign_id: str) -> CampaignSettings | None:
        found = await super().get_campaign(campaign_id)
        if self.slow_reads:
            await asyncio.sleep(0.01)  # the reply on its way
        return found

    async def update_campaign(self, campaign_id: str,
                              change: CampaignChange) -> tuple[CampaignSettings, CampaignSettings] | None:
        if self.busy:
            raise CampaignBusy(f"campaign {campaign_id!r}: changed by other writers during each of 50 tries")
        done = await super().update_campaign(campaign_id, change)
        if self.slow_reads:
            await asyncio.sleep(0.01)  # the reply on its way: the core must still take edits in the store's order
        return done

    async def ping(self) -> bool:
        if self.mode == "error":
            raise ConnectionError("store down")
        if self.mode == "hang":
            await asyncio.sleep(60)
        return True


@dataclass
class Env:
    runtime: Runtime
    store: DownStore
    pbx: ScriptedPbx
    api: httpx.AsyncClient


@asynccontextmanager
async def api_env(settings: ApiSettings | None = None, talk_s: float = 0.05, *, answer_s: float = 0.01,
                  clock: Callable[[], float] = time.time) -> AsyncIterator[Env]:
    store = DownStore()
    pbx = ScriptedPbx(talk_s, answer_s)
    runtime = Runtime(DialerCore(CoreConfig(id_prefix="t")), store, pbx, RuntimeConfig(tick_interval_s=0.02),
                      clock=clock)
    await runtime.start()
    app = create_app(runtime, settings)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as api:
            yield Env(runtime, store, pbx, api)
    finally:
        await runtime.stop()


def co_row(i: int, last: int = 1, **over: Any) -> dict[str, Any]:
    """A valid Colombian mobile lead; the number's last digit picks the stub PBX's outcome."""
    row = {"lead_id": f"L{i}", "phone": f"+5730012{i:04d}{last}", "country": "CO", "timezone": "America/Bogota",
           "amount_due": "120.50", "days_past_due": "30", "segment": "early"}
    row.update(over)
    return row


def csv_of(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(HEADER.split(","))
    for r in rows:
        w.writerow([r[c] for c in HEADER.split(",")])
    return out.getvalue()


async def make_campaign(api: httpx.AsyncClient, cid: str = "c1", headers: dict[str, str] | None = None,
                        **extra: Any) -> None:
    r = await api.post("/api/v1/campaigns", json={"campaign_id": cid, "wrapup_s": None, **extra}, headers=headers)
    assert r.status_code == 201, r.text


async def test_csv_upload_keeps_good_rows_and_names_every_bad_one() -> None:
    async with api_env() as env:
        await make_campaign(env.api)
        rows = [co_row(1), co_row(2, phone="12"), co_row(3, amount_due="1.234,50"), co_row(4),
                co_row(5, country="ZZ"), co_row(6, phone="+79161234567", country="RU", timezone=""), co_row(4)]
        body = csv_of(rows) + "L8,+573001230081\n"  # too few fields
        r = await env.api.post("/api/v1/campaigns/c1/leads", content=body, headers={"Content-Type": "text/csv"})
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["accepted"] == 3 and got["new"] == 3 and got["duplicates"] == 0
        bad = {(x["row"], x["field"]) for x in got["rejected"]}
        assert bad == {(2, "phone"), (3, "amount_due"), (5, "country"), (7, "lead_id"), (8, "row")}
        assert all(x["reason"] for x in got["rejected"])
        assert [(h["row"], h["field"]) for h in got["held"]] == [(6, "timezone")]
        assert (await env.store.lead_counts("c1"))["pending"] == 3


async def test_csv_first_row_offsets_numbers_and_a_bad_header_is_422() -> None:
    async with api_env() as env:
        await make_campaign(env.api)
        r = await env.api.post("/api/v1/campaigns/c1/leads?first_row=1001", content=csv_of([co_row(1, phone="x")]),
                               headers={"Content-Type": "text/csv"})
        assert r.json()["rejected"][0]["row"] == 1001
        r = await env.api.post("/api/v1/campaigns/c1/leads", content="lead_id,phone\nA,+573001234561\n",
                               headers={"Content-Type": "text/csv"})
        assert r.status_code == 422 and "missing required column" in r.text
        r = await env.api.post("/api/v1/campaigns/nope/leads", content=csv_of([co_row(1)]),
                               headers={"Content-Type": "text/csv"})
        assert r.status_code == 404
        r = await env.api.post("/api/v1/campaigns/c1/leads", content="x", headers={"Content-Type": "text/plain"})
        assert r.status_code == 415


async def test_json_upload_uses_the_same_rules_and_counts_duplicates() -> None:
    async with api_env() as env:
        await make_campaign(env.api)
        rows: list[Any] = [co_row(1), co_row(2, days_past_due=-3), "not an object", co_row(1),
                           {**co_row(5), "amount_due": 99.5, "days_past_due": 7, "notes": {"k": 1}}]
        r = await env.api.post("/api/v1/campaigns/c1/leads", json=rows)
        got = r.json()
        assert got["accepted"] == 2 and got["new"] == 2
        assert {(x["row"], x["field"]) for x in got["rejected"]} == {(2, "days_past_due"), (3, "-"), (4, "lead_id")}
        r = await env.api.post("/api/v1/campaigns/c1/leads", json=[co_row(1), co_row(9)])
        assert r.json() | {"rejected": None} == {"accepted": 2, "new": 1, "duplicates": 1, "rejected": None,
                                                 "held": [], "warnings": []}


async def test_idempotency_key_replays_the_answer_and_refuses_another_body() -> None:
    async with api_env() as env:
        await make_campaign(env.api)
        body = csv_of([co_row(1), co_row(2), co_row(3, phone="bad")])
        h = {"Content-Type": "text/csv", "Idempotency-Key": "upload-42"}
        first = await env.api.post("/api/v1/campaigns/c1/leads", content=body, headers=h)
        assert first.json()["new"] == 2
        assert await env.store.remove_lead("c1", "L1")  # state changes between the tries
        again = await env.api.post("/api/v1/campaigns/c1/leads", content=body, headers=h)
        assert again.status_code == 200 and again.json() == first.json()
        assert again.headers["Idempotent-Replayed"] == "true"
        assert (await env.store.lead_counts("c1"))["pending"] == 1  # nothing added by the retry (L1 stays gone)
        other = await env.api.post("/api/v1/campaigns/c1/leads", content=csv_of([co_row(7)]), headers=h)
        assert other.status_code == 422
        # A JSON retry under its own key is idempotent too; without a key the same body is simply re-added.
        hj = {"Idempotency-Key": "json-1"}
        a = await env.api.post("/api/v1/campaigns/c1/leads", json=[co_row(8)], headers=hj)
        b = await env.api.post("/api/v1/campaigns/c1/leads", json=[co_row(8)], headers=hj)
        assert a.json() == b.json() and a.json()["new"] == 1


def test_idempotency_cache_expires_and_forgets_the_least_recent() -> None:
    now = [0.0]
    cache = IdempotencyCache(ttl_s=10, max_keys=2, clock=lambda: now[0])
    for k in ("a", "b"):
        assert cache.begin(k)
        cache.finish(k, "fp", 200, {"k": k})
    assert cache.begin("a")  # a finished key is not pending: a new request may claim it (and replace it)
    cache.finish("a", "fp", 200, {"k": "a"})
    assert cache.get("b") is not None  # b is now the most recent
    assert cache.begin("c")
    assert not cache.begin("c")  # a concurrent request with the same key is refused
    cache.finish("c", "fp", 200, {})
    assert cache.get("a") is None and cache.get("b") is not None and len(cache) == 2
    now[0] = 11.0
    assert cache.get("b") is None


def test_line_splitter_keeps_crlf_and_multibyte_across_chunks() -> None:
    text = "lead_id,phone\r\nÁ,\"two\nlines\"\r\nlast".encode()
    for cut in range(1, len(text)):
        s = _Lines()
        out = s.feed(text[:cut]) + s.feed(text[cut:]) + s.feed(b"", final=True)
        assert "".join(out) == text.decode(), cut
        assert all(x.endswith(("\n", "last")) for x in out)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


async def test_csv_upload_is_stored_while_the_body_is_still_arriving() -> None:
    """Streaming, proven: the body pauses after 12,000 rows until the store has received a batch. A server that
    read the whole body before storing would never get there (the test would time out)."""
    n = int(os.environ.get("MARCADOR_BIG_UPLOAD", "30000"))  # 1000000 for the measured figure in the report
    async with api_env() as env:
        await make_campaign(env.api)
        batches: list[int] = []
        first_batch = asyncio.Event()

        async def discard(campaign_id: str, leads: Any) -> int:  # count only: RSS then measures the upload path
            batches.append(len(leads))
            first_batch.set()
            return len(leads)

        env.store.add_leads = discard  # type: ignore[method-assign]

        async def body() -> AsyncIterator[bytes]:
            yield (HEADER + "\n").encode()
            chunk: list[str] = []
            for i in range(n):
                chunk.append(f"B{i},+57300{i:07d},CO,America/Bogota,10,1,x\n")
                if len(chunk) == 2000:
                    yield "".join(chunk).encode()
                    chunk = []
                if i == 12_000:
                    await asyncio.wait_for(first_batch.wait(), timeout=30)
            if chunk:
                yield "".join(chunk).encode()

        base = peak = _rss_mb()

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, _rss_mb())
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample())
        started = time.perf_counter()
        r = await env.api.post("/api/v1/campaigns/c1/leads", content=body(), headers={"Content-Type": "text/csv"},
                               timeout=3600)
        elapsed = time.perf_counter() - started
        sampler.cancel()
        assert r.status_code == 200, r.text[:300]
        assert r.json()["accepted"] == sum(batches) == n and r.json()["rejected"] == []
        assert max(batches) <= 5000
        print(f"\nupload {n} rows: {elapsed:.1f} s ({n / elapsed:,.0f} rows/s), RSS growth {peak - base:.0f} MB")


async def test_remove_lead_at_once() -> None:
    async with api_env() as env:
        await make_campaign(env.api)
        await env.api.post("/api/v1/campaigns/c1/leads", json=[co_row(1), co_row(2)])
        assert (await env.api.delete("/api/v1/campaigns/c1/leads/L1")).status_code == 204
        assert (await env.api.delete("/api/v1/campaigns/c1/leads/L1")).status_code == 404
        assert (await env.store.lead_counts("c1")) == {"pending": 1, "leased": 0, "done": 1}


async def test_readyz_names_what_is_not_ready() -> None:
    async with api_env() as env:
        r = await env.api.get("/readyz")
        assert r.status_code == 200 and r.json()["failing"] == []
        env.store.mode = "error"
        r = await env.api.get("/readyz")
        assert r.status_code == 503 and r.json()["failing"] == ["store"]
        env.store.mode = "hang"
        started = time.monotonic()
        r = await env.api.get("/readyz")
        assert r.status_code == 503 and time.monotonic() - started < 5
        env.store.mode = "up"
        env.pbx.up = False
        r = await env.api.get("/readyz")
        assert r.status_code == 503 and r.json()["failing"] == ["pbx"]
        assert (await env.api.get("/healthz")).status_code == 200


async def test_attempts_pages_with_filters_and_a_stable_cursor() -> None:
    async with api_env() as env:
        await make_campaign(env.api)
        await make_campaign(env.api, "c2")
        for i in range(25):  # same dial time for pairs: the call id breaks ties
            await env.store.record_attempt(Attempt(f"k{i:02d}", "c1" if i % 5 else "c2", f"L{i}", "+57300", "1",
                                                   dialed_at=100.0 + i // 2,
                                                   outcome=Outcome.BUSY if i % 2 else Outcome.CONNECTED))
        seen: list[str] = []
        cursor = None
        while True:
            q: dict[str, Any] = {"campaign_id": "c1", "limit": 4} | ({"cursor": cursor} if cursor else {})
            page = (await env.api.get("/api/v1/attempts", params=q)).json()
            seen += [a["call_id"] for a in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == [f"k{i:02d}" for i in range(25) if i % 5]
        busy = (await env.api.get("/api/v1/attempts", params={"outcome": "busy", "since": 104, "until": 108})).json()
        assert [a["call_id"] for a in busy["items"]] == ["k09", "k11", "k13", "k15"]
        assert (await env.api.get("/api/v1/attempts", params={"cursor": "!!"})).status_code == 422
        assert (await env.api.get("/api/v1/attempts", params={"outcome": "maybe"})).status_code == 422


async def test_campaign_update_validates_and_takes_effect() -> None:
    async with api_env() as env:
        await make_campaign(env.api)
        r = await env.api.patch("/api/v1/campaigns/c1", json={"abandon_target": 0.5})
        assert r.status_code == 422
        r = await env.api.patch("/api/v1/campaigns/c1", json={"name": "Q3", "strategy": "erlang", "max_lines": 20})
        assert r.status_code == 200 and r.json()["strategy"] == "erlang"
        assert env.runtime.core.campaigns["c1"].strategy.name == "erlang"
        assert (await env.store.get_campaign("c1")).max_lines == 20  # type: ignore[union-attr]
        assert (await env.api.patch("/api/v1/campaigns/c1", json={"strategy": "preview"})).status_code == 409
        assert (await env.api.patch("/api/v1/campaigns/zz", json={"name": "x"})).status_code == 404


async def _agent_in_wrapup(api: httpx.AsyncClient, agent_id: str) -> dict[str, Any]:
    """The agent as the API shows it once its call has ended (or after 3 s)."""
    agent: dict[str, Any] = {}
    for _ in range(300):
        agent = (await api.get(f"/api/v1/agents/{agent_id}")).json()
        if agent["state"] == "wrapup":
            break
        await asyncio.sleep(0.01)
    return agent


async def _one_call_in_wrapup(env: Any, **campaign: Any) -> tuple[str, list[Any]]:
    """Campaign c1 (with `campaign`'s settings) and one lead, agent a1 on its call until the wrap-up: the call id,
    and the list the call.disposition events go to."""
    await make_campaign(env.api, **campaign)
    await env.api.post("/api/v1/campaigns/c1/leads", json=[co_row(1)])
    seen: list[Any] = []
    env.runtime.subscribe(lambda cmd: seen.append(cmd.data) if cmd.kind == "call.disposition" else None)
    await env.api.post("/api/v1/agents/a1/login", json={})
    await env.api.post("/api/v1/campaigns/c1/start")
    return (await _agent_in_wrapup(env.api, "a1"))["last_call_id"], seen


async def test_a_disposition_ends_the_agents_wrap_up() -> None:
    async with api_env(talk_s=0.05) as env:
        await make_campaign(env.api)
        await env.api.post("/api/v1/campaigns/c1/leads", json=[co_row(1)])
        assert (await env.api.post("/api/v1/agents/a1/login", json={"skills": {"es": 3}})).status_code == 202
        await env.api.post("/api/v1/campaigns/c1/start")
        agent = await _agent_in_wrapup(env.api, "a1")
        assert agent["state"] == "wrapup" and agent["skills"] == {"es": 3}
        call_id = agent["last_call_id"]
        r = await env.api.post(f"/api/v1/calls/{call_id}/disposition", json={"code": "PTP"})
        assert r.status_code == 422 and "ptp_amount" in r.text  # the campaign's set says what is missing
        r = await env.api.post(f"/api/v1/calls/{call_id}/disposition", json={"code": "NOPE"})
        assert r.status_code == 422
        r = await env.api.post(f"/api/v1/calls/{call_id}/disposition",
                               json={"code": "PTP", "ptp_amount": 120.5, "ptp_date": PTP_DATE})
        assert r.status_code == 202
        for _ in range(100):
            if (await env.api.get("/api/v1/agents/a1")).json()["state"] == "ready":
                break
            await asyncio.sleep(0.01)
        assert (await env.api.get("/api/v1/agents/a1")).json()["state"] == "ready"
        r = await env.api.post(f"/api/v1/calls/{call_id}/disposition", json={"code": "PAID"})
        assert r.status_code == 409
        assert (await env.api.post("/api/v1/calls/nope/disposition", json={"code": "x"})).status_code == 404


async def _attempt_disposed(api: httpx.AsyncClient, path: str, call_id: str) -> dict[str, Any]:
    """The attempt `call_id` from a listing, once its disposition is stored (or after 2 s)."""
    found: dict[str, Any] = {}
    for _ in range(200):
        body = (await api.get(path, params={"campaign_id": "c1"} if path.endswith("/v1/attempts") else None)).json()
        items = body["items"] if isinstance(body, dict) else body
        found = next((a for a in items if a["call_id"] == call_id), {})
        if found.get("disposition"):
            break
        await asyncio.sleep(0.01)
    return found


async def test_the_attempts_keep_the_promise_to_pay_and_the_callback_agreed() -> None:
    """A PTP's amount and date, and the callback a disposition scheduled, were only in the call.disposition event
    (which webhooks may give up): GET /attempts showed the code alone and the promise was lost."""
    async with api_env(talk_s=0.05) as env:
        await make_campaign(env.api)
        await env.api.post("/api/v1/campaigns/c1/leads", json=[co_row(1), co_row(2)])
        await env.api.post("/api/v1/agents/a1/login", json={})
        await env.api.post("/api/v1/campaigns/c1/start")
        first = (await _agent_in_wrapup(env.api, "a1"))["last_call_id"]
        r = await env.api.post(f"/api/v1/calls/{first}/disposition",
                               json={"code": "PTP", "ptp_amount": 120.5, "ptp_date": PTP_DATE})
        assert r.status_code == 202
        agent: dict[str, Any] = {}
        for _ in range(300):
            agent = (await env.api.get("/api/v1/agents/a1")).json()
            if agent["state"] == "wrapup" and agent["last_call_id"] != first:
                break
            await asyncio.sleep(0.01)
        second = agent["last_call_id"]
        assert agent["state"] == "wrapup" and second != first
        at = round(env.runtime.clock()) + 3600.0
        r = await env.api.post(f"/api/v1/calls/{second}/disposition", json={"code": "CALLBACK", "callback_at": at})
        assert r.status_code == 202
        for path in ("/api/v1/attempts", "/api/v1/campaigns/c1/attempts"):
            ptp = await _attempt_disposed(env.api, path, first)
            assert (ptp["disposition"], ptp["ptp_amount"], ptp["ptp_date"], ptp["callback_at"]) == \
                ("PTP", 120.5, PTP_DATE, None)
            cb = await _attempt_disposed(env.api, path, second)
            assert (cb["disposition"], cb["callback_at"], cb["ptp_amount"], cb["ptp_date"]) == \
                ("CALLBACK", at, None, None)


async def test_a_disposition_after_the_wrap_up_timer_is_taken_late_and_only_once() -> None:
    """The wrap-up timer ended the wrap-up (the agent is ready) before the agent's DNC arrived: it was a 409 and the
    debtor who asked not to be called stayed dialable."""
    async with api_env(talk_s=0.05) as env:
        await make_campaign(env.api, wrapup_s=0.05)
        await env.api.post("/api/v1/campaigns/c1/leads", json=[co_row(1)])
        seen: list[Any] = []
        env.runtime.subscribe(lambda cmd: seen.append(cmd.data) if cmd.kind == "call.disposition" else None)
        await env.api.post("/api/v1/agents/a1/login", json={})
        await env.api.post("/api/v1/campaigns/c1/start")
        agent: dict[str, Any] = {}
        for _ in range(300):
            agent = (await env.api.get("/api/v1/agents/a1")).json()
            if agent["state"] == "ready" and agent["last_call_id"]:
                break
            await asyncio.sleep(0.01)
        assert agent["state"] == "ready" and agent["last_call_id"]  # the wrap-up timer ended the wrap-up
        call_id = agent["last_call_id"]
        r = await env.api.post(f"/api/v1/calls/{call_id}/disposition", json={"code": "NOPE"})
        assert r.status_code == 422  # validated as on time
        r = await env.api.post(f"/api/v1/calls/{call_id}/disposition", json={"code": "DNC"})
        assert r.status_code == 202 and r.json()["late"] is True
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        assert seen and seen[0]["late"] is True and seen[0]["code"] == "DNC"
        assert env.runtime.core.dnc.contains("+573001200011", "c1", env.runtime.clock())
        assert (await env.api.get("/api/v1/agents/a1")).json()["state"] == "ready"  # left as it was
        r = await env.api.post(f"/api/v1/calls/{call_id}/disposition", json={"code": "PAID"})
        assert r.status_code == 409 and call_id in r.text and "already has its disposition (DNC)" in r.text
        r = await env.api.post("/api/v1/calls/nope/disposition", json={"code": "PAID"})
        assert r.status_code == 404 and "'nope'" in r.text


async def test_two_dispositions_posted_together_take_one_and_refuse_the_other() -> None:
    """An agent's UI posting twice (a double click) within the core's turn: both passed the API's checks, both
    were 202, and the core then refused the second in a log line only: the agent believed PAID was recorded."""
    async with api_env(talk_s=0.05) as env:
        call_id, seen = await _one_call_in_wrapup(env, wrapup_s=None)
        # The core's loop is behind (a long tick, a burst of PBX events): dispositions wait in its queue.
        handle = env.runtime._handle
        behind: list[tuple[float, Any]] = []

        def busy_core(queued_at: float, event: Any) -> None:
            if isinstance(event, Disposition) and len(behind) < 2:
                behind.append((queued_at, event))
            else:
                handle(queued_at, event)

        env.runtime._handle = busy_core  # type: ignore[method-assign]
        first = await env.api.post(f"/api/v1/calls/{call_id}/disposition",
                                   json={"code": "PTP", "ptp_amount": 50, "ptp_date": "2026-12-15"})
        second = await env.api.post(f"/api/v1/calls/{call_id}/disposition", json={"code": "PAID"})
        assert first.status_code == 202 and len(behind) == 1
        assert second.status_code == 409 and "already has its disposition (PTP)" in second.text
        env.runtime._handle = handle  # type: ignore[method-assign]
        for item in behind:
            handle(*item)
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert [d["code"] for d in seen] == ["PTP"]
        assert not env.runtime.dispositions_queued  # handled: nothing left waiting
        r = await env.api.post(f"/api/v1/calls/{call_id}/disposition", json={"code": "PAID"})
        assert r.status_code == 409 and "already has its disposition (PTP)" in r.text


async def test_a_callback_for_a_lead_at_its_attempt_cap_is_refused_not_dropped() -> None:
    """The call that ends a lead at its attempt cap is answered and the debtor asks to be called back: the lead
    is already done, so no callback can be scheduled. The disposition was taken (202) and the callback silently
    dropped, with call.disposition carrying its time as if it stood."""
    async with api_env(talk_s=0.05) as env:
        call_id, seen = await _one_call_in_wrapup(env, hopper={"max_attempts_lead": 1})
        at = env.runtime.clock() + 3600
        r = await env.api.post(f"/api/v1/calls/{call_id}/disposition", json={"code": "CALLBACK", "callback_at": at})
        assert r.status_code == 409 and "callback_at" in r.text and "'L1' is done" in r.text
        assert (await env.api.get("/api/v1/agents/a1")).json()["state"] == "wrapup"  # the agent picks another code
        # Straight to the core (an integration that skips the API's check): nothing said to be scheduled.
        from dialer.events import Disposition

        env.runtime.submit(Disposition(call_id, "CALLBACK", at))
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        assert seen and seen[0]["code"] == "CALLBACK" and seen[0]["callback_at"] is None
        stored = await _attempt_disposed(env.api, "/api/v1/attempts", call_id)
        assert stored["disposition"] == "CALLBACK" and stored["callback_at"] is None  # as the event: none scheduled


async def test_agent_ids_asterisk_reserves_are_refused_at_login() -> None:
    """An agent id is the extension of the agent contexts, which declare `h` and `i`: an agent `h` logged in and
    its phone never reached its room (the exact match beats the pattern), nor did its customers."""
    async with api_env() as env:
        for bad in ("h", "i"):
            r = await env.api.post(f"/api/v1/agents/{bad}/login", json={})
            assert r.status_code == 422 and "agent_id" in r.text and "reserves" in r.text
        assert (await env.api.post("/api/v1/agents/hi/login", json={})).status_code == 202


async def _two_creates_at_once(api: httpx.AsyncClient, other: httpx.AsyncClient) -> None:
    r1, r2 = await asyncio.gather(api.post("/api/v1/campaigns", json={"campaign_id": "c1", "name": "one"}),
                                  other.post("/api/v1/campaigns", json={"campaign_id": "c1", "name": "two"}))
    assert sorted((r1.status_code, r2.status_code)) == [201, 409]
    winner = (r1 if r1.status_code == 201 else r2).json()["name"]
    assert (await api.get("/api/v1/campaigns/c1")).json()["name"] == winner


async def test_two_creates_of_one_campaign_at_once_are_a_201_and_a_409() -> None:
    async with api_env() as env:
        await _two_creates_at_once(env.api, env.api)


async def test_two_nodes_creating_one_campaign_at_once_give_a_201_and_a_409(redis_server: RedisServer) -> None:
    """Through two nodes' APIs both creates passed the existence check before either was saved: both answered
    201 and the second's settings overwrote the first's (the store's create is now one SET NX)."""
    async with redis_api_env(redis_server) as env, peer_api(env) as other:
        await _two_creates_at_once(env.api, other)


@asynccontextmanager
async def peer_api(env: RedisEnv) -> AsyncIterator[httpx.AsyncClient]:
    """A second node's API on the environment's Redis (its peer store, its own runtime and PBX stand-in)."""
    runtime2 = Runtime(DialerCore(CoreConfig(id_prefix="u")), env.peer, ScriptedPbx(),
                       RuntimeConfig(tick_interval_s=0.02))
    await runtime2.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(runtime2)),
                                     base_url="http://test") as other:
            yield other
    finally:
        await runtime2.stop()


async def test_dnc_entries_reach_the_core_before_the_next_dial() -> None:
    async with api_env() as env:
        await make_campaign(env.api)
        await make_campaign(env.api, "c2")  # another campaign: c1's list does not block its dials
        r = await env.api.post("/api/v1/dnc", json={"numbers": ["+57 300 123 4567"], "campaign_id": "c1"})
        assert r.status_code == 200 and r.json()["added"] == 1
        assert (await env.api.post("/api/v1/dnc", json={"numbers": ["12"]})).status_code == 422
        for _ in range(100):
            if (await env.api.get("/api/v1/dnc/+573001234567", params={"campaign_id": "c1"})).json()["blocked"]:
                break
            await asyncio.sleep(0.01)
        assert (await env.api.get("/api/v1/dnc/+573001234567", params={"campaign_id": "c1"})).json()["blocked"]
        assert not (await env.api.get("/api/v1/dnc/+573001234567", params={"campaign_id": "c2"})).json()["blocked"]
        assert (await env.api.delete("/api/v1/dnc/+573001234567", params={"campaign_id": "c1"})).status_code == 204
        assert (await env.api.delete("/api/v1/dnc/+573001234567", params={"campaign_id": "c1"})).status_code == 404


async def test_campaign_settings_are_checked_by_the_core_rules() -> None:
    async with api_env() as env:
        r = await env.api.post("/api/v1/campaigns", json={"campaign_id": "x", "dispositions": [{"code": 3}]})
        assert r.status_code == 422 and "dispositions[0].code" in r.text
        assert (await env.api.get("/api/v1/campaigns/x")).status_code == 404  # nothing half-saved


async def test_stats_carry_rolling_abandon_windows_and_lines_per_agent() -> None:
    async with api_env() as env:
        await make_campaign(env.api)
        now = env.runtime.clock()
        rows = [("k1", now - 3600, Outcome.ABANDONED), ("k2", now - 3600, Outcome.CONNECTED),
                ("k3", now - 5 * 86400, Outcome.ABANDONED), ("k4", now - 40 * 86400, Outcome.ABANDONED)]
        for call_id, t, outcome in rows:
            await env.store.record_attempt(Attempt(call_id, "c1", call_id, "+57300", "1", dialed_at=t - 10,
                                                   answered_at=t, ended_at=t + 60, outcome=outcome))
        stats = (await env.api.get("/api/v1/campaigns/c1/stats")).json()
        w = stats["abandon_windows"]
        assert w["24h"] == {"abandoned": 1, "live_answers": 2, "rate": 0.5}
        assert w["30d"] == {"abandoned": 2, "live_answers": 3, "rate": 2 / 3}  # the 40-day-old one is out
        assert stats["lines_per_agent"] == 0.0  # nobody logged in


async def test_a_big_csv_parsed_in_worker_processes_answers_as_the_streamed_one() -> None:
    """Bodies of 64 KB and more are parsed in blocks by a process pool: same accepted, rejected (row, field),
    held and duplicates as the one-thread path, quoted newlines and all."""
    rows = []
    for i in range(3000):
        note = f"line one\nline two of {i}" if i % 97 == 0 else "x" * 40
        row = co_row(i, note=note)
        if i % 50 == 7:
            row["phone"] = "12"  # bad
        if i % 211 == 5:
            row["lead_id"] = "L4"  # duplicate of an earlier lead
        if i % 300 == 9:
            row["timezone"] = ""  # a Colombian mobile has one zone: derived
        rows.append(row)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow([*HEADER.split(","), "note"])
    for r in rows:
        w.writerow([*(r[c] for c in HEADER.split(",")), r["note"]])
    body = out.getvalue().encode()
    assert len(body) >= 64 * 1024

    async def streamed() -> AsyncIterator[bytes]:  # no Content-Length: the one-thread path
        for k in range(0, len(body), 65536):
            yield body[k:k + 65536]

    async with api_env() as env:
        await make_campaign(env.api, "big")
        await make_campaign(env.api, "streamed")
        headers = {"Content-Type": "text/csv"}
        pooled = (await env.api.post("/api/v1/campaigns/big/leads", content=body, headers=headers)).json()
        thread = (await env.api.post("/api/v1/campaigns/streamed/leads", content=streamed(), headers=headers)).json()
        assert pooled == thread
        assert pooled["accepted"] == pooled["new"] == 3000 - 60 - 15  # 60 bad phones, 15 repeated ids
        assert {(r["row"], r["field"]) for r in pooled["rejected"]} >= {(8, "phone"), (6, "lead_id")}


async def test_callbacks_at_an_instant_or_on_the_debtors_wall_clock() -> None:
    async with api_env() as env:
        await make_campaign(env.api)
        rows = [co_row(i) for i in range(3)]
        r = await env.api.post("/api/v1/campaigns/c1/leads", content=csv_of(rows), headers={"Content-Type": "text/csv"})
        assert r.json()["accepted"] == 3
        # Not loaded into the dialer yet (the campaign is not running): kept until the lead arrives.
        soon = time.time() + 3600
        iso = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(soon))
        r = await env.api.post("/api/v1/campaigns/c1/leads/L1/callback", json={"at": iso, "agent_id": "a7"})
        assert r.status_code == 202, r.text
        # The debtor's zone is read from the lead as loaded, in the store: not loaded into the dialer yet, or held
        # by another node, it used to be a 409 asking for `at`.
        r = await env.api.post("/api/v1/campaigns/c1/leads/L2/callback", json={"local": "2031-06-02T18:00"})
        assert r.status_code == 202, r.text
        assert r.json()["at"] == 1938207600.0  # 18:00 in Bogotá (UTC-5) = 2031-06-02 23:00 UTC
        assert (await env.api.post("/api/v1/campaigns/c1/start")).status_code == 200
        for _ in range(100):
            await asyncio.sleep(0.02)
            if env.runtime.core.campaigns["c1"].hopper.lead("L2") is not None:
                break
        r = await env.api.post("/api/v1/campaigns/c1/leads/L2/callback", json={"local": "2031-06-02T18:00"})
        assert r.status_code == 202 and r.json()["at"] == 1938207600.0  # held here now: from the hopper's lead
        await asyncio.sleep(0.05)
        got = (await env.api.get("/api/v1/campaigns/c1/callbacks")).json()
        assert [(c["lead_id"], c["agent_id"]) for c in got] == [("L1", "a7"), ("L2", None)]
        assert (await env.api.post("/api/v1/campaigns/c1/leads/nobody/callback", json={"at": iso})).status_code == 404
        both = {"at": iso, "local": "2031-06-02T18:00"}
        bad = await env.api.post("/api/v1/campaigns/c1/leads/L1/callback", json=both)
        assert bad.status_code == 422
        past = await env.api.post("/api/v1/campaigns/c1/leads/L1/callback", json={"at": "2020-01-01T00:00:00Z"})
        assert past.status_code == 422


async def test_a_callback_due_in_the_store_is_dialed_at_its_time_while_the_hopper_is_full() -> None:
    """One agent dials 300 busy leads (about three a second; the hopper holds 100 and fetches more only under 20).
    Two callbacks wait in the store, for leads no hopper holds: one asked through the API (last in line), one a
    stopped node handed back with its state. Each is dialed within seconds of its time, never before, though the
    hopper is well above its low-water mark. The store was asked for them only when the hopper ran low (the asked
    one was kept in this node's memory until then): minutes late, or, with the hopper refilled by recycled leads,
    not at all."""
    t0 = 1_700_000_000.0
    clock = SetClock(t0)
    async with api_env(answer_s=0.3, clock=clock) as env:
        await make_campaign(env.api, strategy="progressive")
        await env.store.add_leads("c1", [Lead("Z", "c1", ("+573001239992",), country="CO",
                                              timezone="America/Bogota")])
        (z,) = await env.store.lease_leads("c1", 1, t0)  # another node's, handed back as it stopped
        at_y, at_z = t0 + 3600, t0 + 3660
        await env.store.hand_back_lead("c1", z.lead_id, {"v": 1, "n": 1, "cb": at_z}, at_z, t0)
        rows = [co_row(i, last=2) for i in range(300)]
        assert (await env.api.post("/api/v1/campaigns/c1/leads", json=rows)).json()["new"] == 300
        iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at_y))
        r = await env.api.post("/api/v1/campaigns/c1/leads/L299/callback", json={"at": iso})
        assert r.status_code == 202, r.text
        assert (await env.api.post("/api/v1/agents/a1/login", json={})).status_code == 202
        assert (await env.api.post("/api/v1/campaigns/c1/start")).status_code == 200
        listed = (await env.api.get("/api/v1/campaigns/c1/callbacks")).json()
        assert [(c["lead_id"], c["at"]) for c in listed] == [("L299", at_y), ("Z", at_z)]

        async def dials(lead: str | None = None) -> list[Attempt]:
            return [a for a in await env.store.attempts("c1") if lead in (None, a.lead_id)]

        async def until(check: Callable[[], Any], what: str) -> None:
            for _ in range(100):
                if await check():
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"timed out waiting for {what}")

        async def some_dialed() -> bool:
            return len(await dials()) >= 3

        await until(some_dialed, "the first dials")
        hopper = env.runtime.core.campaigns["c1"].hopper
        clock.set(at_y - 30)  # the busy leads' recycle is over: they are redialed
        await asyncio.sleep(1.5)
        assert len({a.lead_id for a in await dials() if a.dialed_at >= at_y - 30}) >= 3
        assert await dials("L299") == [] and await dials("Z") == []  # not before their time
        for lead, at in (("L299", at_y), ("Z", at_z)):
            clock.set(at)
            assert hopper.pending > 20  # above low water: no fetch would bring it

            async def dialed(lead: str = lead) -> bool:
                return bool(await dials(lead))

            await until(dialed, f"{lead}'s callback")
            (att,) = await dials(lead)
            assert at <= att.dialed_at < at + 3


async def test_a_caller_id_with_a_line_break_is_refused_it_would_split_the_ami_originate() -> None:
    """The caller ID is written into an AMI header (`CallerID: <...>`): a CR or LF in it ends that header and
    lets the rest pass as more AMI fields or a whole new action (an Originate past every compliance gate)."""
    async with api_env() as env:
        evil = "Cobros <1000>\r\n\r\nAction: Originate\r\nChannel: PJSIP/5550100@trunk"
        r = await env.api.post("/api/v1/campaigns", json={"campaign_id": "c9", "caller_id": evil})
        assert r.status_code == 422 and "caller_id" in r.text
        assert (await env.api.get("/api/v1/campaigns/c9")).status_code == 404
        await make_campaign(env.api)
        for bad in ("A\nB <1>", "A <1>\x00", "tab\there"):
            r = await env.api.patch("/api/v1/campaigns/c1", json={"caller_id": bad})
            assert r.status_code == 422 and "caller_id" in r.text, bad
        assert (await env.store.get_campaign("c1")).caller_id == "Marcador <1000>"  # type: ignore[union-attr]
        ok = await env.api.patch("/api/v1/campaigns/c1", json={"caller_id": "Cobranza Ñandú <+5716000000>"})
        assert ok.status_code == 200 and ok.json()["caller_id"] == "Cobranza Ñandú <+5716000000>"


async def test_nan_and_infinity_in_a_body_are_a_422_naming_the_field_never_a_500() -> None:
    """Python's JSON reader takes NaN and Infinity; the 422 that echoes such an input must still be JSON, and
    no NaN may pass into the core (a NaN callback time or weight compares false with everything)."""
    async with api_env() as env:
        await make_campaign(env.api)
        raw = {"Content-Type": "application/json"}
        for body in (b'{"campaign_id": "x", "weight": NaN}', b'{"campaign_id": "x", "max_calls_per_s": Infinity}',
                     b'{"campaign_id": "x", "abandon_target": -Infinity}'):
            r = await env.api.post("/api/v1/campaigns", content=body, headers=raw)
            assert r.status_code == 422, (body, r.status_code)
            assert r.json()["detail"][0]["loc"][0] == "body"
        r = await env.api.patch("/api/v1/campaigns/c1", content=b'{"weight": NaN}', headers=raw)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "weight"], r.text
        r = await env.api.post("/api/v1/campaigns/c1/leads/L1/callback", content=b'{"at": NaN}', headers=raw)
        assert r.status_code == 422
        assert (await env.store.get_campaign("c1")).weight == 1.0  # type: ignore[union-attr]
        assert (await env.api.get("/api/v1/campaigns/x")).status_code == 404


async def test_a_csv_with_a_very_long_field_or_a_nul_byte_keeps_every_good_row() -> None:
    """Python's CSV reader raises on a field over 128 KB and (3.11) on a NUL byte: that was a 500 with nothing
    said about the rows. Both upload paths (streamed, and parsed in worker processes) now judge such rows like any
    other: the long note is refused as too long for a custom field, the NUL makes the phone unreadable, and every
    good row is stored."""
    head = HEADER + ",note\n"
    rows = [f"L{i},+5730012{i:04d}1,CO,America/Bogota,10,1,x,n{i}\n" for i in range(400)]
    rows[3] = "L3,+573001200031,CO,America/Bogota,10,1,x," + "y" * 200_000 + "\n"
    rows[5] = "L5,+57300\x0012000051,CO,America/Bogota,10,1,x,n5\n"
    body = (head + "".join(rows)).encode()
    assert len(body) >= 64 * 1024  # Content-Length known: the process pool parses it

    async def streamed() -> AsyncIterator[bytes]:  # no Content-Length: the one-thread path
        for k in range(0, len(body), 4096):
            yield body[k:k + 4096]

    async with api_env() as env:
        for cid, content in (("pooled", body), ("streamed", streamed())):
            await make_campaign(env.api, cid)
            r = await env.api.post(f"/api/v1/campaigns/{cid}/leads", content=content,
                                   headers={"Content-Type": "text/csv"})
            assert r.status_code == 200, (cid, r.text[:300])
            got = r.json()
            assert got["accepted"] == got["new"] == 398, cid
            assert [(x["row"], x["field"]) for x in got["rejected"]] == [(4, "note"), (6, "phone")], cid
            assert (await env.store.lead_counts(cid))["pending"] == 398


async def test_a_unicode_line_separator_inside_a_field_does_not_split_the_row() -> None:
    """CSV rows end at CR or LF only. U+2028, U+0085, form feed... inside a field (text pasted from the web) cut the
    row in two: its tail was lost, a phantom row was refused, and every later row was reported one too far."""
    head = HEADER + ",note\n"
    rows = [f"L{i},+5730012{i:04d}1,CO,America/Bogota,10,1,x,n{i}\n" for i in range(2000)]
    rows[1] = "L1,+573001200011,CO,America/Bogota,10,1,x,first\u2028second\x85third\x0cfourth\x1dfifth\n"
    rows[2] = "L2,bad,CO,America/Bogota,10,1,x,n2\n"
    body = (head + "".join(rows)).encode()
    assert len(body) >= 64 * 1024

    async def streamed() -> AsyncIterator[bytes]:
        yield body

    async with api_env() as env:
        for cid, content in (("pooled", body), ("streamed", streamed())):
            await make_campaign(env.api, cid)
            got = (await env.api.post(f"/api/v1/campaigns/{cid}/leads", content=content,
                                      headers={"Content-Type": "text/csv"})).json()
            assert [(x["row"], x["field"]) for x in got["rejected"]] == [(3, "phone")], (cid, got["rejected"])
            assert got["accepted"] == 1999, cid
        leads = await env.store.lease_leads("streamed", 2, time.time())
        assert [lead.fields["note"] for lead in leads if lead.lead_id == "L1"] == [
            "first\u2028second\x85third\x0cfourth\x1dfifth"]


def test_line_splitter_ends_lines_at_cr_and_lf_only() -> None:
    s = _Lines()
    text = "a\u2028b\x0bc\x0cd\x1ce\x85f\r\ng\rh\n"
    assert s.feed(text.encode(), final=True) == ["a\u2028b\x0bc\x0cd\x1ce\x85f\r\n", "g\r", "h\n"]


async def test_a_json_lead_with_an_array_or_object_in_a_known_field_is_refused_naming_it() -> None:
    """Nested values are kept as JSON text in custom fields; in a known field they were turned into text too, so
    `"phone": ["+57..."]` was read as a phone number and `"segment": ["late"]` became the segment '["late"]'."""
    async with api_env() as env:
        await make_campaign(env.api)
        rows = [co_row(1, phone=["+573001200011"]), co_row(2, segment=["late"]), co_row(3, phone2={"n": 1}),
                co_row(4, tags=["vip"])]
        got = (await env.api.post("/api/v1/campaigns/c1/leads", json=rows)).json()
        assert [(x["row"], x["field"]) for x in got["rejected"]] == [(1, "phone"), (2, "segment"), (3, "phone2")]
        assert "array" in got["rejected"][0]["reason"] and "object" in got["rejected"][2]["reason"]
        assert got["accepted"] == got["new"] == 1
        (lead,) = await env.store.lease_leads("c1", 5, time.time())
        assert lead.lead_id == "L4" and lead.fields["tags"] == '["vip"]'


async def test_a_lead_removed_from_a_running_campaign_is_gone_for_delete_and_callbacks() -> None:
    """The hopper keeps a removed lead's entry (state `removed`): a second DELETE answered 204 again, and a
    callback for the debtor who paid was accepted (202) though the dialer then drops it: the integrator was told
    a call would come that never does."""
    async with api_env() as env:
        await make_campaign(env.api)
        await env.api.post("/api/v1/campaigns/c1/leads", json=[co_row(i) for i in range(1, 4)])
        at = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + 3600))
        r = await env.api.post("/api/v1/campaigns/c1/leads/nobody/callback", json={"at": at})
        assert r.status_code == 404  # not started on this node yet: the store says who is in the campaign
        await env.api.post("/api/v1/campaigns/c1/start")  # no agent: leads wait in the hopper, none is dialed
        hopper = env.runtime.core.campaigns["c1"].hopper
        for _ in range(100):
            if hopper.info("L2") is not None:
                break
            await asyncio.sleep(0.02)
        assert hopper.info("L2") is not None
        assert (await env.api.delete("/api/v1/campaigns/c1/leads/L2")).status_code == 204
        for _ in range(100):
            if hopper.info("L2").state == "removed":  # type: ignore[union-attr]
                break
            await asyncio.sleep(0.02)
        assert (await env.api.delete("/api/v1/campaigns/c1/leads/L2")).status_code == 404
        r = await env.api.post("/api/v1/campaigns/c1/leads/L2/callback", json={"at": at})
        assert r.status_code == 404 and "removed" in r.text
        assert (await env.api.post("/api/v1/campaigns/c1/leads/L3/callback", json={"at": at})).status_code == 202


async def test_an_agent_login_naming_an_unknown_campaign_is_refused() -> None:
    """A typo in `campaigns` logged the agent in for a campaign that does not exist: ready all shift, serving
    nothing, and counted as logged in."""
    async with api_env() as env:
        await make_campaign(env.api)
        r = await env.api.post("/api/v1/agents/a1/login", json={"campaigns": ["c1", "c1-typo"]})
        assert r.status_code == 422 and "campaigns[1]" in r.text and "c1-typo" in r.text
        await asyncio.sleep(0.05)
        assert env.runtime.core.agents.get("a1") is None
        assert (await env.api.post("/api/v1/agents/a1/login", json={"campaigns": ["c1"]})).status_code == 202
        for _ in range(100):  # logged in before the runtime stops (a stop mid-login waits for the agent leg)
            agent = env.runtime.core.agents.get("a1")
            if agent is not None and agent.status.value == "ready":
                break
            await asyncio.sleep(0.01)
        assert env.runtime.core.agents.get("a1").campaigns == frozenset({"c1"})  # type: ignore[union-attr]


async def test_a_misspelt_pause_field_is_refused_not_replaced_by_the_default_reason() -> None:
    async with api_env() as env:
        r = await env.api.post("/api/v1/agents/a1/pause", json={"reson": "lunch"})
        assert r.status_code == 422 and "reson" in r.text


async def test_a_callback_for_a_lead_that_is_done_is_refused_not_accepted_and_dropped() -> None:
    """The core refuses a callback for a lead whose outcome is final (it logs an error); the API answered 202."""
    async with api_env(talk_s=0.05) as env:
        await make_campaign(env.api)
        await env.api.post("/api/v1/campaigns/c1/leads", json=[co_row(1)])
        await env.api.post("/api/v1/agents/a1/login")
        await env.api.post("/api/v1/campaigns/c1/start")
        agent = await _agent_in_wrapup(env.api, "a1")
        r = await env.api.post(f"/api/v1/calls/{agent['last_call_id']}/disposition", json={"code": "PAID"})
        assert r.status_code == 202
        hopper = env.runtime.core.campaigns["c1"].hopper
        for _ in range(100):
            if hopper.info("L1").state == "done":  # type: ignore[union-attr]
                break
            await asyncio.sleep(0.01)
        at = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + 3600))
        r = await env.api.post("/api/v1/campaigns/c1/leads/L1/callback", json={"at": at})
        assert r.status_code == 409 and "final" in r.text


async def test_preview_mode_is_worked_over_the_api() -> None:
    """A campaign could be created with strategy `preview`, but no route let an agent ask for a lead, dial it or
    skip it: such a campaign never dialed anyone."""
    async with api_env(talk_s=0.05) as env:
        await make_campaign(env.api, strategy="preview")
        await env.api.post("/api/v1/campaigns/c1/leads", json=[co_row(1), co_row(2)])
        await env.api.post("/api/v1/agents/a1/login")
        await env.api.post("/api/v1/campaigns/c1/start")
        for _ in range(100):
            if (await env.api.get("/api/v1/agents/a1")).json().get("state") == "ready":
                break
            await asyncio.sleep(0.01)
        assert (await env.api.post("/api/v1/agents/a1/preview/dial")).status_code == 409  # nothing on screen

        async def offer() -> dict[str, Any]:
            for _ in range(200):
                agent = (await env.api.get("/api/v1/agents/a1")).json()
                if agent["preview"] is not None:
                    return agent
                if agent["state"] == "ready":
                    r = await env.api.post("/api/v1/agents/a1/preview", json={"campaign_id": "c1"})
                    assert r.status_code == 202, r.text
                await asyncio.sleep(0.02)
            raise AssertionError("no lead offered")

        first = await offer()
        assert first["state"] == "preview" and first["preview"]["lead_id"] in ("L1", "L2")
        assert first["preview"]["phones"] and first["preview"]["campaign_id"] == "c1"
        r = await env.api.post("/api/v1/agents/a1/preview", json={"campaign_id": "c1"})
        assert r.status_code == 409  # one lead on screen at a time
        assert (await env.api.post("/api/v1/agents/a1/preview/skip")).status_code == 202
        second = await offer()
        assert (await env.api.post("/api/v1/agents/a1/preview/dial")).status_code == 202
        for _ in range(200):
            dialed = [a for a in await env.store.attempts("c1") if a.lead_id == second["preview"]["lead_id"]]
            if dialed:
                break
            await asyncio.sleep(0.02)
        assert len(dialed) == 1
        assert (await env.api.post("/api/v1/agents/a9/preview", json={"campaign_id": "c1"})).status_code == 404
        assert (await env.api.post("/api/v1/agents/a1/preview", json={"campaign_id": "zz"})).status_code == 404


async def test_a_latin1_csv_refuses_the_rows_it_would_garble_and_keeps_the_rest() -> None:
    # Decoded as UTF-8 with replacement, "señor" from a Windows-1252 export was stored as "se\ufffdor", unsaid.
    body = (HEADER + ",note\n" + "L1,+573001200011,CO,America/Bogota,10,1,x,se\xf1or\n"
            + "L2,+573001200021,CO,America/Bogota,10,1,x,plain\n").encode("latin-1")
    async with api_env() as env:
        await make_campaign(env.api)
        r = await env.api.post("/api/v1/campaigns/c1/leads", content=body, headers={"Content-Type": "text/csv"})
        got = r.json()
        assert r.status_code == 200 and got["accepted"] == 1, got
        assert [(x["row"], x["field"]) for x in got["rejected"]] == [(1, "note")]
        assert "UTF-8" in got["rejected"][0]["reason"]


async def test_pausing_a_campaign_that_is_not_running_is_a_conflict_not_a_silent_no_op() -> None:
    async with api_env() as env:
        await make_campaign(env.api)
        r = await env.api.post("/api/v1/campaigns/c1/pause")
        assert r.status_code == 409 and "is created" in r.json()["detail"]
        r = await env.api.post("/api/v1/campaigns/c1/start")
        assert r.status_code == 200 and r.json()["status_before"] == "created"
        for _ in range(100):
            if env.runtime.core.campaigns["c1"].status.value == "running":
                break
            await asyncio.sleep(0.01)
        assert (await env.api.post("/api/v1/campaigns/c1/pause")).status_code == 200
        assert (await env.api.post("/api/v1/campaigns/c1/stop")).status_code == 200
        for _ in range(100):
            if env.runtime.core.campaigns["c1"].status.value == "stopped":
                break
            await asyncio.sleep(0.01)
        r = await env.api.post("/api/v1/campaigns/c1/pause")
        assert r.status_code == 409 and "is stopped" in r.json()["detail"]


AGENT_COMMANDS: list[tuple[str, Any]] = [("ready", None), ("pause", {"reason": "lunch"}), ("logout", None),
                                         ("preview", {"campaign_id": "c1"}), ("preview/dial", None),
                                         ("preview/skip", None)]


async def test_commands_for_an_agent_never_logged_in_are_404_not_a_silent_202() -> None:
    """ready, pause and logout for an agent the core does not know answered 202 and the core ignored them."""
    async with api_env() as env:
        await make_campaign(env.api, strategy="preview")
        for path, body in AGENT_COMMANDS:
            r = await env.api.post(f"/api/v1/agents/a9/{path}", json=body)
            assert r.status_code == 404 and r.json()["detail"] == "agent a9: not logged in", (path, r.text)
        r = await env.api.get("/api/v1/agents/a9")
        assert r.status_code == 404 and r.json()["detail"] == "agent a9: not logged in"
        # Login is for unknown agents; a command sent right behind it (the login still queued for the core) is
        # taken. (Sent concurrently, the two requests may reach the API in either order: a ready first is a 404.)
        for agent in ("a8", "a9"):
            login = await env.api.post(f"/api/v1/agents/{agent}/login")
            ready = await env.api.post(f"/api/v1/agents/{agent}/ready")
            assert (login.status_code, ready.status_code) == (202, 202), ready.text
        for _ in range(100):
            if (await env.api.get("/api/v1/agents/a9")).json().get("state") == "ready":
                break
            await asyncio.sleep(0.01)
        assert (await env.api.post("/api/v1/agents/a9/pause", json={"reason": "lunch"})).status_code == 202
        for _ in range(100):
            if (await env.api.get("/api/v1/agents/a9")).json()["state"] == "paused":
                break
            await asyncio.sleep(0.01)
        assert (await env.api.get("/api/v1/agents/a9")).json()["reason"] == "lunch"


@dataclass
class RedisEnv:
    runtime: Runtime
    store: RedisStore
    peer: RedisStore  # another node's view of the same Redis (node n2)
    api: httpx.AsyncClient


@asynccontextmanager
async def redis_api_env(server: RedisServer) -> AsyncIterator[RedisEnv]:
    """The API of node n1 over a Redis store (a fresh key prefix), with node n2's store beside it."""
    prefix = f"t{os.urandom(5).hex()}:"
    store = open_store(f"{server.url}?prefix={prefix}&lease_ttl=30", node_id="n1")
    peer = open_store(f"{server.url}?prefix={prefix}&lease_ttl=30", node_id="n2")
    assert isinstance(store, RedisStore) and isinstance(peer, RedisStore)
    runtime = Runtime(DialerCore(CoreConfig(id_prefix="t")), store, ScriptedPbx(), RuntimeConfig(tick_interval_s=0.02))
    await runtime.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(runtime)),
                                     base_url="http://test") as api:
            yield RedisEnv(runtime, store, peer, api)
    finally:
        await runtime.stop()
        await peer.aclose()


@pytest.mark.redis
async def test_an_agent_on_another_node_is_a_conflict_naming_that_node(redis_server: RedisServer) -> None:
    """Agents work on the node whose PBX holds their leg; the shared store's node registry says which. Here the
    agent is not unknown, so not 404: a client told "not logged in" would log it in a second time here."""
    async with redis_api_env(redis_server) as env:
        api, clock = env.api, env.runtime.clock
        await make_campaign(api, strategy="preview")
        await env.peer.heartbeat(["a7"], now=clock())
        for path, body in AGENT_COMMANDS:
            r = await api.post(f"/api/v1/agents/a7/{path}", json=body)
            assert r.status_code == 409 and "node n2" in r.json()["detail"], (path, r.text)
        r = await api.get("/api/v1/agents/a7")
        assert r.status_code == 409 and "node n2" in r.json()["detail"]
        assert (await api.post("/api/v1/agents/a8/ready")).status_code == 404
        await env.peer.heartbeat(["a7"], now=clock() - 120)  # n2 died: nobody has a7 now
        assert (await api.post("/api/v1/agents/a7/ready")).status_code == 404


async def _dnc_counts_only_new_numbers(api: httpx.AsyncClient) -> None:
    await make_campaign(api)
    numbers = ["+57 300 123 4567", "+573001234567", "+573001234568"]  # the first two are one number
    r = await api.post("/api/v1/dnc", json={"numbers": numbers, "campaign_id": "c1"})
    assert r.status_code == 200 and r.json() == {"added": 2, "already": 0, "repeated": 1}
    r = await api.post("/api/v1/dnc", json={"numbers": [*numbers, "+573001234569"], "campaign_id": "c1"})
    assert r.json() == {"added": 1, "already": 2, "repeated": 1}
    r = await api.post("/api/v1/dnc", json={"numbers": ["+573001234567"]})  # the global list is another list
    assert r.json() == {"added": 1, "already": 0, "repeated": 0}
    # Sent together (the first not yet applied by the core when the second is counted): added once.
    got = await asyncio.gather(*[api.post("/api/v1/dnc", json={"numbers": ["+573001234570"]}) for _ in range(3)])
    assert sorted(r.json()["added"] for r in got) == [0, 0, 1]


async def test_dnc_add_counts_only_numbers_new_to_the_list() -> None:
    """`added` counted every number sent, those already on the list and repeats within the request too."""
    async with api_env() as env:
        await _dnc_counts_only_new_numbers(env.api)


@pytest.mark.redis
async def test_dnc_add_counts_only_numbers_new_to_the_shared_list(redis_server: RedisServer) -> None:
    async with redis_api_env(redis_server) as env:
        await _dnc_counts_only_new_numbers(env.api)
        assert await env.peer.dnc_blocked(["+573001234569"], "c1") == {"+573001234569"}


async def _patches_of_different_fields_both_last(api: httpx.AsyncClient, store: Any, runtime: Runtime) -> None:
    await make_campaign(api)
    for i in range(10):
        a, b = await asyncio.gather(api.patch("/api/v1/campaigns/c1", json={"name": f"Q{i}"}),
                                    api.patch("/api/v1/campaigns/c1", json={"max_lines": 20 + i}))
        assert (a.status_code, b.status_code) == (200, 200), (a.text, b.text)
        saved = await store.get_campaign("c1")
        assert (saved.name, saved.max_lines) == (f"Q{i}", 20 + i)
        assert (runtime.core.campaigns["c1"].settings.name, runtime.core.campaigns["c1"].settings.max_lines) == \
            (f"Q{i}", 20 + i)
        got = (await api.get("/api/v1/campaigns/c1")).json()
        assert (got["name"], got["max_lines"]) == (f"Q{i}", 20 + i)


async def test_concurrent_patches_of_one_campaign_lose_no_change() -> None:
    """Each PATCH read the campaign, awaited, then wrote it whole: of two at once, the later write undid the other's
    field."""
    async with api_env() as env:
        env.store.slow_reads = True
        await _patches_of_different_fields_both_last(env.api, env.store, env.runtime)


@pytest.mark.redis
async def test_concurrent_patches_of_one_campaign_lose_no_change_on_redis(redis_server: RedisServer) -> None:
    async with redis_api_env(redis_server) as env:
        await _patches_of_different_fields_both_last(env.api, env.store, env.runtime)


async def _attempt_pages_match_a_full_scan(api: httpx.AsyncClient, store: Any) -> None:
    await make_campaign(api)
    await make_campaign(api, "c2")
    await make_campaign(api, "c3")  # no attempts: an empty page (an unknown campaign is a 404)
    outcomes = [Outcome.BUSY, Outcome.NO_ANSWER, Outcome.CONNECTED, None, Outcome.BUSY, Outcome.FAILED]
    made: list[Attempt] = []
    for i in range(1200):  # recorded out of dial order, many equal dial times; abandons are rare (1 in 100)
        outcome = Outcome.ABANDONED if i % 100 == 7 else outcomes[i % len(outcomes)]
        made.append(Attempt(f"k{i:04d}", "c2" if i % 3 == 0 else "c1", f"L{i}", "+57300", "1",
                            dialed_at=1000.0 + (i * 389 % 600) / 2, outcome=outcome))
        await store.record_attempt(made[-1])

    async def refuse(*_: Any) -> Any:
        raise AssertionError("GET /attempts read every attempt")

    store.attempts = refuse
    queries: list[dict[str, Any]] = [
        {}, {"campaign_id": "c1"}, {"outcome": "abandoned"}, {"outcome": "pending,connected", "limit": 70},
        {"campaign_id": "c2", "outcome": "abandoned", "since": 1010, "until": 1290.5, "limit": 2},
        {"since": 1100, "until": 1100.5, "limit": 1}, {"campaign_id": "c3"}]
    for q in queries:
        outs = set(str(q.get("outcome", "")).split(",")) if "outcome" in q else None
        want = sorted((a for a in made if (q.get("campaign_id") in (None, a.campaign_id))
                       and (outs is None or (a.outcome.value if a.outcome else "pending") in outs)
                       and a.dialed_at >= q.get("since", 0) and a.dialed_at < q.get("until", 1e9)),
                      key=lambda a: (a.dialed_at, a.call_id))
        got: list[str] = []
        cursor = None
        limit = int(q.get("limit", 100))
        while True:
            r = await api.get("/api/v1/attempts", params={**q, **({"cursor": cursor} if cursor else {})})
            assert r.status_code == 200, r.text
            page = r.json()
            assert len(page["items"]) == limit or page["next_cursor"] is None, q  # a page is filled
            got += [a["call_id"] for a in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
            assert page["items"], q  # a next cursor only when there is more
        assert got == [a.call_id for a in want], q


async def test_attempt_pages_come_from_the_store_page_by_page() -> None:
    """GET /attempts read every attempt of the store, then filtered, sorted and paged them: slow with hundreds of
    thousands. Pages now come from the store in order; the outcome filter still fills each page."""
    async with api_env() as env:
        await _attempt_pages_match_a_full_scan(env.api, env.store)


@pytest.mark.redis
async def test_attempt_pages_come_from_the_store_page_by_page_on_redis(redis_server: RedisServer) -> None:
    async with redis_api_env(redis_server) as env:
        await _attempt_pages_match_a_full_scan(env.api, env.store)


@pytest.mark.redis
async def test_concurrent_patches_through_two_nodes_lose_no_change(redis_server: RedisServer) -> None:
    """Two nodes' APIs on one Redis, PATCHing different fields of one campaign at once. The per-node lock did not
    reach the other node: each read the old definition and the later write undid the other's fields."""
    async with redis_api_env(redis_server) as env, peer_api(env) as other:
        await make_campaign(env.api)
        for i in range(20):
            want = {"name": f"Q{i}", "max_lines": 20 + i, "skill": f"s{i}", "weight": 1.0 + i,
                    "ring_timeout_s": 20.0 + i, "caller_id": f"Q{i} <{1000 + i}>"}
            replies = await asyncio.gather(*(
                (env.api if n % 2 else other).patch("/api/v1/campaigns/c1", json={field: value})
                for n, (field, value) in enumerate(want.items())))
            assert [r.status_code for r in replies] == [200] * len(want), [r.text for r in replies]
            for api in (env.api, other):
                got = (await api.get("/api/v1/campaigns/c1")).json()
                assert {f: got[f] for f in want} == want, f"round {i}"


async def test_a_patch_outrun_by_other_nodes_at_every_try_is_a_409_naming_why() -> None:
    async with api_env() as env:
        await make_campaign(env.api, name="Q")
        env.store.busy = True
        r = await env.api.patch("/api/v1/campaigns/c1", json={"name": "R"})
        assert r.status_code == 409 and "changed by other writers" in r.json()["detail"] and "again" in r.text
        assert (await env.api.get("/api/v1/campaigns/c1")).json()["name"] == "Q"
        env.store.busy = False
        assert (await env.api.patch("/api/v1/campaigns/c1", json={"name": "R"})).json()["name"] == "R"


# ------------------------------------------------------------------ campaign settings and status on every node


@dataclass
class Node:
    runtime: Runtime
    pbx: ScriptedPbx
    api: httpx.AsyncClient


@asynccontextmanager
async def two_nodes(server: RedisServer, *, start_b: bool = True) -> AsyncIterator[tuple[Node, Any]]:
    """Nodes n1 and n2 on one Redis (a fresh key prefix), each with its own PBX stand-in and API. Yields n1 and a
    coroutine function giving n2 (started at once unless `start_b` is False: then when the test calls it)."""
    prefix = f"t{os.urandom(5).hex()}:"
    nodes: list[Node] = []
    stack: list[Any] = []

    async def node(name: str) -> Node:
        store = open_store(f"{server.url}?prefix={prefix}&lease_ttl=30", node_id=name)
        pbx = ScriptedPbx()
        runtime = Runtime(DialerCore(CoreConfig(id_prefix=name)), store, pbx, RuntimeConfig(tick_interval_s=0.02))
        await runtime.start()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(runtime)), base_url="http://test")
        stack.append(client)
        nodes.append(Node(runtime, pbx, client))
        return nodes[-1]

    try:
        first = await node("n1")
        second = await node("n2") if start_b else None

        async def get_b() -> Node:
            return second if second is not None else await node("n2")

        yield first, get_b
    finally:
        for client in stack:
            await client.aclose()
        for n in nodes:
            await n.runtime.stop()


def busy_rows(n: int) -> list[dict[str, Any]]:
    """Leads whose numbers the stand-in PBX answers busy: a ready agent keeps its node dialing, call after call."""
    return [co_row(i, last=2) for i in range(n)]


async def until(check: Any, timeout_s: float = 4.0) -> float:
    """Wait until `check()` holds; the seconds it took (fails after `timeout_s`)."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout_s, "not within the time"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


@pytest.mark.redis
async def test_a_pause_through_one_node_stops_the_other_nodes_dialing(redis_server: RedisServer) -> None:
    """start/pause reached only the core of the node whose API took them: a campaign paused through one node (a
    complaint, a compliance stop) went on being dialed by every other node."""
    async with two_nodes(redis_server, start_b=False) as (a, get_b):
        await make_campaign(a.api)
        assert (await a.api.post("/api/v1/campaigns/c1/leads", json=busy_rows(3000))).json()["new"] == 3000
        b = await get_b()  # started after the create: it knows the campaign from the store
        assert (await b.api.post("/api/v1/agents/b1/login", json={})).status_code == 202  # b's agent only
        assert (await b.api.post("/api/v1/campaigns/c1/start")).status_code == 200  # through b's own API
        await until(lambda: len(b.pbx.originated) >= 5)

        r = await a.api.post("/api/v1/campaigns/c1/pause")
        assert r.status_code == 200 and r.json()["status_before"] == "running"
        assert await until(lambda: b.runtime.core.campaigns["c1"].status.value == "paused") < 3.0
        await asyncio.sleep(0.3)  # what was dialed before the pause ends
        dialed = len(b.pbx.originated)
        await asyncio.sleep(1.5)
        assert len(b.pbx.originated) == dialed  # nothing new dialed on b since it took the pause
        for api in (a.api, b.api):
            assert (await api.get("/api/v1/campaigns/c1")).json()["status"] == "paused"

        assert (await b.api.post("/api/v1/campaigns/c1/stop")).status_code == 200  # through b: a takes it too
        assert await until(lambda: a.runtime.core.campaigns["c1"].status.value == "stopped") < 3.0
        r = await a.api.post("/api/v1/campaigns/c1/pause")
        assert r.status_code == 409 and "is stopped" in r.json()["detail"]


@pytest.mark.redis
async def test_a_start_through_one_node_starts_the_other_nodes_dialing(redis_server: RedisServer) -> None:
    async with two_nodes(redis_server) as (a, get_b):
        b = await get_b()
        await make_campaign(a.api)
        assert (await a.api.post("/api/v1/campaigns/c1/leads", json=busy_rows(3000))).json()["new"] == 3000
        assert (await b.api.post("/api/v1/agents/b1/login", json={})).status_code == 202  # b's agent only
        r = await a.api.post("/api/v1/campaigns/c1/start")
        assert r.status_code == 200 and r.json()["status_before"] == "created"
        assert await until(lambda: len(b.pbx.originated) >= 5) < 3.0  # within b's campaign sync
        assert (await b.api.get("/api/v1/campaigns/c1")).json()["status"] == "running"
        assert (await a.api.post("/api/v1/campaigns/c1/pause")).status_code == 200
        await until(lambda: b.runtime.core.campaigns["c1"].status.value == "paused")
        dialed = len(b.pbx.originated)
        assert (await a.api.post("/api/v1/campaigns/c1/start")).json()["status_before"] == "paused"
        assert await until(lambda: len(b.pbx.originated) > dialed + 5) < 3.0


@pytest.mark.redis
async def test_a_patch_through_one_node_reaches_the_other_nodes_core(redis_server: RedisServer) -> None:
    """A PATCH was applied to its own node's core only: the others kept the old calling window, abandon target,
    DID pool or pacing until they restarted. A campaign created through one node reaches the other too."""
    async with two_nodes(redis_server) as (a, get_b):
        b = await get_b()
        await make_campaign(a.api, strategy="erlang")
        assert await until(lambda: "c1" in b.runtime.core.campaigns) < 3.0  # created elsewhere: known here
        strategy_before = b.runtime.core.campaigns["c1"].strategy
        patch = {"abandon_target": 0.012, "max_lines": 7, "did_pool": ["+573001110000"],
                 "rule_overrides": {"window_start": "10:00"}}
        r = await a.api.patch("/api/v1/campaigns/c1", json=patch)
        assert r.status_code == 200, r.text
        settings = a.runtime.core.campaigns["c1"].settings
        assert (settings.abandon_target, settings.max_lines) == (0.012, 7)

        def taken() -> bool:
            s = b.runtime.core.campaigns["c1"].settings
            return (s.abandon_target, s.max_lines, s.did_pool) == (0.012, 7, ["+573001110000"])

        assert await until(taken) < 3.0
        camp = b.runtime.core.campaigns["c1"]
        assert camp.strategy is not strategy_before  # a pacing field changed: a new pacer, as on the PATCH's node
        assert camp.pool is not None and camp.settings.rule_overrides == {"window_start": "10:00"}
        assert camp.rule_set == a.runtime.core.campaigns["c1"].rule_set
        # An edit made through b comes back to a the same way.
        assert (await b.api.patch("/api/v1/campaigns/c1", json={"max_lines": 9})).status_code == 200
        assert await until(lambda: a.runtime.core.campaigns["c1"].settings.max_lines == 9) < 3.0


@pytest.mark.redis
async def test_a_node_started_after_a_pause_keeps_the_campaign_paused(redis_server: RedisServer) -> None:
    """The status was not stored: a node started (or restarted) into a paused campaign showed it created, and one
    started into a running campaign never dialed it until a start went through its own API."""
    async with two_nodes(redis_server, start_b=False) as (a, get_b):
        await make_campaign(a.api)
        await make_campaign(a.api, "c2")
        for cid in ("c1", "c2"):
            assert (await a.api.post(f"/api/v1/campaigns/{cid}/leads", json=busy_rows(500))).status_code == 200
            assert (await a.api.post(f"/api/v1/campaigns/{cid}/start")).status_code == 200
        assert (await a.api.post("/api/v1/campaigns/c1/pause")).status_code == 200
        b = await get_b()
        assert (await b.api.get("/api/v1/campaigns/c1")).json()["status"] == "paused"
        assert (await b.api.get("/api/v1/campaigns/c2")).json()["status"] == "running"
        assert (await b.api.post("/api/v1/agents/b1/login", json={"campaigns": ["c1"]})).status_code == 202
        assert (await b.api.post("/api/v1/agents/b2/login", json={"campaigns": ["c2"]})).status_code == 202
        await until(lambda: any(call.startswith("n2") for call in b.pbx.originated))  # c2 is dialed here
        await asyncio.sleep(1.5)
        dialed = await b.runtime.attempts("c1")
        assert [x for x in dialed if x.call_id.startswith("n2")] == []  # c1 is not
        # Its figures say what every API says: paused (they said created, the core having never run it here).
        assert (await b.api.get("/api/v1/campaigns/c1/stats")).json()["status"] == "paused"
        assert (await a.api.post("/api/v1/campaigns/c1/start")).status_code == 200
        await until(lambda: b.runtime.core.campaigns["c1"].status.value == "running", 3.0)


async def test_one_node_in_memory_keeps_the_status_it_was_asked() -> None:
    async with api_env() as env:
        await make_campaign(env.api)
        assert (await env.api.get("/api/v1/campaigns/c1")).json()["status"] == "created"
        assert (await env.api.post("/api/v1/campaigns/c1/start")).status_code == 200
        assert await env.store.campaign_status("c1") is CampaignStatus.RUNNING
        assert (await env.api.get("/api/v1/campaigns")).json()[0]["status"] == "running"
        assert (await env.api.post("/api/v1/campaigns/c1/pause")).status_code == 200
        await until(lambda: env.runtime.core.campaigns["c1"].status.value == "paused", 1.0)
        assert (await env.api.get("/api/v1/campaigns/c1")).json()["status"] == "paused"
        assert (await env.api.post("/api/v1/campaigns/nope/start")).status_code == 404
