"""Scenario files: a call centre's floor and its callers, as data (YAML), shared by the discrete-event
simulator (sim/des) and the simulated PBX. No I/O here apart from `load_scenario(path)`.

    name: collections-50
    seed: 1
    duration_s: 28800
    pacing_tick_s: 1.0        # the simulator's pacing cadence (virtual seconds)
    agents:
      count: 50
      wrapup_s: {dist: fixed, value: 10}
      schedule: [{at_s: 14400, count: 25}]   # logged-in agents from then on
    calls:
      p_live: 0.20            # or {from: 0.30, to: 0.10} (linear over the shift) or [[0, 0.3], [14400, 0.1]]
      p_machine: 0.0
      p_busy: 0.08
      p_fail: 0.05            # invalid number / congestion; the rest: no answer
      answer_delay_s: {dist: lognormal, median: 8, sigma: 0.5, max: 25}
      no_answer_timeout_s: 25
      talk_s: {dist: gamma, mean: 150, cv: 0.8}
      machine_talk_s: 15      # an agent put through to a machine hangs up after at most this
      patience_s: null        # a person left waiting hangs up after this (a distribution); null: never
    campaign: {abandon_target: 0.03, abandon_threshold_s: 2.0}
    amd: {enabled: false, detect_s: 2.5, false_machine: 0.05, false_human: 0.15}

Distributions (durations in seconds: no parameter negative or infinite): fixed (value), exponential (mean),
uniform (low, high), lognormal (median, sigma), gamma (mean, cv); each with optional min/max (clipped).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)


class ScenarioError(ValueError):
    """A scenario that cannot be used; the message names the file and the field."""


class Dist(BaseModel):
    """A duration in seconds (wrap-up, answer delay, talk, patience): never negative, always finite."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    dist: Literal["fixed", "exponential", "uniform", "lognormal", "gamma"]
    value: float | None = Field(None, ge=0)
    mean: float | None = Field(None, gt=0)
    low: float | None = Field(None, ge=0)
    high: float | None = Field(None, ge=0)
    median: float | None = Field(None, gt=0)
    sigma: float | None = Field(None, ge=0)
    cv: float | None = Field(None, gt=0)
    min: float | None = Field(None, ge=0)
    max: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _params(self) -> Dist:
        need = {"fixed": ("value",), "exponential": ("mean",), "uniform": ("low", "high"),
                "lognormal": ("median", "sigma"), "gamma": ("mean", "cv")}[self.dist]
        missing = [p for p in need if getattr(self, p) is None]
        if missing:
            raise ValueError(f"{self.dist} needs {', '.join(missing)}")
        # A parameter of another distribution would be ignored: say so rather than run something else.
        unused = [p for p in ("value", "mean", "low", "high", "median", "sigma", "cv")
                  if p not in need and getattr(self, p) is not None]
        if unused:
            raise ValueError(f"{self.dist} does not take {', '.join(unused)} (it takes {', '.join(need)}, min, max)")
        if self.low is not None and self.high is not None and self.high < self.low:
            raise ValueError("uniform: high must be >= low")
        if self.min is not None and self.max is not None and self.max < self.min:
            raise ValueError("max must be >= min")
        return self

    def sample(self, rng: np.random.Generator) -> float:
        d = self.dist
        if d == "fixed":
            x = float(self.value)  # type: ignore[arg-type]
        elif d == "exponential":
            x = float(rng.exponential(self.mean))  # type: ignore[arg-type]
        elif d == "uniform":
            x = float(rng.uniform(self.low, self.high))  # type: ignore[arg-type]
        elif d == "lognormal":
            x = float(rng.lognormal(math.log(self.median), self.sigma))  # type: ignore[arg-type]
        else:
            shape = 1.0 / (self.cv * self.cv)  # type: ignore[operator]
            x = float(rng.gamma(shape, self.mean / shape))  # type: ignore[operator]
        if self.min is not None and x < self.min:
            x = self.min
        if self.max is not None and x > self.max:
            x = self.max
        return x

    def mean_value(self) -> float:
        """The unclipped mean (for steady-state what-ifs)."""
        if self.dist == "fixed":
            return float(self.value)  # type: ignore[arg-type]
        if self.dist == "uniform":
            return (float(self.low) + float(self.high)) / 2  # type: ignore[arg-type]
        if self.dist == "lognormal":
            return float(self.median) * math.exp(float(self.sigma) ** 2 / 2)  # type: ignore[arg-type]
        return float(self.mean)  # type: ignore[arg-type]


