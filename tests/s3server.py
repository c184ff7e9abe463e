"""A real S3-compatible HTTP server for the object-storage tests: moto's server mode
(``moto_server``, pinned in the ``test`` extra), started as its own process on 127.0.0.1 on a free
port and ended by PID. What raygap talks to is the S3 REST protocol over HTTP, through pyarrow's
S3 client, exactly as it would talk to AWS S3 or MinIO; moto keeps the objects in its memory.

Use the ``s3`` fixture (tests/conftest.py): ``s3.env`` is the environment a ``raygap`` process
needs (endpoint and keys given the standard AWS way), ``s3.bucket(name)`` makes a bucket,
``s3.keys(bucket, prefix)`` lists the object keys in it (through boto3, not through raygap)."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

KEYS = {"AWS_ACCESS_KEY_ID": "raygap-test", "AWS_SECRET_ACCESS_KEY": "raygap-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """One ``moto_server`` process; :meth:`stop` ends it (by its PID)."""

    def __init__(self, log: Path):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        exe = Path(sys.executable).with_name("moto_server")
        self._log = open(log, "w")
        self.p = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(self.port)],
                                  stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2).read()
                break
            except OSError:
                if self.p.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto_server did not start (see {log})")
                time.sleep(0.2)

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to reach this server: the endpoint and the keys, as AWS documents
        them (``AWS_ENDPOINT_URL_S3``; pyarrow and boto3 both read it)."""
        return {**KEYS, "AWS_ENDPOINT_URL_S3": self.endpoint, "AWS_ENDPOINT_URL": self.endpoint}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=KEYS["AWS_REGION"],
                            aws_access_key_id=KEYS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=KEYS["AWS_SECRET_ACCESS_KEY"])

    def bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key under ``prefix`` in ``bucket``, sorted."""
        out, token = [], None
        c = self.client()
        while True:
            kw = {"Bucket": bucket, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
            r = c.list_objects_v2(**kw)
            out += [o["Key"] for o in r.get("Contents", [])]
            if not r.get("IsTruncated"):
                return sorted(out)
            token = r["NextContinuationToken"]

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self._log.close()
