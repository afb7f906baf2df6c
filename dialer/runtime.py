"""The asyncio shell around the sans-IO core: feeds it events and time, carries out its commands.

It reaches the PBX and the store only through the ports in `dialer.ports`; the CLI wires concrete parts.
All core access happens on the event loop's thread, from one task, so the core needs no locks.

A shared store (Redis) can stop answering. Nothing accepted is dropped then: the store writes (attempt
records, upserted by call id, and lead releases) wait in one ordered in-memory queue and are retried until
they land; the core is told `StoreLink(False)` at the first failure the store's ping confirms (it dials
nothing while a dial could not be recorded) and `StoreLink(True)` once the store answers again *and* the
queue has been written out. A dial is written ahead: its Originate goes to the PBX only once the attempt
record has landed, so every call a PBX sees has its record, even if this node is killed the next instant;
a dial whose record cannot land promptly is not made (the call ends `lost`, the lead goes back).
Every `shared_abandon_interval_s`, and after a reconnect, the campaign-wide abandon counts go to the core
(`SharedAbandon`) so each node's pacer aims against the whole campaign.

Campaigns are campaign-wide: their definitions and the status asked of them (start, pause, stop, through any
node's API) live in the store, and every `campaign_sync_interval_s` each node reads the store's campaign version
and, when it moved, brings its core to the stored campaigns (`apply_campaign`, `CampaignControl`).

Callbacks asked for a lead this node's hopper does not hold are kept in the store (`ask_callback`): on the same
tick each node applies those asked for leads it holds, publishes the callbacks its hopper holds (for every node's
listing) and, once a callback kept for a lead waiting in the store falls due, leases that lead at once, whatever
the hopper's low-water mark.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from dialer.commands import (
    AskDisposition,
    CheckpointLead,
    Command,
    Emit,
    FetchLeads,
    Hangup,
    Originate,
    PersistDnc,
    RecordAttempt,
    ReleaseLead,
)
from dialer.compliance import DebtorHistory
from dialer.core import PREVIEW, CampaignState, CoreError, DialerCore
from dialer.events import (
    AdoptCall,
    AgentLogin,
    CallFailed,
    CampaignControl,
    DebtorHistorySeed,
    Disposition,
    DncSnapshot,
    Event,
    LeadsAvailable,
    LeadsTaken,
    LeaseLost,
    ScheduleCallback,
    SharedAbandon,
    StoredDisposition,
    StoreLink,
)
from dialer.logs import mask_number
from dialer.model import AgentStatus, Attempt, CampaignSettings, CampaignStatus, Lead, Outcome, StoredCode
from dialer.ports import TELEPHONY_COMMANDS, CampaignChange, Store, Telephony
from pacing.snapshot import PacingCaps

log = logging.getLogger("marcador.runtime")

# Agent states that can take a due callback soon: free, or busy and free again within a call.
_TAKES_CALLBACKS = frozenset({AgentStatus.READY, AgentStatus.PREVIEW, AgentStatus.CONNECTING, AgentStatus.ON_CALL,
                              AgentStatus.WRAPUP})
# A call another run handled and left before it ended takes a late disposition until this long after it connected
# plus `late_disposition_s` (an end nobody recorded: the longest conversation we allow for).
ADOPT_TALK_MAX_S = 4 * 3600.0
# How long a node whose agents are all busy leaves a due callback waiting in the store for a node with one free.
CALLBACK_BUSY_GRACE_S = 3.0

Subscriber = Callable[[Emit], None]


class NotAdopted(NamedTuple):
    """Why `Runtime.adopt_call` did not take a call: 'unknown' (no such connected call), 'disposed' (detail: its
    code), 'node' (detail: the live node whose current run handled it: the disposition goes there), 'forgotten'
    (this run's own, or another's, past its late window)."""

    reason: Literal["unknown", "disposed", "node", "forgotten"]
    detail: str = ""
_CALL_LOG_FIELDS = ("call_id", "campaign_id", "lead_id", "agent_id", "outcome", "code")
_UNSERVED = ("dialing", "ringing", "waiting")  # call states with no agent on the line (dialer.core.Call)
HANGUP_WAIT_S = 3.0
# Settings a campaign's pacer is built from: a change of one of them gives the campaign a new strategy.
PACING_FIELDS = ("strategy", "abandon_target", "max_lines", "max_lines_per_agent", "max_calls_per_s")
_CONTROL: dict[str, CampaignStatus] = {"start": CampaignStatus.RUNNING, "pause": CampaignStatus.PAUSED,
                                       "stop": CampaignStatus.STOPPED}


@dataclass(frozen=True, slots=True)
class _Dial:
    """A dial, written ahead: the record first, then the Originate."""

    record: RecordAttempt
    originate: Originate
    queued_at: float  # time.monotonic()


@dataclass(frozen=True, slots=True)
class _Landed:
    """A mark in the writes' queue: `done` is set when the writer reaches it, every write queued before it landed."""

    done: asyncio.Future[None]


StoreOp = RecordAttempt | ReleaseLead | AskDisposition | PersistDnc | CheckpointLead | _Dial | _Landed


