"""The monitoring assets in config/: alert rules (plain and PrometheusRule) and the
Grafana dashboard. Every metric they use is one drkit writes, with labels it writes;
promtool checks the rules and runs unit tests proving each alert fires on the series
drkit produces (and stays quiet on healthy ones); the dashboard's queries are valid PromQL."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from drkit.metrics import METRICS, MetricsConfig, MetricsSink, Outcome, parse_textfile
from tests.conftest import require_binary

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "prometheus-rules.yaml"
RULE_CR = ROOT / "config" / "prometheusrule.yaml"
DASHBOARD = ROOT / "config" / "grafana-dashboard.json"

_SELECTOR_RE = re.compile(r"\b(drkit_\w+)\s*(\{[^}]*\})?")
_LABEL_RE = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
_GROUPING_RE = re.compile(r"\b(?:ignoring|on|by|without)\s*\(([^)]*)\)")


def rule_exprs() -> list[str]:
    doc = yaml.safe_load(RULES.read_text())
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    out = []

    def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in panels:
            yield p
            yield from walk(p.get("panels", []))

    for panel in walk(dash["panels"]):
        out += [t["expr"] for t in panel.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            out.append(var["definition"])
    return out


def check_names_and_labels(expr: str) -> set[str]:
    """The drkit metric names in *expr*; asserts each exists and each label matcher and
    grouping label is one drkit writes (or a target label Prometheus adds)."""
    names = set()
    allowed_extra = {"instance", "job"}
    for m in _SELECTOR_RE.finditer(expr):
        name = m.group(1)
        assert name in METRICS, f"{name} is not a metric drkit writes (in: {expr})"
        names.add(name)
        for label in _LABEL_RE.findall(m.group(2) or ""):
            assert label in METRICS[name].labels, f"{name} has no label {label!r} (in: {expr})"
    all_labels = {lab for n in names for lab in METRICS[n].labels} | allowed_extra
    for group in _GROUPING_RE.findall(expr):
        for label in filter(None, (x.strip() for x in group.split(","))):
            assert label in all_labels, f"grouping label {label!r} is not a drkit label (in: {expr})"
    return names


def test_rules_use_only_metrics_drkit_writes() -> None:
    used: set[str] = set()
    for expr in rule_exprs():
        names = check_names_and_labels(expr)
        assert names, f"rule without a drkit metric: {expr}"
        used |= names
    # the alerts the issue asks for exist
    doc = yaml.safe_load(RULES.read_text())
    alerts = {r["alert"] for g in doc["groups"] for r in g["rules"]}
    assert {"DrkitBackupTooOld", "DrkitBackupFailing", "DrkitVerifyDamage", "DrkitDrillFailed",
            "DrkitDrillOverBudget"} <= alerts


def test_dashboard_uses_only_metrics_drkit_writes_and_is_provisionable() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and isinstance(dash["schemaVersion"], int)
    assert "id" not in dash or dash["id"] is None  # provisioning assigns ids
    used: set[str] = set()
    exprs = dashboard_exprs()
    assert len(exprs) >= 10
    for expr in exprs:
        names = check_names_and_labels(expr)
        assert names, f"dashboard query without a drkit metric: {expr}"
        used |= names
    # what the issue asks the dashboard to show
    assert {"drkit_last_success_timestamp_seconds", "drkit_rpo_target_seconds", "drkit_backup_added_bytes",
            "drkit_repository_size_bytes", "drkit_verify_ok", "drkit_drill_success",
            "drkit_drill_rto_seconds"} <= used
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}"


def test_prometheusrule_cr_matches_plain_rules() -> None:
    cr = yaml.safe_load(RULE_CR.read_text())
    assert cr["apiVersion"] == "monitoring.coreos.com/v1" and cr["kind"] == "PrometheusRule"
    assert cr["metadata"]["name"] == "drkit" and cr["metadata"]["labels"]["release"]
    assert cr["spec"] == yaml.safe_load(RULES.read_text())


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    exe = require_binary("promtool")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_promtool_checks_both_rule_files(tmp_path: Path) -> None:
    res = promtool("check", "rules", str(RULES))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 10 rules found" in res.stdout
    spec = tmp_path / "from-cr.yaml"
    spec.write_text(yaml.safe_dump(yaml.safe_load(RULE_CR.read_text())["spec"]))
    res = promtool("check", "rules", str(spec))
    assert res.returncode == 0, res.stdout + res.stderr


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query (as a recording rule), Grafana variables filled in."""
    rules = []
    for i, expr in enumerate(dashboard_exprs()):
        if expr.startswith("label_values("):
            expr = expr[len("label_values("):].rsplit(",", 1)[0]
        expr = expr.replace("$source", ".*").replace("$__rate_interval", "5m")
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    res = promtool("check", "rules", str(path))
    assert res.returncode == 0, res.stdout + res.stderr


