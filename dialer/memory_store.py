"""In-memory store: the embedded default and the simulator's. Single node; leases never expire here
because the process that holds them is the only one that could dial them."""

from __future__ import annotations

import asyncio
import bisect
import heapq
import json
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from dialer.hopper import STATE_VERSION, state_with_callback, state_with_dropped
from dialer.model import Attempt, CampaignSettings, CampaignStatus, Lead, Outcome, StoredCode
from dialer.ports import CampaignChange, FailedWebhook, OutboxEntry, kind_matches

# A waiting lead packed in one tuple: (id, phone or phones, custom field pairs or None, country, zone, amount,
# days past due, segment). A million leads fit in about 40 % less memory than as Lead objects with their dicts.
_Packed = tuple[str, str | tuple[str, ...], tuple[tuple[str, Any], ...] | None, str | None, str | None, float, int,
                str]


def _pack(lead: Lead) -> _Packed:
    phones = lead.phones[0] if len(lead.phones) == 1 else lead.phones
    return (lead.lead_id, phones, tuple(lead.fields.items()) or None, lead.country, lead.timezone,
            lead.amount_due, lead.days_past_due, lead.segment)


def _unpack(campaign_id: str, p: _Packed) -> Lead:
    lead_id, phones, fields, country, zone, amount, days, segment = p
    return Lead(lead_id, campaign_id, (phones,) if isinstance(phones, str) else phones, dict(fields or ()),
                country, zone, amount, days, segment)


@dataclass(slots=True)
class _CampaignLeads:
    pending: dict[str, _Packed] = field(default_factory=dict)
    order: deque[str] = field(default_factory=deque)  # dial order; ids no longer pending are skipped
    leased: dict[str, _Packed] = field(default_factory=dict)
    done: dict[str, str] = field(default_factory=dict)  # lead id → last outcome or 'removed'
    # Handed back with a hopper state (`hand_back_lead`): lead id → that state (JSON, as Redis keeps it); those not
    # dialable yet wait in `sched` (heap of (eligible at, lead id)), pending but not in `order`, until `not_before`.
    states: dict[str, str] = field(default_factory=dict)
    sched: list[tuple[float, str]] = field(default_factory=list)
    not_before: dict[str, float] = field(default_factory=dict)
    # Callbacks asked through the store (`ask_callback`): lead id -> (at, agent id). A pending one keeps its lead in
    # `sched` until `at` and goes with its lease; a leased one waits for the holder (`held_callbacks`).
    asked: dict[str, tuple[float, str | None]] = field(default_factory=dict)
    # Dispositions taken by a node that no longer held the lead (`ask_disposition`): phones dropped of a waiting lead
    # (lead id -> their places in its list), merged into its state at lease; codes kept for a leased lead's holder
    # (`held_dispositions`), applied here if the lead comes back before its holder picked them up.
    drops: dict[str, set[int]] = field(default_factory=dict)
    kept: dict[str, list[StoredCode]] = field(default_factory=dict)


