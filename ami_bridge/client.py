"""The AMI link: panoramisk inside, with the properties a dialer needs that panoramisk alone does not give.

- No action is ever re-sent after a reconnect (panoramisk queues unanswered actions and replays them on
  `FullyBooted`; a replayed Originate would dial a debtor twice). Their futures fail with `LinkLost` instead.
- Every action has a timeout.
- Liveness: our own Ping with a deadline; an unanswered Ping aborts the link so that it reconnects.
- Text is decoded incrementally: a UTF-8 character split across TCP reads arrives intact.
- Login is ours (plain or MD5 challenge), asking only for the event classes we consume.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import hashlib
import logging
import os
import ssl
from collections.abc import Callable
from typing import Any

from panoramisk import Manager
from panoramisk.ami_protocol import AMIProtocol
from panoramisk.message import Message

from ami_bridge.config import AmiConfig

log = logging.getLogger("marcador.ami")

_EOM = "\r\n\r\n"
CONNECT_REMIND_S = 60  # while AMI cannot be reached, a warning this often (the first at once)


class LinkLost(ConnectionError):
    """The AMI link went down before the action's answer arrived; the action is not re-sent."""


class AmiAuthError(RuntimeError):
    """Asterisk refused our login: a configuration error, not retried."""


class _EveryAction:
    """`forgetable_actions` that holds every action: panoramisk then neither queues an unanswered action for
    replay nor logs it (its log line would carry a Login's secret)."""

    def __contains__(self, name: object) -> bool:
        return True


_EVERY_ACTION = _EveryAction()


class _Protocol(AMIProtocol):  # type: ignore[misc]
    """panoramisk's protocol with incremental decoding and no replay of pending actions."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""

    def data_received(self, data: bytes) -> None:
        self._buffer += self._decoder.decode(data)
        if getattr(self, "version", None) is None and self._buffer.startswith("Asterisk Call Manager/"):
            banner, sep, rest = self._buffer.partition("\r\n")
            if not sep:
                return
            self.version = banner.partition("/")[2].strip()
            self._buffer = rest
        *complete, self._buffer = self._buffer.split(_EOM)
        for block in complete:
            message = Message.from_line(block.strip())
            if message is not None:
                self.handle_message(message)

    def close(self) -> None:
        pending = [a for a in self.responses.values() if not a.future.done()]
        super().close()
        if self.factory is not None:
            self.factory.awaiting_actions.clear()  # never replayed: see module docstring
        for action in pending:
            if not action.future.done():
                action.future.set_exception(LinkLost(f"AMI link lost before the answer to {action['action']}"))


def _why(exc: OSError) -> str:
    """"Connection refused" rather than asyncio's "[Errno 111] Connect call failed (...)"."""
    if isinstance(exc, ssl.SSLError) or not exc.errno or exc.errno < 0:
        return exc.strerror or str(exc)  # TLS, or a resolver error ("Name or service not known")
    return os.strerror(exc.errno)


class _Manager(Manager):  # type: ignore[misc]
    """panoramisk's Manager without its unchecked pinger, its own login, its replay of actions, and its log line
    per failed connect (once a second, without host or reason, for as long as Asterisk is away)."""

    stopped = False
    hold_until = 0.0  # loop time before which no connect is tried
    connect_failures = 0
    connect_error = ""  # why the last connect failed
    _failing_since = 0.0
    _warned_at = 0.0

    def ping(self) -> None:  # our liveness task replaces panoramisk's fire-and-forget ping
        return None

    async def send_awaiting_actions(self, *_: Any) -> None:
        self.awaiting_actions.clear()  # never replayed (see module docstring), and no log line saying otherwise

    def connect(self, *args: Any, **kwargs: Any) -> Any:
        if self.stopped:  # a reconnect scheduled before close() must not revive the link
            return None
        wait = self.hold_until - self.loop.time()
        if wait > 0:  # a refused login: the next try waits (AmiConfig.auth_retry_s)
            self.loop.call_later(wait, self.connect)
            return None
        return super().connect(*args, **kwargs)

    def connection_made(self, f: asyncio.Future[Any]) -> None:
        exc = None if f.cancelled() else f.exception()
        if not isinstance(exc, OSError):
            if self.connect_failures:
                log.info("AMI reachable again", extra={"fields": {
                    "host": self.config["host"], "port": self.config["port"],
                    "failed_attempts": self.connect_failures}})
            self.connect_failures = 0
            super().connection_made(f)
            return
        if getattr(self, "protocol", None):
            self.protocol.close()
        self.connect_failures += 1
        self.connect_error = _why(exc)
        now = self.loop.time()
        if self.connect_failures == 1:
            self._failing_since = now
        # Retried every reconnect_timeout as before (a restarted Asterisk is back at once); said once, then
        # once a minute, with where and why.
        if self.connect_failures == 1 or now - self._warned_at >= CONNECT_REMIND_S:
            self._warned_at = now
            log.warning("AMI connect failed; retrying", extra={"fields": {
                "host": self.config["host"], "port": self.config["port"], "error": self.connect_error,
                "failed_attempts": self.connect_failures, "failing_s": round(now - self._failing_since),
                "retry_every_s": self.reconnect_timeout}})
        self.loop.call_later(self.reconnect_timeout, self.connect)


