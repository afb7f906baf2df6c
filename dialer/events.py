"""Events into the sans-IO core (DESIGN.md, The sans-IO core). Shells translate their world into these."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from dialer.model import AgentStatus, Attempt, Lead, Outcome, StoredCode


@dataclass(frozen=True, slots=True)
class CallProgress:
    call_id: str
    state: Literal["ringing", "progress"]


# AMD()'s own word for a callee who hung up while it listened: a live answer with no line left to hand an agent.
AMD_HANGUP = "HANGUP"


@dataclass(frozen=True, slots=True)
class CallAnswered:
    call_id: str
    amd: str = "HUMAN"  # HUMAN | MACHINE | NOTSURE | HANGUP ... as AMD() reports; HUMAN when AMD is off


@dataclass(frozen=True, slots=True)
class CallFailed:
    """The call never answered: `cause` is the classified outcome, `hangup_cause` the Q.850 code if known."""

    call_id: str
    cause: Outcome
    hangup_cause: int | None = None


@dataclass(frozen=True, slots=True)
class CallEnded:
    """An answered call hung up (either side)."""

    call_id: str
    hangup_cause: int | None = None


@dataclass(frozen=True, slots=True)
class AgentLogin:
    """An agent asks to work: the core answers with `OriginateAgentLeg`."""

    agent_id: str
    campaigns: frozenset[str] = frozenset()  # empty: every campaign
    skills: tuple[tuple[str, int], ...] = ()  # (skill, level) pairs


@dataclass(frozen=True, slots=True)
class AgentLogout:
    agent_id: str


@dataclass(frozen=True, slots=True)
class AgentConnected:
    """The agent's leg is in its room (`agent-<id>`)."""

    agent_id: str


@dataclass(frozen=True, slots=True)
class AgentDisconnected:
    agent_id: str


@dataclass(frozen=True, slots=True)
class AgentLegHeld:
    """The agent's leg is not called yet: its phone is still in a conversation from before a restart (a stale leg
    with a debtor in the agent's room). The PBX side calls it once that conversation ends; no timeout meanwhile."""

    agent_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class AgentJoinedCall:
    """The customer leg of `call_id` joined `agent_id`'s room."""

    call_id: str
    agent_id: str


@dataclass(frozen=True, slots=True)
class AgentMissing:
    """The customer leg of `call_id`, sent into `agent_id`'s room, found no agent there (its leg had left): the
    dialplan plays the safe-harbour message and hangs up instead of joining an empty conference."""

    call_id: str
    agent_id: str


@dataclass(frozen=True, slots=True)
class AgentState:
    agent_id: str
    state: Literal[AgentStatus.READY, AgentStatus.PAUSED, AgentStatus.WRAPUP]
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Disposition:
    """The agent's result code for a call (validated against the campaign's disposition set)."""

    call_id: str
    code: str
    callback_at: float | None = None  # epoch seconds, for callback codes
    own_callback: bool = False  # the callback goes to the agent who posted it
    ptp_amount: float | None = None
    ptp_date: str | None = None  # ISO date of the promise to pay


@dataclass(frozen=True, slots=True)
class AdoptCall:
    """A connected call another run of the engine handled (this node before a restart, or a node gone), its attempt
    as the store has it: kept here for its disposition, as a call an agent handled here is."""

    attempt: Attempt


@dataclass(frozen=True, slots=True)
class DncAdd:
    """A number on the DNC list (campaign's, or global when `campaign_id` is None) from `added_at` (default: now).
    Takes effect before the next dial."""

    number: str
    campaign_id: str | None = None
    added_at: float | None = None


@dataclass(frozen=True, slots=True)
class ScheduleCallback:
    """Call the lead back at `at` (epoch seconds), by `agent_id` only when given. A lead not loaded on this node
    yet gets it when it arrives here (the runtime keeps a callback for a lead its hopper does not hold in the
    store: see `Store.ask_callback`)."""

    campaign_id: str
    lead_id: str
    at: float
    agent_id: str | None = None


@dataclass(frozen=True, slots=True)
class StoredDisposition:
    """A disposition another node took for a lead this node holds (kept for it in the store, `AskDisposition`): the
    hopper applies it as a late one (held until the lead is back if it is out on a call)."""

    campaign_id: str
    lead_id: str
    code: StoredCode