@dataclass(slots=True)
class RuntimeConfig:
    tick_interval_s: float = 0.2
    event_queue_size: int = 100_000
    maintain_interval_s: float = 20.0  # shared stores: heartbeat and lease renewal (at most a third of the TTL)
    store_retry_s: float = 0.5  # while the store is down: how often a write or a ping is tried again
    shared_abandon_interval_s: float = 5.0  # campaign-wide abandon counts → the core's pacers
    dnc_sync_interval_s: float = 2.0  # shared stores: how often the DNC lists' version is checked (reloaded if moved)
    # shared stores: how often the debtors a node holds have their histories read again (another node's call to
    # one of them, in another campaign, counts against the caps here within this)
    history_sync_interval_s: float = 5.0
    # how often the store's campaign version is read (the campaigns reloaded if it moved): an edit or a start,
    # pause or stop made through another node reaches this one within this
    campaign_sync_interval_s: float = 1.0
    # the campaigns are reloaded this often even if the version did not move (a node that died between a write
    # and its version bump left the change unannounced)
    campaign_full_sync_s: float = 30.0
    abandon_window_s: float | None = 30 * 86400.0  # the window those counts cover (None: campaign to date)
    # A dial whose record has not landed this long after the decision is not made (keep it well under the lease
    # TTL: a lease that lapsed meanwhile may have gone to another node).
    dial_write_deadline_s: float = 5.0


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
        self._store_ops: asyncio.Queue[StoreOp | None] = asyncio.Queue()
        self._writing = 0  # the write the writer holds (taken from the queue, not yet landed)
        self._checkpoints = callable(getattr(store, "checkpoint_lead", None))
        self._subscribers: list[Subscriber] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._running = False
        self.store_up = True  # as last told to the core (StoreLink)
        self._store_watch: asyncio.Task[None] | None = None
        self.events_handled = 0
        self.events_dropped = 0
        self.event_lag_s = 0.0  # queued → handled, of the last event
        self.event_lag_max_s = 0.0  # worst since start
        self.decision_seconds: list[float] = []  # recent core.tick durations (for the latency histogram)
        self._dnc_version: int | None = None  # the shared DNC lists' version last loaded into the core
        self._dnc_campaigns: frozenset[str] = frozenset()  # the campaigns whose lists that load read
        self._logins_queued: Counter[str] = Counter()  # agent id → AgentLogin events submitted, not yet handled
        # Call id → code of a disposition submitted, not yet handled: a second one posted meanwhile is refused at
        # the API (the core's own check sees only what it has handled).
        self.dispositions_queued: dict[str, str] = {}
        # The stored campaigns as this node's core last took them: a reload applies only what differs. The lock
        # keeps this node's store write and core update of a campaign (API) and a reload from interleaving, so
        # an older definition read by a reload never lands after a newer one written here.
        self._campaign_lock = asyncio.Lock()
        self._campaign_version: int | None = None
        self._campaign_synced_at = float("-inf")  # time.monotonic() of the last full reload
        self._settings_applied: dict[str, CampaignSettings] = {}
        self._status_applied: dict[str, CampaignStatus] = {}
        self._halted = False  # draining or stopping: stored statuses no longer restart what was stopped here
        # Callbacks asked through the store for leads held here: applied to the core, not yet cleared in the store
        # ((campaign, lead) -> (at, agent)); and each campaign's callbacks as last published for the other nodes.
        self._callbacks_applied: dict[tuple[str, str], tuple[float, str | None]] = {}
        self._callbacks_published: dict[str, list[tuple[str, float, str | None]]] = {}
        # Likewise the codes other nodes took for leads held here (`Store.held_dispositions`), applied, not yet cleared.
        self._dispositions_applied: dict[tuple[str, str], tuple[StoredCode, ...]] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        # Each stored campaign with its stored status: a node joining (or restarting into) a running campaign
        # dials it for its agents; a paused or stopped one stays so.
        await self._sync_campaigns(force=True)
        self._running = True
        self._tasks = [
            asyncio.create_task(self._loop(), name="marcador-core"),
            asyncio.create_task(self._store_writer(), name="marcador-store"),
        ]
        if callable(getattr(self.store, "maintain", None)):
            self._tasks.append(asyncio.create_task(self._maintain(), name="marcador-store-maintenance"))
        if callable(getattr(self.store, "abandon_counts", None)):
            self._tasks.append(asyncio.create_task(self._abandon_sync(), name="marcador-shared-abandon"))
        if callable(getattr(self.store, "dnc_version", None)):
            # Before the PBX link: nothing is dialed before the stored lists (every node's, past restarts) are in.
            await self._sync_dnc()
            self._tasks.append(asyncio.create_task(self._dnc_sync(), name="marcador-dnc-sync"))
        if callable(getattr(self.store, "debtor_histories", None)):
            self._tasks.append(asyncio.create_task(self._history_sync(), name="marcador-history-sync"))
        self._tasks.append(asyncio.create_task(self._campaign_sync(), name="marcador-campaign-sync"))
        await self.telephony.start(self.submit)

    def _halt_dialing(self) -> None:
        """Running campaigns stop: buffered leads go back to the store untouched, calls up go on to their end.
        On this node only: the campaign's stored status is left as it is, for the other nodes."""
        self._halted = True
        for cid, camp in list(self.core.campaigns.items()):
            if camp.status.value == "running":
                try:
                    self._dispatch(self.core.handle(CampaignControl(cid, "stop"), self.clock()))
                except Exception:  # stopping must go on: at worst the buffered leads' leases expire
                    log.exception("campaign stop failed", extra={"fields": {"campaign_id": cid}})
                    with contextlib.suppress(Exception):
                        self._dispatch(self.core.handle(CampaignControl(cid, "pause"), self.clock()))

    async def drain(self, timeout_s: float = 30.0) -> bool:
        """Dial nothing more and wait (up to `timeout_s`) for the calls up to end and every store write to land,
        so a node leaves no attempt without its outcome. True if it all finished in time. Calls no agent has by
        then (still ringing, or answered and waiting) are hung up: left behind, one answered after we are gone
        would wait on hold with no one to take it. Calls with an agent go on."""
        self._halt_dialing()
        deadline = time.monotonic() + timeout_s
        while self.core.calls or self.pending_writes:
            if time.monotonic() >= deadline:
                unserved = [cid for cid, call in self.core.calls.items() if call.state in _UNSERVED]
                log.warning("drain timed out", extra={"fields": {"calls": len(self.core.calls),
                                                                 "hung_up": len(unserved),
                                                                 "writes": self.pending_writes}})
                for call_id in unserved:
                    self.telephony.execute(Hangup(call_id))
                await self._until_ended(unserved, HANGUP_WAIT_S)
                return False
            await asyncio.sleep(0.05)
        return True

    async def _until_ended(self, call_ids: list[str], timeout_s: float) -> None:
        """Give the PBX a moment to confirm hangups, so their outcomes are recorded before the link closes."""
        deadline = time.monotonic() + timeout_s
        while any(cid in self.core.calls for cid in call_ids) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """Stop dialing, flush what the store still has to write, close the PBX link. Calls still up are left to
        the PBX; with a shared store their leases expire and the attempts are reconciled (see RedisStore)."""
        self._running = False
        self._halt_dialing()
        self._dispatch(self.core.leave())
        in_flight = len(self.core.calls)
        if in_flight:
            log.info("stopping with calls in flight", extra={"fields": {"calls": in_flight}})
        await self._store_ops.put(None)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._tasks[1], timeout=5.0)
        if self._store_ops.qsize():
            log.error("stopped with store writes unwritten", extra={"fields": {"writes": self._store_ops.qsize()}})
        if self._store_watch is not None:
            self._store_watch.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            await _until_cancelled(task)
        await self.telephony.close()
        await self._unpublish_callbacks()
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
            return
        if isinstance(event, AgentLogin):
            self._logins_queued[event.agent_id] += 1
        elif isinstance(event, Disposition):
            self.dispositions_queued[event.call_id] = event.code

    async def create_campaign(self, settings: CampaignSettings) -> bool:
        """Create a campaign: False, and nothing changed, if its id is taken (another create may have just won)."""
        async with self._campaign_lock:
            if not await self.store.create_campaign(settings):
                return False
            self.apply_campaign(settings)
            return True

    def apply_campaign(self, settings: CampaignSettings) -> bool:
        """Stored settings → this node's core: a campaign new here is added; a known one takes the new settings,
        and a new pacing strategy if a pacing field changed. The one way settings reach the core (a PATCH through
        this node, a reload of what other nodes wrote, the node's start). False if there was nothing to change.
        A ValueError (the core refuses the settings) leaves the campaign as it was."""
        cid = settings.campaign_id
        known = self.core.campaigns.get(cid)
        previous = self._settings_applied.get(cid)
        if known is not None and previous == settings:
            return False
        if previous is None and known is not None:
            previous = known.settings  # added to the core by other means (the core's own copy, rule-set bound)
        self.core.add_campaign(settings)  # an existing campaign takes the new settings
        self._settings_applied[cid] = settings
        if known is not None and previous is not None and settings.strategy != PREVIEW and \
                any(getattr(previous, f) != getattr(settings, f) for f in PACING_FIELDS):
            caps = PacingCaps(max_lines=settings.max_lines, max_lines_per_agent=settings.max_lines_per_agent,
                              max_calls_per_s=settings.max_calls_per_s, abandon_target=settings.abandon_target)
            self.core.set_strategy(cid, self.core.config.strategy_factory(settings.strategy, caps))
        return True

    async def update_campaign(self, campaign_id: str,
                              change: CampaignChange) -> tuple[CampaignSettings, CampaignSettings] | None:
        """Edit a stored campaign atomically across nodes (`Store.update_campaign`, which also moves the campaign
        version), then apply it here at once; the other nodes take it at their next reload."""
        async with self._campaign_lock:
            done = await self.store.update_campaign(campaign_id, change)
            if done is not None:
                self.apply_campaign(done[1])
            return done

    async def campaign_status(self, campaign_id: str) -> CampaignStatus | None:
        """The campaign's status: the one asked of it campaign-wide (kept in the store), or this node's own if none
        was kept yet (a campaign started here by other means than `control_campaign`). None: no such campaign."""
        stored = await self.store.campaign_status(campaign_id)
        return None if stored is None else self._status_seen(campaign_id, stored)

    async def campaign_statuses(self) -> dict[str, CampaignStatus]:
        return {cid: self._status_seen(cid, st) for cid, st in (await self.store.campaign_statuses()).items()}

    def _status_seen(self, campaign_id: str, stored: CampaignStatus) -> CampaignStatus:
        camp = self.core.campaigns.get(campaign_id)
        if stored is CampaignStatus.CREATED and camp is not None:
            return camp.status
        return stored

    async def control_campaign(self, campaign_id: str, action: str) -> CampaignStatus | None:
        """Start, pause or stop a campaign on every node: the status is written to the store (and the campaign
        version moved), then this node's core takes it at once; the others at their next reload. Returns the
        campaign-wide status before; None if there is no such campaign. A pause of a stopped campaign does
        nothing (checked in the store as it writes: a stop through another node a moment before wins)."""
        status = _CONTROL[action]
        unless = CampaignStatus.STOPPED if status is CampaignStatus.PAUSED else None
        async with self._campaign_lock:
            before = await self.store.set_campaign_status(campaign_id, status, unless=unless)
            if before is None or before is unless:
                return before
            self._status_applied[campaign_id] = status
            self.submit(CampaignControl(campaign_id, action))  # type: ignore[arg-type]
            return before

    async def ask_callback(self, campaign_id: str, lead_id: str, at: float, agent_id: str | None) -> str:
        """A callback for a lead this node's hopper does not hold: kept in the store (`Store.ask_callback`), for
        whichever node holds or leases the lead. Returns the store's answer ("pending", "leased", or nothing kept:
        "done", "removed", "unknown")."""
        return await self.store.ask_callback(campaign_id, lead_id, at, agent_id)

    async def adopt_call(self, call_id: str) -> NotAdopted | None:
        """A connected call this run's core does not keep for a disposition, handled by another run of the engine:
        this node before a restart (a deploy during a conversation) or a node gone. Read from the store, it is
        handed to the core (`AdoptCall`) so its disposition goes through here, late. None when adopted, else why
        not (`NotAdopted`)."""
        att = await self.store.attempt(call_id)
        if att is None or att.outcome is not Outcome.CONNECTED or att.agent_id is None:
            return NotAdopted("unknown")
        if att.disposition is not None:
            return NotAdopted("disposed", att.disposition)
        prefix = self.core.config.id_prefix
        if call_id.startswith(prefix + "-"):
            return NotAdopted("forgotten")
        nodes = getattr(self.store, "nodes", None)
        if callable(nodes):
            for node in await nodes(now=self.clock()):
                theirs = node.info.get("call_prefix") if isinstance(node.info, dict) else None
                if node.alive and isinstance(theirs, str) and theirs != prefix and call_id.startswith(theirs + "-"):
                    return NotAdopted("node", node.node_id)
        # The other run may have left before the call ended: a conversation counts for up to ADOPT_TALK_MAX_S.
        since = att.ended_at if att.ended_at is not None else (att.connected_at or att.dialed_at) + ADOPT_TALK_MAX_S
        if since < self.clock() - self.core.config.late_disposition_s:
            return NotAdopted("forgotten")
        self._dispatch(self.core.handle(AdoptCall(att), self.clock()))
        return None

    async def callbacks(self, campaign_id: str) -> list[tuple[str, float, str | None]]:
        """Every callback of the campaign known here, earliest first: this node's hopper's (and those waiting for a
        lead on its way here), the store's asked ones and those other nodes' hoppers hold. One lead once: this
        node's own view wins."""
        rows = {lid: (lid, at, agent) for lid, at, agent in await self.store.callbacks(campaign_id, self.clock())}
        camp = self.core.campaigns.get(campaign_id)
        if camp is not None:
            rows.update((row[0], row) for row in _hopper_callbacks(camp))
        return sorted(rows.values(), key=lambda r: (r[1], r[0]))

    async def add_leads(self, campaign_id: str, leads: Sequence[Lead]) -> int:
        added = await self.store.add_leads(campaign_id, leads)
        camp = self.core.campaigns.get(campaign_id)
        if camp is not None and added:
            camp.exhausted = False  # new leads: ask the store again at the next tick
        return added

    def stats(self, campaign_id: str) -> dict[str, Any]:
        return self.core.stats(campaign_id, self.clock())

    def agent_known(self, agent_id: str) -> bool:
        """The core has this agent (in any state), or will once a queued login of it is handled: a command sent
        right behind the login must not be refused for the lag of the event queue."""
        return self.core.agents.get(agent_id) is not None or agent_id in self._logins_queued

    async def attempts(self, campaign_id: str | None = None) -> list[Attempt]:
        return await self.store.attempts(campaign_id)

    async def attempts_page(self, campaign_id: str | None = None, *, after: tuple[float, str] | None = None,
                            since: float | None = None, until: float | None = None,
                            limit: int = 100) -> list[Attempt]:
        """One page of the stored attempts in (dialed_at, call_id) order (see `Store.attempts_page`)."""
        return await self.store.attempts_page(campaign_id, after=after, since=since, until=until, limit=limit)

    @property
    def event_backlog(self) -> int:
        return self._events.qsize()

    @property
    def pending_writes(self) -> int:
        """Store writes not yet acknowledged (they pile up here while the store is down): the queued ones and the
        one being written or retried, which the queue no longer counts."""
        return self._store_ops.qsize() + self._writing

    # ------------------------------------------------------------------ the loop

    async def _loop(self) -> None:
        next_tick = self.clock()
        while True:
            now = self.clock()
            deadline = self.core.next_deadline()
            wake = min(next_tick, deadline) if deadline is not None else next_tick
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that lands as the get
            # completes (an event arriving as stop() cancels this task), and the loop then ran on for ever.
            item = None
            try:
                async with asyncio.timeout(max(0.0, wake - now)):
                    item = await self._events.get()
            except TimeoutError:
                pass
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
        if isinstance(event, AgentLogin):
            self._logins_queued[event.agent_id] -= 1
            if self._logins_queued[event.agent_id] <= 0:
                del self._logins_queued[event.agent_id]
        self.event_lag_s = lag = time.monotonic() - queued_at
        if lag > self.event_lag_max_s:
            self.event_lag_max_s = lag
        try:
            cmds = self.core.handle(event, self.clock())
        except Exception:  # a bad event must not stop the engine
            log.exception("core rejected event", extra={"fields": {"event": type(event).__name__}})
            return
        finally:
            if isinstance(event, Disposition):  # handled: the core's state now answers for this call
                self.dispositions_queued.pop(event.call_id, None)
        self._dispatch(cmds)

    def _note_decision(self, seconds: float) -> None:
        self.decision_seconds.append(seconds)
        if len(self.decision_seconds) > 4096:
            del self.decision_seconds[:2048]

    def _dispatch(self, cmds: list[Command]) -> None:
        held: RecordAttempt | None = None  # a dial record waiting for its Originate (the core emits them in a row)
        for cmd in cmds:
            if held is not None:
                if isinstance(cmd, Originate) and cmd.call_id == held.attempt.call_id:
                    self._store_ops.put_nowait(_Dial(held, cmd, time.monotonic()))
                    held = None
                    continue
                self._store_ops.put_nowait(held)
                held = None
            if isinstance(cmd, RecordAttempt) and cmd.attempt.outcome is None:
                held = cmd
            elif isinstance(cmd, TELEPHONY_COMMANDS):
                self.telephony.execute(cmd)
            elif isinstance(cmd, RecordAttempt | ReleaseLead | AskDisposition | PersistDnc):
                self._store_ops.put_nowait(cmd)
            elif isinstance(cmd, CheckpointLead):
                if self._checkpoints:  # a store whose leases outlive this process (in memory, nothing to keep)
                    self._store_ops.put_nowait(cmd)
            elif isinstance(cmd, FetchLeads):
                task = asyncio.create_task(self._fetch(cmd))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            elif isinstance(cmd, Emit):
                self._emit(cmd)
        if held is not None:
            self._store_ops.put_nowait(held)

    async def _fetch(self, cmd: FetchLeads) -> None:
        states: dict[str, dict[str, Any]] = {}
        try:
            # With the hopper state a node handed each lead back with: its attempts, recycle time and callback.
            leads, states = await self.store.lease_leads_with_states(cmd.campaign_id, cmd.count, self.clock())
        except Exception:
            # A lease the store granted but whose reply was lost is never renewed: it returns after the TTL.
            log.warning("lease failed", extra={"fields": {"campaign_id": cmd.campaign_id}}, exc_info=True)
            await self._store_failed()
            leads = []
        leads = await self._seed_histories(cmd.campaign_id, leads, states)
        self.submit(LeadsAvailable(cmd.campaign_id, tuple(leads), states or None))

    async def _seed_histories(self, campaign_id: str, leads: list[Lead],
                              states: dict[str, dict[str, Any]] | None = None) -> list[Lead]:
        """Before leased leads reach the core, what every node recorded of those debtors: a lead that comes from
        a dead or stopped node keeps its attempt caps and cool-downs here."""
        read = getattr(self.store, "debtor_histories", None)
        if read is None or not leads:
            return leads
        try:
            histories = await read(campaign_id, [lead.lead_id for lead in leads])
        except Exception:
            # Without the history the gates could let a capped debtor through: keep the leads out this time. Each
            # with the state it was leased with: a callback merged in at the lease is kept, and its time.
            log.warning("debtor histories unreadable: leads handed back", exc_info=True)
            for lead in leads:
                state = (states or {}).get(lead.lead_id)
                wait = None if state is None else state.get("cb", state.get("t"))
                self._store_ops.put_nowait(ReleaseLead(campaign_id, lead.lead_id, Outcome.LOST, final=False,
                                                       state=state, eligible_at=wait))
            return []
        for lead_id, h in histories.items():
            self.submit(DebtorHistorySeed(campaign_id, lead_id, h.get("a", ()), h.get("c", ()), h.get("x", ()),
                                          h.get("w", ())))
        return leads

    async def _note_debtor(self, att: Attempt, dialed: bool) -> None:
        """The instants the compliance caps count, in the shared store (campaign-wide, across nodes)."""
        note = getattr(self.store, "debtor_note", None)
        camp = self.core.campaigns.get(att.campaign_id)
        if note is None or camp is None:
            return
        history = camp.gate.history
        keep, max_n = history.horizon_s, history.max_per_lead
        if dialed:
            await note(att.campaign_id, att.lead_id, "a", att.dialed_at, keep, max_n)
        elif att.outcome is not None and att.outcome.value == "connected" and att.connected_at is not None:
            code = camp.dispositions.get(att.disposition) if att.disposition else None
            # A wrong party's disposition: that conversation was not with the debtor (`w` takes it off the `c`s).
            kind = "w" if code is not None and code.wrong_party else "c"
            await note(att.campaign_id, att.lead_id, kind, att.connected_at, keep, max_n)
        elif att.outcome is not None and att.outcome.value == "abandoned":
            await note(att.campaign_id, att.lead_id, "x", att.answered_at or att.ended_at or att.dialed_at,
                       keep, max_n)

    async def _store_writer(self) -> None:
        """One writer keeps the store's view in the core's order (dial record before its final record). The queue
        is the outage buffer: a write that fails is retried, in order, until it lands; nothing is dropped."""
        while True:
            op = await self._store_ops.get()
            self._writing = 1
            try:
                if op is None:
                    return
                await self._write(op)
            finally:
                self._writing = 0
                self._store_ops.task_done()

    async def _dial(self, op: _Dial) -> None:
        """Write the dial record, then send the Originate. If the record cannot land before the deadline, the
        call is not made: it fails as `lost` (its final record is queued and kept like any other write) and
        the lead goes back to the queue."""
        call_id = op.originate.call_id
        waited = time.monotonic() - op.queued_at
        if self.store_up and waited <= self.config.dial_write_deadline_s:
            try:
                att = op.record.attempt
                now = self.clock()
                took = await self._did_take(att, now)
                if took is False:
                    log.info("caller ID at its cap across nodes: call not made",
                             extra={"fields": {"call_id": call_id}})
                    self.submit(CallFailed(call_id, Outcome.LOST))
                    return
                if not await self.store.record_dial(att):
                    # Its lease expired while this node could not renew it (a store outage longer than the lease
                    # TTL, a stall); another node may be dialing it now. Nothing is written for a call not made,
                    # and the DID's use goes back: shown to nobody, it must not eat into its caps.
                    log.warning("lease lost: call not made", extra={"fields": {"call_id": call_id,
                                                                               "campaign_id": att.campaign_id}})
                    if took:
                        await self.store.did_give_back(att.caller_id, now)  # type: ignore[attr-defined]
                    self.submit(LeaseLost(call_id))
                    return
                await self._note_debtor(att, dialed=True)
            except Exception:
                log.warning("dial record failed: call not made", extra={"fields": {"call_id": call_id}},
                            exc_info=True)
                # No ping first: every dial decided meanwhile would be given up as well. If the store does
                # answer, the watcher says so at once.
                self._store_down()
            else:
                self.telephony.execute(op.originate)
                return
        elif self.store_up:
            log.warning("dial record too late: call not made", extra={"fields": {"call_id": call_id,
                                                                                 "waited_s": round(waited, 3)}})
        self.submit(CallFailed(call_id, Outcome.LOST))

    async def _did_take(self, att: Attempt, now: float) -> bool | None:
        """A pool DID counts against its caps in the shared store, atomically across nodes (each node's pool
        only sees its own calls): True if one use was taken, False if its caps refuse it. None: nothing to count
        (a store without shared counters, in memory: one node; or the campaign's own caller ID)."""
        take = getattr(self.store, "did_take", None)
        camp = self.core.campaigns.get(att.campaign_id)
        if take is None or camp is None or att.caller_id_reason not in ("sticky", "local", "pool"):
            return None
        s = camp.settings
        return bool(await take(att.caller_id, now, s.did_hour_cap, s.did_day_cap))

    async def _write(self, op: StoreOp) -> None:
        if isinstance(op, _Dial):
            await self._dial(op)
            return
        if isinstance(op, _Landed):
            if not op.done.done():
                op.done.set_result(None)
            return
        counted_live = False
        counted_debtor = False
        failures = 0
        while True:
            try:
                if isinstance(op, RecordAttempt):
                    att = op.attempt
                    await self.store.record_attempt(att)  # an upsert by call id: safe to repeat
                    if att.outcome is not None and not counted_debtor:
                        await self._note_debtor(att, dialed=False)
                        counted_debtor = True
                    if att.outcome is not None and att.outcome.live and not counted_live:
                        recorder = getattr(self.store, "record_live", None)
                        if recorder is not None:
                            # One count per live answer in the campaign's shared abandon windows.
                            await recorder(att.campaign_id, att.answered_at or att.ended_at or self.clock(),
                                           abandoned=att.outcome.value == "abandoned")
                        counted_live = True
                elif isinstance(op, ReleaseLead):
                    # Repeating a release that landed is harmless: the lead is no longer leased, it is ignored.
                    await self._release(op)
                elif isinstance(op, AskDisposition):
                    await self._ask_disposition(op)
                elif isinstance(op, CheckpointLead):
                    # Refused (False) for a lease this node no longer holds: the holder's state is the one kept.
                    await self.store.checkpoint_lead(op.campaign_id, op.lead_id, op.state)  # type: ignore[attr-defined]
                elif isinstance(op, PersistDnc):
                    add = getattr(self.store, "dnc_add", None)  # a shared store; in memory the core is the list
                    if add is not None:
                        await add([op.number], op.campaign_id)
                return
            except Exception:
                failures += 1
                if failures == 1:
                    log.warning("store write failed; kept and retried", exc_info=True)
                await self._store_failed()
                await asyncio.sleep(self.config.store_retry_s)

    async def _writes_landed(self, timeout_s: float = 2.0) -> bool:
        """Every write queued until now has landed (checkpoints included); False if not within `timeout_s`."""
        if not self._checkpoints:
            return True  # nothing queued here outlives this process (in memory): nothing to wait for
        mark = _Landed(asyncio.get_running_loop().create_future())
        self._store_ops.put_nowait(mark)
        try:
            await asyncio.wait_for(asyncio.shield(mark.done), timeout_s)
        except TimeoutError:
            return False
        return True

    async def _release(self, op: ReleaseLead) -> None:
        """A lead handed back not final with its hopper state: the store keeps the state for the next node and
        holds the lead until its eligible time; any other release as it is."""
        if op.state is not None and not op.final and op.outcome is Outcome.LOST:
            await self.store.hand_back_lead(op.campaign_id, op.lead_id, op.state, op.eligible_at, self.clock())
        else:
            await self.store.release_lead(op.campaign_id, op.lead_id, op.outcome, op.final, self.clock())

    async def _ask_disposition(self, op: AskDisposition) -> None:
        """A disposition for a lead this node no longer holds: the store applies the code wherever the lead is, and
        keeps the callback it asked for. In the writes' queue, after the hand-back that took the lead away from here.
        What the store did goes out as `lead.disposition`. Safe to repeat: a code asked again is kept once."""
        result = callback = None
        if op.code is not None:
            result = await self.store.ask_disposition(op.campaign_id, op.lead_id, op.code)
        if op.callback_at is not None and result not in ("ended", "done", "removed", "unknown"):
            callback = await self.store.ask_callback(op.campaign_id, op.lead_id, op.callback_at, op.callback_agent)
            result = result or callback
        kept = callback in ("pending", "leased")
        fields = {"campaign_id": op.campaign_id, "lead_id": op.lead_id, "result": result,
                  "call_id": op.code.call_id if op.code is not None else None,
                  "callback_at": op.callback_at if kept else None}
        log.info("disposition asked of the store", extra={"fields": {k: v for k, v in fields.items() if v is not None}})
        self._emit(Emit("lead.disposition", fields))

    async def _store_failed(self) -> None:
        """A store call failed. If the store does not answer a ping either, it is down: dialing pauses
        (StoreLink(False)) and a watcher brings it back once the store answers and the kept writes are in."""
        if not self.store_up or await self.store.ping() or not self.store_up:
            return
        self._store_down()

    def _store_down(self) -> None:
        if not self.store_up:
            return
        self.store_up = False
        log.error("store unreachable: dialing paused", extra={"fields": {"writes_kept": self._store_ops.qsize()}})
        self.submit(StoreLink(False))
        self._store_watch = asyncio.create_task(self._watch_store(), name="marcador-store-watch")

    async def _watch_store(self) -> None:
        started = time.monotonic()
        while not await self.store.ping():
            await asyncio.sleep(self.config.store_retry_s)
        await self._store_ops.join()  # the writes kept while it was down land first (the writer retries them)
        for camp in self.core.campaigns.values():
            camp.exhausted = False  # the failed lease calls said "nothing left": ask again at once
        self.store_up = True
        self.submit(StoreLink(True))
        log.warning("store reachable again: dialing resumes",
                 extra={"fields": {"down_s": round(time.monotonic() - started, 3)}})
        await self._sync_abandon()

    def _maintain_interval(self) -> float:
        ttl = getattr(self.store, "lease_ttl_s", None)
        interval = self.config.maintain_interval_s
        return min(interval, float(ttl) / 3) if isinstance(ttl, int | float) and ttl > 0 else interval

    async def _maintain(self) -> None:
        """A shared store's housekeeping: this node's heartbeat (with its agents), lease renewal, and the
        return of dead nodes' leases (their in-flight attempts made `lost`, their leads held back a while)."""
        maintain = self.store.maintain  # type: ignore[attr-defined]
        while True:
            agents = [a.agent_id for a in self.core.agents.all() if a.status.value != "logged_out"]
            try:
                # The prefix of this run's call ids: a late disposition for a call of a run gone is taken anywhere.
                returned = await maintain(now=self.clock(), agents=agents,
                                          info={"call_prefix": self.core.config.id_prefix})
                if returned:
                    log.info("leases of dead nodes returned", extra={"fields": {"leads": len(returned)}})
            except Exception:
                log.warning("store maintenance failed", exc_info=True)
                await self._store_failed()
            await asyncio.sleep(self._maintain_interval())

    async def _dnc_sync(self) -> None:
        while True:
            await asyncio.sleep(self.config.dnc_sync_interval_s)
            if not self.store_up:
                self._dnc_version = None  # after an outage: reload whatever the version says
                continue
            try:
                await self._sync_dnc()
            except Exception:
                log.warning("DNC lists unreadable", exc_info=True)
                self._dnc_version = None
                await self._store_failed()

    async def _sync_dnc(self) -> None:
        """The shared store's DNC lists (global and each campaign's) → the core, when their version moved. An
        entry added on another node, or before a restart, is in force here within `dnc_sync_interval_s`."""
        version = await self.store.dnc_version()  # type: ignore[attr-defined]
        campaigns = frozenset(self.core.campaigns)
        if version == self._dnc_version and campaigns == self._dnc_campaigns:
            return  # a campaign new here (created on another node, or since) has its list read as well
        taken_at = self.clock()
        lists = await self.store.dnc_lists(sorted(campaigns))  # type: ignore[attr-defined]
        for cid, numbers in lists.items():
            self.submit(DncSnapshot(cid, frozenset(numbers), taken_at))
        self._dnc_version, self._dnc_campaigns = version, campaigns

    async def _campaign_sync(self) -> None:
        while True:
            await asyncio.sleep(self.config.campaign_sync_interval_s)
            if not self.store_up:
                self._campaign_version = None  # after an outage: reload whatever the version says
                continue
            try:
                full = time.monotonic() - self._campaign_synced_at >= self.config.campaign_full_sync_s
                await self._sync_campaigns(force=full)
            except Exception as exc:
                # Dialing goes on with the campaigns as they are here; the store's own failure handling decides.
                log.warning("campaigns unreadable", extra={"fields": {"error": type(exc).__name__}})
                self._campaign_version = None
                await self._store_failed()
                continue
            self._let_go_of_taken_leads()
            try:
                await self._sync_callbacks()
            except Exception as exc:
                log.warning("callbacks unreadable", extra={"fields": {"error": type(exc).__name__}})
                await self._store_failed()

    def _let_go_of_taken_leads(self) -> None:
        """Leads whose leases the store's last renewal found lost (`take_lost_leases`) leave the hopper now, not
        one refused dial at a time (`LeaseLost`), each costing the pacer a line."""
        take = getattr(self.store, "take_lost_leases", None)
        if not callable(take):
            return
        for cid, lead_ids in take().items():
            log.warning("leases lost unseen: leads let go", extra={"fields": {"campaign_id": cid,
                                                                              "leads": len(lead_ids)}})
            self.submit(LeadsTaken(cid, tuple(lead_ids)))

    async def _sync_callbacks(self) -> None:
        """Callbacks kept in the store ↔ this node, each campaign: those asked for leads held here go to the core
        (then are cleared in the store), the hopper's callbacks are published when they changed, and leads waiting
        in the store whose callback is due are leased now (the hopper's low-water mark would fetch them only when
        it ran low: a minute or more late)."""
        for cid, camp in list(self.core.campaigns.items()):
            now = self.clock()
            held = await self.store.held_callbacks(cid)
            for lead_id, (at, agent_id) in held.items():
                if self._callbacks_applied.get((cid, lead_id)) == (at, agent_id):
                    continue  # applied at an earlier pass whose clear did not land
                self._callbacks_applied[(cid, lead_id)] = (at, agent_id)
                try:
                    # Straight to the core, no await between this and the clear's reply being acted on: a
                    # callback is cleared in the store only once the core holds it.
                    self._dispatch(self.core.handle(ScheduleCallback(cid, lead_id, at, agent_id), now))
                except CoreError as exc:  # the lead ended here meanwhile (done, removed): no callback for it
                    log.warning("asked callback dropped", extra={"fields": {"campaign_id": cid, "lead_id": lead_id,
                                                                            "error": str(exc)[:200]}})
            taken = await self._take_dispositions(cid, camp)
            rows = _hopper_callbacks(camp)
            if rows != self._callbacks_published.get(cid, []):
                await self.store.publish_callbacks(cid, rows, now)
                self._callbacks_published[cid] = rows
            # Callbacks and codes are cleared once the core's checkpoints of those leads are in the store (a node
            # killed between the two would otherwise lose them: cleared here, not yet kept with the lease); else at
            # the next pass.
            if (held or taken) and await self._writes_landed():
                if held:
                    await self.store.clear_callbacks(cid, held)
                    for lead_id in held:
                        self._callbacks_applied.pop((cid, lead_id), None)
                if taken:
                    await self.store.clear_dispositions(cid, taken)
                    for lead_id in taken:
                        self._dispositions_applied.pop((cid, lead_id), None)
            if camp.status is not CampaignStatus.RUNNING or self._halted or not self.store_up:
                continue
            staffed = {a.status for a in self.core.agents.all() if a.serves(cid, camp.settings.skill)}
            if not staffed & _TAKES_CALLBACKS:
                continue  # nobody here to take the call (none logged in, or all paused): left to the others
            due = await self.store.next_callback_at(cid)
            # A node with an agent free takes it when due; one whose agents are all busy waits a little for
            # such a node, then takes it (its agents free up soon).
            wait = 0.0 if staffed & {AgentStatus.READY, AgentStatus.PREVIEW} else CALLBACK_BUSY_GRACE_S
            if due is None or due + wait > now:
                continue
            leads, states = await self.store.lease_due_callbacks(cid, self.core.config.hopper_batch, now)
            leads = await self._seed_histories(cid, leads, states)
            if leads:
                log.info("due callbacks leased", extra={"fields": {"campaign_id": cid, "leads": len(leads)}})
                self.submit(LeadsAvailable(cid, tuple(leads), states or None, fetched=False))

    async def _take_dispositions(self, cid: str, camp: CampaignState) -> dict[str, tuple[StoredCode, ...]]:
        """Codes another node took for leads held here (`Store.held_dispositions`) → the core; the caller clears
        what this returns in the store. A lead not in the hopper yet (its lease's reply still on its way to the core)
        is left for the next pass: the code stays kept for it."""
        held = await self.store.held_dispositions(cid)
        taken = {lid: codes for lid, codes in held.items() if camp.hopper.info(lid) is not None}
        if not taken:
            return taken
        now = self.clock()
        for lead_id, codes in taken.items():
            if self._dispositions_applied.get((cid, lead_id)) == codes:
                continue  # applied at an earlier pass whose clear did not land
            self._dispositions_applied[(cid, lead_id)] = codes
            for code in codes:
                try:
                    # Straight to the core, as callbacks: cleared in the store only once the core holds it.
                    self._dispatch(self.core.handle(StoredDisposition(cid, lead_id, code), now))
                except (CoreError, ValueError) as exc:
                    log.warning("kept disposition dropped", extra={"fields": {"campaign_id": cid, "lead_id": lead_id,
                                                                              "error": str(exc)[:200]}})
        return taken

    async def _unpublish_callbacks(self) -> None:
        """A stopping node's published callbacks go (its leads went back with them in their states): best effort,
        a node that cannot say so drops out of the listings once it stops being seen."""
        for cid, rows in self._callbacks_published.items():
            if rows:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.store.publish_callbacks(cid, [], self.clock()), 1.0)

    async def _sync_campaigns(self, *, force: bool = False) -> None:
        """The stored campaigns → this node's core, when the store's campaign version moved (or `force`): a
        campaign new here is added, changed settings are applied (`apply_campaign`), and a stored status this
        node has not acted on yet is submitted as `CampaignControl` where it changes what the core does."""
        async with self._campaign_lock:
            version = await self.store.campaign_version()  # before the reads: a change behind it is read below
            if version == self._campaign_version and not force:
                return
            stored = await self.store.list_campaigns()
            statuses = await self.store.campaign_statuses()
            for settings in stored:
                cid = settings.campaign_id
                try:
                    self.apply_campaign(settings)
                except ValueError as exc:  # a definition this node's core refuses (e.g. an older release)
                    log.error("stored campaign refused by the core", extra={"fields": {"campaign_id": cid,
                                                                                       "error": str(exc)[:200]}})
                    continue
                self._apply_status(cid, statuses.get(cid, CampaignStatus.CREATED))
            self._campaign_version = version
            if force:
                self._campaign_synced_at = time.monotonic()

    def _apply_status(self, campaign_id: str, status: CampaignStatus) -> None:
        """A stored status this node has not acted on → its core, when it would change what the core does. A
        paused campaign this node never ran is paused here too (it dials nothing either way; its stats say
        paused, not created); while the node drains or stops, its halt stands."""
        if self._halted or self._status_applied.get(campaign_id, CampaignStatus.CREATED) is status:
            return
        self._status_applied[campaign_id] = status
        local = self.core.campaigns[campaign_id].status
        action: str | None = None
        if status is CampaignStatus.RUNNING and local is not CampaignStatus.RUNNING:
            action = "start"
        elif status is CampaignStatus.PAUSED and local in (CampaignStatus.RUNNING, CampaignStatus.CREATED):
            action = "pause"
        elif status is CampaignStatus.STOPPED and local is not CampaignStatus.STOPPED:
            action = "stop"
        if action is not None:
            log.info("campaign status from the store", extra={"fields": {"campaign_id": campaign_id,
                                                                         "status": status.value}})
            self.submit(CampaignControl(campaign_id, action))  # type: ignore[arg-type]

    async def _history_sync(self) -> None:
        while True:
            await asyncio.sleep(self.config.history_sync_interval_s)
            if not self.store_up:
                continue
            try:
                await self._sync_histories()
            except Exception:
                log.warning("debtor histories unreadable", exc_info=True)
                await self._store_failed()

    async def _sync_histories(self) -> None:
        """The debtors this node holds and has yet to dial: what the shared store noted of them since they were
        leased (a call to the same debtor in another campaign, on another node) → the core's gates. Histories
        are read when a lead is leased too; a lead can wait here for minutes before its dial."""
        read = self.store.debtor_histories  # type: ignore[attr-defined]
        history, now = self.core.history, self.clock()
        for cid, camp in list(self.core.campaigns.items()):
            held = camp.hopper.waiting()
            for start in range(0, len(held), 1000):
                for lead_id, kinds in (await read(cid, held[start:start + 1000])).items():
                    if _news(history, lead_id, kinds, now):
                        self.submit(DebtorHistorySeed(cid, lead_id, kinds.get("a", ()), kinds.get("c", ()),
                                                      kinds.get("x", ()), kinds.get("w", ())))

    async def _abandon_sync(self) -> None:
        while True:
            await asyncio.sleep(self.config.shared_abandon_interval_s)
            if self.store_up:
                await self._sync_abandon()

    async def _sync_abandon(self) -> None:
        """Campaign-wide live answers and abandons (every node's) → each campaign's pacer."""
        counts = getattr(self.store, "abandon_counts", None)
        if counts is None:
            return
        for cid in list(self.core.campaigns):
            try:
                abandoned, live = await counts(cid, self.clock(), self.config.abandon_window_s)
            except Exception:
                log.warning("abandon counts unavailable", extra={"fields": {"campaign_id": cid}}, exc_info=True)
                await self._store_failed()
                return
            self.submit(SharedAbandon(cid, live=int(live), abandoned=int(abandoned)))

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


