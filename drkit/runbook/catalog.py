"""Where runbooks are found, and the ``runbooks:`` section of the config file.

Search order (earlier directories shadow later ones by file name):

1. ``--runbooks-dir DIR`` (repeatable);
2. ``runbooks.dir`` in the config file;
3. the runbooks shipped with drkit: the ``runbooks/`` directory of a source checkout,
   else the copy installed as package data (``drkit/data/runbooks``).

A NAME that is a path to an existing ``.yaml`` file is loaded directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pydantic import BaseModel, ConfigDict, ValidationError

import drkit
from drkit.errors import ConfigError
from drkit.runbook.errors import RunbookNotFound
from drkit.runbook.model import Runbook, load_runbook


class RunbooksConfig(BaseModel):
    """The config file's ``runbooks:`` section."""

    model_config = ConfigDict(extra="forbid")

    dir: Path | None = None
    """Extra directory searched before the shipped runbooks."""
    vars: dict[str, Any] = {}
    """Variable values for every runbook that declares them (``--var`` wins)."""
    state_dir: Path | None = None
    """Where run journals go (default /var/lib/drkit/runbooks)."""
    known_hosts: Path | None = None
    identity: Path | None = None


def parse_runbooks_config(data: dict[str, Any] | None) -> RunbooksConfig:
    """Validate the ``runbooks:`` section; raises ConfigError naming the key."""
    try:
        return RunbooksConfig.model_validate(data or {})
    except ValidationError as exc:
        err = exc.errors()[0]
        key = "runbooks." + ".".join(str(p) for p in err["loc"])
        raise ConfigError(err["msg"], key=key) from None


def shipped_dirs() -> list[Path]:
    pkg = Path(drkit.__file__).resolve().parent
    return [p for p in (pkg.parent / "runbooks", pkg / "data" / "runbooks") if p.is_dir()]


@dataclass(frozen=True)
class Catalog:
    dirs: tuple[Path, ...]

    @classmethod
    def build(cls, extra: Iterable[Path] = (), config: RunbooksConfig | None = None) -> "Catalog":
        dirs: list[Path] = list(extra)
        if config is not None and config.dir is not None:
            dirs.append(config.dir)
        dirs.extend(shipped_dirs())
        seen: set[Path] = set()
        out = []
        for d in dirs:
            r = d.resolve()
            if r not in seen:
                seen.add(r)
                out.append(d)
        return cls(tuple(out))

    def files(self) -> dict[str, Path]:
        """Runbook name -> file, the first directory winning."""
        found: dict[str, Path] = {}
        for d in self.dirs:
            if not d.is_dir():
                continue
            for p in sorted(d.glob("*.yaml")) + sorted(d.glob("*.yml")):
                found.setdefault(p.name.rsplit(".", 1)[0], p)
        return dict(sorted(found.items()))

    def find(self, name: str) -> Path:
        p = Path(name)
        if p.suffix in (".yaml", ".yml") and p.is_file():
            return p
        files = self.files()
        if name in files:
            return files[name]
        raise RunbookNotFound(
            f"no runbook named {name!r}",
            hint="found: " + (", ".join(files) or "none") + "; searched " + ", ".join(str(d) for d in self.dirs),
        )

    def load(self, name: str) -> Runbook:
        return load_runbook(self.find(name))
