"""Ports: what the asyncio runtime needs from telephony and storage (typing Protocols).

The runtime never imports `ami_bridge`, `sim` or `api`; the CLI wires concrete parts to these ports.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from dialer.commands import (
    ConnectToAgent,
    Hangup,
    HangupAgentLeg,
    Originate,
    OriginateAgentLeg,
    PlayAbandonMessage,
)
from dialer.events import Event
from dialer.model import Attempt, CampaignSettings, CampaignStatus, Lead, Outcome, StoredCode

TelephonyCommand = Originate | ConnectToAgent | PlayAbandonMessage | Hangup | OriginateAgentLeg | HangupAgentLeg
TELEPHONY_COMMANDS = (Originate, ConnectToAgent, PlayAbandonMessage, Hangup, OriginateAgentLeg, HangupAgentLeg)

EventSink = Callable[[Event], None]

# A campaign edit: the stored settings in, the settings to store out (it may raise to refuse the edit).
CampaignChange = Callable[[CampaignSettings], CampaignSettings]


class CampaignBusy(Exception):
    """A campaign edit found the stored definition changed by other writers at every try: nothing written."""


class Telephony(Protocol):
    """A PBX seen through the core's words. Implemented by `ami_bridge` (real Asterisk or simulated PBX)."""

    @property
    def ready(self) -> bool:
        """Logged in and able to take commands now."""
        ...

    async def start(self, sink: EventSink) -> None:
        """Connect and log in; from then on translated events go to `sink` (which never blocks)."""
        ...

    def execute(self, cmd: TelephonyCommand) -> None:
        """Carry a command out without blocking the caller. An Originate is sent at most once, ever:
        if it cannot be sent, or its fate is unknown, the bridge reports `CallFailed`/`CallEnded`."""
        ...

    async def close(self) -> None: ...


