"""Fixtures of the FAKE Kubernetes API server (see kube_api.py)."""

from tests.fakes.kube_api import fake_kube  # noqa: F401 (re-exported fixture)
