"""Marcador's configuration: a YAML file plus environment variables (MARCADOR_..., nested with `__`).

Environment variables override the file; every field has a default that runs the embedded demo.
`marcador config show` prints every field with its default and description.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
Role = Literal["admin", "integrator", "supervisor", "agent", "viewer"]


class AmiSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="Asterisk manager interface host")
    port: int = Field(5038, ge=0, le=65535, description="AMI TCP port (0 with the embedded PBX: any free port)")
    username: str = Field("marcador", description="AMI user (least privilege, see asterisk-docker/config/manager.conf)")
    secret: SecretStr = Field(SecretStr("marcador-dev"), description="AMI secret; never logged")
    auth: Literal["plain", "md5"] = Field("md5", description="login method: MD5 challenge or plain")
    tls: bool = Field(False, description="AMI over TLS")
    call_channel: str = Field("PJSIP/{number}@trunk", description="channel template for customer calls")
    agent_channel: str = Field("PJSIP/{agent_id}", description="channel template for agent legs")


class ApiToken(BaseModel):
    """One bearer token. The token itself is a secret: it is never logged nor shown back by the API."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="who holds the token (shown in logs instead of the token)")
    token: SecretStr = Field(description="the bearer token, at least 16 characters")
    role: Role = Field(description="admin | integrator | supervisor | agent | viewer")
    agent_id: str | None = Field(None, description="for role agent: the one agent whose state/dispositions it may set")

    @model_validator(mode="after")
    def _check(self) -> ApiToken:
        if len(self.token.get_secret_value()) < 16:
            raise ValueError(f"token of {self.name!r}: at least 16 characters")
        if self.role == "agent" and not self.agent_id:
            raise ValueError(f"token of {self.name!r}: role agent needs agent_id")
        return self


class WebhookSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="HTTP(S) endpoint receiving POSTed JSON events")
    secret: SecretStr = Field(description="HMAC-SHA256 key for the X-Marcador-Signature header; never logged")
    events: list[str] = Field(["*"], description="event kinds to send; `call.*` style prefixes, `*` for all")
    timeout_s: float = Field(5.0, gt=0, le=60, description="per delivery attempt")
    max_attempts: int = Field(8, ge=1, le=50, description="deliveries tried before an event is given up")
    backoff_base_s: float = Field(1.0, gt=0, description="first retry delay; doubles each retry")
    backoff_max_s: float = Field(300.0, gt=0, description="longest delay between retries")
    queue_size: int = Field(10_000, ge=1, description="events held for a slow endpoint; the oldest is dropped past it")

    @field_validator("secret")
    @classmethod
    def _secret_set(cls, value: SecretStr) -> SecretStr:
        # An empty HMAC key signs every body with a signature anyone can compute: the receiver's check proves nothing.
        if not value.get_secret_value().strip():
            raise ValueError("is empty: set a random string the receiver also knows")
        return value

    @model_validator(mode="after")
    def _check_url(self) -> WebhookSettings:
        # Checked as the sender will use it, so a URL it cannot send to fails here, naming the field. Messages never
        # quote the URL: it may carry a password or a token.
        if not self.url.startswith(("http://", "https://")):
            raise ValueError("url: must start with http:// or https://")
        if any(ch.isspace() or not ch.isprintable() for ch in self.url):
            raise ValueError("url: holds a space or a control character")
        try:
            parts = urlsplit(self.url)
            parts.port  # noqa: B018 -- parsed on access: a port out of 0-65535 raises here
        except ValueError:
            raise ValueError("url: cannot be parsed (a bad port or an unclosed [IPv6] host)") from None
        if not parts.hostname:
            raise ValueError("url: names no host")
        return self


class ApiSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="address the REST API and dashboard listen on")
    port: int = Field(8080, ge=0, le=65535, description="API port")
    tokens: list[ApiToken] = Field(
        [], description="bearer tokens with roles; when empty, auth is OFF (the local demo) and a warning is logged"
    )
    webhooks: list[WebhookSettings] = Field([], description="endpoints receiving call/agent/campaign events")
    webhooks_kept_max: int = Field(10_000, ge=1, description="webhook events given up (or left at shutdown) kept in "
                                                             "the store to list and redeliver; past it the oldest go")
    idempotency_ttl_s: float = Field(86_400.0, gt=0, description="how long an Idempotency-Key answer is replayed")
    idempotency_max_keys: int = Field(10_000, ge=1, description="Idempotency-Keys remembered (oldest forgotten)")
    max_upload_bytes: int = Field(256 * 1024 * 1024, ge=1024, description="largest lead upload body")
    events_replay: int = Field(2_000, ge=0, description="recent events an SSE client can resume with Last-Event-ID; "
                                                         "0 keeps none")
    events_client_queue: int = Field(1_000, ge=1, description="events held for a slow SSE client; oldest dropped")
    events_heartbeat_s: float = Field(15.0, gt=0, le=300, description="SSE keep-alive comment interval")
    allow_open: bool = Field(False, description="serve with no tokens on an address beyond loopback (auth off)")

    @model_validator(mode="after")
    def _no_open_api_beyond_loopback(self) -> ApiSettings:
        # With no tokens every request acts as admin: fine for the local demo, not for a port others can reach.
        if not self.tokens and not self.allow_open and not _loopback(self.host):
            raise ValueError(f"tokens: none configured, and the API would listen on {self.host}, beyond this "
                             "machine, with auth off (anyone reaching it could start campaigns and read debtors' "
                             "numbers); add api.tokens, listen on 127.0.0.1, or set api.allow_open: true")
        return self


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


class PbxSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["sim", "asterisk"] = Field("sim", description="sim: embedded simulated PBX; asterisk: use ami")
    scenario: str | None = Field(None, description="scenario YAML driving the simulated PBX's call model")
    speed: float = Field(1.0, gt=0, description="simulated PBX speed factor (1 = real time)")
    call_log: str | None = Field(None, description="simulated PBX: write every customer Originate to this JSONL file")


class DemoSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="create a demo campaign with simulated agents at start-up")
    agents: int = Field(10, ge=0, le=1000, description="simulated agents logged in")
    leads: int = Field(5000, ge=0, description="demo leads loaded")
    strategy: str = Field("erlang", description="pacing strategy of the demo campaign (erlang: the predictive model)")


class MarcadorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MARCADOR_", env_nested_delimiter="__", extra="forbid")

    ami: AmiSettings = Field(AmiSettings(), description="the Asterisk manager interface link")
    api: ApiSettings = Field(ApiSettings(), description="REST API, auth, webhooks, dashboard")
    pbx: PbxSettings = Field(PbxSettings(), description="which PBX to drive")
    demo: DemoSettings = Field(DemoSettings(), description="the embedded demo (sim mode only)")
    store_url: str = Field("memory://", description="memory:// or redis://host:port/db")
    node_id: str = Field("node1", description="this node's name; prefixes call ids (letters, digits, `.`, `-`, `_`; "
                                              "at most 32)")
    log_level: str = Field("INFO", description="DEBUG | INFO | WARNING | ERROR (any case)")

    @field_validator("node_id")
    @classmethod
    def _node_id(cls, value: str) -> str:
        # It prefixes every call and agent-leg id, sent as ChannelId, ActionID and a channel variable of each
        # Originate: a CR/LF would smuggle AMI headers in, the dialplan's argument parser cuts at commas and strips
        # quotes and backslashes, and Asterisk refuses a ChannelId over 149 characters (a leg id adds up to ~90).
        if not _NODE_ID.fullmatch(value):
            raise ValueError("must be 1-32 letters, digits, '.', '-' or '_', starting with a letter or digit")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        # Checked here, not when logging is set up: a typo must be named like any bad field, not crash `run`.
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return level

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings, file_secret_settings)  # env beats the YAML file


def read_yaml(path: str | Path) -> dict[str, Any]:
    loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if loaded is not None and not isinstance(loaded, dict):
        raise ValueError(f"{path}: the top level must be a mapping of settings")
    return loaded or {}


def load_settings(path: str | Path | None = None) -> MarcadorSettings:
    data: dict[str, Any] = read_yaml(path) if path is not None else {}
    return MarcadorSettings(**data)