class InMemoryStore:
    def __init__(self) -> None:
        self._campaigns: dict[str, CampaignSettings] = {}
        self._status: dict[str, CampaignStatus] = {}  # campaign id -> status asked (absent: CREATED)
        self._campaign_version = 0
        self._leads: dict[str, _CampaignLeads] = {}
        self._attempts: dict[str, Attempt] = {}
        # (dialed_at, call_id) of every attempt, sorted, and of each campaign's: a page is two bisects and a slice.
        self._dialed: list[tuple[float, str]] = []
        self._dialed_in: dict[str, list[tuple[float, str]]] = {}
        self._lock = asyncio.Lock()
        self._kept_hooks = _KeptWebhooks()  # webhook events kept (`keep_failed_webhook`)
        self._outbox: dict[tuple[str, str], OutboxEntry] = {}  # webhook events queued (`outbox_write`)

    async def ping(self) -> bool:
        return True

    async def save_campaign(self, settings: CampaignSettings) -> None:
        self._campaigns[settings.campaign_id] = replace(settings)
        self._leads.setdefault(settings.campaign_id, _CampaignLeads())
        self._campaign_version += 1

    async def create_campaign(self, settings: CampaignSettings) -> bool:
        if settings.campaign_id in self._campaigns:  # no await between the check and the write: atomic here
            return False
        await self.save_campaign(settings)
        return True

    async def get_campaign(self, campaign_id: str) -> CampaignSettings | None:
        found = self._campaigns.get(campaign_id)
        return replace(found) if found else None

    async def update_campaign(self, campaign_id: str,
                              change: CampaignChange) -> tuple[CampaignSettings, CampaignSettings] | None:
        found = self._campaigns.get(campaign_id)  # no await between this read and the write: atomic here
        if found is None:
            return None
        before = replace(found)
        after = change(replace(found))
        self._campaigns[campaign_id] = replace(after)
        self._campaign_version += 1
        return before, replace(after)

    async def list_campaigns(self) -> list[CampaignSettings]:
        return [replace(c) for c in self._campaigns.values()]

    async def set_campaign_status(self, campaign_id: str, status: CampaignStatus, *,
                                  unless: CampaignStatus | None = None) -> CampaignStatus | None:
        if campaign_id not in self._campaigns:
            return None
        before = self._status.get(campaign_id, CampaignStatus.CREATED)
        if before is unless:
            return before
        self._status[campaign_id] = CampaignStatus(status)
        self._campaign_version += 1
        return before

    async def campaign_status(self, campaign_id: str) -> CampaignStatus | None:
        if campaign_id not in self._campaigns:
            return None
        return self._status.get(campaign_id, CampaignStatus.CREATED)

    async def campaign_statuses(self) -> dict[str, CampaignStatus]:
        return {cid: self._status.get(cid, CampaignStatus.CREATED) for cid in self._campaigns}

    async def campaign_version(self) -> int:
        return self._campaign_version

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
            bucket.pending[lid] = _pack(lead)
            bucket.order.append(lid)
            added += 1
        return added

    async def lease_leads(self, campaign_id: str, count: int, now: float) -> list[Lead]:
        return (await self.lease_leads_with_states(campaign_id, count, now))[0]

    def _lease(self, campaign_id: str, bucket: _CampaignLeads,
               lead_ids: Sequence[str]) -> tuple[list[Lead], dict[str, dict[str, Any]]]:
        """Lease these pending leads, with their kept states and any asked callback merged in (and forgotten)."""
        out: list[Lead] = []
        states: dict[str, dict[str, Any]] = {}
        for lid in lead_ids:
            packed = bucket.pending.pop(lid)
            bucket.not_before.pop(lid, None)
            bucket.leased[lid] = packed
            out.append(_unpack(campaign_id, packed))
            kept = bucket.states.get(lid)
            state = json.loads(kept) if kept is not None else None
            asked = bucket.asked.pop(lid, None)
            if asked is not None:
                state = state_with_callback(state, *asked)
            dropped = bucket.drops.pop(lid, None)
            if dropped:
                state = state_with_dropped(state, dropped)
            if state is not None:
                states[lid] = state
        return out, states

    async def lease_leads_with_states(self, campaign_id: str, count: int,
                                      now: float) -> tuple[list[Lead], dict[str, dict[str, Any]]]:
        async with self._lock:
            bucket = self._bucket(campaign_id)
            if bucket.sched:
                _promote(bucket, now)
            picked: list[str] = []
            while bucket.order and len(picked) < count:
                lid = bucket.order.popleft()
                if lid not in bucket.pending or lid in bucket.not_before:
                    continue  # removed, leased already from a returned copy of its id, or waiting for its time
                picked.append(lid)
            return self._lease(campaign_id, bucket, picked)

    async def lease_due_callbacks(self, campaign_id: str, count: int,
                                  now: float) -> tuple[list[Lead], dict[str, dict[str, Any]]]:
        async with self._lock:
            bucket = self._bucket(campaign_id)
            due = sorted((at, lid) for lid, (at, _) in bucket.asked.items()
                         if lid in bucket.pending and at <= now and bucket.not_before.get(lid, at) <= now)
            return self._lease(campaign_id, bucket, [lid for _, lid in due[:max(count, 0)]])

    async def release_lead(self, campaign_id: str, lead_id: str, outcome: Outcome, final: bool, now: float) -> None:
        bucket = self._bucket(campaign_id)
        packed = bucket.leased.pop(lead_id, None)
        if packed is None:
            return
        if final or outcome is not Outcome.LOST:
            # The core's hopper recycles a lead it keeps; what it hands back with an outcome is done.
            bucket.done[lead_id] = outcome.value
            bucket.states.pop(lead_id, None)
            bucket.asked.pop(lead_id, None)
            bucket.drops.pop(lead_id, None)
            bucket.kept.pop(lead_id, None)
        else:
            bucket.pending[lead_id] = packed
            if not _settle_kept(bucket, lead_id):
                _back(bucket, lead_id, None, now)

    async def hand_back_lead(self, campaign_id: str, lead_id: str, state: Mapping[str, Any],
                             eligible_at: float | None, now: float) -> None:
        bucket = self._bucket(campaign_id)
        packed = bucket.leased.pop(lead_id, None)
        if packed is None:
            return
        bucket.states[lead_id] = json.dumps(state, separators=(",", ":"))
        bucket.pending[lead_id] = packed
        if lead_id not in bucket.asked and state.get("cb") is not None:  # kept as asked: listed, fetched when due
            bucket.asked[lead_id] = (float(state["cb"]), state.get("ag"))
        if not _settle_kept(bucket, lead_id):
            _back(bucket, lead_id, eligible_at, now)

    async def has_lead(self, campaign_id: str, lead_id: str) -> bool:
        """The lead was loaded into the campaign (waiting, leased or done)."""
        b = self._bucket(campaign_id)
        return lead_id in b.pending or lead_id in b.leased or lead_id in b.done

    async def lead(self, campaign_id: str, lead_id: str) -> Lead | None:
        b = self._bucket(campaign_id)
        packed = b.pending.get(lead_id) or b.leased.get(lead_id)
        return None if packed is None else _unpack(campaign_id, packed)

    async def remove_lead(self, campaign_id: str, lead_id: str) -> bool:
        bucket = self._bucket(campaign_id)
        if bucket.pending.pop(lead_id, None) is not None:
            bucket.done[lead_id] = "removed"
            bucket.states.pop(lead_id, None)
            bucket.not_before.pop(lead_id, None)
            bucket.asked.pop(lead_id, None)
            bucket.drops.pop(lead_id, None)
            return True
        return False

    async def ask_callback(self, campaign_id: str, lead_id: str, at: float, agent_id: str | None) -> str:
        bucket = self._bucket(campaign_id)
        if lead_id in bucket.done:
            return "removed" if bucket.done[lead_id] == "removed" else "done"
        if lead_id in bucket.leased:
            bucket.asked[lead_id] = (at, agent_id)
            return "leased"
        if lead_id not in bucket.pending:
            return "unknown"
        bucket.asked[lead_id] = (at, agent_id)
        bucket.not_before[lead_id] = at  # out of every lease until then (its `order` entry is skipped)
        heapq.heappush(bucket.sched, (at, lead_id))
        return "pending"

    async def ask_disposition(self, campaign_id: str, lead_id: str, code: StoredCode) -> str:
        bucket = self._bucket(campaign_id)
        if lead_id in bucket.done:
            return "removed" if bucket.done[lead_id] == "removed" else "done"
        if lead_id in bucket.leased:
            kept = bucket.kept.setdefault(lead_id, [])
            if code not in kept:  # asked again (a retried write): once
                kept.append(code)
            return "leased"
        if lead_id not in bucket.pending:
            return "unknown"
        bucket.kept.setdefault(lead_id, []).append(code)
        return "ended" if _settle_kept(bucket, lead_id) else "pending"

    async def held_dispositions(self, campaign_id: str) -> dict[str, tuple[StoredCode, ...]]:
        bucket = self._bucket(campaign_id)
        return {lid: tuple(codes) for lid, codes in bucket.kept.items() if lid in bucket.leased and codes}

    async def clear_dispositions(self, campaign_id: str, applied: Mapping[str, Sequence[StoredCode]]) -> int:
        bucket = self._bucket(campaign_id)
        gone = [lid for lid, codes in applied.items() if lid in bucket.kept and bucket.kept[lid] == list(codes)]
        for lid in gone:
            del bucket.kept[lid]
        return len(gone)

    async def held_callbacks(self, campaign_id: str) -> dict[str, tuple[float, str | None]]:
        bucket = self._bucket(campaign_id)
        return {lid: asked for lid, asked in bucket.asked.items() if lid in bucket.leased}

    async def clear_callbacks(self, campaign_id: str, applied: Mapping[str, tuple[float, str | None]]) -> int:
        bucket = self._bucket(campaign_id)
        gone = [lid for lid, asked in applied.items() if bucket.asked.get(lid) == tuple(asked)]
        for lid in gone:
            del bucket.asked[lid]
        return len(gone)

    async def next_callback_at(self, campaign_id: str) -> float | None:
        bucket = self._bucket(campaign_id)
        return min((max(at, bucket.not_before.get(lid, at)) for lid, (at, _) in bucket.asked.items()
                    if lid in bucket.pending), default=None)

    async def publish_callbacks(self, campaign_id: str, rows: Sequence[tuple[str, float, str | None]],
                                now: float) -> None:
        """One node in memory: its own hopper is every callback it holds; nothing to publish."""

    async def callbacks(self, campaign_id: str, now: float) -> list[tuple[str, float, str | None]]:
        bucket = self._bucket(campaign_id)
        return sorted(((lid, at, agent) for lid, (at, agent) in bucket.asked.items()), key=lambda r: (r[1], r[0]))

    async def record_dial(self, attempt: Attempt) -> bool:
        await self.record_attempt(attempt)  # one process: its leases never expire under it
        return True

    async def record_attempt(self, attempt: Attempt) -> None:
        old = self._attempts.get(attempt.call_id)
        if old is None or (old.dialed_at, old.campaign_id) != (attempt.dialed_at, attempt.campaign_id):
            if old is not None:  # an upsert that moved it (never in practice): out of its old place first
                for keys in (self._dialed, self._dialed_in[old.campaign_id]):
                    del keys[bisect.bisect_left(keys, (old.dialed_at, old.call_id))]
            key = (attempt.dialed_at, attempt.call_id)
            bisect.insort(self._dialed, key)  # dials come in time order: near the end, cheap
            bisect.insort(self._dialed_in.setdefault(attempt.campaign_id, []), key)
        self._attempts[attempt.call_id] = replace(attempt)

    async def attempt(self, call_id: str) -> Attempt | None:
        found = self._attempts.get(call_id)
        return None if found is None else found.copy()

    async def attempts(self, campaign_id: str | None = None) -> list[Attempt]:
        return [replace(a) for a in self._attempts.values() if campaign_id in (None, a.campaign_id)]

    async def attempts_page(self, campaign_id: str | None = None, *, after: tuple[float, str] | None = None,
                            since: float | None = None, until: float | None = None,
                            limit: int = 100) -> list[Attempt]:
        keys = self._dialed if campaign_id is None else self._dialed_in.get(campaign_id, [])
        start = 0 if after is None else bisect.bisect_right(keys, after)
        if since is not None:
            start = max(start, bisect.bisect_left(keys, (since, "")))  # "" sorts before every call id
        end = len(keys) if until is None else bisect.bisect_left(keys, (until, ""))
        return [self._attempts[call_id].copy() for _, call_id in keys[start:min(end, start + max(limit, 0))]]

    async def lead_counts(self, campaign_id: str) -> dict[str, int]:
        bucket = self._bucket(campaign_id)
        return {"pending": len(bucket.pending), "leased": len(bucket.leased), "done": len(bucket.done)}

    # ------------------------------------------------------------------ webhook events kept (given up or dropped)

    async def keep_failed_webhook(self, hook: str, kind: str, delivery: str, event: str, reason: str, at: float,
                                  cap: int) -> tuple[int, int]:
        return self._keep_webhook(hook, kind, delivery, event, reason, at, cap, again=True)

    def _keep_webhook(self, hook: str, kind: str, delivery: str, event: str, reason: str, at: float, cap: int, *,
                      again: bool) -> tuple[int, int]:
        kept = self._kept_hooks
        known = kept.by_delivery.get((hook, delivery))
        old = kept.rows.get(known) if known is not None else None
        if old is not None:  # kept again (a redelivery given up again): the same entry, one more try
            if again:
                kept.rows[old.id] = replace(old, event=event, reason=reason, at=at, tries=old.tries + 1)
            return old.id, 0
        kept.seq += 1
        kept.rows[kept.seq] = FailedWebhook(kept.seq, hook, kind, delivery, event, reason, at, 1)
        kept.by_delivery[(hook, delivery)] = kept.seq
        dropped = 0
        while len(kept.rows) > max(cap, 1):  # ids rise with insertion: the dict's first is the oldest
            gone = kept.rows.pop(next(iter(kept.rows)))
            del kept.by_delivery[(gone.hook, gone.delivery)]
            dropped += 1
        return kept.seq, dropped

    async def failed_webhooks(self, after: int = 0, limit: int = 100, *, hook: str | None = None,
                              kinds: Sequence[str] = ()) -> list[FailedWebhook]:
        out: list[FailedWebhook] = []
        for row in self._kept_hooks.rows.values():
            if len(out) >= limit:
                break
            if row.id > after and hook in (None, row.hook) and kind_matches(row.kind, kinds):
                out.append(row)
        return out

    async def get_failed_webhooks(self, ids: Sequence[int]) -> list[FailedWebhook]:
        rows = self._kept_hooks.rows
        return [rows[i] for i in sorted(set(ids)) if i in rows]

    async def drop_failed_webhooks(self, ids: Sequence[int]) -> int:
        kept = self._kept_hooks
        dropped = 0
        for i in set(ids):
            gone = kept.rows.pop(i, None)
            if gone is not None:
                del kept.by_delivery[(gone.hook, gone.delivery)]
                dropped += 1
        return dropped

    async def failed_webhook_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self._kept_hooks.rows.values():
            counts[row.hook] = counts.get(row.hook, 0) + 1
        return counts

    # ------------------------------------------------------------------ webhook outbox (this process's only)

    async def outbox_write(self, puts: Sequence[OutboxEntry], dones: Sequence[tuple[str, str]]) -> None:
        for e in puts:
            self._outbox[(e.hook, e.delivery)] = e
        for key in dones:
            self._outbox.pop(key, None)

    async def outbox_orphans(self, now: float) -> list[str]:
        return []  # one process's store: no other node shares it

    async def outbox_claim(self, node_id: str | None, reason: str, at: float,
                           cap: int) -> tuple[list[FailedWebhook], int]:
        if node_id is not None:
            return [], 0
        entries = sorted(self._outbox.values(), key=lambda e: e.order)
        self._outbox.clear()
        ids, dropped = [], 0
        for e in entries:
            kept_id, n = self._keep_webhook(e.hook, e.kind, e.delivery, e.event, reason, at, cap, again=False)
            ids.append(kept_id)
            dropped += n
        return await self.get_failed_webhooks(ids), dropped


