"""What the harnesses for real services share: a free loopback port, and failing (not skipping) under CI when a
service a test needs is missing."""

from __future__ import annotations

import os
import socket
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str, service: str = "the real service") -> NoReturn:
    """Fail under CI=true (a marked test must run there), skip elsewhere."""
    if in_ci():
        pytest.fail(f"CI=true and {service} is unavailable: {reason}", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
