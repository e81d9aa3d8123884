"""The runbook file format (YAML), validated with pydantic.

A runbook is a header (``description``, ``when_to_use``, ``needs``), ``variables``
with defaults, ``secrets`` (read at run time from an environment variable or a file),
an ``env`` for every command, ``defaults`` for steps, and ordered ``steps``::

    description: Restore the K3s datastore from the latest snapshot.
    when_to_use: K3s is installed but its datastore is lost or corrupt.
    needs: [a drkit repository with a k3s-sqlite or k3s-etcd snapshot]
    defaults: {target: remote, sudo: true, timeout: 300}
    variables:
      root: ""                       # prefix of every filesystem path
      k3s_data: "{{ root }}/var/lib/rancher/k3s"
      datastore: {default: sqlite, choices: [sqlite, etcd]}
    secrets:
      K3S_TOKEN: {env: K3S_TOKEN, file: /root/k3s-token}
    steps:
      - name: k3s-stopped
        probe: "! systemctl is-active --quiet k3s"
        apply: systemctl stop k3s
      - name: place-db
        when: datastore == 'sqlite'
        probe: {path: "{{ k3s_data }}/server/db/.drkit-restored"}
        apply:
          - upload: {src: "{{ staging }}/state.db", dest: "{{ k3s_data }}/server/db/state.db", mode: "0600"}
          - touch {{ k3s_data | q }}/server/db/.drkit-restored

A *check* (``probe``, ``until``) is a shell command (string or ``{command: ...}``), a
path test (``{path: P, absent: true}``, ``contains``, ``sha256``) or a Kubernetes field
(``{kube: {resource: node/n1, jsonpath: '{.status.phase}', value: Running}}``).
An *action* (``apply``: one or a list) is a shell command (string or ``{shell: ...,
stdin: ...}``), ``{drkit: "restore latest --source db --target /x"}`` (always on the host running
the runbook, which holds the repository keys), ``{wait-for:
{kube: {resource, condition | jsonpath+value}}}`` or ``{wait-for: {command: ...}}``,
``{upload: {src, dest, mode}}`` (a local file, or a directory copied file by file) or ``{template: {src | content, dest, mode}}``.

:func:`load_runbook` raises :class:`~drkit.runbook.errors.RunbookError` naming the
file, the step and the key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from drkit.runbook.errors import RunbookError
from drkit.yamlerrors import not_valid_yaml

STEP_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SECRET_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _scalar_str(v: Any) -> Any:
    """YAML scalars as the strings templates see (true -> 'true', 3 -> '3')."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return v


# ---- checks -------------------------------------------------------------------------

class CommandCheck(_Strict):
    command: str = Field(min_length=1)


class PathCheck(_Strict):
    path: str = Field(min_length=1)
    absent: bool = False
    contains: str | None = None
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")


class KubeField(_Strict):
    resource: str = Field(min_length=1, description="kind/name, e.g. node/n1 or pvc/data")
    namespace: str | None = None
    jsonpath: str | None = None
    value: str | None = None
    condition: str | None = None
    timeout: int = Field(300, ge=1)

    _v = field_validator("value", mode="before")(_scalar_str)


class KubeCheck(_Strict):
    kube: KubeField


def _check_tag(v: Any) -> str | None:
    if isinstance(v, str):
        return "command"
    if isinstance(v, dict):
        for key in ("command", "path", "kube"):
            if key in v:
                return key
    if isinstance(v, BaseModel):
        return {CommandCheck: "command", PathCheck: "path", KubeCheck: "kube"}.get(type(v))
    return None


def _str_to_command(v: Any) -> Any:
    return {"command": v} if isinstance(v, str) else v


Check = Annotated[
    Union[
        Annotated[CommandCheck, Tag("command")],
        Annotated[PathCheck, Tag("path")],
        Annotated[KubeCheck, Tag("kube")],
    ],
    Discriminator(_check_tag, custom_error_type="check", custom_error_message="a check is a command string or a mapping with one of: command, path, kube"),
]


# ---- actions ------------------------------------------------------------------------

class ShellAction(_Strict):
    shell: str = Field(min_length=1)
    stdin: str | None = None


class DrkitAction(_Strict):
    drkit: str | list[str]


class WaitForSpec(_Strict):
    kube: KubeField | None = None
    command: str | None = None

    @model_validator(mode="after")
    def _one(self) -> "WaitForSpec":
        if (self.kube is None) == (self.command is None):
            raise ValueError("wait-for needs exactly one of 'kube' or 'command'")
        if self.kube is not None and (self.kube.condition is None) == (self.kube.jsonpath is None):
            raise ValueError("wait-for kube needs exactly one of 'condition' or 'jsonpath' (with 'value')")
        if self.kube is not None and self.kube.jsonpath is not None and self.kube.value is None:
            raise ValueError("wait-for kube with 'jsonpath' needs 'value'")
        return self


class WaitForAction(_Strict):
    wait_for: WaitForSpec = Field(alias="wait-for")


