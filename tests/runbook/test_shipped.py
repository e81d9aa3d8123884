"""The runbooks shipped in ``runbooks/``: every one lints, plans and has a header that says
when to pick it. ``rebuild-node`` runs end to end in tests/runbook/test_rebuild_node.py.

In the end-to-end test the programs that cannot run here (k3s, kubectl, helm, apt-get,
systemctl, curl, swapon/swapoff, modprobe/lsmod, sysctl, dpkg-query) are the STAND-INS
in ``tests/runbook/standins/``: they record every call and model just enough state for
the probes. Everything else is real: the SSH transport, sudo-less root login, the shell
commands, file uploads, and the data restores, which are ``drkit restore`` of real
snapshots (a SQLite datastore through the k3s-sqlite source, sealed-secrets key manifests
and a volume image through the files source) from a real repository made by ``drkit
init`` and ``drkit backup`` in the test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drkit.runbook.catalog import shipped_dirs

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "runbooks").glob("*.yaml"))
REQUIRED = {
    "rebuild-node": [],
    "rebuild-node-gitops": [],
    "restore-datastore": ["node_name=node1", "restore_tag=incident-1"],
    "restore-volume": ["namespace=apps", "pvc_name=data", "workload=deployment/app", "app=app", "restore_tag=i1"],
    "restore-git": [],
}


def test_all_runbooks_are_shipped_and_found():
    assert [p.stem for p in SHIPPED] == ["rebuild-node-gitops", "rebuild-node", "restore-datastore", "restore-git",
                                         "restore-volume"]
    assert REPO / "runbooks" in shipped_dirs()


def test_every_shipped_runbook_passes_lint(drkit):
    r = drkit("runbook", "lint")
    assert r.code == 0, r.text
    assert r.out.count("ok      ") == len(SHIPPED)


def test_lint_reports_a_broken_file_and_fails(tmp_path, drkit):
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "runbooks" / "restore-git.yaml").read_text().replace("probe: git -C", "prob: git -C", 1))
    r = drkit("runbook", "lint", REPO / "runbooks" / "restore-git.yaml", bad)
    assert r.code == 2
    assert "ok      " in r.out
    assert f"invalid {bad}: step 'restored' (steps[0]).prob: Extra inputs are not permitted" in r.err


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_runbook_plans_and_has_a_header(path, drkit):
    args = [a for v in REQUIRED[path.stem] for a in ("--var", v)]
    r = drkit("runbook", "plan", path.stem, *args, "--json")
    assert r.code == 0, r.text
    plan = json.loads(r.out)
    assert plan["steps"] and all(s["probe"] or s["apply"] for s in plan["steps"])
    show = drkit("runbook", "show", path.stem)
    assert show.code == 0 and "When to use:" in show.out and "Needs:" in show.out


@pytest.mark.parametrize("variant", [["install_mode=airgap"], ["datastore=etcd"], ["install_mode=airgap", "datastore=etcd"]])
def test_rebuild_node_variants_plan(variant, drkit):
    args = [a for v in ["node_name=n1", *variant] for a in ("--var", v)]
    r = drkit("runbook", "plan", "rebuild-node", *args, "--json")
    assert r.code == 0, r.text
    enabled = [s["name"] for s in json.loads(r.out)["steps"] if s["enabled"]]
    if "install_mode=airgap" in variant:
        assert "k3s-airgap-files" in enabled and "k3s-install-online" not in enabled
    if "datastore=etcd" in variant:
        assert "restore-etcd" in enabled and "restore-sqlite" not in enabled
        step = next(s for s in json.loads(r.out)["steps"] if s["name"] == "restore-etcd")
        assert any("k3s server --cluster-reset --cluster-reset-restore-path=/var/lib/rancher/k3s/server/db/snapshots/drkit-restore.db" in a
                   for a in step["apply"])


def test_rebuild_node_refuses_a_bad_choice(drkit):
    r = drkit("runbook", "plan", "rebuild-node", "--var", "node_name=n1", "--var", "datastore=postgres")
    assert r.code == 2 and "variable datastore='postgres' is not one of: sqlite, etcd, external" in r.err


@pytest.mark.parametrize("name", ["rebuild-node", "rebuild-node-gitops"])
def test_each_rebuild_header_says_when_to_pick_it(name, drkit):
    show = drkit("runbook", "show", name)
    assert show.code == 0
    other = "rebuild-node-gitops" if name == "rebuild-node" else "rebuild-node"
    when = show.out.split("When to use:")[1].split("Needs:")[0]
    assert "Pick this one" in when and other in when
    assert ("datastore" in when) and ("default" in when if name == "rebuild-node" else "NO usable datastore" in when)


def test_rebuild_runbooks_keep_a_marked_stage_for_more_volume_data():
    for name in ("rebuild-node", "rebuild-node-gitops"):
        text = (REPO / "runbooks" / f"{name}.yaml").read_text()
        marker = text.index("# ---- stage: more volume data")
        assert text.index("name: volumes-restored") < marker
        after = "name: workloads-scaled-up" if name == "rebuild-node" else "name: argocd-state"
        assert marker < text.index(after)


def test_gitops_model_order_keys_before_controller_volumes_before_sync(drkit):
    r = drkit("runbook", "plan", "rebuild-node-gitops", "--json")
    assert r.code == 0, r.text
    names = [s["name"] for s in json.loads(r.out)["steps"]]
    order = ["node-files", "k3s-install-online", "k3s-unit-from-run", "k3s-running", "argocd", "reconciliation-stopped",
             "sealed-secrets-keys", "sealed-secrets-controller", "longhorn", "volumes-restored", "argocd-state",
             "reconciliation-resumed", "argocd-sync", "health-apps"]
    assert [n for n in names if n in order] == order
    assert not any(n.startswith("restore-") for n in names)  # a fresh datastore: nothing to restore into it


def test_datastore_model_stops_reconciliation_before_anything_is_installed_or_restored(drkit):
    r = drkit("runbook", "plan", "rebuild-node", "--json")
    steps = json.loads(r.out)["steps"]
    names = [s["name"] for s in steps]
    order = ["node-files", "k3s-install-online", "k3s-unit-from-run", "restore-sqlite", "k3s-running", "api-answers",
             "reconciliation-stopped", "workloads-scaled-down", "node-ready", "argocd-present", "sealed-secrets-keys",
             "longhorn-present", "volumes-restored", "workloads-scaled-up", "reconciliation-resumed", "health-apps"]
    assert [n for n in names if n in order] == order
    # helm only where a probe found the component missing: every helm step has a kubectl probe first
    for s in steps:
        if any("helm upgrade --install" in a for a in s["apply"]):
            assert s["probe"] and "kubectl" in s["probe"], s["name"]
