"""A real S3-protocol server on 127.0.0.1 for the tests: moto's server mode, reached with s3fs.

The server runs in the test process (``ThreadedMotoServer``); the commands under test run in
their own processes and reach it over HTTP like any S3 endpoint. Stopping it and starting it
again on the same port keeps the buckets (moto's backends live in this process).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid

ACCESS_KEY = "AKIADISTCONVTEST0001"
SECRET_KEY = "distconv-test-secret-4d1f9b"


class S3Server:
    """moto's S3 server on 127.0.0.1: ``endpoint`` is its URL."""

    def __init__(self):
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, self.port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{self.port}"

    def stop(self) -> None:
        self._server.stop()

    def start_again(self) -> None:
        """Serve again on the same port, with the same buckets."""
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def filesystem(self, **options):
        """A fresh s3fs client (no cached listings) with the test credentials."""
        import s3fs

        return s3fs.S3FileSystem(
            endpoint_url=self.endpoint,
            key=ACCESS_KEY,
            secret=SECRET_KEY,
            skip_instance_cache=True,
            **options,
        )

    def new_bucket(self) -> str:
        name = f"b-{uuid.uuid4().hex[:12]}"
        self.filesystem().mkdir(name)
        return name

    def enforce_iam(self, enforce: bool) -> None:
        """Have the server check every request against IAM policies (moto's reset-auth)."""
        import requests

        count = b"0" if enforce else b"inf"
        requests.post(f"{self.endpoint}/moto-api/reset-auth", data=count, timeout=10)

    @contextlib.contextmanager
    def denials(self):
        """Collect what the server answers with 403 while the block runs, for a failing
        assertion to show which request was denied and why: the request lines, and moto's
        reason (signature, unknown key, or policy) with the key and the action."""
        from moto.iam.access_control import S3IAMRequest

        lines: list[str] = []

        class Denied(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                text = record.getMessage()
                if '" 403 ' in text:
                    lines.append(text.split('"')[1] if text.count('"') >= 2 else text)

        def noting(reason: str, refuse):
            def refused(request, *args):
                key = request._headers.get("Authorization", "").partition("Credential=")[2]
                lines.append(f"{reason}: {request._method} {request._path} "
                             f"key={key.split('/')[0]} action={request._action}")  # fmt: skip
                refuse(request, *args)

            return refused

        reasons = {
            "_raise_signature_does_not_match": "signature does not match",
            "_raise_invalid_access_key": "unknown access key",
            "_raise_access_denied": "policy denies",
        }
        originals = {name: getattr(S3IAMRequest, name) for name in reasons}
        server_log = logging.getLogger("werkzeug")
        handler, level = Denied(logging.INFO), server_log.level
        server_log.addHandler(handler)
        server_log.setLevel(logging.INFO)
        for name, reason in reasons.items():
            setattr(S3IAMRequest, name, noting(reason, originals[name]))
        try:
            yield lines
        finally:
            for name, original in originals.items():
                setattr(S3IAMRequest, name, original)
            server_log.setLevel(level)
            server_log.removeHandler(handler)

    def iam_user(self, name: str, actions: list[str]) -> tuple[str, str]:
        """A user allowed ``actions`` on every resource; returns its (key, secret)."""
        import boto3

        iam = boto3.client(
            "iam",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )
        iam.create_user(UserName=name)
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}],
        }
        iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]


def s3_environment(home, credentials: bool = True, endpoint: str | None = None) -> dict:
    """An environment for a command under test: the test credentials (or none at all), no
    profiles from the real home, no instance metadata lookups."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        HOME=str(home),
        AWS_CONFIG_FILE=str(home / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(home / "no-aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
        AWS_DEFAULT_REGION="us-east-1",
    )
    if credentials:
        env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    return env


def object_bytes(fs, root: str) -> dict[str, bytes]:
    """Every chunk object under ``root`` (metadata objects left out): key → bytes."""
    fs.invalidate_cache()
    found = {}
    for path in fs.find(root):
        key = path[len(root.rstrip("/")) + 1 :]
        if key.rsplit("/", 1)[-1] not in ("zarr.json", ".zarray", ".zattrs", ".zgroup"):
            found[key] = fs.cat_file(path)
    return found


def local_bytes(root) -> dict[str, bytes]:
    """The same for a local store."""
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if name not in ("zarr.json", ".zarray", ".zattrs", ".zgroup"):
                full = os.path.join(folder, name)
                key = os.path.relpath(full, root).replace(os.sep, "/")
                with open(full, "rb") as handle:
                    found[key] = handle.read()
    return found
