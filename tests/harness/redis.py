"""pytest plugin: a real redis-server for `redis`-marked tests.

One instance per session on a free 127.0.0.1 port, with AOF on (`appendfsync everysec`, no RDB) in a
temporary directory, so tests can restart it and check what survived. Also a Sentinel in front of it, a 3-master
Redis Cluster for the session, and for a failover test a Cluster of its own with a replica per master. Without
redis-server the tests skip locally; with CI=true they fail instead, never skip. `RedisServer` also runs outside
pytest (benchmarks).
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest
import redis

from tests.harness.services import free_port, unavailable


class RedisServer:
    """A redis-server process of our own, listening on 127.0.0.1 only."""

    def __init__(self, binary: str, port: int, directory: Path, options: Sequence[str] = ()) -> None:
        self.binary = binary
        self.port = port
        self.dir = directory
        self.options = tuple(options)  # more redis-server arguments, after ours (a later one wins)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.dir / "redis.log"

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-1500:]
        return ""

    def start(self, timeout: float = 10.0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--protected-mode", "yes",
                "--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(self.dir),
                "--daemonize", "no", "--logfile", str(self.log_path), "--maxmemory-policy", "noeviction",
                *self.options]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        try:
            _await(self.proc, self.ping, time.monotonic() + timeout, "redis-server", "answer", self._log_tail)
        except RuntimeError:
            if self.proc.poll() is None:
                self.kill()
            raise

    def command(self, *args: str) -> Any:
        """Its reply to one command."""
        return _command(self.port, *args)

    def ping(self) -> bool:
        """True once the server answers PING (and has loaded its AOF: a loading server answers -LOADING)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Clean shutdown (SIGTERM: Redis flushes and fsyncs the AOF first)."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Crash the process (SIGKILL): what Redis wrote to the kernel survives, as after a real crash."""
        self._signal(signal.SIGKILL, 10.0)

    def freeze(self, frozen: bool = True) -> None:
        """SIGSTOP (or, frozen=False, SIGCONT) the process: a server that stops answering without closing its
        connections (a host gone, a partition)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP if frozen else signal.SIGCONT)

    def _signal(self, sig: signal.Signals, timeout: float) -> None:
        proc, self.proc = self.proc, None
        _end(proc, sig, timeout)

    def restart(self, hard: bool = False) -> None:
        """Stop (or, with hard=True, kill) and start again on the same port and data directory."""
        if hard:
            self.kill()
        else:
            self.stop()
        self.start()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(directory: Path, attempts: int = 3) -> RedisServer:
    """Start redis-server on a free port (a few tries: another process may take the port first)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server is not installed")
    last: Exception | None = None
    for _ in range(attempts):
        server = RedisServer(binary, free_port(), directory)
        try:
            server.start()
            return server
        except (RuntimeError, OSError) as exc:
            last = exc
    raise RuntimeError(f"redis-server did not start: {last}")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    try:
        server = start_server(tmp_path_factory.mktemp("redis"))
    except (FileNotFoundError, RuntimeError) as exc:
        unavailable(str(exc), "redis-server")
        raise  # unreachable: unavailable() fails or skips
    try:
        yield server
    finally:
        server.stop()


