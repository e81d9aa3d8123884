#!/usr/bin/env python3
"""STAND-IN for programs that cannot run on a test machine (k3s, kubectl, helm, apt-get,
systemctl, curl, swapon, swapoff, modprobe, lsmod, sysctl, dpkg-query).

NOT the real programs. Each name in this directory is a symlink to this file; a test
links them into a bin directory on the runbook's PATH next to ``standin.json``
(``{"root": ..., "log": ..., "state": ...}``). Every call is appended to the log as one
JSON line (tool, argv, and for the K3s installer the relevant environment, with the
token only as a SHA-256), and a small JSON state file models just enough of the node
and the cluster (installed packages, services, loaded modules, sysctls, Kubernetes
objects, Helm releases) for the runbook's probes to see the effect of its actions.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(os.path.abspath(sys.argv[0])).parent
TOOL = Path(sys.argv[0]).name
CONF = json.loads((HERE / "standin.json").read_text())
ROOT = Path(CONF["root"])
STATE_PATH = Path(CONF["state"])
ARGS = sys.argv[1:]
STDIN = ""
INSTALLER = """#!/bin/sh
# STAND-IN for https://get.k3s.io (written by the curl stand-in)
exec k3s-install-standin "$@"
"""


def out(text: str) -> None:
    sys.stdout.write(text)


def fail(msg: str, code: int = 1) -> None:
    sys.stderr.write(f"{TOOL} (stand-in): {msg}\n")
    sys.exit(code)


def log(extra: dict[str, Any] | None = None) -> None:
    entry = {"tool": TOOL, "argv": ARGS}
    if extra:
        entry.update(extra)
    with open(CONF["log"], "a") as f:
        f.write(json.dumps(entry) + "\n")


def load() -> dict[str, Any]:
    try:
        return json.loads(STATE_PATH.read_text())
    except FileNotFoundError:
        return {}


def save(state: dict[str, Any]) -> None:
    tmp = STATE_PATH.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, STATE_PATH)


# ---- node -------------------------------------------------------------------------------

def apt_get(st: dict[str, Any]) -> None:
    if ARGS and ARGS[0] == "update":
        return
    if ARGS and ARGS[0] == "install":
        pkgs = [a for a in ARGS[1:] if not a.startswith("-")]
        st.setdefault("packages", [])
        st["packages"] = sorted(set(st["packages"]) | set(pkgs))
        return
    fail(f"unsupported: {ARGS}")


def dpkg_query(st: dict[str, Any]) -> None:
    pkg = [a for a in ARGS if not a.startswith("-")][-1]
    if pkg in st.get("packages", []):
        out("ii ")
        return
    fail(f"no packages found matching {pkg}")


def systemctl(st: dict[str, Any]) -> None:
    services = st.setdefault("services", {})
    words = [a for a in ARGS if not a.startswith("-")]
    verb, name = words[0], words[1] if len(words) > 1 else ""
    svc = services.setdefault(name, {"enabled": False, "active": False})
    if verb == "daemon-reload":
        st["daemon_reloads"] = st.get("daemon_reloads", 0) + 1
        return
    if verb == "is-active":
        sys.exit(0 if svc["active"] else 3)
    if verb == "is-enabled":
        sys.exit(0 if svc["enabled"] else 1)
    if verb in ("start", "enable", "restart"):
        if verb == "enable":
            svc["enabled"] = True
        if verb != "enable" or "--now" in ARGS:
            svc["active"] = True
            if name == "k3s":
                k3s_started(st)
        return
    if verb == "stop":
        svc["active"] = False
        if name == "k3s":
            for o in objects(st).values():
                if o["kind"] == "node":
                    o["status"]["conditions"][0]["status"] = "Unknown"
        return
    fail(f"unsupported: {ARGS}")


def k3s_started(st: dict[str, Any]) -> None:
    if "k3s_version" not in st:
        fail("k3s is not installed")
    db = ROOT / "var/lib/rancher/k3s/server/db/state.db"
    if not db.exists():  # a data dir named by the restored run (under the root)
        db = next(iter(sorted(ROOT.glob("**/server/db/state.db"))), db)
    if CONF.get("kubeconfig"):  # K3s writes its admin kubeconfig on start
        kc = ROOT / "etc/rancher/k3s/k3s.yaml"
        kc.parent.mkdir(parents=True, exist_ok=True)
        kc.write_text(Path(CONF["kubeconfig"]).read_text())
    st.setdefault("k3s_starts", []).append(
        {"state_db_sha256": hashlib.sha256(db.read_bytes()).hexdigest() if db.exists() else None}
    )
    node = CONF.get("node_name", "node1")
    objects(st)[f"node//{node}"] = {
        "kind": "node", "metadata": {"name": node},
        "status": {"conditions": [{"type": "Ready", "status": "False"}]},
    }  # Ready once someone waits for it (kubectl wait)


def swapon(st: dict[str, Any]) -> None:
    for line in st.get("swap", []):
        out(line + "\n")


def swapoff(st: dict[str, Any]) -> None:
    st["swap"] = []


def modprobe(st: dict[str, Any]) -> None:
    st["modules"] = sorted(set(st.get("modules", [])) | {ARGS[-1]})


def lsmod(st: dict[str, Any]) -> None:
    out("Module                  Size  Used by\n")
    for m in st.get("modules", []):
        out(f"{m} 16384 0\n")


def sysctl(st: dict[str, Any]) -> None:
    if ARGS == ["--system"]:
        values = st.setdefault("sysctl", {})
        for conf in sorted((ROOT / "etc/sysctl.d").glob("*.conf")):
            for line in conf.read_text().splitlines():
                if "=" in line and not line.lstrip().startswith("#"):
                    k, v = line.split("=", 1)
                    values[k.strip()] = v.strip()
        return
    if ARGS[0] == "-n":
        value = st.get("sysctl", {}).get(ARGS[1])
        if value is None:
            fail(f"cannot stat /proc/sys/{ARGS[1].replace('.', '/')}", 255)
        out(value + "\n")
        return
    fail(f"unsupported: {ARGS}")


def curl(st: dict[str, Any]) -> None:
    dest = ARGS[ARGS.index("-o") + 1]
    Path(dest).write_text(INSTALLER)


def k3s_installer(st: dict[str, Any]) -> dict[str, Any]:
    env = {k: os.environ.get(k) for k in ("INSTALL_K3S_VERSION", "INSTALL_K3S_SKIP_START", "INSTALL_K3S_SKIP_ENABLE",
                                          "INSTALL_K3S_SKIP_DOWNLOAD")}
    token = os.environ.get("K3S_TOKEN")
    env["K3S_TOKEN_sha256"] = hashlib.sha256(token.encode()).hexdigest() if token else None
    if not env["INSTALL_K3S_VERSION"]:
        fail("INSTALL_K3S_VERSION is not set")
    st["k3s_version"] = env["INSTALL_K3S_VERSION"]
    # like install.sh: (re)writes the unit and its env file
    unit = ROOT / "etc/systemd/system/k3s.service"
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text("[Service]\nEnvironmentFile=-/etc/systemd/system/k3s.service.env\n"
                    "ExecStart=/usr/local/bin/k3s server\n")
    (unit.parent / "k3s.service.env").write_text("".join(f"{k}={v}\n" for k, v in os.environ.items()
                                                         if k.startswith("K3S_")))
    svc = st.setdefault("services", {}).setdefault("k3s", {"enabled": False, "active": False})
    if env["INSTALL_K3S_SKIP_START"] != "true":
        svc["active"] = True
        k3s_started(st)
    return {"env": env}


def k3s(st: dict[str, Any]) -> None:
    if ARGS == ["--version"]:
        if "k3s_version" not in st:
            fail("not installed", 127)
        out(f"k3s version {st['k3s_version']} (stand-in)\ngo version go1.22\n")
        return
    if ARGS[:2] == ["server", "--cluster-reset"]:
        path = next(a.split("=", 1)[1] for a in ARGS if a.startswith("--cluster-reset-restore-path="))
        if not Path(path).is_file():
            fail(f"restore path {path} does not exist")
        st["cluster_reset_from_sha256"] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        return
    fail(f"unsupported: {ARGS}")


# ---- cluster ---------------------------------------------------------------------------

KINDS = {
    "node": "node", "nodes": "node", "namespace": "namespace", "namespaces": "namespace", "ns": "namespace",
    "secret": "secret", "secrets": "secret", "pvc": "pvc", "persistentvolumeclaim": "pvc",
    "persistentvolumeclaims": "pvc", "application": "application", "applications": "application",
    "applications.argoproj.io": "application", "backuptargets.longhorn.io": "backuptarget",
    "backuptarget": "backuptarget", "statefulset": "statefulset", "statefulsets": "statefulset",
    "deployment": "deployment", "deployments": "deployment", "application.argoproj.io": "application",
    "backuptarget.longhorn.io": "backuptarget", "statefulset.apps": "statefulset", "deployment.apps": "deployment",
}
CLUSTER_SCOPED = {"node", "namespace"}
NAME_PREFIX = {"application": "application.argoproj.io", "backuptarget": "backuptarget.longhorn.io",
               "statefulset": "statefulset.apps", "deployment": "deployment.apps", "pvc": "persistentvolumeclaim"}


def objects(st: dict[str, Any]) -> dict[str, Any]:
    return st.setdefault("objects", {})


def key(kind: str, ns: str, name: str) -> str:
    return f"{kind}/{'' if kind in CLUSTER_SCOPED else ns}/{name}"


def parse_kubectl() -> tuple[list[str], dict[str, Any]]:
    opts: dict[str, Any] = {"n": "default", "f": []}
    words: list[str] = []
    it = iter(ARGS)
    for a in it:
        if a in ("-n", "--namespace"):
            opts["n"] = next(it)
        elif a.startswith("--namespace="):
            opts["n"] = a.split("=", 1)[1]
        elif a in ("-o", "-l", "-p", "--type"):
            opts[a.lstrip("-")] = next(it)
        elif a == "-f":
            opts["f"].append(next(it))
        elif a.startswith("-o="):
            opts["o"] = a[3:]
        elif a in ("-A", "--all-namespaces"):
            opts["A"] = True
        elif a == "-R":
            opts["R"] = True
        elif a.startswith("--") and "=" in a:
            k, v = a[2:].split("=", 1)
            opts[k] = v
        else:
            words.append(a)
    return words, opts


def resource(words: list[str]) -> tuple[str, str | None]:
    first = words[0]
    if "/" in first:
        kind, name = first.split("/", 1)
    else:
        kind, name = first, (words[1] if len(words) > 1 else None)
    if kind not in KINDS:
        fail(f'the server doesn\'t have a resource type "{kind}"')
    return KINDS[kind], name


def select(st: dict[str, Any], kind: str, name: str | None, opts: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for k, o in sorted(objects(st).items()):
        okind, ons, oname = k.split("/", 2)
        if okind != kind:
            continue
        if kind not in CLUSTER_SCOPED and not opts.get("A") and ons != opts["n"]:
            continue
        if name is not None and oname != name:
            continue
        if "l" in opts:
            lk, _, lv = opts["l"].partition("=")
            labels = o.get("metadata", {}).get("labels", {}) or {}
            if lk not in labels or (lv and labels[lk] != lv):
                continue
        found.append(o)
    return found


def jsonpath(obj: Any, path: str) -> str:
    """The subset of kubectl's JSONPath the runbooks use."""
    m = re.fullmatch(r"\{range \.items\[\*\]\}(.*)\{end\}", path)
    if m:
        return "".join(jsonpath(item, m.group(1)) for item in obj["items"])
    result = ""
    for tok in re.findall(r'\{("(?:[^"\\]|\\.)*"|[^{}]*)\}|([^{]+)', path):
        expr, lit = tok
        if lit:
            result += lit
        elif expr.startswith('"'):
            result += json.loads(expr)
        else:
            result += _field(obj, expr)
    return result


