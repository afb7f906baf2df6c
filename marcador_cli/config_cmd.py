"""`marcador config validate FILE` and `marcador config show`: check a settings file before a deploy, and list
every setting with its default, its environment variable and what it does. Secrets are never printed."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table
from rich.text import Text

from config.settings import MarcadorSettings
from dialer.store_factory import redact_url
from marcador_cli.settings_check import ENV_PREFIX, SettingsProblem, load_checked, unknown_env

app = typer.Typer(help="Check and document the settings file.", no_args_is_help=True)


@app.command("validate")
def validate(file: Annotated[Path, typer.Argument(help="YAML settings file", exists=False)]) -> None:
    """Load FILE with the environment on top, as `marcador run --config FILE` would; name every bad field."""
    try:
        settings = load_checked(file)
    except SettingsProblem as problem:
        print_problem(problem, Console(stderr=True, soft_wrap=True))
        raise typer.Exit(1) from None
    out = Console(soft_wrap=True)
    for warning in unknown_env():
        out.print(f"[yellow]warning: {escape(warning)}[/yellow]")
    out.print(f"[green]{escape(str(file))}: valid[/green]")
    out.print(escape(f"  PBX: {settings.pbx.mode}; store: {redact_url(settings.store_url)}; "
                     f"API: {settings.api.host}:{settings.api.port}; tokens: {len(settings.api.tokens)}; "
                     f"webhooks: {len(settings.api.webhooks)}"))


def print_problem(problem: SettingsProblem, console: Console) -> None:
    # escape: YAML errors quote the file ("ami: [unclosed"), which rich would read as markup and drop
    console.print(f"[red]{escape(problem.headline)}[/red]")
    for line in problem.lines:
        console.print(f"  {escape(line)}")


_TABLE_MIN_DESCRIPTION = 40  # columns the table needs for "default" and "what it does" beside the names


@app.command("show")
def show() -> None:
    """Every setting: its YAML path, environment variable, default and meaning."""
    rows = [(".".join(path), ENV_PREFIX + "__".join(p.upper() for p in path), _default(info), info.description or "")
            for path, info in _fields(MarcadorSettings, ())]
    console = Console()
    names = max(len(r[0]) for r in rows) + max(len(r[1]) for r in rows)
    if console.width >= names + 13 + _TABLE_MIN_DESCRIPTION:  # 13: the table's borders and padding
        table = Table(Column("setting", no_wrap=True), Column("environment", no_wrap=True), "default",
                      "what it does", show_lines=False)
        for row in rows:
            table.add_row(*row)
        console.print(table)
        return
    # Narrower (a pipe reads as 80 columns): a table would cut the names ("MARCADOR_AMI__HO…"), which are what one
    # greps for and copies. One setting a block instead, its names whole on its first line.
    for setting, env, default, what in rows:
        console.print(Text(f"{setting}  {env}  default {default}", style="bold"), soft_wrap=True)
        console.print(Text(textwrap.fill(what, width=console.width, initial_indent="    ",
                                         subsequent_indent="    ")), soft_wrap=True)


def _fields(model: type[BaseModel], prefix: tuple[str, ...]) -> list[tuple[tuple[str, ...], FieldInfo]]:
    out: list[tuple[tuple[str, ...], FieldInfo]] = []
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.extend(_fields(ann, (*prefix, name)))
        else:
            out.append(((*prefix, name), info))
    return out


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "(required)"
    value: Any = info.get_default(call_default_factory=True)
    if "Secret" in type(value).__name__:
        return "(secret)"
    return repr(value)
