"""Prometheus exposition, collected from the runtime at scrape time (no counters to keep in step)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from api.events import EventHub
from api.webhooks import Webhooks
from dialer.runtime import Runtime

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


class RuntimeCollector(Collector):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        rt = self.runtime
        calls = CounterMetricFamily("marcador_calls", "Finished attempts by outcome", labels=["campaign", "outcome"])
        live = GaugeMetricFamily("marcador_live_calls", "Calls in flight or waiting", labels=["campaign", "state"])
        rate = GaugeMetricFamily("marcador_abandon_rate", "Abandoned / live answers", labels=["campaign", "window"])
        occ = GaugeMetricFamily("marcador_occupancy", "Talk time / logged-in time", labels=["campaign"])
        agents = GaugeMetricFamily("marcador_agents", "Agents by state", labels=["campaign", "state"])
        for cid in rt.core.campaigns:
            st = rt.stats(cid)
            for outcome, n in st["outcomes"].items():
                calls.add_metric([cid, outcome], n)
            live.add_metric([cid, "in_flight"], st["in_flight"])
            live.add_metric([cid, "waiting"], st["waiting"])
            rate.add_metric([cid, "campaign"], st["abandon_rate"])
            occ.add_metric([cid], st["occupancy"])
            for state, n in st["agents"].items():
                agents.add_metric([cid, state], n)
        yield calls
        yield live
        yield rate
        yield occ
        yield agents
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
        pacing = GaugeMetricFamily("marcador_pacing", "Pacing state (α, estimates)", labels=["campaign", "key"])
        for cid, camp in rt.core.campaigns.items():  # for strategies that expose their state
            state = getattr(camp.strategy, "state", None)
            if callable(state):
                for key, value in state().items():
                    if isinstance(value, int | float):
                        pacing.add_metric([cid, key], float(value))
        yield pacing
        up = GaugeMetricFamily("marcador_pbx_ready", "1 when the PBX link is logged in")
        up.add_metric([], 1.0 if rt.telephony.ready else 0.0)
        yield up
        samples = sorted(rt.decision_seconds)
        counts = [sum(1 for s in samples if s <= b) for b in _BUCKETS]
        hist = HistogramMetricFamily("marcador_decision_seconds", "Time of one core tick (pacing decisions)")
        hist.add_metric([], [(str(b), c) for b, c in zip(_BUCKETS, counts, strict=True)] + [("+Inf", len(samples))],
                        sum_value=sum(samples))
        yield hist


class EventsCollector(Collector):
    """The event stream's clients and the webhooks' deliveries."""

    def __init__(self, hub: EventHub | None, webhooks: Webhooks | None) -> None:
        self.hub = hub
        self.webhooks = webhooks

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
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


def render_metrics(
    runtime: Runtime, hub: EventHub | None = None, webhooks: Webhooks | None = None
) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RuntimeCollector(runtime))
    if hub is not None or webhooks is not None:
        registry.register(EventsCollector(hub, webhooks))
    return generate_latest(registry), CONTENT_TYPE
