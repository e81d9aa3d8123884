"""The runbook engine: probe, skip what holds, apply, probe again, record.

For each selected step, in order:

1. ``when`` is false -> ``skipped``.
2. The probe (read-only) holds -> ``ok``: nothing is done. This is what makes a second
   run change nothing.
3. ``--dry-run`` -> ``pending``: it would be applied.
4. The actions run in order (``wait-for: command`` repeats with ``retries``/``delay``).
   A failing action fails the step.
5. ``until`` (or the probe) must hold afterwards, tried ``1 + retries`` times, ``delay``
   seconds apart -> ``changed``; otherwise ``failed``. A step with a probe and no
   ``apply`` is a check: it waits the same way and is ``ok`` or ``failed``.

The journal is saved after every step. On a failure the run stops, later steps are
``not-run``, and :class:`~drkit.runbook.errors.StepFailed` carries the step's
``on_failure`` hint; :meth:`Engine.resume` starts again at that step, never before.

Secrets are read (from the environment or a file) only when a step that uses them runs,
reach commands only through the environment or stdin, and are redacted from every
line of output, every journal entry and every error message.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shlex
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Protocol, Sequence

from drkit.errors import DrkitError, Interrupted, Refused, UsageError
from drkit.runbook import journal as J
from drkit.runbook.errors import RunbookError, StepFailed
from drkit.runbook.executor import CommandResult, Executor
from drkit.runbook.journal import Journal, StepRecord, utcnow
from drkit.runbook.model import Runbook
from drkit.runbook.plan import (
    DrkitCmd,
    Plan,
    PlannedAction,
    PlannedCheck,
    PlannedStep,
    RenderFile,
    SameFile,
    ShellCmd,
    UploadFile,
)
from drkit.runbook.template import Secret, redact, render, secret_env_name


class SecretStore:
    """Reads declared secrets on first use: from the environment variable, else the file.

    Raises RunbookError (never showing a value) when neither gives one.
    """

    def __init__(self, rb: Runbook, variables: Mapping[str, str], env: Mapping[str, str]) -> None:
        self.rb = rb
        self.variables = variables
        self.env = env
        self.loaded: dict[str, Secret] = {}

    def get(self, name: str) -> Secret:
        if name in self.loaded:
            return self.loaded[name]
        spec = self.rb.secrets.get(name)
        if spec is None:
            raise RunbookError(f"unknown secret {name!r}", where=self.rb.name)
        value: str | None = None
        if spec.env and self.env.get(spec.env):
            value = self.env[spec.env]
        path: str | None = None
        if value is None and spec.file:
            path = render(spec.file, self.variables, where=f"{self.rb.name}: secrets.{name}.file")
            try:
                value = Path(path).read_text().rstrip("\r\n")
            except FileNotFoundError:
                value = None
            except OSError as exc:
                raise RunbookError(f"cannot read secret {name} from {path}: {exc.strerror}") from None
        if not value:
            where = " or ".join(x for x in (f"environment variable {spec.env}" if spec.env else "",
                                          f"file {path or spec.file}" if spec.file else "") if x)
            raise RunbookError(
                f"secret {name} is not available", where=self.rb.name,
                hint=f"provide it in {where}" + (f" ({spec.description})" if spec.description else ""),
            )
        secret = Secret(name, value)
        self.loaded[name] = secret
        return secret

    def env_for(self, names: frozenset[str] | set[str]) -> dict[str, str]:
        return {secret_env_name(n): self.get(n).reveal() for n in sorted(names)}

    def redact(self, text: str) -> str:
        return redact(text, self.loaded)


class Reporter(Protocol):
    """Where live progress goes (the CLI prints it; tests collect it)."""

    def step_started(self, step: PlannedStep) -> None: ...
    def output(self, step: PlannedStep, line: str) -> None: ...
    def step_finished(self, step: PlannedStep, record: StepRecord) -> None: ...


class NullReporter:
    def step_started(self, step: PlannedStep) -> None:
        pass

    def output(self, step: PlannedStep, line: str) -> None:
        pass

    def step_finished(self, step: PlannedStep, record: StepRecord) -> None:
        pass


@dataclass
class Selection:
    """Which steps run: all, ``--from STEP`` onwards, or ``--only STEP`` (repeatable)."""

    from_step: str | None = None
    only: tuple[str, ...] = ()
    dry_run: bool = False

    def to_dict(self) -> dict[str, object]:
        return {"from": self.from_step, "only": list(self.only), "dry_run": self.dry_run}

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> "Selection":
        only = d.get("only") or ()
        from_step = d.get("from")
        return cls(str(from_step) if from_step else None, tuple(str(s) for s in only) if isinstance(only, (list, tuple)) else (),
                   bool(d.get("dry_run")))

    def indices(self, plan: Plan) -> list[int]:
        if self.from_step and self.only:
            raise UsageError("--from and --only exclude each other")
        if self.only:
            return sorted(plan.step(n).index for n in self.only)
        start = plan.step(self.from_step).index if self.from_step else 0
        return list(range(start, len(plan.steps)))


class _StepFailure(Exception):
    def __init__(self, message: str) -> None:
        self.message = message


@dataclass
class Engine:
    """Runs a :class:`Plan` against executors ("local" and "remote"), recording a journal."""

    plan: Plan
    executors: Mapping[str, Executor]
    secrets: SecretStore
    journal: Journal
    reporter: Reporter = field(default_factory=NullReporter)
    drkit_local: Sequence[str] = (sys.executable, "-m", "drkit")
    """argv prefix of the ``drkit`` action, which always runs on this host (add ``-c CONFIG``)."""
    sleep: Callable[[float], None] = time.sleep

    # -- public ----------------------------------------------------------------------

    def run(self, selection: Selection) -> Journal:
        """Run the selected steps from the first; see module doc. Raises StepFailed."""
        idx = selection.indices(self.plan)
        for i in idx:
            self.journal.record(self.plan.steps[i].name)
        return self._run(idx, selection.dry_run)

    def resume(self) -> Journal:
        """Continue the journal's run at its failed step (never re-running earlier ones)."""
        j = self.journal
        if j.status == "ok":
            raise UsageError(f"run {j.run_id} finished successfully: nothing to resume",
                             hint=f"start a new run with 'drkit runbook run {j.runbook}'")
        selection = Selection.from_dict(j.selection)
        idx = selection.indices(self.plan)
        names = [r.name for r in j.steps]
        start_name = j.failed_step or next((r.name for r in j.steps if r.status in (J.NOT_RUN, J.FAILED)), None)
        if start_name is None or start_name not in names:
            raise UsageError(f"run {j.run_id} has no failed step to resume from")
        start = self.plan.step(start_name).index
        j.resumed.append(utcnow())
        j.status = "running"
        j.finished = None
        return self._run([i for i in idx if i >= start], selection.dry_run)

    # -- the loop ----------------------------------------------------------------------

    def _run(self, indices: list[int], dry_run: bool) -> Journal:
        with _RunbookLock(self.journal):
            return self._run_locked(indices, dry_run)

    def _run_locked(self, indices: list[int], dry_run: bool) -> Journal:
        j = self.journal
        j.failed_step = None
        j.save()
        for i in indices:
            step = self.plan.steps[i]
            rec = j.record(step.name)
            rec.status, rec.message, rec.output_tail, rec.attempts = J.NOT_RUN, "", [], 0
            rec.started, rec.finished = utcnow(), None
            t0 = time.monotonic()
            tail: list[str] = []
            self.reporter.step_started(step)
            try:
                rec.status, rec.message = self._step(step, dry_run, tail, rec)
            except KeyboardInterrupt:
                rec.status, rec.message = J.FAILED, "interrupted"
                rec.finished, rec.output_tail = utcnow(), tail[-J.OUTPUT_TAIL_LINES:]
                j.status, j.failed_step, j.finished = "interrupted", step.name, utcnow()
                j.save()
                raise Interrupted(hint=f"'drkit runbook resume {j.run_id}' continues at step {step.name!r}") from None
            except _StepFailure as f:
                rec.status, rec.message = J.FAILED, self.secrets.redact(f.message)
            except DrkitError as exc:
                rec.status, rec.message = J.FAILED, self.secrets.redact(exc.message)
                if exc.hint:
                    rec.message += f" ({self.secrets.redact(exc.hint)})"
            rec.duration = round(time.monotonic() - t0, 3)
            rec.finished = utcnow()
            rec.output_tail = tail[-J.OUTPUT_TAIL_LINES:]
            if rec.status == J.FAILED:
                j.status = "failed"
                j.failed_step = step.name
                j.finished = utcnow()
                j.save()
                self.reporter.step_finished(step, rec)
                hint = (step.on_failure + "; then " if step.on_failure else "fix the cause, then ")
                hint += f"'drkit runbook resume {j.run_id}' continues at this step"
                raise StepFailed(f"step {step.name!r} failed: {rec.message}", hint=hint)
            j.save()
            self.reporter.step_finished(step, rec)
        j.status = "ok"
        j.finished = utcnow()
        j.save()
        return j

    def _step(self, step: PlannedStep, dry_run: bool, tail: list[str], rec: StepRecord) -> tuple[str, str]:
        if not step.enabled:
            return J.SKIPPED, f"when: {step.when} is false"
        if step.probe is not None:
            rec.attempts += 1
            if self._check(step, step.probe, tail):
                return J.OK, "already holds"
        if dry_run:
            return J.PENDING, "would apply" if step.actions else "does not hold yet (check)"
        if not step.actions:
            assert step.probe is not None
            if self._wait(step, step.probe, tail, rec, step.retries):
                return J.OK, f"holds (after {rec.attempts} checks)"
            raise _StepFailure(f"check did not hold after {rec.attempts} attempt(s): {step.probe.describe()}")
        for action in step.actions:
            self._apply(step, action, tail)
        verify = step.verify
        if verify is None:
            return J.CHANGED, "applied (no probe)"
        rec.attempts = 0
        if self._wait(step, verify, tail, rec, step.retries, first_delay=False):
            return J.CHANGED, "applied; probe holds" + (f" after {rec.attempts} checks" if rec.attempts > 1 else "")
        raise _StepFailure(f"applied, but the probe still does not hold after {rec.attempts} attempt(s): {verify.describe()}")

    # -- pieces ----------------------------------------------------------------------

    def _env(self, step: PlannedStep, secrets: frozenset[str] | set[str] = frozenset()) -> dict[str, str]:
        env = dict(self.plan.env)
        env.update(self.secrets.env_for(secrets))
        return env

    def _exec(self, step: PlannedStep, script: str, tail: list[str], *, secrets: frozenset[str] = frozenset(),
              stdin: bytes | None = None, show: bool = True, where: str | None = None,
              sudo: bool | None = None) -> CommandResult:
        ex = self.executors[where or step.target]

        def out(line: str) -> None:
            line = self.secrets.redact(line)
            tail.append(line)
            if len(tail) > 4 * J.OUTPUT_TAIL_LINES:
                del tail[: len(tail) - J.OUTPUT_TAIL_LINES]
            if show:
                self.reporter.output(step, line)

        return ex.run(script, timeout=step.timeout, sudo=step.sudo if sudo is None else sudo,
                      env=self._env(step, secrets), stdin=stdin, on_output=out)

    def _check(self, step: PlannedStep, check: PlannedCheck, tail: list[str]) -> bool:
        for part in check.parts:
            if isinstance(part, ShellCmd):
                stdin = part.stdin.reveal(lambda n: self.secrets.get(n).reveal()).encode() if part.stdin else None
                res = self._exec(step, part.script, tail, secrets=part.secrets, stdin=stdin, show=False)
            else:
                res = self._same_file(step, part, tail)
            if not res.ok:
                return False
        return True

    def _same_file(self, step: PlannedStep, part: SameFile, tail: list[str]) -> CommandResult:
        if part.src is not None and part.src.is_dir():
            res = CommandResult(0, "", False, 0.0)
            for src, dest in _upload_pairs(part.src, part.dest):
                res = self._same_file(step, SameFile(dest, src=src), tail)
                if not res.ok:
                    break
            return res
        env_extra = {"DRKIT_DEST": part.dest}
        if part.src is not None:
            try:
                digest = _sha256_file(part.src)
            except OSError:
                return CommandResult(1, "", False, 0.0)  # nothing to compare with yet
            script = '[ "$(sha256sum < "$DRKIT_DEST" 2>/dev/null | cut -d" " -f1)" = "$DRKIT_SUM" ]'
            env_extra["DRKIT_SUM"] = digest
            stdin = None
        else:
            assert part.content is not None
            script = 'cmp -s -- - "$DRKIT_DEST"'
            stdin = part.content.reveal(lambda n: self.secrets.get(n).reveal()).encode()
        ex = self.executors[step.target]
        env = self._env(step)
        env.update(env_extra)
        return ex.run(script, timeout=step.timeout, sudo=step.sudo, env=env, stdin=stdin)

    def _wait(self, step: PlannedStep, check: PlannedCheck, tail: list[str], rec: StepRecord,
              retries: int, *, first_delay: bool = True) -> bool:
        tries = retries if first_delay else retries + 1
        for n in range(tries):
            if first_delay or n > 0:
                self.sleep(step.delay)
            rec.attempts += 1
            if self._check(step, check, tail):
                return True
        return False

    def _apply(self, step: PlannedStep, action: PlannedAction, tail: list[str]) -> None:
        if isinstance(action, ShellCmd):
            stdin = action.stdin.reveal(lambda n: self.secrets.get(n).reveal()).encode() if action.stdin else None
            attempts = 1 + (step.retries if action.retry else 0)
            for n in range(attempts):
                if n:
                    self.sleep(step.delay)
                res = self._exec(step, action.script, tail, secrets=action.secrets, stdin=stdin)
                if res.ok:
                    return
            what = "timed out" if res.timed_out else f"exited {res.returncode}"
            extra = f" (tried {attempts} times)" if attempts > 1 else ""
            raise _StepFailure(f"{action.label} {what}{extra}: {_last(tail)}")
        if isinstance(action, DrkitCmd):
            # Always on this host: it holds the repository's keys and drkit's config.
            res = self._exec(step, shlex.join([*self.drkit_local, *action.args]), tail, where="local", sudo=False)
            if not res.ok:
                what = "timed out" if res.timed_out else f"exited {res.returncode}"
                raise _StepFailure(f"drkit {action.args[0]} {what}: {_last(tail)}")
            return
        ex = self.executors[step.target]
        if isinstance(action, UploadFile):
            if not action.src.exists():
                raise _StepFailure(f"local file {action.src} does not exist (an earlier step should have made it)")
            for src, dest in _upload_pairs(action.src, action.dest):
                ex.put_file(src, dest, mode=action.mode, sudo=step.sudo, timeout=step.timeout)
                tail.append(f"uploaded {src} -> {dest}")
            return
        assert isinstance(action, RenderFile)
        data = action.content.reveal(lambda n: self.secrets.get(n).reveal()).encode()
        ex.put_file(data, action.dest, mode=action.mode, sudo=step.sudo, timeout=step.timeout)
        tail.append(f"wrote {action.dest} from {action.source}")


class _RunbookLock:
    """One run of a runbook at a time per state dir (an flock, released by the kernel if we die)."""

    def __init__(self, journal: Journal) -> None:
        self.path = journal.state_dir / f".{journal.runbook}.lock"
        self.runbook = journal.runbook
        self.fd: int | None = None

    def __enter__(self) -> "_RunbookLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise Refused(
                f"runbook {self.runbook} is already running ({holder})",
                hint="wait for it to finish; 'drkit runbook status' shows its progress",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _upload_pairs(src: Path, dest: str) -> list[tuple[Path, str]]:
    """(local file, remote path) for a file, or for every file below a directory."""
    if not src.is_dir():
        return [(src, dest)]
    pairs = []
    for p in sorted(src.rglob("*")):
        if p.is_file() and not p.is_symlink():
            pairs.append((p, dest.rstrip("/") + "/" + p.relative_to(src).as_posix()))
    return pairs


def _last(tail: list[str]) -> str:
    lines = [ln for ln in tail if ln.strip()]
    return " | ".join(lines[-3:]) or "no output"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a local file, hex (the runbook's identity in the journal)."""
    return _sha256_file(path)
