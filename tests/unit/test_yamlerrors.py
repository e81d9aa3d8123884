"""YAML that does not parse reads the same everywhere: subject, 1-based position, problem, one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from drkit.config import Environment, load_config
from drkit.errors import ConfigError
from drkit.kube import KubeInvalid, load_manifest
from drkit.runbook.errors import RunbookError
from drkit.runbook.model import load_runbook
from drkit.yamlerrors import not_valid_yaml

BAD = "a: 1\nb: [c\n"  # the list is never closed
WHERE = "at line 3, column 1: expected ',' or ']', but got '<stream end>'"


def test_the_wording_has_the_position_and_the_problem() -> None:
    with pytest.raises(yaml.YAMLError) as exc:
        yaml.safe_load(BAD)
    assert not_valid_yaml(exc.value, "x.yaml") == f"x.yaml is not valid YAML {WHERE}"
    assert not_valid_yaml(exc.value) == f"not valid YAML {WHERE}"


def test_a_problem_without_a_position_is_still_one_line() -> None:
    assert not_valid_yaml(yaml.YAMLError("first line\nsecond"), "m") == "m is not valid YAML: first line"


def test_config_runbook_and_manifest_say_it_the_same_way(tmp_path: Path) -> None:
    cfg = tmp_path / "drkit.yaml"
    cfg.write_text(BAD)
    with pytest.raises(ConfigError) as c:
        load_config(cfg, Environment({}))
    rb = tmp_path / "rebuild.yaml"
    rb.write_text(BAD)
    with pytest.raises(RunbookError) as r:
        load_runbook(rb)
    with pytest.raises(KubeInvalid) as k:
        load_manifest(BAD.encode(), name="secrets/web/tls.yaml")
    assert c.value.message.endswith(f"{cfg} is not valid YAML {WHERE}")
    assert r.value.message == f"{rb}: not valid YAML {WHERE}"
    assert k.value.message == f"secrets/web/tls.yaml is not valid YAML {WHERE}"
    assert all("\n" not in e.value.message for e in (c, r, k))
