"""The REST API (FastAPI) under /api/v1: campaigns, leads, DNC, agents, dispositions, stats, attempts, events.

OpenAPI at /docs. Auth: bearer tokens with roles (api/auth.py). Open: /healthz, /readyz, /metrics.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import binascii
import codecs
import collections
import concurrent.futures
import contextlib
import csv
import hashlib
import json
import logging
import math
import multiprocessing
import os
import re
import threading
import time
import typing
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    NaiveDatetime,
    ValidationError,
    field_validator,
    model_validator,
)
from starlette.requests import ClientDisconnect

from api.auth import (
    AgentActor,
    AgentReader,
    Controller,
    Manager,
    Reader,
    TokenBook,
    WebhookAdmin,
    check_agent,
    denied_before_body,
)
from api.dashboard import dashboard_router
from api.events import EventHub, parse_last_id, parse_types
from api.metrics import abandon_windows, render_metrics
from api.webhooks import Webhooks
from config.settings import ApiSettings
from dialer.compliance.rulesets import RuleSet, load_rule_set
from dialer.core import PREVIEW, DialerCore
from dialer.events import (
    AgentLogin,
    AgentLogout,
    AgentState,
    Disposition,
    DncAdd,
    LeadRemoved,
    PreviewDial,
    PreviewRequest,
    PreviewSkip,
    ScheduleCallback,
)
from dialer.hopper import local_time_to_epoch
from dialer.leads import (
    KNOWN_COLUMNS,
    MAX_AMOUNT,
    LeadFileError,
    ParseReport,
    RowIssue,
    accept,
    iter_csv_leads,
    lead_from_row,
    parse_csv_block,
)
from dialer.leads import normalise_phone as lead_phone
from dialer.model import AgentStatus, Attempt, CampaignSettings, CampaignStatus, Lead, Outcome
from dialer.ports import CampaignBusy, FailedWebhook
from dialer.runtime import Runtime
from pacing.registry import STRATEGIES

log = logging.getLogger("marcador.api")

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# An agent id is the extension of the agent contexts (marcador-agent-login, -room), which declare these two.
_DIALPLAN_RESERVED = frozenset({"h", "i"})
_CODE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")  # a line with its end, or a last one without
LEAD_BATCH = 5000
_DNC_SLICE = 500  # DNC numbers the core takes between two turns of the loop (about 50 ms)
# Uploads of at least this many bytes are parsed in worker processes, in blocks of this many records.
POOL_MIN_BYTES = 64 * 1024
POOL_BLOCK_ROWS = 2500
POOL_BLOCKS_IN_FLIGHT = 4
_pool: concurrent.futures.ProcessPoolExecutor | None = None


def _lead_pool(field_limit: int) -> concurrent.futures.ProcessPoolExecutor:
    """One pool of lead parsers per process, started on the first big upload (forkserver: children do not
    inherit the engine's threads and sockets; they import only what parsing needs)."""
    global _pool
    if _pool is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["dialer.leads"])
        _pool = concurrent.futures.ProcessPoolExecutor(max_workers=max(1, os.cpu_count() or 1), mp_context=ctx,
                                                       initializer=csv.field_size_limit, initargs=(field_limit,))
        atexit.register(_pool.shutdown, wait=True, cancel_futures=True)  # before the interpreter tears down
    return _pool
_READY_TIMEOUT_S = 2.0
_ATTEMPT_SCAN = 500  # attempts read from the store per round when an outcome filter thins the page

# ---------------------------------------------------------------------------------------------- schemas


class CampaignIn(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    campaign_id: str = Field(pattern=_ID.pattern, description="stable id, letters/digits/-/_")
    name: str = Field("", max_length=200)
    strategy: str = Field("progressive", description="pacing strategy, or `preview` (agents dial)")
    abandon_target: float = Field(0.03, gt=0, le=0.2, description="abandoned / live answers the pacer holds under")
    abandon_threshold_s: float = Field(2.0, ge=0.5, le=10, description="seconds a live answer may wait for an agent")
    ring_timeout_s: float = Field(25.0, ge=15, le=120, description="no-answer timeout (≥ 15 s, TSR)")
    wrapup_s: float | None = Field(5.0, ge=0, le=3600, description="wrap-up timeout; null: until a disposition")
    caller_id: str = Field("Marcador <1000>", max_length=100, description="caller id presented")
    max_lines: int = Field(500, ge=1, le=10000)
    max_lines_per_agent: float = Field(4.0, ge=1, le=20)
    max_calls_per_s: float = Field(50.0, gt=0, le=1000)
    skill: str | None = Field(None, pattern=_ID.pattern, description="agents need this skill; best level first")
    weight: float = Field(1.0, gt=0, le=1000, description="share of shared agents among running campaigns")
    amd: bool = Field(False, description="run answering-machine detection on answer")
    rule_set: str = Field("none", description="compliance rule set (us, uk, co, mx, es, ...); `none`: DNC only")
    rule_overrides: dict[str, Any] = Field({}, description="tighten-only overrides of the rule set")
    did_pool: list[str] = Field([], description="caller-ID DIDs (E.164) the operator owns; empty: `caller_id`")
    did_hour_cap: int = Field(60, ge=1, description="calls per DID per rolling hour")
    did_day_cap: int = Field(300, ge=1, description="calls per DID per rolling day")
    hopper: dict[str, Any] = Field({}, description="lead priorities and recycling rules")
    dispositions: list[dict[str, Any]] = Field([], description="disposition codes; empty: the collections defaults")

    @field_validator("caller_id")
    @classmethod
    def _one_line(cls, v: str) -> str:
        # It goes into an AMI header: a CR or LF would end the header and smuggle in more fields or a whole
        # action (an Originate no gate judged). Any control character is refused, not stripped.
        if _CONTROL.search(v):
            raise ValueError("control characters (line breaks, tabs, NUL) are not allowed")
        return v

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, v: str) -> str:
        if v != PREVIEW and v not in STRATEGIES:
            raise ValueError(f"unknown strategy {v!r}; known: {', '.join(sorted([*STRATEGIES, PREVIEW]))}")
        return v

    def settings(self) -> CampaignSettings:
        return CampaignSettings(**self.model_dump())


class CallbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    at: AwareDatetime | None = Field(None, description="when, ISO 8601 with its offset")
    local: NaiveDatetime | None = Field(None, description="or: a wall-clock time in the debtor's own zone")
    agent_id: str | None = Field(None, pattern=_ID.pattern, description="the agent who calls back; none: anyone")

    @model_validator(mode="after")
    def _one_time(self) -> CallbackIn:
        if (self.at is None) == (self.local is None):
            raise ValueError("give exactly one of at (with offset) or local (the debtor's wall clock)")
        return self


