"""Bearer tokens and roles: 401 without a valid token, 403 for the wrong role, the agent role limited to its own
agent, open probes, auth off (with one warning) when no token is configured, tokens never in the logs."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from config.settings import ApiSettings, ApiToken
from tests.test_api import api_env, co_row, make_campaign

TOKENS = {
    "admin": "admin-token-0123456789",
    "integrator": "integrator-token-0123456789",
    "supervisor": "supervisor-token-0123456789",
    "agent": "agent-a1-token-0123456789",
    "viewer": "viewer-token-0123456789",
}


def settings() -> ApiSettings:
    return ApiSettings(tokens=[ApiToken(name=f"{role} holder", token=tok, role=role,  # type: ignore[arg-type]
                                        agent_id="a1" if role == "agent" else None)
                               for role, tok in TOKENS.items()])


def bearer(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


# (method, path, json body, roles allowed besides admin)
MATRIX: list[tuple[str, str, Any, set[str]]] = [
    ("GET", "/api/v1/campaigns", None, {"integrator", "supervisor", "viewer"}),
    ("GET", "/api/v1/campaigns/c1/stats", None, {"integrator", "supervisor", "viewer"}),
    ("GET", "/api/v1/attempts", None, {"integrator", "supervisor", "viewer"}),
    ("GET", "/api/v1/agents", None, {"integrator", "supervisor", "viewer"}),
    ("POST", "/api/v1/campaigns", {"campaign_id": "new1"}, {"integrator"}),
    ("PATCH", "/api/v1/campaigns/c1", {"name": "x"}, {"integrator"}),
    ("POST", "/api/v1/campaigns/c1/leads", [co_row(1)], {"integrator"}),
    ("DELETE", "/api/v1/campaigns/c1/leads/nope", None, {"integrator"}),
    ("POST", "/api/v1/dnc", {"numbers": ["+573001234567"]}, {"integrator"}),
    ("GET", "/api/v1/dnc/+573001234567", None, {"integrator", "supervisor", "viewer"}),
    ("POST", "/api/v1/campaigns/c1/pause", None, {"integrator", "supervisor"}),
    ("POST", "/api/v1/campaigns/c1/start", None, {"integrator", "supervisor"}),
    ("POST", "/api/v1/agents/a1/pause", None, {"supervisor", "agent"}),
    ("POST", "/api/v1/agents/a1/ready", None, {"supervisor", "agent"}),
    ("POST", "/api/v1/calls/x1/disposition", {"code": "PAID"}, {"supervisor", "agent"}),
    ("POST", "/api/v1/agents/a1/preview", {"campaign_id": "c1"}, {"supervisor", "agent"}),
    ("POST", "/api/v1/agents/a1/preview/dial", None, {"supervisor", "agent"}),
    ("POST", "/api/v1/agents/a1/preview/skip", None, {"supervisor", "agent"}),
]


async def test_every_role_gets_exactly_its_rights() -> None:
    async with api_env(settings()) as env:
        r = await env.api.post("/api/v1/campaigns", json={"campaign_id": "c1"}, headers=bearer("admin"))
        assert r.status_code == 201
        for method, path, body, allowed in MATRIX:
            for role in TOKENS:
                r = await env.api.request(method, path, json=body, headers=bearer(role))
                if role == "admin" or role in allowed:
                    assert r.status_code not in (401, 403), (method, path, role, r.text)
                else:
                    assert r.status_code == 403, (method, path, role, r.status_code)
                    assert "needs one of" in r.json()["detail"] and "admin" in r.json()["detail"]


async def test_missing_or_wrong_token_is_401_with_the_bearer_challenge() -> None:
    async with api_env(settings()) as env:
        for headers in ({}, {"Authorization": "Bearer nope-nope-nope-nope"}, {"Authorization": "Basic abc"},
                        {"Authorization": f"Bearer {TOKENS['admin']}x"}, {"Authorization": "Bearer "}):
            r = await env.api.get("/api/v1/campaigns", headers=headers)
            assert r.status_code == 401, headers
            assert r.headers["WWW-Authenticate"] == "Bearer"
        assert (await env.api.get("/api/v1/events", headers={})).status_code == 401


async def test_agent_token_acts_for_its_own_agent_only() -> None:
    async with api_env(settings()) as env:
        await make_campaign(env.api, headers=bearer("admin"))
        me = bearer("agent")
        assert (await env.api.post("/api/v1/agents/a1/login", headers=me)).status_code == 202
        assert (await env.api.post("/api/v1/agents/a2/login", headers=me)).status_code == 403
        assert (await env.api.post("/api/v1/agents/a2/pause", headers=me)).status_code == 403
        assert (await env.api.post("/api/v1/agents/a2/logout", headers=me)).status_code == 403
        assert (await env.api.get("/api/v1/agents/a2", headers=me)).status_code == 403
        assert (await env.api.get("/api/v1/agents", headers=me)).status_code == 403
        assert (await env.api.get("/api/v1/agents/a1", headers=me)).status_code in (200, 404)
        # a2 is on a call: a1's token may not post its disposition
        assert (await env.api.post("/api/v1/agents/a2/login", headers=bearer("supervisor"))).status_code == 202
        for _ in range(100):
            agent = env.runtime.core.agents.get("a2")
            if agent is not None and agent.status.value == "ready":
                break
            await asyncio.sleep(0.01)
        agent = env.runtime.core.agents.get("a2")
        assert agent is not None
        agent.call_id = "call-of-a2"  # the state the API reads; the core is not told (no such call exists)
        r = await env.api.post("/api/v1/calls/call-of-a2/disposition", json={"code": "PAID"}, headers=me)
        assert r.status_code == 403 and "a1" in r.text
        r = await env.api.post("/api/v1/calls/call-of-a2/disposition", json={"code": "PAID"},
                               headers=bearer("supervisor"))
        assert r.status_code == 409 and "not over" in r.text  # allowed, but the call is still up


async def test_probes_and_metrics_are_open() -> None:
    async with api_env(settings()) as env:
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            assert (await env.api.get(path)).status_code == 200, path
        spec = (await env.api.get("/openapi.json")).json()
        assert "HTTPBearer" in spec["components"]["securitySchemes"]


async def test_without_tokens_auth_is_off_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="marcador.api.auth")
    async with api_env() as env:
        assert (await env.api.post("/api/v1/campaigns", json={"campaign_id": "c1"})).status_code == 201
        assert (await env.api.get("/api/v1/campaigns")).status_code == 200
    assert sum("auth is OFF" in r.getMessage() for r in caplog.records) == 1


async def test_tokens_never_reach_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with api_env(settings()) as env:
        for role in TOKENS:
            await env.api.get("/api/v1/campaigns", headers=bearer(role))
            await env.api.post("/api/v1/agents/a9/ready", headers=bearer(role))
        await env.api.get("/api/v1/campaigns", headers={"Authorization": "Bearer guessed-token-123456789"})
        await env.api.get("/api/v1/dnc/+573001234567", headers={"Authorization": "Bearer guessed-token-123456789"})
    ours = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]  # not the test's client
    text = " ".join(f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in ours)
    assert "unauthorized request" in text and "forbidden" in text  # the logging happened
    assert "/api/v1/dnc/{number}" in text
    for secret in [*TOKENS.values(), "guessed-token-123456789", "3001234567"]:  # nor a phone number
        assert secret not in text


def test_short_tokens_and_agent_tokens_without_agent_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        ApiToken(name="x", token="short", role="admin")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="agent_id"):
        ApiToken(name="x", token="long-enough-token-123", role="agent")  # type: ignore[arg-type]