class AmiClient:
    def __init__(
        self,
        config: AmiConfig,
        on_event: Callable[[Message], None],
        on_login: Callable[[], None] | None = None,
        on_link_down: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self._on_event = on_event
        self._on_login = on_login
        self._on_link_down = on_link_down
        self.logged_in = False
        self.auth_error: str | None = None
        self.connects = 0
        self.reconnects = 0
        self.logins = 0
        self._closing = False
        self._login_waiter: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._liveness: asyncio.Task[None] | None = None
        self._manager: _Manager | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect and log in. Returns when logged in or after `connect_timeout_s` (it keeps retrying);
        raises `AmiAuthError` when the credentials are refused."""
        loop = asyncio.get_running_loop()
        self._login_waiter = asyncio.Event()
        cfg = self.config
        self._manager = _Manager(
            host=cfg.host,
            port=cfg.port,
            ssl=ssl.create_default_context(cafile=cfg.tls_ca_file) if cfg.tls else False,
            encoding="utf8",
            ping_delay=10**9,
            reconnect_timeout=max(1, round(cfg.reconnect_delay_s)),
            protocol_factory=_Protocol,
            loop=loop,
            events="off",
            forgetable_actions=_EVERY_ACTION,
            on_connect=self._connected,
            on_disconnect=self._disconnected,
            log=logging.getLogger("marcador.ami.link"),
        )
        self._manager.register_event("*", self._dispatch)
        self._manager.connect()
        self._liveness = asyncio.create_task(self._keep_alive(), name="ami-liveness")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._login_waiter.wait(), cfg.connect_timeout_s)
        if self.auth_error:
            raise AmiAuthError(self.auth_error)
        if not self.logged_in:
            log.warning("AMI not reachable yet; retrying in the background",
                        extra={"fields": {"host": cfg.host, "port": cfg.port}})

    async def close(self) -> None:
        self._closing = True
        if self._liveness is not None:
            self._liveness.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._manager is not None:
            self._manager.stopped = True
            self._manager.close()
        self.logged_in = False

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def connect_error(self) -> str:
        """Why the last TCP connect failed ("" when it did not)."""
        return self._manager.connect_error if self._manager is not None else ""

    # ------------------------------------------------------------------ actions

    def send(self, fields: dict[str, Any], timeout: float | None = None) -> asyncio.Future[list[Message]]:
        """Send an action now (never queued, never re-sent). The future gets every message of its answer:
        the response, then its events (EventList items, OriginateResponse). It fails with `LinkLost` or
        `TimeoutError`."""
        loop = asyncio.get_running_loop()
        result: asyncio.Future[list[Message]] = loop.create_future()
        proto = self._manager.protocol if self._manager is not None else None
        if not self.logged_in or proto is None or proto.closed:
            result.set_exception(LinkLost(f"AMI link down: {fields.get('Action')} not sent"))
            return result
        return self._send_on(proto, fields, timeout, result)

    def _send_on(self, proto: Any, fields: dict[str, Any], timeout: float | None,
                 result: asyncio.Future[list[Message]]) -> asyncio.Future[list[Message]]:
        loop = asyncio.get_running_loop()
        inner = proto.send(dict(fields), as_list=None)  # panoramisk spots EventLists and async Originates

        def done(fut: asyncio.Future[Any]) -> None:
            timer.cancel()
            if result.done():
                return
            if fut.cancelled():
                result.set_exception(LinkLost("action cancelled"))
            elif fut.exception() is not None:
                result.set_exception(fut.exception())  # type: ignore[arg-type]
            else:
                value = fut.result()
                result.set_result(list(value) if isinstance(value, list) else [value])

        def expire() -> None:
            if not inner.done():
                # Forget it, so a late answer is dropped rather than matched to nothing.
                for key in [k for k, a in proto.responses.items() if a.future is inner]:
                    proto.responses.pop(key, None)
                inner.set_exception(TimeoutError(f"no answer to {fields.get('Action')} in {wait:.1f}s"))

        wait = timeout if timeout is not None else self.config.action_timeout_s
        timer = loop.call_later(wait, expire)
        inner.add_done_callback(done)
        return result

    async def request(self, fields: dict[str, Any], timeout: float | None = None) -> list[Message]:
        return await self.send(fields, timeout)

    # ------------------------------------------------------------------ link events

    def _connected(self, manager: Manager) -> None:
        self.connects += 1
        if self.connects > 1:
            self.reconnects += 1
        self._spawn(self._login(manager.protocol))

    def _disconnected(self, manager: Manager, exc: Any) -> None:
        was = self.logged_in
        self.logged_in = False
        if was and not self._closing:
            log.warning("AMI link down; reconnecting")
            if self._on_link_down is not None:
                self._on_link_down()

    async def _login(self, proto: Any) -> None:
        cfg = self.config
        result: asyncio.Future[list[Message]] = asyncio.get_running_loop().create_future()
        try:
            login: dict[str, Any] = {"Action": "Login", "Username": cfg.username, "Events": cfg.events}
            if cfg.auth == "md5":
                challenge = await self._send_on(proto, {"Action": "Challenge", "AuthType": "MD5"},
                                                cfg.action_timeout_s, result)
                key = hashlib.md5((challenge[0].get("Challenge", "") + cfg.secret).encode()).hexdigest()
                login.update(AuthType="MD5", Key=key)
                result = asyncio.get_running_loop().create_future()
            else:
                login["Secret"] = cfg.secret
            reply = (await self._send_on(proto, login, cfg.action_timeout_s, result))[0]
        except (LinkLost, TimeoutError, OSError) as exc:
            log.warning("AMI login did not complete", extra={"fields": {"error": str(exc)}})
            return
        if str(reply.get("Response", "")).lower() != "success":
            refused = f"AMI login refused for user {cfg.username!r}: {reply.get('Message', '')}"
            if self.logins and self._manager is not None and not self._closing:
                # It worked before: manager.conf changed under a running engine. Never a loop of bad logins
                # (Asterisk and fail2ban would see an attack), but not a link dead until someone restarts us.
                log.error(refused + "; retrying later", extra={"fields": {"retry_in_s": cfg.auth_retry_s}})
                self._manager.hold_until = asyncio.get_running_loop().time() + cfg.auth_retry_s
                if getattr(proto, "transport", None) is not None:
                    proto.transport.close()
                return
            # Never retry bad credentials in a loop (Asterisk would log us as an attack); stop and say so.
            self.auth_error = refused
            log.error(self.auth_error)
            self._closing = True
            if self._manager is not None:
                self._manager.stopped = True
                self._manager.close()
            if self._login_waiter is not None:
                self._login_waiter.set()
            return
        self.logged_in = True
        self.logins += 1
        log.info("AMI logged in", extra={"fields": {"host": cfg.host, "port": cfg.port, "auth": cfg.auth,
                                                    "reconnects": self.reconnects}})
        if self._login_waiter is not None:
            self._login_waiter.set()
        if self._on_login is not None:
            self._on_login()

    def _dispatch(self, manager: Manager, message: Message) -> None:
        try:
            self._on_event(message)
        except Exception:  # one bad event must not kill the reader
            log.exception("AMI event handler failed", extra={"fields": {"event": message.get("Event")}})

    async def _keep_alive(self) -> None:
        cfg = self.config
        while True:
            await asyncio.sleep(cfg.ping_interval_s)
            if not self.logged_in or self._manager is None:
                continue
            try:
                await self.send({"Action": "Ping"}, timeout=cfg.ping_timeout_s)
            except TimeoutError:
                log.warning("AMI ping unanswered: link marked dead, reconnecting",
                            extra={"fields": {"timeout_s": cfg.ping_timeout_s}})
                proto = self._manager.protocol
                if proto is not None and getattr(proto, "transport", None) is not None:
                    proto.transport.abort()
            except LinkLost:
                continue

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

