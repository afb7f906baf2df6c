"""Webhooks against a real local HTTP receiver (a Starlette app under uvicorn): retried with exponential
back-off through failures, signed with HMAC-SHA256 over the raw body, delivered once, counted in /metrics."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from pydantic import SecretStr, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.app import create_app
from api.events import OutEvent
from api.metrics import render_metrics
from api.webhooks import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, Webhooks, backoff_delays, sign, verify
from config.settings import ApiSettings, ApiToken, WebhookSettings
from dialer.logs import setup_logging
from dialer.memory_store import InMemoryStore
from dialer.ports import Store
from dialer.redis_store import RedisStore
from dialer.store_factory import open_store
from tests.test_api import api_env, co_row, make_campaign
from tests.test_api_events import http_server

SECRET = "whsec-test-0123456789"


@dataclass
class Receiver:
    """Answers 500 to the first `fail` requests, then 200; keeps every request's raw body and headers."""

    fail: int = 2
    delay_s: float = 0.0  # before each answer
    got: list[tuple[bytes, dict[str, str], int]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            body = await request.body()
            await asyncio.sleep(self.delay_s)
            status = 500 if len(self.got) < self.fail else 200
            self.got.append((body, dict(request.headers), status))
            if status == 200:
                self.arrived.set()
            return Response(status_code=status)

        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])

    @property
    def delivered(self) -> list[tuple[bytes, dict[str, str]]]:
        return [(b, h) for b, h, s in self.got if s == 200]


async def test_no_answer_call_reaches_the_integrator_signed_after_two_failures() -> None:
    """The issue's case: a call ends without a live answer → the integrator's endpoint gets `call.ended` (to send
    an SMS/WhatsApp reminder), even though the endpoint failed twice first."""
    rx = Receiver(fail=2)
    async with http_server(rx.app()) as base, api_env() as env:
        hook = WebhookSettings(url=f"{base}/hook?tenant=7", secret=SECRET, events=["call.ended"],  # type: ignore[arg-type]
                               backoff_base_s=0.05, backoff_max_s=0.2, max_attempts=5)
        app = create_app(env.runtime, ApiSettings(webhooks=[hook]))
        await make_campaign(env.api)
        await env.api.post("/api/v1/campaigns/c1/leads", json=[co_row(1, last=2)])  # the stub PBX: busy
        await env.api.post("/api/v1/agents/a1/login")
        await env.api.post("/api/v1/campaigns/c1/start")
        await asyncio.wait_for(rx.arrived.wait(), 10)
        await asyncio.sleep(0.3)  # a duplicate delivery would land here
        assert [s for _, _, s in rx.got] == [500, 500, 200]
        (body, headers), = rx.delivered
        assert verify(SECRET.encode(), body, headers[SIGNATURE_HEADER.lower()])
        assert not verify(b"another-secret", body, headers[SIGNATURE_HEADER.lower()])
        assert headers[EVENT_HEADER.lower()] == "call.ended"
        assert len({h[DELIVERY_HEADER.lower()] for _, h, _ in rx.got}) == 1  # the same delivery id on every retry
        doc = json.loads(body)
        assert set(doc) == {"type", "data", "id", "ts"} and doc["type"] == "call.ended"
        assert doc["data"]["outcome"] == "busy" and doc["data"]["lead_id"] == "L1"
        assert doc["data"]["number"] == "+573001200012"
        sender = app.state.webhooks.senders[0]
        assert (sender.counters.sent, sender.counters.retried, sender.counters.failed) == (1, 2, 0)
        metrics = (await _metrics(app)).splitlines()
        label = f'url="{base}"'  # the origin alone: a path or a query may carry a credential
        assert f'marcador_webhook_events_total{{result="sent",{label}}} 1.0' in metrics
        assert f"marcador_webhook_retries_total{{{label}}} 2.0" in metrics
        await app.state.webhooks.aclose()


async def _metrics(app: Any) -> str:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        return (await c.get("/metrics")).text


async def test_backoff_doubles_up_to_the_cap_and_an_event_is_given_up_after_max_attempts() -> None:
    waits: list[float] = []

    async def sleep(s: float) -> None:
        waits.append(s)

    rx = Receiver(fail=99)
    async with http_server(rx.app()) as base:
        hooks = Webhooks([WebhookSettings(url=f"{base}/hook", secret=SECRET, max_attempts=5,  # type: ignore[arg-type]
                                          backoff_base_s=1.0, backoff_max_s=3.0)], sleep=sleep)
        sender = hooks.senders[0]
        hooks(OutEvent(1, "call.ended", {"outcome": "no_answer"}, 100.0))
        hooks(OutEvent(2, "agent.state", {}, 101.0))
        await asyncio.sleep(0)
        await sender.drain(10)
        await hooks.aclose()
    assert waits == [1.0, 2.0, 3.0, 3.0, 1.0, 2.0, 3.0, 3.0]
    assert len(rx.got) == 10  # 2 events × 5 attempts, in order
    assert [json.loads(b)["id"].rsplit("-", 1)[1] for b, _, _ in rx.got] == ["1"] * 5 + ["2"] * 5
    assert (sender.counters.sent, sender.counters.failed, sender.counters.retried) == (0, 2, 8)
    assert backoff_delays(1.0, 300.0, 5) == [1.0, 2.0, 4.0, 8.0]


