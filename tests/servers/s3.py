"""moto's S3 server over real HTTP on a free loopback port, for tests.

:func:`start_moto` starts ``moto.server.ThreadedMotoServer`` (a real HTTP server in a
thread of the test process; boto3 talks to it over TCP like to any S3-compatible store).
moto keeps its state per process: use a fresh bucket name per test (:func:`new_bucket`).

:func:`iam_enforced` turns on moto's IAM authentication for the duration of a ``with``
block (moto's ``/moto-api/reset-auth``), to test rejected credentials and a
put/get/list-only policy.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tests.servers.sshd import free_port

ACCESS_KEY = "testing"
SECRET_KEY = "testing-secret"
REGION = "us-east-1"


@dataclass
class MotoServer:
    """A running moto server. ``stop()`` is idempotent."""

    host: str
    port: int
    server: Any

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def options(self, **extra: Any) -> dict[str, Any]:
        """``repository.s3`` options pointing at this server (static test credentials)."""
        opts: dict[str, Any] = {
            "endpoint_url": self.endpoint_url,
            "region": REGION,
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
            "addressing_style": "path",
        }
        opts.update(extra)
        return opts

    def client(self, service: str = "s3", **kwargs: Any) -> Any:
        """A raw boto3 client for this server (for test setup and inspection)."""
        import boto3

        args: dict[str, Any] = dict(
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )
        args.update(kwargs)
        return boto3.client(service, **args)

    def new_bucket(self, prefix: str = "drkit") -> str:
        """Create and return a fresh bucket."""
        name = f"{prefix}-{secrets.token_hex(6)}"
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


def start_moto(host: str = "127.0.0.1") -> MotoServer:
    """Start moto's ThreadedMotoServer on a free port of *host* and wait until it serves."""
    import logging
    import urllib.request

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise

    last: Exception | None = None
    for _ in range(3):
        port = free_port(host)
        server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
        try:
            server.start()
            with urllib.request.urlopen(f"http://{host}:{port}/moto-api/", timeout=5):
                pass
            return MotoServer(host, port, server)
        except Exception as exc:  # port raced away, or the server failed
            last = exc
            with contextlib.suppress(Exception):
                server.stop()
    raise RuntimeError(f"moto server did not start: {last}")


@contextlib.contextmanager
def iam_enforced(moto: MotoServer) -> Iterator[None]:
    """Inside the block moto checks signatures and IAM policies; restored afterwards."""
    import urllib.request

    def reset(value: str) -> str:
        req = urllib.request.Request(
            f"{moto.endpoint_url}/moto-api/reset-auth",
            data=value.encode(),
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            return str(json.load(resp)["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"])

    previous = reset("0")
    try:
        yield
    finally:
        reset(previous)


def create_user_with_policy(moto: MotoServer, user: str, actions: list[str], bucket: str) -> tuple[str, str]:
    """Create an IAM user allowed *actions* on *bucket*; return (access key id, secret).

    Call before :func:`iam_enforced` (setup requests must not need permissions).
    """
    iam = moto.client("iam")
    iam.create_user(UserName=user)
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": actions,
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
            }
        ],
    }
    iam.put_user_policy(UserName=user, PolicyName="drkit", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]
