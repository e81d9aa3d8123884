"""Optional extras: without boto3, paramiko or kubernetes, drkit still runs everything
else, and the part that needs one fails with one line naming the extra (exit 2)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from drkit.cli import cli
from drkit.cli.app import run_cli
from drkit.errors import EXIT_USAGE, MissingExtra
from drkit.extras import EXTRAS, require
from drkit.storage import open_storage


def _hide(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    """Make *module* (and its submodules) unimportable, as if not installed."""
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)


def test_the_extras_are_declared() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert {name: extras[name] for name in ("s3", "sftp", "k8s", "all")} == {
        "s3": ["boto3>=1.28"], "sftp": ["paramiko>=3.4,<6"], "k8s": ["kubernetes>=28"], "all": ["drkit[s3,sftp,k8s]"],
    }
    assert "drkit[all]" in extras["test"]
    assert not [r for r in project["dependencies"] if r.split(">")[0].split("=")[0].lower() in EXTRAS]


@pytest.mark.parametrize(
    ("url", "module", "extra"),
    [("s3://bucket/prefix", "boto3", "s3"), ("sftp://user@host/srv/repo", "paramiko", "sftp")],
)
def test_remote_storage_names_its_extra(monkeypatch, url, module, extra) -> None:
    _hide(monkeypatch, module)
    with pytest.raises(MissingExtra) as exc:
        open_storage(url, {})
    assert exc.value.exit_code == EXIT_USAGE
    assert module in exc.value.message and f"pip install 'drkit[{extra}]'" in (exc.value.hint or "")


def test_kubernetes_access_names_its_extra(monkeypatch) -> None:
    _hide(monkeypatch, "kubernetes")
    from drkit import kube

    with pytest.raises(MissingExtra, match="Kubernetes access needs the Python package kubernetes") as exc:
        kube.connect("/nonexistent/kubeconfig")
    assert "drkit[k8s]" in (exc.value.hint or "")


def test_cli_says_one_line_and_local_repositories_still_work(monkeypatch, tmp_path, capsys) -> None:
    for module in EXTRAS:
        _hide(monkeypatch, module)
    monkeypatch.setenv("DRKIT_PASSWORD", "pw")
    cfg = tmp_path / "drkit.yaml"
    cfg.write_text(yaml.safe_dump({"repository": {"url": "s3://bucket/prefix"}, "sources": []}))
    cfg.chmod(0o600)
    code = run_cli(cli, ["-c", str(cfg), "snapshots"])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert err.splitlines()[0] == "error: S3 storage needs the Python package boto3, which is not installed"
    assert "pip install 'drkit[s3]'" in err and "Traceback" not in err
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_bytes(b"content")
    cfg.write_text(yaml.safe_dump({"repository": {"url": str(tmp_path / "repo")},
                                   "sources": [{"name": "data", "type": "files", "paths": [str(data)]}]}))
    assert run_cli(cli, ["-c", str(cfg), "init"]) == 0
    assert run_cli(cli, ["-c", str(cfg), "backup"]) == 0
    assert [m for m in EXTRAS if sys.modules.get(m) is not None] == []


def test_a_broken_installed_package_is_not_reported_as_missing(monkeypatch) -> None:
    _hide(monkeypatch, "botocore")  # boto3 is installed, its dependency is not
    for name in [m for m in sys.modules if m == "boto3" or m.startswith("boto3.")]:
        monkeypatch.delitem(sys.modules, name)  # imported afresh, as in a new process
    try:
        with pytest.raises(ImportError) as exc:
            require("boto3", "S3 storage")
    finally:  # drop what the failed import left half-made; monkeypatch restores the originals
        for name in [m for m in sys.modules if m == "boto3" or m.startswith("boto3.")]:
            del sys.modules[name]
    assert not isinstance(exc.value, MissingExtra) and str(exc.value.name).startswith("botocore")
