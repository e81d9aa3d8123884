"""The root command group, shared options, and the error-to-exit-code mapping."""

from __future__ import annotations

import importlib
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from drkit import __version__
from drkit.config import Config, Environment, load_config
from drkit.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE, DrkitError

log = logging.getLogger("drkit")

EXIT_CODES_HELP = """\b
Exit codes:
  0 ok          1 internal error   2 usage/config error
  3 no repository                  4 repository locked
  5 wrong passphrase/key           6 damage found
  7 partial failure                8 storage (or restore target) unreachable/full
  9 refused (would overwrite...)  10 already exists
  130 interrupted"""


@dataclass
class CliState:
    """What every command gets: config location, environment, output switches."""

    config_path: Path | None
    env: Environment
    debug: bool = False
    quiet: bool = False
    log_format: str = "text"
    retry_lock: float = 0.0
    """Seconds to keep retrying a repository lock held by another run (--retry-lock)."""
    _config: Config | None = field(default=None, repr=False)

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path, self.env)
            from drkit.redact import protect_config

            protect_config(self._config, self.env)
        return self._config

    @property
    def state_dir(self) -> Path:
        """This machine's drkit state directory (host id, what was seen of repositories)."""
        from drkit.localstate import state_dir

        return state_dir(self.env.vars)

    @property
    def cache_dir(self) -> Path:
        """This machine's drkit cache directory (see :func:`drkit.localstate.cache_dir`)."""
        from drkit.localstate import cache_dir

        return cache_dir(self.env.vars)

    @property
    def interactive(self) -> bool:
        return sys.stderr.isatty() and not self.quiet

    def say(self, text: str = "") -> None:
        """Human output on stdout (suppressed by --quiet)."""
        if not self.quiet:
            click.echo(text)

    def emit_json(self, data: Any) -> None:
        click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


pass_state = click.make_pass_decorator(CliState)


def _configure_logging(debug: bool, fmt: str) -> None:
    from drkit.redact import RedactingFilter, install_log_redaction

    install_log_redaction()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    if fmt == "json":
        from drkit.logfmt import JsonFormatter

        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("drkit")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    root.propagate = False


COMMANDS = {
    "init": "drkit.cli.init_cmd",
    "backup": "drkit.cli.backup_cmd",
    "snapshots": "drkit.cli.snapshots_cmd",
    "restore": "drkit.cli.restore_cmd",
    "verify": "drkit.cli.verify_cmd",
    "rebuild-index": "drkit.cli.verify_cmd",
    "forget": "drkit.cli.forget_cmd",
    "prune": "drkit.cli.forget_cmd",
    "key": "drkit.cli.key_cmd",
    "unlock": "drkit.cli.unlock_cmd",
    "demo": "drkit.cli.demo_cmd",
    "runbook": "drkit.cli.runbook_cmd",
    "schedule": "drkit.cli.schedule_cmd",
    "copy": "drkit.cli.copy_cmd",
    "drill": "drkit.cli.drill_cmd",
    "config": "drkit.cli.config_cmd",
    "upgrade-format": "drkit.cli.upgrade_cmd",
    "repair": "drkit.cli.repair_cmd",
    "ls": "drkit.cli.ls_cmd",
    "diff": "drkit.cli.diff_cmd",
    "find": "drkit.cli.find_cmd",
    "dump": "drkit.cli.dump_cmd",
    "stats": "drkit.cli.stats_cmd",
    "tag": "drkit.cli.tag_cmd",
}
"""Every command, and the module that defines it (registering it on :data:`cli` when
imported)."""


class LazyGroup(click.Group):
    """The root group: a command's module is imported when the command is looked up
    (to run it, or to list it under ``--help``), not at start-up. A backup need not
    load the runbook engine, the scheduler or restore: start-up of any command takes
    about half the time of importing them all."""

    def list_commands(self, ctx: click.Context | None) -> list[str]:
        return sorted(set(self.commands) | set(COMMANDS))

    def get_command(self, ctx: click.Context | None, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            importlib.import_module(COMMANDS[cmd_name])
        return self.commands.get(cmd_name)

    def load_all(self) -> None:
        """Import every command's module (for callers that walk ``commands``)."""
        for name in COMMANDS:
            self.get_command(None, name)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=EXIT_CODES_HELP,
)
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Config file (default: $DRKIT_CONFIG, else /etc/drkit/drkit.yaml).",
)
@click.option("--debug", is_flag=True, help="Verbose logs and a traceback on errors.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars and no chatter; errors still print.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one JSON object per log line (for Loki).",
)
@click.option(
    "--retry-lock",
    metavar="DURATION",
    default="0",
    help="If the repository is locked by another run, keep trying for DURATION (e.g. 30s, 10m, 2h) before exit 4.",
)
@click.version_option(__version__, prog_name="drkit")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, debug: bool, quiet: bool, log_format: str, retry_lock: str) -> None:
    """drkit: disaster recovery for a single-node K3s GitOps platform.

    Backs up what cannot be rebuilt from Git (K3s datastore and token, Longhorn
    volumes, the GitOps repo, sealed-secrets keys, Argo CD and cert-manager state)
    into an encrypted, deduplicated repository on a local disk, SFTP or S3, and
    puts it back during an incident.

    \b
    First steps:
      drkit init                 create the repository named in the config
      drkit backup               snapshot every configured source
      drkit snapshots            list what is stored
      drkit restore latest --source NAME --target /tmp/r
      drkit verify --read-data-subset 10%

    The passphrase comes from DRKIT_PASSWORD, DRKIT_PASSWORD_FILE or
    DRKIT_PASSWORD_COMMAND (or repository.password_file / password_command),
    never from the command line.
    """
    _configure_logging(debug, log_format)
    env = Environment.capture()
    from drkit.redact import register_env

    register_env(env.vars)
    from drkit.units import duration_seconds

    try:
        retry_seconds = duration_seconds(retry_lock)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--retry-lock") from None
    ctx.obj = CliState(config_path=config_path, env=env, debug=debug, quiet=quiet, log_format=log_format, retry_lock=retry_seconds)


