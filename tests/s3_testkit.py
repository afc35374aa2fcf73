"""A real S3-compatible server for the tests: moto's server, on 127.0.0.1, in this process.

:class:`S3Server` starts moto's S3 server (``pip install 'moto[server]'``, the ``test`` extra) on
a free port, creates a bucket and an IAM user whose access key may do anything on S3, then
turns on moto's request authentication: from then on the server checks every request's
signature, so wrong credentials are refused as MinIO or AWS would refuse them (403). It can be
stopped and started again on the same port, keeping its objects (connections are refused while
it is down), its access key can be refused (``AccessDenied``) and accepted again, and it can
answer ``503 ServiceUnavailable`` for a while (:meth:`S3Server.fail`).

:meth:`S3Server.store_spec` gives the store settings of both DataJoint generations (endpoint,
bucket, location, access_key, secret_key, ``secure: False``). Nothing here is a stand-in for
mei: the tests reach this server through DataJoint's own clients (s3fs on 2.x, minio on 0.14).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.request
from typing import Any

BUCKET = "mei-test"
REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_UNAVAILABLE = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ServiceUnavailable</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


def _moto_server(port: int) -> Any:
    """moto's threaded server, whose S3 answers ``503 ServiceUnavailable`` (as an overloaded
    MinIO or AWS does) while ``server.failing_until`` (a ``time.monotonic()``) lies ahead."""
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    class Server(ThreadedMotoServer):  # type: ignore[misc]
        failing_until = 0.0

        def _server_entry(self) -> None:  # moto's, with the app wrapped
            app = DomainDispatcherApplication(create_backend_app)

            def answer(environ: dict, start_response: Any) -> Any:
                path = environ.get("PATH_INFO", "")
                if time.monotonic() < self.failing_until and not path.startswith("/moto-api"):
                    start_response(
                        "503 Service Unavailable",
                        [
                            ("Content-Type", "application/xml"),
                            ("Content-Length", str(len(_UNAVAILABLE))),
                        ],
                    )
                    return [_UNAVAILABLE]
                return app(environ, start_response)

            self._server = make_server(
                self._ip_address, self._port, answer, True, request_handler=MotoRequestHandler
            )
            self._server_ready_event.set()
            self._server.serve_forever()

    return Server(ip_address="127.0.0.1", port=port, verbose=False)


class S3Server:
    """moto's S3 server on ``127.0.0.1:port`` with one bucket and one access key."""

    def __init__(self, bucket: str = BUCKET):
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
        self.bucket = bucket
        self.port = _free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.endpoint}"
        self._server = _moto_server(self.port)
        self._lock = threading.Lock()
        self.running = False
        self.start()
        self._set_auth(False)
        iam = self._client("iam", "any", "any")
        iam.create_user(UserName="lab")
        self._allow(iam, True)
        created = iam.create_access_key(UserName="lab")["AccessKey"]
        self.access_key = created["AccessKeyId"]
        self.secret_key = created["SecretAccessKey"]
        self._set_auth(True)
        self.client().create_bucket(Bucket=bucket)

    # -- the server ------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if not self.running:
                self._server.start()
                self.running = True

    def stop(self) -> None:
        """Stop listening: connections are refused until :meth:`start` (objects are kept)."""
        with self._lock:
            if self.running:
                self._server.stop()
                self.running = False

    def fail(self, seconds: float) -> None:
        """Answer every S3 request with ``503 ServiceUnavailable`` for ``seconds`` from now
        (``float("inf")``: until ``fail(0)``)."""
        self._server.failing_until = time.monotonic() + seconds

    def _set_auth(self, on: bool) -> None:
        """moto checks request signatures against its IAM users from now on (or stops)."""
        request = urllib.request.Request(
            f"{self.url}/moto-api/reset-auth",
            data=b"0" if on else b"inf",
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    @staticmethod
    def _allow(iam: Any, allowed: bool) -> None:
        statement = {"Effect": "Allow" if allowed else "Deny", "Action": "*", "Resource": "*"}
        iam.put_user_policy(
            UserName="lab",
            PolicyName="everything",
            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [statement]}),
        )

    def refuse_key(self, refused: bool = True) -> None:
        """Refuse (403 AccessDenied) every request made with the access key, or stop that."""
        self._set_auth(False)
        try:
            self._allow(self._client("iam", "any", "any"), not refused)
        finally:
            self._set_auth(True)

    # -- clients and settings --------------------------------------------------------------
    def _client(self, service: str, access_key: str, secret_key: str) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            service,
            endpoint_url=self.url,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=REGION,
            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
        )

    def client(self) -> Any:
        """A boto3 S3 client with the server's access key (for the tests' own looks)."""
        return self._client("s3", self.access_key, self.secret_key)

    def store_spec(self, location: str, **changes: Any) -> dict[str, Any]:
        """Store settings for DataJoint (both generations), files under ``location``."""
        spec = {
            "protocol": "s3",
            "endpoint": self.endpoint,
            "bucket": self.bucket,
            "location": location,
            "access_key": self.access_key,
            "secret_key": self.secret_key,
            "secure": False,
        }
        spec.update(changes)
        return spec

    def objects(self, prefix: str = "") -> list[str]:
        """The names of the bucket's objects under ``prefix``."""
        names: list[str] = []
        pages = self.client().get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=self.bucket, Prefix=prefix):
            names += [o["Key"] for o in page.get("Contents", [])]
        return names

    def close(self) -> None:
        self.stop()
