"""Events out: the core's `Emit` commands numbered and fanned out to server-sent-event clients and webhooks.

The hub is called on the runtime's loop, inside its dispatch: it must never block nor raise. Each client has a
bounded queue; a slow client loses its oldest events (counted), the runtime never waits for it. Event payloads
keep phone numbers (integrators need them) and are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from dialer.commands import Emit
from dialer.ports import kind_matches

log = logging.getLogger("marcador.api.events")


@dataclass(frozen=True, slots=True)
class OutEvent:
    seq: int
    kind: str
    data: dict[str, Any]
    ts: float

    def json(self) -> str:
        return json.dumps(self.data, separators=(",", ":"), default=str)


def parse_types(raw: str | None) -> tuple[str, ...]:
    """`call.,agent.` → prefixes; empty or `*` → everything."""
    if not raw:
        return ()
    parts = tuple(p.strip() for p in raw.split(",") if p.strip())
    return () if "*" in parts else tuple(p.rstrip("*") for p in parts)


GAP = "stream.gap"  # sent whatever the filter, without an id (a resume's Last-Event-ID stays where it was)


@dataclass(eq=False)
class Client:
    prefixes: tuple[str, ...]
    size: int
    queue: deque[OutEvent] = field(init=False)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: int = 0
    notices: list[dict[str, Any]] = field(default_factory=list)  # gaps to tell before the next events
    _lost: list[int] = field(default_factory=lambda: [0, 0, 0])  # dropped since last told: count, first, last id

    def __post_init__(self) -> None:
        self.queue = deque()

    def offer(self, ev: OutEvent) -> None:
        if not kind_matches(ev.kind, self.prefixes):
            return
        if len(self.queue) >= self.size:
            lost = self.queue.popleft()  # the client is slow: it loses the oldest, the runtime never waits
            self.dropped += 1
            self._lost = [self._lost[0] + 1, self._lost[1] or lost.seq, lost.seq]
        self.queue.append(ev)
        self.wake.set()

    def take_notices(self) -> list[dict[str, Any]]:
        out, self.notices = self.notices, []
        count, first, last = self._lost
        if count:
            out.append({"reason": "slow_client", "dropped": count, "from_id": first, "to_id": last})
            self._lost = [0, 0, 0]
        return out


class EventHub:
    """Numbers every event (the SSE `id`), keeps the last `replay` (0: none) for `Last-Event-ID` resumes."""

    def __init__(self, clock: Callable[[], float], *, replay: int = 2000, client_queue: int = 1000,
                 heartbeat_s: float = 15.0, first_id: int = 0) -> None:
        self.clock = clock
        self.first_id = first_id  # ids of this run are above it; an id at or below it is from an earlier run
        self.seq = first_id
        if replay < 0:
            raise ValueError(f"replay: {replay} events is negative; 0 keeps none for a resume")
        self.recent: deque[OutEvent] = deque(maxlen=replay)  # 0: none kept, a resume is told the gap
        self.client_queue = client_queue
        self.heartbeat_s = heartbeat_s
        self.clients: set[Client] = set()
        self.sinks: list[Callable[[OutEvent], None]] = []  # webhooks
        self.dropped = 0  # events lost by slow SSE clients (all clients, since start)

    def __call__(self, cmd: Emit) -> None:
        self.seq += 1
        ev = OutEvent(self.seq, cmd.kind, cmd.data, self.clock())
        self.recent.append(ev)
        for client in self.clients:
            before = client.dropped
            client.offer(ev)
            self.dropped += client.dropped - before
        for sink in self.sinks:
            try:
                sink(ev)
            except Exception:  # a sink must not break the runtime's dispatch
                log.exception("event sink failed", extra={"fields": {"kind": ev.kind}})

    def connect(self, prefixes: tuple[str, ...], last_id: int | str | None = None) -> Client:
        """A client; `last_id` is its Last-Event-ID (a string: one that is not an integer, never an id of ours)."""
        client = Client(prefixes, self.client_queue)
        if last_id is not None:
            oldest = self.recent[0].seq if self.recent else self.seq + 1
            # An earlier run's id, or none of ours at all: all this run kept is new to the client.
            if isinstance(last_id, str) or not self.first_id <= last_id <= self.seq:
                client.notices.append({"reason": "unknown_id", "last_event_id": last_id, "oldest_id": oldest})
                last_id = 0
            elif last_id < oldest - 1:
                client.notices.append({"reason": "replay_exceeded", "from_id": last_id + 1, "to_id": oldest - 1})
            # The whole replay, past the client's queue bound: it asked for it, and `replay` bounds it already.
            client.queue.extend(ev for ev in self.recent if ev.seq > last_id and kind_matches(ev.kind, prefixes))
        self.clients.add(client)
        return client

    def disconnect(self, client: Client) -> None:
        self.clients.discard(client)

    async def stream(self, client: Client, is_disconnected: Callable[[], Any]) -> AsyncIterator[str]:
        """SSE frames for one client: events, and a comment line every `heartbeat_s` to keep proxies open."""
        try:
            yield ": connected\n\n"
            while True:
                for notice in client.take_notices():
                    yield f"event: {GAP}\ndata: {json.dumps(notice, separators=(',', ':'))}\n\n"
                while client.queue:
                    ev = client.queue.popleft()
                    yield f"id: {ev.seq}\nevent: {ev.kind}\ndata: {ev.json()}\n\n"
                client.wake.clear()
                try:  # asyncio.timeout: wait_for (3.11) can swallow a cancellation that lands as the event is set
                    async with asyncio.timeout(self.heartbeat_s):
                        await client.wake.wait()
                except TimeoutError:
                    if await is_disconnected():
                        return
                    yield ": keep-alive\n\n"
        finally:
            self.disconnect(client)


def parse_last_id(raw: str | None) -> int | str | None:
    """The Last-Event-ID header: an int, or the header itself (cut to 64 characters) when it is not one, so the
    client is told its id is unknown rather than served as if it had sent none; None without one."""
    if raw is None or not raw.strip():
        return None
    with contextlib.suppress(ValueError):
        return int(raw.strip())
    return raw.strip()[:64]
