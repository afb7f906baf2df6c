"""Commands out of the sans-IO core. Shells carry them out (AMI, store, event bus)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dialer.model import Attempt, Outcome, StoredCode


@dataclass(frozen=True, slots=True)
class Originate:
    call_id: str
    campaign_id: str
    lead_id: str
    number: str
    caller_id: str
    timeout_s: float
    variables: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ConnectToAgent:
    call_id: str
    agent_id: str


@dataclass(frozen=True, slots=True)
class PlayAbandonMessage:
    call_id: str


@dataclass(frozen=True, slots=True)
class Hangup:
    call_id: str


@dataclass(frozen=True, slots=True)
class OriginateAgentLeg:
    """Bring the agent's phone into its own room `agent-<agent_id>` for the shift."""

    agent_id: str


@dataclass(frozen=True, slots=True)
class HangupAgentLeg:
    agent_id: str


@dataclass(frozen=True, slots=True)
class RecordAttempt:
    """Upsert the attempt (by call id). Sent at dial time (outcome None) and again when it is final."""

    attempt: Attempt


@dataclass(frozen=True, slots=True)
class FetchLeads:
    campaign_id: str
    count: int


@dataclass(frozen=True, slots=True)
class ReleaseLead:
    """The lead's lease ends: `final` leads are done, others may be recycled by the store's rules. A lead handed
    back not final carries the hopper's `state` of it (`Hopper.handoff_state`): the store keeps it for the node
    that leases the lead next and does not hand the lead out before `eligible_at` (None: at once). Both are the
    lead's payload, not the decision: equality ignores them."""

    campaign_id: str
    lead_id: str
    outcome: Outcome
    final: bool
    state: Mapping[str, Any] | None = field(default=None, compare=False)
    eligible_at: float | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class AskDisposition:
    """A disposition for a lead this node's hopper no longer holds (handed back to the store, perhaps leased by
    another node since): the store applies `code` wherever the lead is (`Store.ask_disposition`: a lead waiting in
    the store is ended or has the phone dropped at once, a leased one keeps it for its holder), and a callback the
    code asked for (`callback_at`, owned by `callback_agent` when set) through `Store.ask_callback`. `code` is None
    for a code that only asks a callback."""

    campaign_id: str
    lead_id: str
    code: StoredCode | None
    callback_at: float | None = None
    callback_agent: str | None = None


@dataclass(frozen=True, slots=True)
class PersistDnc:
    """A number the core put on a DNC list itself (a DNC disposition): the shared store keeps it for every node
    and restart."""

    number: str
    campaign_id: str | None


@dataclass(frozen=True, slots=True)
class CheckpointLead:
    """What the hopper knows of a lead it holds and has just changed (a call's outcome recycled it, a code or a
    callback steered it): the shared store keeps it with the lease, so that if this node dies the lead goes back
    with it (its recycle or callback time, attempts, dropped phones) rather than afresh. Payload, not decision:
    equality ignores `state`."""

    campaign_id: str
    lead_id: str
    state: Mapping[str, Any] = field(compare=False)


@dataclass(frozen=True, slots=True)
class Emit:
    """An event for the API's stream, webhooks and logs."""

    kind: str
    data: dict[str, Any]


Command = (
    Originate
    | ConnectToAgent
    | PlayAbandonMessage
    | Hangup
    | OriginateAgentLeg
    | HangupAgentLeg
    | RecordAttempt
    | FetchLeads
    | ReleaseLead
    | AskDisposition
    | PersistDnc
    | CheckpointLead
    | Emit
)
