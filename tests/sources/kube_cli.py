"""Drive ``drkit`` end to end (:func:`tests.cli.invoke`) for the
Kubernetes-facing source tests: a config with a local repository and the given
sources, ``DRKIT_PASSWORD`` in the environment, ``--json`` output parsed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from drkit.errors import DrkitError
from tests.cli import CliResult, invoke

PASSWORD = "correct horse battery staple"


@dataclass
class Drkit:
    config: Path
    flags: tuple[str, ...] = ("-q",)

    @classmethod
    def setup(cls, tmp_path: Path, sources: list[dict[str, Any]]) -> Drkit:
        tmp_path.mkdir(parents=True, exist_ok=True)
        config = tmp_path / "drkit.yaml"
        config.write_text(yaml.safe_dump({
            "repository": {"url": str(tmp_path / "repo"), "pack_size_mib": 4},
            "sources": sources,
        }))
        config.chmod(0o600)
        d = cls(config)
        d.ok("init")
        return d

    def run(self, *args: str) -> CliResult:
        return invoke("-c", self.config, *self.flags, *args, env={"DRKIT_PASSWORD": PASSWORD})

    def fails(self, *args: str) -> DrkitError:
        """Run a command that must fail with a DrkitError; return it (its exit_code is
        what ``drkit`` would exit with)."""
        result = self.run(*args)
        assert isinstance(result.exception, DrkitError), (result.output, result.exception)
        return result.exception

    def ok(self, *args: str) -> CliResult:
        result = self.run(*args)
        if result.exit_code != 0:
            raise AssertionError(f"drkit {' '.join(args)} failed ({result.exit_code}): {result.output}"
                                 f" {result.exception!r}")
        return result

    def backup(self, source: str) -> dict[str, Any]:
        """Back up one source; returns its snapshot record from ``--json``."""
        data = json.loads(self.ok("backup", "-s", source, "--json").stdout)
        (snap,) = data["snapshots"]
        return snap

    def restore(self, source: str, *args: str, snapshot: str = "latest") -> dict[str, Any]:
        return json.loads(self.ok("restore", snapshot, "-s", source, "--json", *args).stdout)

    def latest(self, source: str) -> Any:
        """The latest :class:`~drkit.repository.snapshot.Snapshot` of *source*."""
        from drkit.repository.repo import Repository
        from drkit.storage import open_storage

        url = yaml.safe_load(self.config.read_text())["repository"]["url"]
        repo = Repository.open(open_storage(url, {}), PASSWORD)
        snaps = [s for s in repo.list_snapshots() if s.source == source]
        return snaps[-1]

    def snapshot_meta(self, source: str) -> dict[str, Any]:
        """The ``meta`` of the latest snapshot of *source* (read from the repository)."""
        return self.latest(source).meta

    def source(self, name: str) -> Any:
        """The configured Source object called *name*."""
        from drkit.config import parse_config

        return parse_config(yaml.safe_load(self.config.read_text()), self.config).source(name)