class Store(Protocol):
    """Campaigns, leads (leased for dialing), attempts. In-memory and Redis backends."""

    async def ping(self) -> bool: ...

    async def save_campaign(self, settings: CampaignSettings) -> None: ...

    async def create_campaign(self, settings: CampaignSettings) -> bool:
        """Save a new campaign; False (and nothing written) if the id is taken, even by a create at the same time."""
        ...

    async def get_campaign(self, campaign_id: str) -> CampaignSettings | None: ...

    async def update_campaign(self, campaign_id: str,
                              change: CampaignChange) -> tuple[CampaignSettings, CampaignSettings] | None:
        """Read, change and write one campaign atomically, across nodes: `change(stored)` is written only if the
        definition is still the one it was given (else it is called again on the newer one). Returns (before,
        after), None (nothing written) if there is no such campaign; an exception `change` raises goes to the
        caller, nothing written. `CampaignBusy` if other writers changed it at every try."""
        ...

    async def list_campaigns(self) -> list[CampaignSettings]: ...

    async def set_campaign_status(self, campaign_id: str, status: CampaignStatus, *,
                                  unless: CampaignStatus | None = None) -> CampaignStatus | None:
        """Keep the status asked of the campaign (start, pause, stop through any node's API): every node's runtime
        brings its own core to it. Returns the status kept before (CREATED if none was), None (nothing written)
        if there is no such campaign. Nothing is written either if the status kept is `unless` (checked and
        written in one step: a pause never lands over a stop made at the same moment through another node).
        Moves `campaign_version` once written."""
        ...

    async def campaign_status(self, campaign_id: str) -> CampaignStatus | None:
        """The status kept for the campaign (CREATED if none was ever asked), None if there is no such campaign."""
        ...

    async def campaign_statuses(self) -> dict[str, CampaignStatus]:
        """Every campaign's kept status (CREATED if none was ever asked)."""
        ...

    async def campaign_version(self) -> int:
        """A counter moved after every campaign create, edit (update_campaign) and status change has been written:
        a node that reads a new version, then the campaigns, reads that change."""
        ...

    async def add_leads(self, campaign_id: str, leads: Sequence[Lead]) -> int:
        """Add leads; a lead id already present in the campaign is left as it is. Returns how many were new."""
        ...

    async def lease_leads(self, campaign_id: str, count: int, now: float) -> list[Lead]:
        """Take up to `count` dialable leads; a leased lead is given to nobody else until released."""
        ...

    async def release_lead(self, campaign_id: str, lead_id: str, outcome: Outcome, final: bool, now: float) -> None:
        """End the lease: a final lead (or one with an outcome) is done, and what was kept of it goes; a lead lost
        track of goes back in line at once (with whatever hopper state the store kept of it)."""
        ...

    async def hand_back_lead(self, campaign_id: str, lead_id: str, state: Mapping[str, Any],
                             eligible_at: float | None, now: float) -> None:
        """End the lease of a lead a node hands back not final (campaign stopped, node leaving), keeping its hopper
        state (`Hopper.handoff_state`) for whichever node leases it next; no node gets it before `eligible_at`
        (None or past: at once, back at its place in line)."""
        ...

    async def lease_leads_with_states(self, campaign_id: str, count: int,
                                      now: float) -> tuple[list[Lead], dict[str, dict[str, Any]]]:
        """`lease_leads`, and the hopper state kept of each leased lead that has one (lead id -> state); a callback
        asked for the lead while it waited in the store (`ask_callback`), and phones dropped for it
        (`ask_disposition`), are merged into its state, and forgotten."""
        ...

    async def remove_lead(self, campaign_id: str, lead_id: str) -> bool: ...

    async def lead(self, campaign_id: str, lead_id: str) -> Lead | None:
        """The lead as it was loaded (its phones, zone, fields), wherever it is now; None if it is not in the
        campaign (or, in memory, no longer waiting or leased)."""
        ...

    # Callbacks asked through the API for a lead no hopper of this node holds: kept in the store, so every node
    # sees them, a restart loses none, and no node dials the lead before its time.

    async def ask_callback(self, campaign_id: str, lead_id: str, at: float, agent_id: str | None) -> str:
        """Keep a callback asked for a lead: "pending" (the lead waits in the store, out of every lease, until `at`;
        whichever node leases it then takes the callback in its state), "leased" (a node holds it: kept until that
        node picks it up, `held_callbacks`); or, nothing written, "done", "removed" or "unknown" (no such lead).
        A callback asked again replaces the one kept. KeyError for an unknown campaign."""
        ...

    async def held_callbacks(self, campaign_id: str) -> dict[str, tuple[float, str | None]]:
        """Callbacks asked for leads this node holds (lead id -> (at, agent id or None)), for its core to apply;
        then `clear_callbacks`."""
        ...

    async def clear_callbacks(self, campaign_id: str, applied: Mapping[str, tuple[float, str | None]]) -> int:
        """Forget asked callbacks a holder applied, each only if it is still the one given (one asked again
        meanwhile stays). Returns how many were forgotten."""
        ...

    # Dispositions taken by a node whose hopper no longer holds the lead (a late code after the lead was handed back):
    # kept in the store like asked callbacks, so the code takes effect wherever the lead is.

    async def ask_disposition(self, campaign_id: str, lead_id: str, code: StoredCode) -> str:
        """Apply a disposition's effect to a lead: one waiting in the store is "ended" at once (a final code, or its
        last usable phone dropped: done with `code.outcome`, its kept state, callback and drops forgotten, as a final
        release) or stays "pending" with the phone dropped (merged into its state at its next lease); a leased one
        keeps the code for its holder, "leased" (`held_dispositions`; applied by the store if the lead comes back
        first: handed back, lost track of, its lease expired). Nothing written: "done", "removed", "unknown".
        The same code asked again is kept once. KeyError for an unknown campaign."""
        ...

    async def held_dispositions(self, campaign_id: str) -> dict[str, tuple[StoredCode, ...]]:
        """Codes kept for leads this node holds (lead id -> codes, in the order asked), for its core to apply; then
        `clear_dispositions`."""
        ...

    async def clear_dispositions(self, campaign_id: str, applied: Mapping[str, Sequence[StoredCode]]) -> int:
        """Forget kept codes a holder applied, each lead's only if they are still the ones given (a code asked
        meanwhile stays). Returns how many leads' codes were forgotten."""
        ...

    async def next_callback_at(self, campaign_id: str) -> float | None:
        """The earliest time of a callback kept for a lead waiting in the store (None: none)."""
        ...

    async def lease_due_callbacks(self, campaign_id: str, count: int,
                                  now: float) -> tuple[list[Lead], dict[str, dict[str, Any]]]:
        """Lease up to `count` leads waiting in the store whose callback is due by `now` (whatever their place in
        line), with their states, the callback merged in (as `lease_leads_with_states`)."""
        ...

    async def publish_callbacks(self, campaign_id: str, rows: Sequence[tuple[str, float, str | None]],
                                now: float) -> None:
        """The callbacks this node's hopper holds (lead id, at, agent id), for the other nodes' listings."""
        ...

    async def callbacks(self, campaign_id: str, now: float) -> list[tuple[str, float, str | None]]:
        """The callbacks the store knows of (asked and not yet applied, and those other live nodes published),
        earliest first; one lead once."""
        ...

    async def record_attempt(self, attempt: Attempt) -> None:
        """Upsert by call id."""
        ...

    async def record_dial(self, attempt: Attempt) -> bool:
        """A dial's first record (`record_attempt`), written only while this node holds the lead's lease: False, and
        nothing written, if the lease is gone (it expired while this node could not renew it; another node may hold
        the lead now). A record already written is written again (a retry)."""
        ...

    async def attempts(self, campaign_id: str | None = None) -> list[Attempt]: ...

    async def attempt(self, call_id: str) -> Attempt | None:
        """The attempt of `call_id`, in whichever campaign; None if none was recorded."""
        ...

    async def attempts_page(self, campaign_id: str | None = None, *, after: tuple[float, str] | None = None,
                            since: float | None = None, until: float | None = None,
                            limit: int = 100) -> list[Attempt]:
        """Up to `limit` attempts (of one campaign, or of all) in (dialed_at, call_id) order: those after `after`
        (exclusive) dialed in [since, until). The next page starts after the last one's (dialed_at, call_id)."""
        ...

    async def lead_counts(self, campaign_id: str) -> dict[str, int]:
        """Leads by state: pending, leased, done."""
        ...

    # Webhook events kept: those a sender gave up (tries used up, or refused by the endpoint) and those left
    # undelivered at shutdown, kept in the store so every node lists and redelivers them and a restart loses none.
    # Bounded: past `cap` the oldest go first.

    async def keep_failed_webhook(self, hook: str, kind: str, delivery: str, event: str, reason: str, at: float,
                                  cap: int) -> tuple[int, int]:
        """Keep one event a webhook gave up: `hook` its sender's label, `delivery` its delivery id, `event` the body
        sent (JSON text). The same (hook, delivery) kept again (a redelivery given up again) updates that entry
        (reason, at, tries + 1) and keeps its id: never twice. Then the oldest go until `cap` are kept. Returns
        (its id, how many were dropped for the bound). Ids rise."""
        ...

    async def failed_webhooks(self, after: int = 0, limit: int = 100, *, hook: str | None = None,
                              kinds: Sequence[str] = ()) -> list[FailedWebhook]:
        """Up to `limit` kept events with an id above `after`, oldest first; of one hook and of kinds starting with
        one of `kinds` (all when empty). The next page starts after the last one's id."""
        ...

    async def get_failed_webhooks(self, ids: Sequence[int]) -> list[FailedWebhook]:
        """The kept events of these ids (those still kept), oldest first."""
        ...

    async def drop_failed_webhooks(self, ids: Sequence[int]) -> int:
        """Forget kept events (delivered at last, or deleted); returns how many were kept."""
        ...

    async def failed_webhook_counts(self) -> dict[str, int]:
        """Kept events by hook label."""
        ...

    # A node's webhook outbox: the events its senders queued, written before they are delivered and forgotten once
    # delivered or kept, so the events of a node killed outright (or cut off at a restart) are not lost with it.

    async def outbox_write(self, puts: Sequence[OutboxEntry], dones: Sequence[tuple[str, str]]) -> None:
        """Add events to this node's outbox (`puts`, after those there) and forget others (`dones`: (hook label,
        delivery id)), in one write."""
        ...

    async def outbox_orphans(self, now: float) -> list[str]:
        """Other nodes with an outbox that have not been seen (heartbeat) within the lease TTL: gone."""
        ...

    async def outbox_claim(self, node_id: str | None, reason: str, at: float,
                           cap: int) -> tuple[list[FailedWebhook], int]:
        """Turn a node's outbox (None: this node's, left by an earlier run under its id) into kept events, in the
        order they were queued, given up for `reason` at `at` (one already kept stays as it is); the outbox is then
        gone. Returns the kept rows (for redelivery) and how many kept events were dropped for `cap`."""
        ...


@dataclass(frozen=True, slots=True)
class FailedWebhook:
    """A webhook event kept after its sender gave it up (`Store.keep_failed_webhook`)."""

    id: int
    hook: str  # the sender's label: the endpoint's origin (`#2`... for a second hook on one origin)
    kind: str
    delivery: str  # the X-Marcador-Delivery id, the same on a redelivery
    event: str  # the body sent, JSON text: it holds debtors' numbers and never reaches a log
    reason: str
    at: float  # when it was last given up
    tries: int  # times given up: 1, and one more for each redelivery given up again


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """An event a webhook sender queued (`Store.outbox_write`)."""

    hook: str  # the sender's label
    kind: str
    delivery: str  # the X-Marcador-Delivery id
    event: str  # the body to send, JSON text
    order: int  # rises with each event the node queues: a claim keeps them in this order


def kind_matches(kind: str, kinds: Sequence[str]) -> bool:
    """The event kind filter (SSE, webhooks, kept webhook events): `call.` matches every call event, `call.ended`
    that one; empty matches all."""
    return not kinds or any(kind.startswith(k) for k in kinds)