def _hopper_callbacks(camp: CampaignState) -> list[tuple[str, float, str | None]]:
    """The callbacks this node holds for a campaign: its hopper's, and those waiting for a lead on its way here."""
    return camp.hopper.callbacks() + [(lid, at, agent) for lid, (at, agent) in camp.later_callbacks.items()]


def _news(history: DebtorHistory, lead_id: str, kinds: dict[str, tuple[float, ...]], now: float) -> bool:
    """The store holds an instant of this debtor that the gates could count and do not have yet (what is past
    their horizon or depth is not news: seeding it again every pass would change nothing)."""
    cutoff = now - history.horizon_s
    for kind, held in (("a", history.attempts(lead_id)), ("c", history.contacts(lead_id)),
                       ("x", history.abandons(lead_id)), ("w", history.wrong_parties(lead_id))):
        counted = [t for t in kinds.get(kind, ()) if t >= cutoff][-history.max_per_lead:]
        if not set(counted) <= set(held):
            return True
    return False


async def _until_cancelled(task: asyncio.Task[Any]) -> None:
    """Wait for a cancelled task to end, cancelling it again while it runs on. A runtime stopped just after its
    start, its first store maintenance under way on Redis, saw its maintenance task take the cancellation and
    go on to sleep, and stop() waited for ever (where the cancellation is lost, in redis-py or asyncio, is not
    pinned down; one more cancel ends it)."""
    while not task.done():
        await asyncio.wait([task], timeout=0.1)
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
