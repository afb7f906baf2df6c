"""Plain data the core works with: leads, attempts, outcomes, agent states."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Outcome(StrEnum):
    """Final outcome of one attempt (DESIGN.md, Words and figures)."""

    CONNECTED = "connected"  # live answer that reached an agent within the abandon threshold
    ABANDONED = "abandoned"  # live answer not connected within the threshold
    MACHINE = "machine"  # answered by an answering machine (AMD)
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    CONGESTION = "congestion"
    FAILED = "failed"  # invalid/unallocated number or any other failure to reach the line
    # The node lost track of the call (crash, reconnect without trace): it is *not* redialed blindly.
    LOST = "lost"

    @property
    def live(self) -> bool:
        return self in (Outcome.CONNECTED, Outcome.ABANDONED)


FAILURE_OUTCOMES = frozenset({Outcome.BUSY, Outcome.NO_ANSWER, Outcome.CONGESTION, Outcome.FAILED})

CONGESTION_CAUSES = frozenset({21, 27, 34, 38, 41, 42})  # Q.850 causes Asterisk reports as congestion


def outcome_for_cause(cause: int) -> Outcome:
    """Q.850 hangup cause of a call that never answered → its outcome.

    Congestion as Asterisk reports it (chan_dahdi/sig_pri queue a congestion for these, DIALSTATUS CONGESTION):
    call rejected (21, a SIP 403), destination out of order (27), circuit congestion (34), network out of order
    (38), temporary failure (41) and switch congestion (42). Each is worth a retry soon; "failed" is for a number
    that cannot be reached as dialed (unallocated 1, no route 3, invalid format 28...).
    """
    if cause == 17:
        return Outcome.BUSY
    if cause in (18, 19):
        return Outcome.NO_ANSWER
    if cause in CONGESTION_CAUSES:
        return Outcome.CONGESTION
    return Outcome.FAILED


class AgentStatus(StrEnum):
    LOGGED_OUT = "logged_out"
    CONNECTING = "connecting"  # leg being originated into the agent's room
    READY = "ready"
    ON_CALL = "on_call"
    WRAPUP = "wrapup"
    PAUSED = "paused"
    PREVIEW = "preview"  # reserved with a lead on screen (preview mode); its call goes to this agent only


class CampaignStatus(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class StoredCode:
    """A disposition's effect on a lead the disposing node's hopper no longer holds, as the store keeps it
    (`Store.ask_disposition`): `final` ends the lead with `outcome`; `drop` stops using `number` for it (wrong party,
    DNC); `code` and `call_id` name the disposition (one per call). Callbacks go through `Store.ask_callback`."""

    code: str
    call_id: str
    number: str
    outcome: Outcome
    final: bool
    drop: bool

    def as_dict(self) -> dict[str, Any]:
        return {"c": self.code, "k": self.call_id, "n": self.number, "o": self.outcome.value, "f": self.final,
                "d": self.drop}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> StoredCode:
        return cls(str(doc["c"]), str(doc["k"]), str(doc["n"]), Outcome(doc["o"]), bool(doc["f"]), bool(doc["d"]))


@dataclass(slots=True)
class Lead:
    """A debtor account to call. `phones` are dialable numbers, best first."""

    lead_id: str
    campaign_id: str
    phones: tuple[str, ...]  # E.164, best first (at most 5)
    fields: dict[str, Any] = field(default_factory=dict)  # custom fields, kept as given
    country: str | None = None  # ISO 3166 alpha-2
    timezone: str | None = None  # IANA zone of the debtor; None: unknown (the gates refuse a windowed dial)
    amount_due: float = 0.0
    days_past_due: int = 0
    segment: str = ""

    @property
    def phone(self) -> str:
        return self.phones[0]


@dataclass(slots=True)
class Attempt:
    """One dial of one lead's number; upserted by `call_id` as the call progresses."""

    call_id: str
    campaign_id: str
    lead_id: str
    number: str
    caller_id: str
    dialed_at: float
    answered_at: float | None = None
    connected_at: float | None = None
    ended_at: float | None = None
    outcome: Outcome | None = None  # None while the call is in flight
    agent_id: str | None = None
    amd: str | None = None
    hangup_cause: int | None = None
    disposition: str | None = None
    caller_id_reason: str | None = None  # sticky | local | pool | campaign (the campaign's fixed caller ID)
    phone_reason: str | None = None  # why the hopper chose this phone of the lead
    # From the disposition: the promise to pay (amount as validated, ISO date) and the callback scheduled (epoch s).
    ptp_amount: float | None = None
    ptp_date: str | None = None
    callback_at: float | None = None

    def copy(self) -> Attempt:
        # Field by field: dataclasses.replace is several times slower, and every call is copied several times.
        return Attempt(self.call_id, self.campaign_id, self.lead_id, self.number, self.caller_id, self.dialed_at,
                       self.answered_at, self.connected_at, self.ended_at, self.outcome, self.agent_id, self.amd,
                       self.hangup_cause, self.disposition, self.caller_id_reason, self.phone_reason,
                       self.ptp_amount, self.ptp_date, self.callback_at)

    def as_dict(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "campaign_id": self.campaign_id,
            "lead_id": self.lead_id,
            "number": self.number,
            "caller_id": self.caller_id,
            "dialed_at": self.dialed_at,
            "answered_at": self.answered_at,
            "connected_at": self.connected_at,
            "ended_at": self.ended_at,
            "outcome": self.outcome.value if self.outcome else None,
            "agent_id": self.agent_id,
            "amd": self.amd,
            "hangup_cause": self.hangup_cause,
            "disposition": self.disposition,
            "caller_id_reason": self.caller_id_reason,
            "phone_reason": self.phone_reason,
            "ptp_amount": self.ptp_amount,
            "ptp_date": self.ptp_date,
            "callback_at": self.callback_at,
        }


@dataclass(slots=True)
class CampaignSettings:
    """What a campaign needs to dial; validated by the API/config layer before it reaches the core."""

    campaign_id: str
    name: str = ""
    strategy: str = "progressive"
    abandon_target: float = 0.03
    abandon_threshold_s: float = 2.0
    ring_timeout_s: float = 25.0
    wrapup_s: float | None = 5.0  # None: no timeout, the agent (or a disposition) ends the wrap-up
    caller_id: str = "Marcador <1000>"
    max_lines: int = 500
    max_lines_per_agent: float = 4.0
    max_calls_per_s: float = 50.0
    skill: str | None = None  # agents need this skill; the best level takes the call
    weight: float = 1.0  # share of agents it gets when several running campaigns need the same agents
    amd: bool = False  # ask the dialplan to run AMD on answer (MARCADOR_AMD=1)
    rule_set: str = "none"  # compliance rule set (dialer.compliance.RULE_SETS); `none`: DNC only
    rule_overrides: dict[str, Any] = field(default_factory=dict)  # tighten-only overrides of the rule set
    did_pool: list[str] = field(default_factory=list)  # caller-ID DIDs (E.164); empty: `caller_id` on every call
    did_hour_cap: int = 60  # calls per DID per rolling hour
    did_day_cap: int = 300  # calls per DID per rolling day
    hopper: dict[str, Any] = field(default_factory=dict)  # priorities and recycling (dialer.hopper.HopperRules)
    dispositions: list[dict[str, Any]] = field(default_factory=list)  # codes; empty: the default collections set
