"""Fixtures shared by the source tests."""

from tests.fakes.kube_api import fake_kube  # noqa: F401 (re-exported fixture: the FAKE Kubernetes API server)