def _mode(v: Any) -> Any:
    if isinstance(v, int):  # YAML 0600 is octal 384; "0600" stays a string
        return v
    if isinstance(v, str) and re.fullmatch(r"0?[0-7]{3,4}", v):
        return int(v, 8)
    raise ValueError("mode must be an octal string such as '0644'")


class UploadSpec(_Strict):
    src: str = Field(min_length=1)
    dest: str = Field(min_length=1)
    mode: int = 0o644

    _m = field_validator("mode", mode="before")(_mode)


class UploadAction(_Strict):
    upload: UploadSpec


class TemplateSpec(_Strict):
    src: str | None = None
    content: str | None = None
    dest: str = Field(min_length=1)
    mode: int = 0o644

    _m = field_validator("mode", mode="before")(_mode)

    @model_validator(mode="after")
    def _one(self) -> "TemplateSpec":
        if (self.src is None) == (self.content is None):
            raise ValueError("template needs exactly one of 'src' (a file next to the runbook) or 'content'")
        return self


class TemplateAction(_Strict):
    template: TemplateSpec


ACTION_KEYS = ("shell", "drkit", "wait-for", "upload", "template")


def _action_tag(v: Any) -> str | None:
    if isinstance(v, str):
        return "shell"
    if isinstance(v, dict):
        found = [k for k in ACTION_KEYS if k in v]
        return found[0] if len(found) == 1 else None
    if isinstance(v, BaseModel):
        return {ShellAction: "shell", DrkitAction: "drkit", WaitForAction: "wait-for",
                UploadAction: "upload", TemplateAction: "template"}.get(type(v))
    return None


Action = Annotated[
    Union[
        Annotated[ShellAction, Tag("shell")],
        Annotated[DrkitAction, Tag("drkit")],
        Annotated[WaitForAction, Tag("wait-for")],
        Annotated[UploadAction, Tag("upload")],
        Annotated[TemplateAction, Tag("template")],
    ],
    Discriminator(
        _action_tag,
        custom_error_type="action",
        custom_error_message="unknown action: an action is a shell command string or a mapping with exactly one of: "
        + ", ".join(ACTION_KEYS),
    ),
]


# ---- steps and runbooks -------------------------------------------------------------

Target = Literal["local", "remote"]


class Step(_Strict):
    name: str
    description: str = ""
    when: str | None = None
    probe: Check | None = None
    apply: list[Action] = Field(default_factory=list)
    until: Check | None = None
    retries: int | str = 0
    """Extra checks after the first (an integer, or a ``{{ variable }}``)."""
    delay: float | str = 5.0
    """Seconds between checks (a number, or a ``{{ variable }}``)."""
    timeout: float | str | None = None
    """Seconds each command may run (a number, or a ``{{ variable }}``)."""

    @field_validator("retries", "delay", "timeout")
    @classmethod
    def _number(cls, v: Any, info: Any) -> Any:
        if isinstance(v, str):
            if "{{" in v:
                return v
            try:
                v = float(v)
            except ValueError:
                raise ValueError("must be a number or a {{ variable }}") from None
        if v is not None and v < 0:
            raise ValueError("must not be negative")
        if info.field_name == "retries" and v is not None:
            if int(v) != v:
                raise ValueError("must be a whole number")
            return int(v)
        if info.field_name == "timeout" and v is not None and v <= 0:
            raise ValueError("must be greater than 0")
        return v
    on_failure: str | None = None
    sudo: bool | None = None
    target: Target | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not STEP_NAME.match(v):
            raise ValueError("step names are lowercase letters, digits and '-' (at most 63), e.g. 'install-k3s'")
        return v

    @field_validator("probe", "until", mode="before")
    @classmethod
    def _check_str(cls, v: Any) -> Any:
        return _str_to_command(v)

    @field_validator("apply", mode="before")
    @classmethod
    def _apply_list(cls, v: Any) -> Any:
        if v is None:
            return []
        items = v if isinstance(v, list) else [v]
        return [{"shell": a} if isinstance(a, str) else a for a in items]

    @model_validator(mode="after")
    def _something(self) -> "Step":
        if self.probe is None and not self.apply:
            raise ValueError("a step needs a 'probe', an 'apply', or both")
        return self


class VariableSpec(_Strict):
    default: str | None = None
    description: str = ""
    choices: list[str] | None = None

    _d = field_validator("default", mode="before")(_scalar_str)

    @field_validator("choices", mode="before")
    @classmethod
    def _choices(cls, v: Any) -> Any:
        return [_scalar_str(c) for c in v] if isinstance(v, list) else v


class SecretSpec(_Strict):
    env: str | None = None
    file: str | None = None
    description: str = ""

    @model_validator(mode="after")
    def _source(self) -> "SecretSpec":
        if self.env is None and self.file is None:
            raise ValueError("a secret needs 'env' (an environment variable) and/or 'file' (a path)")
        return self


class StepDefaults(_Strict):
    target: Target = "remote"
    sudo: bool = False
    timeout: float = Field(300.0, gt=0)


class RunFactSpec(_Strict):
    """One variable filled from the backup run's metadata."""

    key: str = Field(min_length=1)
    """The run metadata key (``drkit snapshots --json``: ``run_meta``)."""
    newer: bool = False
    """A version: ``--var`` may choose the same or a newer minor, never an older one."""


