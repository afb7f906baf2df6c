"""`marcador config validate FILE` and `marcador config show`: check a settings file before a deploy, and list
every setting with its default, its environment variable and what it does. Secrets are never printed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from rich.console import Console
from rich.table import Table

from config.settings import MarcadorSettings, load_settings

app = typer.Typer(help="Check and document the settings file.", no_args_is_help=True)

ENV_PREFIX = "MARCADOR_"


@app.command("validate")
def validate(file: Annotated[Path, typer.Argument(help="YAML settings file", exists=False)]) -> None:
    """Load FILE with the environment on top, as `marcador run --config FILE` would; name every bad field."""
    console = Console(stderr=True, soft_wrap=True)
    try:
        settings = load_settings(file)
    except FileNotFoundError:
        console.print(f"[red]{file}: no such file[/red]")
        raise typer.Exit(1) from None
    except yaml.YAMLError as exc:
        console.print(f"[red]{file}: not valid YAML: {exc}[/red]")
        raise typer.Exit(1) from None
    except ValidationError as exc:
        console.print(f"[red]{file}: {exc.error_count()} problem(s)[/red]")
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            console.print(f"  {where}: {err['msg']}")
        raise typer.Exit(1) from None
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    out = Console(soft_wrap=True)
    out.print(f"[green]{file}: valid[/green]")
    out.print(f"  PBX: {settings.pbx.mode}; store: {_redact_url(settings.store_url)}; "
              f"API: {settings.api.host}:{settings.api.port}; tokens: {len(settings.api.tokens)}; "
              f"webhooks: {len(settings.api.webhooks)}")


@app.command("show")
def show() -> None:
    """Every setting: its YAML path, environment variable, default and meaning."""
    table = Table("setting", "environment", "default", "what it does", show_lines=False)
    for path, info in _fields(MarcadorSettings, ()):
        env = ENV_PREFIX + "__".join(p.upper() for p in path)
        table.add_row(".".join(path), env, _default(info), info.description or "")
    Console().print(table)


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


def _redact_url(url: str) -> str:
    """redis://user:password@host → redis://user:***@host: a password never reaches the terminal."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not sep or not at:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
