"""The shipped example config is valid, including its commented-out sections."""

from __future__ import annotations

from pathlib import Path

import yaml

from drkit.config import Environment, load_config, parse_config

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "drkit.example.yaml"


def test_example_config_loads() -> None:
    cfg = load_config(EXAMPLE, Environment())
    assert cfg.repository.url == "/var/backups/drkit"
    assert [s.name for s in cfg.sources] == ["data"]


def test_commented_sections_are_valid_too() -> None:
    """Uncomment the optional top-level sections and check that each validates."""
    text = EXAMPLE.read_text()
    doc = yaml.safe_load(text)
    block: list[str] = []
    for line in text.splitlines():
        if line.startswith("# ") and line[2:3].isalpha() and line.rstrip().endswith(":") and " " not in line[2:].strip():
            block = [line[2:]]
        elif block and line.startswith("#   "):
            block.append(line[2:])
        elif block:
            doc.update(yaml.safe_load("\n".join(block)))
            block = []
    if block:
        doc.update(yaml.safe_load("\n".join(block)))
    assert {"metrics", "schedule", "drill", "runbooks"} <= set(doc)
    cfg = parse_config(doc)
    from drkit.metrics import MetricsSink
    from drkit.runbook.catalog import parse_runbooks_config
    from drkit.schedule import ScheduleConfig
    from drkit.services.drill import DrillConfig

    assert MetricsSink.from_config(cfg) is not None
    ScheduleConfig.model_validate(doc["schedule"])
    DrillConfig.model_validate(doc["drill"])
    assert parse_runbooks_config(doc["runbooks"]).vars["k3s_version"] == "v1.31.4+k3s1"