def _field(obj: Any, expr: str) -> str:
    cond = re.fullmatch(r'\.status\.conditions\[\?\(@\.type=="(\w+)"\)\]\.status', expr)
    if cond:
        for c in obj.get("status", {}).get("conditions", []):
            if c["type"] == cond.group(1):
                return str(c["status"])
        return ""
    cur = obj
    for part in expr.strip(".").split("."):
        if not isinstance(cur, dict) or part not in cur or cur[part] is None:
            return ""
        cur = cur[part]
    if isinstance(cur, bool):
        return "true" if cur else "false"
    if isinstance(cur, (dict, list)):
        return json.dumps(cur, separators=(",", ":"))
    return str(cur)


def kubectl(st: dict[str, Any]) -> None:
    words, opts = parse_kubectl()
    verb, rest = words[0], words[1:]
    if verb == "get":
        kind, name = resource(rest)
        found = select(st, kind, name, opts)
        if name is not None and not found:
            fail(f'{kind} "{name}" not found')
        fmt = opts.get("o", "")
        if fmt == "name":
            for o in found:
                out(f"{NAME_PREFIX.get(kind, kind)}/{o['metadata']['name']}\n")
        elif fmt.startswith("jsonpath="):
            target = found[0] if name is not None else {"items": found}
            out(jsonpath(target, fmt[len("jsonpath="):]))
        else:
            for o in found:
                out(o["metadata"]["name"] + "\n")
        return
    if verb == "wait":
        kind, name = resource(rest)
        cond = opts["for"]
        found = select(st, kind, name, opts)
        if not found:
            fail(f'{kind} "{name}" not found')
        if cond.startswith("condition="):
            if kind == "node" and st.get("services", {}).get("k3s", {}).get("active"):
                found[0]["status"]["conditions"][0]["status"] = "True"  # the kubelet came up meanwhile
            value = _field(found[0], f'.status.conditions[?(@.type=="{cond.split("=", 1)[1]}")].status')
            ok = value == "True"
        else:
            path, _, want = cond[len("jsonpath="):].rpartition("=")
            ok = jsonpath(found[0], path) == want
        if not ok:
            fail(f"timed out waiting for the condition on {kind}/{name}")
        out(f"{kind}/{name} condition met\n")
        return
    if verb == "create" and rest[0] == "namespace":
        if opts.get("dry-run") == "client":
            out(yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": rest[1]}}))
            return
    if verb == "apply":
        docs: list[Any] = []
        for f in opts["f"]:
            if f == "-":
                docs += list(yaml.safe_load_all(STDIN))
            elif Path(f).is_dir():
                files = sorted(Path(f).rglob("*.yaml") if opts.get("R") else Path(f).glob("*.yaml"))
                for p in files:
                    docs += list(yaml.safe_load_all(p.read_text()))
            else:
                docs += list(yaml.safe_load_all(Path(f).read_text()))
        for d in docs:
            if not d:
                continue
            kind = KINDS[d["kind"].lower()]
            md = d["metadata"]
            obj = {"kind": kind, "metadata": {"name": md["name"], "namespace": md.get("namespace", opts["n"]),
                                               "labels": md.get("labels", {})}}
            data = dict(d.get("stringData") or {})
            if data or d.get("data"):
                # only digests: the stand-in's state must not hold secret values either
                obj["data_sha256"] = {k: hashlib.sha256(str(v).encode()).hexdigest() for k, v in {**(d.get("data") or {}), **data}.items()}
            objects(st)[key(kind, obj["metadata"]["namespace"], md["name"])] = obj
            out(f"{NAME_PREFIX.get(kind, kind)}/{md['name']} configured\n")
        return
    if verb == "patch":
        kind, name = resource(rest)
        found = select(st, kind, name, opts)
        if not found:
            fail(f'{kind} "{name}" not found')
        if opts.get("type") != "merge":
            fail("custom resources reject strategic merge patches (415): use --type merge")
        patch = json.loads(opts["p"])
        obj = found[0]
        _merge(obj, patch)
        if kind == "backuptarget" and obj.get("spec", {}).get("backupTargetURL"):
            obj.setdefault("status", {})["available"] = True
        if kind == "application" and "operation" in patch:
            ctrl = select(st, "statefulset", "argocd-application-controller", {"n": obj["metadata"]["namespace"]})
            if ctrl and ctrl[0]["status"].get("readyReplicas", 0) > 0:
                # synced at once, healthy one status query later (exercises until/retries)
                obj["status"] = {"sync": {"status": "Synced"}, "health": {"status": "Progressing"}}
                obj.pop("operation", None)
                st.setdefault("progressing", []).append(obj["metadata"]["name"])
        out(f"{kind}/{name} patched\n")
        return
    if verb == "scale":
        kind, name = resource(rest)
        found = select(st, kind, name, opts)
        if not found:
            fail(f'{kind} "{name}" not found')
        n = int(opts["replicas"])
        found[0]["spec"]["replicas"] = n
        found[0]["status"] = {"replicas": n, "readyReplicas": n}
        out(f"{kind}/{name} scaled\n")
        return
    fail(f"unsupported: {ARGS}")


def _merge(obj: dict[str, Any], patch: dict[str, Any]) -> None:
    for k, v in patch.items():
        if v is None:
            obj.pop(k, None)
        elif isinstance(v, dict) and isinstance(obj.get(k), dict):
            _merge(obj[k], v)
        else:
            obj[k] = v


def settle(st: dict[str, Any]) -> None:
    """An Application that was Progressing is Healthy the next time it is looked at."""
    for name in st.pop("progressing", []):
        for o in objects(st).values():
            if o["kind"] == "application" and o["metadata"]["name"] == name:
                o["status"]["health"]["status"] = "Healthy"


def helm(st: dict[str, Any]) -> None:
    releases = st.setdefault("releases", {})
    words, opts = [], {"n": "default", "set": {}}
    it = iter(ARGS)
    for a in it:
        if a in ("-n", "--namespace"):
            opts["n"] = next(it)
        elif a in ("--repo", "--version", "--timeout", "-f", "-o"):
            opts[a.lstrip("-")] = next(it)
        elif a == "--set":
            k, v = next(it).split("=", 1)
            opts["set"][k] = v
        elif a.startswith("-"):
            opts[a.lstrip("-")] = True
        else:
            words.append(a)
    if words[:1] == ["list"]:
        rx = re.compile(opts.get("f", ".*"))
        rows = [r for k, r in sorted(releases.items()) if r["namespace"] == opts["n"] and rx.search(r["name"])]
        out(json.dumps(rows, separators=(",", ":")) + "\n")
        return
    if words[:1] == ["upgrade"] and opts.get("install"):
        name, chart = words[1], words[2]
        ns = opts["n"]
        releases[f"{ns}/{name}"] = {"name": name, "namespace": ns, "revision": "1", "status": "deployed",
                                    "chart": f"{chart}-{opts['version']}", "app_version": "stand-in"}
        if chart == "argo-cd":
            n = int(opts["set"].get("controller.replicas", "1"))
            objects(st)[key("statefulset", ns, "argocd-application-controller")] = {
                "kind": "statefulset", "metadata": {"name": "argocd-application-controller", "namespace": ns},
                "spec": {"replicas": n}, "status": {"replicas": n, "readyReplicas": n},
            }
        if chart == "sealed-secrets":
            keys = select(st, "secret", None, {"n": ns, "l": "sealedsecrets.bitnami.com/sealed-secrets-key"})
            st["sealed_secrets_keys_at_controller_start"] = sorted(o["metadata"]["name"] for o in keys)
        if chart == "longhorn":
            objects(st)[key("backuptarget", ns, "default")] = {
                "kind": "backuptarget", "metadata": {"name": "default", "namespace": ns},
                "spec": {"backupTargetURL": ""}, "status": {"available": False},
            }
        if CONF.get("kubeconfig"):
            _helm_into_cluster(st, chart, ns, opts)
        out(f'Release "{name}" has been upgraded. Happy Helming!\n')
        return
    fail(f"unsupported: {ARGS}")


def _kubectl(*args: str, stdin: str | None = None) -> str:
    """The REAL kubectl (not this stand-in), against the cluster the runbook's KUBECONFIG names."""
    import subprocess

    real = next(p for p in ("/usr/bin/kubectl", "/usr/local/bin/kubectl") if Path(p).exists())
    proc = subprocess.run([real, *args], input=stdin, capture_output=True, text=True, timeout=120)
    if proc.returncode:
        fail(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def _helm_into_cluster(st: dict[str, Any], chart: str, ns: str, opts: dict[str, Any]) -> None:
    """What a chart's install puts in the cluster that the runbooks look at (a FAKE API in the tests)."""
    _kubectl("apply", "-f", "-", stdin=f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n")
    if chart == "argo-cd":
        n = int(opts["set"].get("controller.replicas", "1"))
        _kubectl("apply", "-f", "-", stdin=yaml.safe_dump({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "argocd-application-controller", "namespace": ns},
            "spec": {"replicas": n, "serviceName": "argocd-application-controller",
                     "selector": {"matchLabels": {"app": "argocd-application-controller"}},
                     "template": {"metadata": {"labels": {"app": "argocd-application-controller"}},
                                  "spec": {"containers": [{"name": "c", "image": "quay.io/argoproj/argocd"}]}}}}))
        _kubectl("apply", "-f", "-", stdin=f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: argocd-cm, namespace: {ns}}}\n")
    if chart == "sealed-secrets":
        keys = _kubectl("-n", ns, "get", "secret", "-l", "sealedsecrets.bitnami.com/sealed-secrets-key", "-o", "name")
        st["sealed_secrets_keys_in_cluster_at_controller_start"] = sorted(keys.split())
        _kubectl("apply", "-f", "-", stdin=yaml.safe_dump({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "sealed-secrets-controller", "namespace": ns},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"name": "sealed-secrets-controller"}},
                     "template": {"metadata": {"labels": {"name": "sealed-secrets-controller"}},
                                  "spec": {"containers": [{"name": "c", "image": "bitnami/sealed-secrets"}]}}}}))


def main() -> None:
    handlers = {
        "apt-get": apt_get, "dpkg-query": dpkg_query, "systemctl": systemctl, "swapon": swapon,
        "swapoff": swapoff, "modprobe": modprobe, "lsmod": lsmod, "sysctl": sysctl, "curl": curl,
        "k3s": k3s, "kubectl": kubectl, "helm": helm,
    }
    global STDIN
    # read a pipe BEFORE taking the state lock: in 'kubectl create ... | kubectl apply -f -'
    # both run at once, and the writer needs the lock too
    STDIN = sys.stdin.read() if TOOL == "kubectl" and "apply" in ARGS and "-" in ARGS else ""
    with open(STATE_PATH.with_suffix(".lock"), "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)
        st = load()
        if TOOL == "k3s-install-standin":
            log(k3s_installer(st))
        else:
            log()
            if TOOL == "kubectl" and ARGS and ARGS[0] != "patch" and "patch" not in ARGS:
                before = list(st.get("progressing", []))
                try:
                    handlers[TOOL](st)
                finally:
                    if before:
                        settle(st)
                    save(st)
                return
            try:
                handlers[TOOL](st)
            finally:
                save(st)
        save(st)


if __name__ == "__main__":
    main()
