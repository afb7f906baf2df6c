"""/metrics after a short run over real AMI TCP against the simulated PBX: names, labels, values that move,
and valid exposition text (parsed back with prometheus_client's own parser)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from ami_bridge.config import AmiConfig
from ami_bridge.telephony import AmiTelephony
from api.metrics import _Latency, refresh_abandon_windows, render_metrics
from dialer.core import CoreConfig, DialerCore
from dialer.events import AgentLogin, CampaignControl, DncAdd
from dialer.memory_store import InMemoryStore
from dialer.model import CampaignSettings, Lead
from dialer.runtime import Runtime, RuntimeConfig
from pacing.snapshot import PacingCaps, PacingStrategy
from sim.pbx import SimulatedPbx
from tests.harness.campaign import Burst

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
DIDS = ["+12025550143", "+12025550187"]
DNC_NUMBER = "+15550099102003"


def scrape(runtime: Runtime) -> Samples:
    body, content_type = render_metrics(runtime)
    assert content_type.startswith("text/plain; version=0.0.4")
    out: Samples = {}
    for family in text_string_to_metric_families(body.decode()):  # raises on anything not in the format
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


async def until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(what)


class StatefulBurst(Burst):
    """Burst pacing that exposes its state, as the real strategies do (`state()`)."""

    def state(self) -> dict[str, Any]:
        return {"lines": self.lines, "warmed_up": True, "estimate": None}


def stateful_burst(name: str, caps: PacingCaps) -> PacingStrategy:
    return StatefulBurst(3)


async def run_with_scrapes(body: Callable[[Runtime, SimulatedPbx], Awaitable[Any]]) -> Any:
    async with SimulatedPbx(secret="m3trics", speed=4.0) as pbx:
        cfg = AmiConfig(host="127.0.0.1", port=pbx.port, username="marcador", secret="m3trics", auth="md5",
                        call_channel="Local/{number}@sim-customer", agent_channel="Local/{agent_id}@sim-agent")
        # Three lines per ready agent and one agent: answers pile up and some are abandoned.
        core = DialerCore(CoreConfig(id_prefix="t", strategy_factory=stateful_burst))
        runtime = Runtime(core, InMemoryStore(), AmiTelephony(cfg), RuntimeConfig(tick_interval_s=0.05))
        await runtime.start()
        try:
            return await body(runtime, pbx)
        finally:
            await runtime.stop()


async def test_scrape_after_a_short_run() -> None:
    async def body(rt: Runtime, pbx: SimulatedPbx) -> None:
        await rt.create_campaign(CampaignSettings("m1", abandon_threshold_s=1.0, ring_timeout_s=15, wrapup_s=1,
                                                  did_pool=list(DIDS), hopper={"max_attempts_lead": 1}))
        # 6 answers (ring 2 s, talk 3 s), 2 busy, 1 on the DNC list (refused, never dialed).
        phones = [f"+1555{i:04d}102003" for i in range(6)] + [f"+1555{i:04d}201000" for i in (7, 8)] + [DNC_NUMBER]
        await rt.add_leads("m1", [Lead(f"L{i}", "m1", (p,)) for i, p in enumerate(phones)])
        rt.submit(DncAdd(DNC_NUMBER, None))
        rt.submit(AgentLogin("ag1"))
        await until(lambda: rt.stats("m1")["agents"]["ready"] == 1, 10, "agent never ready")

        before = scrape(rt)
        for outcome in ("connected", "abandoned", "busy", "no_answer", "machine"):
            assert value(before, "marcador_calls_total", campaign="m1", outcome=outcome) == 0
        assert value(before, "marcador_agents", campaign="m1", state="ready") == 1
        assert value(before, "marcador_abandon_target", campaign="m1") == pytest.approx(0.03)
        assert value(before, "marcador_lines_per_agent_max", campaign="m1") == 4.0
        assert value(before, "marcador_pbx_ready") == 1
        assert value(before, "marcador_did_attempts", campaign="m1", did=DIDS[0]) == 0
        assert value(before, "marcador_did_resting", campaign="m1", did=DIDS[1]) == 0
        assert ("marcador_campaign_info", (("campaign", "m1"), ("status", "created"),
                                           ("strategy", "burst"))) in before

        rt.submit(CampaignControl("m1", "start"))
        await until(lambda: rt.stats("m1")["in_flight"] > 0, 10, "nothing dialed")
        mid = scrape(rt)
        assert value(mid, "marcador_live_calls", campaign="m1", state="in_flight") > 0
        assert value(mid, "marcador_lines_per_agent", campaign="m1") > 0

        def finished() -> bool:
            s = rt.stats("m1")
            return sum(s["outcomes"].values()) == 8 and s["in_flight"] == 0 and s["waiting"] == 0
        await until(finished, 30, "campaign did not finish")
        await until(lambda: not rt.core.calls, 15, "calls still up")

        after = scrape(rt)
        stats = rt.stats("m1")
        connected = value(after, "marcador_calls_total", campaign="m1", outcome="connected")
        abandoned = value(after, "marcador_calls_total", campaign="m1", outcome="abandoned")
        assert connected >= 1 and abandoned >= 1 and connected + abandoned == 6  # the burst forced both
        assert value(after, "marcador_calls_total", campaign="m1", outcome="busy") == 2
        assert value(after, "marcador_attempts_total", campaign="m1") == 8
        assert value(after, "marcador_abandon_rate", campaign="m1", window="campaign") == \
            pytest.approx(abandoned / 6) == pytest.approx(stats["abandon_rate"])
        assert value(after, "marcador_dial_refusals_total", campaign="m1", reason="dnc_global") >= 1
        assert sum(value(after, "marcador_did_attempts", campaign="m1", did=d) for d in DIDS) == 8
        assert sum(value(after, "marcador_did_day_count", campaign="m1", did=d) for d in DIDS) == 8
        assert 0 < max(value(after, "marcador_did_answer_rate", campaign="m1", did=d) for d in DIDS) <= 1
        for state in ("in_flight", "waiting", "connected"):
            assert value(after, "marcador_live_calls", campaign="m1", state=state) == 0
        assert value(after, "marcador_pacing", campaign="m1", key="lines") == 3
        assert value(after, "marcador_pacing", campaign="m1", key="warmed_up") == 1
        assert ("marcador_pacing", (("campaign", "m1"), ("key", "estimate"))) not in after  # None: not a figure
        # the latency histogram is cumulative: it only grows from scrape to scrape
        assert value(after, "marcador_decision_seconds_count") > value(mid, "marcador_decision_seconds_count") > 0
        assert value(after, "marcador_decision_seconds_bucket", le="+Inf") == \
            value(after, "marcador_decision_seconds_count")
        assert value(after, "marcador_events_handled_total") > value(before, "marcador_events_handled_total")
        assert value(after, "marcador_event_lag_seconds", which="max") >= 0

        # Rolling windows: the in-memory store has no shared counts, so they come from its attempts.
        counts = await refresh_abandon_windows(rt)
        assert counts[("m1", "24h")] == counts[("m1", "30d")] == (abandoned, 6)
        windows = scrape(rt)
        assert value(windows, "marcador_abandon_rate_window", campaign="m1", window="24h") == \
            pytest.approx(abandoned / 6)
        assert value(windows, "marcador_live_answers_window", campaign="m1", window="30d") == 6
        # 31 days later the calls have left both windows.
        later = await refresh_abandon_windows(rt, now=rt.clock() + 31 * 86_400)
        assert later[("m1", "24h")] == later[("m1", "30d")] == (0, 0)

    await run_with_scrapes(body)


async def test_windows_refresh_in_the_background_of_a_scrape() -> None:
    async def body(rt: Runtime, pbx: SimulatedPbx) -> None:
        await rt.create_campaign(CampaignSettings("w1"))
        first = scrape(rt)  # no counts yet: the scrape starts their refresh
        assert "marcador_abandon_rate_window" not in names(first)
        await asyncio.sleep(0.1)
        second = scrape(rt)
        assert value(second, "marcador_abandon_rate_window", campaign="w1", window="24h") == 0
        assert value(second, "marcador_abandon_window_age_seconds") < 5

    await run_with_scrapes(body)


@given(st.lists(st.integers(min_value=0, max_value=1500), min_size=1, max_size=12))
def test_latency_histogram_counts_every_tick_despite_trimming(ticks_between_scrapes: list[int]) -> None:
    # The runtime's own trimming rule (Runtime._note_decision): past 4096 samples, the oldest 2048 go.
    samples: list[float] = []
    acc = _Latency()
    total = 0
    for n in ticks_between_scrapes:
        for _ in range(n):
            samples.append(0.001)
            if len(samples) > 4096:
                del samples[:2048]
        total += n
        acc.update(samples)
        assert acc.count == total
        assert acc.buckets[-1] == total