class CampaignPatch(BaseModel):
    """Fields to change; omitted fields keep their value. Changing a pacing field restarts the pacer's estimates."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str | None = None
    strategy: str | None = None
    abandon_target: float | None = None
    abandon_threshold_s: float | None = None
    ring_timeout_s: float | None = None
    wrapup_s: float | None = None
    caller_id: str | None = None
    max_lines: int | None = None
    max_lines_per_agent: float | None = None
    max_calls_per_s: float | None = None
    skill: str | None = None
    weight: float | None = None
    amd: bool | None = None
    rule_set: str | None = None
    rule_overrides: dict[str, Any] | None = None
    did_pool: list[str] | None = None
    did_hour_cap: int | None = None
    did_day_cap: int | None = None
    hopper: dict[str, Any] | None = None
    dispositions: list[dict[str, Any]] | None = None


class CampaignOut(CampaignIn):
    status: str


class RejectedRow(BaseModel):
    row: int = Field(description="row number in the upload (CSV data rows and JSON items count from `first_row`)")
    field: str
    reason: str


class LeadsResult(BaseModel):
    accepted: int = Field(description="rows that are valid leads")
    new: int = Field(description="accepted leads the campaign did not have yet (stored by this upload)")
    duplicates: int = Field(description="accepted leads whose lead_id the campaign already had (left as they were)")
    rejected: list[RejectedRow] = Field(description="every row refused, with the field and the reason")
    held: list[RejectedRow] = Field(description="rows stored but held back from dialing, with the reason")
    warnings: list[RejectedRow] = Field(description="phones dropped from accepted rows (the row's other phones are "
                                                    "good), with the field and the reason")


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, bool] = {}
    failing: list[str] = []


class AgentLoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    campaigns: list[str] = Field([], description="campaigns to work; empty: every campaign")
    skills: dict[str, int] = Field({}, description="skill → level (higher is better)")


class PauseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt `reason` is not replaced by the default

    reason: str = Field("paused", max_length=64)


class PreviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    campaign_id: str = Field(pattern=_ID.pattern, description="the campaign to take the next lead from")


class DispositionIn(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    code: str = Field(pattern=_CODE.pattern, description="a code of the campaign's disposition set, e.g. PTP")
    callback_at: float | None = Field(None, description="epoch seconds of an agreed callback (callback codes)")
    own_callback: bool = Field(False, description="the callback goes to this agent")
    ptp_amount: float | None = Field(None, lt=MAX_AMOUNT, description="promise to pay: the amount (under 10^12, as "
                                                                         "a lead's amount_due)")
    ptp_date: date | None = Field(None, description="promise to pay: the date (ISO)")


class DncIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    numbers: list[str] = Field(min_length=1, max_length=100_000)
    campaign_id: str | None = Field(None, description="absent: the global list")


class DncAdded(BaseModel):
    added: int = Field(description="numbers new to the list (stored by this request)")
    already: int = Field(description="numbers that were on the list already (left as they were)")
    repeated: int = Field(description="entries repeating a number earlier in this request (in any spelling)")


class AttemptsPage(BaseModel):
    items: list[dict[str, Any]]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null at the end")


class FailedWebhookOut(BaseModel):
    id: int = Field(description="the kept event's id (rising)")
    hook: str = Field(description="the webhook's label: its URL's origin, as in /metrics (`#2` for a second hook)")
    kind: str = Field(description="the event's type")
    delivery_id: str = Field(description="its X-Marcador-Delivery id, the same when redelivered")
    reason: str = Field(description="why it was last given up: `HTTP 404`, `ConnectError after 8 tries`, "
                                    "`queue full`, `shutdown`...")
    failed_at: float = Field(description="when it was last given up (epoch seconds)")
    tries: int = Field(description="times it was given up: 1, plus one per redelivery given up again")
    event: dict[str, Any] = Field(description="the body sent: {type, data, id, ts}")


class FailedWebhooksPage(BaseModel):
    kept: int = Field(description="events kept in all, every hook's (whatever the filter)")
    items: list[FailedWebhookOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null at the end")


class RedeliverIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[int] | None = Field(None, max_length=10_000, description="these kept events; or `all`")
    all: bool = Field(False, description="every kept event (of `hook` and `kind` when given)")
    hook: str | None = Field(None, description="with `all`: only this webhook's (its label)")
    kind: str | None = Field(None, description="with `all`: comma list of type prefixes, e.g. `call.`")

    @model_validator(mode="after")
    def _one_choice(self) -> RedeliverIn:
        if (self.ids is None) == (not self.all):
            raise ValueError("give either ids or all: true")
        if self.ids is not None and (self.hook is not None or self.kind is not None):
            raise ValueError("hook and kind filter `all`; with ids, give the ids alone")
        return self


class RedeliverOut(BaseModel):
    queued: int = Field(description="queued again on their webhook's sender")
    already_queued: int = Field(description="on their way already (an earlier redelivery)")
    queue_full: int = Field(description="left kept: the sender's queue is full; send again later")
    no_webhook: int = Field(description="left kept: no webhook of that label on this node")
    not_found: list[int] = Field(description="ids not kept (delivered, deleted, or dropped for the bound)")


def _header_hint(header: str | None) -> str:
    """What to add to a refused CSV header that is one column: the file is separated by semicolons or tabs (Excel
    where the decimal mark is a comma saves "CSV" with semicolons), not commas."""
    if header and "," not in header:
        for sep, name in ((";", "semicolons"), ("\t", "tabs")):
            if sep in header:
                return f"; the header is separated by {name}: save the file as comma-separated CSV"
    return ""


# ---------------------------------------------------------------------------------------------- DNC


def _dnc_number(raw: str) -> str:
    """A DNC entry as E.164: written with its country code as `+`, `00` or `tel:` (the spellings the DNC list
    files under one key, README: Compliance gates). ValueError says why not."""
    text = raw.strip().removeprefix("tel:").strip()
    if text.startswith("00"):
        text = "+" + text[2:]
    return lead_phone(text, None)


# ---------------------------------------------------------------------------------------------- rule overrides


def _scalar_rules() -> dict[str, tuple[type, bool]]:
    """The rule set's scalar fields an override may set: field -> (bool, int or float; None allowed)."""
    out: dict[str, tuple[type, bool]] = {}
    for name, hint in typing.get_type_hints(RuleSet).items():
        args = typing.get_args(hint) or (hint,)
        kinds = [a for a in args if a is not type(None)]
        if len(kinds) == 1 and kinds[0] in (bool, int, float):
            out[name] = (kinds[0], type(None) in args)
    return out


_SCALAR_RULES = _scalar_rules()


def _wrong_type(field: str, value: Any) -> str | None:
    """Why `value` cannot be the override of `field` by its JSON type alone (the rule set compares it, or stores
    it where it has no limit, and a string there was a 500 or a rule that broke the campaign later)."""
    if field == "attempt_caps":
        pairs = isinstance(value, list) and all(
            isinstance(p, list) and len(p) == 2 and type(p[0]) is int and p[0] >= 1
            and isinstance(p[1], int | float) and not isinstance(p[1], bool) and math.isfinite(p[1]) and p[1] > 0
            for p in value)
        return None if pairs else "give a list of [attempts, window seconds] pairs, e.g. [[7, 604800]]"
    if field not in _SCALAR_RULES or value is None:
        return None  # windows, an unknown field, or None: the rule set's own check says what is wrong
    kind, _ = _SCALAR_RULES[field]
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = type(value) is int
    else:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    wanted = "a boolean" if kind is bool else "an integer" if kind is int else "a number"
    return None if ok else f"{value!r} is not {wanted}"


def rule_override_problem(rule_set: str, overrides: Mapping[str, Any]) -> str | None:
    """What is wrong with a campaign's `rule_overrides`, named `rule_overrides.<field>: ...`; None when each
    override alone is a valid tightening of `rule_set` (an unknown rule set is left to the core's check)."""
    try:
        load_rule_set(rule_set)
    except ValueError:
        return None
    for field, value in overrides.items():
        why = _wrong_type(field, value)
        if why is None:
            try:
                load_rule_set(rule_set, {field: value})
            except ValueError as exc:
                why = str(exc).removeprefix(f"{field}: ")
            except TypeError:
                why = f"{value!r} is not a value of the right type for it"
        if why is not None:
            return f"rule_overrides.{field}: {why}"
    return None


# ---------------------------------------------------------------------------------------------- idempotency


@dataclass(slots=True)
class _Stored:
    fingerprint: str
    status: int
    body: dict[str, Any]
    expires: float


