"""The REST API (FastAPI): campaigns, leads, control, stats, agents, health and metrics."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, FastAPI, HTTPException, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.metrics import render_metrics
from dialer.events import AgentLogin, AgentLogout, AgentState, CampaignControl
from dialer.model import AgentStatus, CampaignSettings, Lead
from dialer.runtime import Runtime
from pacing.registry import STRATEGIES

_PHONE_CHARS = re.compile(r"[\s\-().]")
_PHONE = re.compile(r"^\+?[0-9]{3,20}$")
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class CampaignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    campaign_id: str = Field(pattern=_ID.pattern, description="stable id, letters/digits/-/_")
    name: str = ""
    strategy: str = Field("progressive", description="pacing strategy")
    abandon_target: float = Field(0.03, gt=0, le=0.2, description="abandoned / live answers the pacer holds under")
    abandon_threshold_s: float = Field(2.0, ge=0.5, le=10, description="seconds a live answer may wait for an agent")
    ring_timeout_s: float = Field(25.0, ge=15, le=120, description="no-answer timeout (≥ 15 s, TSR)")
    wrapup_s: float = Field(5.0, ge=0, le=3600, description="wrap-up timeout when no disposition is posted")
    caller_id: str = Field("Marcador <1000>", description="caller id presented")
    max_lines: int = Field(500, ge=1, le=10000)
    max_lines_per_agent: float = Field(4.0, ge=1, le=20)
    max_calls_per_s: float = Field(50.0, gt=0, le=1000)

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, v: str) -> str:
        if v not in STRATEGIES:
            raise ValueError(f"unknown strategy {v!r}; known: {', '.join(sorted(STRATEGIES))}")
        return v

    def settings(self) -> CampaignSettings:
        return CampaignSettings(**self.model_dump())


class CampaignOut(CampaignIn):
    status: str


class LeadIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    lead_id: str
    phone: str


class RejectedRow(BaseModel):
    row: int = Field(description="1-based position in the upload")
    field: str
    reason: str


class LeadsResult(BaseModel):
    accepted: int = Field(description="leads stored by this upload")
    duplicates: int = Field(description="rows whose lead_id the campaign already had")
    rejected: list[RejectedRow]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, bool] = {}


def normalise_phone(raw: str) -> str:
    cleaned = _PHONE_CHARS.sub("", raw)
    if not _PHONE.match(cleaned):
        raise ValueError(f"not a dialable number: {raw!r}")
    return cleaned


def parse_leads(campaign_id: str, rows: list[dict[str, Any]]) -> tuple[list[Lead], list[RejectedRow]]:
    """Validate every row on its own: good rows are kept whatever the bad ones hold."""
    leads: list[Lead] = []
    rejected: list[RejectedRow] = []
    seen: set[str] = set()
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            rejected.append(RejectedRow(row=i, field="-", reason="a lead must be a JSON object"))
            continue
        lead_id = str(row.get("lead_id", "")).strip()
        if not lead_id or not _ID.match(lead_id):
            rejected.append(RejectedRow(row=i, field="lead_id", reason="required; letters, digits, - and _ (≤ 64)"))
            continue
        if lead_id in seen:
            rejected.append(RejectedRow(row=i, field="lead_id", reason=f"{lead_id} appears twice in this upload"))
            continue
        try:
            phone = normalise_phone(str(row.get("phone", "")))
        except ValueError as exc:
            rejected.append(RejectedRow(row=i, field="phone", reason=str(exc)))
            continue
        seen.add(lead_id)
        extra = {k: v for k, v in row.items() if k not in ("lead_id", "phone")}
        leads.append(Lead(lead_id=lead_id, campaign_id=campaign_id, phones=(phone,), fields=extra))
    return leads, rejected


def create_app(runtime: Runtime) -> FastAPI:
    app = FastAPI(title="Marcador", version="0.1.0", description="Predictive dialer engine beside Asterisk.")
    v1 = APIRouter(prefix="/api/v1")

    def _campaign_out(settings: CampaignSettings) -> CampaignOut:
        camp = runtime.core.campaigns.get(settings.campaign_id)
        status = camp.status.value if camp else "created"
        data = {k: getattr(settings, k) for k in CampaignIn.model_fields}
        return CampaignOut(**data, status=status)

    async def _settings(campaign_id: str) -> CampaignSettings:
        found = await runtime.store.get_campaign(campaign_id)
        if found is None:
            raise HTTPException(404, f"campaign {campaign_id!r} not found")
        return found

    @v1.post("/campaigns", status_code=201, response_model=CampaignOut)
    async def create_campaign(body: CampaignIn) -> CampaignOut:
        if await runtime.store.get_campaign(body.campaign_id) is not None:
            raise HTTPException(409, f"campaign {body.campaign_id!r} already exists")
        await runtime.create_campaign(body.settings())
        return _campaign_out(body.settings())

    @v1.get("/campaigns", response_model=list[CampaignOut])
    async def list_campaigns() -> list[CampaignOut]:
        return [_campaign_out(s) for s in await runtime.store.list_campaigns()]

    @v1.get("/campaigns/{campaign_id}", response_model=CampaignOut)
    async def read_campaign(campaign_id: str) -> CampaignOut:
        return _campaign_out(await _settings(campaign_id))

    @v1.post("/campaigns/{campaign_id}/leads", response_model=LeadsResult)
    async def add_leads(campaign_id: str, rows: Annotated[list[Any], Body()]) -> LeadsResult:
        await _settings(campaign_id)
        leads, rejected = parse_leads(campaign_id, rows)
        added = await runtime.add_leads(campaign_id, leads)
        return LeadsResult(accepted=added, duplicates=len(leads) - added, rejected=rejected)

    @v1.delete("/campaigns/{campaign_id}/leads/{lead_id}", status_code=204)
    async def remove_lead(campaign_id: str, lead_id: str) -> Response:
        await _settings(campaign_id)
        if not await runtime.store.remove_lead(campaign_id, lead_id):
            raise HTTPException(404, f"lead {lead_id!r} is not waiting to be dialed in {campaign_id!r}")
        return Response(status_code=204)

    def _control(action: Literal["start", "pause", "stop"]) -> Any:
        async def control(campaign_id: str) -> dict[str, str]:
            await _settings(campaign_id)
            runtime.submit(CampaignControl(campaign_id, action))
            return {"campaign_id": campaign_id, "requested": action}

        control.__name__ = f"{action}_campaign"
        return control

    for action in ("start", "pause", "stop"):
        v1.add_api_route(f"/campaigns/{{campaign_id}}/{action}", _control(action), methods=["POST"])  # type: ignore[arg-type]

    @v1.get("/campaigns/{campaign_id}/stats")
    async def campaign_stats(campaign_id: str) -> dict[str, Any]:
        await _settings(campaign_id)
        stats = runtime.stats(campaign_id)
        stats["leads"] = await runtime.store.lead_counts(campaign_id)
        return stats

    @v1.get("/campaigns/{campaign_id}/attempts")
    async def campaign_attempts(campaign_id: str) -> list[dict[str, Any]]:
        await _settings(campaign_id)
        return [a.as_dict() for a in await runtime.attempts(campaign_id)]

    @v1.get("/agents")
    async def list_agents() -> list[dict[str, Any]]:
        return [
            {"agent_id": a.agent_id, "state": a.status.value, "since": a.since, "reason": a.reason,
             "call_id": a.call_id, "campaigns": sorted(a.campaigns)}
            for a in runtime.core.agents.all()
        ]

    class AgentLoginIn(BaseModel):
        campaigns: list[str] = []

    @v1.post("/agents/{agent_id}/login", status_code=202)
    async def agent_login(agent_id: str, body: AgentLoginIn | None = None) -> dict[str, str]:
        if not _ID.match(agent_id):
            raise HTTPException(422, "agent_id: letters, digits, - and _ only")
        runtime.submit(AgentLogin(agent_id, frozenset(body.campaigns if body else ())))
        return {"agent_id": agent_id, "requested": "login"}

    @v1.post("/agents/{agent_id}/logout", status_code=202)
    async def agent_logout(agent_id: str) -> dict[str, str]:
        runtime.submit(AgentLogout(agent_id))
        return {"agent_id": agent_id, "requested": "logout"}

    @v1.post("/agents/{agent_id}/ready", status_code=202)
    async def agent_ready(agent_id: str) -> dict[str, str]:
        runtime.submit(AgentState(agent_id, AgentStatus.READY))
        return {"agent_id": agent_id, "requested": "ready"}

    class PauseIn(BaseModel):
        reason: str = "paused"

    @v1.post("/agents/{agent_id}/pause", status_code=202)
    async def agent_pause(agent_id: str, body: PauseIn | None = None) -> dict[str, str]:
        runtime.submit(AgentState(agent_id, AgentStatus.PAUSED, body.reason if body else "paused"))
        return {"agent_id": agent_id, "requested": "pause"}

    app.include_router(v1)

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        return Health(status="ok")

    @app.get("/readyz", response_model=Health)
    async def readyz(response: Response) -> Health:
        try:
            store_ok = await runtime.store.ping()
        except Exception:
            store_ok = False
        checks = {"pbx": runtime.telephony.ready, "store": store_ok}
        ok = all(checks.values())
        response.status_code = 200 if ok else 503
        return Health(status="ok" if ok else "unavailable", checks=checks)

    @app.get("/metrics")
    async def metrics() -> Response:
        body, content_type = render_metrics(runtime)
        return Response(content=body, media_type=content_type)

    return app
