"""Load the settings as `marcador run` uses them and name every problem, for `run` and `config validate` alike.

pydantic checks the schema; what only the wiring would find later (a store URL it cannot open, a channel template
without its placeholder, an AMI port of 0 against a real Asterisk) is checked here too, so a file that validates
also starts. Problems name the setting and never carry its value: a bad value may be a secret.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from ami_bridge.config import AmiConfig
from config.settings import MarcadorSettings, load_settings
from dialer.store_factory import parse_store_url


class SettingsProblem(Exception):
    """The settings cannot be used; `lines` say why, one problem a line, without any value."""

    def __init__(self, headline: str, lines: list[str] | None = None) -> None:
        super().__init__(headline)
        self.headline = headline
        self.lines = lines or []


def _yaml_where(exc: yaml.YAMLError) -> str:
    """Where and what, without PyYAML's quote of the line: that line may hold a secret."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or ""
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{at}: {problem}" if problem else at


def ami_config(settings: MarcadorSettings) -> AmiConfig:
    """The AMI endpoint of `pbx.mode: asterisk` (ValueError naming the field when a value cannot be used)."""
    ami = settings.ami
    return AmiConfig(host=ami.host, port=ami.port, username=ami.username, secret=ami.secret.get_secret_value(),
                     auth=ami.auth, tls=ami.tls, call_channel=ami.call_channel, agent_channel=ami.agent_channel)


def load_checked(path: Path | None) -> MarcadorSettings:
    """The settings from `path` (None: defaults) with the environment on top, or `SettingsProblem`."""
    where = str(path) if path is not None else "settings"
    try:
        settings = load_settings(path)
    except FileNotFoundError:
        raise SettingsProblem(f"{where}: no such file") from None
    except yaml.YAMLError as exc:
        raise SettingsProblem(f"{where}: not valid YAML{_yaml_where(exc)}") from None
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()]
        raise SettingsProblem(f"{where}: {exc.error_count()} problem(s)", lines) from None
    except (ValueError, OSError) as exc:
        raise SettingsProblem(f"{where}: {exc}") from None
    lines = []
    try:
        parse_store_url(settings.store_url)  # its message redacts the password
    except ValueError as exc:
        lines.append(f"store_url: {exc}")
    if settings.pbx.mode == "asterisk":
        try:
            ami_config(settings)
        except ValueError as exc:
            lines.append(f"ami.{exc}")
    if lines:
        raise SettingsProblem(f"{where}: {len(lines)} problem(s)", lines)
    return settings


ENV_PREFIX = "MARCADOR_"
# MARCADOR_ variables that are not settings: provision.sh's chroot. (check-asterisk still reads the former
# MARCADOR_AMI_SECRET, but `run` does not: it is warned about.)
_NOT_SETTINGS = {"MARCADOR_ASTERISK_ROOT"}


def _env_names(model: type[BaseModel], prefix: str) -> set[str]:
    names = set()
    for name, info in model.model_fields.items():
        env = prefix + name.upper()
        names.add(env)  # a section may also come whole, as JSON
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            names |= _env_names(info.annotation, env + "__")
    return names


def unknown_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """MARCADOR_ variables that match no setting. pydantic-settings ignores them silently (an unknown key inside a
    section is an error, a misspelt section or top-level name is not): MARCADOR_AMI_SECRET looks right and is not."""
    env = os.environ if environ is None else environ
    known = _env_names(MarcadorSettings, ENV_PREFIX)
    out = []
    for name in sorted(env):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known or upper in _NOT_SETTINGS:
            continue
        tail = upper[len(ENV_PREFIX):]
        guesses = [ENV_PREFIX + tail[:i] + "_" + tail[i:] for i, ch in enumerate(tail) if ch == "_"]
        hint = next((g for g in guesses if g in known), None)
        out.append(f"{name} is not a setting and is ignored" + (f" (did you mean {hint}?)" if hint else ""))
    return out
