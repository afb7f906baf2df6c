"""Webhooks: events POSTed as JSON to integrators' endpoints, signed, retried with exponential back-off.

Body: `{"type", "data", "id", "ts"}`. Headers: `X-Marcador-Signature: sha256=<hex HMAC-SHA256 of the raw body
with the webhook's secret>`, `X-Marcador-Event: <type>`, `X-Marcador-Delivery: <id>` (the same on every retry,
so a receiver can drop a repeat). One sender per endpoint delivers in order; an event that keeps failing (5xx,
408, 425, 429, a timeout, a connection error) holds the ones behind it until it succeeds or is given up after
`max_attempts`; a 429's Retry-After is waited, within `backoff_max_s`. Any other 4xx is the endpoint refusing
that event, and a 3xx sends it elsewhere (redirects are not followed), which a retry will not change: it is given
up at once, and the next event goes out. Given-up events
are counted (`failed`) and logged, never kept. Each sender's queue is bounded: past
`queue_size` the oldest event is dropped (counted). At shutdown queued events get `DRAIN_S` to go out; what is
left then is counted as dropped and logged. Secrets and payloads are never logged; URLs are logged
as their origin alone (scheme, host, port): a path or a query string may carry a credential.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import email.utils
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from api.events import OutEvent, matches, parse_types
from config.settings import WebhookSettings

log = logging.getLogger("marcador.api.webhooks")

SIGNATURE_HEADER = "X-Marcador-Signature"
EVENT_HEADER = "X-Marcador-Event"
DELIVERY_HEADER = "X-Marcador-Delivery"
# At shutdown queued events get this long to go out: the last calls' outcomes are sent, yet a dead endpoint
# cannot hold a stopping node (it fits docker's 45 s grace after the engine's 30 s drain).
DRAIN_S = 5.0


def sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str) -> bool:
    """What a receiver does: recompute the HMAC of the raw body and compare in constant time."""
    return hmac.compare_digest(sign(secret, body), header)


def backoff_delays(base_s: float, max_s: float, attempts: int) -> list[float]:
    """Waits before retries 2..attempts: base, 2·base, 4·base, ... each capped at max_s."""
    return [min(max_s, base_s * 2**i) for i in range(max(0, attempts - 1))]


# 4xx answers a retry may cure: the request timed out, came too early, or came too fast. Any other 4xx refuses the
# event itself (a bad signature, a payload the receiver rejects, a path gone) and every retry would be refused too.
RETRYABLE_4XX = frozenset({408, 425, 429})


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header in seconds from now (delta-seconds or an HTTP date); None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _safe_url(url: str) -> str:
    """The endpoint's origin, for logs and the metrics label: the path is left out with the query and userinfo,
    as many receivers take their credential there (Slack, Discord, catch-hook services) and /metrics is open."""
    parts = urlsplit(url)
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}{':' + str(parts.port) if parts.port else ''}"


@dataclass(slots=True)
class WebhookCounters:
    sent: int = 0  # events delivered (2xx)
    failed: int = 0  # events given up: after max_attempts, or at once when the endpoint refused them (a 4xx)
    retried: int = 0  # delivery attempts after a first failure
    dropped: int = 0  # events lost to a full queue, or left undelivered at shutdown


class WebhookSender:
    def __init__(self, settings: WebhookSettings, client: httpx.AsyncClient, instance: str,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.settings = settings
        self.url = settings.url
        self.label = _safe_url(settings.url)
        self.prefixes = parse_types(",".join(settings.events))
        self._secret = settings.secret.get_secret_value().encode()
        self._client = client
        self._instance = instance
        self._sleep = sleep
        self._queue: deque[OutEvent] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._in_flight = False
        self._closed = False
        self.counters = WebhookCounters()

    @property
    def backlog(self) -> int:
        return len(self._queue)

    def offer(self, ev: OutEvent) -> None:
        """Called on the runtime's loop: never blocks."""
        if not matches(ev.kind, self.prefixes):
            return
        if self._closed:
            self.counters.dropped += 1
            return
        if len(self._queue) >= self.settings.queue_size:
            self._queue.popleft()
            self.counters.dropped += 1
        self._queue.append(ev)
        if self._task is None:  # started lazily: the app may be built before the loop runs
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"webhook {self.label}")
        self._wake.set()

    def body(self, ev: OutEvent) -> bytes:
        doc = {"type": ev.kind, "data": ev.data, "id": f"{self._instance}-{ev.seq}", "ts": ev.ts}
        return json.dumps(doc, separators=(",", ":"), default=str).encode()

    async def _run(self) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            ev = self._queue.popleft()
            self._in_flight = True
            try:
                await self._deliver(ev)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one event kill the sender
                log.exception("webhook delivery crashed", extra={"fields": {"url": self.label, "kind": ev.kind}})
            finally:
                self._in_flight = False

    async def _deliver(self, ev: OutEvent) -> bool:
        s = self.settings
        body = self.body(ev)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self._secret, body),
            EVENT_HEADER: ev.kind,
            DELIVERY_HEADER: f"{self._instance}-{ev.seq}",
        }
        delays = backoff_delays(s.backoff_base_s, s.backoff_max_s, s.max_attempts)
        asked = 0.0  # the wait a 429's or 503's Retry-After asked for
        for attempt in range(1, s.max_attempts + 1):
            if attempt > 1:
                self.counters.retried += 1
                await self._sleep(min(s.backoff_max_s, max(delays[attempt - 2], asked)))
            why: str
            asked = 0.0
            try:
                r = await self._client.post(self.url, content=body, headers=headers, timeout=s.timeout_s)
                if 200 <= r.status_code < 300:
                    self.counters.sent += 1
                    return True
                why = f"HTTP {r.status_code}"
                if 300 <= r.status_code < 400 or (400 <= r.status_code < 500
                                                  and r.status_code not in RETRYABLE_4XX):
                    # Refused, or sent elsewhere (a redirect is not followed: the event would go where nobody
                    # configured it): a retry would fare the same and hold every event behind it. Neither the
                    # answer's body nor its Location is logged (they may echo the payload or carry a credential).
                    self.counters.failed += 1
                    msg = ("webhook endpoint answered a redirect (not followed; set the webhook URL to its target), "
                           "event not retried" if r.status_code < 400 else
                           "webhook event rejected by the endpoint, not retried")
                    log.warning(msg, extra={"fields": {
                        "url": self.label, "kind": ev.kind, "status": r.status_code, "attempt": attempt}})
                    return False
                if r.status_code in (429, 503):  # the two answers HTTP gives a Retry-After (RFC 9110 10.2.3)
                    asked = retry_after_s(r.headers.get("retry-after")) or 0.0
            except httpx.HTTPError as exc:
                why = type(exc).__name__
            log.info("webhook attempt failed", extra={"fields": {"url": self.label, "kind": ev.kind,
                                                                 "attempt": attempt, "why": why}})
        self.counters.failed += 1
        log.warning("webhook event given up", extra={"fields": {"url": self.label, "kind": ev.kind,
                                                                "attempts": s.max_attempts}})
        return False

    async def drain(self, timeout_s: float) -> None:
        """Wait until the queue is empty (tests, shutdown)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while (self._queue or self._in_flight) and loop.time() < end:
            await asyncio.sleep(0.01)

    async def aclose(self, drain_s: float = DRAIN_S) -> None:
        await self.drain(drain_s)
        self._closed = True  # a late offer must not start a sender no one stops
        lost = len(self._queue) + self._in_flight  # the one in flight is cut: its receiver may not have it
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if lost:
            self.counters.dropped += lost
            self._queue.clear()
            log.warning("webhook events undelivered at shutdown", extra={"fields": {"url": self.label,
                                                                                    "events": lost}})


class Webhooks:
    """Every configured endpoint's sender, fed by the event hub."""

    def __init__(self, settings: Sequence[WebhookSettings], client: httpx.AsyncClient | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(follow_redirects=False)
        instance = uuid.uuid4().hex[:12]  # delivery ids stay unique across restarts of this node
        self.senders = [WebhookSender(w, self._client, instance, sleep) for w in settings]
        # Hooks told apart only by what the label leaves out (a query string) would share one metrics series and
        # one name in the logs: the 2nd, 3rd... are suffixed with their rank (a label never has a fragment).
        seen: dict[str, int] = {}
        for sender in self.senders:
            rank = seen[sender.label] = seen.get(sender.label, 0) + 1
            if rank > 1:
                sender.label += f"#{rank}"

    def __call__(self, ev: OutEvent) -> None:
        for sender in self.senders:
            sender.offer(ev)

    async def aclose(self, drain_s: float = DRAIN_S) -> None:
        """Deliver what is queued (all endpoints at once, up to `drain_s`), then stop the senders."""
        await asyncio.gather(*(sender.aclose(drain_s) for sender in self.senders))
        if self._own_client:
            await self._client.aclose()
