"""Bearer-token auth with roles.

Tokens come from configuration (`api.tokens`), each with a role. A missing or unknown token is 401 with
`WWW-Authenticate: Bearer`; a known token whose role may not do the thing is 403 naming the roles that may.
With no tokens configured auth is off (the embedded demo): every request acts as admin, and a warning says so
once at start-up. Tokens are compared in constant time and never logged: logs name the token's holder.

Open without a token: /healthz, /readyz, /metrics (probes and Prometheus scrape them), /docs and /openapi.json.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from config.settings import ApiToken, Role

log = logging.getLogger("marcador.api.auth")

ALL_ROLES: tuple[Role, ...] = ("admin", "integrator", "supervisor", "agent", "viewer")
# Who may do what (admin may do everything; each dependency below names the others).
READ: tuple[Role, ...] = ("admin", "integrator", "supervisor", "viewer")
MANAGE: tuple[Role, ...] = ("admin", "integrator")  # campaigns, leads, DNC
CONTROL: tuple[Role, ...] = ("admin", "integrator", "supervisor")  # start / pause / stop campaigns
AGENT_STATE: tuple[Role, ...] = ("admin", "supervisor", "agent")  # agent login/ready/pause/logout, dispositions
WEBHOOKS: tuple[Role, ...] = ("admin", "integrator", "supervisor")  # webhook events kept: list, redeliver, delete


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: Role
    agent_id: str | None = None  # role agent: the one agent it may act for

    def may_act_for(self, agent_id: str) -> bool:
        return self.role != "agent" or self.agent_id == agent_id


ANONYMOUS = Principal(name="anonymous (auth off)", role="admin")

_bearer = HTTPBearer(auto_error=False, description="a token from `api.tokens`")


class TokenBook:
    """The configured tokens. Lookup walks every token with `hmac.compare_digest` (no early exit on a match),
    so timing does not tell how close a guess was nor which entry matched."""

    def __init__(self, tokens: Sequence[ApiToken] = ()) -> None:
        self._entries = [(t.token.get_secret_value().encode(), Principal(t.name, t.role, t.agent_id)) for t in tokens]
        if not self._entries:
            log.warning("API auth is OFF: no api.tokens configured, every request acts as admin "
                        "(fine for the local demo, never for a reachable deployment)")

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    def lookup(self, presented: str) -> Principal | None:
        raw = presented.encode()
        found: Principal | None = None
        for secret, principal in self._entries:
            if hmac.compare_digest(secret, raw) and found is None:
                found = principal
        return found


def _route(request: Request) -> str:
    # The route template, not the path: a path may hold a phone number (/dnc/{number}).
    route = request.scope.get("route")
    return str(getattr(route, "path", "?"))


def _unauthorized(request: Request, why: str) -> HTTPException:
    # The route and the reason only: never the Authorization header or any part of the token.
    log.warning("unauthorized request", extra={"fields": {"route": _route(request), "why": why}})
    return HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})


def denied_before_body(request: Request) -> HTTPException | None:
    """The 401 or 403 the route's auth dependency would give, when auth is on; else None. For answers given before
    that dependency ran (FastAPI decodes a JSON body first): a caller without the right never learns of its body's
    errors."""
    book: TokenBook | None = getattr(request.app.state, "tokens", None)
    if book is None or not book.enabled:
        return None
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")  # as HTTPBearer reads it
    try:
        principal = _admit(request, book, scheme, presented, _route_roles(request))
    except HTTPException as exc:
        return exc
    agent_id = request.path_params.get("agent_id")
    if isinstance(agent_id, str) and not principal.may_act_for(agent_id):  # as check_agent in the route
        return _other_agent(principal)
    return None


def _route_roles(request: Request) -> frozenset[str] | None:
    """The roles the matched route's `require` dependency lets in (None: no such route, or none found)."""
    dependant = getattr(request.scope.get("route"), "dependant", None)
    todo = [dependant] if dependant is not None else []
    while todo:
        dep = todo.pop()
        roles = getattr(dep.call, "roles", None)
        if isinstance(roles, frozenset):
            return roles
        todo.extend(dep.dependencies)
    return None


def _admit(request: Request, book: TokenBook, scheme: str, presented: str,
           allowed: frozenset[str] | None) -> Principal:
    """The principal of a bearer token whose role is in `allowed` (None: any); else the 401 or 403, raised."""
    if scheme.lower() != "bearer" or not presented:
        raise _unauthorized(request, "missing")
    principal = book.lookup(presented)
    if principal is None:
        raise _unauthorized(request, "unknown token")
    if allowed is not None and principal.role not in allowed:
        log.info("forbidden", extra={"fields": {"route": _route(request), "holder": principal.name,
                                                "role": principal.role}})
        raise HTTPException(403, f"role {principal.role!r} may not do this; needs one of: "
                                 f"{', '.join(sorted(allowed))}")
    return principal


def _other_agent(principal: Principal) -> HTTPException:
    return HTTPException(403, f"an agent token may act for agent {principal.agent_id!r} only")


def require(*roles: Role) -> Callable[..., Principal]:
    """A FastAPI dependency: the caller's principal, if its role is one of `roles` (admin always is)."""
    allowed = frozenset(roles) | {"admin"}

    def dependency(
        request: Request,
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        book: TokenBook = request.app.state.tokens
        if not book.enabled:
            return ANONYMOUS
        return _admit(request, book, creds.scheme if creds else "", creds.credentials if creds else "", allowed)

    dependency.roles = allowed  # type: ignore[attr-defined]  # read by denied_before_body
    return dependency


def check_agent(principal: Principal, agent_id: str) -> None:
    """Role agent acts for its own agent only."""
    if not principal.may_act_for(agent_id):
        raise _other_agent(principal)




# Dependencies by what an endpoint does (module level: FastAPI resolves annotations in the module's globals).
Reader = Annotated[Principal, Depends(require(*READ))]
Manager = Annotated[Principal, Depends(require(*MANAGE))]
Controller = Annotated[Principal, Depends(require(*CONTROL))]
AgentActor = Annotated[Principal, Depends(require(*AGENT_STATE))]
AgentReader = Annotated[Principal, Depends(require(*READ, "agent"))]
WebhookAdmin = Annotated[Principal, Depends(require(*WEBHOOKS))]