async def test_unreachable_endpoint_is_retried_and_a_full_queue_drops_the_oldest() -> None:
    async def sleep(s: float) -> None:
        await asyncio.sleep(0)

    hooks = Webhooks([WebhookSettings(url="http://127.0.0.1:9/hook", secret=SECRET, events=["call."],  # type: ignore[arg-type]
                                      max_attempts=2, queue_size=3, timeout_s=1)], sleep=sleep)
    sender = hooks.senders[0]
    for i in range(6):
        hooks(OutEvent(i, "call.ended", {}, 0.0))
        hooks(OutEvent(100 + i, "agent.state", {}, 0.0))  # not subscribed: never queued
    assert sender.backlog == 3 and sender.counters.dropped == 3  # the oldest went; offering never waited
    await sender.drain(20)
    await hooks.aclose()
    assert sender.counters.failed == 3 and sender.counters.retried == 3 and sender.counters.sent == 0


def test_signature_is_hmac_sha256_of_the_raw_body() -> None:
    body = b'{"type":"call.ended"}'
    assert sign(b"k", body) == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert verify(b"k", body, sign(b"k", body)) and not verify(b"k", body + b" ", sign(b"k", body))


@pytest.mark.parametrize("url", ["ftp://x", "example.com/hook"])
def test_webhook_urls_must_be_http(url: str) -> None:
    with pytest.raises(ValueError, match="http"):
        WebhookSettings(url=url, secret=SECRET)  # type: ignore[arg-type]


@pytest.mark.parametrize("url", ["http://", "http:///hook", "https://:443/hook", "http://exa mple.com/hook",
                                 "http://user:hunter2@host:99999/hook", "http://[::1/hook", "http://host/\nhook"])
def test_a_webhook_url_that_cannot_be_sent_to_is_refused_at_validation(url: str) -> None:
    """These passed (they start with http://): a URL with no host was retried for every event and labelled
    `http://None`; an out-of-range port or a broken IPv6 host crashed create_app with a bare ValueError instead of
    `config validate` naming the field. The message never repeats the URL (it may hold a password)."""
    with pytest.raises(ValidationError) as err:
        WebhookSettings(url=url, secret=SECRET)  # type: ignore[arg-type]
    (problem,) = err.value.errors()
    assert problem["msg"].startswith("Value error, url: ") and "hunter2" not in problem["msg"]


def test_a_good_webhook_url_is_accepted() -> None:
    for url in ("https://hooks.example.com/marcador?tenant=7", "http://[::1]:8080/hook"):
        WebhookSettings(url=url, secret=SECRET)  # type: ignore[arg-type]


@pytest.mark.parametrize("secret", ["", "   "])
def test_a_webhook_without_a_secret_is_refused(secret: str) -> None:
    """An empty secret validated: every body was 'signed' with an empty HMAC key, a signature anyone can make, so
    the receiver's check proved nothing. The message names the field, never the value."""
    with pytest.raises(ValidationError) as err:
        WebhookSettings(url="https://hooks.example.com/h", secret=secret)  # type: ignore[arg-type]
    (problem,) = err.value.errors()
    assert problem["loc"] == ("secret",) and "empty" in problem["msg"]


async def test_a_delivery_never_logs_the_url_query_string(capsys: pytest.CaptureFixture[str]) -> None:
    """With the service's logging (INFO), httpx logged every webhook POST as 'HTTP Request: POST <full URL>',
    query string and all: a credential an endpoint takes in its query (`?token=`) reached the logs, which the
    webhook module promises never happens."""
    root, httpx_log = logging.getLogger(), logging.getLogger("httpx")
    saved = (root.handlers[:], root.level, httpx_log.level)
    rx = Receiver(fail=0)
    try:
        setup_logging("INFO", json_lines=True)
        async with http_server(rx.app()) as base:
            hooks = Webhooks([WebhookSettings(url=f"{base}/hook?token=tok-s3cret", secret=SECRET)])  # type: ignore[arg-type]
            hooks(OutEvent(1, "call.ended", {}, 0.0))
            await asyncio.sleep(0)
            await hooks.senders[0].drain(5)
            await hooks.aclose()
    finally:
        root.handlers[:], _, _ = saved
        root.setLevel(saved[1])
        httpx_log.setLevel(saved[2])
    assert len(rx.delivered) == 1
    assert "tok-s3cret" not in capsys.readouterr().err


