"""K3s facts: config merging, version, run metadata and restore-time mismatch warnings."""

from __future__ import annotations

from pathlib import Path

from drkit.sources import k3s_common as k3s
from tests.fixtures.k3s_layout import make_k3s_layout, write_standin_k3s


def test_config_merge_dropins_and_append(tmp_path: Path) -> None:
    layout = make_k3s_layout(tmp_path)
    (layout.config_dir / "config.yaml.d" / "60-more.yaml").write_text(
        "kube-apiserver-arg+: [audit-log-maxsize=100]\nnode-name: node1b\n")
    cfg = k3s.read_k3s_config(layout.config_dir)
    assert cfg["node-name"] == "node1b"
    assert cfg["kube-apiserver-arg"] == ["audit-log-maxage=30", "audit-log-maxsize=100"]
    assert k3s.config_flag(cfg, "secrets-encryption") and not k3s.config_flag(cfg, "cluster-init")


def test_version_from_the_binary(tmp_path: Path) -> None:
    binary = write_standin_k3s(tmp_path / "bin", version="v1.29.7+k3s2")
    assert k3s.k3s_version(str(binary)) == "v1.29.7+k3s2"
    assert k3s.k3s_version(str(tmp_path / "nope")) is None


def test_mismatch_warnings(tmp_path: Path) -> None:
    run_meta = {"k3s_version": "v1.30.4+k3s1", "secrets_encryption": True, "node_name": "node1"}
    same = k3s.NodeFacts("v1.30.6+k3s1", "node1", True)
    assert k3s.mismatch_warnings(run_meta, same) == []
    other = k3s.NodeFacts("v1.31.1+k3s1", "node2", False)
    warnings = k3s.mismatch_warnings(run_meta, other)
    assert len(warnings) == 2
    assert "K3s v1.30.4+k3s1" in warnings[0] and "v1.31.1+k3s1" in warnings[0]
    assert "secrets-encryption on" in warnings[1] and "secrets-encryption: true" in warnings[1]
    assert k3s.mismatch_warnings({}, other) == []
    assert k3s.describe_run(run_meta) == "snapshot taken on K3s v1.30.4+k3s1, node node1, secrets-encryption on"


def test_node_facts_record_does_not_overwrite(tmp_path: Path) -> None:
    layout = make_k3s_layout(tmp_path)
    run_meta = {"node_name": "first-writer"}
    facts = k3s.node_facts(layout.config_dir, str(write_standin_k3s(tmp_path / "bin")))
    facts.record(run_meta)
    assert run_meta == {"node_name": "first-writer", "k3s_version": "v1.30.4+k3s1", "secrets_encryption": True}