class Ramp(BaseModel):
    """A value that changes linearly over the whole shift, `from` at its start to `to` at its end."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    start: float = Field(alias="from")
    end: float = Field(alias="to")


Schedule = float | Ramp | list[tuple[float, float]]
SCHEDULE_SHAPES = "a number, {from: a, to: b} or a list of [t_s, value] points"


def _check_schedule_shape(v: Any) -> Any:
    """Name the accepted shapes once, instead of pydantic's one complaint per union member."""
    if isinstance(v, bool):
        raise ValueError(f"expected {SCHEDULE_SHAPES}")
    if isinstance(v, int | float | Ramp):
        numbers = [v.start, v.end] if isinstance(v, Ramp) else [v]
    elif isinstance(v, dict) and set(v) in ({"from", "to"}, {"start", "end"}) and all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in v.values()):
        numbers = list(v.values())
    elif isinstance(v, list) and v and all(
            isinstance(p, list | tuple) and len(p) == 2
            and all(isinstance(x, int | float) and not isinstance(x, bool) for x in p) for p in v):
        numbers = [x for p in v for x in p]
    else:
        raise ValueError(f"expected {SCHEDULE_SHAPES}, got {v!r}")
    if not all(math.isfinite(x) for x in numbers):  # YAML's .nan and .inf: a time or a share must be a number
        raise ValueError(f"every number must be finite, got {v!r}")
    return v


_NUMBER = int | float  # built once: `value_at` runs four times per dialed call


def value_at(spec: Schedule, t: float, duration_s: float) -> float:
    """A schedule's value at `t` seconds into a shift of `duration_s` (constant outside given points)."""
    if isinstance(spec, _NUMBER):
        return float(spec)
    if isinstance(spec, Ramp):
        frac = min(1.0, max(0.0, t / duration_s)) if duration_s > 0 else 0.0
        return spec.start + (spec.end - spec.start) * frac
    times = [p[0] for p in spec]
    i = bisect.bisect_right(times, t)
    if i == 0:
        return spec[0][1]
    if i == len(spec):
        return spec[-1][1]
    (t0, v0), (t1, v1) = spec[i - 1], spec[i]
    return v0 + (v1 - v0) * (t - t0) / (t1 - t0) if t1 > t0 else v1


def _breakpoints(spec: Schedule) -> list[float]:
    return [p[0] for p in spec] if isinstance(spec, list) else []


