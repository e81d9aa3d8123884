"""Run ``drkit`` end to end for the K3s and git source tests (:func:`tests.cli.invoke`,
a local repository, DRKIT_PASSWORD in the environment)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from drkit.errors import DrkitError
from tests.cli import CliResult, invoke

PASSWORD = "e2e passphrase for k3s and git tests"


@dataclass
class DrkitCli:
    config: Path

    @classmethod
    def setup(cls, base: Path, sources: list[dict[str, Any]]) -> DrkitCli:
        base.mkdir(parents=True, exist_ok=True)
        config = base / "drkit.yaml"
        config.write_text(yaml.safe_dump({"repository": {"url": str(base / "repo"), "pack_size_mib": 4},
                                          "sources": sources}))
        config.chmod(0o600)
        d = cls(config)
        d.ok("init")
        return d

    def run(self, *args: str) -> CliResult:
        return invoke("-c", self.config, "-q", *args, env={"DRKIT_PASSWORD": PASSWORD})

    def ok(self, *args: str) -> CliResult:
        result = self.run(*args)
        assert result.exit_code == 0, f"drkit {' '.join(args)}: {result.output} {result.exception!r}"
        return result

    def fails(self, *args: str) -> DrkitError:
        result = self.run(*args)
        assert isinstance(result.exception, DrkitError), (result.output, result.exception)
        return result.exception

    def backup(self, *sources: str) -> dict[str, dict[str, Any]]:
        args = ["backup", "--json"]
        for s in sources:
            args += ["-s", s]
        data = json.loads(self.ok(*args).stdout)
        return {s["source"]: s for s in data["snapshots"]} | {"_run_meta": data["run_meta"]}

    def restore_json(self, *args: str) -> dict[str, Any]:
        return json.loads(self.ok("restore", *args, "--json").stdout)
