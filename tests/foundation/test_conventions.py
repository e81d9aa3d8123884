"""Issue #17, 'wrong today' 6: the conventions a restic user expects."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
import signal
import subprocess
import sys
import time

import click
import pytest

from drkit.cli import cli
from drkit.cli.app import COMMANDS, LazyGroup, hoist_global_options
from drkit.errors import EXIT_INTERRUPTED, EXIT_USAGE
from tests.cli import invoke
from tests.foundation.conftest import Workspace
from tests.foundation.test_errors import one_error_line


def test_global_options_are_accepted_anywhere_on_the_line(ws: Workspace) -> None:
    ws.ok("init")
    ws.ok("backup")
    cfg = str(ws.config)
    # run without the workspace's leading -c: -c after the command
    r = invoke("snapshots", "-c", cfg, "--json", "-q")
    assert r.code == 0 and json.loads(r.out)[0]["source"] == "data"
    r = invoke("--json", "-c", cfg, "snapshots")
    assert r.code == 0 and json.loads(r.out)[0]["source"] == "data"
    r = invoke("ls", "latest", f"--config={cfg}", "--debug", "-s", "data")
    assert r.code == 0 and f"{ws.data}/a/text.txt" in r.out


def test_hoisting_leaves_values_and_what_follows_double_dash_alone() -> None:
    assert hoist_global_options(["backup", "-s", "data", "-q", "-c", "f.yaml"]) == ["-q", "-c", "f.yaml", "backup", "-s", "data"]
    assert hoist_global_options(["--json", "key", "list"]) == ["key", "list", "--json"]
    assert hoist_global_options(["find", "--", "-q"]) == ["find", "--", "-q"]
    assert hoist_global_options(["restore", "x", "--log-format=json"]) == ["--log-format=json", "restore", "x"]


def test_every_error_is_json_under_json_and_log_format_json(ws: Workspace) -> None:
    for args in (["snapshots", "--json"], ["--log-format", "json", "snapshots"]):
        r = ws.run(*args)  # no repository yet
        assert r.code == 3
        doc = json.loads(r.err.strip().splitlines()[-1])
        assert doc["exit_code"] == 3 and "no drkit repository" in doc["error"] and "drkit init" in doc["hint"]
    r = ws.run("snapshots", "--json", "--no-such-option")
    assert r.code == EXIT_USAGE
    assert "no-such-option" in json.loads(r.err.strip().splitlines()[-1])["error"]


def test_failing_password_command_is_a_passphrase_error_not_internal(ws: Workspace, monkeypatch) -> None:
    ws.ok("init")
    monkeypatch.delenv("DRKIT_PASSWORD")
    monkeypatch.setenv("DRKIT_PASSWORD_COMMAND", "false")
    r = ws.run("snapshots")
    assert r.code == EXIT_USAGE
    assert "DRKIT_PASSWORD_COMMAND failed" in one_error_line(r.err)
    monkeypatch.setenv("DRKIT_PASSWORD_COMMAND", "/nonexistent/pw-helper")
    r = ws.run("snapshots")
    assert r.code == EXIT_USAGE and "internal error" not in r.err


def test_missing_passphrase_hints_name_the_right_variables(ws: Workspace, tmp_path, monkeypatch) -> None:
    import yaml

    ws.ok("init")
    r = ws.run("key", "add")
    assert r.code == EXIT_USAGE
    assert "DRKIT_NEW_PASSWORD" in one_error_line(r.err)
    hint = r.err.split("hint:", 1)[1]
    assert "DRKIT_NEW_PASSWORD_FILE" in hint and "DRKIT_PASSWORD," not in hint
    dest = tmp_path / "dest.yaml"
    dest.write_text(yaml.safe_dump({"repository": {"url": str(tmp_path / "repo2")}, "sources": []}))
    os.chmod(dest, 0o600)
    from drkit.cli.app import run_cli

    assert run_cli(cli, ["-c", str(dest), "init"]) == 0
    r = ws.run("copy", "--to", str(dest))
    assert r.code == EXIT_USAGE, r.err
    assert "DRKIT_TO_PASSWORD" in one_error_line(r.err)
    hint = r.err.split("hint:", 1)[1]
    assert "DRKIT_TO_PASSWORD_FILE" in hint and "DRKIT_PASSWORD," not in hint


def test_every_command_help_has_examples() -> None:
    import click

    missing = []

    def walk(cmd: click.Command, path: str) -> None:
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                walk(sub, f"{path} {name}")
            return
        if "Examples:" not in (cmd.help or "") and "Example:" not in (cmd.help or ""):
            missing.append(path)

    assert isinstance(cli, LazyGroup)
    cli.load_all()
    walk(cli, "drkit")
    assert missing == []


def test_the_command_table_names_every_command_and_its_module() -> None:
    """Commands load lazily from :data:`COMMANDS`: a command missing there could not be
    run, one named with the wrong module would load the wrong file."""
    assert isinstance(cli, LazyGroup)
    cli.load_all()
    assert sorted(cli.commands) == sorted(COMMANDS)
    for name, cmd in cli.commands.items():
        assert cmd.callback is not None and cmd.callback.__module__ == COMMANDS[name] or (
            isinstance(cmd, click.Group) and any(sub.callback.__module__ == COMMANDS[name] for sub in cmd.commands.values() if sub.callback))


def test_a_backup_loads_no_other_command() -> None:
    """Start-up cost: ``drkit backup --help`` imports its own module, not the runbook
    engine, the scheduler, restore or the other commands."""
    code = ("import sys; from drkit.cli.app import run_cli, cli; run_cli(cli, ['backup', '--help']); "
            "print(sorted(m for m in sys.modules if m.startswith(('drkit.cli.', 'drkit.runbook', 'drkit.schedule', "
            "'drkit.services.restore', 'pydantic'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = out.strip().splitlines()[-1]
    assert "drkit.cli.backup_cmd" in loaded
    for other in ("drkit.cli.restore_cmd", "drkit.cli.runbook_cmd", "drkit.runbook", "drkit.schedule", "drkit.services.restore"):
        assert other not in loaded, loaded


@pytest.mark.parametrize("delay", [0.15, 0.3, 0.45])
def test_ctrl_c_in_the_first_half_second_prints_no_traceback(ws: Workspace, delay: float) -> None:
    ws.ok("init")
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "drkit", "-c", str(ws.config), "snapshots"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    if proc.returncode == 0:  # finished before the signal: nothing to check
        return
    assert b"Traceback" not in err, err.decode()
    assert proc.returncode in (EXIT_INTERRUPTED, -signal.SIGINT), err.decode()
    if proc.returncode == -signal.SIGINT:
        # Killed by the default handler: the signal came before Python installed its own
        # or after it restored the default at exit (the work was done): nothing to print.
        return
    assert err.decode().strip().splitlines()[-1] == "interrupted", (proc.returncode, out, err)


_INTERRUPT_WHILE_LOADING = """
import os, signal, sys