class AgentChange(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    at_s: float = Field(ge=0)
    count: int = Field(ge=0, le=100_000)


class Agents(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    count: int = Field(ge=0, le=100_000)
    wrapup_s: Dist = Dist(dist="fixed", value=10.0)
    schedule: list[AgentChange] = []

    @field_validator("schedule")
    @classmethod
    def _in_order(cls, v: list[AgentChange]) -> list[AgentChange]:
        if [c.at_s for c in v] != sorted(c.at_s for c in v):
            raise ValueError("changes must be in time order (at_s ascending)")
        for i in range(1, len(v)):  # two counts for one moment: the last one silently won
            if v[i].at_s == v[i - 1].at_s:
                raise ValueError(f"changes {i - 1} and {i} are both at_s {v[i].at_s:g}: one count per moment")
        return v

    def count_at(self, t: float) -> int:
        n = self.count
        for change in self.schedule:
            if change.at_s <= t:
                n = change.count
        return n


PROBABILITIES = ("p_live", "p_machine", "p_busy", "p_fail")


class Calls(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    p_live: Schedule = 0.2
    p_machine: Schedule = 0.0
    p_busy: Schedule = 0.08
    p_fail: Schedule = 0.05
    answer_delay_s: Dist = Dist(dist="lognormal", median=8, sigma=0.5, max=25)
    no_answer_timeout_s: float = Field(25.0, gt=0)
    talk_s: Dist = Dist(dist="gamma", mean=150, cv=0.8)
    machine_talk_s: float = Field(15.0, ge=0)
    patience_s: Dist | None = None

    @field_validator(*PROBABILITIES, mode="before")
    @classmethod
    def _shape(cls, v: Any) -> Any:
        return _check_schedule_shape(v)

    @field_validator(*PROBABILITIES)
    @classmethod
    def _probability(cls, v: Schedule) -> Schedule:
        values = [v] if isinstance(v, int | float) else [v.start, v.end] if isinstance(v, Ramp) else [p[1] for p in v]
        if any(not 0.0 <= float(x) <= 1.0 for x in values):
            raise ValueError("a probability must be within 0..1")
        if isinstance(v, list) and [p[0] for p in v] != sorted(p[0] for p in v):
            raise ValueError("schedule points must be in time order")
        return v


class CampaignSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    abandon_target: float = Field(0.03, gt=0, le=0.5)
    abandon_threshold_s: float = Field(2.0, gt=0)
    max_lines_per_agent: float = Field(4.0, gt=0)
    max_calls_per_s: float = Field(50.0, gt=0)
    abandon_message_s: float = Field(2.0, ge=0)  # the safe-harbor message played before hanging up


class Amd(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = False
    detect_s: float = Field(2.5, ge=0)  # answer → verdict; the core hears of the answer only then
    false_machine: float = Field(0.05, ge=0, le=1)  # a person classified as machine (hung up on)
    false_human: float = Field(0.15, ge=0, le=1)  # a machine classified as person (sent to an agent)


class FileRef(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    file: str = Field(min_length=1, description="path, relative to the scenario file")


class LeadGenerator(BaseModel):
    """Debtors made up from a seed: numbers valid in their country, zones derived from the number."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    count: int = Field(gt=0, le=2_000_000)
    countries: list[str] = Field(default_factory=lambda: ["US"], min_length=1)
    segments: list[str] = Field(default_factory=lambda: ["default"], min_length=1)
    phones: int = Field(1, ge=1, le=5, description="phones per debtor")
    seed: int | None = Field(None, ge=0)


class Leads(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    file: str | None = None  # the lead CSV of the core (lead_id,phone,country,timezone,...)
    generator: LeadGenerator | None = None

    @model_validator(mode="after")
    def _one(self) -> Leads:
        if (self.file is None) == (self.generator is None):
            raise ValueError("give exactly one of file or generator")
        return self


def _rule_overrides(v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
    """The overrides the core's rule set takes (checked now, not when the simulation is built: a traceback)."""
    from dialer.compliance import load_rule_set

    rule_set = info.data.get("rule_set")
    if v and isinstance(rule_set, str):  # no rule set: its own error already
        try:
            load_rule_set(rule_set, v)
        except (TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"not a rule override the core takes: {exc}") from None
    return v


def _recycle_rules(v: dict[str, Any]) -> dict[str, Any]:
    """The hopper's rules as the core reads them (its errors say `hopper.`: here the field is `recycle`)."""
    from dialer.hopper import HopperRules

    try:
        HopperRules.from_config(v)
    except ValueError as exc:
        raise ValueError(str(exc).removeprefix("hopper.")) from None
    except (TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"not a hopper rule the core takes: {exc}") from None
    return v


def _rule_set_name(v: str) -> str:
    from dialer.compliance import RULE_SETS  # the core's table: a scenario names what the engine runs
    if v not in RULE_SETS:
        raise ValueError(f"unknown rule set {v!r}; known: {', '.join(sorted(RULE_SETS))}")
    return v


class _Rules(BaseModel):
    """The checks of a campaign's rules, shared by the scenario's one campaign and each of several: the rule set
    is known, its overrides and the hopper's recycle rules are ones the core takes."""

    @field_validator("rule_set", check_fields=False)
    @classmethod
    def _known_rule_set(cls, v: str) -> str:
        return _rule_set_name(v)

    @field_validator("rule_overrides", check_fields=False)
    @classmethod
    def _overrides(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        return _rule_overrides(v, info)

    @field_validator("recycle", check_fields=False)
    @classmethod
    def _recycle(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _recycle_rules(v)


class CampaignEntry(_Rules):
    """One of several campaigns sharing the floor's agents (by weight), each with its own debtors and rules."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    weight: float = Field(1.0, gt=0)
    leads: Leads | None = None
    rule_set: str = "none"
    rule_overrides: dict[str, Any] = Field(default_factory=dict)
    dnc: FileRef | None = None
    removals: FileRef | None = None
    did_pool: list[str] = Field(default_factory=list)
    did_hour_cap: int = Field(60, gt=0)
    did_day_cap: int = Field(300, gt=0)
    recycle: dict[str, Any] = Field(default_factory=dict)


_PER_CAMPAIGN = ("leads", "rule_set", "rule_overrides", "dnc", "removals", "did_pool", "recycle")


class Scenario(_Rules):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(min_length=1)
    seed: int = Field(1, ge=0)  # numpy's seeds are never negative
    duration_s: float = Field(28_800.0, gt=0)
    pacing_tick_s: float = Field(1.0, gt=0, le=60)
    agents: Agents
    calls: Calls = Calls()
    campaign: CampaignSpec = CampaignSpec()
    amd: Amd = Amd()
    # Compliance reach (the core's gates, hopper and caller IDs, over real calendars):
    start: datetime | None = Field(None, description="ISO date-time with offset of t=0; default 2026-01-05T08:00Z")
    leads: Leads | None = None  # default: an endless list of made-up debtors without zones (pacing studies)
    rule_set: str = "none"
    rule_overrides: dict[str, Any] = Field(default_factory=dict)
    dnc: FileRef | None = None  # CSV number,added_at: each entry takes effect at added_at (simulated time)
    removals: FileRef | None = None  # CSV lead_id,removed_at: leads paid meanwhile, removed at that time
    did_pool: list[str] = Field(default_factory=list)
    did_hour_cap: int = Field(60, gt=0)
    did_day_cap: int = Field(300, gt=0)
    recycle: dict[str, Any] = Field(default_factory=dict)  # the hopper's rules (recycle_delays, max attempts...)
    campaigns: list[CampaignEntry] = Field(default_factory=list)  # several campaigns; else the one above
    base_dir: str = Field(".", exclude=True, description="where relative files are read from (set by the loader)")

    @field_validator("start")
    @classmethod
    def _offset(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("give the offset, e.g. 2026-10-30T08:00:00-04:00")
        return v


    @model_validator(mode="after")
    def _campaigns_or_top_level(self) -> Scenario:
        if self.campaigns:
            given = [k for k in _PER_CAMPAIGN if k in self.model_fields_set]
            if given:
                raise ValueError(f"with campaigns, give {', '.join(given)} per campaign")
            ids = [c.id for c in self.campaigns]
            if len(set(ids)) != len(ids):
                raise ValueError("campaigns: ids must be unique")
        return self

    def campaign_entries(self) -> list[CampaignEntry]:
        """The campaigns to run: the listed ones, or the top-level one (id `sim`)."""
        if self.campaigns:
            return list(self.campaigns)
        return [CampaignEntry(id="sim", leads=self.leads, rule_set=self.rule_set,
                              rule_overrides=dict(self.rule_overrides), dnc=self.dnc, removals=self.removals,
                              did_pool=list(self.did_pool), did_hour_cap=self.did_hour_cap,
                              did_day_cap=self.did_day_cap, recycle=dict(self.recycle))]

    def path(self, ref: str) -> Path:
        p = Path(ref)
        return p if p.is_absolute() else Path(self.base_dir) / p

    @model_validator(mode="after")
    def _schedule_within_the_shift(self) -> Scenario:
        for i, change in enumerate(self.agents.schedule):
            if change.at_s > self.duration_s:  # never reached: a slip (minutes for seconds, a shortened copy)
                raise ValueError(f"agents.schedule.{i}.at_s: {change.at_s:g} s is after the end of the shift "
                                 f"(duration_s {self.duration_s:g})")
        return self

    @model_validator(mode="after")
    def _shares(self) -> Scenario:
        # Sums of piecewise-linear schedules peak at a breakpoint, the start or the end: check those.
        times = {0.0, self.duration_s}
        for k in PROBABILITIES:
            times.update(_breakpoints(getattr(self.calls, k)))
        for t in sorted(times):
            total = sum(self.p(k, t) for k in PROBABILITIES)
            if total > 1.0 + 1e-9:
                raise ValueError(f"calls: p_live + p_machine + p_busy + p_fail is {total:.3f} at t={t:g} s (> 1)")
        return self

    def p(self, name: str, t: float) -> float:
        return value_at(getattr(self.calls, name), t, self.duration_s)


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        _no_key_twice(yaml.compose(text, Loader=yaml.SafeLoader), path)
        data = yaml.safe_load(text)
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"{path}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: the top level must be a mapping")
    data.setdefault("base_dir", str(path.parent))
    return parse_scenario(data, str(path))


def _no_key_twice(node: yaml.Node | None, path: Path) -> None:
    """YAML keeps the last of two equal keys in a mapping without a word (a second `p_live` further down replaced
    the first): refuse them, naming both lines."""
    stack: list[tuple[yaml.Node, str]] = [(node, "")] if node is not None else []
    seen: set[int] = set()
    while stack:
        n, where = stack.pop()
        if id(n) in seen:  # an alias: the anchored node is checked once
            continue
        seen.add(id(n))
        if isinstance(n, yaml.MappingNode):
            first: dict[str, int] = {}
            for k, v in n.value:
                if isinstance(k, yaml.ScalarNode) and k.value != "<<":
                    key = f"{where}.{k.value}" if where else k.value
                    line = k.start_mark.line + 1
                    if k.value in first:
                        raise ScenarioError(f"{path}: line {line}: {key} given twice (first on line "
                                            f"{first[k.value]})")
                    first[k.value] = line
                    stack.append((v, key))
                else:
                    stack.append((v, where))
        elif isinstance(n, yaml.SequenceNode):
            stack.extend((v, f"{where}.{i}") for i, v in enumerate(n.value))


_YES_NO_FIELDS = ("enabled",)  # amd.enabled; rule_overrides and recycle (the core's own mappings) are not walked
_FREE_FORM = ("rule_overrides", "recycle")


def _first_where(value: Any, parsed: Any, test: Callable[[Any, Any, str], bool], where: str = "") -> str | None:
    """The first place, in the file's order, where `test(as written, as parsed, where)` holds (free-form blocks
    left out); `parsed` is None where the model does not mirror the file."""
    if test(value, parsed, where):
        return where
    items: list[tuple[str, Any, Any]] = []
    if isinstance(value, dict):
        items = [(str(k), v, parsed.get(k) if isinstance(parsed, dict) else getattr(parsed, str(k), None))
                 for k, v in value.items() if str(k) not in _FREE_FORM]
    elif isinstance(value, list):
        same = isinstance(parsed, list | tuple) and len(parsed) == len(value)
        items = [(str(i), v, parsed[i] if same else None) for i, v in enumerate(value)]
    for key, v, p in items:
        found = _first_where(v, p, test, f"{where}.{key}" if where else key)
        if found is not None:
            return found
    return None


def _yes_or_no_for_a_number(value: Any, _parsed: Any, where: str) -> bool:
    """A boolean standing for a number (pydantic takes true as 1): YAML reads `yes`, `no`, `on`, `true`..."""
    return isinstance(value, bool) and where.rpartition(".")[2] not in _YES_NO_FIELDS


def _quoted_number(value: Any, parsed: Any, _where: str) -> bool:
    """A quoted string that became a number (pydantic reads "5" as 5): a scenario says what it means in YAML's
    own numbers, and a quoted one is most often a cell pasted from somewhere else, worth a second look."""
    return isinstance(value, str) and isinstance(parsed, int | float) and not isinstance(parsed, bool)


def parse_scenario(data: dict[str, Any], origin: str = "scenario") -> Scenario:
    try:
        sc = Scenario.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {_msg(e['msg'])}" if e["loc"]
                             else _msg(e["msg"]) for e in exc.errors())
        raise ScenarioError(f"{origin}: {problems}") from None
    # Checked once the keys are known good (a misspelt `enable: true` is an unknown key, not a number).
    where = _first_where(data, sc, _yes_or_no_for_a_number)
    if where is not None:
        raise ScenarioError(f"{origin}: {where}: expected a number, got a yes/no ({_dig(data, where)!r})")
    where = _first_where(data, sc, _quoted_number)
    if where is not None:
        raise ScenarioError(f"{origin}: {where}: expected a number, got a quoted string ({_dig(data, where)!r}): "
                            "remove the quotes")
    return sc



def _dig(data: Any, where: str) -> Any:
    for key in where.split("."):
        data = data[int(key)] if isinstance(data, list) else data[key]
    return data


def _msg(msg: str) -> str:
    return msg.removeprefix("Value error, ")


def random_streams(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """(callers, agents): independent streams spawned from one seeded Generator.

    Separate streams keep the callers identical whichever strategy dials them (the n-th dial meets the n-th
    fate), however many wrap-ups the agents draw in between: strategies are compared on the same people.
    """
    calls, agents = np.random.default_rng(seed).spawn(2)
    return calls, agents


@dataclass(frozen=True, slots=True)
class CallFate:
    """What one dialled call will do, drawn up front so every strategy can face the same callers."""

    kind: str  # live | machine | busy | fail | no_answer
    answer_s: float  # dial → answer (or → busy/failure signal); AMD detection comes on top
    talk_s: float  # answer → the far end hangs up once connected (a machine's greeting for machines)
    patience_s: float  # a person left waiting for an agent hangs up after this (inf: never)
    amd_says_machine: bool  # AMD's verdict when enabled (false classifications included)


def draw_fate(sc: Scenario, rng: np.random.Generator, t: float, ring_s: float | None = None) -> CallFate:
    """The call model, shared by the simulator and the simulated PBX; `t` is seconds into the shift, `ring_s`
    how long the line rings (the core's ring timeout, which a rule set's minimum ring may make longer than the
    scenario's `no_answer_timeout_s`; None: that timeout). A person who would pick up later is a no answer.

    Every fate takes the same number of draws whatever its kind, so one caller's fate never shifts the
    stream of the next.
    """
    c = sc.calls
    u = float(rng.random())
    answer = c.answer_delay_s.sample(rng)
    talk = c.talk_s.sample(rng)
    patience = c.patience_s.sample(rng) if c.patience_s is not None else math.inf
    flip = float(rng.random()) if sc.amd.enabled else 1.0
    dur = sc.duration_s  # `sc.p` inlined: this runs for every dial
    p_live = value_at(c.p_live, t, dur)
    p_machine = p_live + value_at(c.p_machine, t, dur)
    p_busy = p_machine + value_at(c.p_busy, t, dur)
    p_fail = p_busy + value_at(c.p_fail, t, dur)
    answered = answer < (c.no_answer_timeout_s if ring_s is None else ring_s)
    if u < p_live:
        kind = "live" if answered else "no_answer"
    elif u < p_machine:
        kind = "machine" if answered else "no_answer"
        talk = min(talk, c.machine_talk_s)
    elif u < p_busy:
        kind, answer = "busy", min(answer, 5.0)  # a busy signal comes within seconds
    elif u < p_fail:
        kind, answer = "fail", min(answer, 2.0)
    else:
        kind = "no_answer"
    amd_machine = False
    if sc.amd.enabled and kind == "live":
        amd_machine = flip < sc.amd.false_machine
    elif sc.amd.enabled and kind == "machine":
        amd_machine = flip >= sc.amd.false_human
    return CallFate(kind, answer, talk, patience, amd_machine)
