"""Scenario files: a call centre's floor and its callers, as data (YAML), shared by the discrete-event
simulator and the simulated PBX.

    name: collections-50
    seed: 1
    duration_s: 28800
    agents: {count: 50, wrapup_s: {dist: fixed, value: 10}, schedule: [{at_s: 14400, count: 25}]}
    calls:
      p_live: 0.20            # or {from: 0.30, to: 0.10} (linear over the shift) or [[0, 0.3], [14400, 0.1]]
      p_machine: 0.0
      p_busy: 0.08
      p_fail: 0.05            # the rest: no answer
      answer_delay_s: {dist: lognormal, median: 8, sigma: 0.5, max: 25}
      no_answer_timeout_s: 25
      talk_s: {dist: gamma, mean: 150, cv: 0.8}
      patience_s: null        # a waiting person hangs up after this (a distribution); null: never
    campaign: {abandon_target: 0.03, abandon_threshold_s: 2.0}
    amd: {enabled: false, detect_s: 2.5, false_machine: 0.05, false_human: 0.15}

Distributions: fixed (value), exponential (mean), uniform (low, high), lognormal (median, sigma),
gamma (mean, cv); each with optional min/max (clipped).
"""

from __future__ import annotations

import bisect
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names the file and the field."""


class Dist(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dist: Literal["fixed", "exponential", "uniform", "lognormal", "gamma"]
    value: float | None = None
    mean: float | None = Field(None, gt=0)
    low: float | None = None
    high: float | None = None
    median: float | None = Field(None, gt=0)
    sigma: float | None = Field(None, ge=0)
    cv: float | None = Field(None, gt=0)
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _params(self) -> Dist:
        need = {"fixed": ("value",), "exponential": ("mean",), "uniform": ("low", "high"),
                "lognormal": ("median", "sigma"), "gamma": ("mean", "cv")}[self.dist]
        missing = [p for p in need if getattr(self, p) is None]
        if missing:
            raise ValueError(f"{self.dist} needs {', '.join(missing)}")
        if self.dist == "uniform" and self.low is not None and self.high is not None and self.high < self.low:
            raise ValueError("uniform: high must be >= low")
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
        if self.min is not None:
            x = max(x, self.min)
        if self.max is not None:
            x = min(x, self.max)
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
    """A value that changes over the shift: linear `from` → `to`, or piecewise-linear points [[t, v], ...]."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    start: float = Field(alias="from")
    end: float = Field(alias="to")


Schedule = float | Ramp | list[tuple[float, float]]


def value_at(spec: Schedule, t: float, duration_s: float) -> float:
    if isinstance(spec, int | float):
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


class AgentChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at_s: float = Field(ge=0)
    count: int = Field(ge=0)


class Agents(BaseModel):
    model_config = ConfigDict(extra="forbid")

    count: int = Field(ge=0, le=100_000)
    wrapup_s: Dist = Dist(dist="fixed", value=10.0)
    schedule: list[AgentChange] = []

    def count_at(self, t: float) -> int:
        n = self.count
        for change in sorted(self.schedule, key=lambda c: c.at_s):
            if change.at_s <= t:
                n = change.count
        return n


class Calls(BaseModel):
    model_config = ConfigDict(extra="forbid")

    p_live: Schedule = 0.2
    p_machine: Schedule = 0.0
    p_busy: Schedule = 0.08
    p_fail: Schedule = 0.05
    answer_delay_s: Dist = Dist(dist="lognormal", median=8, sigma=0.5, max=25)
    no_answer_timeout_s: float = Field(25.0, gt=0)
    talk_s: Dist = Dist(dist="gamma", mean=150, cv=0.8)
    patience_s: Dist | None = None

    @field_validator("p_live", "p_machine", "p_busy", "p_fail")
    @classmethod
    def _probability(cls, v: Schedule) -> Schedule:
        values = [v] if isinstance(v, int | float) else [v.start, v.end] if isinstance(v, Ramp) else [p[1] for p in v]
        if any(not 0.0 <= float(x) <= 1.0 for x in values):
            raise ValueError("a probability must be within 0..1")
        if isinstance(v, list) and [p[0] for p in v] != sorted(p[0] for p in v):
            raise ValueError("schedule points must be in time order")
        return v


class CampaignSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    abandon_target: float = Field(0.03, gt=0, le=0.5)
    abandon_threshold_s: float = Field(2.0, gt=0)
    max_lines_per_agent: float = Field(4.0, gt=0)
    max_calls_per_s: float = Field(50.0, gt=0)


class Amd(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    detect_s: float = Field(2.5, ge=0)
    false_machine: float = Field(0.05, ge=0, le=1)  # a person classified as machine (hung up on)
    false_human: float = Field(0.15, ge=0, le=1)  # a machine classified as person (sent to an agent)


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    seed: int = 1
    duration_s: float = Field(28_800.0, gt=0)
    agents: Agents
    calls: Calls = Calls()
    campaign: CampaignSpec = CampaignSpec()
    amd: Amd = Amd()

    @model_validator(mode="after")
    def _shares(self) -> Scenario:
        for t in (0.0, self.duration_s):
            total = sum(value_at(getattr(self.calls, k), t, self.duration_s)
                        for k in ("p_live", "p_machine", "p_busy", "p_fail"))
            if total > 1.0 + 1e-9:
                raise ValueError(f"calls: p_live + p_machine + p_busy + p_fail is {total:.3f} at t={t:g} s (> 1)")
        return self

    def p(self, name: str, t: float) -> float:
        return value_at(getattr(self.calls, name), t, self.duration_s)


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: the top level must be a mapping")
    return parse_scenario(data, str(path))


def parse_scenario(data: dict[str, Any], origin: str = "scenario") -> Scenario:
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise ScenarioError(f"{origin}: {problems}") from None


class CallFate:
    """What one dialled call will do, drawn up front so every strategy can face the same callers."""

    __slots__ = ("amd_says_machine", "answer_s", "kind", "patience_s", "talk_s")

    def __init__(self, kind: str, answer_s: float, talk_s: float, patience_s: float, amd_says_machine: bool) -> None:
        self.kind = kind  # live | machine | busy | fail | no_answer
        self.answer_s = answer_s  # dial → answer (or → busy/failure signal)
        self.talk_s = talk_s
        self.patience_s = patience_s
        self.amd_says_machine = amd_says_machine


def draw_fate(sc: Scenario, rng: np.random.Generator, t: float) -> CallFate:
    """The call model, shared by the simulator and the simulated PBX."""
    c = sc.calls
    u = float(rng.random())
    p_live, p_machine, p_busy, p_fail = (sc.p(k, t) for k in ("p_live", "p_machine", "p_busy", "p_fail"))
    answer = c.answer_delay_s.sample(rng)
    talk = c.talk_s.sample(rng)
    patience = c.patience_s.sample(rng) if c.patience_s is not None else math.inf
    if u < p_live:
        kind = "live" if answer < c.no_answer_timeout_s else "no_answer"
    elif u < p_live + p_machine:
        kind = "machine" if answer < c.no_answer_timeout_s else "no_answer"
    elif u < p_live + p_machine + p_busy:
        kind, answer = "busy", min(answer, 5.0)
    elif u < p_live + p_machine + p_busy + p_fail:
        kind, answer = "fail", min(answer, 2.0)
    else:
        kind = "no_answer"
    amd_machine = False
    if sc.amd.enabled and kind in ("live", "machine"):
        flip = float(rng.random())
        amd_machine = flip < sc.amd.false_machine if kind == "live" else flip >= sc.amd.false_human
    return CallFate(kind, answer, talk, patience, amd_machine)
