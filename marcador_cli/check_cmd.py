"""`marcador check-asterisk`: is this Asterisk ready for Marcador? Logs in over AMI and probes, without dialing
anyone, what the dialer needs: the actions its AMI user may send, the OriginateResponse event it must receive,
the dialplan contexts it routes calls into, and ConfBridge. Prints what is right and what to fix; exit 0 when all
is right, 1 otherwise. The secret is never printed (AmiConfig keeps it out of its repr too).

    marcador check-asterisk [--config FILE] [--host H] [--port P] [--username U] [--secret S | env
        MARCADOR_AMI__SECRET] [--auth md5|plain] [--tls [--tls-ca FILE]]

Defaults come from the settings `marcador run` reads (`--config FILE` and MARCADOR_AMI__... variables), so the
check tests what the service will use.

Probes (asterisk-docker/config/manager.conf gives the user write = call,originate,reporting and
read = call,user,agent,reporting):
- Originate (class originate) of `Local/marcador-check@<missing context>` into the answered context, Async: the
  PBX must accept it and then report its failure in an OriginateResponse (read class call, and an eventfilter that
  lets it through). A Local channel into a context that does not exist rings nobody; nothing reaches the dialplan.
- Hangup and Redirect (class call) of a channel that does not exist: "no such channel" is right, "Permission
  denied" is not.
- CoreShowChannels and ShowDialPlan (class reporting): the resync after a reconnect and the context checks.
- ShowDialPlan of each context the dialer uses (AmiConfig: answered, abandon, agent room, agent login).
- ConfbridgeListRooms: answers (rooms, or "No active conferences") only when app_confbridge is loaded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import typer
from panoramisk.message import Message
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ami_bridge.client import AmiAuthError, AmiClient, LinkLost
from ami_bridge.config import AmiConfig
from config.settings import AmiSettings
from marcador_cli.config_cmd import print_problem
from marcador_cli.settings_check import SettingsProblem, load_checked

PROBE_CONTEXT = "marcador-check-no-such-context"
_DEFAULT_SECRET = AmiSettings().secret  # the settings' development default: not a secret anyone chose
_DENIED = "permission denied"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _message(msgs: list[Message]) -> tuple[str, str]:
    first = msgs[0] if msgs else {}
    return str(first.get("Response", "")), str(first.get("Message", ""))


async def _ask(client: AmiClient, fields: dict[str, str], timeout: float) -> tuple[list[Message], str | None]:
    """The answer's messages, or ([], why) when none came."""
    try:
        return await client.request(fields, timeout=timeout), None
    except TimeoutError:
        return [], f"no answer in {timeout:.0f} s"
    except LinkLost as exc:
        return [], f"the AMI link dropped ({exc})"


def _permission(name: str, action: str, klass: str, msgs: list[Message], err: str | None, user: str,
                good: str) -> Check:
    """An action whose refusal for lack of rights reads "Permission denied"; any other answer proves the right."""
    if err is not None:
        return Check(name, False, f"{action}: {err}", "check that Asterisk is responsive (`core show uptime`)")
    response, message = _message(msgs)
    if _DENIED in message.lower():
        return Check(name, False, f"{action} refused: Permission denied",
                     f"add `{klass}` to `write =` of [{user}] in manager.conf, then `manager reload`")
    return Check(name, True, f"{action} permitted ({good}: {response} {message})".replace("  ", " ").strip())


async def _probe_originate(client: AmiClient, cfg: AmiConfig, timeout: float) -> list[Check]:
    # The answered side exists (Asterisk refuses an Originate whose Context/Exten does not), the dialed side does
    # not: the Local channel fails before anything runs, and the failure must come back as an event.
    fields = {"Action": "Originate", "Channel": f"Local/marcador-check@{PROBE_CONTEXT}",
              "Context": cfg.answered_context, "Exten": "s", "Priority": "1", "Timeout": "2000", "Async": "true",
              "ChannelId": f"marcador-check-{uuid.uuid4().hex[:12]}", "CallerID": "Marcador check <0>"}
    msgs, err = await _ask(client, fields, timeout)
    if err is not None:
        return [Check("originate", False, f"Originate: {err}",
                      f"add `read = call` to [{cfg.username}] and allow `Event: OriginateResponse` in its "
                      "eventfilter (manager.conf): the dialer learns every failed dial from that event")]
    response, message = _message(msgs)
    if _DENIED in message.lower():
        return [Check("originate", False, "Originate refused: Permission denied",
                      f"add `originate` to `write =` of [{cfg.username}] in manager.conf, then `manager reload`")]
    events = [m for m in msgs[1:] if str(m.get("Event", "")) == "OriginateResponse"]
    if response.lower() == "success" and events:
        return [Check("originate", True, "Originate permitted; its failure came back as OriginateResponse "
                      f"(Reason {events[0].get('Reason', '?')}) — no call was made")]
    if response.lower() == "success":
        return [Check("originate", False, "Originate accepted but no OriginateResponse event came back",
                      f"add `call` to `read =` of [{cfg.username}] and `eventfilter = Event: OriginateResponse`")]
    # Refused for another reason (the answered context is missing: its own check says so): the right is there,
    # the event path is unproven.
    return [Check("originate", True, f"Originate permitted (the PBX answered: {message or response}); "
                  "OriginateResponse not verified")]


