"""From a validated runbook and variable values to resolved steps (``drkit runbook plan``).

Planning touches nothing: it resolves variables (defaults < config ``runbooks.vars`` <
``--var``), evaluates ``when`` conditions, and renders every command, path and check.
An unknown variable, secret or filter, a bad ``when``, or a missing template file is a
:class:`~drkit.runbook.errors.RunbookError` naming the runbook, step and key.

Built-in checks and actions become ordinary shell commands here (``kubectl get``,
``kubectl wait``, ``test -e`` ...), so what ``plan`` shows is what runs. The exceptions
are ``upload``/``template`` (files are copied by the executor) and ``drkit`` (a drkit
subcommand, run where the step's target is).
"""

from __future__ import annotations

import ast
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Union

from drkit.runbook.errors import RunbookError
from drkit.runbook.model import (
    Check,
    CommandCheck,
    DrkitAction,
    KubeCheck,
    KubeField,
    PathCheck,
    Runbook,
    ShellAction,
    Step,
    TemplateAction,
    UploadAction,
    WaitForAction,
)
from drkit.runbook.template import SecretMode, parse_refs, render

q = shlex.quote


# ---- resolved pieces ------------------------------------------------------------------

@dataclass(frozen=True)
class Text:
    """Text whose secrets are filled in only at execution time (``content`` mode)."""

    raw: str
    variables: Mapping[str, str] = field(repr=False, compare=False)
    where: str
    secrets: frozenset[str]
    secret_names: frozenset[str] = field(repr=False, compare=False)

    def preview(self) -> str:
        return render(self.raw, self.variables, where=self.where, mode=SecretMode.CONTENT, secret_names=self.secret_names)

    def reveal(self, get_secret: Any) -> str:
        return render(self.raw, self.variables, where=self.where, mode=SecretMode.CONTENT,
                      secret_names=self.secret_names, reveal=get_secret)


@dataclass(frozen=True)
class ShellCmd:
    """A shell script (secrets appear only as ``"${DRKIT_SECRET_X}"``)."""

    script: str
    secrets: frozenset[str] = frozenset()
    stdin: Text | None = None
    retry: bool = False
    """wait-for command: run again (step retries/delay) until it succeeds."""
    label: str = "shell"

    def describe(self) -> str:
        extra = " (stdin: template)" if self.stdin is not None else ""
        return f"{self.label}: {self.script}{extra}"


@dataclass(frozen=True)
class DrkitCmd:
    args: tuple[str, ...]

    def describe(self) -> str:
        return "drkit (on this host): drkit " + shlex.join(self.args)


@dataclass(frozen=True)
class UploadFile:
    src: Path
    dest: str
    mode: int

    def describe(self) -> str:
        return f"upload: {self.src} -> {self.dest} (mode {self.mode:04o})"


@dataclass(frozen=True)
class RenderFile:
    content: Text
    dest: str
    mode: int
    source: str

    def describe(self) -> str:
        return f"template: {self.source} -> {self.dest} (mode {self.mode:04o})"


PlannedAction = Union[ShellCmd, DrkitCmd, UploadFile, RenderFile]


@dataclass(frozen=True)
class SameFile:
    """Check part: *dest* on the target has exactly the bytes of a local file or a rendered text."""

    dest: str
    src: Path | None = None
    content: Text | None = None

    def describe(self) -> str:
        return f"{self.dest} has the content of {self.src if self.src else 'the rendered template'}"


CheckPart = Union[ShellCmd, SameFile]


@dataclass(frozen=True)
class PlannedCheck:
    """A read-only check: holds when every part holds."""

    parts: tuple[CheckPart, ...]

    def describe(self) -> str:
        return " && ".join(p.script if isinstance(p, ShellCmd) else f"[{p.describe()}]" for p in self.parts)

    @property
    def secrets(self) -> frozenset[str]:
        out: set[str] = set()
        for p in self.parts:
            if isinstance(p, ShellCmd):
                out |= p.secrets
                if p.stdin:
                    out |= p.stdin.secrets
            elif p.content is not None:
                out |= p.content.secrets
        return frozenset(out)


@dataclass(frozen=True)
class PlannedStep:
    index: int
    name: str
    description: str
    target: str
    sudo: bool
    timeout: float
    when: str | None
    enabled: bool
    probe: PlannedCheck | None
    actions: tuple[PlannedAction, ...]
    until: PlannedCheck | None
    retries: int
    delay: float
    on_failure: str | None

    @property
    def verify(self) -> PlannedCheck | None:
        """What must hold after apply: ``until`` if given, else the probe."""
        return self.until or self.probe

    @property
    def secrets(self) -> frozenset[str]:
        out: set[str] = set()
        for c in (self.probe, self.until):
            if c is not None:
                out |= c.secrets
        for a in self.actions:
            if isinstance(a, ShellCmd):
                out |= a.secrets | (a.stdin.secrets if a.stdin else frozenset())
            elif isinstance(a, RenderFile):
                out |= a.content.secrets
        return frozenset(out)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "target": self.target,
            "sudo": self.sudo,
            "when": self.when,
            "enabled": self.enabled,
            "probe": self.probe.describe() if self.probe else None,
            "apply": [a.describe() for a in self.actions],
            "until": self.until.describe() if self.until else None,
            "retries": self.retries,
            "delay": self.delay,
            "timeout": self.timeout,
            "on_failure": self.on_failure,
        }


