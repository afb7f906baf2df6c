"""How `marcador run` starts and stops as a service: fail fast with one clear line, stop without losing calls.

- The API port is bound before anything else starts, so a port in use stops the start-up before a PBX link or a
  dial exists (uvicorn would only find out after the engine had begun dialing).
- SIGTERM (systemd, docker stop) and SIGINT (Ctrl-C) ask for a stop; the caller then drains the engine. uvicorn's
  own handling re-raises the signal once its server has shut down: a re-raised SIGTERM kills the process before
  the drain, leaving calls without their outcome and leads leased. Here the server never touches the signals;
  a second signal cuts the drain short.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Iterator

import uvicorn

log = logging.getLogger("marcador")

EXIT_CONFIG = 2  # the settings are wrong: restarting will not help (systemd: RestartPreventExitStatus=2)
EXIT_UNAVAILABLE = 1  # something the engine needs is not there (yet): a restart may help


class StartupError(Exception):
    """The engine cannot start; the message says what to change. Never carries a secret."""

    def __init__(self, message: str, exit_code: int = EXIT_UNAVAILABLE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def bind_api(host: str, port: int) -> socket.socket:
    """The API's listening socket, bound now (port 0: any free port).

    Made with protocol IPPROTO_TCP, as asyncio's own servers are: asyncio sets TCP_NODELAY only on connections
    whose socket says TCP, and `socket.create_server` says 0. Without it every response waited on Nagle and the
    client's delayed ACK: /stats went from 2 ms to 44 ms (bench/api_stats_latency.py)."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(2048)
        except OSError:
            sock.close()
            raise
        return sock
    except OSError as exc:
        raise StartupError(f"the API cannot listen on {host}:{port}: {exc.strerror or exc} "
                           "(api.host / api.port, MARCADOR_API__PORT)") from None


class ApiServer(uvicorn.Server):
    """uvicorn without its signal handling (see the module docstring)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class StopSignals:
    """First SIGTERM/SIGINT: stop the API server (the caller drains next). Second: cancel `drain_task`."""

    def __init__(self, server: uvicorn.Server) -> None:
        self.server = server
        self.received = 0
        self.drain_task: asyncio.Task[bool] | None = None

    def __call__(self, sig: signal.Signals) -> None:
        self.received += 1
        if self.received == 1:
            log.info("stop requested", extra={"fields": {"signal": sig.name}})
            self.server.should_exit = True
        elif self.drain_task is not None and not self.drain_task.done():
            log.warning("second stop signal: not waiting for calls to end",
                        extra={"fields": {"signal": sig.name}})
            self.drain_task.cancel()

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        done = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Not on the main thread (tests invoking the CLI from a thread): the default handling stays.
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self, sig)
                done.append(sig)
        try:
            yield
        finally:
            for sig in done:
                loop.remove_signal_handler(sig)