_GLOBAL_FLAGS = ("-q", "--quiet", "--debug")
_GLOBAL_WITH_VALUE = ("-c", "--config", "--log-format")


def hoist_global_options(args: list[str]) -> list[str]:
    """Let global options stand anywhere on the line (restic's habit).

    ``-c/--config FILE``, ``-q``, ``--debug`` and ``--log-format F`` given after the
    command move in front of it; ``--json`` given before the command moves behind it
    (each command that prints data takes it). Nothing after ``--`` moves."""
    head: list[str] = []
    rest: list[str] = []
    trailing_json = False
    i = 0
    seen_command = False
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        if arg in _GLOBAL_FLAGS:
            head.append(arg)
        elif arg in _GLOBAL_WITH_VALUE and i + 1 < len(args):
            head.extend(args[i : i + 2])
            i += 1
        elif any(arg.startswith(f"{o}=") for o in _GLOBAL_WITH_VALUE if o.startswith("--")):
            head.append(arg)
        elif arg == "--json" and not seen_command:
            trailing_json = True
        else:
            if not arg.startswith("-"):
                seen_command = True
            rest.append(arg)
        i += 1
    if trailing_json:
        cut = rest.index("--") if "--" in rest else len(rest)
        rest.insert(cut, "--json")
    return head + rest


def _json_errors(args: list[str]) -> bool:
    """True when errors must be JSON: --json, or --log-format json."""
    if "--" in args:
        args = args[: args.index("--")]
    if "--json" in args or "--log-format=json" in args:
        return True
    return any(a == "--log-format" and i + 1 < len(args) and args[i + 1] == "json" for i, a in enumerate(args))


def _print_error(exc: DrkitError, as_json: bool = False) -> None:
    from drkit.redact import redact

    if as_json:
        _print_json_error(redact(exc.message), redact(exc.hint) if exc.hint else None, exc.exit_code, type(exc).__name__)
        return
    click.echo(f"error: {redact(exc.message)}", err=True)
    if exc.hint:
        click.echo(f"hint: {redact(exc.hint)}", err=True)


def _print_json_error(message: str, hint: str | None, code: int, kind: str) -> None:
    """One JSON object on stderr: {"level": "error", "error", "hint", "exit_code", "type"}."""
    doc: dict[str, Any] = {"level": "error", "error": message, "exit_code": code, "type": kind}
    if hint:
        doc["hint"] = hint
    click.echo(json.dumps(doc), err=True)


def run_cli(entry: click.Command, args: list[str] | None = None) -> int:
    """Run the click app; map errors to exit codes. Returns the exit code.

    Global options may stand anywhere (see :func:`hoist_global_options`); under
    ``--json`` or ``--log-format json`` every error is one JSON object on stderr."""
    args = hoist_global_options(list(args if args is not None else sys.argv[1:]))
    debug = "--debug" in args
    as_json = _json_errors(args)
    _storage_retries(stop=False)
    try:
        entry.main(args=args, prog_name="drkit", standalone_mode=False)
        return 0
    except DrkitError as exc:
        if debug:
            log.exception("error")
        _print_error(exc, as_json)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        _storage_retries(stop=True)
        if as_json:
            _print_json_error("interrupted", None, EXIT_INTERRUPTED, "Interrupted")
        else:
            click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    except click.ClickException as exc:
        if as_json:
            _print_json_error(exc.format_message(), "drkit COMMAND --help shows the options", EXIT_USAGE, "UsageError")
        else:
            exc.show()
        return EXIT_USAGE
    except KeyboardInterrupt:
        _storage_retries(stop=True)
        if as_json:
            _print_json_error("interrupted", None, EXIT_INTERRUPTED, "Interrupted")
        else:
            click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug: say so plainly
        from drkit.redact import format_exception, redact

        if debug:  # the traceback, with secrets masked
            click.echo(format_exception(exc), err=True, nl=False)
            return EXIT_INTERNAL
        if as_json:
            _print_json_error(f"internal error: {type(exc).__name__}: {redact(exc)}",
                              "run again with --debug for a traceback, and please report it", EXIT_INTERNAL, "InternalError")
            return EXIT_INTERNAL
        click.echo(f"error: internal error: {type(exc).__name__}: {redact(exc)}", err=True)
        click.echo("hint: run again with --debug for a traceback, and please report it", err=True)
        return EXIT_INTERNAL


def _storage_retries(*, stop: bool) -> None:
    """Make storage retries in every thread give up (*stop*: the command is interrupted,
    so reads retrying in background threads do not keep the process from exiting), or
    allow them again (a command starts; a scheduler or a test runs several in one
    process). Nothing to do while no storage was used (the module is not even loaded)."""
    retry = sys.modules.get("drkit.storage.retry")
    if retry is None:
        return
    if stop:
        retry.stop_retrying()
    else:
        retry.allow_retrying()


def _sigterm_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # unwinds like Ctrl-C: locks released, temp files removed, exit 130


def main() -> None:
    """Console-script entry point. SIGTERM (systemd stop, the scheduler) acts like Ctrl-C."""
    import signal

    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # see drkit/__init__.py
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
        code = run_cli(cli)
    except KeyboardInterrupt:  # between the handlers: still no traceback
        _storage_retries(stop=True)
        sys.stderr.write("interrupted\n")
        code = EXIT_INTERRUPTED
    sys.exit(code)