@dataclass(frozen=True)
class Plan:
    runbook: Runbook
    variables: dict[str, str]
    env: dict[str, str]
    steps: tuple[PlannedStep, ...]

    def step(self, name: str) -> PlannedStep:
        for s in self.steps:
            if s.name == name:
                return s
        raise RunbookError(
            f"no step named {name!r} in runbook {self.runbook.name!r}",
            hint="steps: " + ", ".join(s.name for s in self.steps),
        )


# ---- variables ------------------------------------------------------------------------

def resolve_variables(
    rb: Runbook, overrides: Mapping[str, str] | None = None, config_vars: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """Values of every declared variable, templates among them resolved.

    Precedence: default < *config_vars* (only names the runbook declares) < *overrides*.
    Raises RunbookError for an override of an undeclared variable, a variable without a
    value, a cycle, an unknown reference, or a value outside ``choices``.
    """
    label = rb.name
    overrides = dict(overrides or {})
    for key in overrides:
        if key not in rb.variables:
            raise RunbookError(
                f"unknown variable {key!r}", where=label,
                hint="declared: " + (", ".join(sorted(rb.variables)) or "none"),
            )
    raw: dict[str, str | None] = {k: v.default for k, v in rb.variables.items()}
    for key, value in (config_vars or {}).items():
        if key in raw:
            raw[key] = "true" if value is True else "false" if value is False else str(value)
    raw.update(overrides)
    missing = [k for k, v in raw.items() if v is None]
    if missing:
        raise RunbookError(
            "no value for variable(s) " + ", ".join(missing), where=label,
            hint="pass --var " + missing[0] + "=VALUE (or set runbooks.vars in the config)",
        )
    done: dict[str, str] = {}

    def resolve(name: str, stack: tuple[str, ...]) -> str:
        if name in done:
            return done[name]
        text = raw[name]
        assert text is not None
        where = f"{label}: variables.{name}"
        for ref in parse_refs(text, where):
            if ref.secret:
                raise RunbookError("a secret cannot be part of a variable", where=where,
                                   hint="use {{ secrets.NAME }} directly in the command or template")
            if ref.name not in raw:
                raise RunbookError(f"unknown variable {ref.name!r}", where=where)
            if ref.name in stack or ref.name == name:
                raise RunbookError("variables refer to each other in a cycle: " + " -> ".join(stack + (name, ref.name)), where=where)
            resolve(ref.name, stack + (name,))
        value = render(text, done, where=where)
        done[name] = value
        return value

    for name in raw:
        resolve(name, ())
    for name, spec in rb.variables.items():
        if spec.choices is not None and done[name] not in spec.choices:
            raise RunbookError(
                f"variable {name}={done[name]!r} is not one of: " + ", ".join(spec.choices), where=label
            )
    return {k: done[k] for k in rb.variables}


# ---- when -----------------------------------------------------------------------------

_FALSY = {"", "false", "no", "0", "off"}


def eval_when(expr: str, variables: Mapping[str, str], where: str) -> bool:
    """Evaluate a ``when`` expression: names, string/number literals, ``true``/``false``,
    ``==``, ``!=``, ``in``, ``not in``, ``and``, ``or``, ``not``, parentheses and lists.

    A bare variable is true unless it is '', 'false', 'no', '0' or 'off'. Raises
    RunbookError for anything else (no calls, no attributes) or an unknown variable.
    """
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError:
        raise RunbookError(f"cannot parse when: {expr!r}", where=where,
                           hint="e.g. datastore == 'sqlite' and install_mode != 'airgap'") from None

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float)) and not isinstance(node.value, bool):
            return str(node.value)
        if isinstance(node, ast.Name):
            if node.id in ("true", "false"):
                return node.id
            if node.id not in variables:
                raise RunbookError(f"unknown variable {node.id!r} in when: {expr!r}", where=where)
            return variables[node.id]
        if isinstance(node, (ast.List, ast.Tuple)):
            return [value(e) for e in node.elts]
        if isinstance(node, ast.BoolOp):
            results = (truth(v) for v in node.values)
            return "true" if (all(results) if isinstance(node.op, ast.And) else any(results)) else "false"
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return "false" if truth(node.operand) else "true"
        if isinstance(node, ast.Compare):
            left = value(node.left)
            for op, comp in zip(node.ops, node.comparators, strict=True):
                right = value(comp)
                if isinstance(op, ast.Eq):
                    ok = left == right
                elif isinstance(op, ast.NotEq):
                    ok = left != right
                elif isinstance(op, (ast.In, ast.NotIn)):
                    if not isinstance(right, list):
                        raise RunbookError(f"'in' needs a list, e.g. x in ['a', 'b']: {expr!r}", where=where)
                    ok = (left in right) == isinstance(op, ast.In)
                else:
                    raise RunbookError(f"unsupported comparison in when: {expr!r}", where=where,
                                       hint="use ==, !=, in, not in")
                if not ok:
                    return "false"
                left = right
            return "true"
        raise RunbookError(f"unsupported expression in when: {expr!r}", where=where,
                           hint="names, 'strings', ==, !=, in, and, or, not, ( )")

    def truth(node: ast.AST) -> bool:
        v = value(node)
        if isinstance(v, list):
            return bool(v)
        return v.strip().lower() not in _FALSY

    return truth(tree.body)


