"""`marcador config validate` names every bad field and never prints a secret; `config show` documents every
setting with its default and environment variable."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from config.settings import MarcadorSettings
from marcador_cli.config_cmd import _fields, _redact_url
from marcador_cli.main import app

ROOT = Path(__file__).resolve().parents[1]


def test_validate_accepts_the_shipped_compose_settings() -> None:
    r = CliRunner().invoke(app, ["config", "validate", str(ROOT / "asterisk-docker" / "marcador.yaml")])
    assert r.exit_code == 0, r.output
    assert "valid" in r.output and "PBX: asterisk" in r.output


def test_validate_names_every_bad_field_and_hides_secrets(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("ami:\n  port: 70000\n  secret: s3cr3t-value-xyz\napi:\n  colour: blue\nstore_url: "
                   "redis://u:p4ssw0rd@127.0.0.1:6379/0\n")
    r = CliRunner().invoke(app, ["config", "validate", str(bad)])
    assert r.exit_code == 1
    assert "ami.port" in r.output and "api.colour" in r.output
    assert "s3cr3t-value-xyz" not in r.output and "p4ssw0rd" not in r.output
    r = CliRunner().invoke(app, ["config", "validate", str(tmp_path / "missing.yaml")])
    assert r.exit_code == 1 and "no such file" in r.output


def test_validate_prints_a_store_url_without_its_password(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("store_url: redis://marcador:p4ssw0rd@127.0.0.1:6379/0\n")
    r = CliRunner().invoke(app, ["config", "validate", str(good)])
    assert r.exit_code == 0, r.output
    assert "p4ssw0rd" not in r.output and "marcador:***@127.0.0.1" in r.output
    assert _redact_url("memory://") == "memory://"


@pytest.mark.parametrize("path_info", _fields(MarcadorSettings, ()), ids=lambda f: ".".join(f[0]))
def test_every_setting_is_documented(path_info) -> None:
    path, info = path_info
    assert info.description, f"{'.'.join(path)} has no description"


def test_show_lists_every_setting_with_its_environment_variable() -> None:
    r = CliRunner().invoke(app, ["config", "show"], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    for path, _ in _fields(MarcadorSettings, ()):
        assert ".".join(path) in r.output
    assert "MARCADOR_AMI__SECRET" in r.output and "(secret)" in r.output