@dataclass(frozen=True, slots=True)
class LeadRemoved:
    """A lead leaves its campaign at once (e.g. paid today): never dialed again, its callbacks cancelled."""

    campaign_id: str
    lead_id: str


@dataclass(frozen=True, slots=True)
class LeaseLost:
    """The store refused `call_id`'s dial record: this node no longer holds the lead's lease (it expired unrenewed;
    another node may hold the lead now). The call was not made."""

    call_id: str


@dataclass(frozen=True, slots=True)
class LeadsTaken:
    """Leads this node held whose leases a renewal found lost (expired unrenewed; another node may hold them): the
    hopper lets go of those still waiting, telling the store nothing. One out on a call is left to its call."""

    campaign_id: str
    lead_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LeadsAvailable:
    """Leads leased from the store for `campaign_id` (possibly none: the campaign is exhausted for now), with the
    hopper state the store kept of those handed back by a node (lead id -> `Hopper.handoff_state`'s mapping).
    `fetched`: the answer to the core's `FetchLeads`; False for leads the runtime leased on its own (callbacks due
    in the store), which leave the core's fetch bookkeeping alone."""

    campaign_id: str
    leads: tuple[Lead, ...]
    states: Mapping[str, Mapping[str, Any]] | None = None
    fetched: bool = True


@dataclass(frozen=True, slots=True)
class CampaignControl:
    campaign_id: str
    action: Literal["start", "pause", "stop"]


@dataclass(frozen=True, slots=True)
class PreviewRequest:
    """Preview mode: a ready agent asks for the next lead of a campaign to look at before dialing."""

    agent_id: str
    campaign_id: str


@dataclass(frozen=True, slots=True)
class PreviewDial:
    """The agent dials the lead on screen; the call is reserved for this agent (it cannot be abandoned)."""

    agent_id: str


@dataclass(frozen=True, slots=True)
class PreviewSkip:
    """The agent passes on the lead on screen: it goes back to the queue unattempted."""

    agent_id: str


@dataclass(frozen=True, slots=True)
class PbxLink:
    """The PBX link went down (nothing can be dialed) or came back after its resync."""

    up: bool


@dataclass(frozen=True, slots=True)
class StoreLink:
    """The shared store stopped answering (dialing pauses: nothing dialed could be recorded) or answers again."""

    up: bool


@dataclass(frozen=True, slots=True)
class SharedAbandon:
    """Campaign-wide live answers and abandons over the rule's window, summed across every node by the store.
    The pacer aims at the target against these, not only against what this node saw."""

    campaign_id: str
    live: int
    abandoned: int


@dataclass(frozen=True, slots=True)
class DncSnapshot:
    """A DNC list as the shared store holds it (every node's changes), read from `taken_at` on. The core adds what
    it lacks and takes off what the store no longer has, except entries added here since `taken_at` (their
    write may have landed after the read)."""

    campaign_id: str | None
    numbers: frozenset[str]
    taken_at: float


@dataclass(frozen=True, slots=True)
class DebtorHistorySeed:
    """What the shared store knows of a debtor's recent attempts, conversations and abandons (other nodes' too),
    given before its lead is dialed here: the compliance caps judge the whole history."""

    campaign_id: str
    lead_id: str
    attempts: tuple[float, ...] = ()
    contacts: tuple[float, ...] = ()
    abandons: tuple[float, ...] = ()
    wrong_parties: tuple[float, ...] = ()  # conversations found to be with a wrong party: not contacts


Event = (
    CallProgress
    | CallAnswered
    | CallFailed
    | CallEnded
    | AgentLogin
    | AgentLogout
    | AgentConnected
    | AgentDisconnected
    | AgentLegHeld
    | AgentJoinedCall
    | AgentMissing
    | AgentState
    | Disposition
    | AdoptCall
    | DncAdd
    | LeadRemoved
    | LeaseLost
    | LeadsTaken
    | ScheduleCallback
    | StoredDisposition
    | LeadsAvailable
    | DebtorHistorySeed
    | DncSnapshot
    | CampaignControl
    | PbxLink
    | StoreLink
    | SharedAbandon
    | PreviewRequest
    | PreviewDial
    | PreviewSkip
)