def run_promtool_test(tmp_path: Path, series: list[dict[str, str]], cases: list[dict[str, Any]]) -> None:
    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": cases}],
    }
    path = tmp_path / "rules_test.yaml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    res = promtool("test", "rules", str(path))
    assert res.returncode == 0, res.stdout + res.stderr


def test_alerts_fire_on_bad_series_and_stay_quiet_on_good_ones(tmp_path: Path) -> None:
    rpo = 26 * 3600
    series = [
        # 'stale' had its last good backup at t=0; 'fresh' succeeds every minute
        {"series": 'drkit_last_success_timestamp_seconds{command="backup",source="stale"}', "values": "0x2000"},
        {"series": 'drkit_last_failure_timestamp_seconds{command="backup",source="stale"}', "values": "0x2000"},
        {"series": 'drkit_rpo_target_seconds{source="stale"}', "values": f"{rpo}x2000"},
        {"series": 'drkit_last_success_timestamp_seconds{command="backup",source="fresh"}', "values": "0+60x2000"},
        {"series": 'drkit_last_failure_timestamp_seconds{command="backup",source="fresh"}', "values": "0x2000"},
        {"series": 'drkit_rpo_target_seconds{source="fresh"}', "values": f"{rpo}x2000"},
        # verify: fine until minute 10, then damage at the full level
        {"series": 'drkit_verify_ok{level="full"}', "values": "1x10 0x20"},
        {"series": 'drkit_verify_damaged_objects{level="full"}', "values": "0x10 3x20"},
        {"series": 'drkit_verify_ok{level="subset"}', "values": "1x30"},
        {"series": 'drkit_verify_damaged_objects{level="subset"}', "values": "0x30"},
        {"series": 'drkit_last_success_timestamp_seconds{command="verify"}', "values": "0+60x2000"},
        {"series": 'drkit_last_failure_timestamp_seconds{command="verify"}', "values": "0x2000"},
        # drills: etcd ok and fast; git failed; longhorn restored but over budget
        {"series": 'drkit_drill_success{source="etcd"}', "values": "1x30"},
        {"series": 'drkit_drill_rto_seconds{source="etcd"}', "values": "600x30"},
        {"series": 'drkit_rto_budget_seconds{source="etcd"}', "values": "3600x30"},
        {"series": 'drkit_drill_rpo_seconds{source="etcd"}', "values": "3600x30"},
        {"series": 'drkit_rpo_target_seconds{source="etcd"}', "values": f"{rpo}x30"},
        {"series": 'drkit_drill_success{source="git"}', "values": "0x30"},
        {"series": 'drkit_drill_success{source="longhorn"}', "values": "1x30"},
        {"series": 'drkit_drill_rto_seconds{source="longhorn"}', "values": "9000x30"},
        {"series": 'drkit_rto_budget_seconds{source="longhorn"}', "values": "7200x30"},
    ]
    quiet = [{"eval_time": "5m", "alertname": name, "exp_alerts": []}
             for name in ("DrkitBackupTooOld", "DrkitBackupFailing", "DrkitVerifyDamage", "DrkitMetricsMissing",
                          "DrkitDrillRpoOverTarget")]
    cases = quiet + [
        {"eval_time": "1500m", "alertname": "DrkitBackupTooOld", "exp_alerts": []},  # 25h < 26h
        {"eval_time": "1600m", "alertname": "DrkitBackupTooOld", "exp_alerts": [{
            "exp_labels": {"severity": "critical", "source": "stale"},
            "exp_annotations": {
                "summary": "drkit: no good backup of stale within its RPO target",
                "description": "The last successful backup of source stale on  was 1d 2h 40m 0s ago, longer than "
                               "the source's RPO target (metrics.rpo_target). Check the backup job: journalctl -u "
                               "drkit-backup (or the drkit scheduler's log) and run `drkit backup -s stale` by hand.",
            }}]},
        {"eval_time": "15m", "alertname": "DrkitVerifyDamage", "exp_alerts": [{
            "exp_labels": {"severity": "critical", "level": "full"},
            "exp_annotations": {
                "summary": "drkit: verify found damage in the repository (full check)",
                "description": "The last `drkit verify` (full) on  found damaged or missing objects. Run `drkit verify "
                               "--read-data` to list every damaged object and the snapshots it affects, then follow "
                               "docs/monitoring.md#verify-found-damage.",
            }}]},
        {"eval_time": "5m", "alertname": "DrkitDrillFailed", "exp_alerts": [{
            "exp_labels": {"severity": "critical", "source": "git"},
            "exp_annotations": {
                "summary": "drkit: the restore drill of git failed",
                "description": "The last restore drill of source git on  did not restore it: the backups of this "
                               "source may not be restorable.",
            }}]},
        {"eval_time": "5m", "alertname": "DrkitDrillOverBudget", "exp_alerts": [{
            "exp_labels": {"severity": "warning", "source": "longhorn"},
            "exp_annotations": {
                "summary": "drkit: restoring longhorn takes longer than its RTO budget",
                "description": "The last drill restored longhorn in 2h 30m 0s, longer than its RTO budget "
                               "(metrics.rto_budget).",
            }}]},
    ]
    run_promtool_test(tmp_path, series, cases)


