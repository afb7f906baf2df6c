"""Webhooks: events POSTed as JSON to integrators' endpoints, signed, retried with exponential back-off.

Body: `{"type", "data", "id", "ts"}`. Headers: `X-Marcador-Signature: sha256=<hex HMAC-SHA256 of the raw body
with the webhook's secret>`, `X-Marcador-Event: <type>`, `X-Marcador-Delivery: <id>` (the same on every retry,
so a receiver can drop a repeat). One sender per endpoint delivers in order; an event that keeps failing (5xx,
408, 425, 429, a timeout, a connection error) holds the ones behind it until it succeeds or is given up after
`max_attempts`; a 429's Retry-After is waited, within `backoff_max_s`. Any other 4xx is the endpoint refusing
that event, and a 3xx sends it elsewhere (redirects are not followed), which a retry will not change: it is given
up at once, and the next event goes out. Each sender's queue is bounded: past `queue_size` the oldest event is
dropped (counted). At shutdown queued events get `DRAIN_S` to go out; what is left then is counted as dropped.

Nothing is lost: an event given up (`failed`), pushed out of a full queue or left at shutdown (`dropped`) is kept
in the store (`Store.keep_failed_webhook`: every node sees it, a restart loses none), up to `api.webhooks_kept_max`
(the oldest go first, counted), listed and redelivered through the API. A redelivered event goes back on its
sender's queue with its body and delivery id unchanged (signed again with the current secret): delivered, it
leaves the store; given up again, its entry is kept (one more try), never a second one. The store is written by
one keeper task, in order, retried while the store is down, never on the runtime's loop turn. Until an event is
delivered or kept it is in this node's outbox in the store (`api.webhook_outbox`): a node killed outright leaves it
there, and it is kept and redelivered by the node's next run or another node.

Secrets and payloads are never logged; URLs are logged as their origin alone (scheme, host, port): a path or a
query string may carry a credential.
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
from typing import Literal
from urllib.parse import urlsplit

import httpx

from api.events import OutEvent, parse_types
from api.webhook_outbox import Outbox, StoreRetry
from config.settings import WebhookSettings
from dialer.memory_store import InMemoryStore
from dialer.ports import FailedWebhook, Store, kind_matches

log = logging.getLogger("marcador.api.webhooks")

SIGNATURE_HEADER = "X-Marcador-Signature"
EVENT_HEADER = "X-Marcador-Event"
DELIVERY_HEADER = "X-Marcador-Delivery"
# At shutdown queued events get this long to go out: the last calls' outcomes are sent, yet a dead endpoint
# cannot hold a stopping node (it fits docker's 45 s grace after the engine's 30 s drain).
DRAIN_S = 5.0
# Then what was given up or left gets this long to be written to the store (a store down at shutdown: counted lost).
KEEP_S = 5.0
KEPT_MAX = 10_000  # api.webhooks_kept_max's default


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


@dataclass(frozen=True, slots=True)
class Fresh:
    """An event queued on its sender, in its outbox until delivered or kept."""

    kind: str
    delivery: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Redelivery:
    """A kept event queued again on its sender: the body and delivery id it was first sent with."""

    kept_id: int
    kind: str
    delivery: str
    body: bytes


Item = Fresh | Redelivery


@dataclass(slots=True)
class WebhookCounters:
    sent: int = 0  # events delivered (2xx)
    failed: int = 0  # events given up: after max_attempts, or at once when the endpoint refused them (a 4xx)
    retried: int = 0  # delivery attempts after a first failure
    dropped: int = 0  # events lost to a full queue, or left undelivered at shutdown


class WebhookSender:
    def __init__(self, settings: WebhookSettings, client: httpx.AsyncClient, instance: str,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 keeper: Keeper | None = None, outbox: Outbox | None = None) -> None:
        self.settings = settings
        self.url = settings.url
        self.label = _safe_url(settings.url)
        self.prefixes = parse_types(",".join(settings.events))
        self._secret = settings.secret.get_secret_value().encode()
        self._client = client
        self._instance = instance
        self._sleep = sleep
        self._queue: deque[Item] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._in_flight = False
        self._current: Item | None = None
        self._closed = False
        self._keeper = keeper
        self._outbox = outbox
        self._redelivering: set[int] = set()  # kept ids queued or in flight here: a second redelivery skips them
        self.counters = WebhookCounters()

    @property
    def backlog(self) -> int:
        return len(self._queue)

    def offer(self, ev: OutEvent) -> None:
        """Called on the runtime's loop: never blocks."""
        if not kind_matches(ev.kind, self.prefixes):
            return
        delivery = f"{self._instance}-{ev.seq}"
        item = Fresh(ev.kind, delivery, self.body(ev, delivery))
        if self._closed:
            self.counters.dropped += 1
            self._give_up(item, "shutdown")
            return
        if self._outbox is not None:
            self._outbox.put(self.label, item.kind, item.delivery, item.body)
        if len(self._queue) >= self.settings.queue_size:
            self._give_up(self._queue.popleft(), "queue full")
            self.counters.dropped += 1
        self._push(item)

    def _push(self, item: Item) -> None:
        self._queue.append(item)
        if self._task is None:  # started lazily: the app may be built before the loop runs
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"webhook {self.label}")
        self._wake.set()

    def redeliver(self, row: FailedWebhook) -> Literal["queued", "already_queued", "queue_full", "closed"]:
        """Queue a kept event again (after the events waiting). A full queue takes none: it stays kept."""
        if self._closed:
            return "closed"
        if row.id in self._redelivering:
            return "already_queued"
        if len(self._queue) >= self.settings.queue_size:
            return "queue_full"
        self._redelivering.add(row.id)
        self._push(Redelivery(row.id, row.kind, row.delivery, row.event.encode()))
        return "queued"

    def body(self, ev: OutEvent, delivery: str | None = None) -> bytes:
        doc = {"type": ev.kind, "data": ev.data, "id": delivery or f"{self._instance}-{ev.seq}", "ts": ev.ts}
        return json.dumps(doc, separators=(",", ":"), default=str).encode()

    def _out_done(self, item: Item) -> Callable[[], None]:
        """What forgets a fresh event's outbox entry (once it is delivered or kept)."""
        outbox, label = self._outbox, self.label
        if outbox is None or isinstance(item, Redelivery):
            return lambda: None
        return lambda: outbox.done(label, item.delivery)

    def _give_up(self, item: Item, reason: str) -> None:
        """Hand an event not delivered to the keeper (the store), with why. Never blocks."""
        if isinstance(item, Redelivery):
            self._redelivering.discard(item.kept_id)
        if self._keeper is None:
            return
        # Its outbox entry goes once it is kept: a node killed in between leaves it in one or both, never neither.
        self._keeper.keep(self.label, item.kind, item.delivery, item.body, reason, self._out_done(item))

    def _settled(self, item: Item, reason: str | None) -> None:
        """An item's delivery is over: delivered (None), or given up for `reason`."""
        if reason is not None:
            self._give_up(item, reason)
        elif isinstance(item, Fresh):
            self._out_done(item)()
        else:
            # Still "on its way" until the store has forgotten it: a redelivery asked meanwhile must not send it again.
            if self._keeper is not None:
                self._keeper.drop(item.kept_id, lambda: self._redelivering.discard(item.kept_id))
            else:
                self._redelivering.discard(item.kept_id)

    async def _run(self) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            item = self._queue.popleft()
            self._in_flight = True
            self._current = item
            reason: str | None = "crashed"
            try:
                reason = await self._deliver(item)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one event kill the sender
                log.exception("webhook delivery crashed", extra={"fields": {"url": self.label, "kind": item.kind}})
            finally:
                self._in_flight = False
            self._current = None
            self._settled(item, reason)

    async def _deliver(self, item: Item) -> str | None:
        """Deliver one event, with retries: None once delivered, else why it was given up."""
        s = self.settings
        kind, delivery, body = item.kind, item.delivery, item.body
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self._secret, body),
            EVENT_HEADER: kind,
            DELIVERY_HEADER: delivery,
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
                    return None
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
                    log.warning(msg + "; kept for redelivery", extra={"fields": {
                        "url": self.label, "kind": kind, "status": r.status_code, "attempt": attempt}})
                    return f"HTTP {r.status_code}"
                if r.status_code in (429, 503):  # the two answers HTTP gives a Retry-After (RFC 9110 10.2.3)
                    asked = retry_after_s(r.headers.get("retry-after")) or 0.0
            except httpx.HTTPError as exc:
                why = type(exc).__name__
            log.info("webhook attempt failed", extra={"fields": {"url": self.label, "kind": kind,
                                                                 "attempt": attempt, "why": why}})
        self.counters.failed += 1
        log.warning("webhook event given up, kept for redelivery", extra={"fields": {
            "url": self.label, "kind": kind, "attempts": s.max_attempts, "why": why}})
        return f"{why} after {s.max_attempts} tries"

    async def drain(self, timeout_s: float) -> None:
        """Wait until the queue is empty (tests, shutdown)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while (self._queue or self._in_flight) and loop.time() < end:
            await asyncio.sleep(0.01)

    async def aclose(self, drain_s: float = DRAIN_S) -> None:
        await self.drain(drain_s)
        self._closed = True  # a late offer must not start a sender no one stops
        # The one in flight is cut: its receiver may not have it. Kept with the rest (a redelivered one is kept
        # already: it stays as it is).
        left = ([self._current] if self._in_flight and self._current is not None else []) + list(self._queue)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._queue.clear()
        self._current = None
        if left:
            self.counters.dropped += len(left)
            for item in left:
                if not isinstance(item, Redelivery):
                    self._give_up(item, "shutdown")
            self._redelivering.clear()
            log.warning("webhook events undelivered at shutdown, kept for redelivery",
                        extra={"fields": {"url": self.label, "events": len(left)}})


@dataclass(frozen=True, slots=True)
class _Drop:
    kept_id: int
    done: Callable[[], None]  # called once the store has forgotten it


@dataclass(frozen=True, slots=True)
class _Keep:
    hook: str
    kind: str
    delivery: str
    event: str
    reason: str
    at: float
    done: Callable[[], None]  # called once it is kept


class Keeper:
    """Writes what the senders give up to the store, and forgets what a redelivery delivered: one task, in order
    (a redelivery given up again, then delivered, ends forgotten), retried while the store does not answer. Its own
    backlog is bounded by the cap too: past it the oldest is lost (counted, logged), the one way an event can be."""

    def __init__(self, store: Store, cap: int, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.cap = cap
        self._clock = clock
        self._ops: deque[_Keep | _Drop] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._busy = False
        self._closed = False
        self.kept = 0  # events written to the store
        self.evicted = 0  # kept events dropped from the store for the bound (the oldest), by this node
        self.lost = 0  # events that could not be kept (the store unreachable until shutdown, or this backlog full)
        self.counts: dict[str, int] = {}  # kept events by hook, as the store last said (for /metrics)

    def keep(self, hook: str, kind: str, delivery: str, body: bytes, reason: str,
             done: Callable[[], None] = lambda: None) -> None:
        self._add(_Keep(hook, kind, delivery, body.decode(), reason, self._clock(), done))

    def drop(self, kept_id: int, done: Callable[[], None] = lambda: None) -> None:
        self._add(_Drop(kept_id, done))

    def _add(self, op: _Keep | _Drop) -> None:
        if self._closed:  # after shutdown: nothing writes any more
            if isinstance(op, _Keep):
                self.lost += 1
                log.error("webhook event lost: offered after shutdown", extra={"fields": {"url": op.hook,
                                                                                        "kind": op.kind}})
            return
        if len(self._ops) >= max(self.cap, 1):
            at = 1 if self._busy and len(self._ops) > 1 else 0  # never the one being written
            gone = self._ops[at]
            del self._ops[at]
            if isinstance(gone, _Keep):
                self.lost += 1
                log.error("webhook event lost: the store has not answered and the events to keep are over the cap",
                          extra={"fields": {"url": gone.hook, "kind": gone.kind}})
            else:  # delivered, left in the store: a later redelivery may send it again (same delivery id)
                gone.done()
        self._ops.append(op)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="webhook keeper")
        self._wake.set()

    @property
    def backlog(self) -> int:
        return len(self._ops) + self._busy

    async def _run(self) -> None:
        retry = StoreRetry()
        while True:
            while not self._ops:
                self._wake.clear()
                await self._wake.wait()
            op = self._ops[0]
            self._busy = True
            failed: Exception | None = None
            try:
                if isinstance(op, _Keep):
                    _, dropped = await self.store.keep_failed_webhook(op.hook, op.kind, op.delivery, op.event,
                                                                      op.reason, op.at, self.cap)
                    self.kept += 1
                    op.done()
                    if dropped:
                        self.evicted += dropped
                        log.warning("kept webhook events over the cap: the oldest dropped",
                                    extra={"fields": {"dropped": dropped, "cap": self.cap}})
                else:
                    await self.store.drop_failed_webhooks([op.kept_id])
                    op.done()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is down: wait and try the same write again
                failed = exc
            finally:
                self._busy = False
            if failed is not None:
                await retry.after(failed, "webhook events kept", len(self._ops))
                continue
            retry.reset()
            if self._ops and self._ops[0] is op:
                self._ops.popleft()

    async def drain(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while self.backlog and loop.time() < end:
            await asyncio.sleep(0.01)

    async def refresh_counts(self) -> dict[str, int]:
        self.counts = await self.store.failed_webhook_counts()
        return self.counts

    async def aclose(self, timeout_s: float = KEEP_S) -> None:
        await self.drain(timeout_s)
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        unkept = sum(isinstance(op, _Keep) for op in self._ops)
        self._ops.clear()
        if unkept:
            self.lost += unkept
            log.error("webhook events lost at shutdown: the store did not answer", extra={"fields": {
                "events": unkept}})


class Webhooks:
    """Every configured endpoint's sender, fed by the event hub; what they give up goes to the store."""

    def __init__(self, settings: Sequence[WebhookSettings], client: httpx.AsyncClient | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, *, store: Store | None = None,
                 kept_max: int = KEPT_MAX, clock: Callable[[], float] = time.time) -> None:
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(follow_redirects=False)
        instance = uuid.uuid4().hex[:12]  # delivery ids stay unique across restarts of this node
        self.keeper = Keeper(store if store is not None else InMemoryStore(), kept_max, clock)
        self._clock = clock
        # No hook, no outbox: and a node without hooks leaves a gone node's events to one that can send them.
        self.outbox = Outbox(self.keeper.store, kept_max, clock, self._taken) if settings else None
        self.senders = [WebhookSender(w, self._client, instance, sleep, self.keeper, self.outbox) for w in settings]
        self._claims: asyncio.Task[None] | None = None
        self._started = self._closed = False
        self.taken_over = 0  # events of gone nodes (or an earlier run of this one) this node took to redeliver
        # Hooks told apart only by what the label leaves out (a query string) would share one metrics series and
        # one name in the logs: the 2nd, 3rd... are suffixed with their rank (a label never has a fragment).
        seen: dict[str, int] = {}
        for sender in self.senders:
            rank = seen[sender.label] = seen.get(sender.label, 0) + 1
            if rank > 1:
                sender.label += f"#{rank}"

    @property
    def store(self) -> Store:
        return self.keeper.store

    def start(self) -> None:
        """Start the outbox (it first takes what an earlier run of this node left) and the watch for gone nodes'
        outboxes. Idempotent; also done by the first event."""
        if self.outbox is None or self._started or self._closed:
            return
        self._started = True
        self.outbox.start()
        ttl = getattr(self.store, "lease_ttl_s", None)
        if isinstance(ttl, int | float) and ttl > 0:  # a shared store: other nodes may go
            self._claims = asyncio.get_running_loop().create_task(self._claim_gone(float(ttl)),
                                                                  name="webhook outbox claims")

    def __call__(self, ev: OutEvent) -> None:
        if not self._started:
            self.start()
        for sender in self.senders:
            sender.offer(ev)

    def _taken(self, node: str, rows: Sequence[FailedWebhook]) -> None:
        """Kept events taken from an outbox (`node`, or "" for this node's earlier run): redelivered here."""
        self.taken_over += len(rows)
        counts = self.redeliver(rows)
        log.warning("webhook events left unsent by a node gone: kept and redelivered here", extra={"fields": {
            "node": node or "this node, before its restart", "events": len(rows), **counts}})

    async def _claim_gone(self, ttl: float) -> None:
        """Every TTL/3: the outboxes of nodes not seen within the TTL become kept events, redelivered here. Only
        once the store has answered this node for a whole TTL: after an outage the live nodes' heartbeats are
        fresh again by then, and a live node's outbox is left alone."""
        loop = asyncio.get_running_loop()
        answering_since: float | None = None
        while self._claims is not None:  # as well as cancelled: a cancel inside a Redis command may be lost there
            try:
                gone = await self.store.outbox_orphans(self._clock())
                if answering_since is None:
                    answering_since = loop.time()
                for node in gone if loop.time() - answering_since >= ttl else ():
                    rows, dropped = await self.store.outbox_claim(node, "node lost", self._clock(),
                                                                  self.keeper.cap)
                    if rows or dropped:
                        self._taken(node, rows)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                answering_since = None
                log.warning("gone nodes' webhook outboxes not checked (store error)",
                            extra={"fields": {"why": type(exc).__name__}})
            await asyncio.sleep(min(10.0, ttl / 3))

    def redeliver(self, rows: Sequence[FailedWebhook]) -> dict[str, int]:
        """Queue kept events again on their senders (by hook label). Counts by result: queued, already_queued
        (on its way from an earlier redelivery), queue_full (left kept: try again later), no_webhook (no sender of
        that label here: its hook was removed or renamed)."""
        by_label = {s.label: s for s in self.senders}
        out = {"queued": 0, "already_queued": 0, "queue_full": 0, "no_webhook": 0}
        for row in rows:
            sender = by_label.get(row.hook)
            result = "no_webhook" if sender is None else sender.redeliver(row)
            out["no_webhook" if result == "closed" else result] += 1
        return out

    async def drain(self, timeout_s: float) -> None:
        """Wait until every queue is delivered (or given up) and the store written (tests)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        for sender in self.senders:
            await sender.drain(max(0.0, end - loop.time()))
        await self.keeper.drain(max(0.0, end - loop.time()))
        if self.outbox is not None:
            await self.outbox.drain(max(0.0, end - loop.time()))

    async def aclose(self, drain_s: float = DRAIN_S, keep_s: float = KEEP_S) -> None:
        """Deliver what is queued (all endpoints at once, up to `drain_s`), then stop the senders, then keep what
        was left in the store (up to `keep_s`)."""
        self._closed = True
        if self._claims is not None:
            claims, self._claims = self._claims, None
            claims.cancel()
            await asyncio.wait([claims], timeout=1.0)
        await asyncio.gather(*(sender.aclose(drain_s) for sender in self.senders))
        loop = asyncio.get_running_loop()
        end = loop.time() + keep_s
        await self.keeper.aclose(keep_s)
        if self.outbox is not None:  # what was delivered or kept leaves it
            await self.outbox.aclose(max(0.5, end - loop.time()))
        if self._own_client:
            await self._client.aclose()