async def _probe_contexts(client: AmiClient, cfg: AmiConfig, timeout: float) -> list[Check]:
    out = []
    contexts = [("answered", cfg.answered_context), ("abandon message", cfg.abandon_context),
                ("agent room", cfg.room_context), ("agent login", cfg.login_context)]
    for role, ctx in contexts:
        msgs, err = await _ask(client, {"Action": "ShowDialPlan", "Context": ctx}, timeout)
        response, message = _message(msgs)
        found = [m for m in msgs[1:] if str(m.get("Event", "")) == "ListDialplan" and m.get("Context") == ctx]
        if err is not None:
            out.append(Check(f"context {ctx}", False, f"ShowDialPlan: {err}", ""))
        elif _DENIED in message.lower():
            out.append(Check(f"context {ctx}", False, "ShowDialPlan refused: Permission denied",
                             f"add `reporting` to `write =` of [{cfg.username}] in manager.conf"))
        elif response.lower() == "success" and found:
            out.append(Check(f"context {ctx}", True, f"{role} context present ({len(found)} dialplan entries)"))
        else:
            out.append(Check(f"context {ctx}", False, f"{role} context missing ({message or response})",
                             "install asterisk-docker/config/extensions.conf (or include it) and "
                             "`dialplan reload`"))
    return out


async def _probe_confbridge(client: AmiClient, timeout: float) -> Check:
    msgs, err = await _ask(client, {"Action": "ConfbridgeListRooms"}, timeout)
    response, message = _message(msgs)
    if err is None and (response.lower() == "success" or "no active conferences" in message.lower()):
        rooms = sum(1 for m in msgs[1:] if str(m.get("Event", "")) == "ConfbridgeListRooms")
        return Check("confbridge", True, f"app_confbridge loaded ({rooms} room(s) active)")
    if _DENIED in message.lower():
        return Check("confbridge", False, "ConfbridgeListRooms refused: Permission denied",
                     "add `reporting` to `write =` in manager.conf")
    return Check("confbridge", False, f"ConfBridge not answering ({err or message or response})",
                 "load app_confbridge (`module load app_confbridge.so`; modules.conf) and install "
                 "asterisk-docker/config/confbridge.conf")


async def run_checks(cfg: AmiConfig, timeout: float = 5.0) -> list[Check]:
    """Every check, in order; a failed connection or login stops there (nothing else can be probed)."""
    client = AmiClient(cfg, on_event=lambda m: None)
    where = f"{cfg.host}:{cfg.port}{' (TLS)' if cfg.tls else ''}"
    try:
        try:
            await client.start()
        except AmiAuthError:
            return [Check("login", False, f"Asterisk refused the login of AMI user {cfg.username!r} ({cfg.auth})",
                          f"the secret must match `secret =` of [{cfg.username}] in manager.conf (pass --secret or "
                          "MARCADOR_AMI__SECRET), and `permit =` must allow this host")]
        except OSError as exc:
            return [Check("connect", False, f"cannot open {where}: {exc}", "")]
        if not client.logged_in:
            if client.connects == 0:
                why = f": {client.connect_error}" if client.connect_error else " (no answer)"
                return [Check("connect", False, f"cannot connect to {where}{why}",
                              "check `enabled = yes`, `port` and `bindaddr` in manager.conf [general], that "
                              "Asterisk runs, and --tls if AMI is served over TLS")]
            return [Check("login", False, f"connected to {where} but the login of {cfg.username!r} did not complete",
                          "is this an Asterisk Manager port? (try --tls/--auth)")]
        proto = client._manager.protocol if client._manager is not None else None
        version = getattr(proto, "version", None) or "?"
        checks = [Check("login", True, f"logged in to {where} as {cfg.username!r} ({cfg.auth}); AMI {version}")]
        checks += await _probe_originate(client, cfg, timeout)
        missing = f"{PROBE_CONTEXT}-channel"
        for action, extra in (("Hangup", {}), ("Redirect", {"Context": PROBE_CONTEXT, "Exten": "s",
                                                            "Priority": "1"})):
            msgs, err = await _ask(client, {"Action": action, "Channel": missing, **extra}, timeout)
            checks.append(_permission(action.lower(), action, "call", msgs, err, cfg.username, "no such channel"))
        msgs, err = await _ask(client, {"Action": "CoreShowChannels"}, timeout)
        checks.append(_permission("channels", "CoreShowChannels", "reporting", msgs, err, cfg.username, "listed"))
        checks += await _probe_contexts(client, cfg, timeout)
        checks.append(await _probe_confbridge(client, timeout))
        return checks
    finally:
        await client.close()


