"""pytest plugin: a real Asterisk 22 for `asterisk`-marked tests, started by asterisk-docker/provision.sh.

One instance per test session on a free loopback port, with a fresh random AMI secret. Without root or
without the provisioned root the tests skip locally; with CI=true they fail instead, never skip.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.harness.services import free_port, unavailable

if TYPE_CHECKING:
    from ami_bridge.telephony import AmiTelephony

REPO = Path(__file__).resolve().parents[2]
PROVISION = REPO / "asterisk-docker" / "provision.sh"


@dataclass
class AsteriskInstance:
    host: str
    port: int
    username: str
    secret: str
    rundir: Path

    def telephony(self, id_prefix: str = "m", node_id: str | None = None, **over: Any) -> AmiTelephony:
        """Our AMI bridge on this Asterisk, dialing the test contexts (sim-customer, sim-agent). Without `node_id`
        it sweeps no stale agent legs: the engines of other tests leave theirs in their rooms."""
        from ami_bridge.config import AmiConfig
        from ami_bridge.telephony import AmiTelephony

        return AmiTelephony(AmiConfig(host=self.host, port=self.port, username=self.username, secret=self.secret,
                                      auth="md5", call_channel="Local/{number}@sim-customer",
                                      agent_channel="Local/{agent_id}@sim-agent", **over),
                            id_prefix=id_prefix, node_id=node_id)

    def _run(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run(["bash", str(PROVISION), *args, "--port", str(self.port)],
                              capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"provision.sh {args[0]} failed: {done.stderr.strip()[-2000:]}")
        return done.stdout

    def cli(self, command: str) -> str:
        """Run an Asterisk CLI command in the instance (e.g. 'core show channels')."""
        return self._run("cli", command, timeout=30)

    def stop(self) -> None:
        self._run("stop")

    def start(self) -> None:
        self._run("start", "--secret", self.secret, "--rundir", str(self.rundir))

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def asterisk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AsteriskInstance]:
    if os.geteuid() != 0:
        unavailable("the Asterisk chroot needs root")
    if shutil.which("chroot") is None:
        unavailable("chroot is not available")
    build = subprocess.run(["bash", str(PROVISION), "build"], capture_output=True, text=True, timeout=900,
                           check=False)
    if build.returncode != 0:
        unavailable(f"provision.sh build failed: {build.stderr.strip()[-2000:]}")
    inst = AsteriskInstance(host="127.0.0.1", port=free_port(), username="marcador",
                            secret=secrets.token_urlsafe(18), rundir=tmp_path_factory.mktemp("asterisk"))
    try:
        inst.start()
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        unavailable(str(exc))
    try:
        yield inst
    finally:
        inst.stop()
