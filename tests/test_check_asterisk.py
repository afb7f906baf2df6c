"""`marcador check-asterisk` against the real Asterisk the harness starts (asterisk-docker config), and against
the simulated PBX.

The simulated PBX answers every action the check sends (async Originate with an OriginateResponse, Hangup,
Redirect, CoreShowChannels, ShowDialPlan of Marcador's contexts, ConfbridgeListRooms), so the check passes on it:
it is the stand-in the engine's own tests use. What it cannot show (a wrong manager.conf class, a missing context)
is shown here on the real Asterisk, or on the simulated PBX told to lack a context.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ami_bridge.config import AmiConfig
from marcador_cli.check_cmd import Check, run_checks
from marcador_cli.main import app
from sim.pbx import SimulatedPbx


def _cfg(host: str, port: int, secret: str, auth: str = "md5", **kw: Any) -> AmiConfig:
    return AmiConfig(host=host, port=port, username="marcador", secret=secret, auth=auth,  # type: ignore[arg-type]
                     **kw)


def _by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


EXPECTED = {"login", "originate", "hangup", "redirect", "channels", "context marcador-answered",
            "context marcador-abandon", "context marcador-agent-room", "context marcador-agent-login", "confbridge"}


def _cli(port: int, secret: str, *extra: str, env_secret: bool = False) -> Any:
    args = ["check-asterisk", "--host", "127.0.0.1", "--port", str(port), "--timeout", "5", *extra]
    env = {"COLUMNS": "200"}
    if env_secret:
        env["MARCADOR_AMI__SECRET"] = secret  # the variable `marcador run` reads
    else:
        args += ["--secret", secret]
    return CliRunner().invoke(app, args, env=env)


# ---------------------------------------------------------------------------------------------- real Asterisk


@pytest.mark.asterisk
@pytest.mark.parametrize("auth", ["md5", "plain"])
async def test_real_asterisk_passes_every_check(asterisk: Any, auth: str) -> None:
    checks = await run_checks(_cfg(asterisk.host, asterisk.port, asterisk.secret, auth))
    failed = [c for c in checks if not c.ok]
    assert not failed, failed
    assert set(_by_name(checks)) == EXPECTED
    assert "OriginateResponse" in _by_name(checks)["originate"].detail  # the event came back: read class call
    assert "Asterisk" in asterisk.cli("core show version")  # and the probe left no channel behind:
    await asyncio.sleep(0.5)
    assert "marcador-check" not in asterisk.cli("core show channels")


@pytest.mark.asterisk
def test_real_asterisk_cli_exit_0_and_secret_never_printed(asterisk: Any) -> None:
    result = _cli(asterisk.port, asterisk.secret, env_secret=True)
    assert result.exit_code == 0, result.output
    assert "All checks passed" in result.output
    assert asterisk.secret not in result.output


@pytest.mark.asterisk
def test_real_asterisk_wrong_secret_names_the_login(asterisk: Any) -> None:
    wrong = "not-the-" + asterisk.secret
    result = _cli(asterisk.port, wrong)
    assert result.exit_code == 1
    assert "refused the login of AMI user 'marcador'" in result.output
    assert "[marcador] in manager.conf" in result.output
    assert wrong not in result.output and asterisk.secret not in result.output


@pytest.mark.asterisk
async def test_real_asterisk_context_not_in_dialplan_is_reported(asterisk: Any) -> None:
    cfg = _cfg(asterisk.host, asterisk.port, asterisk.secret, abandon_context="marcador-abandon-typo")
    checks = _by_name(await run_checks(cfg))
    bad = checks["context marcador-abandon-typo"]
    assert not bad.ok and "abandon message context missing" in bad.detail and "extensions.conf" in bad.fix
    assert checks["context marcador-answered"].ok and checks["login"].ok


# ---------------------------------------------------------------------------------------------- simulated PBX


async def test_simulated_pbx_answers_every_check() -> None:
    async with SimulatedPbx(secret="s3cret") as pbx:
        checks = await run_checks(_cfg("127.0.0.1", pbx.port, "s3cret"))
        assert [c for c in checks if not c.ok] == []
        assert set(_by_name(checks)) == EXPECTED
        # the Originate probe went to a context that does not exist: it failed at once, nothing is left up
        await asyncio.sleep(0.1)
        assert not pbx.channels


async def test_simulated_pbx_wrong_secret_and_missing_context() -> None:
    async with SimulatedPbx(secret="right") as pbx:
        checks = await run_checks(_cfg("127.0.0.1", pbx.port, "wrong", "plain"))
        assert len(checks) == 1 and checks[0].name == "login" and not checks[0].ok
        assert "refused the login of AMI user 'marcador'" in checks[0].detail
        named = _by_name(await run_checks(_cfg("127.0.0.1", pbx.port, "right", room_context="no-such-room")))
        assert not named["context no-such-room"].ok
        assert sum(not c.ok for c in named.values()) == 1


async def test_nothing_listening_is_a_connect_failure() -> None:
    async with SimulatedPbx(secret="x") as pbx:
        port = pbx.port
    checks = await run_checks(_cfg("127.0.0.1", port, "x", connect_timeout_s=1.0), timeout=1.0)
    assert [c.name for c in checks] == ["connect"] and not checks[0].ok
    assert "manager.conf" in checks[0].fix
    assert "Connection refused" in checks[0].detail  # why, not only that it failed


def test_cli_on_simulated_pbx_exit_codes() -> None:
    async def serve(secret: str, *extra: str) -> Any:
        async with SimulatedPbx(secret="cli-secret") as pbx:
            return await asyncio.to_thread(_cli, pbx.port, secret, *extra)

    ok = asyncio.run(serve("cli-secret"))
    assert ok.exit_code == 0, ok.output
    assert "cli-secret" not in ok.output
    bad = asyncio.run(serve("nope", "--auth", "plain"))
    assert bad.exit_code == 1 and "login" in bad.output and "nope" not in bad.output


def test_cli_takes_the_ami_settings_marcador_run_uses(tmp_path: Path) -> None:
    # The service reads MARCADOR_AMI__SECRET (and its settings file); the check read only MARCADOR_AMI_SECRET and
    # its own defaults, so on a correctly configured host it reported a refused login.
    async def serve() -> tuple[Any, Any]:
        async with SimulatedPbx(secret="svc-secret") as pbx:
            by_env = await asyncio.to_thread(_cli, pbx.port, "svc-secret", env_secret=True)
            settings = tmp_path / "marcador.yaml"
            settings.write_text(f"pbx: {{mode: asterisk}}\nami: {{port: {pbx.port}, secret: svc-secret, "
                                "auth: plain}\n")
            by_file = await asyncio.to_thread(
                CliRunner().invoke, app, ["check-asterisk", "--config", str(settings)], env={"COLUMNS": "200"})
            return by_env, by_file

    by_env, by_file = asyncio.run(serve())
    assert by_env.exit_code == 0, by_env.output
    assert by_file.exit_code == 0, by_file.output
    assert "(plain)" in by_file.output and "svc-secret" not in by_env.output + by_file.output
