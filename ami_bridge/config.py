"""How the bridge reaches a PBX over AMI, and the dialplan names it relies on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True, slots=True)
class AmiConfig:
    host: str = "127.0.0.1"
    port: int = 5038
    username: str = "marcador"
    secret: str = field(default="", repr=False)  # never in a repr, so never in a log line
    auth: Literal["plain", "md5"] = "plain"
    tls: bool = False
    tls_ca_file: str | None = None  # CA bundle that signed Asterisk's certificate (default: the system's)
    # Channel templates: {number} for customer calls, {agent_id} for agent legs.
    call_channel: str = "PJSIP/{number}@trunk"
    agent_channel: str = "PJSIP/{agent_id}"
    # Dialplan contexts (asterisk-docker/config/extensions.conf).
    answered_context: str = "marcador-answered"
    abandon_context: str = "marcador-abandon"
    room_context: str = "marcador-agent-room"
    login_context: str = "marcador-agent-login"
    # Event classes asked for at login: only those the bridge consumes.
    events: str = "call,user"
    action_timeout_s: float = 10.0
    ping_interval_s: float = 2.0
    ping_timeout_s: float = 2.0  # a Ping unanswered this long marks the link dead
    reconnect_delay_s: float = 1.0
    connect_timeout_s: float = 5.0
    # A login refused after earlier ones succeeded (manager.conf changed under us) is tried again this much later;
    # a refusal at start is not retried at all.
    auth_retry_s: float = 300.0
    boot_wait_s: float = 30.0  # how long a starting Asterisk may lack our dialplan/ConfBridge before we say so

    def __post_init__(self) -> None:
        for name in ("call_channel", "agent_channel"):
            template = getattr(self, name)
            key = "{number}" if name == "call_channel" else "{agent_id}"
            if key not in template:
                raise ValueError(f"{name}: the template must contain {key}, got {template!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"port: must be 1..65535, got {self.port}")
