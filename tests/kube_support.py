"""A Kubernetes-like API on loopback for tests (kmock), and CDI played on top of it.

Reusable by every area that talks to a cluster (upload, apply, cutover):

* :class:`KubeApi` — kmock's stateful :class:`kmock.KubernetesEmulator` served over real
  HTTP on 127.0.0.1 from a background thread, plus a real kubeconfig file pointing at it,
  so vmmove uses the real ``kubernetes`` client (``load_kube_config(config_file, context)``).
  Objects are read and changed with :meth:`KubeApi.get`, :meth:`KubeApi.patch`,
  :meth:`KubeApi.objects` (all run on the server's loop thread, so they never race a
  request), and every request is kept in :attr:`KubeApi.requests` for assertions.
* :class:`Cdi` — plays CDI's controllers for upload DataVolumes: moves each upload
  DataVolume to ``UploadReady`` (or ``WaitForFirstConsumer`` unless bind-immediate is
  annotated, when ``wffc=True``), answers ``UploadTokenRequest`` creation with a token in
  ``status.token`` (not stored, as cdi-apiserver does), and runs an HTTPS upload proxy
  (self-signed certificate made at test time) that checks ``Authorization: Bearer`` on
  ``HEAD``/``POST /v1beta1/upload-async``, stores the bytes per PVC and then marks the
  DataVolume ``Succeeded``.  A POST cut short (client killed, connection lost) is kept
  truncated and the DataVolume still marked ``Succeeded``, unanswered, as CDI's upload
  server does: only the POST's full answer says CDI has the whole image.
  ``reject_first_post=True`` answers the first POST with 401 (an expired token) to
  exercise the token refresh; :meth:`Cdi.before_read` lets a test stall a POST mid-body.
* :class:`Reconciler` — the background loop every played controller shares (CDI here,
  virt-controller and the importer in tests/plan_support.py and tests/guest_support.py).

Fixtures: ``kube_api`` (function scope: a fresh, empty API) and ``cdi`` (a Cdi on it).
Import them into a test module with ``from tests.kube_support import kube_api, cdi``.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import http.server
import itertools
import json
import ssl
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kmock
import pytest
import yaml

CDI = "cdi.kubevirt.io/v1beta1"
DV = kmock.resource("cdi.kubevirt.io", "v1beta1", "datavolumes")
UTR = kmock.resource("upload.cdi.kubevirt.io", "v1beta1", "uploadtokenrequests")
BIND_IMMEDIATE = "cdi.kubevirt.io/storage.bind.immediate.requested"


class Reconciler(ABC):
    """A controller played by a background thread: :meth:`_reconcile` every ``interval``
    seconds from :meth:`start` until :meth:`stop`, as Kubernetes controllers loop.

    An error in a pass is forgotten (the next pass tries again) unless the controller is
    stopping, when it ends the loop: the API server may already be gone.
    """

    interval: float = 0.05

    def start(self, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._reconcile()
            except Exception:
                if self._stop.is_set():
                    return

    @abstractmethod
    def _reconcile(self) -> None:
        """One pass: make the objects on the API what this controller wants them to be."""


class _Emulator(kmock.KubernetesEmulator):
    """kmock's emulator, answering creation with 201 and filling metadata as Kubernetes does."""

    async def _serve_create(self, request: Any) -> Any:
        obj = await super()._serve_create(request)
        return kmock.Response(status=201, payload=obj)