class IdempotencyCache:
    """Idempotency-Key → the answer given, for `ttl_s`, at most `max_keys` (least recently used forgotten)."""

    def __init__(self, ttl_s: float, max_keys: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_keys = max_keys
        self.clock = clock
        self._done: OrderedDict[str, _Stored] = OrderedDict()
        self._pending: set[str] = set()

    def get(self, key: str) -> _Stored | None:
        found = self._done.get(key)
        if found is None:
            return None
        if found.expires <= self.clock():
            del self._done[key]
            return None
        self._done.move_to_end(key)
        return found

    def begin(self, key: str) -> bool:
        """Claim the key for one request; False while another request with it is still running."""
        if key in self._pending:
            return False
        self._pending.add(key)
        return True

    def finish(self, key: str, fingerprint: str | None, status: int, body: dict[str, Any]) -> None:
        self._pending.discard(key)
        if fingerprint is None:
            return
        self._done[key] = _Stored(fingerprint, status, body, self.clock() + self.ttl_s)
        self._done.move_to_end(key)
        while len(self._done) > self.max_keys:
            self._done.popitem(last=False)

    def __len__(self) -> int:
        return len(self._done)


# ---------------------------------------------------------------------------------------------- leads upload


class _TooLarge(Exception):
    pass


def _issue(i: RowIssue) -> dict[str, Any]:
    return {"row": i.row, "field": i.field, "reason": i.reason}


def _result(report: ParseReport, new: int) -> dict[str, Any]:
    return {
        "accepted": report.accepted,
        "new": new,
        "duplicates": max(0, report.accepted - new),
        "rejected": [_issue(i) for i in report.rejected],
        "held": [_issue(i) for i in report.held],
        "warnings": [_issue(i) for i in report.warnings],
    }


class _Lines:
    """Bytes chunks → text lines (line ends kept, so quoted newlines survive for the CSV reader)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
        self._tail = ""

    def feed(self, chunk: bytes, final: bool = False) -> list[str]:
        # A NUL stops Python's CSV reader for the whole file; as a replacement character it fails only its field.
        text = self._tail + self._decoder.decode(chunk, final=final).replace("\x00", "\ufffd")
        if not text:
            return []
        # CR and LF only, as the CSV reader ends rows: str.splitlines also cuts at U+2028, U+0085, form feed...,
        # which may sit inside a field (text pasted from the web) and would split its row in two.
        lines = _LINE.findall(text)
        self._tail = ""
        if not final and (not lines[-1].endswith(("\n", "\r")) or lines[-1].endswith("\r")):
            self._tail = lines.pop()  # an unfinished line (or a \r whose \n may follow in the next chunk)
        return lines


async def _body_chunks(request: Request, limit: int) -> AsyncIterator[bytes]:
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge()
        if chunk:
            yield chunk


def _json_kind(value: Any) -> str:
    return "an array" if isinstance(value, list) else "a boolean" if isinstance(value, bool) else "an object"


def _json_row(item: Mapping[str, Any]) -> dict[str, Any]:
    # The CSV column format from JSON values: scalars as they are (the parser reads numbers), nested values
    # (custom fields only) as JSON text.
    return {str(k): json.dumps(v) if isinstance(v, dict | list) else v for k, v in item.items()}


# ---------------------------------------------------------------------------------------------- attempts


def _encode_cursor(att: Attempt) -> str:
    raw = json.dumps([att.dialed_at, att.call_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        dialed_at, call_id = json.loads(raw)
        if not math.isfinite(float(dialed_at)):
            raise ValueError("not a time")
        return float(dialed_at), str(call_id)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise HTTPException(422, "cursor: not a cursor this API gave") from exc


# ---------------------------------------------------------------------------------------------- the app


def json_safe(value: Any) -> Any:
    """`value` with NaN and ±Infinity as strings: a 422 echoes the input, and a JSON body may hold them."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _add_in_batches(runtime: Runtime, campaign_id: str, leads: Iterable[Lead],
                    loop: asyncio.AbstractEventLoop) -> int:
    """From a parsing thread: the leads to the runtime on its loop, LEAD_BATCH at a time; how many were new."""
    added = 0
    batch: list[Lead] = []
    for lead in leads:
        batch.append(lead)
        if len(batch) >= LEAD_BATCH:
            added += asyncio.run_coroutine_threadsafe(runtime.add_leads(campaign_id, batch), loop).result()
            batch = []
    if batch:
        added += asyncio.run_coroutine_threadsafe(runtime.add_leads(campaign_id, batch), loop).result()
    return added