class RedisSentinel:
    """A Sentinel (`redis-server --sentinel`, no separate binary needed) of our own on 127.0.0.1, monitoring one
    `RedisServer` as master `service`. Its URL is the store URL through it (`redis+sentinel://`)."""

    def __init__(self, binary: str, port: int, directory: Path, master: RedisServer, service: str = "mymaster",
                 down_after_ms: int | None = None, failover_timeout_ms: int | None = None):
        self.binary = binary
        self.port = port
        self.dir = directory
        self.master = master
        self.service = service
        # Sentinel's own defaults when None: a master silent 30 s is down; a failover gets 180 s.
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.service}/0"

    def start(self, timeout: float = 10.0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "sentinel.conf"  # Sentinel rewrites its own config file: one of its own, writable
        conf.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\nlogfile {self.dir / 'sentinel.log'}\n"
                        f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} 1\n"
                        + (f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
                           if self.down_after_ms is not None else "")
                        + (f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}\n"
                           if self.failover_timeout_ms is not None else ""))
        self.proc = subprocess.Popen([self.binary, str(conf), "--sentinel"], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _await(self.proc, self._knows_master, time.monotonic() + timeout, "redis-server --sentinel",
                   "name its master", lambda: "")
        except RuntimeError:
            if self.proc.poll() is None:
                self.stop()
            raise

    def _knows_master(self) -> bool:
        return self.master_port() == self.master.port

    def master_port(self) -> int | None:
        """The port of the master Sentinel names now (None if it does not answer): `SENTINEL MASTER`, what clients
        (redis-py) read. It moves to a promoted replica once the failover is done (`+switch-master`);
        `get-master-addr-by-name` names the replica a moment earlier, while Sentinel still reconfigures."""
        with contextlib.suppress(OSError, redis.RedisError, KeyError, TypeError, ValueError):
            return int(self.command("SENTINEL", "MASTER", self.service)["port"])
        return None

    def command(self, *args: str) -> Any:
        return _command(self.port, *args)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        _end(proc, signal.SIGTERM, 10.0)


@pytest.fixture(scope="session")
def redis_sentinel(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinel]:
    """A Sentinel in front of the session's redis-server."""
    yield from _running(RedisSentinel(redis_server.binary, free_port(), tmp_path_factory.mktemp("sentinel"),
                                      redis_server), "redis-server --sentinel")


class RedisSentinelFailover:
    """A master `RedisServer`, one replica of it (`replicaof`) and one `RedisSentinel` (quorum 1) watching them, on
    127.0.0.1, each in its own directory under `directory`: a set a test can fail over by killing or freezing the
    master. `down_after_ms` is Sentinel's `down-after-milliseconds` (a silent master is down after it; Sentinel's
    default is 30 s), `failover_timeout_ms` its `failover-timeout` (a failed election is retried after twice it);
    None leaves Sentinel's default. No AOF: what a failover keeps is what reached the replica."""

    def __init__(self, binary: str, directory: Path, down_after_ms: int | None = 1000,
                 failover_timeout_ms: int | None = 3000) -> None:
        self.binary = binary
        self.dir = directory
        # SIGTERM ends a master at once, without waiting for its replica to catch up; a replica syncs at once.
        options = ("--appendonly", "no", "--shutdown-timeout", "0", "--repl-diskless-sync-delay", "0")
        self.master = RedisServer(binary, free_port(), directory / "master", options)
        self.replica = RedisServer(binary, free_port(), directory / "replica",
                                   (*options, "--replicaof", "127.0.0.1", str(self.master.port)))
        self.sentinel = RedisSentinel(binary, free_port(), directory / "sentinel", self.master,
                                      down_after_ms=down_after_ms, failover_timeout_ms=failover_timeout_ms)

    @property
    def url(self) -> str:
        """The store URL through the Sentinel."""
        return self.sentinel.url

    def _log_tail(self) -> str:
        tails = []
        for name in ("master/redis.log", "replica/redis.log", "sentinel/sentinel.log"):
            with contextlib.suppress(OSError):
                tails.append(f"{name}: " + (self.dir / name).read_text(errors="replace")[-600:])
        return "\n".join(tails)

    def start(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        try:
            self.master.start()
            self.replica.start()
            # The replica can take over only once it has synced, and Sentinel must know it (it learns the replicas
            # from the master's INFO, which it asks at once when it connects, then every 10 s).
            while not _answers(self.replica.port, b"INFO replication\r\n", b"master_link_status:up"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the replica did not sync within {timeout} s: {self._log_tail()}")
                time.sleep(0.02)
            self.sentinel.start(max(deadline - time.monotonic(), 1.0))
            while not self._sentinel_knows_replica():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Sentinel did not list the replica within {timeout} s: {self._log_tail()}")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def _sentinel_knows_replica(self) -> bool:
        with contextlib.suppress(OSError, redis.RedisError):
            for row in self.sentinel.command("SENTINEL", "replicas", self.sentinel.service):
                if int(row["port"]) == self.replica.port and row["master-link-status"] == "ok" \
                        and "disconnected" not in row["flags"]:
                    return True
        return False

    def master_port(self) -> int | None:
        """The port of the master Sentinel names now."""
        return self.sentinel.master_port()

    def await_promotion(self, timeout: float = 20.0) -> int:
        """Wait until Sentinel names the replica as master and the replica says it is one (ROLE); its port."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError, redis.RedisError):
                if self.master_port() == self.replica.port and self.replica.command("ROLE")[0] == "master":
                    return self.replica.port
            if time.monotonic() > deadline:
                raise RuntimeError(f"Sentinel did not promote the replica within {timeout} s: {self._log_tail()}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop every process, frozen ones included."""
        self.sentinel.stop()
        self.master.stop()
        self.replica.stop()


@pytest.fixture
def redis_sentinel_failover(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinelFailover]:
    """A master, its replica and a Sentinel (`down-after-milliseconds` 1000) for a test that kills or freezes the
    master (its own, fresh for each test: a failover leaves the set changed)."""
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server is not installed", "Redis Sentinel with a replica")
        raise AssertionError  # unreachable: unavailable() fails or skips
    yield from _running(RedisSentinelFailover(binary, tmp_path_factory.mktemp("sentinel-failover")),
                        "Redis Sentinel with a replica")


class RedisClusterServers:
    """A Redis Cluster of our own: `masters` redis-server processes (`--cluster-enabled yes`), each with `replicas`
    replicas, on 127.0.0.1, joined by `redis-cli --cluster create`, each with its own port, bus port
    (`cluster-port`, so an ephemeral port never needs port + 10000) and directory. Its URL is the store URL
    (`redis+cluster://`). `node_timeout_ms` is `cluster-node-timeout`: how long a silent master goes before the
    others call it failed and a replica takes over (with replicas, a small one keeps a failover test short)."""

    def __init__(self, binary: str, cli: str, directory: Path, masters: int = 3, replicas: int = 0,
                 node_timeout_ms: int = 5000, aof: bool = True) -> None:
        self.binary = binary
        self.cli = cli
        self.dir = directory
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        # AOF off: a replica that has just synced writes its first AOF and meanwhile refuses a SIGTERM ("Writing
        # initial AOF, can't exit"), so a test that does not need it starts and stops faster without it.
        self.aof = aof
        self.ports: list[int] = []  # every node's client port (masters first, as created)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.frozen: set[int] = set()  # ports of nodes stopped by freeze()

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def _log_tail(self) -> str:
        tails = []
        for port in self.ports:
            with contextlib.suppress(OSError):
                tails.append(f"{port}: " + (self.dir / str(port) / "redis.log").read_text(errors="replace")[-600:])
        return "\n".join(tails)

    def start(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        ports: list[int] = []
        nodes = self.masters * (1 + self.replicas)
        while len(ports) < 2 * nodes:  # client and bus ports, all distinct
            if (port := free_port()) not in ports:
                ports.append(port)
        self.ports, bus_ports = ports[:nodes], ports[nodes:]
        for port, bus_port in zip(self.ports, bus_ports, strict=True):
            node_dir = self.dir / str(port)
            node_dir.mkdir(parents=True, exist_ok=True)
            args = [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--protected-mode", "yes",
                    "--cluster-enabled", "yes", "--cluster-port", str(bus_port),
                    "--cluster-config-file", str(node_dir / "nodes.conf"),
                    "--cluster-node-timeout", str(self.node_timeout_ms),
                    "--save", "", "--appendonly", "yes" if self.aof else "no", "--appendfsync", "everysec",
                    "--dir", str(node_dir), "--daemonize", "no", "--logfile", str(node_dir / "redis.log"),
                    # stop() ends masters and replicas at once: a master must not wait 10 s for a replica gone
                    "--shutdown-timeout", "0", "--maxmemory-policy", "noeviction",
                    "--repl-diskless-sync-delay", "0"]  # a replica syncs at once, not after 5 s
            self.procs.append(subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL))
        try:
            for port, proc in zip(self.ports, self.procs, strict=True):
                _await(proc, functools.partial(_answers, port, b"PING\r\n", b"+PONG"), deadline, "redis-server",
                       "answer", self._log_tail)
            create = subprocess.run([self.cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                                     "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                                    stdin=subprocess.DEVNULL, capture_output=True,
                                    timeout=max(deadline - time.monotonic(), 1.0))
            if create.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {create.stdout.decode(errors='replace')}"
                                   f"{create.stderr.decode(errors='replace')}")
            # Every node must say ok (each learns the others' slots through the bus, not at once).
            while not all(_answers(p, b"CLUSTER INFO\r\n", b"cluster_state:ok") for p in self.ports):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the cluster was not ok within {timeout} s: {self._log_tail()}")
                time.sleep(0.05)
            # A replica can take over only once it has synced with its master.
            while not all(_answers(p, b"INFO replication\r\n", b"master_link_status:up")
                          for p in self.ports if self.role(p) == "slave"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the replicas did not sync within {timeout} s: {self._log_tail()}")
                time.sleep(0.05)
        except (RuntimeError, OSError, subprocess.TimeoutExpired):
            self.stop()
            raise

    def role(self, port: int) -> str:
        """`master` or `slave` as the node on `port` says (ROLE)."""
        return str(_command(port, "ROLE")[0])

    def live_ports(self) -> list[int]:
        """The nodes that answer: neither killed nor frozen."""
        return [p for p, proc in zip(self.ports, self.procs, strict=True)
                if proc.poll() is None and p not in self.frozen]

    def master_of(self, key: str) -> int:
        """The port of the master serving `key`'s slot, as a live node's CLUSTER SLOTS says now."""
        port = self.live_ports()[0]
        slot = int(_command(port, "CLUSTER", "KEYSLOT", key))
        for first, last, master, *_ in _command(port, "CLUSTER", "SLOTS"):
            if int(first) <= slot <= int(last):
                return int(master[1])
        raise RuntimeError(f"no node serves slot {slot}")

    def replicas_of(self, key: str) -> list[int]:
        """The ports of the replicas connected to the master of `key`'s slot (its ROLE: another node's CLUSTER SLOTS
        may not list a replica yet)."""
        return [int(r[1]) for r in _command(self.master_of(key), "ROLE")[2]]

    def freeze(self, port: int, frozen: bool = True) -> None:
        """SIGSTOP (or, frozen=False, SIGCONT) the node on `port`: a node that stops answering without closing its
        connections (keep it short of the node timeout, or the cluster fails it)."""
        self.procs[self.ports.index(port)].send_signal(signal.SIGSTOP if frozen else signal.SIGCONT)
        if frozen:
            self.frozen.add(port)
        else:
            self.frozen.discard(port)

    def kill(self, port: int) -> None:
        """SIGKILL the node on `port` (a crash: no goodbye to the cluster, its replica must notice)."""
        proc = self.procs[self.ports.index(port)]
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)

    def await_promotion(self, key: str, dead: int, timeout: float = 20.0) -> int:
        """Wait until a live node is the master of `key`'s slot (a replica took over from `dead`) and every live
        node says cluster_state:ok; its port."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError, redis.RedisError):
                port = self.master_of(key)
                if port != dead and self.role(port) == "master" and all(
                        _answers(p, b"CLUSTER INFO\r\n", b"cluster_state:ok") for p in self.live_ports()):
                    return port
            if time.monotonic() > deadline:
                raise RuntimeError(f"no replica took over from {dead} within {timeout} s: {self._log_tail()}")
            time.sleep(0.02)

    def stop(self) -> None:
        procs, self.procs = self.procs, []
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a frozen node would never see the SIGTERM
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _end(proc: subprocess.Popen[bytes] | None, sig: signal.Signals, timeout: float) -> None:
    """Send `sig` to a running process and wait for it to exit (SIGKILL after `timeout`). SIGCONT first: a frozen
    (SIGSTOPped) process would never act on it."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGCONT)
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _await(proc: subprocess.Popen[bytes], ready: Callable[[], bool], deadline: float, what: str, doing: str,
           log_tail: Callable[[], str]) -> None:
    """Wait until `ready()`; a RuntimeError naming `what` if its process exits first or `deadline` passes."""
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not {doing} in time: {log_tail()}")
        time.sleep(0.02)


def _command(port: int, *args: str) -> Any:
    """The reply of the server on 127.0.0.1:`port` to one command."""
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2.0, decode_responses=True)
    try:
        return client.execute_command(*args)
    finally:
        client.close()


def _answers(port: int, query: bytes, expect: bytes) -> bool:
    """True if the server on `port` answers `query` with a reply holding `expect`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(query)
            return expect in s.recv(4096)
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A 3-master Redis Cluster for the session (a few seconds to start: `redis-cli --cluster create` waits ~1 s
    for the nodes to join)."""
    yield from _cluster(tmp_path_factory, "cluster", "Redis Cluster")


@pytest.fixture
def redis_cluster_with_replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A Redis Cluster of 3 masters, each with one replica, for a test that kills a master (its own: a failover
    leaves the cluster changed). `cluster-node-timeout` 1000 ms: a dead master is failed over within a few
    seconds. No AOF: what a failover keeps is what reached the replica."""
    yield from _cluster(tmp_path_factory, "cluster-replicas", "Redis Cluster with replicas", replicas=1,
                        node_timeout_ms=1000, aof=False)


def _cluster(tmp_path_factory: pytest.TempPathFactory, dirname: str, what: str,
             **options: Any) -> Iterator[RedisClusterServers]:
    """A started cluster for a fixture to yield, stopped after (`unavailable` if it cannot start)."""
    binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if binary is None or cli is None:
        unavailable("redis-server or redis-cli is not installed", what)
        raise AssertionError  # unreachable: unavailable() fails or skips
    yield from _running(RedisClusterServers(binary, cli, tmp_path_factory.mktemp(dirname), **options), what)


class _Service(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


_S = TypeVar("_S", bound=_Service)


def _running(service: _S, what: str) -> Iterator[_S]:
    """`service` started for a fixture to yield, stopped after (`unavailable` if it cannot start)."""
    try:
        service.start()
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        unavailable(str(exc), what)
        raise  # unreachable: unavailable() fails or skips
    try:
        yield service
    finally:
        service.stop()
