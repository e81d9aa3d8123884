"""``drkit config detect`` and ``drkit config check``."""

from __future__ import annotations

import secrets
from pathlib import Path

import click

from drkit.atomicio import write_atomic
from drkit.cli.app import CliState, cli, pass_state
from drkit.config import DEFAULT_CONFIG_PATH, parse_config
from drkit.errors import ConfigError, DrkitError, Refused, UsageError


@cli.group("config")
def config_group() -> None:
    """Write a config for this node, or check one."""


@config_group.command("detect")
@click.option("--write", is_flag=True, help="Write the config file (and a new passphrase file if none exists).")
@click.option("--path", "path", type=click.Path(dir_okay=False, path_type=Path),
              help="Where --write puts it (default: -c/--config, $DRKIT_CONFIG, /etc/drkit/drkit.yaml).")
@click.option("--force", is_flag=True, help="With --write: replace an existing config file.")
@click.option("--repository", "repository_url", default="/var/backups/drkit", show_default=True, metavar="URL",
              help="repository.url to write (a local path, sftp://... or s3://...).")
@click.option("--kubeconfig", type=click.Path(dir_okay=False, path_type=Path),
              help="Ask this cluster what is installed (default: K3s's /etc/rancher/k3s/k3s.yaml if present).")
@click.option("--no-kube", is_flag=True, help="Do not ask the Kubernetes API; Kubernetes sources come out commented.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("/"), hidden=True,
              help="Inspect a node's files under this directory (testing, or a mounted disk).")
@click.option("--json", "as_json", is_flag=True, help="Print what was detected as JSON instead of the config.")
@pass_state
def detect_cmd(state: CliState, write: bool, path: Path | None, force: bool, repository_url: str,
               kubeconfig: Path | None, no_kube: bool, root: Path, as_json: bool) -> None:
    """Print a config for the K3s node this runs on (or write it with --write).

    Finds the K3s data dir, the datastore kind (SQLite or embedded etcd) and, when
    a kubeconfig is reachable, whether sealed-secrets, Argo CD, cert-manager and
    Longhorn are installed. Never changes the node unless --write is given.

    \b
    Examples:
      drkit config detect                 print what it would write
      drkit config detect --write && drkit init && drkit backup
    """
    from drkit.detect import detect, render_config

    found = detect(root=root, kubeconfig=kubeconfig, use_kube=not no_kube)
    if path is None:
        env_path = state.env.get("DRKIT_CONFIG")
        path = state.config_path or (Path(env_path) if env_path else DEFAULT_CONFIG_PATH)
    password_file = path.parent / "passphrase"
    text = render_config(found, repository_url=repository_url, password_file=password_file)
    detected = parse_config(__import__("yaml").safe_load(text))  # what we write must load
    if as_json:
        state.emit_json({**found.summary(), "config": text})
        return
    if not write:
        click.echo(text, nl=False)
        return
    if not detected.sources:
        raise UsageError(
            "detected no source to back up on this node: not writing a config with 'sources: []'",
            hint="run 'drkit config detect' without --write, uncomment or add sources, and save it yourself",
        )
    if path.exists() and not force:
        raise Refused(f"{path} already exists", hint="review it with 'drkit config check', or pass --force to replace it")
    write_atomic(path, text, parents=True)
    state.say(f"wrote {path}")
    if not password_file.exists():
        write_atomic(password_file, secrets.token_urlsafe(32) + "\n", overwrite=False, parents=True)  # never replace a passphrase
        state.say(f"wrote a new random passphrase to {password_file}: copy it OFF this node now "
                  "(without it no backup can be restored)")
    for note in found.notes:
        state.say(f"note: {note}")
    if found.kube_error:
        state.say(f"note: Kubernetes sources are commented out or guessed: {found.kube_error}")
    state.say("next: drkit init && drkit backup")


@config_group.command("check")
@pass_state
def check_cmd(state: CliState) -> None:
    """Validate the config file: every key, every source, the schedule and metrics
    sections (with the parsers the jobs use), and that a datastore source has the K3s
    token (k3s-node) source beside it. Exit 2 when wrong.

    \b
    Examples:
      drkit config check
      drkit -c /etc/drkit/drkit.yaml config check
    """
    from drkit.metrics import parse_metrics_config
    from drkit.schedule import parse_schedule_config

    cfg = state.config
    if not cfg.sources:
        raise ConfigError("no sources configured: 'drkit backup' would save nothing", key="sources",
                          hint="add sources under 'sources:' (see 'drkit config detect')")
    parse_schedule_config(cfg.raw.schedule)  # ConfigError naming schedule.KEY
    parse_metrics_config(cfg.raw.metrics)
    problems: list[str] = []
    for src in cfg.sources:
        try:
            src.check_run(cfg.sources)
        except DrkitError as exc:
            problems.append(exc.message)
    state.say(f"config {cfg.path}: repository {cfg.repository.url}, {len(cfg.sources)} source(s)")
    for src in cfg.sources:
        state.say(f"  {src.describe()}")
    if problems:
        raise ConfigError(problems[0], key="sources",
                          hint="add a 'type: k3s-node' source: the token must be saved with the datastore")
    state.say("config OK")