# ---- checks and actions -----------------------------------------------------------------

class _Renderer:
    def __init__(self, rb: Runbook, variables: Mapping[str, str], where: str) -> None:
        self.rb = rb
        self.vars = variables
        self.where = where
        self.secret_names = frozenset(rb.secrets)

    def plain(self, text: str, key: str) -> str:
        return render(text, self.vars, where=f"{self.where}.{key}", mode=SecretMode.FORBID, secret_names=self.secret_names)

    def shell(self, text: str, key: str, *, stdin: str | None = None, retry: bool = False, label: str = "shell") -> ShellCmd:
        where = f"{self.where}.{key}"
        script = render(text, self.vars, where=where, mode=SecretMode.SHELL, secret_names=self.secret_names)
        secrets = frozenset(r.name for r in parse_refs(text, where) if r.secret)
        return ShellCmd(script, secrets, self.text(stdin, f"{key}.stdin") if stdin is not None else None, retry, label)

    def text(self, raw: str, key: str) -> Text:
        where = f"{self.where}.{key}"
        refs = parse_refs(raw, where)
        t = Text(raw, self.vars, where, frozenset(r.name for r in refs if r.secret), self.secret_names)
        t.preview()  # unknown names fail now, at plan time
        return t


def _kube_get(r: _Renderer, k: KubeField, key: str) -> str:
    ns = f" -n {q(r.plain(k.namespace, key + '.namespace'))}" if k.namespace else ""
    res = q(r.plain(k.resource, key + ".resource"))
    if k.condition is not None:
        jp = '{.status.conditions[?(@.type=="' + r.plain(k.condition, key + ".condition") + '")].status}'
        want = "True"
    elif k.jsonpath is not None:
        jp = r.plain(k.jsonpath, key + ".jsonpath")
        want = r.plain(k.value or "", key + ".value")
    else:
        return f"kubectl get {res}{ns} -o name >/dev/null"
    return f'[ "$(kubectl get {res}{ns} -o jsonpath={q(jp)})" = {q(want)} ]'


def _check(r: _Renderer, c: Check, key: str) -> PlannedCheck:
    if isinstance(c, CommandCheck):
        return PlannedCheck((r.shell(c.command, key),))
    if isinstance(c, PathCheck):
        p = q(r.plain(c.path, key + ".path"))
        if c.absent:
            return PlannedCheck((ShellCmd(f"[ ! -e {p} ]", label="check"),))
        script = f"[ -e {p} ]"
        if c.contains is not None:
            script += f" && grep -qF -- {q(r.plain(c.contains, key + '.contains'))} {p}"
        if c.sha256 is not None:
            script += f" && [ \"$(sha256sum < {p} | cut -d' ' -f1)\" = {c.sha256} ]"
        return PlannedCheck((ShellCmd(script, label="check"),))
    assert isinstance(c, KubeCheck)
    return PlannedCheck((ShellCmd(_kube_get(r, c.kube, key + ".kube"), label="check"),))


