"""`open_store(url)`: a store from its URL. The CLI calls it for every URL but `memory://`.

    memory://
    redis://[[user]:password@]host[:port][/db][?options]          rediss:// for TLS
    redis://host:port,host:port/?cluster=1                         Redis Cluster (startup nodes); or
    redis+cluster://[[user]:password@]host:port[,host:port...]     (rediss+cluster:// for TLS)
    redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]

Options (query): prefix (key prefix, default `marcador:`), node_id (lease owner; default host-pid),
lease_ttl (seconds, default 60), wait_replicas (replicas that must acknowledge each lease batch before its leads
are dialed, WAIT up to 100 ms: a Sentinel/Cluster failover then keeps them; default 0), lost_hold (seconds a dead
node's lead with a call in flight waits before it may be dialed again; default 2 x lease_ttl: set it above ring
timeout + the longest talk), socket_timeout,
socket_connect_timeout (seconds), client_name, ssl_cert_reqs, ssl_ca_certs, and for Sentinel
sentinel_password. Clients connect lazily: a wrong host
shows at the first command (or `ping()`), a malformed URL here, as a ValueError that names the problem.
Passwords never appear in those messages (nor anywhere this module logs).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.connection import SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

from dialer.memory_store import InMemoryStore
from dialer.ports import Store
from dialer.redis_store import RedisStore

_SCHEMES = {
    "redis": ("plain", False),
    "rediss": ("plain", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
}
_DEFAULT_PORT = {"plain": 6379, "cluster": 6379, "sentinel": 26379}
_STORE_OPTIONS = {"prefix", "node_id", "lease_ttl", "lost_hold", "cluster", "wait_replicas"}
_CLIENT_OPTIONS = {"socket_timeout", "socket_connect_timeout", "client_name", "ssl_cert_reqs", "ssl_ca_certs"}


def redact_url(url: str) -> str:
    """The URL with its password (userinfo after ':' and password-like query values) replaced by ***."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    # Up to the last '@' before the query: a password may hold unescaped '@', '/' or ':'.
    query_at = rest.find("?")
    at = rest.rfind("@", 0, query_at if query_at >= 0 else len(rest))
    if at >= 0:
        user, colon, _ = rest[:at].partition(":")
        rest = f"{user}{':***' if colon else ''}@{rest[at + 1:]}"
    rest = re.sub(r"((?:^|[?&])[^=&]*password=)[^&]*", r"\1***", rest, flags=re.IGNORECASE)
    return f"{scheme}{sep}{rest}"


@dataclass(slots=True)
class StoreUrl:
    """A parsed store URL (no I/O)."""

    kind: str  # memory | plain | cluster | sentinel
    tls: bool = False
    hosts: list[tuple[str, int]] = field(default_factory=list)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0
    service_name: str | None = None
    prefix: str = "marcador:"
    node_id: str | None = None
    lease_ttl_s: float = 60.0
    lost_hold_s: float | None = None  # None: 2 x lease_ttl_s
    wait_replicas: int = 0
    client_options: dict[str, Any] = field(default_factory=dict)
    sentinel_password: str | None = field(default=None, repr=False)


def _fail(url: str, problem: str) -> ValueError:
    return ValueError(f"store URL {redact_url(url)!r}: {problem}")


