"""`marcador config validate` names every bad field and never prints a secret; `config show` documents every
setting with its default and environment variable."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from config.settings import MarcadorSettings
from marcador_cli.config_cmd import _fields
from marcador_cli.main import EXIT_CONFIG, app

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


@pytest.mark.parametrize(("url", "secret", "shown"), [
    ("redis://marcador:p4ssw0rd@127.0.0.1:6379/0", "p4ssw0rd", "marcador:***@127.0.0.1"),
    ("rediss+sentinel://h1:26379/mymaster/0?sentinel_password=q5ecret-sent", "q5ecret-sent", "sentinel_password=***"),
])
def test_validate_prints_a_store_url_without_its_password(tmp_path: Path, url: str, secret: str, shown: str) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(f"store_url: {url}\n")
    r = CliRunner().invoke(app, ["config", "validate", str(good)])
    assert r.exit_code == 0, r.output
    assert secret not in r.output and shown in r.output


def test_validate_checks_what_run_would_refuse(tmp_path: Path) -> None:
    # Each of these passed `validate` and then crashed `run` with a traceback.
    cases = {
        "log_level: LOUD\n": "log_level: Value error, must be one of DEBUG, INFO",
        "store_url: mysql://db\n": "store_url: store URL 'mysql://db': unsupported scheme 'mysql'",
        "store_url: redis://h:6379/0?lease=9\n": "unknown option 'lease'",
        "pbx: {mode: asterisk}\nami: {call_channel: PJSIP/trunk}\n": "ami.call_channel: the template must contain",
        "pbx: {mode: asterisk}\nami: {port: 0}\n": "ami.port: must be 1..65535",
    }
    for i, (text, expected) in enumerate(cases.items()):
        f = tmp_path / f"c{i}.yaml"
        f.write_text(text)
        r = CliRunner().invoke(app, ["config", "validate", str(f)])
        assert r.exit_code == 1 and expected in r.output, (text, r.output)
    ok = tmp_path / "ok.yaml"
    ok.write_text("log_level: debug\n")
    assert CliRunner().invoke(app, ["config", "validate", str(ok)]).exit_code == 0


def test_a_yaml_error_says_where_without_quoting_the_line(tmp_path: Path) -> None:
    f = tmp_path / "y.yaml"
    f.write_text('ami:\n  secret: "q7-half-quoted\n  port: [5038\n')
    for args in (["config", "validate", str(f)], ["run", "--config", str(f)]):
        r = CliRunner().invoke(app, args)
        assert r.exit_code in (1, 2) and "not valid YAML at line" in r.output, r.output
        assert "q7-half-quoted" not in r.output  # PyYAML quotes the offending line, secret and all


def test_run_with_bad_settings_names_them_without_a_traceback_or_a_value(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("ami:\n  secret: 80551234\n  port: 99999\napi:\n  tokens:\n"
                   "    - {name: ops, token: tok-9x7q2, role: admin}\nlog_level: LOUD\n")
    r = CliRunner().invoke(app, ["run", "--config", str(bad)])
    assert r.exit_code == EXIT_CONFIG == 2, r.output
    for where in ("ami.secret", "ami.port", "api.tokens.0", "log_level"):
        assert where in r.output, r.output
    assert "80551234" not in r.output and "tok-9x7q2" not in r.output and "Traceback" not in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    r = CliRunner().invoke(app, ["run", "--config", str(tmp_path / "missing.yaml")])
    assert r.exit_code == 2 and "no such file" in r.output


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


def test_validate_warns_of_environment_variables_that_set_nothing(tmp_path: Path) -> None:
    # pydantic-settings ignores a MARCADOR_ variable that names no setting: the service then ran on the default.
    f = tmp_path / "ok.yaml"
    f.write_text("log_level: INFO\n")
    env = {"MARCADOR_AMI_SECRET": "env-s3cret", "MARCADOR_STOREURL": "redis://h", "MARCADOR_API__PORT": "9000",
           "MARCADOR_ASTERISK_ROOT": "/srv/chroot"}
    r = CliRunner().invoke(app, ["config", "validate", str(f)], env=env)
    assert r.exit_code == 0, r.output
    assert "MARCADOR_AMI_SECRET is not a setting and is ignored (did you mean MARCADOR_AMI__SECRET?)" in r.output
    assert "MARCADOR_STOREURL is not a setting" in r.output
    assert "MARCADOR_API__PORT" not in r.output and "MARCADOR_ASTERISK_ROOT" not in r.output
    assert "env-s3cret" not in r.output


def test_an_api_beyond_loopback_needs_tokens_or_an_explicit_allow_open(tmp_path: Path) -> None:
    # With no tokens every request acts as admin; on 0.0.0.0 that was only a warning in the log.
    token = "api:\n  host: {host}\n  tokens: [{{name: ops, token: tok-0123456789abcdef, role: admin}}]\n"
    cases = {
        "api: {host: 0.0.0.0}\n": 1, "api: {host: 10.1.2.3}\n": 1, "api: {host: '::'}\n": 1,
        "api: {host: dialer.example.com}\n": 1,
        "api: {host: 127.0.0.1}\n": 0, "api: {host: localhost}\n": 0, "api: {host: '::1'}\n": 0,
        "api: {host: 0.0.0.0, allow_open: true}\n": 0, token.format(host="0.0.0.0"): 0,
    }
    for i, (text, code) in enumerate(cases.items()):
        f = tmp_path / f"a{i}.yaml"
        f.write_text(text)
        r = CliRunner().invoke(app, ["config", "validate", str(f)])
        assert r.exit_code == code, (text, r.output)
        if code:
            assert "api.tokens" in r.output and "allow_open" in " ".join(r.output.split()), r.output


@pytest.mark.parametrize("node_id", ["n1\r\nAction: Originate", "dc1,east", 'say "hi"', "x" * 40, ""])
def test_a_node_id_that_cannot_travel_in_ami_headers_and_dialplan_arguments_is_refused(
        node_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # It prefixes every call id and agent-leg id: ChannelId, ActionID and a channel variable in each Originate. A CR
    # or LF there ends the header and smuggles in fields or a whole action; commas, quotes and backslashes are cut
    # or stripped by the dialplan's argument parser; Asterisk refuses a ChannelId over 149 characters.
    monkeypatch.setenv("MARCADOR_NODE_ID", node_id)
    with pytest.raises(ValueError, match="node_id"):
        MarcadorSettings()


def test_usual_node_ids_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    for node_id in ("node1", "dc1-east.2", "paris_01"):
        monkeypatch.setenv("MARCADOR_NODE_ID", node_id)
        assert MarcadorSettings().node_id == node_id


def test_show_names_every_environment_variable_in_full_on_an_80_column_screen_or_a_pipe() -> None:
    # A pipe or a terminal of 80 columns cut the names short ("MARCADOR_AMI__HO…"): not greppable, not copyable.
    r = CliRunner().invoke(app, ["config", "show"], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    assert "…" not in r.output
    lines = r.output.splitlines()
    for path, _ in _fields(MarcadorSettings, ()):
        env = "MARCADOR_" + "__".join(p.upper() for p in path)
        assert any(".".join(path) in line and env in line for line in lines), env  # setting and variable together
    assert max(len(line) for line in lines) <= 80
    assert "(secret)" in r.output and "MARCADOR_AMI__SECRET" in r.output
