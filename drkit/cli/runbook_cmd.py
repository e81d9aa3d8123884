"""``drkit runbook``: list, show, plan, run, resume, status and lint runbooks.

Thin: parse options, find the runbook, build executors, hand over to
:mod:`drkit.runbook.engine`, print progress and the summary.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Callable

import click

from drkit.cli.app import CliState, cli, pass_state
from drkit.config import DEFAULT_CONFIG_PATH, Config
from drkit.errors import UsageError
from drkit.runbook import journal as J
from drkit.runbook.catalog import Catalog, RunbooksConfig, parse_runbooks_config
from drkit.runbook.engine import Engine, Selection, SecretStore, file_sha256
from drkit.runbook.errors import RunbookError
from drkit.runbook.executor import Executor, LocalExecutor, SshExecutor, SshTarget
from drkit.runbook.journal import DEFAULT_STATE_DIR, Journal, StepRecord
from drkit.runbook.model import Runbook, load_runbook
from drkit.runbook.plan import Plan, PlannedStep, make_plan, resolve_variables


# ---- shared plumbing ----------------------------------------------------------------------

def _optional_config(state: CliState) -> Config | None:
    """The config if one is named or the default exists; runbooks work without one."""
    if state.config_path is None and state.env.get("DRKIT_CONFIG") is None and not DEFAULT_CONFIG_PATH.exists():
        return None
    return state.config


def _rb_config(state: CliState) -> RunbooksConfig:
    cfg = _optional_config(state)
    return parse_runbooks_config(cfg.raw.runbooks if cfg is not None else None)


def _common(f: Callable[..., Any]) -> Callable[..., Any]:
    @click.option("--runbooks-dir", "runbooks_dirs", multiple=True, type=click.Path(file_okay=False, path_type=Path),
                  help="Search this directory first (repeatable).")
    @click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
                  help=f"Where run journals are kept (default: runbooks.state_dir, else {DEFAULT_STATE_DIR}).")
    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return f(*args, **kwargs)

    return wrapper


def _catalog(state: CliState, dirs: tuple[Path, ...]) -> tuple[Catalog, RunbooksConfig]:
    rc = _rb_config(state)
    return Catalog.build(dirs, rc), rc


def _state_dir(opt: Path | None, rc: RunbooksConfig) -> Path:
    return opt or rc.state_dir or DEFAULT_STATE_DIR


def _parse_vars(pairs: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise UsageError(f"bad --var {p!r}", hint="write it as --var name=value")
        out[key] = value
    return out


def _from_backup_run(state: CliState, rb: Runbook, overrides: dict[str, str], rc: RunbooksConfig, *,
                     required: bool, say: Callable[[str], None]) -> dict[str, str]:
    """*overrides* plus the variables a runbook takes from one backup run (its
    ``backup_run:`` header), read from the configured repository. Raises Refused for a
    --var or token that contradicts the run; without a config: UsageError if *required*,
    else the overrides unchanged (plan shows the defaults)."""
    spec = rb.backup_run
    if spec is None:
        return overrides
    cfg = _optional_config(state)
    if cfg is None:
        if required:
            raise UsageError(
                f"runbook {rb.name} takes {', '.join(spec.facts) or 'its inputs'} from a backup run, "
                "and no drkit config names the repository",
                hint="pass -c CONFIG (the config whose repository holds the backups)")
        say(f"note: {', '.join(spec.facts)} come from the backup run at run time; shown here: the defaults")
        return overrides
    from drkit.cli.common import open_repository
    from drkit.runbook import run_facts
    from drkit.services.backup_run import resolve_run

    ref = overrides.get(spec.variable) or str(rc.vars.get(spec.variable) or "") \
        or rb.variables[spec.variable].default or "latest"
    run = resolve_run(open_repository(state), ref, require_types=spec.require)
    resolved, notes = run_facts.run_overrides(rb, run, overrides)
    token: str | None = None
    if spec.token_secret is not None:
        try:
            store = SecretStore(rb, resolve_variables(rb, resolved, rc.vars), state.env.vars)
            token = store.get(spec.token_secret).reveal()
        except RunbookError:
            token = None  # not given: the token restored from the run is used
    note = run_facts.check_token(rb, run, token)
    for line in notes + ([note] if note else []):
        say(line)
    return resolved


def _var_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--var", "var_pairs", multiple=True, metavar="K=V", help="Set a variable (repeatable).")(f)
    return f


def _select_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--only", "only", multiple=True, metavar="STEP", help="Run only this step (repeatable).")(f)
    f = click.option("--from", "from_step", metavar="STEP", help="Start at this step (earlier ones are not run).")(f)
    return f


def _ssh_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--known-hosts", type=click.Path(dir_okay=False, path_type=Path),
                     help="known_hosts file for --target (default: runbooks.known_hosts, else ~/.ssh/known_hosts).")(f)
    f = click.option("-i", "--identity", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                     help="SSH private key (default: runbooks.identity, else ssh-agent and ~/.ssh keys).")(f)
    return f


class _Printer:
    """Live progress on stdout: one header per step, its output indented, its result."""

    def __init__(self, state: CliState, total: int) -> None:
        self.state = state
        self.total = total

    def step_started(self, step: PlannedStep) -> None:
        self.state.say(f"[{step.index + 1}/{self.total}] {step.name} ({step.target}{', sudo' if step.sudo else ''})")

    def output(self, step: PlannedStep, line: str) -> None:
        self.state.say(f"    | {line}")

    def step_finished(self, step: PlannedStep, rec: StepRecord) -> None:
        self.state.say(f"    => {rec.status}: {rec.message} ({rec.duration:.1f}s)")


def _summary(state: CliState, j: Journal) -> None:
    c = j.counts()
    parts = [f"{c[s]} {s}" for s in J.STATUSES if c.get(s)]
    if j.status == "ok" and c[J.CHANGED] == 0 and c[J.PENDING] == 0:
        state.say(f"nothing changed: every step already held ({', '.join(parts)}); run {j.run_id}")
    else:
        state.say(f"run {j.run_id} {j.status}: {', '.join(parts)}")
    state.say(f"journal: {j.path}")


def _executors(plan: Plan, indices: list[int], target: str | None, identity: Path | None,
               known_hosts: Path | None, state: CliState) -> dict[str, Executor]:
    local = LocalExecutor()
    execs: dict[str, Executor] = {"local": local, "remote": local}
    needs_remote = any(plan.steps[i].target == "remote" and plan.steps[i].enabled for i in indices)
    if target is not None and needs_remote:
        kh = known_hosts or Path.home() / ".ssh" / "known_hosts"
        execs["remote"] = SshExecutor(SshTarget.parse(target), known_hosts=kh, key_file=identity)
    elif target is None and needs_remote:
        state.say("no --target: steps for the node run on this host")
    return execs


def _drkit_prefix(state: CliState) -> list[str]:
    prefix = [sys.executable, "-m", "drkit"]
    cfg = _optional_config(state)
    if cfg is not None and cfg.path is not None:
        prefix += ["-c", str(cfg.path)]
    return prefix


def _execute(state: CliState, engine: Engine, action: Callable[[], Journal]) -> None:
    try:
        j = action()
    finally:
        for ex in {id(e): e for e in engine.executors.values()}.values():
            ex.close()
    _summary(state, j)


# ---- commands ----------------------------------------------------------------------------

@cli.group("runbook")
def runbook_group() -> None:
    """Replayable runbooks: rebuild the node, restore the datastore, a volume, Git.

    \b
    drkit runbook list                       what is available
    drkit runbook plan rebuild-node --var k3s_version=v1.31.4+k3s1
    drkit runbook run rebuild-node --target root@node1 --dry-run
    drkit runbook run rebuild-node --target root@node1
    drkit runbook resume                     continue the last run at its failed step
    drkit runbook status                     what happened
    """


def _first_sentence(text: str, limit: int = 110) -> str:
    flat = " ".join(text.split())
    cut = flat.find(". ")
    first = flat[: cut + 1] if cut != -1 else flat
    return first if len(first) <= limit else first[: limit - 3].rstrip() + "..."


@runbook_group.command("list")
@_common
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def list_cmd(state: CliState, runbooks_dirs: tuple[Path, ...], state_dir: Path | None, as_json: bool) -> None:
    """List the runbooks found (and where).

    \b
    Examples:
      drkit runbook list
      drkit runbook list --json
    """
    cat, _ = _catalog(state, runbooks_dirs)
    rows = []
    for name, path in cat.files().items():
        try:
            rb = load_runbook(path)
            desc = _first_sentence(rb.description)
        except RunbookError as exc:
            desc = f"INVALID: {exc.message}"
        rows.append({"name": name, "path": str(path), "description": desc})
    if as_json:
        state.emit_json(rows)
        return
    if not rows:
        state.say("no runbooks found in: " + ", ".join(str(d) for d in cat.dirs))
    width = max((len(r["name"]) for r in rows), default=0)
    for r in rows:
        state.say(f"{r['name']:<{width}}  {r['description']}")


@runbook_group.command("show")
@_common
@click.argument("name")
@pass_state
def show_cmd(state: CliState, runbooks_dirs: tuple[Path, ...], state_dir: Path | None, name: str) -> None:
    """Show a runbook's header, variables, secrets and steps.

    \b
    Examples:
      drkit runbook show rebuild-node
    """
    cat, _ = _catalog(state, runbooks_dirs)
    rb = cat.load(name)
    state.say(f"{rb.name}  ({rb.path})")
    when = "\n".join("  " + line.strip() for line in rb.when_to_use.strip().splitlines())
    state.say(f"\n{rb.description.strip()}\n\nWhen to use:\n{when}")
    if rb.needs:
        state.say("\nNeeds:")
        for n in rb.needs:
            state.say(f"  - {n}")
    if rb.variables:
        state.say("\nVariables:")
        for k, v in rb.variables.items():
            extra = f"  (one of: {', '.join(v.choices)})" if v.choices else ""
            dflt = "(required)" if v.default is None else repr(v.default)
            state.say(f"  {k} = {dflt}{extra}" + (f"\n      {v.description}" if v.description else ""))
    if rb.secrets:
        state.say("\nSecrets (read at run time, never stored):")
        for k, sec in rb.secrets.items():
            src = " or ".join(x for x in (f"${sec.env}" if sec.env else "", f"file {sec.file}" if sec.file else "") if x)
            state.say(f"  {k}: from {src}" + (f" - {sec.description}" if sec.description else ""))
    state.say("\nSteps:")
    for i, s in enumerate(rb.steps, 1):
        when = f"  [when {s.when}]" if s.when else ""
        state.say(f"  {i:2}. {s.name}{when}" + (f": {s.description.strip().splitlines()[0]}" if s.description else ""))


@runbook_group.command("plan")
@_common
@_var_options
@_select_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.argument("name")
@pass_state
def plan_cmd(state: CliState, runbooks_dirs: tuple[Path, ...], state_dir: Path | None, var_pairs: tuple[str, ...],
             from_step: str | None, only: tuple[str, ...], as_json: bool, name: str) -> None:
    """Print the resolved steps; changes nothing (no probes, no connections to the node).

    A runbook with a ``backup_run:`` header reads that run's facts from the configured
    repository (read-only). Fails on an unknown variable, secret, action or step name,
    and on a --var that contradicts the backup run.

    \b
    Examples:
      drkit -c CONFIG runbook plan rebuild-node --var k3s_version=v1.31.4+k3s1
    """
    cat, rc = _catalog(state, runbooks_dirs)
    rb = cat.load(name)
    overrides = _from_backup_run(state, rb, _parse_vars(var_pairs), rc, required=False,
                                 say=lambda line: click.echo(line, err=True))
    plan = make_plan(rb, overrides, rc.vars)
    indices = Selection(from_step, only).indices(plan)
    if as_json:
        state.emit_json({"runbook": rb.name, "path": str(rb.path), "variables": plan.variables, "env": plan.env,
                         "steps": [plan.steps[i].to_dict() for i in indices]})
        return
    state.say(f"plan: {rb.name} ({rb.path})")
    state.say("variables:")
    for k, v in plan.variables.items():
        state.say(f"  {k} = {v!r}")
    for i in indices:
        s = plan.steps[i]
        state.say(f"\n[{i + 1}/{len(plan.steps)}] {s.name}  target={s.target} sudo={'yes' if s.sudo else 'no'} timeout={s.timeout:g}s")
        if s.description:
            state.say(f"  # {s.description.splitlines()[0]}")
        if s.when:
            state.say(f"  when:  {s.when}  -> {'run' if s.enabled else 'SKIP'}")
        if s.probe:
            state.say(f"  probe: {s.probe.describe()}")
        for a in s.actions:
            state.say(f"  apply: {a.describe()}")
        if s.until:
            state.say(f"  until: {s.until.describe()}")
        if s.retries:
            state.say(f"  retries: {s.retries} every {s.delay:g}s")
        if s.on_failure:
            state.say(f"  on failure: {s.on_failure}")


@runbook_group.command("run")
@_common
@_var_options
@_select_options
@_ssh_options
@click.option("--target", metavar="USER@HOST[:PORT]", help="The node, over SSH (default: this host).")
@click.option("--dry-run", is_flag=True, help="Probe only: show what would change, change nothing.")
@click.argument("name")
@pass_state
def run_cmd(state: CliState, runbooks_dirs: tuple[Path, ...], state_dir: Path | None, var_pairs: tuple[str, ...],
            from_step: str | None, only: tuple[str, ...], identity: Path | None, known_hosts: Path | None,
            target: str | None, dry_run: bool, name: str) -> None:
    """Run a runbook: probe each step, apply what does not hold, record a journal.

    \b
    Examples:
      drkit runbook run rebuild-node --target root@node1
    """
    cat, rc = _catalog(state, runbooks_dirs)
    rb = cat.load(name)
    overrides = _from_backup_run(state, rb, _parse_vars(var_pairs), rc, required=True, say=state.say)
    plan = make_plan(rb, overrides, rc.vars)
    selection = Selection(from_step, only, dry_run)
    indices = selection.indices(plan)
    identity = identity or rc.identity
    known_hosts = known_hosts or rc.known_hosts
    journal = Journal(
        run_id=Journal.new_run_id(rb.name),
        runbook=rb.name,
        runbook_path=str(rb.path),
        runbook_sha256=file_sha256(rb.path) if rb.path else "",
        target=target or "local",
        connection={"target": target, "identity": str(identity) if identity else None,
                    "known_hosts": str(known_hosts) if known_hosts else None},
        variables=plan.variables,
        overrides=overrides,
        selection=selection.to_dict(),
        state_dir=_state_dir(state_dir, rc),
    )
    execs = _executors(plan, indices, target, identity, known_hosts, state)
    engine = Engine(plan, execs, SecretStore(rb, plan.variables, state.env.vars), journal,
                    _Printer(state, len(plan.steps)), drkit_local=_drkit_prefix(state))
    state.say(f"run {journal.run_id}: {rb.name} on {target or 'this host'}" + (" (dry run)" if dry_run else ""))
    _execute(state, engine, lambda: engine.run(selection))


def _load_journal(state_dir: Path, run_id: str | None) -> Journal:
    return Journal.load(state_dir, run_id) if run_id else Journal.latest(state_dir)


@runbook_group.command("resume")
@_common
@_ssh_options
@click.argument("run_id", required=False)
@pass_state
def resume_cmd(state: CliState, runbooks_dirs: tuple[Path, ...], state_dir: Path | None, identity: Path | None,
               known_hosts: Path | None, run_id: str | None) -> None:
    """Continue a failed run (default: the latest) at its failed step, not before.

    Uses the run's runbook file, variables and target; secrets are read again.

    \b
    Examples:
      drkit runbook resume
      drkit runbook resume RUN_ID
    """
    _, rc = _catalog(state, runbooks_dirs)
    j = _load_journal(_state_dir(state_dir, rc), run_id)
    path = Path(j.runbook_path)
    rb = load_runbook(path)
    if j.runbook_sha256 and file_sha256(path) != j.runbook_sha256:
        state.say(f"note: {path} changed since run {j.run_id} started; using the current file")
    plan = make_plan(rb, j.overrides, rc.vars)
    if plan.variables != j.variables:
        raise UsageError(
            f"the variables of run {j.run_id} no longer resolve to the same values",
            hint="the runbook's defaults or runbooks.vars changed; start a new run with 'drkit runbook run'",
        )
    selection = Selection.from_dict(j.selection)
    conn = j.connection
    saved_identity, saved_known_hosts = conn.get("identity"), conn.get("known_hosts")
    identity = identity or (Path(saved_identity) if saved_identity else rc.identity)
    known_hosts = known_hosts or (Path(saved_known_hosts) if saved_known_hosts else rc.known_hosts)
    execs = _executors(plan, selection.indices(plan), conn.get("target"), identity, known_hosts, state)
    engine = Engine(plan, execs, SecretStore(rb, plan.variables, state.env.vars), j,
                    _Printer(state, len(plan.steps)), drkit_local=_drkit_prefix(state))
    state.say(f"resuming run {j.run_id} ({j.runbook}) at step {j.failed_step!r}")
    _execute(state, engine, engine.resume)


@runbook_group.command("status")
@_common
@click.option("--json", "as_json", is_flag=True, help="The journal as JSON.")
@click.argument("run_id", required=False)
@pass_state
def status_cmd(state: CliState, runbooks_dirs: tuple[Path, ...], state_dir: Path | None, as_json: bool,
               run_id: str | None) -> None:
    """Show a run's steps (default: the latest run) and the recent runs.

    \b
    Examples:
      drkit runbook status
      drkit runbook status --json
    """
    _, rc = _catalog(state, runbooks_dirs)
    sd = _state_dir(state_dir, rc)
    j = _load_journal(sd, run_id)
    if as_json:
        state.emit_json(j.to_dict())
        return
    state.say(f"run {j.run_id}: {j.runbook} on {j.target}: {j.status}")
    state.say(f"started {j.started}" + (f", finished {j.finished}" if j.finished else "")
              + (f", resumed {len(j.resumed)}x" if j.resumed else ""))
    for r in j.steps:
        state.say(f"  {r.status:<8} {r.name:<32} {r.duration:7.1f}s  {r.message}")
        if r.status == J.FAILED:
            for line in r.output_tail[-10:]:
                state.say(f"           | {line}")
    if j.failed_step:
        state.say(f"resume with: drkit runbook resume {j.run_id}")
    if not run_id:
        runs = Journal.list_runs(sd)
        if len(runs) > 1:
            state.say("\nearlier runs: " + ", ".join(runs[-6:-1][::-1]))


@runbook_group.command("lint")
@_common
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@pass_state
def lint_cmd(state: CliState, runbooks_dirs: tuple[Path, ...], state_dir: Path | None, files: tuple[Path, ...]) -> None:
    """Validate runbooks (default: every one found) against the schema, and plan them
    with their defaults: unknown variables, secrets, filters or actions are errors.

    \b
    Examples:
      drkit runbook lint
      drkit runbook lint runbooks/my-rebuild.yaml
    """
    cat, rc = _catalog(state, runbooks_dirs)
    paths = list(files) or list(cat.files().values())
    if not paths:
        raise UsageError("no runbooks to lint", hint="searched " + ", ".join(str(d) for d in cat.dirs))
    bad = 0
    for p in paths:
        try:
            rb = load_runbook(p)
            required = {k: f"<{k}>" for k, v in rb.variables.items() if v.default is None}
            make_plan(rb, required, rc.vars)
            state.say(f"ok      {p}")
        except RunbookError as exc:
            bad += 1
            click.echo(f"invalid {exc.message}", err=True)
    if bad:
        raise RunbookError(f"{bad} of {len(paths)} runbook(s) invalid")