async def test_events_queued_at_shutdown_are_delivered_before_the_senders_stop() -> None:
    """`marcador run` closes the webhooks after draining the engine, so the last calls' `call.ended` are still
    queued then; aclose cancelled the senders at once and those events were never sent (the in-flight one cut
    mid-request). It now lets them go out first, within a bound."""
    rx = Receiver(fail=0, delay_s=0.1)
    async with http_server(rx.app()) as base:
        hooks = Webhooks([WebhookSettings(url=f"{base}/hook", secret=SECRET)])  # type: ignore[arg-type]
        for seq in (1, 2, 3):
            hooks(OutEvent(seq, "call.ended", {"seq": seq}, 0.0))
        await asyncio.sleep(0)
        await hooks.aclose()
    assert [json.loads(b)["data"]["seq"] for b, _ in rx.delivered] == [1, 2, 3]


async def test_shutdown_does_not_wait_past_its_bound_for_a_dead_endpoint() -> None:
    hooks = Webhooks([WebhookSettings(url="http://127.0.0.1:9/hook", secret=SECRET, backoff_base_s=30)])  # type: ignore[arg-type]
    hooks(OutEvent(1, "call.ended", {}, 0.0))
    await asyncio.sleep(0)
    started = asyncio.get_running_loop().time()
    await hooks.aclose(drain_s=0.3)
    assert asyncio.get_running_loop().time() - started < 2
    assert hooks.senders[0].counters.dropped == 1  # the event left undelivered is counted as lost


async def test_two_webhooks_to_one_endpoint_are_two_series_in_metrics() -> None:
    """Two tenants' hooks on one URL, told apart by their query strings, got the same `url` label (the query is
    left out): /metrics then held every webhook sample twice with one label set, which Prometheus takes as
    duplicate samples, keeping one endpoint's figures and dropping the other's."""
    async with api_env() as env:
        hooks = [WebhookSettings(url=f"https://hooks.example.com/h?tenant={t}", secret=SECRET)  # type: ignore[arg-type]
                 for t in (1, 2)]
        app = create_app(env.runtime, ApiSettings(webhooks=hooks))
        series = [line.rsplit(" ", 1)[0] for line in (await _metrics(app)).splitlines()
                  if line.startswith("marcador_webhook_")]
        # five series per hook (sent, failed, dropped, retries, backlog), its kept gauge, and four node-wide series
        # (kept events evicted, kept events lost, the outbox's backlog, events taken over)
        assert len(series) == 2 * 6 + 4 and len(set(series)) == len(series), series
        assert {s.split("url=")[1] for s in series if s.startswith("marcador_webhook_backlog")} == \
            {'"https://hooks.example.com"}', '"https://hooks.example.com#2"}'}
        await app.state.webhooks.aclose()


async def test_a_token_in_the_webhook_path_reaches_neither_metrics_nor_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Many receivers take their credential in the path (Slack, Discord, Zapier-style catch hooks). The url label
    and the log lines kept the path, so the token was on the open /metrics page and in every failure's log."""
    token = "XyZ-path-s3cret-42"
    async with api_env() as env:
        hook = WebhookSettings(url=f"http://127.0.0.1:9/services/T01/{token}", secret=SECRET,  # type: ignore[arg-type]
                               max_attempts=1)
        app = create_app(env.runtime, ApiSettings(webhooks=[hook]))
        sender = app.state.webhooks.senders[0]
        with caplog.at_level(logging.INFO, logger="marcador.api.webhooks"):
            app.state.webhooks(OutEvent(1, "call.ended", {}, 0.0))
            await asyncio.sleep(0)
            await sender.drain(5)
        assert sender.counters.failed == 1  # it was tried, and its failure logged
        text = await _metrics(app)
        assert 'marcador_webhook_events_total{result="failed",url="http://127.0.0.1:9"} 1.0' in text
        assert token not in text
        logged = " ".join(f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records)
        assert "webhook event given up" in logged and token not in logged
        await app.state.webhooks.aclose()