class _Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == "drkit.cli":  # Ctrl-C just as the command line starts to load
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None


sys.meta_path.insert(0, _Interrupt())
"""


@pytest.mark.parametrize("how", [["-m", "drkit"], ["-c", "import sys; sys.argv[0] = 'drkit'; from drkit.__main__ import *"]])
def test_ctrl_c_while_the_command_line_loads_prints_no_traceback(tmp_path, how: list[str]) -> None:
    """Deterministic: the signal is sent as ``drkit.cli`` is imported (``python -m drkit``
    imports the package while ``sys.argv[0]`` is still ``-m``)."""
    (tmp_path / "sitecustomize.py").write_text(_INTERRUPT_WHILE_LOADING)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    proc = subprocess.run([sys.executable, *how, "--help"], capture_output=True, env=env, cwd=tmp_path, timeout=60)
    assert b"Traceback" not in proc.stderr, proc.stderr.decode()
    assert (proc.returncode, proc.stderr.decode().strip()) == (EXIT_INTERRUPTED, "interrupted")
    assert proc.stdout == b""


def test_drill_table_check_column_fits_the_terminal_width(ws: Workspace, monkeypatch) -> None:
    from drkit.cli.common import human_size
    from drkit.cli.drill_cmd import human_table
    from drkit.services.drill import DrillReport, SourceDrill
    from drkit.sources.base import CheckResult

    ws.ok("init")
    ws.ok("backup")
    long_check = "content hashes verified for every one of the many files " * 3
    report = DrillReport(repository="r", started=datetime.now(timezone.utc))
    report.results.append(SourceDrill(source="data", source_type="files", check=CheckResult(ok=True, summary=long_check)))
    for width in (90, 120):
        lines = human_table(report, human_size, width)
        assert all(len(line) <= width for line in lines[:2]), (width, lines[:2])
        assert lines[1].endswith("…")
    assert long_check in human_table(report, human_size, None)[1]
    assert long_check in human_table(report, human_size, 400)[1]
    monkeypatch.setenv("COLUMNS", "90")
    r = ws.ok("drill")
    rows = r.out.splitlines()[:2]
    assert rows[0].startswith("SOURCE") and all(len(row) <= 90 for row in rows), rows


def test_prune_dry_run_never_says_deleted(ws: Workspace) -> None:
    ws.ok("init")
    ws.ok("backup")
    (ws.data / "a/b/random.bin").write_bytes(b"x" * 100_000)
    ws.ok("backup")
    ws.ok("forget", "--keep-last", "1")
    for args in (["prune", "--dry-run"], ["forget", "--keep-last", "1", "--prune", "--dry-run"]):
        out = ws.ok(*args).out
        assert "deleted" not in out and "removed" not in out and "freed" not in out, (args, out)
        assert "would" in out, (args, out)
    assert "deleted" in ws.ok("prune").out  # the real run says what it did
