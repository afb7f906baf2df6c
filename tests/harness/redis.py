"""pytest plugin: a real redis-server for `redis`-marked tests.

One instance per session on a free 127.0.0.1 port, with AOF on (`appendfsync everysec`, no RDB) in a
temporary directory, so tests can restart it and check what survived. Without redis-server the tests skip
locally; with CI=true they fail instead, never skip. `RedisServer` also runs outside pytest (benchmarks).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.services import free_port, unavailable


class RedisServer:
    """A redis-server process of our own, listening on 127.0.0.1 only."""

    def __init__(self, binary: str, port: int, directory: Path) -> None:
        self.binary = binary
        self.port = port
        self.dir = directory
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
                "--daemonize", "no", "--logfile", str(self.log_path), "--maxmemory-policy", "noeviction"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self._log_tail()}")
            if self.ping():
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"redis-server did not answer within {timeout} s: {self._log_tail()}")

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

    def _signal(self, sig: signal.Signals, timeout: float) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

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

    def __init__(self, binary: str, port: int, directory: Path, master: RedisServer, service: str = "mymaster"):
        self.binary = binary
        self.port = port
        self.dir = directory
        self.master = master
        self.service = service
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.service}/0"

    def start(self, timeout: float = 10.0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "sentinel.conf"  # Sentinel rewrites its own config file: one of its own, writable
        conf.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\nlogfile {self.dir / 'sentinel.log'}\n"
                        f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} 1\n")
        self.proc = subprocess.Popen([self.binary, str(conf), "--sentinel"], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server --sentinel exited with {self.proc.returncode}")
            if self._knows_master():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server --sentinel did not name its master within {timeout} s")

    def _knows_master(self) -> bool:
        query = f"SENTINEL get-master-addr-by-name {self.service}\r\n".encode()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(query)
                return str(self.master.port).encode() in s.recv(256)
        except OSError:
            return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="session")
def redis_sentinel(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinel]:
    """A Sentinel in front of the session's redis-server."""
    sentinel = RedisSentinel(redis_server.binary, free_port(), tmp_path_factory.mktemp("sentinel"), redis_server)
    try:
        sentinel.start()
    except (OSError, RuntimeError) as exc:
        unavailable(str(exc), "redis-server --sentinel")
        raise  # unreachable: unavailable() fails or skips
    try:
        yield sentinel
    finally:
        sentinel.stop()
