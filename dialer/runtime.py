"""The asyncio shell around the sans-IO core: feeds it events and time, carries out its commands.

It reaches the PBX and the store only through the ports in `dialer.ports`; the CLI wires concrete parts.
All core access happens on the event loop's thread, from one task, so the core needs no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dialer.commands import Command, Emit, FetchLeads, RecordAttempt, ReleaseLead
from dialer.core import DialerCore
from dialer.events import CampaignControl, Event, LeadsAvailable
from dialer.logs import mask_number
from dialer.model import Attempt, CampaignSettings, Lead
from dialer.ports import TELEPHONY_COMMANDS, Store, Telephony

log = logging.getLogger("marcador.runtime")

Subscriber = Callable[[Emit], None]
_CALL_LOG_FIELDS = ("call_id", "campaign_id", "lead_id", "agent_id", "outcome", "code")


@dataclass(slots=True)
class RuntimeConfig:
    tick_interval_s: float = 0.2
    event_queue_size: int = 100_000
    maintain_interval_s: float = 20.0  # shared stores: heartbeat and lease renewal (a third of the lease TTL)


class Runtime:
    def __init__(
        self,
        core: DialerCore,
        store: Store,
        telephony: Telephony,
        config: RuntimeConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.core = core
        self.store = store
        self.telephony = telephony
        self.config = config or RuntimeConfig()
        self.clock = clock
        # (monotonic time queued, event): the queue is the bounded path from the PBX reader to the core.
        self._events: asyncio.Queue[tuple[float, Event]] = asyncio.Queue(self.config.event_queue_size)
        self._store_ops: asyncio.Queue[Command | None] = asyncio.Queue()
        self._subscribers: list[Subscriber] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._running = False
        self.events_handled = 0
        self.events_dropped = 0
        self.event_lag_s = 0.0  # queued → handled, of the last event
        self.event_lag_max_s = 0.0  # worst since start
        self.decision_seconds: list[float] = []  # recent core.tick durations (for the latency histogram)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        for settings in await self.store.list_campaigns():
            self.core.add_campaign(settings)
        self._running = True
        self._tasks = [
            asyncio.create_task(self._loop(), name="marcador-core"),
            asyncio.create_task(self._store_writer(), name="marcador-store"),
        ]
        if callable(getattr(self.store, "maintain", None)):
            self._tasks.append(asyncio.create_task(self._maintain(), name="marcador-store-maintenance"))
        await self.telephony.start(self.submit)

    async def stop(self) -> None:
        """Stop dialing, flush what the store still has to write, close the PBX link."""
        self._running = False
        for cid, camp in self.core.campaigns.items():
            if camp.status.value == "running":
                self._dispatch(self.core.handle(CampaignControl(cid, "pause"), self.clock()))
        in_flight = len(self.core.calls)
        if in_flight:
            log.info("stopping with calls in flight", extra={"fields": {"calls": in_flight}})
        await self._store_ops.put(None)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._tasks[1], timeout=5.0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.telephony.close()
        closer = getattr(self.store, "aclose", None)
        if callable(closer):
            await closer()

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        self._subscribers.append(fn)
        return lambda: self._subscribers.remove(fn)

    # ------------------------------------------------------------------ inputs

    def submit(self, event: Event) -> None:
        """Hand an event to the core (from the PBX bridge or the API). Never blocks."""
        try:
            self._events.put_nowait((time.monotonic(), event))
        except asyncio.QueueFull:
            self.events_dropped += 1
            log.error("core event queue full: event dropped", extra={"fields": {"event": type(event).__name__}})

    async def create_campaign(self, settings: CampaignSettings) -> None:
        await self.store.save_campaign(settings)
        self.core.add_campaign(settings)

    async def add_leads(self, campaign_id: str, leads: Sequence[Lead]) -> int:
        added = await self.store.add_leads(campaign_id, leads)
        camp = self.core.campaigns.get(campaign_id)
        if camp is not None and added:
            camp.exhausted = False  # new leads: ask the store again at the next tick
        return added

    def stats(self, campaign_id: str) -> dict[str, Any]:
        return self.core.stats(campaign_id, self.clock())

    async def attempts(self, campaign_id: str | None = None) -> list[Attempt]:
        return await self.store.attempts(campaign_id)

    @property
    def event_backlog(self) -> int:
        return self._events.qsize()

    # ------------------------------------------------------------------ the loop

    async def _loop(self) -> None:
        next_tick = self.clock()
        while True:
            now = self.clock()
            deadline = self.core.next_deadline()
            wake = min(next_tick, deadline) if deadline is not None else next_tick
            try:
                item = await asyncio.wait_for(self._events.get(), timeout=max(0.0, wake - now))
            except TimeoutError:
                item = None
            if item is not None:
                self._handle(*item)
                # Drain whatever else is queued before ticking: events first, they may free agents.
                while not self._events.empty():
                    self._handle(*self._events.get_nowait())
            now = self.clock()
            due = self.core.next_deadline()
            if now >= next_tick or (due is not None and now >= due):
                if self._running:
                    started = time.perf_counter()
                    self._dispatch(self.core.tick(now))
                    self._note_decision(time.perf_counter() - started)
                if now >= next_tick:
                    next_tick = now + self.config.tick_interval_s

    def _handle(self, queued_at: float, event: Event) -> None:
        self.events_handled += 1
        self.event_lag_s = lag = time.monotonic() - queued_at
        if lag > self.event_lag_max_s:
            self.event_lag_max_s = lag
        try:
            cmds = self.core.handle(event, self.clock())
        except Exception:  # a bad event must not stop the engine
            log.exception("core rejected event", extra={"fields": {"event": type(event).__name__}})
            return
        self._dispatch(cmds)

    def _note_decision(self, seconds: float) -> None:
        self.decision_seconds.append(seconds)
        if len(self.decision_seconds) > 4096:
            del self.decision_seconds[:2048]

    def _dispatch(self, cmds: list[Command]) -> None:
        for cmd in cmds:
            if isinstance(cmd, TELEPHONY_COMMANDS):
                self.telephony.execute(cmd)
            elif isinstance(cmd, RecordAttempt | ReleaseLead):
                self._store_ops.put_nowait(cmd)
            elif isinstance(cmd, FetchLeads):
                task = asyncio.create_task(self._fetch(cmd))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            elif isinstance(cmd, Emit):
                self._emit(cmd)

    async def _fetch(self, cmd: FetchLeads) -> None:
        try:
            leads = await self.store.lease_leads(cmd.campaign_id, cmd.count, self.clock())
        except Exception:
            log.exception("lease failed", extra={"fields": {"campaign_id": cmd.campaign_id}})
            leads = []
        self.submit(LeadsAvailable(cmd.campaign_id, tuple(leads)))

    async def _store_writer(self) -> None:
        """One writer keeps the store's view in the core's order (dial record before its final record)."""
        while True:
            op = await self._store_ops.get()
            if op is None:
                return
            while True:
                try:
                    if isinstance(op, RecordAttempt):
                        await self.store.record_attempt(op.attempt)
                    elif isinstance(op, ReleaseLead):
                        await self.store.release_lead(op.campaign_id, op.lead_id, op.outcome, op.final, self.clock())
                    break
                except Exception:  # the store is down: keep the write, retry; nothing accepted is dropped
                    log.exception("store write failed; retrying")
                    await asyncio.sleep(0.5)

    async def _maintain(self) -> None:
        """A shared store's housekeeping: this node's heartbeat (with its agents), lease renewal, and the
        return of dead nodes' leases to the queue."""
        maintain = self.store.maintain  # type: ignore[attr-defined]
        while True:
            agents = [a.agent_id for a in self.core.agents.all() if a.status.value != "logged_out"]
            try:
                returned = await maintain(now=self.clock(), agents=agents)
                if returned:
                    log.info("leases of dead nodes returned", extra={"fields": {"leads": len(returned)}})
            except Exception:  # the store is down: dialing pauses on its own (leases fail); keep trying
                log.exception("store maintenance failed")
            await asyncio.sleep(self.config.maintain_interval_s)

    def _emit(self, cmd: Emit) -> None:
        if cmd.kind.startswith("call.") and log.isEnabledFor(logging.INFO):
            # One line per call lifecycle step; the number is masked, never logged whole.
            d = cmd.data
            fields = {k: d[k] for k in _CALL_LOG_FIELDS if d.get(k) is not None}
            if d.get("number"):
                fields["number"] = mask_number(str(d["number"]))
            log.info(cmd.kind.replace(".", " "), extra={"fields": fields})
        for fn in list(self._subscribers):
            try:
                fn(cmd)
            except Exception:
                log.exception("event subscriber failed")