class KubeApi:
    """kmock's Kubernetes emulator on a loopback port, run by a background event loop."""

    def __init__(self, folder: Path, namespace: str = "vms", context: str = "test") -> None:
        self.namespace = namespace
        self.context = context
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._failed: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="kmock", daemon=True)
        self.thread.start()
        if not self._ready.wait(20) or self._failed:
            raise RuntimeError(f"kmock did not start: {self._failed!r}")
        self.kubeconfig = folder / "kubeconfig.yaml"
        self.write_kubeconfig(self.kubeconfig)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:  # pragma: no cover - reported by __init__
            self._failed = exc
            self._ready.set()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with _Emulator() as emulator, kmock.Server(emulator) as server:
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def stop(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)
        self.loop.close()

    def write_kubeconfig(self, path: Path, token: str = "test-token") -> None:
        """A real kubeconfig: one cluster (this server), one user, one context."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": token}}],
            "contexts": [{"name": self.context, "context": {
                "cluster": "kmock", "user": "tester", "namespace": self.namespace}}],
            "current-context": self.context,
        }
        path.write_text(yaml.safe_dump(config))

    # -- running things on the server's loop --------------------------------------------------
    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the server's loop thread (between requests) and return its result."""

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def declare(self, resource: Any, kind: str, namespaced: bool = True) -> None:
        """Make a resource discoverable (``kubectl api-resources`` style)."""
        info = kmock.ResourceInfo(kind=kind, namespaced=namespaced,
                                  verbs={"get", "list", "create", "patch", "update", "delete",
                                         "watch"})
        self.call(lambda: self.emulator.resources.__setitem__(resource, info))

    def get(self, resource: Any, namespace: str | None, name: str) -> dict[str, Any] | None:
        def read() -> dict[str, Any] | None:
            key = (resource, namespace, name)
            if key not in self.emulator.objects or self.emulator.objects[key].deleted:
                return None
            return json.loads(json.dumps(self.emulator.objects[key].raw))

        return self.call(read)

    def objects(self, resource: Any) -> dict[tuple[str | None, str], dict[str, Any]]:
        """Every live object of ``resource``, keyed by (namespace, name)."""

        def read() -> dict[tuple[str | None, str], dict[str, Any]]:
            out = {}
            for (res, ns, name), obj in self.emulator.objects.items():
                if res == resource and not obj.deleted:
                    out[(ns, name)] = json.loads(json.dumps(obj.raw))
            return out

        return self.call(read)

    def patch(self, resource: Any, namespace: str | None, name: str,
              changes: dict[str, Any]) -> None:
        """Merge ``changes`` into an object, as a controller's status update would."""
        self.call(lambda: self.emulator.objects[resource, namespace, name].patch(changes))

    def put(self, resource: Any, namespace: str | None, name: str, body: dict[str, Any]) -> None:
        """Create an object directly (pre-existing cluster state)."""
        self.call(lambda: self.emulator.objects.__setitem__((resource, namespace, name), body))

    @property
    def requests(self) -> list[Any]:
        """Every request the API received, oldest first (kmock Request objects)."""
        return self.call(lambda: list(self.emulator))


