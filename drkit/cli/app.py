"""The root command group, shared options, and the error-to-exit-code mapping."""

from __future__ import annotations

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
  7 partial failure                8 storage unreachable/full
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


@click.group(
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
    from drkit.schedule import parse_duration

    try:
        retry_seconds = parse_duration(retry_lock)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--retry-lock") from None
    ctx.obj = CliState(config_path=config_path, env=env, debug=debug, quiet=quiet, log_format=log_format, retry_lock=retry_seconds)


def _print_error(exc: DrkitError) -> None:
    from drkit.redact import redact

    click.echo(f"error: {redact(exc.message)}", err=True)
    if exc.hint:
        click.echo(f"hint: {redact(exc.hint)}", err=True)


def run_cli(entry: click.Command, args: list[str] | None = None) -> int:
    """Run the click app; map errors to exit codes. Returns the exit code."""
    debug = "--debug" in (args if args is not None else sys.argv[1:])
    try:
        entry.main(args=args, prog_name="drkit", standalone_mode=False)
        return 0
    except DrkitError as exc:
        if debug:
            log.exception("error")
        _print_error(exc)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    except click.ClickException as exc:
        exc.show()
        return EXIT_USAGE
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug: say so plainly
        from drkit.redact import format_exception, redact

        if debug:  # the traceback, with secrets masked
            click.echo(format_exception(exc), err=True, nl=False)
            return EXIT_INTERNAL
        click.echo(f"error: internal error: {type(exc).__name__}: {redact(exc)}", err=True)
        click.echo("hint: run again with --debug for a traceback, and please report it", err=True)
        return EXIT_INTERNAL


def _sigterm_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # unwinds like Ctrl-C: locks released, temp files removed, exit 130


def main() -> None:
    """Console-script entry point. SIGTERM (systemd stop, the scheduler) acts like Ctrl-C."""
    import signal

    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    sys.exit(run_cli(cli))

