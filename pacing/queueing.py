"""Steady-state what-ifs (Erlang-B, Erlang-C, Erlang-A): dial-level and staffing suggestions.

Not the per-tick decision (that is `pacing.erlang`): these answer "how many agents for this load" and
"what dial level, on average, keeps this floor busy".
"""

from __future__ import annotations

import math


def erlang_b(servers: int, load: float) -> float:
    """Blocking probability with `servers` lines and `load` Erlangs (the stable recursion)."""
    if servers < 0 or load < 0:
        raise ValueError("servers and load must be >= 0")
    b = 1.0
    for k in range(1, servers + 1):
        b = load * b / (k + load * b)
    return b


def erlang_c(servers: int, load: float) -> float:
    """Probability that a caller waits (M/M/c); 1.0 when the load is at or above the servers."""
    if load >= servers:
        return 1.0
    b = erlang_b(servers, load)
    return servers * b / (servers - load * (1.0 - b))


def erlang_a_abandon(servers: int, arrival_rate: float, mean_service_s: float, mean_patience_s: float) -> float:
    """Erlang-A (M/M/c+M): the share of callers who hang up before an agent takes them.

    Birth-death chain with state-dependent abandonment; sums are truncated once terms vanish.
    """
    mu, theta = 1.0 / mean_service_s, 1.0 / mean_patience_s
    lam = arrival_rate
    # p_k ∝ (λ/μ)^k / k! for k ≤ c; beyond, each extra waiting caller multiplies by λ / (cμ + jθ).
    log_terms = [k * math.log(lam / mu) - math.lgamma(k + 1) if lam > 0 else (0.0 if k == 0 else -math.inf)
                 for k in range(servers + 1)]
    top = max(log_terms)
    weights = [math.exp(t - top) for t in log_terms]
    base = weights[-1]
    queue_weights: list[float] = []
    w = base
    j = 1
    while True:
        w *= lam / (servers * mu + j * theta)
        queue_weights.append(w)
        if w < 1e-15 * base or j > 100_000:
            break
        j += 1
    total = sum(weights) + sum(queue_weights)
    abandon_rate = sum(theta * (i + 1) * qw for i, qw in enumerate(queue_weights)) / total
    return abandon_rate / lam if lam > 0 else 0.0


def staffing_for(arrival_rate: float, mean_service_s: float, mean_patience_s: float, max_abandon: float) -> int:
    """Fewest agents that keep Erlang-A abandonment at or under `max_abandon`."""
    servers = max(1, math.ceil(arrival_rate * mean_service_s))
    while erlang_a_abandon(servers, arrival_rate, mean_service_s, mean_patience_s) > max_abandon:
        servers += 1
    return servers


def suggest_dial_level(agents: int, p_live: float, mean_handle_s: float, mean_ring_s: float,
                       target_occupancy: float = 0.9) -> float:
    """Average lines per agent that feed `agents` at `target_occupancy`: each agent needs a live answer every
    handle/occupancy seconds, and a line yields one every (ring time)/p_live seconds."""
    if not 0 < p_live <= 1:
        raise ValueError("p_live must be within (0, 1]")
    cycle = mean_handle_s / target_occupancy
    lines = agents * (mean_ring_s / p_live) / cycle
    return max(1.0, lines / max(agents, 1)) if agents else 0.0