@dataclass
class Scripted:
    """Answers each request with the next (status, headers) of `script`, then 200; keeps (event id, status)."""

    script: list[tuple[int, dict[str, str]]]
    got: list[tuple[str, int]] = field(default_factory=list)

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            doc = json.loads(await request.body())
            status, headers = self.script.pop(0) if self.script else (200, {})
            self.got.append((doc["id"].rsplit("-", 1)[1], status))
            return Response(status_code=status, headers=headers, content=b'{"error":"rejected +573001200012"}')

        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 413, 422, 301, 302, 307, 308])
async def test_an_event_the_endpoint_rejects_with_a_4xx_is_not_retried_and_the_next_goes_at_once(
        status: int, caplog: pytest.LogCaptureFixture) -> None:
    """A 4xx was retried like a 5xx: an endpoint that will never take an event (a bad signature, a payload it
    refuses, a path gone) held every event behind it through the whole back-off, about 2 minutes with the
    defaults. A 4xx other than 408, 425 and 429 is now a permanent failure for that event: counted as failed,
    logged once (the endpoint's origin, never its path or the answer's body), and the next event goes out. So is
    a redirect: it is not followed (the event would go where nobody configured it), so no retry can succeed."""
    waits: list[float] = []

    async def sleep(s: float) -> None:
        waits.append(s)

    rx = Scripted([(status, {})])
    token = "tok-path-s3cret"
    async with http_server(rx.app()) as base, api_env() as env:
        hooks = Webhooks([WebhookSettings(url=f"{base}/hook?k={token}", secret=SECRET,  # type: ignore[arg-type]
                                          max_attempts=8)], sleep=sleep)
        sender = hooks.senders[0]
        with caplog.at_level(logging.INFO, logger="marcador.api.webhooks"):
            hooks(OutEvent(1, "call.ended", {"number": "+573001200012"}, 0.0))
            hooks(OutEvent(2, "call.ended", {"number": "+573001200013"}, 0.0))
            await asyncio.sleep(0)
            await sender.drain(5)
        assert rx.got == [("1", status), ("2", 200)]  # tried once, and the next event right after
        assert waits == []
        assert (sender.counters.sent, sender.counters.failed, sender.counters.retried) == (1, 1, 0)
        text = render_metrics(env.runtime, webhooks=hooks)[0].decode()
        assert f'marcador_webhook_events_total{{result="failed",url="{base}"}} 1.0' in text
        records = [r for r in caplog.records if r.name == "marcador.api.webhooks"]
        assert len(records) == 1 and records[0].levelno == logging.WARNING
        logged = f"{records[0].getMessage()} {getattr(records[0], 'fields', '')}"
        assert str(status) in logged and ("redirect" if status < 400 else "rejected") in logged
        assert token not in logged and "3001200012" not in logged and SECRET not in logged
        await hooks.aclose()


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503])
async def test_timeouts_too_many_requests_and_5xx_are_still_retried(status: int) -> None:
    waits: list[float] = []

    async def sleep(s: float) -> None:
        waits.append(s)

    rx = Scripted([(status, {}), (status, {})])
    async with http_server(rx.app()) as base:
        hooks = Webhooks([WebhookSettings(url=f"{base}/hook", secret=SECRET, max_attempts=5,  # type: ignore[arg-type]
                                          backoff_base_s=1.0, backoff_max_s=30.0)], sleep=sleep)
        sender = hooks.senders[0]
        hooks(OutEvent(1, "call.ended", {}, 0.0))
        await asyncio.sleep(0)
        await sender.drain(5)
        await hooks.aclose()
    assert rx.got == [("1", status), ("1", status), ("1", 200)]
    assert waits == [1.0, 2.0]
    assert (sender.counters.sent, sender.counters.failed, sender.counters.retried) == (1, 0, 2)


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize(("retry_after", "wait"), [("7", 7.0), ("0", 1.0), ("86400", 30.0), ("soon", 1.0),
                                                   ("-5", 1.0), ("Wed, 21 Oct 2099 07:28:00 GMT", 30.0),
                                                   ("Wed, 21 Oct 2015 07:28:00 GMT", 1.0)])
async def test_a_retry_after_is_honoured_within_the_back_off_cap(status: int, retry_after: str, wait: float) -> None:
    """A 429's or 503's Retry-After (seconds or an HTTP date) is waited, never less than the back-off's own delay and
    never past backoff_max_s (an endpoint cannot park the queue for a day); one that cannot be read, or already
    past, leaves the back-off as it is. (A 503 in maintenance asking for 7 s was retried after 1 s.)"""
    waits: list[float] = []

    async def sleep(s: float) -> None:
        waits.append(s)

    rx = Scripted([(status, {"Retry-After": retry_after})])
    async with http_server(rx.app()) as base:
        hooks = Webhooks([WebhookSettings(url=f"{base}/hook", secret=SECRET, max_attempts=5,  # type: ignore[arg-type]
                                          backoff_base_s=1.0, backoff_max_s=30.0)], sleep=sleep)
        hooks(OutEvent(1, "call.ended", {}, 0.0))
        await asyncio.sleep(0)
        await hooks.senders[0].drain(5)
        await hooks.aclose()
    assert rx.got == [("1", status), ("1", 200)]
    assert waits == [wait]