@dataclass(slots=True)
class _KeptWebhooks:
    """Webhook events kept, by id (insertion order is id order); (hook, delivery id) -> id, so one is kept once."""

    seq: int = 0
    rows: dict[int, FailedWebhook] = field(default_factory=dict)
    by_delivery: dict[tuple[str, str], int] = field(default_factory=dict)


def _back(bucket: _CampaignLeads, lead_id: str, eligible_at: float | None, now: float) -> None:
    """A lead back to pending: out of reach until its asked callback if it has one, else until `eligible_at`."""
    asked = bucket.asked.get(lead_id)
    if asked is not None:
        eligible_at = asked[0]
    if eligible_at is None or eligible_at <= now:
        bucket.order.appendleft(lead_id)  # it was next in line: keep it first
    else:
        bucket.not_before[lead_id] = eligible_at
        heapq.heappush(bucket.sched, (eligible_at, lead_id))


def _settle_kept(bucket: _CampaignLeads, lead_id: str) -> bool:
    """A lead waiting in the store (pending) takes the codes kept for it (`ask_disposition`): a final one ends it,
    a dropped phone joins its dropped ones, and a lead with no usable phone left ends. True if it ended (done, with
    the code's outcome; its state, callback and drops forgotten)."""
    codes = bucket.kept.pop(lead_id, None)
    if not codes:
        return False
    phones = _unpack("", bucket.pending[lead_id]).phones
    dropped = bucket.drops.setdefault(lead_id, set())
    ended: StoredCode | None = next((c for c in codes if c.final), None)
    if ended is None:
        for c in codes:
            if c.drop and c.number in phones:
                dropped.add(phones.index(c.number))
        kept = json.loads(bucket.states.get(lead_id) or "null")
        before = kept.get("d", ()) if isinstance(kept, dict) and kept.get("v") == STATE_VERSION else ()
        if all(i in dropped or i in before for i in range(len(phones))):
            ended = codes[-1]
    if ended is None:
        if not dropped:
            del bucket.drops[lead_id]
        return False
    del bucket.pending[lead_id]
    bucket.done[lead_id] = ended.outcome.value
    for kept_of in (bucket.states, bucket.not_before, bucket.asked, bucket.drops):
        kept_of.pop(lead_id, None)
    return True


def _promote(bucket: _CampaignLeads, now: float) -> None:
    """Leads handed back with a later eligible time that are due by `now` join the front of the line, the earliest
    first (Redis puts them back at their old place: ahead of every lead loaded after them)."""
    due: list[str] = []
    while bucket.sched and bucket.sched[0][0] <= now:
        at, lead_id = heapq.heappop(bucket.sched)
        if bucket.not_before.get(lead_id) == at:  # else removed, or handed back again since
            del bucket.not_before[lead_id]
            due.append(lead_id)
    bucket.order.extendleft(reversed(due))