def self_signed(folder: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A throw-away certificate and key for ``host`` (cryptography), as PEM files."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cdi-uploadproxy.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(host))]),
            critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "proxy.crt", folder / "proxy.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@dataclass
class ProxyRequest:
    method: str
    path: str
    authorization: str | None
    received: int = 0  # body bytes read
    sha256: str | None = None
    status: int = 0  # -1: the request was cut short (no answer)
    cut: bool = False


@dataclass
class Cdi(Reconciler):
    """CDI's part in an upload: DataVolume phases, upload tokens, the upload proxy."""

    api: KubeApi
    folder: Path
    wffc: bool = False  # storage class WaitForFirstConsumer: bind only when annotated
    reject_first_post: bool = False  # 401 for the first POST (expired token)
    tokens: dict[str, tuple[str, str]] = field(default_factory=dict)  # token → (ns, pvcName)
    token_requests: list[dict[str, Any]] = field(default_factory=list)
    proxy_requests: list[ProxyRequest] = field(default_factory=list)
    received: dict[str, Path] = field(default_factory=dict)  # pvcName → the bytes stored
    expired: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._counter = itertools.count(1)
        self._lock = threading.Lock()
        self.api.declare(DV, "DataVolume")
        self.api.declare(UTR, "UploadTokenRequest")
        self.api.call(self._install_token_reaction)
        self.start("cdi")
        self.cert, key = self_signed(self.folder)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, key)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.proxy_url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self._server_thread = threading.Thread(target=self.server.serve_forever,
                                               name="uploadproxy", daemon=True)
        self._server_thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        super().stop()

    # -- cdi-apiserver: tokens ----------------------------------------------------------------
    def _install_token_reaction(self) -> None:
        emulator = self.api.emulator

        def issue(request: Any) -> Any:
            body = request.data or {}
            pvc = (body.get("spec") or {}).get("pvcName")
            token = f"token-{next(self._counter)}-{uuid.uuid4().hex[:8]}"
            ns = request.namespace or (body.get("metadata") or {}).get("namespace")
            with self._lock:
                self.tokens[token] = (ns, pvc)
                self.token_requests.append(body)
            name = (body.get("metadata") or {}).get("name")
            del emulator.objects[UTR, ns, name]  # cdi-apiserver keeps no UploadTokenRequests
            return kmock.Response(status=201, payload={**body, "status": {"token": token}})

        emulator["post", UTR] << issue

    # -- cdi-controller: DataVolume phases ----------------------------------------------------
    def _reconcile(self) -> None:
        for (ns, name), dv in self.api.objects(DV).items():
            if "upload" not in ((dv.get("spec") or {}).get("source") or {}):
                continue
            phase = (dv.get("status") or {}).get("phase")
            annotations = (dv.get("metadata") or {}).get("annotations") or {}
            if phase in (None, "Pending", "WaitForFirstConsumer"):
                bound = not self.wffc or annotations.get(BIND_IMMEDIATE) == "true"
                new = "UploadReady" if bound else "WaitForFirstConsumer"
                if new != phase:
                    self.api.patch(DV, ns, name, {"status": {"phase": new,
                                                             "progress": "N/A"}})

    def before_read(self, record: ProxyRequest) -> None:
        """Called before each read of a POST body (1 MiB); tests override it to stall."""

    def phase(self, name: str, namespace: str | None = None) -> str | None:
        dv = self.api.get(DV, namespace or self.api.namespace, name)
        return ((dv or {}).get("status") or {}).get("phase")

    # -- cdi-uploadproxy ----------------------------------------------------------------------
    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        cdi = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _auth(self) -> tuple[str | None, tuple[str, str] | None]:
                header = self.headers.get("Authorization")
                token = header[7:] if header and header.startswith("Bearer ") else None
                with cdi._lock:
                    pvc = cdi.tokens.get(token) if token and token not in cdi.expired else None
                return header, pvc

            def _answer(self, status: int, text: str = "") -> None:
                body = text.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_HEAD(self) -> None:  # noqa: N802
                header, pvc = self._auth()
                status = 200 if self.path == "/v1beta1/upload-async" and pvc else 401
                cdi.proxy_requests.append(ProxyRequest("HEAD", self.path, header, status=status))
                self._answer(status)

            def do_POST(self) -> None:  # noqa: N802
                header, pvc = self._auth()
                record = ProxyRequest("POST", self.path, header)
                cdi.proxy_requests.append(record)
                length = int(self.headers.get("Content-Length") or 0)
                digest = hashlib.sha256()
                target = cdi.folder / f"received-{'-'.join(pvc) if pvc else 'rejected'}.img"
                with open(target, "wb") as out:
                    remaining = length
                    while remaining:
                        cdi.before_read(record)
                        try:
                            chunk = self.rfile.read(min(1 << 20, remaining))
                        except OSError:  # the client is gone (killed, connection reset)
                            chunk = b""
                        if not chunk:
                            break
                        digest.update(chunk)
                        out.write(chunk)
                        remaining -= len(chunk)
                        record.received += len(chunk)
                record.sha256 = digest.hexdigest()
                first_post = sum(1 for r in cdi.proxy_requests if r.method == "POST") == 1
                if remaining and pvc is not None and self.path == "/v1beta1/upload-async":
                    # A request cut short: like CDI's upload server, keep what arrived (a
                    # prefix of the image) and let the DataVolume succeed with it; nobody is
                    # left to answer.
                    record.status = -1
                    record.cut = True
                    cdi.received[pvc[1]] = target
                    cdi.api.patch(DV, pvc[0], pvc[1], {"status": {
                        "phase": "Succeeded", "progress": "100.0%"}})
                    self.close_connection = True
                    return
                if self.path != "/v1beta1/upload-async":
                    record.status = 404
                elif pvc is None:
                    record.status = 401
                elif cdi.reject_first_post and first_post:
                    token = header[7:] if header else ""
                    with cdi._lock:
                        cdi.expired.add(token)
                    record.status = 401
                else:
                    record.status = 200
                    cdi.received[pvc[1]] = target
                    cdi.api.patch(DV, pvc[0], pvc[1], {"status": {
                        "phase": "Succeeded", "progress": "100.0%"}})
                self._answer(record.status, "" if record.status == 200 else "unauthorized")

        return Handler


@pytest.fixture
def kube_api(tmp_path: Path) -> Iterator[KubeApi]:
    """A fresh Kubernetes-like API (kmock) on loopback, with a kubeconfig for it."""
    api = KubeApi(tmp_path)
    try:
        yield api
    finally:
        api.stop()


@pytest.fixture
def cdi(kube_api: KubeApi, tmp_path: Path) -> Iterator[Cdi]:
    """CDI on the test API: upload DataVolumes, tokens and an HTTPS upload proxy."""
    folder = tmp_path / "cdi"
    folder.mkdir()
    sim = Cdi(kube_api, folder)
    try:
        yield sim
    finally:
        sim.stop()


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll until ``predicate()`` holds; fail the test naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.05)