# ---------------------------------------------------------------------------------------------- events kept


@dataclass
class Switch:
    """An endpoint that is down (answers `status`, 503 at first) until a test brings it back (`status = 200`);
    keeps every request's raw body, headers and the status it got."""

    status: int = 503
    delay_s: float = 0.0  # before each answer
    got: list[tuple[bytes, dict[str, str], int]] = field(default_factory=list)

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            body = await request.body()
            await asyncio.sleep(self.delay_s)
            self.got.append((body, dict(request.headers), self.status))
            return Response(status_code=self.status)

        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])

    def delivered(self) -> list[tuple[bytes, dict[str, str]]]:
        return [(b, h) for b, h, s in self.got if s == 200]


def _hook(base: str, **over: Any) -> WebhookSettings:
    settings: dict[str, Any] = {"url": f"{base}/hook", "secret": SECRET, "max_attempts": 2, "backoff_base_s": 0.01,
                                "backoff_max_s": 0.02, **over}
    return WebhookSettings(**settings)


async def _kept(api: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    r = await api.get("/api/v1/webhooks/failed", params=params)
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


async def test_events_given_up_are_kept_listed_redelivered_and_then_delivered_exactly_once(
        caplog: pytest.LogCaptureFixture) -> None:
    """The issue's case: the integrator's endpoint is down long enough for every try to fail. The events were given
    up, counted and logged, and lost for good (a promise to pay among them). They are now kept in the store, listed,
    and once the endpoint is back redelivered: the same body and delivery id, signed, each delivered once, and they
    leave the list."""
    rx = Switch()
    async with http_server(rx.app()) as base, api_env() as env:
        app = create_app(env.runtime, ApiSettings(webhooks=[_hook(base, events=["call."])]))
        hooks: Webhooks = app.state.webhooks
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as api:
            with caplog.at_level(logging.INFO):
                hooks(OutEvent(1, "call.ended", {"number": "+573001200012", "outcome": "no_answer"}, 10.0))
                hooks(OutEvent(2, "call.disposition", {"number": "+573001200013", "code": "PTP",
                                                       "ptp_amount": 120.5}, 11.0))
                hooks(OutEvent(3, "call.ended", {"number": "+573001200014", "outcome": "busy"}, 12.0))
                await asyncio.sleep(0)
                await hooks.drain(10)
                assert len(rx.got) == 6 and not rx.delivered()  # 3 events x 2 tries, all refused by the outage
                first = {json.loads(b)["id"]: b for b, _, _ in rx.got}

                kept = await _kept(api)
                assert [k["kind"] for k in kept] == ["call.ended", "call.disposition", "call.ended"]
                assert {k["hook"] for k in kept} == {base} and {k["tries"] for k in kept} == {1}
                assert {k["reason"] for k in kept} == {"HTTP 503 after 2 tries"}
                assert kept[1]["event"]["data"]["ptp_amount"] == 120.5
                assert [k["delivery_id"] for k in kept] == [k["event"]["id"] for k in kept] == list(first)
                assert [k["id"] for k in await _kept(api, kind="call.disposition")] == [kept[1]["id"]]
                page = (await api.get("/api/v1/webhooks/failed", params={"limit": 2})).json()
                assert page["kept"] == 3  # all, whatever the page (the dashboard's line)
                assert [k["id"] for k in page["items"]] == [kept[0]["id"], kept[1]["id"]]
                rest = await _kept(api, limit=2, cursor=page["next_cursor"])
                assert [k["id"] for k in rest] == [kept[2]["id"]]
                assert f'marcador_webhook_kept{{url="{base}"}} 3.0' in await _metrics(app)

                rx.status = 200  # the endpoint is back
                r = await api.post("/api/v1/webhooks/failed/redeliver", json={"ids": [kept[1]["id"], 999_999]})
                assert r.status_code == 200, r.text
                assert r.json() == {"queued": 1, "already_queued": 0, "queue_full": 0, "no_webhook": 0,
                                    "not_found": [999_999]}
                await hooks.drain(10)
                assert [k["id"] for k in await _kept(api)] == [kept[0]["id"], kept[2]["id"]]
                r = await api.post("/api/v1/webhooks/failed/redeliver", json={"all": True})
                assert r.json()["queued"] == 2
                await hooks.drain(10)
                assert await _kept(api) == []
                assert (await api.post("/api/v1/webhooks/failed/redeliver",
                                       json={"ids": [kept[0]["id"]]})).json()["not_found"] == [kept[0]["id"]]
                await asyncio.sleep(0.2)  # a duplicate delivery would land here
            delivered = rx.delivered()
            ids = [h[DELIVERY_HEADER.lower()] for _, h in delivered]
            assert sorted(ids) == sorted(first) and len(set(ids)) == 3  # each once
            for body, headers in delivered:
                assert body == first[headers[DELIVERY_HEADER.lower()]]  # the very body first sent
                assert verify(SECRET.encode(), body, headers[SIGNATURE_HEADER.lower()])
            assert f'marcador_webhook_kept{{url="{base}"}} 0.0' in await _metrics(app)
            logged = " ".join(f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records)
            assert "kept for redelivery" in logged
            assert "30012000" not in logged and "120.5" not in logged and SECRET not in logged
        await hooks.aclose()


async def test_a_redelivery_given_up_again_stays_kept_once_and_a_second_request_does_not_send_it_twice() -> None:
    rx = Switch(status=410)  # refused: given up at once
    async with http_server(rx.app()) as base, api_env() as env:
        app = create_app(env.runtime, ApiSettings(webhooks=[_hook(base)]))
        hooks: Webhooks = app.state.webhooks
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as api:
            hooks(OutEvent(1, "call.ended", {}, 0.0))
            await asyncio.sleep(0)
            await hooks.drain(10)
            (kept,) = await _kept(api)
            assert (kept["reason"], kept["tries"]) == ("HTTP 410", 1)
            rx.status = 503  # still down when redelivered
            r = await api.post("/api/v1/webhooks/failed/redeliver", json={"ids": [kept["id"]]})
            assert r.json()["queued"] == 1
            await hooks.drain(10)
            (again,) = await _kept(api)
            assert (again["id"], again["tries"], again["reason"]) == (kept["id"], 2, "HTTP 503 after 2 tries")
            assert again["delivery_id"] == kept["delivery_id"]
            # Two redeliveries asked while the first is on its way: sent once.
            rx.status, rx.delay_s = 200, 0.3
            hooks(OutEvent(50, "call.ended", {}, 0.0))  # holds the sender a moment
            await asyncio.sleep(0.05)
            r1 = await api.post("/api/v1/webhooks/failed/redeliver", json={"all": True})
            r2 = await api.post("/api/v1/webhooks/failed/redeliver", json={"ids": [kept["id"]]})
            assert (r1.json()["queued"], r2.json()["queued"], r2.json()["already_queued"]) == (1, 0, 1)
            await hooks.drain(10)
            assert await _kept(api) == []
            r3 = await api.post("/api/v1/webhooks/failed/redeliver", json={"ids": [kept["id"]]})
            assert r3.json()["not_found"] == [kept["id"]]  # delivered: gone, never sent again
            sent = [h[DELIVERY_HEADER.lower()] for _, h in rx.delivered()]
            assert sent.count(kept["delivery_id"]) == 1
        await hooks.aclose()


STORES = ["memory", pytest.param("redis", marks=pytest.mark.redis)]


@pytest.mark.parametrize("kind", STORES)
async def test_events_left_at_shutdown_are_kept_and_a_new_node_redelivers_them(
        kind: str, request: pytest.FixtureRequest) -> None:
    """At shutdown a dead endpoint's queue was counted as dropped and lost. Now the one in flight and those waiting
    are kept in the store: after a restart (another Webhooks on the same store) they are listed and redelivered."""
    if kind == "memory":
        store: Store = InMemoryStore()
        reopen: Callable[[], Store] = lambda: store  # noqa: E731
    else:
        server = request.getfixturevalue("redis_server")
        url = f"{server.url}?prefix=wh{uuid.uuid4().hex[:8]}:"
        store = open_store(url, node_id="n1")
        reopen = lambda: open_store(url, node_id="n2")  # noqa: E731
    hooks = Webhooks([WebhookSettings(url="http://127.0.0.1:9/hook", secret=SECRET,  # type: ignore[arg-type]
                                      backoff_base_s=30)], store=store)
    for seq in (1, 2, 3):
        hooks(OutEvent(seq, "call.disposition", {"seq": seq}, 0.0))
    await asyncio.sleep(0)
    await hooks.aclose(drain_s=0.3)
    assert hooks.senders[0].counters.dropped == 3 and hooks.keeper.kept == 3 and hooks.keeper.lost == 0
    if isinstance(store, RedisStore):
        await store.aclose()

    later = reopen()
    rows = await later.failed_webhooks()
    assert [json.loads(r.event)["data"]["seq"] for r in rows] == [1, 2, 3]
    assert {r.reason for r in rows} == {"shutdown"} and {r.hook for r in rows} == {"http://127.0.0.1:9"}
    rx = Switch(status=200)
    async with http_server(rx.app()) as base:
        # The same hook after the restart (its origin is its label: the receiver took over port 9's name here)
        again = Webhooks([_hook(base)], store=later)
        again.senders[0].label = "http://127.0.0.1:9"
        assert again.redeliver(rows) == {"queued": 3, "already_queued": 0, "queue_full": 0, "no_webhook": 0}
        await again.drain(10)
        await again.aclose()
    assert [json.loads(b)["data"]["seq"] for b, _ in rx.delivered()] == [1, 2, 3]
    assert await later.failed_webhooks() == []
    if isinstance(later, RedisStore):
        await later.aclose()


async def test_kept_events_are_bounded_the_oldest_dropped_first_and_counted() -> None:
    rx = Switch(status=400)
    async with http_server(rx.app()) as base, api_env() as env:
        app = create_app(env.runtime, ApiSettings(webhooks=[_hook(base)], webhooks_kept_max=3))
        hooks: Webhooks = app.state.webhooks
        for seq in range(1, 6):
            hooks(OutEvent(seq, "call.ended", {"seq": seq}, 0.0))
        await asyncio.sleep(0)
        await hooks.drain(10)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as api:
            assert [k["event"]["data"]["seq"] for k in await _kept(api)] == [3, 4, 5]
        text = await _metrics(app)
        assert "marcador_webhook_kept_evicted_total 2.0" in text
        assert f'marcador_webhook_kept{{url="{base}"}} 3.0' in text
        await hooks.aclose()


async def test_events_pushed_out_of_a_full_queue_are_kept() -> None:
    async def sleep(s: float) -> None:
        await asyncio.sleep(0.05)

    store = InMemoryStore()
    hooks = Webhooks([WebhookSettings(url="http://127.0.0.1:9/hook", secret=SECRET, queue_size=2,  # type: ignore[arg-type]
                                      max_attempts=2, timeout_s=1)], sleep=sleep, store=store)
    for seq in range(5):
        hooks(OutEvent(seq, "call.ended", {"seq": seq}, 0.0))
    await hooks.drain(20)
    await hooks.aclose()
    rows = await store.failed_webhooks()
    assert sorted(json.loads(r.event)["data"]["seq"] for r in rows) == [0, 1, 2, 3, 4]  # none lost
    # 0, 1 and 2 pushed out before the sender ran; 3 and 4 tried and given up
    assert sorted(json.loads(r.event)["data"]["seq"] for r in rows if r.reason == "queue full") == [0, 1, 2]
    assert (hooks.senders[0].counters.dropped, hooks.senders[0].counters.failed) == (3, 2)


async def test_kept_events_are_for_integrators_supervisors_and_admins_and_can_be_deleted() -> None:
    tokens = [ApiToken(name=role, token=SecretStr(f"{role}-token-0123456789"), role=role)  # type: ignore[arg-type]
              for role in ("admin", "supervisor", "integrator", "viewer")]
    rx = Switch(status=404)
    async with http_server(rx.app()) as base, api_env() as env:
        app = create_app(env.runtime, ApiSettings(tokens=tokens, webhooks=[_hook(base)]))
        hooks: Webhooks = app.state.webhooks
        for seq in range(1, 5):
            hooks(OutEvent(seq, "call.ended" if seq < 4 else "agent.state", {}, 0.0))
        await asyncio.sleep(0)
        await hooks.drain(10)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as api:
            def auth(role: str) -> dict[str, str]:
                return {"Authorization": f"Bearer {role}-token-0123456789"}

            assert (await api.get("/api/v1/webhooks/failed")).status_code == 401
            for role in ("viewer",):  # the integrator whose endpoint missed them reconciles (below)
                assert (await api.get("/api/v1/webhooks/failed", headers=auth(role))).status_code == 403
                assert (await api.post("/api/v1/webhooks/failed/redeliver", json={"all": True},
                                       headers=auth(role))).status_code == 403
                assert (await api.delete("/api/v1/webhooks/failed", params={"all": "true"},
                                         headers=auth(role))).status_code == 403
            items = (await api.get("/api/v1/webhooks/failed", headers=auth("supervisor"))).json()["items"]
            assert len(items) == 4
            assert (await api.get("/api/v1/webhooks/failed", headers=auth("integrator"))).json()["items"] == items
            assert (await api.post("/api/v1/webhooks/failed/redeliver", json={},
                                   headers=auth("admin"))).status_code == 422
            assert (await api.delete("/api/v1/webhooks/failed", headers=auth("admin"))).status_code == 422
            r = await api.delete("/api/v1/webhooks/failed", params={"ids": f"{items[0]['id']},999"},
                                 headers=auth("supervisor"))
            assert r.json() == {"deleted": 1}
            r = await api.delete("/api/v1/webhooks/failed", params={"all": "true", "kind": "agent."},
                                 headers=auth("admin"))
            assert r.json() == {"deleted": 1}
            left = (await api.get("/api/v1/webhooks/failed", headers=auth("admin"))).json()["items"]
            assert [k["id"] for k in left] == [items[1]["id"], items[2]["id"]]
        await hooks.aclose()


class FlakyStore(InMemoryStore):
    """Refuses to keep webhook events while `down` (as a Redis that went away)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True
        self.refused = 0

    async def keep_failed_webhook(self, hook: str, kind: str, delivery: str, event: str, reason: str, at: float,
                                  cap: int) -> tuple[int, int]:
        if self.down:
            self.refused += 1
            raise ConnectionError("store down")
        return await super().keep_failed_webhook(hook, kind, delivery, event, reason, at, cap)


async def test_an_event_given_up_while_the_store_is_down_is_kept_once_it_answers() -> None:
    store = FlakyStore()
    rx = Switch(status=422)
    async with http_server(rx.app()) as base:
        hooks = Webhooks([_hook(base)], store=store)
        hooks(OutEvent(1, "call.ended", {"seq": 1}, 0.0))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if store.refused >= 2:
                break
        assert store.refused >= 2 and await store.failed_webhooks() == []  # tried, and tried again
        store.down = False
        await hooks.drain(10)
        (row,) = await store.failed_webhooks()
        assert (row.reason, json.loads(row.event)["data"]) == ("HTTP 422", {"seq": 1})
        # Down through shutdown: what could not be kept is counted, never silently gone.
        store.down = True
        hooks(OutEvent(2, "call.ended", {"seq": 2}, 0.0))
        await asyncio.sleep(0)
        await hooks.senders[0].drain(5)
        await hooks.aclose(keep_s=0.3)
    assert (hooks.keeper.kept, hooks.keeper.lost) == (1, 1)
    async with api_env() as env:
        assert "marcador_webhook_keep_lost_total 1.0" in render_metrics(env.runtime, webhooks=hooks)[0].decode()


class SlowDropStore(InMemoryStore):
    """Forgets kept events slowly, as a store across a slow network."""

    async def drop_failed_webhooks(self, ids: Sequence[int]) -> int:
        await asyncio.sleep(0.3)
        return await super().drop_failed_webhooks(ids)


async def test_a_redelivery_asked_after_delivery_but_before_the_store_forgot_it_is_not_sent_again() -> None:
    store = SlowDropStore()
    rx = Switch(status=404)
    async with http_server(rx.app()) as base:
        hooks = Webhooks([_hook(base)], store=store)
        hooks(OutEvent(1, "call.ended", {}, 0.0))
        await asyncio.sleep(0)
        await hooks.drain(10)
        rows = await store.failed_webhooks()
        rx.status = 200
        assert hooks.redeliver(rows)["queued"] == 1
        for _ in range(200):  # until the endpoint has it
            await asyncio.sleep(0.01)
            if rx.delivered():
                break
        assert await store.failed_webhooks() == rows  # not forgotten yet
        assert hooks.redeliver(await store.failed_webhooks())["already_queued"] == 1
        await hooks.drain(10)
        assert await store.failed_webhooks() == []
        await hooks.aclose()
    assert len(rx.delivered()) == 1


async def test_metrics_do_not_ask_a_store_known_down_for_the_kept_count() -> None:
    """While the runtime knows the store is down, /metrics gives the last count of kept events at once (it waited
    up to 2 s on the store at every scrape); once the store is back, it asks again."""
    async with api_env() as env:
        asked = 0
        counts = env.store.failed_webhook_counts

        async def counting() -> dict[str, int]:
            nonlocal asked
            asked += 1
            return await counts()

        env.store.failed_webhook_counts = counting  # type: ignore[method-assign]
        hook = WebhookSettings(url="http://127.0.0.1:9/hook", secret=SECRET)  # type: ignore[arg-type]
        app = create_app(env.runtime, ApiSettings(webhooks=[hook]))
        assert "marcador_webhook_kept" in await _metrics(app) and asked == 1
        env.runtime.store_up = False
        assert "marcador_webhook_kept" in await _metrics(app) and asked == 1
        env.runtime.store_up = True
        await _metrics(app)
        assert asked == 2
        await app.state.webhooks.aclose()