def _action(r: _Renderer, a: Any, key: str, rb: Runbook) -> PlannedAction:
    if isinstance(a, ShellAction):
        return r.shell(a.shell, key, stdin=a.stdin)
    if isinstance(a, DrkitAction):
        if isinstance(a.drkit, str):
            # rendered first, then split: a variable may hold several arguments
            args = tuple(shlex.split(r.plain(a.drkit, key + ".drkit")))
        else:
            args = tuple(r.plain(x, key + ".drkit") for x in a.drkit)
        if not args:
            raise RunbookError("drkit needs a subcommand, e.g. 'restore latest --source db --target /x'", where=f"{r.where}.{key}")
        return DrkitCmd(args)
    if isinstance(a, WaitForAction):
        w = a.wait_for
        if w.command is not None:
            return r.shell(w.command, key + ".wait-for.command", retry=True, label="wait-for")
        k = w.kube
        assert k is not None
        kk = key + ".wait-for.kube"
        ns = f" -n {q(r.plain(k.namespace, kk + '.namespace'))}" if k.namespace else ""
        if k.condition is not None:
            cond = "condition=" + r.plain(k.condition, kk + ".condition")
        else:
            cond = "jsonpath=" + r.plain(k.jsonpath or "", kk + ".jsonpath") + "=" + r.plain(k.value or "", kk + ".value")
        res = q(r.plain(k.resource, kk + ".resource"))
        return ShellCmd(f"kubectl wait --for={q(cond)} {res}{ns} --timeout={k.timeout}s", label="wait-for")
    if isinstance(a, UploadAction):
        src = Path(r.plain(a.upload.src, key + ".upload.src"))
        if not src.is_absolute():
            src = rb.base_dir / src
        return UploadFile(src, r.plain(a.upload.dest, key + ".upload.dest"), a.upload.mode)
    assert isinstance(a, TemplateAction)
    t = a.template
    if t.src is not None:
        src_rel = r.plain(t.src, key + ".template.src")
        src = Path(src_rel) if Path(src_rel).is_absolute() else rb.base_dir / src_rel
        try:
            raw = src.read_text()
        except OSError as exc:
            raise RunbookError(f"template file {src} cannot be read: {exc.strerror}", where=f"{r.where}.{key}.template.src") from None
        source = str(src_rel)
    else:
        raw = t.content or ""
        source = "inline content"
    return RenderFile(r.text(raw, key + ".template"), r.plain(t.dest, key + ".template.dest"), t.mode, source)


def _auto_probe(actions: tuple[PlannedAction, ...]) -> PlannedCheck | None:
    """For steps made only of upload/template: 'every destination already has that content'."""
    if not actions or not all(isinstance(a, (UploadFile, RenderFile)) for a in actions):
        return None
    parts: list[CheckPart] = []
    for a in actions:
        if isinstance(a, UploadFile):
            parts.append(SameFile(a.dest, src=a.src))
        else:
            assert isinstance(a, RenderFile)
            parts.append(SameFile(a.dest, content=a.content))
    return PlannedCheck(tuple(parts))


def plan_step(rb: Runbook, step: Step, index: int, variables: Mapping[str, str]) -> PlannedStep:
    label = str(rb.path) if rb.path else rb.name
    r = _Renderer(rb, variables, f"{label}: step {step.name!r}")
    enabled = True
    if step.when is not None:
        enabled = eval_when(step.when, variables, f"{r.where}.when")
    actions = tuple(_action(r, a, f"apply[{i}]", rb) for i, a in enumerate(step.apply))
    probe = _check(r, step.probe, "probe") if step.probe is not None else _auto_probe(actions)
    until = _check(r, step.until, "until") if step.until is not None else None
    def number(value: float | int | str | None, key: str, default: float) -> float:
        if value is None:
            return default
        if isinstance(value, str):
            text = render(value, variables, where=f"{r.where}.{key}")
            try:
                value = float(text)
            except ValueError:
                raise RunbookError(f"{key} must be a number, got {text!r}", where=r.where) from None
        if value < 0 or (key == "retries" and int(value) != value) or (key == "timeout" and value == 0):
            raise RunbookError(f"bad {key}: {value!r}", where=r.where)
        return float(value)

    return PlannedStep(
        index=index,
        name=step.name,
        description=step.description.strip(),
        target=step.target or rb.defaults.target,
        sudo=rb.defaults.sudo if step.sudo is None else step.sudo,
        timeout=number(step.timeout, "timeout", rb.defaults.timeout),
        when=step.when,
        enabled=enabled,
        probe=probe,
        actions=actions,
        until=until,
        retries=int(number(step.retries, "retries", 0)),
        delay=number(step.delay, "delay", 5.0),
        on_failure=render(step.on_failure, variables, where=f"{r.where}.on_failure") if step.on_failure else None,
    )


def make_plan(
    rb: Runbook, overrides: Mapping[str, str] | None = None, config_vars: Mapping[str, Any] | None = None
) -> Plan:
    """Resolve *rb* completely (see module doc). Pure: reads only template files."""
    variables = resolve_variables(rb, overrides, config_vars)
    label = str(rb.path) if rb.path else rb.name
    env = {k: render(v, variables, where=f"{label}: env.{k}") for k, v in rb.env.items()}
    steps = tuple(plan_step(rb, s, i, variables) for i, s in enumerate(rb.steps))
    return Plan(rb, variables, env, steps)
