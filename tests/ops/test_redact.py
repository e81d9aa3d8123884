"""Secret hygiene: passphrases, S3 keys and tokens never appear in log records (any
logger, any level, text or JSON), CLI errors, --debug tracebacks or the metrics file;
a warning when the config or a password file is readable by group/others."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from drkit.cli import cli
from drkit.cli.app import run_cli
from drkit.errors import DrkitError
from drkit.logfmt import JsonFormatter
from drkit.metrics import render_textfile
from drkit.redact import (
    check_private_file,
    install_log_redaction,
    is_secret_key,
    redact,
    register,
    register_mapping_secrets,
)
from tests.ops.conftest import write_config


def new_secret(prefix: str = "s3cr3t") -> str:
    return f"{prefix}-{secrets.token_urlsafe(12)}"


def test_redact_masks_registered_values_and_their_encodings() -> None:
    pw = "p@ss w/rd+" + secrets.token_hex(4)
    register(pw)
    assert redact(f"pw is {pw}!") == "pw is ***!"
    assert redact("url https://u:" + pw.replace("@", "%40").replace(" ", "%20").replace("/", "%2F")
                  .replace("+", "%2B") + "@h/x") == "url https://u:***@h/x"
    assert pw not in redact(json.dumps({"x": pw}))
    assert redact("nothing secret here") == "nothing secret here"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("s3://AKIAEXAMPLE:wJalrXUtnFEMI@minio:9000/bucket", "s3://AKIAEXAMPLE:***@minio:9000/bucket"),
        ("sftp://backup:hunter22@nas/backups", "sftp://backup:***@nas/backups"),
        ("connect password=abc123 host=x", "connect password=*** host=x"),
        ("aws_secret_access_key=XYZ/123+abc next", "aws_secret_access_key=*** next"),
        ('{"secret_access_key": "XYZ/123"}', '{"secret_access_key": "***"}'),
        ("Authorization: Bearer eyJhbGciOi.abc", "Authorization: Bearer ***"),
        ("GITHUB_TOKEN=ghp_abcdef", "GITHUB_TOKEN=***"),
        # what must stay readable: key names in config errors, file paths
        ("config error: repository.password_file: Input should be a valid path",
         "config error: repository.password_file: Input should be a valid path"),
        ("--password-file=/etc/drkit/pw", "--password-file=/etc/drkit/pw"),
        ("sftp://backup@nas/backups", "sftp://backup@nas/backups"),
    ],
)
def test_credential_shaped_text_is_masked_even_when_unregistered(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("key", "secret"),
    [("secret_access_key", True), ("password", True), ("token", True), ("passphrase", True), ("api_key", True),
     ("session_token", True), ("access_key_id", False), ("password_file", False), ("password_command", False),
     ("key_file", False), ("url", False), ("bucket", False), ("token_user", False), ("secret_name", False),
     ("token_env", False), ("sse_kms_key_id", False), ("secrets_encryption", False)],
)
def test_is_secret_key(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


def test_config_secrets_are_registered() -> None:
    sk, pw = new_secret("sk"), new_secret("pw")
    n = register_mapping_secrets({"repository": {"url": "s3://b", "s3": {"access_key_id": "AKIAKEEPME",
                                                                          "secret_access_key": sk},
                                                 "sftp": {"password": pw, "user": "backup"}}})
    assert n == 2
    assert redact(f"{sk} {pw} AKIAKEEPME backup") == "*** *** AKIAKEEPME backup"


@pytest.fixture
def redacting_logs(drkit_logs: logging.Logger) -> Iterator[logging.Logger]:
    install_log_redaction()
    yield drkit_logs


@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL])
def test_log_records_are_redacted_at_every_level(level: int, redacting_logs: logging.Logger,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    sk = new_secret()
    register(sk)
    caplog.set_level(logging.DEBUG)
    log = logging.getLogger("drkit.storage.s3")
    third_party = logging.getLogger("botocore.endpoint")
    try:
        raise RuntimeError(f"signature mismatch for key {sk}")
    except RuntimeError:
        log.log(level, "uploading with %s", sk, exc_info=True, extra={"detail": f"key={sk}"}, stack_info=True)
    log.log(level, f"f-string with {sk} inside")
    third_party.log(level, "Sending http request: <AWSPreparedRequest headers={'Authorization': %r}>", sk)
    assert caplog.records
    assert sk not in caplog.text
    json_fmt, text_fmt = JsonFormatter(), logging.Formatter("%(message)s %(detail)s")
    for record in caplog.records:
        assert sk not in record.getMessage() and "***" in record.getMessage()
        assert sk not in (record.exc_text or "") and sk not in (record.stack_info or "")
        assert sk not in json_fmt.format(record)
        if hasattr(record, "detail"):
            assert sk not in text_fmt.format(record)
    assert "signature mismatch for key ***" in caplog.text  # the traceback is kept, masked


def test_metrics_text_never_holds_a_secret() -> None:
    sk = new_secret()
    register(sk)
    number = str(10**11 + secrets.randbelow(10**11))
    register(number)  # a (silly) numeric secret must not corrupt the values
    text = render_textfile({("drkit_snapshots", (("source", sk),)): float(number)})
    assert sk not in text and f'drkit_snapshots{{source="***"}} {number}' in text


def test_very_short_values_are_not_registered() -> None:
    register("ab")
    assert redact("a tab b") == "a tab b"


# --- through the CLI -----------------------------------------------------------------


@pytest.fixture
def leaky_command() -> Iterator[dict[str, str]]:
    """A throw-away command that logs, prints errors and crashes with whatever secret it is given."""
    box: dict[str, str] = {}

    @click.command("leaky-test")
    @click.option("--mode", type=click.Choice(["error", "crash", "ok"]))
    def leaky(mode: str) -> None:
        value = box["secret"]
        logging.getLogger("drkit.leaky").debug("debug: using %s", value)
        logging.getLogger("drkit.leaky").warning("warning: key=%s", value)
        if mode == "error":
            raise DrkitError(f"storage refused credentials {value}", hint=f"check the key {value}")
        if mode == "crash":
            raise RuntimeError(f"boom with {value}")

    cli.add_command(leaky)
    try:
        yield box
    finally:
        cli.commands.pop("leaky-test", None)


SECRET_PLACES = ["env", "config", "password_file"]


def _setup_secret(place: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    value = new_secret(place)
    repo: dict = {"url": str(tmp_path / "repo")}
    if place == "env":
        monkeypatch.setenv("DRKIT_PASSWORD", value)
    elif place == "config":
        repo = {"url": "s3://bucket/drkit", "s3": {"access_key_id": "AKIAVISIBLE", "secret_access_key": value}}
    else:
        pw = tmp_path / "passphrase"
        pw.write_text(value + "\n")
        pw.chmod(0o600)
        repo["password_file"] = str(pw)
    cfg = write_config(tmp_path / "drkit.yaml", {"repository": repo})
    return value, cfg


@pytest.mark.parametrize("place", SECRET_PLACES)
@pytest.mark.parametrize("log_format", ["text", "json"])
@pytest.mark.parametrize("mode", ["error", "crash"])
@pytest.mark.parametrize("debug", [False, True])
def test_cli_output_never_shows_a_secret(place: str, log_format: str, mode: str, debug: bool, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                         leaky_command: dict[str, str]) -> None:
    value, cfg = _setup_secret(place, tmp_path, monkeypatch)
    leaky_command["secret"] = value
    # the config is loaded (and its secrets registered) the way every command loads it
    args = ["-c", str(cfg), "--log-format", log_format] + (["--debug"] if debug else [])
    assert run_cli(cli, [*args, "schedule", "show"]) == 0
    capsys.readouterr()
    code = run_cli(cli, [*args, "leaky-test", "--mode", mode])
    out, err = capsys.readouterr()
    assert code == 1
    assert value not in out and value not in err
    last = json.loads(err.strip().splitlines()[-1]) if log_format == "json" and not (debug and mode == "crash") else None
    if mode == "error" and last is not None:  # under --log-format json every error is one JSON object
        assert last["error"] == "storage refused credentials ***" and last["hint"] == "check the key ***"
    elif mode == "error":
        assert "error: storage refused credentials ***" in err and "hint: check the key ***" in err
    elif debug:
        assert "Traceback (most recent call last)" in err and "RuntimeError: boom with ***" in err
    elif last is not None:
        assert last["error"] == "internal error: RuntimeError: boom with ***" and last["exit_code"] == 1
    else:
        assert "error: internal error: RuntimeError: boom with ***" in err
    if log_format == "json":
        lines = [json.loads(ln) for ln in err.splitlines() if ln.startswith("{")]
        assert any(ln["msg"] == "warning: key=***" for ln in lines)
        if debug:
            assert any(ln["msg"] == "debug: using ***" for ln in lines)


def test_real_commands_never_show_the_passphrase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "x").write_text("content\n")
    (tmp_path / "prom").mkdir()
    pw = new_secret("passphrase")
    monkeypatch.setenv("DRKIT_PASSWORD", pw)
    cfg = write_config(tmp_path / "drkit.yaml", {
        "repository": {"url": str(tmp_path / "repo")},
        "sources": [{"name": "data", "type": "files", "paths": [str(data)]}],
        "metrics": {"textfile": str(tmp_path / "prom" / "drkit.prom")},
    })
    base = ["-c", str(cfg), "--debug"]
    assert run_cli(cli, [*base, "init"]) == 0
    assert run_cli(cli, [*base, "backup"]) == 0
    assert run_cli(cli, [*base, "--log-format", "json", "verify", "--read-data"]) == 0
    monkeypatch.setenv("DRKIT_PASSWORD", pw + "-wrong")
    assert run_cli(cli, [*base, "snapshots"]) == 5
    out, err = capsys.readouterr()
    assert pw not in out and pw not in err
    assert "wrong passphrase" in err
    assert pw not in (tmp_path / "prom" / "drkit.prom").read_text()
    for path in (tmp_path / "repo").rglob("*"):
        if path.is_file():
            assert pw.encode() not in path.read_bytes()


# --- permission warnings ---------------------------------------------------------------


@pytest.mark.parametrize(("mode", "who"), [(0o644, "group and others"), (0o640, "group"), (0o604, "others")])
def test_config_readable_by_others_warns_once_with_chmod_hint(mode: int, who: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path / "drkit.yaml", {"repository": {"url": str(tmp_path / "r")}}, mode=mode)
    assert run_cli(cli, ["-c", str(cfg), "schedule", "show"]) == 0
    err = capsys.readouterr().err
    warnings = [ln for ln in err.splitlines() if "readable by" in ln]
    assert warnings == [f"WARNING drkit.redact: config file {cfg} is readable by {who} (mode {mode:04o}); "
                        f"it may hold secrets: run 'chmod 600 {cfg}'"]


def test_private_config_does_not_warn(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path / "drkit.yaml", {"repository": {"url": str(tmp_path / "r")}}, mode=0o600)
    assert run_cli(cli, ["-c", str(cfg), "schedule", "show"]) == 0
    assert "readable by" not in capsys.readouterr().err
    assert check_private_file(tmp_path / "missing", "key file") is None


def test_password_file_readable_by_others_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    pw = tmp_path / "pw"
    pw.write_text(new_secret() + "\n")
    pw.chmod(0o644)
    monkeypatch.setenv("DRKIT_PASSWORD_FILE", str(pw))
    cfg = write_config(tmp_path / "drkit.yaml", {"repository": {"url": str(tmp_path / "r")}})
    assert run_cli(cli, ["-c", str(cfg), "init"]) == 0
    err = capsys.readouterr().err
    assert f"chmod 600 {pw}" in err
    assert check_private_file(pw, "password file") is not None