def test_alerts_fire_on_the_textfile_drkit_writes(tmp_path: Path) -> None:
    """End to end: what MetricsSink writes for a failing backup and a source that never
    succeeded makes DrkitBackupFailing and DrkitBackupTooOld fire (times in promtool's frame)."""
    sink = MetricsSink(MetricsConfig(textfile=tmp_path / "drkit.prom", rpo_target=3600))
    sink.record_many("backup", [Outcome("etcd", True, 5.0), Outcome("git", True, 1.0)], now=0)
    sink.record_many("backup", [Outcome("etcd", False, 5.0)], now=120)  # etcd fails at t=2m
    sink.record_many("backup", [Outcome("never", False, 1.0)], now=60)  # 'never' never succeeded
    series = [
        {"series": name + "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}", "values": f"{value:g}x300"}
        for (name, labels), value in parse_textfile(sink.path.read_text()).items()
    ]
    failing = {"severity": "warning", "command": "backup"}
    desc = ("The most recent backup run of source {s} on  failed (its last failure is newer than its last "
            "success). The error is in the job's log; DrkitBackupTooOld follows if it keeps failing.")
    cases = [
        {"eval_time": "3m", "alertname": "DrkitBackupFailing", "exp_alerts": [
            {"exp_labels": {**failing, "source": s},
             "exp_annotations": {"summary": f"drkit: the last backup of {s} failed", "description": desc.format(s=s)}}
            for s in ("etcd", "never")]},
        {"eval_time": "30m", "alertname": "DrkitBackupTooOld", "exp_alerts": []},
        # rpo 1h: 'never' (success=0) is too old from t=1h, + 10m 'for'
        {"eval_time": "75m", "alertname": "DrkitBackupTooOld", "exp_alerts": [
            {"exp_labels": {"severity": "critical", "source": s},
             "exp_annotations": {
                 "summary": f"drkit: no good backup of {s} within its RPO target",
                 "description": f"The last successful backup of source {s} on  was 1h 15m 0s ago, longer than the "
                                f"source's RPO target (metrics.rpo_target). Check the backup job: journalctl -u "
                                f"drkit-backup (or the drkit scheduler's log) and run `drkit backup -s {s}` by hand.",
             }} for s in ("etcd", "git", "never")]},
    ]
    run_promtool_test(tmp_path, series, cases)


def test_metrics_missing_alert_fires_without_series(tmp_path: Path) -> None:
    series = [{"series": 'drkit_verify_ok{level="full"}', "values": "1x100"}]
    cases = [{"eval_time": "70m", "alertname": "DrkitMetricsMissing", "exp_alerts": [{
        "exp_labels": {"severity": "warning", "command": "backup"},
        "exp_annotations": {
            "summary": "drkit: no backup metrics are scraped",
            "description": "Prometheus sees no drkit backup series: drkit has never written its textfile "
                           "(metrics.textfile unset, or no backup ran), or node-exporter does not read that "
                           "directory (--collector.textfile.directory).",
        }}]}]
    run_promtool_test(tmp_path, series, cases)