async def _validation_422(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # A body that is not JSON fails before the route's auth dependency runs: without a valid token, or with one
    # whose role may not use the route, the answer is still the 401 or 403, never the body's error.
    denied = denied_before_body(request) if request.url.path.startswith("/api/v1/") else None
    if denied is not None:
        return JSONResponse({"detail": denied.detail}, status_code=denied.status_code, headers=denied.headers)
    return JSONResponse({"detail": json_safe(jsonable_encoder(exc.errors()))}, status_code=422)


def _document_422(app: FastAPI) -> None:
    """The OpenAPI schema says what a 422 holds: FastAPI's list of field errors, or the message string our own
    checks give (bad number, unknown rule set, CSV header...). Without this every such 422 breaks the schema."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()
        props = schema.get("components", {}).get("schemas", {}).get("HTTPValidationError", {}).get("properties", {})
        detail = props.get("detail")
        if detail is not None and "anyOf" not in detail:
            props["detail"] = {"title": "Detail", "anyOf": [{k: v for k, v in detail.items() if k != "title"},
                                                            {"type": "string"}]}
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(runtime: Runtime, settings: ApiSettings | None = None) -> FastAPI:
    """The API over a started (or starting) runtime. `settings` carries tokens, webhooks and limits; without
    them auth is off (the embedded demo) and no webhook is sent."""
    cfg = settings or ApiSettings()
    # The CSV reader refuses a field over 128 KB by default and stops there; a line is already held whole up to
    # the upload limit, so a long field (a note) is parsed and its row judged like any other.
    csv.field_size_limit(max(csv.field_size_limit(), cfg.max_upload_bytes))
    # Event ids start at the boot time in microseconds, so they keep rising across restarts and a Last-Event-ID
    # from an earlier run is always told apart (counted from 1, it passed for one of this run once as many events
    # had been sent). Still below 2**53: exact as a JavaScript number.
    hub = EventHub(runtime.clock, replay=cfg.events_replay, client_queue=cfg.events_client_queue,
                   heartbeat_s=cfg.events_heartbeat_s, first_id=time.time_ns() // 1000)
    webhooks = Webhooks(cfg.webhooks, store=runtime.store, kept_max=cfg.webhooks_kept_max)
    if webhooks.senders:
        hub.sinks.append(webhooks)
        with contextlib.suppress(RuntimeError):  # built outside a loop (tests): started by the first event
            asyncio.get_running_loop()
            webhooks.start()  # takes what an earlier run of this node left unsent, watches for gone nodes
    unsubscribe = runtime.subscribe(hub)
    idem = IdempotencyCache(cfg.idempotency_ttl_s, cfg.idempotency_max_keys)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        with contextlib.suppress(ValueError):
            unsubscribe()
        await webhooks.aclose()

    app = FastAPI(title="Marcador", version="0.1.0", lifespan=lifespan,
                  description="Predictive dialer engine beside Asterisk. Bearer tokens with roles; "
                              "/healthz, /readyz and /metrics are open.")
    _document_422(app)
    app.add_exception_handler(RequestValidationError, _validation_422)
    app.state.tokens = TokenBook(cfg.tokens)
    app.state.hub = hub
    app.state.webhooks = webhooks
    app.state.idempotency = idem
    v1 = APIRouter(prefix="/api/v1")

    def _campaign_out(settings: CampaignSettings, status: CampaignStatus | None) -> CampaignOut:
        data = {k: getattr(settings, k) for k in CampaignIn.model_fields}
        return CampaignOut(**data, status=(status or CampaignStatus.CREATED).value)

    def _check_with_core(settings: CampaignSettings) -> None:
        """The core's own checks (rule set, dispositions, hopper rules), on a scratch core: nothing half-saved."""
        problem = rule_override_problem(settings.rule_set, settings.rule_overrides)
        if problem is not None:
            raise HTTPException(422, problem)
        try:
            DialerCore(runtime.core.config).add_campaign(settings)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        except TypeError:  # a value of a type the core's checks did not expect: never a 500
            raise HTTPException(422, "rule_overrides, hopper or dispositions: a value of the wrong type") from None

    async def _settings(campaign_id: str) -> CampaignSettings:
        found = await runtime.store.get_campaign(campaign_id)
        if found is None:
            raise HTTPException(404, f"campaign {campaign_id!r} not found")
        return found

    # ------------------------------------------------------------------ campaigns

    @v1.post("/campaigns", status_code=201, response_model=CampaignOut, tags=["campaigns"])
    async def create_campaign(body: CampaignIn, _: Manager) -> CampaignOut:
        if await runtime.store.get_campaign(body.campaign_id) is not None:
            raise HTTPException(409, f"campaign {body.campaign_id!r} already exists")
        _check_with_core(body.settings())
        if not await runtime.create_campaign(body.settings()):  # another create of the id won meanwhile
            raise HTTPException(409, f"campaign {body.campaign_id!r} already exists")
        return _campaign_out(body.settings(), CampaignStatus.CREATED)

    @v1.get("/campaigns", response_model=list[CampaignOut], tags=["campaigns"])
    async def list_campaigns(_: Reader) -> list[CampaignOut]:
        stored = await runtime.store.list_campaigns()
        statuses = await runtime.campaign_statuses()
        return [_campaign_out(s, statuses.get(s.campaign_id)) for s in stored]

    @v1.get("/campaigns/{campaign_id}", response_model=CampaignOut, tags=["campaigns"])
    async def read_campaign(campaign_id: str, _: Reader) -> CampaignOut:
        settings = await _settings(campaign_id)
        return _campaign_out(settings, await runtime.campaign_status(campaign_id))

    # One PATCH of a campaign at a time on this node (the core takes the settings in the store's order); across
    # nodes the store's update_campaign is atomic: an edit made from a definition another node changed meanwhile
    # is made again on the newer one. A lock lives while a request holds or waits for it.
    patching: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    @v1.patch("/campaigns/{campaign_id}", response_model=CampaignOut, tags=["campaigns"])
    async def update_campaign(campaign_id: str, patch: CampaignPatch, _: Manager) -> CampaignOut:
        lock = patching.get(campaign_id)
        if lock is None:
            lock = patching[campaign_id] = asyncio.Lock()
        async with lock:
            return await _update_campaign(campaign_id, patch)

    def _patched(current: CampaignSettings, patch: CampaignPatch) -> CampaignSettings:
        """The stored settings with the PATCH's fields, checked as a create's (HTTPException if refused)."""
        merged = {k: getattr(current, k) for k in CampaignIn.model_fields} | patch.model_dump(exclude_unset=True)
        try:
            new = CampaignIn.model_validate(merged)
        except ValidationError as exc:  # located as FastAPI locates the body's own errors
            errors = [e | {"loc": ["body", *e["loc"]]} for e in exc.errors(include_url=False)]
            raise HTTPException(422, json_safe(jsonable_encoder(errors))) from None
        if (current.strategy == PREVIEW) != (new.strategy == PREVIEW):
            raise HTTPException(409, "a campaign cannot switch to or from preview mode; create another campaign")
        settings = new.settings()
        _check_with_core(settings)
        return settings

    async def _update_campaign(campaign_id: str, patch: CampaignPatch) -> CampaignOut:
        # Written with a compare-and-set and the campaign version moved (the other nodes reload it within about a
        # second), then applied to this node's core at once.
        try:
            done = await runtime.update_campaign(campaign_id, lambda current: _patched(current, patch))
        except CampaignBusy as exc:
            raise HTTPException(409, f"{exc}: try the PATCH again") from None
        if done is None:
            raise HTTPException(404, f"campaign {campaign_id!r} not found")
        return _campaign_out(done[1], await runtime.campaign_status(campaign_id))

    def _control(action: Literal["start", "pause", "stop"]) -> Any:
        async def control(campaign_id: str, _: Controller) -> dict[str, str]:
            before = await runtime.campaign_status(campaign_id)
            if before is None:
                raise HTTPException(404, f"campaign {campaign_id!r} not found")
            status = before.value
            if action == "pause" and status in ("created", "stopped"):
                # It answered 200 "requested" and nothing happened: the integrator believed it paused.
                raise HTTPException(409, f"campaign {campaign_id} is {status}: only a running campaign can be "
                                         "paused (stop it to end it, start it to dial)")
            # The status is kept in the store for every node (each takes it within about a second), then this
            # node's core takes it at once.
            kept = await runtime.control_campaign(campaign_id, action)
            if kept is None:
                raise HTTPException(404, f"campaign {campaign_id!r} not found")
            if action == "pause" and kept is CampaignStatus.STOPPED:  # stopped through another node meanwhile
                raise HTTPException(409, f"campaign {campaign_id} is stopped: only a running campaign can be "
                                         "paused (start it to dial)")
            return {"campaign_id": campaign_id, "requested": action, "status_before": status}

        control.__name__ = f"{action}_campaign"
        return control

    for action in ("start", "pause", "stop"):
        v1.add_api_route(f"/campaigns/{{campaign_id}}/{action}", _control(action), methods=["POST"],  # type: ignore[arg-type]
                         tags=["campaigns"])

    @v1.get("/campaigns/{campaign_id}/stats", tags=["campaigns"])
    async def campaign_stats(campaign_id: str, _: Reader) -> dict[str, Any]:
        await _settings(campaign_id)
        stats = runtime.stats(campaign_id)
        stats["leads"] = await runtime.store.lead_counts(campaign_id)
        stats["abandon_windows"] = await abandon_windows(runtime, campaign_id)  # rolling 24 h and 30 days
        return stats

    @v1.get("/campaigns/{campaign_id}/attempts", tags=["attempts"])
    async def campaign_attempts(campaign_id: str, _: Reader) -> list[dict[str, Any]]:
        """Every attempt of the campaign (small campaigns; use /attempts to page through large ones)."""
        await _settings(campaign_id)
        return [a.as_dict() for a in await runtime.attempts(campaign_id)]

    # ------------------------------------------------------------------ leads

    def _upload_result(report: ParseReport, new: int, error: BaseException | None) -> dict[str, Any]:
        """The answer to an upload, or why it stopped: too large (what came before stays), or the client left."""
        if isinstance(error, _TooLarge):
            raise HTTPException(413, {"reason": f"upload larger than {cfg.max_upload_bytes} bytes; rows before "
                                                "the limit were processed", **_result(report, new)})
        if error is not None:
            raise error
        return _result(report, new)

    async def _add_csv_pooled(request: Request, campaign_id: str, first_row: int, hasher: Any) -> dict[str, Any]:
        """A big upload: blocks of whole records are parsed in worker processes (every core; the phone number
        library is the cost), then taken in file order on the loop: row numbers offset, duplicate ids refused,
        batches added. At most a few blocks are in flight, so memory holds blocks, never the file."""
        loop = asyncio.get_running_loop()
        pool = _lead_pool(csv.field_size_limit())
        report = ParseReport()
        seen: set[str] = set()
        pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        offset = first_row  # file row number of the next block's first record
        new = 0

        async def take_one() -> None:
            nonlocal offset, new
            good, rejected, count = await pending.popleft()
            batch: list[Lead] = []
            k = 0  # rejected rows and good rows merged back into file order, as the one-thread path reports
            for rel, lead, held, warnings in good:
                while k < len(rejected) and rejected[k].row < rel:
                    report.rejected.append(RowIssue(rejected[k].row + offset, rejected[k].field, rejected[k].reason))
                    k += 1
                held_at = RowIssue(held.row + offset, held.field, held.reason) if held is not None else None
                warned = [RowIssue(w.row + offset, w.field, w.reason) for w in warnings] if warnings else ()
                if accept(lead, held_at, rel + offset, report, seen, warned):
                    batch.append(lead)
            for issue in rejected[k:]:
                report.rejected.append(RowIssue(issue.row + offset, issue.field, issue.reason))
            offset += count
            if batch:
                new += await runtime.add_leads(campaign_id, batch)

        header: str | None = None
        block: list[str] = []
        records, inside = 0, False  # whole records in `block`; inside a quoted field at the end of it

        async def submit() -> None:
            nonlocal block, records
            if header is None or not block:
                return
            text = header + "".join(block)
            block, records = [], 0
            pending.append(loop.run_in_executor(pool, parse_csv_block, text, campaign_id))
            if len(pending) > POOL_BLOCKS_IN_FLIGHT:
                await take_one()

        splitter = _Lines()
        error: BaseException | None = None
        try:
            try:
                async for chunk in _body_chunks(request, cfg.max_upload_bytes):
                    hasher.update(chunk)
                    for line in splitter.feed(chunk):
                        if header is None:
                            header = line
                            continue
                        block.append(line)
                        # A record ends at a line end outside quotes (RFC 4180 doubles a quote inside a field,
                        # so the count's parity says where we are); a stray quote only moves a block boundary.
                        inside ^= line.count('"') % 2 == 1
                        if not inside:
                            records += 1
                            if records >= POOL_BLOCK_ROWS:
                                await submit()
                        elif len(block) >= 4 * POOL_BLOCK_ROWS:
                            inside = False
                            await submit()
                for line in splitter.feed(b"", final=True):
                    if header is None:
                        header = line
                    else:
                        block.append(line)
            except (_TooLarge, ClientDisconnect) as exc:
                error = exc
            if header is None:
                raise HTTPException(422, "csv: empty file: a header line is required")
            if not header.endswith(("\n", "\r")):
                header += "\n"
            await submit()
            while pending:
                await take_one()
        except LeadFileError as exc:  # the header, found by the first block: nothing was added
            for fut in pending:
                fut.cancel()
            raise HTTPException(422, f"csv: {exc}{_header_hint(header)}") from None
        return _upload_result(report, new, error)

    async def _add_csv(request: Request, campaign_id: str, first_row: int, hasher: Any) -> dict[str, Any]:
        """Parse in a worker thread (a million rows must not stall the core's loop), add in batches on the loop.
        The body streams through a small bounded queue: memory holds a few chunks and one batch, never the file."""
        loop = asyncio.get_running_loop()
        report = ParseReport()
        chunks: asyncio.Queue[list[str] | None] = asyncio.Queue(maxsize=8)

        stop = threading.Event()  # the request ended early (cancelled): the worker must not wait forever

        def lines() -> Iterator[str]:
            while True:
                fut = asyncio.run_coroutine_threadsafe(chunks.get(), loop)
                while True:
                    try:
                        item = fut.result(timeout=1.0)
                        break
                    except concurrent.futures.TimeoutError:
                        if stop.is_set():
                            fut.cancel()
                            return
                if item is None:
                    return
                yield from item

        def parse() -> int:
            source = lines()
            added = _add_in_batches(runtime, campaign_id, iter_csv_leads(source, campaign_id, report,
                                                                         start_row=first_row), loop)
            for _ in source:  # consume to the end so the producer never waits on a full queue
                pass
            return added

        worker = loop.run_in_executor(None, parse)

        async def put(item: list[str] | None) -> None:
            while not worker.done():
                try:
                    await asyncio.wait_for(chunks.put(item), timeout=0.5)
                    return
                except TimeoutError:
                    continue

        splitter = _Lines()
        error: BaseException | None = None
        header: str | None = None
        try:
            async for chunk in _body_chunks(request, cfg.max_upload_bytes):
                hasher.update(chunk)
                if worker.done():  # the parser stopped (a bad header): the rest is not read
                    break
                if lines_ := splitter.feed(chunk):
                    header = header or lines_[0]
                    await put(lines_)
            if lines_ := splitter.feed(b"", final=True):
                header = header or lines_[0]
                await put(lines_)
        except (_TooLarge, ClientDisconnect) as exc:
            error = exc
        except BaseException:
            stop.set()
            raise
        await put(None)
        try:
            new = await worker  # what was added before an error stays added
        except LeadFileError as exc:  # the header: nothing was added
            raise HTTPException(422, f"csv: {exc}{_header_hint(header)}") from None
        return _upload_result(report, new, error)

    async def _add_json(request: Request, campaign_id: str, first_row: int, hasher: Any) -> dict[str, Any]:
        raw = bytearray()
        try:
            async for chunk in _body_chunks(request, cfg.max_upload_bytes):
                raw += chunk
        except _TooLarge:
            raise HTTPException(413, f"upload larger than {cfg.max_upload_bytes} bytes") from None
        hasher.update(raw)
        loop = asyncio.get_running_loop()
        report = ParseReport()

        def parse() -> int:
            """In a worker thread, as the CSV body is: the rows' checks (phone numbers above all) must not hold the
            loop the core runs on. Batches are added on the loop, in row order."""
            try:
                rows = json.loads(raw or b"null")
            except ValueError as exc:
                raise HTTPException(422, f"body: not JSON ({exc.args[0] if exc.args else 'invalid'})") from None
            if isinstance(rows, dict) and isinstance(rows.get("leads"), list):
                rows = rows["leads"]
            if not isinstance(rows, list):
                raise HTTPException(422, "body: a JSON array of lead objects (or {\"leads\": [...]})")
            return _add_in_batches(runtime, campaign_id, accepted(rows), loop)

        def accepted(rows: list[Any]) -> Iterator[Lead]:
            seen: set[str] = set()
            for n, item in enumerate(rows, start=first_row):
                if not isinstance(item, dict):
                    report.rejected.append(RowIssue(n, "-", "a lead must be a JSON object"))
                    continue
                nested = [RowIssue(n, k, f"must be a string or a number, not {_json_kind(v)}")
                          for k, v in item.items() if k in KNOWN_COLUMNS and isinstance(v, dict | list | bool)]
                if nested:  # as text ("True", JSON) it could pass for an id, a phone or a segment; custom fields may
                    report.rejected.extend(nested)
                    continue
                lead, issues, held = lead_from_row(_json_row(item), campaign_id, n)
                if lead is None:
                    report.rejected.extend(issues or [RowIssue(n, "-", "not a lead")])
                    continue
                if lead.lead_id in seen:
                    report.rejected.append(RowIssue(n, "lead_id", "duplicate in this upload"))
                    continue
                seen.add(lead.lead_id)
                report.accepted += 1
                if held is not None:
                    report.held.append(held)
                report.warnings.extend(issues)  # phones dropped from the lead
                yield lead

        new = await loop.run_in_executor(None, parse)
        return _result(report, new)

    @v1.post("/campaigns/{campaign_id}/leads", response_model=LeadsResult, tags=["leads"],
             openapi_extra={"requestBody": {"content": {
                 "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
                 "text/csv": {"schema": {"type": "string"}}}, "required": True}})
    async def add_leads(
        campaign_id: str,
        request: Request,
        principal: Manager,
        first_row: Annotated[int, Query(ge=1, description="row number of the first data row")] = 1,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> Any:
        """Leads as a JSON array of objects or as `text/csv` (header row, the leads column format). Every row is
        checked on its own: good rows are stored whatever the bad ones hold. With `Idempotency-Key`, a retried
        upload (same key, same body) answers as the first did and adds nothing."""
        await _settings(campaign_id)
        ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if ctype not in ("application/json", "text/csv"):
            raise HTTPException(415, "Content-Type: application/json or text/csv")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > cfg.max_upload_bytes:
            raise HTTPException(413, f"upload larger than {cfg.max_upload_bytes} bytes")
        hasher = hashlib.sha256(f"{campaign_id}\n{ctype}\n{first_row}\n".encode())
        key = f"{principal.name}\x00{idempotency_key}" if idempotency_key else None
        if key is not None:
            stored = idem.get(key)
            if stored is not None:  # a retry: read the body only to check it is the same upload
                async for chunk in _body_chunks(request, cfg.max_upload_bytes):
                    hasher.update(chunk)
                if hasher.hexdigest() != stored.fingerprint:
                    raise HTTPException(422, "Idempotency-Key was used with a different upload")
                return JSONResponse(stored.body, status_code=stored.status, headers={"Idempotent-Replayed": "true"})
            if not idem.begin(key):
                raise HTTPException(409, "a request with this Idempotency-Key is still running")
        fingerprint: str | None = None
        result: dict[str, Any] = {}
        try:
            if ctype == "text/csv" and int(request.headers.get("content-length") or 0) >= POOL_MIN_BYTES:
                result = await _add_csv_pooled(request, campaign_id, first_row, hasher)
            elif ctype == "text/csv":
                result = await _add_csv(request, campaign_id, first_row, hasher)
            else:
                result = await _add_json(request, campaign_id, first_row, hasher)
            fingerprint = hasher.hexdigest()
        finally:
            if key is not None:
                idem.finish(key, fingerprint, 200, result)
        log.info("leads uploaded", extra={"fields": {"campaign_id": campaign_id, "accepted": result["accepted"],
                                                     "new": result["new"], "rejected": len(result["rejected"]),
                                                     "warnings": len(result["warnings"])}})
        return result

    @v1.delete("/campaigns/{campaign_id}/leads/{lead_id}", status_code=204, tags=["leads"])
    async def remove_lead(campaign_id: str, lead_id: str, _: Manager) -> Response:
        """Remove a lead at once (e.g. the debtor paid today): it is not dialed again."""
        await _settings(campaign_id)
        in_core = _in_hopper(campaign_id, lead_id)  # buffered, on a call or scheduled
        in_store = await runtime.store.remove_lead(campaign_id, lead_id)
        if not (in_store or in_core):
            raise HTTPException(404, f"lead {lead_id!r} is not waiting to be dialed in {campaign_id!r} "
                                     "(removed already, done, or never loaded)")
        if in_core:
            runtime.submit(LeadRemoved(campaign_id, lead_id))  # out of the hopper before the next dial
        return Response(status_code=204)

    def _in_hopper(campaign_id: str, lead_id: str) -> bool:
        """The dialer holds the lead and it was not removed (the hopper keeps a removed lead's entry)."""
        camp = runtime.core.campaigns.get(campaign_id)
        info = camp.hopper.info(lead_id) if camp is not None else None
        return info is not None and info.state != "removed"

    # ------------------------------------------------------------------ callbacks

    @v1.post("/campaigns/{campaign_id}/leads/{lead_id}/callback", status_code=202, tags=["callbacks"])
    async def schedule_callback(campaign_id: str, lead_id: str, body: CallbackIn, _: Controller) -> dict[str, Any]:
        """Call a lead back: at an instant (`at`, ISO 8601 with offset) or at a wall-clock time in the debtor's own
        zone (`local`, e.g. 2026-12-01T18:00); by one agent (`agent_id`) or by whoever is free. The gates still
        judge the dial when it comes due."""
        await _settings(campaign_id)
        camp = runtime.core.campaigns.get(campaign_id)
        info = camp.hopper.info(lead_id) if camp is not None else None
        if info is not None and info.state == "removed":
            raise HTTPException(404, f"lead {lead_id!r} was removed from campaign {campaign_id!r}: it is not called")
        if info is not None and info.state == "done":  # the core would refuse it after our 202
            raise HTTPException(409, f"lead {lead_id!r} has a final outcome in {campaign_id!r}: no callback")
        if info is None and not await _lead_exists(campaign_id, lead_id):
            raise HTTPException(404, f"lead {lead_id!r} is not in campaign {campaign_id!r}")
        if body.at is not None:
            at = body.at.timestamp()
        else:
            assert body.local is not None
            lead = camp.hopper.lead(lead_id) if camp is not None else None
            if lead is None:  # not held here: as loaded, from the store (another node may hold it)
                lead = await runtime.store.lead(campaign_id, lead_id)
            if lead is None or not lead.timezone:
                raise HTTPException(409, f"local: lead {lead_id!r} has no time zone (none given or found from its "
                                         "phone); give `at` with an offset")
            at = local_time_to_epoch(body.local.date(), body.local.strftime("%H:%M"), lead.timezone)
        if at <= runtime.clock():
            raise HTTPException(422, "at: must be in the future")
        if info is not None:  # held here: this node's core takes it at once
            runtime.submit(ScheduleCallback(campaign_id, lead_id, at, body.agent_id))
        else:
            # Not held here: kept in the store, where the lead waits until then (or its holder, another node, picks
            # it up within a second). It used to wait in this node's memory, for a lease that might never come here.
            kept = await runtime.ask_callback(campaign_id, lead_id, at, body.agent_id)
            if kept == "removed":
                raise HTTPException(404, f"lead {lead_id!r} was removed from campaign {campaign_id!r}: it is not "
                                         "called")
            if kept == "done":
                raise HTTPException(409, f"lead {lead_id!r} has a final outcome in {campaign_id!r}: no callback")
            if kept == "unknown":
                raise HTTPException(404, f"lead {lead_id!r} is not in campaign {campaign_id!r}")
        return {"campaign_id": campaign_id, "lead_id": lead_id, "at": at, "agent_id": body.agent_id}

    @v1.get("/campaigns/{campaign_id}/callbacks", tags=["callbacks"])
    async def list_callbacks(campaign_id: str, _: Reader) -> list[dict[str, Any]]:
        """Scheduled callbacks, earliest first, campaign-wide: this node's, those kept in the store for leads
        waiting there, and those other live nodes hold."""
        await _settings(campaign_id)
        rows = await runtime.callbacks(campaign_id)
        return [{"lead_id": lid, "at": at, "agent_id": agent} for lid, at, agent in rows]

    async def _lead_exists(campaign_id: str, lead_id: str) -> bool:
        known = getattr(runtime.store, "has_lead", None)
        return True if known is None else bool(await known(campaign_id, lead_id))

    # ------------------------------------------------------------------ DNC

    def _numbers(raw: list[str]) -> list[str]:
        out = []
        for i, number in enumerate(raw):
            try:
                out.append(_dnc_number(number))
            except ValueError as exc:
                raise HTTPException(422, f"numbers[{i}]: {exc} (write it with its country code: +44 20 7946 0958, "
                                         "0044 20 7946 0958 or tel:+442079460958)") from None
        return out

    async def _persist(op: str, numbers: list[str], campaign_id: str | None) -> None:
        fn = getattr(runtime.store, op, None)  # a shared store keeps the list for every node and restarts
        if callable(fn):
            await fn(numbers, campaign_id)

    @v1.post("/dnc", response_model=DncAdded, tags=["dnc"])
    async def dnc_add(body: DncIn, _: Manager) -> DncAdded:
        """Numbers onto the global do-not-call list, or a campaign's; effective before the next dial."""
        if body.campaign_id is not None:
            await _settings(body.campaign_id)
        # Off the loop: each number is parsed (phonenumbers), about 0.1 ms apiece, and a list may hold 100,000.
        numbers = await asyncio.to_thread(_numbers, body.numbers)
        unique = list(dict.fromkeys(numbers))  # normalised: two spellings of one number are one
        shared = getattr(runtime.store, "dnc_add", None)
        # The shared list is the list of record (every node's adds): it counts what is new.
        stored = int(await shared(unique, body.campaign_id)) if callable(shared) else None
        # This node's core takes every number here, on the loop's thread, a slice at a time with the loop free
        # between slices: in force when the answer goes, and (memory store) a repeat sent meanwhile is not counted
        # new again. One event per number used to be queued for the core, which drains its queue in one go: a
        # 100,000-number list held the loop for seconds, filled the queue the PBX's events share and sent as many
        # `dnc.added` events. One event now says the list changed.
        now = runtime.clock()
        new_here = 0
        for start in range(0, len(unique), _DNC_SLICE):
            if start:
                await asyncio.sleep(0)
            new_here += sum(runtime.core.dnc.add(n, body.campaign_id, now) for n in unique[start:start + _DNC_SLICE])
        added = new_here if stored is None else stored  # memory store: only the core keeps the list
        if unique:
            runtime.submit(DncAdd(unique[0], body.campaign_id))  # `dnc.added`, once per request
        return DncAdded(added=added, already=len(unique) - added, repeated=len(numbers) - len(unique))

    @v1.get("/dnc/{number}", tags=["dnc"])
    async def dnc_check(number: str, _: Reader, campaign_id: str | None = None) -> dict[str, Any]:
        if campaign_id is not None:
            await _settings(campaign_id)
        (clean,) = _numbers([number])
        scope = runtime.core.dnc.lookup(clean, campaign_id, runtime.clock())
        return {"number": clean, "campaign_id": campaign_id, "blocked": scope is not None}

    @v1.delete("/dnc/{number}", status_code=204, tags=["dnc"])
    async def dnc_remove(number: str, _: Manager, campaign_id: str | None = None) -> Response:
        if campaign_id is not None:
            await _settings(campaign_id)
        (clean,) = _numbers([number])
        # Direct on the core (same loop thread): its leads parked by that number go back to be gated again.
        if not runtime.core.remove_dnc(clean, campaign_id, runtime.clock()):
            raise HTTPException(404, "number not on that list")
        await _persist("dnc_remove", [clean], campaign_id)
        return Response(status_code=204)

    # ------------------------------------------------------------------ attempts

    @v1.get("/attempts", response_model=AttemptsPage, tags=["attempts"])
    async def list_attempts(
        _: Reader,
        campaign_id: str | None = None,
        outcome: Annotated[str | None, Query(description="comma list of outcomes; `pending` for calls in flight")]
        = None,
        since: Annotated[float | None, Query(description="dialed at or after (epoch seconds)", allow_inf_nan=False)]
        = None,
        until: Annotated[float | None, Query(description="dialed before (epoch seconds)", allow_inf_nan=False)]
        = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: str | None = None,
    ) -> AttemptsPage:
        """Attempt history, oldest first (by dial time, then call id), a page at a time."""
        if campaign_id is not None:
            await _settings(campaign_id)  # a typo must not read as a campaign without attempts
        wanted: set[str | None] | None = None
        if outcome:
            wanted = set()
            for o in outcome.split(","):
                o = o.strip()
                if o == "pending":
                    wanted.add(None)
                elif o in Outcome.__members__.values():
                    wanted.add(o)
                else:
                    raise HTTPException(422, f"outcome: unknown {o!r}")
        after = _decode_cursor(cursor) if cursor else None
        # The store pages in order; the outcome filter is applied here, reading on until the page is full and one
        # more match says whether there is a next page (null only at the end, as before).
        fetch = limit + 1 if wanted is None else max(limit + 1, _ATTEMPT_SCAN)
        page: list[Attempt] = []
        more = False
        while not more:
            batch = await runtime.attempts_page(campaign_id, after=after, since=since, until=until, limit=fetch)
            for a in batch:
                if wanted is None or (a.outcome.value if a.outcome else None) in wanted:
                    if len(page) == limit:
                        more = True
                        break
                    page.append(a)
            if len(batch) < fetch:
                break
            after = (batch[-1].dialed_at, batch[-1].call_id)
        return AttemptsPage(items=[a.as_dict() for a in page], next_cursor=_encode_cursor(page[-1]) if more else None)

    # ------------------------------------------------------------------ agents

    def _agent_id(agent_id: str) -> str:
        if not _ID.match(agent_id):
            raise HTTPException(422, "agent_id: letters, digits, - and _ only")
        if agent_id in _DIALPLAN_RESERVED:
            raise HTTPException(422, f"agent_id: {agent_id!r} is an extension Asterisk reserves (h: hang-up, "
                                     "i: invalid) in the agent contexts; its phone would never reach its room")
        return agent_id

    def _agent_view(a: Any) -> dict[str, Any]:
        lead = a.preview
        preview = None if lead is None else {"campaign_id": a.preview_campaign, "lead_id": lead.lead_id,
                                             "phones": list(lead.phones), "fields": dict(lead.fields)}
        return {"agent_id": a.agent_id, "state": a.status.value, "since": a.since, "reason": a.reason,
                "call_id": a.call_id, "last_call_id": a.last_call_id, "campaigns": sorted(a.campaigns),
                "skills": dict(a.skills), "preview": preview}

    async def _not_here(agent_id: str) -> HTTPException:
        """Why this node cannot act for an agent its core does not know: 409 if a live node of a shared store
        lists it (its leg is on that node's PBX; a client told 404 would log it in twice), else 404."""
        nodes = getattr(runtime.store, "nodes", None)
        if callable(nodes):
            me = getattr(runtime.store, "node_id", None)
            try:
                registry = await nodes(now=runtime.clock())
            except Exception:
                log.warning("node registry unreadable", exc_info=True)
                return HTTPException(503, f"agent {agent_id}: not logged in on this node, and the shared store "
                                          "(which says on which node it is) does not answer")
            for node in registry:
                if node.alive and node.node_id != me and agent_id in node.agents:
                    return HTTPException(409, f"agent {agent_id}: logged in on node {node.node_id}, not this one; "
                                              "send its commands to that node")
        return HTTPException(404, f"agent {agent_id}: not logged in")

    async def _known_agent(agent_id: str) -> None:
        """Refuse a command for an agent the core neither has nor is about to (a queued login): the core would
        drop it after our 202."""
        if not runtime.agent_known(agent_id):
            raise await _not_here(agent_id)

    @v1.get("/agents", tags=["agents"])
    async def list_agents(_: Reader) -> list[dict[str, Any]]:
        return [_agent_view(a) for a in runtime.core.agents.all()]

    @v1.get("/agents/{agent_id}", tags=["agents"])
    async def read_agent(agent_id: str, principal: AgentReader) -> dict[str, Any]:
        check_agent(principal, agent_id)
        agent = runtime.core.agents.get(agent_id)
        if agent is None:
            raise await _not_here(agent_id)
        return _agent_view(agent)

    @v1.post("/agents/{agent_id}/login", status_code=202, tags=["agents"])
    async def agent_login(agent_id: str, principal: AgentActor, body: AgentLoginIn | None = None) -> dict[str, str]:
        """Log in with the campaigns and skills to work: the agent's phone is called into its room."""
        check_agent(principal, _agent_id(agent_id))
        body = body or AgentLoginIn()
        for i, campaign_id in enumerate(body.campaigns):  # a typo would leave the agent ready for nothing all shift
            if await runtime.store.get_campaign(campaign_id) is None:
                raise HTTPException(422, f"campaigns[{i}]: campaign {campaign_id!r} not found")
        runtime.submit(AgentLogin(agent_id, frozenset(body.campaigns), tuple(sorted(body.skills.items()))))
        return {"agent_id": agent_id, "requested": "login"}

    @v1.post("/agents/{agent_id}/logout", status_code=202, tags=["agents"])
    async def agent_logout(agent_id: str, principal: AgentActor) -> dict[str, str]:
        check_agent(principal, _agent_id(agent_id))
        await _known_agent(agent_id)
        runtime.submit(AgentLogout(agent_id))
        return {"agent_id": agent_id, "requested": "logout"}

    @v1.post("/agents/{agent_id}/ready", status_code=202, tags=["agents"])
    async def agent_ready(agent_id: str, principal: AgentActor) -> dict[str, str]:
        check_agent(principal, _agent_id(agent_id))
        await _known_agent(agent_id)
        runtime.submit(AgentState(agent_id, AgentStatus.READY))
        return {"agent_id": agent_id, "requested": "ready"}

    @v1.post("/agents/{agent_id}/pause", status_code=202, tags=["agents"])
    async def agent_pause(agent_id: str, principal: AgentActor, body: PauseIn | None = None) -> dict[str, str]:
        check_agent(principal, _agent_id(agent_id))
        await _known_agent(agent_id)
        runtime.submit(AgentState(agent_id, AgentStatus.PAUSED, body.reason if body else "paused"))
        return {"agent_id": agent_id, "requested": "pause"}

    # ------------------------------------------------------------------ preview mode

    async def _previewing(agent_id: str) -> None:
        agent = runtime.core.agents.get(agent_id)
        if agent is None:
            raise await _not_here(agent_id)
        if agent.status is not AgentStatus.PREVIEW or agent.preview is None:
            raise HTTPException(409, f"agent {agent_id!r} has no lead on screen (agent is {agent.status.value})")

    @v1.post("/agents/{agent_id}/preview", status_code=202, tags=["agents"])
    async def preview_request(agent_id: str, body: PreviewIn, principal: AgentActor) -> dict[str, str]:
        """Preview mode: the next lead of a running campaign for this ready agent to look at. It comes as a
        `preview.offer` event (or `preview.none`) and in `GET /agents/{id}` under `preview`."""
        check_agent(principal, _agent_id(agent_id))
        settings = await _settings(body.campaign_id)
        agent = runtime.core.agents.get(agent_id)
        if agent is None:
            raise await _not_here(agent_id)
        if agent.status is not AgentStatus.READY or not agent.serves(body.campaign_id, settings.skill):
            raise HTTPException(409, f"agent {agent_id!r} is not a ready agent of {body.campaign_id!r} "
                                     f"({agent.status.value})")
        runtime.submit(PreviewRequest(agent_id, body.campaign_id))
        return {"agent_id": agent_id, "requested": "preview"}

    @v1.post("/agents/{agent_id}/preview/dial", status_code=202, tags=["agents"])
    async def preview_dial(agent_id: str, principal: AgentActor) -> dict[str, str]:
        """Dial the lead on the agent's screen; the call is reserved for this agent (never abandoned). The gates
        judge it again: a refusal comes as `dial.refused`."""
        check_agent(principal, _agent_id(agent_id))
        await _previewing(agent_id)
        runtime.submit(PreviewDial(agent_id))
        return {"agent_id": agent_id, "requested": "dial"}

    @v1.post("/agents/{agent_id}/preview/skip", status_code=202, tags=["agents"])
    async def preview_skip(agent_id: str, principal: AgentActor) -> dict[str, str]:
        """Pass on the lead on screen: it goes back to the queue unattempted."""
        check_agent(principal, _agent_id(agent_id))
        await _previewing(agent_id)
        runtime.submit(PreviewSkip(agent_id))
        return {"agent_id": agent_id, "requested": "skip"}

    @v1.post("/calls/{call_id}/disposition", status_code=202, tags=["agents"])
    async def post_disposition(call_id: str, body: DispositionIn, principal: AgentActor) -> dict[str, Any]:
        """The agent's disposition of a call it handled: in wrap-up it ends the wrap-up; after (the wrap-up timer
        ended it, the agent is on its next call) it is taken late (`late`: true) and the agent is left as it is.
        One per call."""
        core = runtime.core
        owner = next((a for a in core.agents.all()
                      if a.status is AgentStatus.WRAPUP and a.last_call_id == call_id), None)
        handled = core.handled_call(call_id)
        if owner is None and handled is None:
            talking = next((a for a in core.agents.all() if a.call_id == call_id), None)
            if talking is not None:
                check_agent(principal, talking.agent_id)
                raise HTTPException(409, f"call_id: call {call_id!r} is not over (agent is {talking.status.value})")
            # Not this run's: a call of a run gone (a restart mid-conversation, a node down) is taken here, late.
            try:
                why = await runtime.adopt_call(call_id)
            except Exception:
                log.warning("attempt unreadable for a disposition", exc_info=True)
                raise HTTPException(503, f"call_id: call {call_id!r} is not one of this run's, and the store (which "
                                         "keeps the calls of other runs) does not answer; retry") from None
            handled = core.handled_call(call_id)
            if why is not None and why.reason == "node":
                raise HTTPException(409, f"call_id: call {call_id!r} was handled on node {why.detail}, which is up: "
                                         "send its disposition to that node")
            if why is not None and why.reason == "disposed":
                raise HTTPException(409, f"call_id: call {call_id!r} already has its disposition ({why.detail}); "
                                         "one per call")
            if handled is None:
                cfg = core.config
                raise HTTPException(404, f"call_id: no agent handled call {call_id!r} (unknown, or it ended more "
                                         f"than {cfg.late_disposition_s:g} s or the agent's last "
                                         f"{cfg.late_disposition_calls} calls ago)")
        if owner is not None:
            agent_id, done, late = owner.agent_id, owner.last_attempt, False
            campaign_id = owner.last_campaign_id or ""
        else:
            assert handled is not None
            agent_id, done, late = handled.agent_id, handled.attempt, True
            campaign_id = handled.attempt.campaign_id
        check_agent(principal, agent_id)
        queued = runtime.dispositions_queued.get(call_id)
        if queued is not None:  # posted twice within the core's turn: the first is on its way
            raise HTTPException(409, f"call_id: call {call_id!r} already has its disposition ({queued}); "
                                     "one per call")
        if late and done is not None and done.disposition is not None:
            raise HTTPException(409, f"call_id: call {call_id!r} already has its disposition ({done.disposition}); "
                                     "one per call")
        camp = core.campaigns.get(campaign_id)
        stored = False
        if camp is not None:  # the core checks again; here the caller learns what is wrong
            try:
                code = camp.dispositions.validate(body.code, body.callback_at, body.ptp_amount, body.ptp_date,
                                                  now=runtime.clock(), calendar=True)
            except ValueError as exc:
                raise HTTPException(422, str(exc)) from None
            # A lead ended by its call (its attempt cap reached, no phone left) or removed meanwhile is never dialed
            # again: a callback would be dropped while the agent believes the debtor will be called.
            info = camp.hopper.info(done.lead_id) if code.callback and done is not None else None
            if done is not None and info is not None and info.state in ("done", "removed"):
                raise HTTPException(409, f"callback_at: lead {done.lead_id!r} is {info.state} (attempt cap reached, "
                                         "no phone left, or removed): no callback can be scheduled; post another code")
            # A lead this node's hopper no longer holds (handed back to the store; another node may hold it): the
            # code goes through the store, which applies it wherever the lead is (event `lead.disposition`).
            stored = done is not None and camp.hopper.info(done.lead_id) is None and code.steers_lead
        runtime.submit(Disposition(call_id, body.code, body.callback_at, body.own_callback, body.ptp_amount,
                                   body.ptp_date.isoformat() if body.ptp_date else None))
        return {"call_id": call_id, "agent_id": agent_id, "requested": "disposition", "late": late, "stored": stored}

    # ------------------------------------------------------------------ events

    @v1.get("/events", tags=["events"], response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}, "description": "server-sent events"}})
    async def events(
        request: Request,
        _: Reader,
        types: Annotated[str | None, Query(description="comma list of kind prefixes, e.g. `call.,agent.`")] = None,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> StreamingResponse:
        """Server-sent events: `event: <kind>`, `data: <json>`, `id: <seq>`; a comment line every 15 s.
        Reconnect with `Last-Event-ID` to get what was missed (the last `api.events_replay` events)."""
        client = hub.connect(parse_types(types), parse_last_id(last_event_id))
        return StreamingResponse(hub.stream(client, request.is_disconnected), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # ------------------------------------------------------------------ webhook events kept

    def _failed_out(row: FailedWebhook) -> FailedWebhookOut:
        try:
            event = json.loads(row.event)
        except ValueError:
            event = {"unreadable": True}
        return FailedWebhookOut(id=row.id, hook=row.hook, kind=row.kind, delivery_id=row.delivery, reason=row.reason,
                                failed_at=row.at, tries=row.tries, event=event if isinstance(event, dict) else {})

    def _after(cursor: str | None) -> int:
        if cursor is None:
            return 0
        if not cursor.isdigit():
            raise HTTPException(422, "cursor: not a cursor this API gave")
        return int(cursor)

    async def _every_failed(hook: str | None, kind: str | None) -> AsyncIterator[list[FailedWebhook]]:
        after = 0
        while True:
            page = await webhooks.store.failed_webhooks(after, 1000, hook=hook, kinds=parse_types(kind))
            if not page:
                return
            yield page
            after = page[-1].id

    @v1.get("/webhooks/failed", response_model=FailedWebhooksPage, tags=["webhooks"])
    async def list_failed_webhooks(
        _: WebhookAdmin,
        hook: Annotated[str | None, Query(description="one webhook's label (its URL's origin, as in /metrics)")]
        = None,
        kind: Annotated[str | None, Query(description="comma list of type prefixes, e.g. `call.`")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: str | None = None,
    ) -> FailedWebhooksPage:
        """Webhook events given up (tries used up, refused by the endpoint, pushed out of a full queue, or left at
        shutdown), kept in the store for every node, oldest first, a page at a time."""
        rows = await webhooks.store.failed_webhooks(_after(cursor), limit + 1, hook=hook, kinds=parse_types(kind))
        page = rows[:limit]
        kept = sum((await webhooks.keeper.refresh_counts()).values())
        return FailedWebhooksPage(kept=kept, items=[_failed_out(r) for r in page],
                                  next_cursor=str(page[-1].id) if len(rows) > limit else None)

    @v1.post("/webhooks/failed/redeliver", response_model=RedeliverOut, tags=["webhooks"])
    async def redeliver_failed_webhooks(body: RedeliverIn, _: WebhookAdmin) -> RedeliverOut:
        """Queue kept events again on their webhook's sender (after the events waiting), with their body and
        delivery id: delivered, one leaves the kept list; given up again, it stays kept (its `tries` + 1), never
        twice."""
        counts = {"queued": 0, "already_queued": 0, "queue_full": 0, "no_webhook": 0}
        not_found: list[int] = []
        if body.ids is not None:
            rows = await webhooks.store.get_failed_webhooks(body.ids)
            found = {r.id for r in rows}
            not_found = sorted({i for i in body.ids if i not in found})
            for k, n in webhooks.redeliver(rows).items():
                counts[k] += n
        else:
            async for rows in _every_failed(body.hook, body.kind):
                for k, n in webhooks.redeliver(rows).items():
                    counts[k] += n
        log.info("webhook events redelivered", extra={"fields": {**counts, "not_found": len(not_found)}})
        return RedeliverOut(**counts, not_found=not_found)

    @v1.delete("/webhooks/failed", tags=["webhooks"])
    async def delete_failed_webhooks(
        _: WebhookAdmin,
        ids: Annotated[str | None, Query(description="comma list of kept event ids; or `all`")] = None,
        every: Annotated[bool, Query(alias="all", description="every kept event (of `hook` and `kind` when given)")]
        = False,
        hook: str | None = None,
        kind: str | None = None,
    ) -> dict[str, int]:
        """Forget kept events for good (reconciled some other way)."""
        if (ids is None) == (not every):
            raise HTTPException(422, "give either ids or all=true")
        if ids is not None:
            if hook is not None or kind is not None:
                raise HTTPException(422, "hook and kind filter all=true; with ids, give the ids alone")
            try:
                wanted = [int(i) for i in ids.split(",") if i.strip()]
            except ValueError:
                raise HTTPException(422, "ids: a comma list of integers") from None
            return {"deleted": await webhooks.store.drop_failed_webhooks(wanted)}
        deleted = 0
        async for rows in _every_failed(hook, kind):
            deleted += await webhooks.store.drop_failed_webhooks([r.id for r in rows])
        return {"deleted": deleted}

    app.include_router(v1)
    app.include_router(dashboard_router(runtime))  # /dashboard, / → it, /api/v1/campaigns/{id}/dids

    # ------------------------------------------------------------------ open endpoints

    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz() -> Health:
        """The process answers (liveness)."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, tags=["health"])
    async def readyz(response: Response) -> Health:
        """Ready to dial: the PBX link is logged in and the store answers (within 2 s). 503 names what is not."""
        try:
            store_ok = bool(await asyncio.wait_for(runtime.store.ping(), timeout=_READY_TIMEOUT_S))
        except Exception:
            store_ok = False
        checks = {"pbx": bool(runtime.telephony.ready), "store": store_ok}
        failing = [k for k, ok in checks.items() if not ok]
        response.status_code = 503 if failing else 200
        return Health(status="unavailable" if failing else "ok", checks=checks, failing=failing)

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse)  # Prometheus text format
    async def metrics() -> Response:
        # The kept webhook events, as the store counts them (every node's); the last count if it is slow, and at
        # once while the store is known down (a scrape waited up to 2 s for it on every pass of an outage).
        if runtime.store_up:
            try:
                await asyncio.wait_for(webhooks.keeper.refresh_counts(), timeout=_READY_TIMEOUT_S)
            except Exception:
                log.debug("kept webhook events not counted", exc_info=True)
        body, content_type = render_metrics(runtime, hub=hub, webhooks=webhooks)
        return Response(content=body, media_type=content_type)

    return app
