"""The `marcador` command: the service, the simulator and operator tools."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer

from dialer.logs import setup_logging
from marcador_cli.lifecycle import EXIT_CONFIG, StartupError

app = typer.Typer(help="Marcador: predictive dialer engine beside Asterisk.", no_args_is_help=True)


@app.command()
def run(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML settings file")] = None,
) -> None:
    """Run the engine: PBX link, store, pacing, REST API and dashboard. Ctrl-C stops it cleanly."""
    from rich.console import Console

    from marcador_cli.config_cmd import print_problem
    from marcador_cli.settings_check import SettingsProblem, load_checked, unknown_env
    from marcador_cli.wiring import serve

    try:
        settings = load_checked(config)
    except SettingsProblem as problem:
        print_problem(problem, Console(stderr=True, soft_wrap=True))
        raise typer.Exit(EXIT_CONFIG) from None
    setup_logging(settings.log_level)
    for warning in unknown_env():
        logging.getLogger("marcador").warning(warning)
    try:
        asyncio.run(serve(settings))
    except StartupError as exc:
        logging.getLogger("marcador").error(f"cannot start: {exc}")
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        pass


def _mount_sim() -> None:
    from marcador_cli.sim_cmd import app as sim_app

    app.add_typer(sim_app, name="sim", help="Discrete-event call-centre simulator (virtual time).")


_mount_sim()


def _mount_import() -> None:
    from marcador_cli.import_cmd import import_leads

    app.command("import-leads")(import_leads)


_mount_import()


def _mount_check() -> None:
    from marcador_cli.check_cmd import check_asterisk

    app.command("check-asterisk")(check_asterisk)


_mount_check()


def _mount_config() -> None:
    from marcador_cli.config_cmd import app as config_app

    app.add_typer(config_app, name="config", help="Check and document the settings file.")


_mount_config()

if __name__ == "__main__":
    app()