def _host_port(url: str, item: str, default_port: int) -> tuple[str, int]:
    if item.startswith("["):  # [IPv6]:port
        host, _, tail = item[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
    else:
        host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
    if not host:
        raise _fail(url, f"empty host in {item!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _fail(url, f"bad port {port_text!r} (want 1-65535)")
    return host, int(port_text)


def _float_option(url: str, name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _fail(url, f"option {name}={text!r} is not a number") from None
    if value <= 0:
        raise _fail(url, f"option {name} must be > 0")
    return value


def _db(url: str, text: str) -> int:
    if not text:
        return 0
    if not text.isdigit():
        raise _fail(url, f"database {text!r} is not a number")
    return int(text)


def parse_store_url(url: str) -> StoreUrl:
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise _fail(url, "missing scheme (use memory://, redis://, rediss://, redis+sentinel:// or redis+cluster://)")
    scheme = scheme.lower()
    if scheme == "memory":
        return StoreUrl(kind="memory")
    if scheme not in _SCHEMES:
        raise _fail(url, f"unsupported scheme {scheme!r} (use memory://, redis://, rediss://, redis+sentinel:// "
                         "or redis+cluster://)")
    kind, tls = _SCHEMES[scheme]
    rest, _, query = rest.partition("?")
    rest = rest.split("#", 1)[0]
    # Userinfo ends at the last '@' (a raw password may hold '@' or '/'); the host list at the next '/'.
    userinfo, at, after = rest.rpartition("@")
    if not at:
        userinfo, after = "", rest
    hostlist, _, path = after.partition("/")
    out = StoreUrl(kind=kind, tls=tls)
    if userinfo:
        user, colon, password = userinfo.partition(":")
        out.username = unquote(user) or None
        out.password = unquote(password) if colon else None
        if not colon:  # redis://secret@host: a lone userinfo is the password, as redis-cli reads it
            out.username, out.password = None, unquote(user)
    if not hostlist:
        raise _fail(url, "no host")
    out.hosts = [_host_port(url, item, _DEFAULT_PORT[kind]) for item in hostlist.split(",")]
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise _fail(url, "malformed query string") from None
    for name, value in pairs:
        if name == "prefix":
            if not value or "{" in value or "}" in value:
                raise _fail(url, "option prefix must be non-empty, without '{' or '}'")
            out.prefix = value
        elif name == "node_id":
            out.node_id = value or None
        elif name == "lease_ttl":
            out.lease_ttl_s = _float_option(url, name, value)
        elif name == "lost_hold":
            out.lost_hold_s = _float_option(url, name, value)
        elif name == "wait_replicas":
            if not (value.isascii() and value.isdigit()):
                raise _fail(url, f"option wait_replicas={value!r} is not a whole number >= 0")
            out.wait_replicas = int(value)
        elif name == "cluster":
            if value.lower() in ("1", "true", "yes"):
                if kind == "sentinel":
                    raise _fail(url, "cluster=1 cannot be combined with redis+sentinel://")
                kind = out.kind = "cluster"
            elif value.lower() not in ("0", "false", "no", ""):
                raise _fail(url, "option cluster must be 1 or 0")
        elif name in ("socket_timeout", "socket_connect_timeout"):
            out.client_options[name] = _float_option(url, name, value)
        elif name in ("client_name", "ssl_cert_reqs", "ssl_ca_certs"):
            out.client_options[name] = value
        elif name == "sentinel_password" and kind == "sentinel":
            out.sentinel_password = value
        else:
            known = sorted(_STORE_OPTIONS | _CLIENT_OPTIONS | ({"sentinel_password"} if kind == "sentinel" else set()))
            raise _fail(url, f"unknown option {name!r} (known: {', '.join(known)})")
    if kind == "sentinel":
        service, _, db_text = path.strip("/").partition("/")
        if not service:
            raise _fail(url, "redis+sentinel:// needs a service name: redis+sentinel://host:port,host:port/"
                             "service_name/db")
        if "/" in db_text:
            raise _fail(url, "path must be /service_name[/db]")
        out.service_name = unquote(service)
        out.db = _db(url, db_text)
    else:
        out.db = _db(url, path.strip("/"))
        if kind == "cluster" and out.db != 0:
            raise _fail(url, "Redis Cluster has only database 0")
        if kind == "plain" and len(out.hosts) > 1:
            raise _fail(url, "several hosts need redis+sentinel://, redis+cluster:// or ?cluster=1")
    if not tls and any(name.startswith("ssl_") for name in out.client_options):
        raise _fail(url, "ssl_* options need rediss://")
    return out


def _client_kwargs(spec: StoreUrl) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "username": spec.username,
        "password": spec.password,
        "decode_responses": True,
        "socket_timeout": 5.0,
        "socket_connect_timeout": 2.0,
        # A short reconnect retry rides over a Redis restart; longer outages raise and the runtime retries.
        "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 3),
    }
    kw.update(spec.client_options)
    if spec.tls:
        kw["ssl"] = True
    return kw


# redis-py's default pool raises "Too many connections" past 100 commands in flight: a burst of API requests
# on top of the engine's own traffic then failed a store write, and a failed write pauses dialing. A blocking
# pool makes such a burst wait its turn (up to the socket timeout) instead: a plain Redis's and Sentinel's; a
# Cluster client lets 100 commands or pipelines run at once and the rest wait (WaitingRedisCluster).
POOL_SIZE = 100


class SentinelMasterConnection(SentinelManagedConnection):
    """A connection to the master Sentinel names, which asks Sentinel again whenever it reconnects. redis-py (8.1)
    retries a failed command on the same connection, and that reconnect (`send_packed_command`) went to the address
    the connection had: only a connection handed out by the pool asked Sentinel. So a command caught by a failover
    spent all its retries on the old master (a hung one: 4 x socket_timeout, then it failed), and on an old master
    still up (a planned failover) wrote where the write would be lost."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self.is_connected:
            await self.connect()  # Sentinel's: the master's address now, then the socket
        await super().send_packed_command(command, check_health)


class SentinelMasterSSLConnection(SentinelMasterConnection, SSLConnection):
    pass


class BlockingSentinelConnectionPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's pool (master discovery, reconnect to a new master) with the blocking pool's waiting
    get_connection/release. redis-py (8.1) has no blocking Sentinel pool; `Sentinel.master_for` takes the pool
    class (`connection_pool_class`) and passes max_connections/timeout through to BlockingConnectionPool.

    It also lets go of the old master within about `master_check_s` of Sentinel naming a new one. redis-py's pool
    asked Sentinel only when it opened a connection, and took back a connection at any address: after a failover
    whose old master was still up (a planned `SENTINEL FAILOVER`, a partition healed) its pooled connections wrote
    on to the old master until Sentinel demoted it, 8-10 s later, and those writes were lost with its data (a lease
    among them: its lead back in line while dialed). Here the pool asks Sentinel at most once a `master_check_s`
    before handing out a connection (a Sentinel that does not answer within `master_check_timeout_s` is asked again
    the next time), closes its idle connections when the master moved, and closes a connection given back that is
    connected elsewhere."""

    master_check_s = 1.0
    master_check_timeout_s = 0.5

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._master_checked_at = -math.inf

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        now = time.monotonic()
        if now - self._master_checked_at >= self.master_check_s:
            self._master_checked_at = now  # one check at a time: the commands meanwhile go on
            with contextlib.suppress(RedisError, TimeoutError):  # no news: none answered, or none names a master
                async with asyncio.timeout(self.master_check_timeout_s):
                    await self.get_master_address()  # a new address: the idle connections are closed
        return await super().get_connection(*args, **kwargs)

    async def release(self, connection: Any) -> None:
        address = (getattr(connection, "host", None), getattr(connection, "port", None))
        if self.master_address is not None and address != self.master_address:
            await connection.disconnect()  # its next command reconnects through Sentinel
        await super().release(connection)


# Set while a task (and the tasks it starts) runs a command or pipeline of a WaitingRedisCluster: a command
# redis-py issues from inside one (a pipeline re-sending a redirected command) takes no second turn.
_IN_TURN: ContextVar[bool] = ContextVar("marcador_cluster_turn", default=False)


class WaitingRedisCluster(RedisCluster):
    """redis-py's async Cluster client, but a burst waits instead of failing. redis-py (8.1) gives each Cluster node
    a list of connections that raises MaxConnectionsError when a command finds all `max_connections` busy, with
    no way to wait (ClusterNode.acquire_connection is synchronous, and the client builds its nodes itself). Here
    at most `max_in_flight` commands and pipelines run at once, each using at most one connection per node; the
    next waits its turn, up to `wait_s`, then fails as the blocking pool does ("No connection available.", a
    ConnectionError). The nodes may open a few connections more than `max_in_flight`: after a node error redis-py
    closes used connections in the background, and one still closing must not count against a waiting command."""

    def __init__(self, *args: Any, max_in_flight: int = POOL_SIZE, wait_s: float = 5.0, **kwargs: Any) -> None:
        kwargs["max_connections"] = max_in_flight + max(max_in_flight // 10, 1)
        super().__init__(*args, **kwargs)
        self.max_in_flight = max_in_flight
        self.wait_s = wait_s
        self._turns = asyncio.Semaphore(max_in_flight)

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Hold one of the `max_in_flight` turns (at once if this task holds one already)."""
        if _IN_TURN.get():
            yield
            return
        try:
            async with asyncio.timeout(self.wait_s):
                await self._turns.acquire()
        except TimeoutError:
            raise RedisConnectionError("No connection available.") from None
        token = _IN_TURN.set(True)
        try:
            yield
        finally:
            _IN_TURN.reset(token)
            self._turns.release()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.turn():
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        return WaitingClusterPipeline(self, transaction)  # type: ignore[abstract]  # as redis-py's own


class WaitingClusterPipeline(ClusterPipeline):
    """A Cluster pipeline that runs in a turn of its WaitingRedisCluster (one connection per node it reaches)."""

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        client = self.cluster_client
        assert isinstance(client, WaitingRedisCluster)
        async with client.turn():
            return await super().execute(raise_on_error, allow_redirections)


def build_client(spec: StoreUrl) -> Redis | RedisCluster:
    kw = _client_kwargs(spec)
    if spec.kind == "plain":
        host, port = spec.hosts[0]
        if kw.pop("ssl", False):
            kw["connection_class"] = SSLConnection
        pool = BlockingConnectionPool(host=host, port=port, db=spec.db, max_connections=POOL_SIZE,
                                      timeout=kw["socket_timeout"], **kw)
        return Redis(connection_pool=pool)
    if spec.kind == "cluster":
        return WaitingRedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in spec.hosts],
                                   max_in_flight=POOL_SIZE, wait_s=kw["socket_timeout"], **kw)
    if spec.kind == "sentinel":
        assert spec.service_name is not None
        sentinel_kw: dict[str, Any] = {"socket_timeout": kw["socket_timeout"],
                                       "socket_connect_timeout": kw["socket_connect_timeout"]}
        if spec.sentinel_password:
            sentinel_kw["password"] = spec.sentinel_password
        if spec.tls:
            sentinel_kw["ssl"] = True
        connection_class = SentinelMasterSSLConnection if spec.tls else SentinelMasterConnection
        sentinel = Sentinel(spec.hosts, sentinel_kwargs=sentinel_kw, **kw)
        return sentinel.master_for(spec.service_name, connection_pool_class=BlockingSentinelConnectionPool,
                                   connection_class=connection_class, db=spec.db, max_connections=POOL_SIZE,
                                   timeout=kw["socket_timeout"])
    raise ValueError(f"store kind {spec.kind!r} has no Redis client")


def open_store(url: str, *, node_id: str | None = None) -> Store:
    """The store for `url`; `node_id` (if given) overrides the URL's node_id option."""
    spec = parse_store_url(url)
    if spec.kind == "memory":
        return InMemoryStore()
    return RedisStore(build_client(spec), prefix=spec.prefix, node_id=node_id or spec.node_id,
                      lease_ttl_s=spec.lease_ttl_s, lost_hold_s=spec.lost_hold_s, wait_replicas=spec.wait_replicas)
