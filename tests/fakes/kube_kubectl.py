"""What the FAKE Kubernetes API needs so that Debian's real ``kubectl`` can talk to it.

Test support only; used by :mod:`tests.fakes.kube_api`. kubectl (unlike drkit's Python
client) discovers resources before every command, sends its bearer token only over TLS,
and scales through the ``scale`` subresource. This module provides:

- TLS: a throwaway CA and a server certificate for 127.0.0.1 (:func:`make_tls`);
- discovery (legacy, non-aggregated; kubectl falls back to it): ``/api``, ``/api/v1``,
  ``/apis``, ``/apis/<group>/<version>`` built from the fake's resource types;
- ``autoscaling/v1`` Scale on Deployments and StatefulSets (GET, PATCH, PUT);
- a minimal workload controller: a Deployment or StatefulSet has exactly ``replicas``
  pods made from its template (labels, volumes), Running at once; scaling down deletes
  pods (those deletions are recorded in the fake's ``deleted`` like any other);
- ``kubectl wait``'s watch: a watch request is answered with the current objects as
  ``ADDED`` events and then closed (the condition is checked on what exists now).
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import ipaddress
import uuid
from pathlib import Path
from typing import Any

WORKLOAD_PLURALS = ("deployments", "statefulsets")


def make_tls(dir_: Path) -> tuple[Path, Path, bytes]:
    """(server cert file, key file, CA PEM) for 127.0.0.1, valid for a day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    dir_.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("fake-kube-ca")).issuer_name(name("fake-kube-ca"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name("fake-kube-apiserver")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_file, key_file = dir_ / "apiserver.crt", dir_ / "apiserver.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return cert_file, key_file, ca.public_bytes(serialization.Encoding.PEM)


def ca_data(pem: bytes) -> str:
    return base64.b64encode(pem).decode()


# --- discovery ---------------------------------------------------------------------------

_SHORT = {"persistentvolumeclaims": ["pvc"], "persistentvolumes": ["pv"], "namespaces": ["ns"],
          "deployments": ["deploy"], "statefulsets": ["sts"], "configmaps": ["cm"], "nodes": ["no"],
          "pods": ["po"], "applications": ["app", "apps"]}


def _resource_list(fake: Any, group: str, version: str) -> dict[str, Any]:
    resources = []
    for (g, plural), t in sorted(fake.types.items()):
        if g != group or t.version != version:
            continue
        resources.append({"name": plural, "singularName": t.kind.lower(), "namespaced": t.namespaced, "kind": t.kind,
                          "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                          "shortNames": _SHORT.get(plural, [])})
        if t.status_subresource:
            resources.append({"name": f"{plural}/status", "singularName": "", "namespaced": t.namespaced,
                              "kind": t.kind, "verbs": ["get", "patch", "update"]})
        if plural in WORKLOAD_PLURALS:
            resources.append({"name": f"{plural}/scale", "singularName": "", "namespaced": True, "kind": "Scale",
                              "group": "autoscaling", "version": "v1", "verbs": ["get", "patch", "update"]})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources}


def discovery(fake: Any, path: str) -> dict[str, Any] | None:
    """The discovery document for *path*, or None when *path* is not a discovery path."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["openapi", "v3"]:
        return _openapi_v3(fake, parts[2:])
    if parts == ["api"]:
        return {"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}]}
    if parts == ["api", "v1"]:
        return _resource_list(fake, "", "v1")
    groups: dict[str, str] = {}
    for (g, _), t in fake.types.items():
        if g:
            groups[g] = t.version
    if parts == ["apis"]:
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
             "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v}} for g, v in sorted(groups.items())]}
    if len(parts) == 2 and parts[0] == "apis" and parts[1] in groups:
        g = parts[1]
        v = groups[g]
        return {"kind": "APIGroup", "apiVersion": "v1", "name": g,
                "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
                "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v}}
    if len(parts) == 3 and parts[0] == "apis" and groups.get(parts[1]) == parts[2]:
        return _resource_list(fake, parts[1], parts[2])
    return None


def _openapi_v3(fake: Any, gv_parts: list[str]) -> dict[str, Any] | None:
    """Just enough OpenAPI v3 for kubectl to see that the server validates fields itself
    (a PATCH operation per kind with the ``fieldValidation`` parameter): kubectl then
    sends ``fieldValidation=Strict`` instead of validating against downloaded schemas.
    The schemas themselves are not published (the fake validates every object)."""
    gvs: dict[str, list[Any]] = {}
    for (g, _), t in sorted(fake.types.items()):
        gvs.setdefault(f"apis/{g}/{t.version}" if g else "api/v1", []).append(t)
    if not gv_parts:
        return {"paths": {gv: {"serverRelativeURL": f"/openapi/v3/{gv}?hash=fake"} for gv in gvs}}
    key = "/".join(gv_parts)
    if key not in gvs:
        return None
    paths: dict[str, Any] = {}
    for t in gvs[key]:
        base = f"/{key}/namespaces/{{namespace}}/{t.plural}/{{name}}" if t.namespaced else f"/{key}/{t.plural}/{{name}}"
        paths[base] = {"patch": {
            "x-kubernetes-group-version-kind": {"group": t.group, "version": t.version, "kind": t.kind},
            "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
                           {"name": "fieldManager", "in": "query", "schema": {"type": "string"}}],
            "responses": {"200": {"description": "OK"}}}}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes (FAKE)", "version": "v1.31.4"}, "paths": paths}


# --- scale and the workload controller -----------------------------------------------------

def scale_doc(obj: dict[str, Any]) -> dict[str, Any]:
    labels = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    replicas = int((obj.get("spec") or {}).get("replicas", 1))
    return {"kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {"name": obj["metadata"]["name"], "namespace": obj["metadata"]["namespace"],
                         "uid": obj["metadata"]["uid"], "resourceVersion": obj["metadata"]["resourceVersion"]},
            "spec": {"replicas": replicas},
            "status": {"replicas": int((obj.get("status") or {}).get("replicas", 0)),
                       "selector": ",".join(f"{k}={v}" for k, v in sorted(labels.items()))}}


def set_scale(fake: Any, rtype: Any, ns: str, name: str, body: Any) -> dict[str, Any]:
    """PATCH/PUT of a Scale: ``spec.replicas`` of the workload changes."""
    from tests.fakes.kube_api import ApiError

    obj = fake._must_get(rtype, ns, name)
    replicas = ((body or {}).get("spec") or {}).get("replicas") if isinstance(body, dict) else None
    if not isinstance(replicas, int) or replicas < 0:
        raise ApiError(422, "Invalid", f'Scale "{name}" is invalid: spec.replicas: Invalid value: {replicas!r}')
    rv = ((body.get("metadata") or {}).get("resourceVersion"))
    if rv and rv != obj["metadata"]["resourceVersion"]:
        raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {rtype.plural} "{name}": the object has '
                       "been modified; please apply your changes to the latest version and try again")
    obj["spec"]["replicas"] = replicas
    obj["metadata"]["generation"] = obj["metadata"].get("generation", 1) + 1
    fake._bump(obj)
    reconcile(fake, rtype, obj)
    return scale_doc(obj)


def reconcile(fake: Any, rtype: Any, obj: dict[str, Any]) -> None:
    """Make the workload's pods match ``spec.replicas`` (what the controllers and the
    kubelet do, at once): extra pods deleted, missing ones created Running."""
    if rtype.plural not in WORKLOAD_PLURALS:
        return
    ns = obj["metadata"]["namespace"]
    name = obj["metadata"]["name"]
    spec = obj.get("spec") or {}
    want = int(spec.get("replicas", 1))
    template = spec.get("template") or {}
    labels = dict((template.get("metadata") or {}).get("labels") or {})
    pod_type = fake.types[("", "pods")]
    owned = sorted((o for (g, p, ons, _), o in fake.objects.items()
                    if (g, p) == ("", "pods") and ons == ns
                    and any(r.get("uid") == obj["metadata"]["uid"] for r in o["metadata"].get("ownerReferences") or [])),
                   key=lambda o: o["metadata"]["name"])
    for pod in owned[want:]:
        fake.delete(pod_type, ns, pod["metadata"]["name"])
    for i in range(len(owned), want):
        pod_name = f"{name}-{i}" if rtype.plural == "statefulsets" else f"{name}-{uuid.uuid4().hex[:5]}"
        pod_spec = copy.deepcopy(template.get("spec") or {"containers": [{"name": "main", "image": "busybox"}]})
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": pod_name, "namespace": ns, "labels": labels,
                            "ownerReferences": [{"apiVersion": rtype.api_version, "kind": rtype.kind, "name": name,
                                                 "uid": obj["metadata"]["uid"], "controller": True}]},
               "spec": pod_spec}
        created = fake.create(pod_type, ns, pod, "Strict")
        created["status"] = {"phase": "Running"}
    obj["status"] = {"replicas": want, "readyReplicas": want, "availableReplicas": want, "updatedReplicas": want,
                     "observedGeneration": obj["metadata"].get("generation", 1)}


def watch_events(fake: Any, rtype: Any, ns: str | None, query: dict[str, str]) -> bytes:
    """A watch answered with the current matching objects as ADDED events (then closed)."""
    import json

    listed = fake._list(rtype, ns, query)
    out = b""
    for item in listed["items"]:
        item.setdefault("apiVersion", rtype.api_version)
        item.setdefault("kind", rtype.kind)
        out += json.dumps({"type": "ADDED", "object": item}).encode() + b"\n"
    return out
