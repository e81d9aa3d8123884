"""Issue #17, 'wrong today' 4: the scheduler's units and 'config detect --write' agree
on where the passphrase lives. The test runs the unit's own command line with the
unit's own environment (its EnvironmentFile), as systemd would."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import yaml

from drkit.cli import cli
from drkit.cli.app import run_cli
from drkit.errors import EXIT_USAGE
from tests.fixtures.k3s_layout import make_k3s_layout


def _unit(out: Path) -> tuple[list[str], Path, str]:
    """(ExecStart argv, EnvironmentFile path, its comment) of the backup service."""
    text = (out / "drkit-backup.service").read_text()
    lines = text.splitlines()
    exec_line = next(ln for ln in lines if ln.startswith("ExecStart="))
    argv = shlex.split(exec_line.split("=", 1)[1].replace("%%", "%").replace("$$", "$"))
    i = next(i for i, ln in enumerate(lines) if ln.startswith("EnvironmentFile="))
    return argv, Path(lines[i].split("=", 1)[1].lstrip("-")), lines[i - 1]


def _run_unit(argv: list[str], env_file: Path, home: Path) -> subprocess.CompletedProcess[str]:
    # A unit's own environment, but this test's state and cache directories (never
    # /var/lib/drkit or /var/cache/drkit).
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "DRKIT_STATE_DIR": os.environ["DRKIT_STATE_DIR"],
           "DRKIT_CACHE_DIR": os.environ["DRKIT_CACHE_DIR"]}
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                key, value = line.split("=", 1)
                env[key.strip()] = value.strip()
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


def _install(config: Path, out: Path, env_file: Path) -> int:
    return run_cli(cli, ["-c", str(config), "schedule", "install", "--systemd", "--dir", str(out),
                         "--env-file", str(env_file)])


def test_units_and_detected_config_keep_the_passphrase_in_one_place(tmp_path: Path, capsys) -> None:
    layout = make_k3s_layout(tmp_path / "node", rows=50)
    etc = tmp_path / "etc"
    config = etc / "drkit.yaml"
    assert run_cli(cli, ["config", "detect", "--write", "--path", str(config), "--root", str(layout.root),
                         "--no-kube", "--repository", str(tmp_path / "repo")]) == 0
    assert yaml.safe_load(config.read_text())["repository"]["password_file"] == str(etc / "passphrase")
    assert run_cli(cli, ["-c", str(config), "init"]) == 0
    out = tmp_path / "units"
    out.mkdir()
    env_file = etc / "drkit.env"

    # What the unit used to suggest, beside the detected config: refused at install time.
    env_file.write_text(f"DRKIT_PASSWORD_FILE={etc / 'passphrase'}\n")
    capsys.readouterr()
    assert _install(config, out, env_file) == EXIT_USAGE
    assert "two places" in capsys.readouterr().err
    assert not (out / "drkit-backup.service").exists()

    # What the unit suggests now: the job runs, with the unit's command line and environment.
    env_file.write_text("TZ=UTC\n")
    assert _install(config, out, env_file) == 0
    argv, unit_env, comment = _unit(out)
    assert unit_env == env_file
    assert "NOT DRKIT_PASSWORD" in comment and "password_file" in comment
    done = _run_unit(argv, unit_env, tmp_path)
    assert done.returncode == 0, done.stderr
    snaps = subprocess.run([argv[argv.index("-c") - 1], "-c", str(config), "snapshots", "--json"], capture_output=True,
                           text=True, timeout=60, env={"PATH": os.environ["PATH"], "HOME": str(tmp_path),
                                                       "DRKIT_STATE_DIR": os.environ["DRKIT_STATE_DIR"]})
    assert {s["source"] for s in json.loads(snaps.stdout)} == {"k3s-node", "k3s-db"}


def test_without_a_passphrase_in_the_config_the_unit_names_the_variable_and_it_works(tmp_path: Path, monkeypatch) -> None:
    layout = make_k3s_layout(tmp_path / "node", rows=50)
    etc = tmp_path / "etc"
    config = etc / "drkit.yaml"
    assert run_cli(cli, ["config", "detect", "--write", "--path", str(config), "--root", str(layout.root),
                         "--no-kube", "--repository", str(tmp_path / "repo")]) == 0
    doc = yaml.safe_load(config.read_text())
    doc["repository"].pop("password_file")
    config.write_text(yaml.safe_dump(doc))
    os.chmod(config, 0o600)
    env_file = etc / "drkit.env"
    out = tmp_path / "units"
    out.mkdir()
    assert _install(config, out, env_file) == 0
    argv, unit_env, comment = _unit(out)
    assert "DRKIT_PASSWORD_FILE=" in comment
    suggested = comment.split("DRKIT_PASSWORD_FILE=", 1)[1].split(";")[0]
    assert suggested == "/etc/drkit/passphrase"
    unit_env.write_text(f"DRKIT_PASSWORD_FILE={etc / 'passphrase'}\n")  # as suggested, at this test's path
    os.chmod(unit_env, 0o600)
    monkeypatch.setenv("DRKIT_PASSWORD_FILE", str(etc / "passphrase"))
    assert run_cli(cli, ["-c", str(config), "init"]) == 0
    done = _run_unit(argv, unit_env, tmp_path)
    assert done.returncode == 0, done.stderr
