"""What a pacing strategy sees and learns from. Plain data: pacing never imports the dialer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol


@dataclass(frozen=True, slots=True)
class PacingSnapshot:
    """One campaign's floor at `now`, as seen by the core before a pacing decision.

    Times are seconds. "Busy" agents are on a call or in wrap-up; their elapsed handle time counts
    from the moment the call was connected to them (handle = talk + wrap-up).
    """

    now: float
    agents_logged_in: int  # ready + on call + wrap-up (paused agents excluded)
    agents_ready: int  # ready and not reserved for a call
    talking_elapsed: tuple[float, ...] = ()  # per agent on a call: seconds since connect
    wrapup_elapsed: tuple[float, ...] = ()  # per agent in wrap-up: seconds since its call was connected
    wrapup_in_state: tuple[float, ...] = ()  # per agent in wrap-up: seconds since wrap-up began
    ringing_elapsed: tuple[float, ...] = ()  # per in-flight (dialled, unanswered) call: seconds since dial
    waiting_calls: int = 0  # answered live calls waiting for an agent
    calls_launched_last_s: int = 0  # originates in the last second (for the calls-per-second cap)
    abandon_threshold_s: float = 2.0
    ring_timeout_s: float = 25.0


DialFate = Literal["live", "machine", "none"]


@dataclass(frozen=True, slots=True)
class DialResult:
    """A dialled call's fate became known: answered by a person/machine, or not answered at all."""

    t: float
    ring_s: float  # dial → answer, or dial → failure/timeout
    fate: DialFate
    timed_out: bool = False  # reached the no-answer timeout (right-censored time-to-answer)


@dataclass(frozen=True, slots=True)
class LiveResult:
    """A live answer was connected to an agent or abandoned (for the abandon-rate controller).

    `retracts` is set on an abandon that takes back a connect heard before (the agent's room turned out empty):
    the time of that connect's `LiveResult`. A strategy counts the answer once: live answers unchanged, abandoned
    one more, and whatever the connect taught it replaced by what an abandon teaches.
    """

    t: float
    connected: bool
    retracts: float | None = None  # only with connected=False


@dataclass(frozen=True, slots=True)
class HandleResult:
    """An agent finished a call: talk and wrap-up durations."""

    t: float
    talk_s: float
    wrap_s: float


Observation = DialResult | LiveResult | HandleResult


@dataclass(slots=True)
class PacingCaps:
    max_lines: int = 500  # in-flight + waiting calls for the campaign
    max_lines_per_agent: float = 4.0
    max_calls_per_s: float = 50.0
    abandon_target: float = 0.03
    extra: dict[str, float] = field(default_factory=dict)


class PacingStrategy(Protocol):
    """Decides how many calls to launch now. Deterministic given its observations and snapshots."""

    name: str

    def observe(self, obs: Observation) -> None: ...

    def decide(self, snap: PacingSnapshot) -> int: ...