class BackupRunSpec(_Strict):
    """Variables that belong to ONE backup run (see :mod:`drkit.runbook.run_facts`)."""

    variable: str = "run"
    """The variable naming the run: ``latest`` or a run id (becomes the full run id)."""
    require: list[str] = Field(default_factory=list)
    """Source types the run must hold (``latest`` is the newest run that holds them all)."""
    facts: dict[str, RunFactSpec] = Field(default_factory=dict)
    token_secret: str | None = None
    """A secret that, when given, must be the run's K3s server token."""

    @field_validator("facts", mode="before")
    @classmethod
    def _facts(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: ({"key": spec} if isinstance(spec, str) else spec) for k, spec in v.items()}
        return v


class Runbook(_Strict):
    description: str = Field(min_length=1)
    when_to_use: str = Field(min_length=1)
    needs: list[str] = Field(default_factory=list)
    defaults: StepDefaults = Field(default_factory=lambda: StepDefaults.model_validate({}))
    variables: dict[str, VariableSpec] = Field(default_factory=dict)
    secrets: dict[str, SecretSpec] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)
    backup_run: BackupRunSpec | None = None
    steps: list[Step] = Field(min_length=1)

    # Filled by load_runbook, not part of the file.
    name: str = Field("", exclude=True)
    path: Path | None = Field(None, exclude=True)

    @field_validator("variables", mode="before")
    @classmethod
    def _vars(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        out = {}
        for key, spec in v.items():
            if not isinstance(key, str) or not VAR_NAME.match(key) or key == "secrets":
                raise ValueError(f"bad variable name {key!r}: letters, digits and '_' ('secrets' is reserved)")
            out[key] = spec if isinstance(spec, dict) else {"default": spec}
        return out

    @field_validator("secrets")
    @classmethod
    def _secret_names(cls, v: dict[str, SecretSpec]) -> dict[str, SecretSpec]:
        for key in v:
            if not SECRET_NAME.match(key):
                raise ValueError(f"bad secret name {key!r}: upper-case letters, digits and '_' (e.g. K3S_TOKEN)")
        return v

    @model_validator(mode="after")
    def _backup_run(self) -> "Runbook":
        spec = self.backup_run
        if spec is None:
            return self
        for var in [spec.variable, *spec.facts]:
            if var not in self.variables:
                raise ValueError(f"backup_run names variable {var!r}, which is not declared under 'variables:'")
        if spec.token_secret is not None and spec.token_secret not in self.secrets:
            raise ValueError(f"backup_run.token_secret {spec.token_secret!r} is not declared under 'secrets:'")
        return self

    @model_validator(mode="after")
    def _unique(self) -> "Runbook":
        seen: set[str] = set()
        for step in self.steps:
            if step.name in seen:
                raise ValueError(f"duplicate step name {step.name!r}")
            seen.add(step.name)
        return self

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise RunbookError(
            f"no step named {name!r} in runbook {self.name!r}",
            hint="steps: " + ", ".join(s.name for s in self.steps),
        )

    @property
    def base_dir(self) -> Path:
        """Directory that relative template ``src`` paths are resolved against."""
        return self.path.parent if self.path is not None else Path.cwd()


def _where(data: Any, loc: tuple[Any, ...]) -> str:
    """'step "name" (steps[3]).apply[0].upload.dest' from a pydantic error location."""
    parts = list(loc)
    out = ""
    if len(parts) >= 2 and parts[0] == "steps" and isinstance(parts[1], int):
        idx = parts[1]
        name = None
        try:
            name = data["steps"][idx].get("name")
        except (KeyError, IndexError, TypeError, AttributeError):
            pass
        out = f"step {name!r} (steps[{idx}])" if name else f"steps[{idx}]"
        parts = parts[2:]
    for i, p in enumerate(parts):
        if isinstance(p, int):
            out += f"[{p}]"
        elif i + 1 < len(parts) and parts[i + 1] == p:
            continue  # a union's tag, followed by the key of the same name
        else:
            out += f".{p}" if out else str(p)
    return out or "(top level)"


def parse_runbook(data: Any, *, name: str, path: Path | None = None) -> Runbook:
    """Validate a parsed YAML document; raises RunbookError naming file, step and key."""
    label = str(path) if path is not None else name
    if not isinstance(data, dict):
        raise RunbookError("a runbook must be a YAML mapping (description, when_to_use, steps ...)", where=label)
    try:
        rb = Runbook.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = _where(data, tuple(err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        raise RunbookError(f"{where}: {msg}", where=label) from None
    rb.name = name
    rb.path = path
    return rb


def load_runbook(path: Path) -> Runbook:
    """Read and validate one runbook file (its name is the file name without .yaml)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RunbookError(f"runbook file {path} not found") from None
    except OSError as exc:
        raise RunbookError(f"cannot read runbook {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RunbookError(not_valid_yaml(exc), where=str(path)) from None
    name = path.name.removesuffix(".yaml").removesuffix(".yml")
    return parse_runbook(data, name=name, path=path)
