"""The `marcador` command: the service, the simulator and operator tools."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from dialer.logs import setup_logging
from marcador_cli.lifecycle import EXIT_CONFIG, StartupError


class _LazyCommands(TyperGroup):
    """The operator tools' modules load only when their command runs or help lists them: `marcador sim` need not
    import the HTTP client, the AMI library and the settings models (about 0.15 s of every run)."""

    # ctx and the command are typer's own click types (as in sim_cmd's group): Any here
    def list_commands(self, ctx: Any) -> list[str]:
        return [*_ORDER, *(name for name in super().list_commands(ctx) if name not in _ORDER)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self.commands and cmd_name in _LAZY:
            host = typer.Typer(add_completion=False)  # mounted as on `app`, then taken from that group
            _LAZY[cmd_name](host)
            self.add_command(typer.main.get_group(host).commands[cmd_name], cmd_name)
        return super().get_command(ctx, cmd_name)


app = typer.Typer(cls=_LazyCommands, help="Marcador: predictive dialer engine beside Asterisk.",
                  no_args_is_help=True)


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


def _mount_import(host: typer.Typer) -> None:
    from marcador_cli.import_cmd import import_leads

    host.command("import-leads")(import_leads)


def _mount_check(host: typer.Typer) -> None:
    from marcador_cli.check_cmd import check_asterisk

    host.command("check-asterisk")(check_asterisk)


def _mount_config(host: typer.Typer) -> None:
    from marcador_cli.config_cmd import app as config_app

    host.add_typer(config_app, name="config", help="Check and document the settings file.")


_LAZY: dict[str, Callable[[typer.Typer], None]] = {
    "import-leads": _mount_import, "check-asterisk": _mount_check, "config": _mount_config}
_ORDER = ["run", "import-leads", "check-asterisk", "sim", "config"]  # as help lists them: commands, then groups

if __name__ == "__main__":
    app()