def print_checks(checks: list[Check], console: Console) -> None:
    table = Table(title="Asterisk readiness for Marcador", show_lines=False)
    table.add_column("", width=2)
    table.add_column("check")
    table.add_column("result")
    table.add_column("to fix")
    for c in checks:
        # escape: "[marcador]" (a manager.conf section) would otherwise be read as markup and vanish
        table.add_row("[green]✓[/]" if c.ok else "[red]✗[/]", escape(c.name), escape(c.detail), escape(c.fix))
    console.print(table)
    failed = [c for c in checks if not c.ok]
    if failed:
        console.print(f"[red]{len(failed)} check(s) failed[/]: " + ", ".join(escape(c.name) for c in failed))
    else:
        console.print("[green]All checks passed[/]: this Asterisk is ready for Marcador.")


def check_asterisk(
    host: Annotated[str | None, typer.Option(help="AMI host [default: ami.host, 127.0.0.1]",
                                             show_default=False)] = None,
    port: Annotated[int | None, typer.Option(help="AMI port [default: ami.port, 5038]", show_default=False)] = None,
    username: Annotated[str | None, typer.Option(help="AMI user (manager.conf section) [default: ami.username, "
                                                 "marcador]", show_default=False)] = None,
    secret: Annotated[str | None, typer.Option(help="AMI secret [default: env MARCADOR_AMI__SECRET, then "
                                               "ami.secret of --config]", show_default=False)] = None,
    auth: Annotated[str | None, typer.Option(help="login method: md5 (challenge) or plain [default: ami.auth, md5]",
                                             show_default=False)] = None,
    tls: Annotated[bool | None, typer.Option("--tls", help="AMI over TLS [default: ami.tls]",
                                             show_default=False)] = None,
    tls_ca: Annotated[str | None, typer.Option(help="CA bundle for --tls (default: the system's)")] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for each answer")] = 5.0,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="the settings file `marcador run` uses: "
                                                "its ami.* (with the environment on top) are the defaults")] = None,
) -> None:
    """Check that an Asterisk is ready for Marcador: AMI login, rights, dialplan contexts, ConfBridge."""
    try:
        # The same settings as `marcador run` (file, then MARCADOR_AMI__... on top): the check tests what the
        # service will use, not a second set of defaults.
        ami = load_checked(config).ami
    except SettingsProblem as problem:
        print_problem(problem, Console(stderr=True, soft_wrap=True))
        raise typer.Exit(1) from None
    auth = auth or ami.auth
    if auth not in ("md5", "plain"):
        raise typer.BadParameter("must be md5 or plain", param_hint="--auth")
    if secret is None:
        if config is not None or ami.secret != _DEFAULT_SECRET:  # set in the file or by MARCADOR_AMI__SECRET
            secret = ami.secret.get_secret_value()
        else:
            secret = os.environ.get("MARCADOR_AMI_SECRET", "")  # the name this command documented before
    method: Literal["md5", "plain"] = "md5" if auth == "md5" else "plain"
    cfg = AmiConfig(host=host or ami.host, port=port or ami.port, username=username or ami.username,
                    secret=secret, auth=method, tls=ami.tls if tls is None else tls, tls_ca_file=tls_ca,
                    action_timeout_s=timeout, connect_timeout_s=timeout)
    console = Console(highlight=False)
    if not secret:
        console.print("[yellow]no secret given (--secret, MARCADOR_AMI__SECRET or --config): logging in with an "
                      "empty one[/]")
    logging.getLogger("marcador.ami").setLevel(logging.CRITICAL)  # the table says it all, once
    checks = asyncio.run(run_checks(cfg, timeout))
    print_checks(checks, console)
    raise typer.Exit(0 if all(c.ok for c in checks) else 1)
