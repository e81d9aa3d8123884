"""``{{ var }}`` substitution for runbooks: tiny, strict and secret-aware.

The only syntax is ``{{ NAME }}``, ``{{ secrets.NAME }}`` and an optional ``| q`` filter
(shell-quote the value). An unknown variable or filter is an error naming where it was
used: a typo fails ``drkit runbook plan`` instead of a half-done rebuild.

Secrets are never pasted into a command line. How ``{{ secrets.NAME }}`` renders depends
on where it appears (:class:`SecretMode`):

- ``shell``: a reference to an environment variable, ``"${DRKIT_SECRET_NAME}"``; the
  executor passes the value in the environment (sent over stdin, never in argv);
- ``content`` (template files, stdin): the value itself, read at execution time, or a
  ``<secret:NAME>`` placeholder when planning;
- ``forbid`` (paths, ``drkit`` arguments, ``when``): an error.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Mapping

from drkit.runbook.errors import RunbookError

_TOKEN = re.compile(r"\{\{(.*?)\}\}", re.S)
_EXPR = re.compile(
    r"^\s*(?P<name>(?:secrets\.)?[A-Za-z_][A-Za-z0-9_]*)\s*(?P<filters>(?:\|\s*[A-Za-z_]+\s*)*)$"
)
FILTERS = ("q",)
SECRET_ENV_PREFIX = "DRKIT_SECRET_"


def secret_env_name(name: str) -> str:
    """The environment variable that carries secret *name* to a shell step."""
    return SECRET_ENV_PREFIX + name


class SecretMode(Enum):
    SHELL = "shell"
    CONTENT = "content"
    FORBID = "forbid"


@dataclass(frozen=True)
class Secret:
    """A secret value that never prints: ``str()`` and ``repr()`` give ``***``."""

    name: str
    _value: str = field(repr=False)

    def reveal(self) -> str:
        """The value itself; only for handing to a program's environment or stdin."""
        return self._value

    def __str__(self) -> str:
        return "***"

    def __repr__(self) -> str:
        return f"Secret({self.name}=***)"


@dataclass(frozen=True)
class Ref:
    """One ``{{ ... }}`` occurrence."""

    name: str
    secret: bool
    filters: tuple[str, ...]


def parse_refs(text: str, where: str) -> list[Ref]:
    """Every reference in *text*; raises :class:`RunbookError` on bad syntax or filters."""
    refs = []
    for m in _TOKEN.finditer(text):
        em = _EXPR.match(m.group(1))
        if em is None:
            raise RunbookError(
                f"bad template expression {m.group(0)!r}",
                where=where,
                hint="use {{ name }}, {{ name | q }} or {{ secrets.NAME }}",
            )
        filters = tuple(f.strip() for f in em.group("filters").split("|") if f.strip())
        for f in filters:
            if f not in FILTERS:
                raise RunbookError(f"unknown filter {f!r} in {m.group(0)!r}", where=where, hint="filters: q (shell-quote)")
        name = em.group("name")
        secret = name.startswith("secrets.")
        refs.append(Ref(name.split(".", 1)[1] if secret else name, secret, filters))
    return refs


def render(
    text: str,
    variables: Mapping[str, str],
    *,
    where: str,
    mode: SecretMode = SecretMode.FORBID,
    secret_names: frozenset[str] | set[str] = frozenset(),
    reveal: Callable[[str], str] | None = None,
) -> str:
    """Substitute every reference in *text*.

    *reveal* returns a secret's value (``content`` mode); without it, ``content`` mode
    renders a ``<secret:NAME>`` placeholder (planning). Raises :class:`RunbookError`
    naming *where* for an unknown variable, an undeclared secret, a bad filter, or a
    secret where secrets are not allowed.
    """
    parse_refs(text, where)  # syntax errors first, with the whole expression

    def sub(m: re.Match[str]) -> str:
        em = _EXPR.match(m.group(1))
        assert em is not None
        name = em.group("name")
        filters = [f.strip() for f in em.group("filters").split("|") if f.strip()]
        if name.startswith("secrets."):
            sname = name.split(".", 1)[1]
            if sname not in secret_names:
                raise RunbookError(
                    f"unknown secret {sname!r}", where=where,
                    hint="declare it under 'secrets:' (declared: " + (", ".join(sorted(secret_names)) or "none") + ")",
                )
            if mode is SecretMode.FORBID:
                raise RunbookError(
                    f"a secret ({{{{ secrets.{sname} }}}}) is not allowed here",
                    where=where,
                    hint="secrets may appear in shell commands (passed in the environment), stdin and template files",
                )
            if mode is SecretMode.SHELL:
                return f'"${{{secret_env_name(sname)}}}"'
            value = reveal(sname) if reveal is not None else f"<secret:{sname}>"
        else:
            if name not in variables:
                raise RunbookError(
                    f"unknown variable {name!r}", where=where,
                    hint="declare it under 'variables:' or pass --var " + name + "=VALUE",
                )
            value = str(variables[name])
        for f in filters:
            if f == "q":
                value = shlex.quote(value)
        return value

    return _TOKEN.sub(sub, text)


def redact(text: str, secrets: Mapping[str, Secret] | list[Secret]) -> str:
    """*text* with every secret value replaced by ``***`` (values shorter than 4 chars are kept, they'd match everywhere)."""
    values = secrets.values() if isinstance(secrets, Mapping) else secrets
    for s in sorted(values, key=lambda s: -len(s.reveal())):
        v = s.reveal()
        if len(v) >= 4:
            text = text.replace(v, "***")
    return text
