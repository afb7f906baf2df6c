"""Prometheus exposition, collected from the runtime at scrape time (no counters to keep in step).

Everything comes from the core's own figures at the moment of the scrape, with two exceptions:
- the rolling abandon windows (24 h, 30 days) need the store, which is async while a scrape is not: they are
  computed by `refresh_abandon_windows` and cached per runtime; a scrape that finds the cache older than
  `WINDOW_MAX_AGE_S` starts a refresh in the background and shows the last figures, with their age. A store with
  shared counts (`abandon_counts`, Redis) answers campaign-wide. Otherwise the attempts are read once (the first
  refresh) and the runtime's `call.ended` events keep per-minute and per-hour buckets from then on, so a
  refresh costs a few thousand additions, not a pass over every attempt (100k in-memory attempts take ~0.9 s to
  read). The 24 h window is exact to the minute, the 30-day one to the hour;
- the decision-latency histogram is made cumulative here from the runtime's recent samples (see `_Latency`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from api.events import EventHub
from api.webhooks import Webhooks
from dialer.commands import Emit
from dialer.model import Outcome
from dialer.runtime import Runtime

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_QUANTILES = (0.5, 0.9, 0.99)
# Rolling abandon windows (DESIGN.md, Words and figures): label → seconds.
WINDOWS: tuple[tuple[str, float], ...] = (("24h", 86_400.0), ("30d", 30 * 86_400.0))
WINDOW_MAX_AGE_S = 10.0  # a scrape older than this asks for fresh window counts

log = logging.getLogger("marcador.metrics")


@dataclass(slots=True)
class _Windows:
    counts: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)  # (campaign, window) → (ab, live)
    at: float | None = None  # runtime clock of the last refresh
    task: asyncio.Task[None] | None = None


@dataclass(slots=True)
class _Latency:
    """Cumulative bucket counts over every decision seen by a scrape.

    The runtime keeps only its recent samples (a list trimmed from the front by 2048 once past 4096), so the
    samples new since the last scrape are told apart by length: a shorter list means it was trimmed meanwhile.
    Exact while fewer than ~2048 ticks fall between two scrapes (7 minutes at 5 ticks/s)."""

    seen_len: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * len(_BUCKETS))
    count: int = 0
    total: float = 0.0

    def update(self, samples: list[float]) -> None:
        n = len(samples)
        start = self.seen_len if n >= self.seen_len else max(0, self.seen_len - 2048)
        for s in samples[min(start, n):]:
            self.count += 1
            self.total += s
            for i, b in enumerate(_BUCKETS):
                if s <= b:
                    self.buckets[i] += 1
        self.seen_len = n


class _LiveBuckets:
    """Live answers and abandons per campaign in minute buckets (24 h window) and hour buckets (30 days)."""

    def __init__(self) -> None:
        self.minutes: dict[str, dict[int, list[int]]] = {}
        self.hours: dict[str, dict[int, list[int]]] = {}
        self.seen: set[str] = set()  # call ids counted while seeding (an attempt read then is not counted again)
        self.seeding = True  # after it, events alone count each call once: no id is kept (the set would only grow)

    def add(self, call_id: str, campaign_id: str, t: float, abandoned: bool) -> None:
        if self.seeding:
            if call_id in self.seen:
                return
            self.seen.add(call_id)
        for table, unit in ((self.minutes, 60), (self.hours, 3600)):
            bucket = table.setdefault(campaign_id, {}).setdefault(int(t // unit), [0, 0])
            bucket[0] += 1
            bucket[1] += abandoned

    def on_emit(self, cmd: Emit) -> None:
        if cmd.kind != "call.ended":
            return
        d = cmd.data
        if d.get("outcome") not in _LIVE:
            return
        t = d.get("answered_at") or d.get("ended_at") or d.get("dialed_at") or 0.0
        self.add(str(d.get("call_id")), str(d.get("campaign_id")), float(t), d.get("outcome") == "abandoned")

    def prune(self, now: float) -> None:
        """Buckets past every window they serve are let go (minutes serve ≤ 24 h, hours the longest window)."""
        longest = max(span for _, span in WINDOWS)
        for table, unit, keep in ((self.minutes, 60, 86_400.0), (self.hours, 3600, longest)):
            oldest = int((now - keep) // unit)
            for buckets in table.values():
                for key in [k for k in buckets if k <= oldest]:
                    del buckets[key]

    def counts(self, campaign_id: str, now: float, span: float) -> tuple[int, int]:
        table, unit = (self.minutes, 60) if span <= 86_400 else (self.hours, 3600)
        after = int((now - span) // unit)  # buckets after this one (as RedisStore.abandon_counts, by minute)
        live = abandoned = 0
        for key, (n, ab) in table.get(campaign_id, {}).items():
            if after < key <= int(now // unit):
                live += n
                abandoned += ab
        return abandoned, live


_LIVE = frozenset({Outcome.CONNECTED.value, Outcome.ABANDONED.value})
_buckets: weakref.WeakKeyDictionary[Runtime, _LiveBuckets] = weakref.WeakKeyDictionary()
_windows: weakref.WeakKeyDictionary[Runtime, _Windows] = weakref.WeakKeyDictionary()
_latency: weakref.WeakKeyDictionary[Runtime, _Latency] = weakref.WeakKeyDictionary()


async def refresh_abandon_windows(runtime: Runtime, now: float | None = None) -> dict[tuple[str, str], tuple[int, int]]:
    """(abandoned, live answers) per (campaign, window), campaign-wide when the store keeps shared counts
    (Redis), else from the attempts the store holds. Cached for the next scrapes."""
    now = runtime.clock() if now is None else now
    out: dict[tuple[str, str], tuple[int, int]] = {}
    campaigns = list(runtime.core.campaigns)
    counts = getattr(runtime.store, "abandon_counts", None)
    if callable(counts):
        for cid in campaigns:
            for name, span in WINDOWS:
                abandoned, live = await counts(cid, now, span)
                out[(cid, name)] = (int(abandoned), int(live))
    else:
        buckets = _buckets.get(runtime)
        if buckets is None:
            # Subscribed before the read: a call ending meanwhile is counted once (by call id), whichever comes.
            buckets = _buckets[runtime] = _LiveBuckets()
            runtime.subscribe(buckets.on_emit)
            for i, att in enumerate(await runtime.attempts(None)):
                if att.outcome is not None and att.outcome.live:
                    t = att.answered_at if att.answered_at is not None else (att.ended_at or att.dialed_at)
                    buckets.add(att.call_id, att.campaign_id, t, att.outcome is Outcome.ABANDONED)
                if i % 10_000 == 9_999:
                    await asyncio.sleep(0)  # let the core run between chunks
            buckets.seeding = False  # from here on, each call.ended is counted once by the events alone
            buckets.seen.clear()
        buckets.prune(now)
        for cid in campaigns:
            for name, span in WINDOWS:
                out[(cid, name)] = buckets.counts(cid, now, span)
    cache = _windows.setdefault(runtime, _Windows())
    cache.counts, cache.at = out, now
    return out


def _schedule_refresh(runtime: Runtime, now: float) -> _Windows:
    cache = _windows.setdefault(runtime, _Windows())
    stale = cache.at is None or now - cache.at >= WINDOW_MAX_AGE_S
    if stale and (cache.task is None or cache.task.done()):
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return cache  # no loop (a plain call): only `refresh_abandon_windows` fills the cache
        cache.task = loop.create_task(_refresh_quietly(runtime), name="marcador-metrics-windows")
    return cache


async def abandon_windows(runtime: Runtime, campaign_id: str) -> dict[str, Any]:
    """Rolling abandon figures of one campaign for the stats API: {window: {abandoned, live_answers, rate}} plus
    `age_s`. The first call waits for the counts; later ones read the cache and refresh it in the background when
    older than WINDOW_MAX_AGE_S."""
    now = runtime.clock()
    cache = _windows.get(runtime)
    if cache is None or cache.at is None:
        await refresh_abandon_windows(runtime, now)
        cache = _windows[runtime]
    else:
        cache = _schedule_refresh(runtime, now)
    out: dict[str, Any] = {"age_s": round(now - cache.at, 3) if cache.at is not None else None}
    for name, _ in WINDOWS:
        abandoned, live = cache.counts.get((campaign_id, name), (0, 0))
        out[name] = {"abandoned": abandoned, "live_answers": live, "rate": abandoned / live if live else 0.0}
    return out


async def _refresh_quietly(runtime: Runtime) -> None:
    try:
        await refresh_abandon_windows(runtime)
    except Exception:  # the store is down: keep the last figures, their age says how old they are
        log.warning("abandon window counts unavailable", exc_info=True)


class RuntimeCollector(Collector):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        rt = self.runtime
        now = rt.clock()
        yield from self._campaigns(now)
        yield from self._windows(now)
        yield from self._dids(now)
        backlog = GaugeMetricFamily("marcador_core_event_backlog", "Events queued for the core")
        backlog.add_metric([], rt.event_backlog)
        yield backlog
        lag = GaugeMetricFamily("marcador_event_lag_seconds", "PBX event read → handled by the core",
                                labels=["which"])
        lag.add_metric(["last"], rt.event_lag_s)
        lag.add_metric(["max"], rt.event_lag_max_s)
        yield lag
        dropped = CounterMetricFamily("marcador_events_dropped", "Events lost to a full core queue")
        dropped.add_metric([], rt.events_dropped)
        yield dropped
        handled = CounterMetricFamily("marcador_events_handled", "Events handled by the core")
        handled.add_metric([], rt.events_handled)
        yield handled
        up = GaugeMetricFamily("marcador_pbx_ready", "1 when the PBX link is logged in")
        up.add_metric([], 1.0 if rt.telephony.ready else 0.0)
        yield up
        store = GaugeMetricFamily("marcador_store_up", "1 while the store answers (dialing pauses otherwise)")
        store.add_metric([], 1.0 if rt.store_up else 0.0)
        yield store
        writes = GaugeMetricFamily("marcador_store_pending_writes", "Store writes not yet acknowledged")
        writes.add_metric([], rt.pending_writes)
        yield writes
        yield from self._latency()

    def _campaigns(self, now: float) -> Iterator[Metric]:
        rt = self.runtime
        calls = CounterMetricFamily("marcador_calls", "Finished attempts by outcome", labels=["campaign", "outcome"])
        live = GaugeMetricFamily("marcador_live_calls", "Calls up now: dialing/ringing, answered and waiting for "
                                 "an agent, connected to an agent", labels=["campaign", "state"])
        rate = GaugeMetricFamily("marcador_abandon_rate", "Abandoned / live answers", labels=["campaign", "window"])
        target = GaugeMetricFamily("marcador_abandon_target", "The campaign's abandon-rate ceiling",
                                   labels=["campaign"])
        occ = GaugeMetricFamily("marcador_occupancy", "Talk time / logged-in time", labels=["campaign"])
        agents = GaugeMetricFamily("marcador_agents", "Agents by state", labels=["campaign", "state"])
        lines = GaugeMetricFamily("marcador_lines_per_agent", "Lines up (dialing, ringing, waiting) per working "
                                  "agent (ready, on a call, wrap-up)", labels=["campaign"])
        lines_cap = GaugeMetricFamily("marcador_lines_per_agent_max", "The campaign's cap on lines per agent",
                                      labels=["campaign"])
        refused = CounterMetricFamily("marcador_dial_refusals", "Dials the compliance gate refused, by reason",
                                      labels=["campaign", "reason"])
        attempts = CounterMetricFamily("marcador_attempts", "Dials made", labels=["campaign"])
        pacing = GaugeMetricFamily("marcador_pacing", "Pacing state (α, estimates)", labels=["campaign", "key"])
        info = GaugeMetricFamily("marcador_campaign_info", "1 per campaign: its status and pacing strategy",
                                 labels=["campaign", "status", "strategy"])
        connected: dict[str, int] = {}
        for call in rt.core.calls.values():
            if call.state == "connected":
                connected[call.attempt.campaign_id] = connected.get(call.attempt.campaign_id, 0) + 1
        for cid, camp in rt.core.campaigns.items():
            st = rt.stats(cid)
            for outcome in Outcome:  # every outcome from the start, so rate() sees the first one
                calls.add_metric([cid, outcome.value], st["outcomes"].get(outcome.value, 0))
            live.add_metric([cid, "in_flight"], st["in_flight"])
            live.add_metric([cid, "waiting"], st["waiting"])
            live.add_metric([cid, "connected"], connected.get(cid, 0))
            rate.add_metric([cid, "campaign"], st["abandon_rate"])
            target.add_metric([cid], st["abandon_target"])
            occ.add_metric([cid], st["occupancy"])
            for state, n in st["agents"].items():
                agents.add_metric([cid, state], n)
            lines.add_metric([cid], st["lines_per_agent"])
            lines_cap.add_metric([cid], camp.settings.max_lines_per_agent)
            for reason, n in st["refused"].items():
                refused.add_metric([cid, reason], n)
            attempts.add_metric([cid], st["attempts"])
            info.add_metric([cid, st["status"], st["strategy"]], 1.0)
            state = getattr(camp.strategy, "state", None)  # for strategies that expose their state
            if callable(state):
                for key, value in state().items():
                    if isinstance(value, int | float) and math.isfinite(value):
                        pacing.add_metric([cid, key], float(value))
        yield from (calls, live, rate, target, occ, agents, lines, lines_cap, refused, attempts, pacing, info)

    def _windows(self, now: float) -> Iterator[Metric]:
        cache = _schedule_refresh(self.runtime, now)
        if cache.at is None:
            return
        rate = GaugeMetricFamily("marcador_abandon_rate_window", "Abandoned / live answers over a rolling window",
                                 labels=["campaign", "window"])
        live = GaugeMetricFamily("marcador_live_answers_window", "Live answers over a rolling window",
                                 labels=["campaign", "window"])
        for (cid, window), (abandoned, answers) in sorted(cache.counts.items()):
            rate.add_metric([cid, window], abandoned / answers if answers else 0.0)
            live.add_metric([cid, window], answers)
        age = GaugeMetricFamily("marcador_abandon_window_age_seconds", "Age of the rolling abandon counts")
        age.add_metric([], max(0.0, now - cache.at))
        yield from (rate, live, age)

    def _dids(self, now: float) -> Iterator[Metric]:
        # DIDs are the operator's own caller IDs (not debtors' numbers): shown whole, they name the line to fix.
        labels = ["campaign", "did"]
        answer = GaugeMetricFamily("marcador_did_answer_rate", "Live answers / attempts since the DID's last rest",
                                   labels=labels)
        attempts = GaugeMetricFamily("marcador_did_attempts", "Attempts since the DID's last rest", labels=labels)
        day = GaugeMetricFamily("marcador_did_day_count", "Calls in the DID's rolling day (cap window)",
                                labels=labels)
        hour = GaugeMetricFamily("marcador_did_hour_count", "Calls in the DID's rolling hour (cap window)",
                                 labels=labels)
        resting = GaugeMetricFamily("marcador_did_resting", "1 while the DID rests (low answer rate)", labels=labels)
        for cid, camp in self.runtime.core.campaigns.items():
            if camp.pool is None:
                continue
            for h in camp.pool.health(now):
                key = [cid, h.did]
                if h.answer_rate is not None:  # none yet (no attempt since its last rest): no sample, never a 0
                    answer.add_metric(key, h.answer_rate)
                attempts.add_metric(key, h.attempts)
                day.add_metric(key, h.day_count)
                hour.add_metric(key, h.hour_count)
                resting.add_metric(key, 1.0 if h.resting_until is not None and h.resting_until > now else 0.0)
        yield from (answer, attempts, day, hour, resting)

    def _latency(self) -> Iterator[Metric]:
        samples = self.runtime.decision_seconds
        acc = _latency.setdefault(self.runtime, _Latency())
        acc.update(samples)
        hist = HistogramMetricFamily("marcador_decision_seconds", "Time of one core tick (pacing decisions)")
        hist.add_metric([], [(str(b), c) for b, c in zip(_BUCKETS, acc.buckets, strict=True)] + [("+Inf", acc.count)],
                        sum_value=acc.total)
        yield hist
        recent = GaugeMetricFamily("marcador_decision_recent_seconds",
                                   "Quantiles of the runtime's recent core ticks (up to 4096)", labels=["quantile"])
        ordered = sorted(samples)
        for q in _QUANTILES:
            recent.add_metric([str(q)], ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0)
        yield recent


class EventsCollector(Collector):
    """The event stream's clients and the webhooks' deliveries."""

    def __init__(self, hub: EventHub | None, webhooks: Webhooks | None) -> None:
        self.hub = hub
        self.webhooks = webhooks

    def collect(self) -> Iterator[Metric]:
        if self.hub is not None:
            clients = GaugeMetricFamily("marcador_sse_clients", "Connected server-sent-event clients")
            clients.add_metric([], len(self.hub.clients))
            yield clients
            dropped = CounterMetricFamily("marcador_sse_events_dropped", "Events slow SSE clients lost")
            dropped.add_metric([], self.hub.dropped)
            yield dropped
        if self.webhooks is not None:
            events = CounterMetricFamily("marcador_webhook_events", "Webhook events by result",
                                         labels=["url", "result"])
            retried = CounterMetricFamily("marcador_webhook_retries", "Webhook delivery attempts after a failure",
                                          labels=["url"])
            backlog = GaugeMetricFamily("marcador_webhook_backlog", "Webhook events waiting", labels=["url"])
            for sender in self.webhooks.senders:
                c = sender.counters
                for result, n in (("sent", c.sent), ("failed", c.failed), ("dropped", c.dropped)):
                    events.add_metric([sender.label, result], n)
                retried.add_metric([sender.label], c.retried)
                backlog.add_metric([sender.label], sender.backlog)
            yield events
            yield retried
            yield backlog
            keeper = self.webhooks.keeper
            kept = GaugeMetricFamily("marcador_webhook_kept", "Webhook events given up and kept in the store to "
                                     "redeliver (every node's, as the store last counted them)", labels=["url"])
            for label, n in sorted(({s.label: 0 for s in self.webhooks.senders} | keeper.counts).items()):
                kept.add_metric([label], n)
            yield kept
            evicted = CounterMetricFamily("marcador_webhook_kept_evicted", "Kept webhook events dropped, the oldest "
                                          "first, to stay within api.webhooks_kept_max (by this node)")
            evicted.add_metric([], keeper.evicted)
            yield evicted
            lost = CounterMetricFamily("marcador_webhook_keep_lost", "Webhook events given up that could not be "
                                       "kept (the store unreachable through shutdown)")
            lost.add_metric([], keeper.lost)
            yield lost
            if self.webhooks.outbox is not None:
                owed = GaugeMetricFamily("marcador_webhook_outbox_backlog", "Webhook outbox writes this node owes "
                                         "the store (events queued or settled, not yet written)")
                owed.add_metric([], self.webhooks.outbox.backlog)
                yield owed
            taken = CounterMetricFamily("marcador_webhook_taken_over", "Webhook events left unsent by a node gone "
                                        "(or this node's earlier run) that this node took to redeliver")
            taken.add_metric([], self.webhooks.taken_over)
            yield taken


def render_metrics(
    runtime: Runtime, hub: EventHub | None = None, webhooks: Webhooks | None = None
) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RuntimeCollector(runtime))
    if hub is not None or webhooks is not None:
        registry.register(EventsCollector(hub, webhooks))
    return generate_latest(registry), CONTENT_TYPE
