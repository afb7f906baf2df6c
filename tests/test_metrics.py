"""/metrics after a short run over real AMI TCP against the simulated PBX: names, labels, values that move,
and valid exposition text (parsed back with prometheus_client's own parser)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from ami_bridge.config import AmiConfig
from ami_bridge.telephony import AmiTelephony
from api import metrics as metrics_module
from api.metrics import _Latency, refresh_abandon_windows, render_metrics
from dialer.commands import Emit
from dialer.core import CoreConfig, DialerCore
from dialer.events import AgentLogin, CampaignControl, DncAdd
from dialer.memory_store import InMemoryStore
from dialer.model import CampaignSettings, Lead
from dialer.runtime import Runtime, RuntimeConfig
from marcador_cli.wiring import DRAIN_TIMEOUT_S
from pacing.snapshot import PacingCaps, PacingStrategy
from sim.pbx import SimulatedPbx
from tests.harness.campaign import Burst
from tests.test_api import api_env

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

        assert await refresh_abandon_windows(rt) == {("m1", "24h"): (0, 0), ("m1", "30d"): (0, 0)}  # subscribes
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

        # Rolling windows: the in-memory store has no shared counts; since the first refresh the call.ended
        # events fill them, and a runtime that starts on the same store reads its attempts once.
        counts = await refresh_abandon_windows(rt)
        assert counts[("m1", "24h")] == counts[("m1", "30d")] == (abandoned, 6)
        fresh = Runtime(DialerCore(), rt.store, rt.telephony)
        fresh.core.add_campaign(CampaignSettings("m1"))
        assert await refresh_abandon_windows(fresh) == counts
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


# ------------------------------------------------------------------------------ Grafana, Prometheus, compose

DOCKER = Path(__file__).resolve().parents[1] / "asterisk-docker"
_METRIC = re.compile(r"\bmarcador_[a-z0-9_]+")


async def _full_scrape() -> set[str]:
    """Every sample name render_metrics emits for a runtime with an Erlang-paced campaign, a DID pool, rolling
    windows and the SSE/webhook collectors (the runtime is not started: a scrape needs none of its tasks)."""
    cfg = AmiConfig(port=5038, secret="unused")
    rt = Runtime(DialerCore(), InMemoryStore(), AmiTelephony(cfg))
    rt.core.add_campaign(CampaignSettings("g1", strategy="erlang", did_pool=list(DIDS)))
    rt.core.campaigns["g1"].pool.record(DIDS[0], rt.clock(), answered_live=True)  # type: ignore[union-attr]
    rt.core.handle(DncAdd(DNC_NUMBER, None), rt.clock())
    rt.core.campaigns["g1"].refused["dnc_global"] = 1  # a refusal, so its family has a sample to name
    await refresh_abandon_windows(rt)
    return names(scrape(rt))


def _exprs(panel: dict[str, Any]) -> list[str]:
    return [t["expr"] for t in panel.get("targets", [])]


async def test_dashboard_queries_only_metrics_that_are_emitted() -> None:
    dash = json.loads((DOCKER / "grafana" / "dashboards" / "marcador.json").read_text(encoding="utf-8"))
    emitted = await _full_scrape()
    titles = {p["title"] for p in dash["panels"]}
    for wanted in ("Abandon rate vs target", "Occupancy", "Lines per agent", "Calls by outcome (per minute)",
                   "Agents by state", "AMI event lag", "Decision latency p99", "DID health",
                   "Gate refusals by reason (per hour)"):
        assert wanted in titles
    uids = {p["datasource"]["uid"] for p in dash["panels"]} | {t["datasource"]["uid"] for p in dash["panels"]
                                                               for t in p["targets"]}
    assert uids == {"marcador-prometheus"}
    used: set[str] = set()
    for panel in dash["panels"]:
        exprs = _exprs(panel)
        assert exprs, panel["title"]
        for expr in exprs:
            found = set(_METRIC.findall(expr))
            assert found, (panel["title"], expr)
            used |= found
    for variable in dash["templating"]["list"]:
        used |= set(_METRIC.findall(variable["definition"]))
    assert used - emitted == set(), f"queried but never emitted: {sorted(used - emitted)}"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_compose_lets_the_engine_drain_before_it_kills_it() -> None:
    # docker's default is 10 s, which cut the 30 s drain: calls up were left to the dialplan
    compose = yaml.safe_load((DOCKER / "docker-compose.yml").read_text(encoding="utf-8"))
    grace = str(compose["services"]["marcador"]["stop_grace_period"])
    assert grace.endswith("s") and int(grace[:-1]) > DRAIN_TIMEOUT_S


def test_provisioning_prometheus_and_compose_agree() -> None:
    compose = yaml.safe_load((DOCKER / "docker-compose.yml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    mounts: dict[str, str] = {}
    for name in ("prometheus", "grafana"):
        svc = services[name]
        assert svc["network_mode"] == "host"  # like the others: each binds loopback itself, nothing published
        for volume in svc["volumes"]:
            src, target, *_ = volume.split(":")
            if src.startswith("."):
                assert (DOCKER / src).exists(), f"{name} mounts a missing {src}"
                mounts[target] = src
            else:
                assert src in compose["volumes"], src
    assert "--web.listen-address=127.0.0.1:9090" in services["prometheus"]["command"]
    env = services["grafana"]["environment"]
    assert env["GF_SERVER_HTTP_ADDR"] == "127.0.0.1" and env["GF_SERVER_HTTP_PORT"] == "3000"
    assert ":?" in env["GF_SECURITY_ADMIN_PASSWORD"]  # no default password
    # Prometheus reads the mounted file and scrapes Marcador's API address (marcador.yaml).
    config_arg = next(a for a in services["prometheus"]["command"] if a.startswith("--config.file="))
    prom_file = DOCKER / mounts[config_arg.split("=", 1)[1]]
    prom = yaml.safe_load(prom_file.read_text(encoding="utf-8"))
    api = yaml.safe_load((DOCKER / "marcador.yaml").read_text(encoding="utf-8"))["api"]
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "marcador")
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"{api['host']}:{api['port']}"]
    # Grafana: the datasource the dashboard names, at Prometheus's address; the provider's path is the mount.
    ds_dir = DOCKER / mounts["/etc/grafana/provisioning/datasources"]
    (ds,) = yaml.safe_load((ds_dir / "prometheus.yaml").read_text(encoding="utf-8"))["datasources"]
    assert ds["uid"] == "marcador-prometheus" and ds["type"] == "prometheus"
    assert ds["url"] == "http://127.0.0.1:9090"
    prov_dir = DOCKER / mounts["/etc/grafana/provisioning/dashboards"]
    (provider,) = yaml.safe_load((prov_dir / "marcador.yaml").read_text(encoding="utf-8"))["providers"]
    assert provider["options"]["path"] in mounts
    assert (DOCKER / mounts[provider["options"]["path"]] / "marcador.json").is_file()
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(provider["options"]["path"] + "/")


async def test_rolling_windows_keep_no_memory_per_call_once_seeded() -> None:
    """With the in-memory store the windows are kept from call.ended events after one read of the attempts.
    Every call id was also added to a set meant only to tell apart, during that read, calls counted twice: it
    grew by one entry per live call for the life of the process, past every window."""
    async with api_env() as env:
        rt = env.runtime
        await rt.create_campaign(CampaignSettings("m1"))
        await refresh_abandon_windows(rt)
        buckets = metrics_module._buckets[rt]
        now = rt.clock()
        for i in range(1000):
            buckets.on_emit(Emit("call.ended", {"call_id": f"x{i}", "campaign_id": "m1", "ended_at": now,
                                                "outcome": "abandoned" if i % 10 == 0 else "connected"}))
        assert (await refresh_abandon_windows(rt))[("m1", "24h")] == (100, 1000)  # every call counted once
        assert len(buckets.seen) == 0


def test_a_did_without_attempts_has_no_answer_rate_sample_rather_than_zero() -> None:
    # A fresh DID (or one back from a rest) was exported at answer rate 0, as one no debtor ever picks up: a panel
    # or an alert on a low answer rate could not tell them apart. The API says null; the metric now says nothing.
    rt = Runtime(DialerCore(), InMemoryStore(), AmiTelephony(AmiConfig(port=5038, secret="unused")))
    rt.core.add_campaign(CampaignSettings("g1", did_pool=list(DIDS)))
    rt.core.campaigns["g1"].pool.record(DIDS[0], rt.clock(), answered_live=False)  # type: ignore[union-attr]
    got = scrape(rt)
    assert value(got, "marcador_did_answer_rate", campaign="g1", did=DIDS[0]) == 0.0  # 0 of 1: a real zero
    assert ("marcador_did_answer_rate", (("campaign", "g1"), ("did", DIDS[1]))) not in got
    assert value(got, "marcador_did_attempts", campaign="g1", did=DIDS[1]) == 0
