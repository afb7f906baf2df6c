"""The supervisor dashboard. Fast: the page, its assets and the DID-health endpoint over ASGI. Browser
(`browser` marker, headless Chromium over the DevTools Protocol): the page against a running engine on the
simulated PBX (wired as `make run` wires it), numbers moving, pause clicked, a screenshot in build/."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from ami_bridge.telephony import AmiTelephony
from api.app import create_app
from config.settings import ApiSettings, ApiToken, DemoSettings, MarcadorSettings, PbxSettings
from dialer.core import CoreConfig, DialerCore
from dialer.memory_store import InMemoryStore
from dialer.runtime import Runtime
from marcador_cli.wiring import DEMO_CAMPAIGN, pbx_link, start_demo
from tests.harness.browser import Chromium, Page, chromium_or_skip
from tests.test_api import api_env, make_campaign
from tests.test_api_events import http_server

BUILD = Path(__file__).resolve().parent.parent / "build"
VIEWER = "viewer-token-0123456789"
SUPERVISOR = "supervisor-token-0123456789"
DIDS = ["+12125550101", "+12125550102", "+13125550103"]
ADMIN = "admin-token-0123456789"
TOKENS = [ApiToken(name="v", token=VIEWER, role="viewer"), ApiToken(name="s", token=SUPERVISOR, role="supervisor"),
          ApiToken(name="a", token=ADMIN, role="admin")]

# ---------------------------------------------------------------------------------------------- fast (ASGI)


async def test_dashboard_page_and_assets_are_served() -> None:
    async with api_env() as env:
        r = await env.api.get("/dashboard")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        html = r.text
        for element_id in ("campaigns", "agents", "token-form", "token-input", "live", "error"):
            assert f'id="{element_id}"' in html, element_id
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert sorted(assets) == ["dashboard/dashboard.css", "dashboard/dashboard.js"]
        for path, kind in (("/dashboard/dashboard.js", "text/javascript"), ("/dashboard/dashboard.css", "text/css")):
            a = await env.api.get(path)
            assert a.status_code == 200 and a.headers["content-type"].startswith(kind) and len(a.content) > 1000
        js = (await env.api.get("/dashboard/dashboard.js")).text
        assert "api/v1/events" in js and "sessionStorage" in js and "EventSource" not in js.split("'use strict'")[1]
        # nothing else under /dashboard/ reaches the filesystem
        for bad in ("/dashboard/dashboard.html", "/dashboard/..%2Fdashboard.py", "/dashboard/x.js"):
            assert (await env.api.get(bad)).status_code == 404, bad
        root = await env.api.get("/", follow_redirects=False)
        assert root.status_code == 307 and root.headers["location"] == "dashboard"
        assert (await env.api.get("/", follow_redirects=True)).url.path == "/dashboard"


async def test_page_is_open_but_its_data_needs_a_token() -> None:
    async with api_env(ApiSettings(tokens=TOKENS)) as env:
        assert (await env.api.get("/dashboard")).status_code == 200
        assert (await env.api.get("/dashboard/dashboard.js")).status_code == 200
        await make_campaign(env.api, headers={"Authorization": "Bearer " + ADMIN})
        assert (await env.api.get("/api/v1/campaigns/c1/dids")).status_code == 401
        r = await env.api.get("/api/v1/campaigns/c1/dids", headers={"Authorization": "Bearer " + VIEWER})
        assert r.status_code == 200 and r.json() == []


async def test_did_health_per_campaign() -> None:
    async with api_env() as env:
        await make_campaign(env.api, "fixed")
        await make_campaign(env.api, "pool", did_pool=["+12125550101", "+13125550102"], did_hour_cap=5)
        assert (await env.api.get("/api/v1/campaigns/fixed/dids")).json() == []
        assert (await env.api.get("/api/v1/campaigns/nope/dids")).status_code == 404
        got = (await env.api.get("/api/v1/campaigns/pool/dids")).json()
        assert [d["did"] for d in got] == ["+12125550101", "+13125550102"]
        first = got[0]
        assert first["attempts"] == 0 and first["answer_rate"] is None and first["hour_count"] == 0
        assert set(first) == {"did", "area", "attempts", "live_answers", "answer_rate", "short_calls",
                              "short_call_ratio", "hour_count", "day_count", "resting_until", "rests"}


# ---------------------------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def chromium() -> Iterator[Chromium]:
    with chromium_or_skip() as browser:
        yield browser


@contextlib.asynccontextmanager
async def demo_engine(api: ApiSettings | None = None, agents: int = 4, speed: float = 20.0) -> AsyncIterator[str]:
    """What `make run` starts (simulated PBX over AMI, in-memory store, demo campaign and agents), faster than
    real time, served on a free loopback port: its base URL."""
    settings = MarcadorSettings(pbx=PbxSettings(speed=speed), demo=DemoSettings(agents=agents, leads=2000),
                                api=api or ApiSettings())
    async with pbx_link(settings) as ami:
        runtime = Runtime(DialerCore(CoreConfig(id_prefix="dash")), InMemoryStore(), AmiTelephony(ami, "dash"))
        await runtime.start()
        try:
            await start_demo(runtime, settings)
            async with http_server(create_app(runtime, settings.api)) as base:
                yield base
        finally:
            await runtime.stop()


async def _attempts(page: Page, cid: str = DEMO_CAMPAIGN) -> int:
    raw = await page.text(f"#attempts-{cid}")
    return int(raw) if raw.isdigit() else -1


@pytest.mark.browser
async def test_dashboard_live_against_the_simulated_pbx(chromium: Chromium) -> None:
    async with demo_engine() as base, chromium.page() as page, httpx.AsyncClient(base_url=base, timeout=10) as api:
        # caller IDs from a pool, so the page has DID health to show
        r = await api.patch(f"/api/v1/campaigns/{DEMO_CAMPAIGN}", json={"did_pool": DIDS})
        assert r.status_code == 200, r.text
        await page.goto(base + "/")  # redirected to /dashboard
        assert await page.evaluate("location.pathname") == "/dashboard"
        await page.wait_for(f"document.querySelector('#status-{DEMO_CAMPAIGN}')?.textContent === 'running'")
        await page.wait_for(f"Number(document.querySelector('#attempts-{DEMO_CAMPAIGN}')?.textContent) > 0")
        first = await _attempts(page)
        await page.wait_for(f"Number(document.querySelector('#attempts-{DEMO_CAMPAIGN}').textContent) > {first}")
        assert await _attempts(page) > first
        # the event stream is connected and the agents' board lists the demo agents with ticking time in state
        await page.wait_for("document.querySelector('#live').classList.contains('on')")
        rows = await page.wait_for("document.querySelectorAll('#agents tbody tr[id^=agent-]').length === 4 && "
                                   "[...document.querySelectorAll('#agents tbody tr')].map(r => r.id)")
        assert rows == ["agent-demo01", "agent-demo02", "agent-demo03", "agent-demo04"]
        assert await page.evaluate("document.querySelector('#occupancy-demo').textContent.endsWith('%')")
        assert "target 3.0%" in await page.evaluate(
            "document.querySelector('#abandon-demo').parentElement.textContent")
        await page.wait_for("Number(document.querySelector('#outcomes-demo tr td')?.textContent) > 0")

        dids = await page.wait_for(
            f"!document.querySelector('#dids-{DEMO_CAMPAIGN}').hidden && [...document.querySelectorAll("
            f"'#dids-{DEMO_CAMPAIGN} tbody tr')].map(r => [r.cells[0].textContent, Number(r.cells[2].textContent)])"
            ".filter(([, n]) => n > 0).length > 0 && "
            f"[...document.querySelectorAll('#dids-{DEMO_CAMPAIGN} tbody tr')].map(r => r.cells[0].textContent)")
        assert dids == DIDS

        # pause the campaign from the page
        assert await page.text(f"#toggle-{DEMO_CAMPAIGN}") == "pause"
        await page.click(f"#toggle-{DEMO_CAMPAIGN}")
        for _ in range(100):
            if (await api.get(f"/api/v1/campaigns/{DEMO_CAMPAIGN}")).json()["status"] == "paused":
                break
            await page.wait_for("true", interval=0.05)
        assert (await api.get(f"/api/v1/campaigns/{DEMO_CAMPAIGN}")).json()["status"] == "paused"
        await page.wait_for(f"document.querySelector('#status-{DEMO_CAMPAIGN}').textContent === 'paused' && "
                            f"document.querySelector('#toggle-{DEMO_CAMPAIGN}').textContent === 'resume'")

        # pause an agent from the page: the API sees it, the board shows it
        await page.click("#agent-toggle-demo02")
        await page.wait_for("document.querySelector('#agent-demo02 .badge').textContent === 'paused'")
        agent = (await api.get("/api/v1/agents/demo02")).json()
        assert agent["state"] == "paused" and agent["reason"] == "supervisor"
        # time in state ticks in the browser from `since` (the paused agent does not change state again)
        await page.wait_for("document.querySelector('#agent-demo02 td.since').textContent === '2s'", timeout=6)
        await page.wait_for(f"document.querySelector('#agentstates-{DEMO_CAMPAIGN}').textContent.includes('paused')")
        size = await page.screenshot(BUILD / "dashboard.png")
        assert size > 10_000
        assert page.errors == []


@pytest.mark.browser
async def test_dashboard_asks_for_a_token_once(chromium: Chromium) -> None:
    async with demo_engine(ApiSettings(tokens=TOKENS), agents=2) as base, chromium.page() as page:
        await page.goto(base + "/dashboard")
        await page.wait_for("!document.querySelector('#token-form').hidden")
        await page.evaluate("document.querySelector('#token-input').value = 'not-a-token'")
        await page.click("#token-form button")
        await page.wait_for("document.querySelector('#token-error').textContent.includes('refused')")
        await page.evaluate(f"document.querySelector('#token-input').value = '{VIEWER}'")
        await page.click("#token-form button")
        await page.wait_for(f"Number(document.querySelector('#attempts-{DEMO_CAMPAIGN}')?.textContent) > 0")
        await page.wait_for("document.querySelector('#live').classList.contains('on')")  # SSE with the header
        assert await page.evaluate("sessionStorage.getItem('marcador.token')") == VIEWER
        # a viewer may watch but not pause: the page says why, the campaign keeps running
        await page.click(f"#toggle-{DEMO_CAMPAIGN}")
        await page.wait_for("document.querySelector('#error').textContent.includes('403')")
        # reloaded, the tab keeps its token: no question asked again
        await page.goto(base + "/dashboard")
        await page.wait_for(f"document.querySelector('#status-{DEMO_CAMPAIGN}')?.textContent === 'running'")
        assert await page.evaluate("document.querySelector('#token-form').hidden")
        assert [e for e in page.errors if "401" not in e and "403" not in e] == []
