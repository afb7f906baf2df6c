"""The supervisor dashboard: one static page (plain HTML + vanilla JS, no build step) and the DID-health endpoint.

The page itself is open (it holds no data); everything it shows comes from the API with the same bearer tokens,
so a viewer token sees, a supervisor token may also pause/resume. `/` redirects to `/dashboard`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, RedirectResponse

from api.auth import Reader
from dialer.runtime import Runtime

STATIC = Path(__file__).parent / "static"
# Only these files are served (no directory listing, no path from the request ever reaches the filesystem).
ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
_NO_CACHE = {"Cache-Control": "no-cache"}  # an upgraded node serves its new page at once


def dashboard_router(runtime: Runtime) -> APIRouter:
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("dashboard", status_code=307)

    @router.get("/dashboard", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "dashboard.html", media_type="text/html; charset=utf-8", headers=_NO_CACHE)

    @router.get("/dashboard/{asset}", include_in_schema=False)
    async def asset(asset: str) -> FileResponse:
        media = ASSETS.get(asset)
        if media is None:
            raise HTTPException(404, "no such dashboard asset")
        return FileResponse(STATIC / asset, media_type=media, headers=_NO_CACHE)

    @router.get("/api/v1/campaigns/{campaign_id}/dids", tags=["campaigns"])
    async def did_health(campaign_id: str, _: Reader) -> list[dict[str, Any]]:
        """Caller-ID health per DID of the campaign's pool (answer rate, short calls, cap-window counts, rests);
        an empty list when the campaign presents its fixed caller ID."""
        camp = runtime.core.campaigns.get(campaign_id)
        if camp is None:
            if await runtime.store.get_campaign(campaign_id) is None:
                raise HTTPException(404, f"campaign {campaign_id!r} not found")
            return []
        if camp.pool is None:
            return []
        return [dataclasses.asdict(h) for h in camp.pool.health(runtime.clock())]

    return router
