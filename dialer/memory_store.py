"""In-memory store: the embedded default and the simulator's. Single node; leases never expire here
because the process that holds them is the only one that could dial them."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from dialer.model import Attempt, CampaignSettings, Lead, Outcome


@dataclass(slots=True)
class _CampaignLeads:
    pending: OrderedDict[str, Lead] = field(default_factory=OrderedDict)  # dial order = insertion order
    leased: dict[str, Lead] = field(default_factory=dict)
    done: dict[str, str] = field(default_factory=dict)  # lead id → last outcome or 'removed'


class InMemoryStore:
    def __init__(self) -> None:
        self._campaigns: dict[str, CampaignSettings] = {}
        self._leads: dict[str, _CampaignLeads] = {}
        self._attempts: dict[str, Attempt] = {}
        self._lock = asyncio.Lock()

    async def ping(self) -> bool:
        return True

    async def save_campaign(self, settings: CampaignSettings) -> None:
        self._campaigns[settings.campaign_id] = replace(settings)
        self._leads.setdefault(settings.campaign_id, _CampaignLeads())

    async def get_campaign(self, campaign_id: str) -> CampaignSettings | None:
        found = self._campaigns.get(campaign_id)
        return replace(found) if found else None

    async def list_campaigns(self) -> list[CampaignSettings]:
        return [replace(c) for c in self._campaigns.values()]

    def _bucket(self, campaign_id: str) -> _CampaignLeads:
        try:
            return self._leads[campaign_id]
        except KeyError:
            raise KeyError(f"campaign_id: unknown campaign {campaign_id!r}") from None

    async def add_leads(self, campaign_id: str, leads: Sequence[Lead]) -> int:
        bucket = self._bucket(campaign_id)
        added = 0
        for lead in leads:
            lid = lead.lead_id
            if lid in bucket.pending or lid in bucket.leased or lid in bucket.done:
                continue
            bucket.pending[lid] = lead
            added += 1
        return added

    async def lease_leads(self, campaign_id: str, count: int, now: float) -> list[Lead]:
        async with self._lock:
            bucket = self._bucket(campaign_id)
            out: list[Lead] = []
            while bucket.pending and len(out) < count:
                lid, lead = bucket.pending.popitem(last=False)
                bucket.leased[lid] = lead
                out.append(lead)
            return out

    async def release_lead(self, campaign_id: str, lead_id: str, outcome: Outcome, final: bool, now: float) -> None:
        bucket = self._bucket(campaign_id)
        lead = bucket.leased.pop(lead_id, None)
        if lead is None:
            return
        if final or outcome is not Outcome.LOST:
            # Recycling rules arrive with the hopper (issue 4); until then every attempted lead is done.
            bucket.done[lead_id] = outcome.value
        else:
            bucket.pending[lead_id] = lead
            bucket.pending.move_to_end(lead_id, last=False)  # it was next in line: keep it first

    async def remove_lead(self, campaign_id: str, lead_id: str) -> bool:
        bucket = self._bucket(campaign_id)
        if bucket.pending.pop(lead_id, None) is not None:
            bucket.done[lead_id] = "removed"
            return True
        return False

    async def record_attempt(self, attempt: Attempt) -> None:
        self._attempts[attempt.call_id] = replace(attempt)

    async def attempts(self, campaign_id: str | None = None) -> list[Attempt]:
        return [replace(a) for a in self._attempts.values() if campaign_id in (None, a.campaign_id)]

    async def lead_counts(self, campaign_id: str) -> dict[str, int]:
        bucket = self._bucket(campaign_id)
        return {"pending": len(bucket.pending), "leased": len(bucket.leased), "done": len(bucket.done)}
