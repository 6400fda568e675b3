"""An S3-compatible server on 127.0.0.1 for the test run: moto's, in a child process.

Register with ``pytest_plugins = ["tests.s3server"]``. The session fixture
`s3_server` starts the server on a free port and points boto3 at it
(``AWS_ENDPOINT_URL`` and fake credentials, for this process and the
processes it starts); `s3_saver` gives each test an `S3Saver` under its own
prefix of the bucket ``agents``. With ``CI=true`` a server that does not
start fails the tests that need it; elsewhere they are skipped.

moto checks ``If-None-Match``/``If-Match`` and then writes without a lock,
so two requests racing could both pass the check; real S3 decides them
atomically. The server therefore handles one request at a time, which is
what S3's conditional writes promise. Run it alone with
``python -m tests.s3server`` (it prints its port).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "agents"
ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class S3Server:
    """A running server: its endpoint and a client for test set-up."""

    def __init__(self, endpoint: str, process: subprocess.Popen[str]) -> None:
        self.endpoint = endpoint
        self.process = process

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, **_client_env())

    def delete_prefix(self, bucket: str, prefix: str) -> None:
        client = self.client()
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys})


def _client_env() -> dict[str, str]:
    return {
        "aws_access_key_id": ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": ENV["AWS_DEFAULT_REGION"],
    }


def start_server(timeout: float = 30.0) -> S3Server:
    """Start the server in a child process; return once it accepts requests."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.s3server"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    ready: list[str] = []

    def read_port() -> None:
        line = process.stdout.readline() if process.stdout else ""
        ready.append(line.strip())

    reader = threading.Thread(target=read_port, daemon=True)
    reader.start()
    reader.join(timeout)
    if not ready or not ready[0].isdigit():
        process.kill()
        raise RuntimeError(f"the S3 test server did not start (said {ready!r})")
    return S3Server(f"http://127.0.0.1:{ready[0]}", process)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """Start moto's S3 server on loopback and point boto3 at it."""
    try:
        server = start_server()
    except Exception as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot start the S3 test server: {exc}")
        pytest.skip(f"cannot start the S3 test server: {exc}")
    patch = pytest.MonkeyPatch()
    for name, value in ENV.items():
        patch.setenv(name, value)
    patch.setenv("AWS_ENDPOINT_URL", server.endpoint)
    # boto3 must never sign requests for a real account from the tests.
    patch.delenv("AWS_PROFILE", raising=False)
    server.client().create_bucket(Bucket=BUCKET)
    try:
        yield server
    finally:
        patch.undo()
        server.process.terminate()
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()


@pytest.fixture
def s3_prefix(s3_server: S3Server) -> Iterator[str]:
    """A fresh key prefix in the ``agents`` bucket, emptied afterwards."""
    prefix = f"test-{uuid.uuid4().hex[:12]}/"
    yield prefix
    s3_server.delete_prefix(BUCKET, prefix)


@pytest.fixture
def s3_saver(s3_server: S3Server, s3_prefix: str) -> Iterator[Any]:
    from agentmatic.checkpoint.s3 import S3Saver

    saver = S3Saver(bucket=BUCKET, prefix=s3_prefix, page_size=8)
    yield saver
    saver.close()


def _serve() -> None:
    """Serve moto's S3 on a free loopback port, one request at a time."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def serialized(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with lock:
            result = app(environ, start_response)
            try:
                return [b"".join(result)]
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()

    server = make_server(
        "127.0.0.1", 0, serialized, threaded=True, request_handler=MotoRequestHandler
    )
    print(server.server_port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    _serve()
