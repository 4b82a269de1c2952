"""CDI's upload proxy: fill a DataVolume directly, as ``virtctl image-upload`` does.

The protocol, step by step (CDI v1.66):

1. a DataVolume ``cdi.kubevirt.io/v1beta1`` with ``spec.source.upload: {}`` (created, or
   an existing upload DataVolume reused); ``--force-bind`` adds the annotation
   ``cdi.kubevirt.io/storage.bind.immediate.requested`` so a WaitForFirstConsumer class
   binds without a consumer pod;
2. wait for ``status.phase == UploadReady`` (the upload server pod is up);
3. an ``UploadTokenRequest`` (``upload.cdi.kubevirt.io/v1beta1``, ``spec.pvcName``): the
   cdi-apiserver answers with ``status.token``;
4. ``HEAD /v1beta1/upload-async`` with ``Authorization: Bearer <token>`` probes the proxy
   and the token, then ``POST`` of the image bytes (streamed, hashed as they go);
   a 401 means the token expired: a fresh one is requested and the request retried;
5. wait for ``status.phase == Succeeded`` (CDI converts/resizes after receiving).

The image is streamed from the file in 1 MiB reads (memory stays flat).  An upload is not
resumable on CDI's side, and CDI cannot say how many bytes it took: a request cut short
(vmmove killed, the connection lost) leaves a DataVolume that CDI marks ``Succeeded`` with
whatever part of the image arrived.  So vmmove counts an upload done only on the POST's
full answer: every byte of the image sent, then a 2xx from the proxy, then ``Succeeded``;
only then is the journal step ``done`` (with the checksum of the bytes sent).  A rerun
skips a ``Succeeded`` DataVolume only when that record says it holds this very image; a
``Succeeded`` DataVolume vmmove made for this disk without such a record (a run stopped
mid-POST, or before the answer) is deleted and the image sent again.  The checksum about
to be sent is still journalled, as ``sending``, before each POST, for ``vmmove status``.
"""

from __future__ import annotations

import http.client
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from converters.transfer.base import (
    READ_CHUNK,
    SKIPPED,
    UPLOADED,
    Backend,
    Subscriber,
    TransferError,
    TransferItem,
    TransferResult,
    checksum_form,
)
from manifests.transfer import BIND_IMMEDIATE
from migrate.core import digest as checksums
from migrate.core.errors import UsageError
from migrate.core.journal import Journal, Step
from migrate.core.records import KIND_UPLOAD

CDI_GROUP, CDI_VERSION, DV_PLURAL = "cdi.kubevirt.io", "v1beta1", "datavolumes"
UPLOAD_GROUP, UPLOAD_VERSION, UTR_PLURAL = "upload.cdi.kubevirt.io", "v1beta1", "uploadtokenrequests"
UPLOAD_PATH = "/v1beta1/upload-async"


@dataclass
class ProxyOptions:
    url: str  # https://cdi-uploadproxy.example:443
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    insecure: bool = False
    storage_class: str | None = None
    access_mode: str | None = None  # ReadWriteOnce | ReadWriteMany | …
    access_modes: tuple[str, ...] | None = None  # a plan's storage map; access_mode wins
    volume_mode: str | None = None  # Filesystem | Block
    size: int | None = None  # DataVolume size; default: the image's virtual size
    force_bind: bool = False
    wait_timeout: float = 300.0
    poll_interval: float = 1.0
    token_retries: int = 2
    #: how a TLS error tells the operator to accept a self-signed proxy (a plan says it
    #: with ``transfer.insecure``, the command line with ``--insecure``)
    insecure_hint: str = "--insecure"


class UploadProxyBackend(Backend):
    name = "upload"

    def __init__(self, options: ProxyOptions) -> None:
        self.options = options
        parsed = urllib.parse.urlparse(options.url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise UsageError(f"{options.url}: not an upload proxy URL; expected https://host[:port]")
        self._parsed = parsed
        self._api: Any = None
        self._kube: Any = None  # migrate.clients.cluster.Kube, from prepare()
        self.namespace = options.namespace or "default"

    def describe(self) -> str:
        return f"upload proxy {self.options.url} (namespace {self.namespace})"

    def target_for(self, name: str, dv_name: str | None = None) -> dict[str, Any]:
        return {"backend": self.name, "proxy": self.options.url,
                "namespace": self.namespace, "dv": dv_name or name}

    # -- Kubernetes ---------------------------------------------------------------------------
    def prepare(self) -> None:
        """Connect as every vmmove command does (:class:`migrate.clients.cluster.Kube`: kubeconfig,
        $KUBECONFIG, context, namespace); the DataVolume and token calls then go through
        ``CustomObjectsApi`` on that connection, without discovery."""
        from migrate.clients.cluster import CustomObjects, Kube, KubeError, KubeOptions

        o = self.options
        try:
            self._kube = Kube(KubeOptions(o.kubeconfig, o.context, o.namespace))
        except KubeError as exc:
            raise UsageError(f"cannot load the kubeconfig: {exc}") from None
        self.namespace = self._kube.namespace
        self._api = CustomObjects(self._kube)

    def _k8s(self, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        """One API call, not retried (a create is not safe to repeat); a failure becomes
        the connection's one line (:meth:`migrate.clients.cluster.Kube.failure`) naming ``what``."""
        from migrate.clients.cluster import KubeError

        try:
            return self._api.once(what, call, *args, **kwargs)
        except KubeError as exc:
            message = str(exc)
            raise TransferError(message if message.startswith(what)
                                else f"{what}: {message}") from None

    def _get_dv(self, name: str) -> dict[str, Any] | None:
        return self._api.get_dv(self.namespace, name)  # type: ignore[no-any-return]

    def datavolume(self, item: TransferItem, name: str) -> dict[str, Any]:
        """The upload DataVolume manifest for ``item``."""
        o = self.options
        size = o.size or item.virtual_size or item.size
        from manifests.transfer import upload_datavolume

        modes = [o.access_mode] if o.access_mode else list(o.access_modes or ())
        return upload_datavolume(name, self.namespace, item.item, size,
                                 storage_class=o.storage_class, access_modes=modes,
                                 volume_mode=o.volume_mode, force_bind=o.force_bind)

    def _wait_phase(self, name: str, wanted: set[str], label: str) -> dict[str, Any]:
        from migrate.clients.cluster import DataVolumeWait, KubeError

        o = self.options
        where = f"{label}: DataVolume {self.namespace}/{name}"
        try:
            return self._api.wait_dv(self.namespace, name, wanted, o.wait_timeout,
                                     o.poll_interval, where)
        except DataVolumeWait as exc:
            if exc.outcome == "gone":
                raise TransferError(f"{where}: disappeared while waiting for "
                                    f"{'/'.join(wanted)}") from None
            if exc.outcome == "failed":
                raise TransferError(f"{where}: failed"
                                    f"{': ' + exc.detail if exc.detail else ''}") from None
            hint = (" (WaitForFirstConsumer storage class: rerun with --force-bind)"
                    if exc.phase == "WaitForFirstConsumer" or not o.force_bind else "")
            raise TransferError(f"{where}: still {exc.phase} after {o.wait_timeout:.0f}s, "
                                f"waiting for {'/'.join(sorted(wanted))}{hint}") from None
        except KubeError as exc:
            message = str(exc)
            raise TransferError(message if message.startswith(where)
                                else f"{where}: {message}") from None

    def _token(self, name: str, label: str) -> str:
        from manifests.transfer import upload_token_request

        body = upload_token_request(name, self.namespace)
        where = f"{label}: UploadTokenRequest for {self.namespace}/{name}"
        resp = self._k8s(where, self._api.create,
                         UPLOAD_GROUP, UPLOAD_VERSION, self.namespace, UTR_PLURAL, body)
        token = ((resp or {}).get("status") or {}).get("token")
        if not token:
            raise TransferError(f"{where}: the answer holds no status.token")
        return str(token)

    # -- HTTP to the proxy --------------------------------------------------------------------
    def _connection(self) -> http.client.HTTPConnection:
        p = self._parsed
        if p.scheme == "https":
            ctx = ssl.create_default_context()
            if self.options.insecure:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            return http.client.HTTPSConnection(p.hostname, p.port or 443, context=ctx,
                                               timeout=300)
        return http.client.HTTPConnection(p.hostname, p.port or 80, timeout=300)

    def _tls_failed(self, label: str, exc: ssl.SSLError) -> TransferError:
        return TransferError(f"{label}: {self.options.url}: TLS failed ({exc.reason}); "
                             f"{self.options.insecure_hint} accepts a self-signed proxy")

    def _path(self) -> str:
        return self._parsed.path.rstrip("/") + UPLOAD_PATH

    def _probe(self, token: str, label: str) -> int:
        conn = self._connection()
        try:
            conn.request("HEAD", self._path(), headers={"Authorization": f"Bearer {token}"})
            resp = conn.getresponse()
            resp.read()
            return resp.status
        except ssl.SSLError as exc:
            raise self._tls_failed(label, exc) from None
        except OSError as exc:
            raise TransferError(f"{label}: cannot reach {self.options.url}: "
                                f"{exc.strerror or exc}") from None
        finally:
            conn.close()

    def _post(self, item: TransferItem, token: str,
              progress: Subscriber) -> tuple[int, str, str, int]:
        """Stream the image; (HTTP status, checksum ``FORM:HEX`` of what was sent (the
        recorded checksum's form, :func:`~converters.transfer.base.checksum_form`), response
        text, bytes sent).  Fewer bytes than ``item.size`` sent means the proxy answered
        early."""
        digest = checksums.new(checksum_form(item))
        conn = self._connection()
        try:
            conn.putrequest("POST", self._path())
            conn.putheader("Authorization", f"Bearer {token}")
            conn.putheader("Content-Type", "application/octet-stream")
            conn.putheader("Content-Length", str(item.size))
            conn.endheaders()
            fh = item.stream if item.stream is not None else open(item.path, "rb")  # type: ignore[arg-type]
            try:
                remaining = item.size
                while remaining > 0:
                    chunk = fh.read(min(READ_CHUNK, remaining))
                    if not chunk:
                        raise TransferError(f"{item.label}: the image ended early")
                    digest.update(chunk)
                    try:
                        conn.send(chunk)
                    except (BrokenPipeError, ConnectionResetError):
                        break  # the proxy answered early (e.g. 401): read its answer below
                    remaining -= len(chunk)
                    progress.on_progress(item, len(chunk))
            finally:
                if item.stream is None:
                    fh.close()
            resp = conn.getresponse()
            text = resp.read().decode(errors="replace")[:200]
            return resp.status, digest.hexdigest(), text, item.size - remaining
        except ssl.SSLError as exc:
            raise self._tls_failed(item.label, exc) from None
        except OSError as exc:
            raise TransferError(f"{item.label}: upload to {self.options.url} broke off: "
                                f"{exc.strerror or exc}") from None
        finally:
            conn.close()

    # -- one image ----------------------------------------------------------------------------
    def transfer(self, item: TransferItem, step: Step, journal: Journal,
                 progress: Subscriber) -> TransferResult:
        name = item.dv_name or item.name
        label = item.label
        where = f"{label}: DataVolume {self.namespace}/{name}"
        dv = self._k8s(where, self._get_dv, name)
        if dv is not None:
            if "upload" not in ((dv.get("spec") or {}).get("source") or {}):
                raise TransferError(f"{where}: exists and is not an upload DataVolume; "
                                    "delete it or choose another name")
            phase = (dv.get("status") or {}).get("phase")
            if phase == "Succeeded":
                # The step's checksum is set when a run had the proxy's full answer; a later
                # POST clears "answered" until it has its own (journals from before count).
                if (step.dv == name and step.checksum
                        and step.answered
                        and (item.checksum in (None, step.checksum))):
                    progress.on_queued(item, item.size, item.size)
                    return self._result(item, name, SKIPPED, step.checksum, 0)
                meta = dv.get("metadata") or {}
                ours = ((meta.get("annotations") or {}).get("vmmove.io/source") == item.item
                        and (meta.get("labels") or {}).get("app.kubernetes.io/managed-by")
                        == "vmmove")
                if not (ours and step.dv == name):
                    raise TransferError(f"{where}: already holds an image (Succeeded); delete "
                                        "it to upload again")
                # An earlier run sent to it and never had the proxy's full answer: CDI may hold
                # any prefix of the image.  Start again from an empty DataVolume.
                self._delete(name, where)
                dv = None
        if dv is not None:
            annotations = (dv.get("metadata") or {}).get("annotations") or {}
            if self.options.force_bind and annotations.get(BIND_IMMEDIATE) != "true":
                self._k8s(where, self._api.patch,
                          CDI_GROUP, CDI_VERSION, self.namespace, DV_PLURAL, name,
                          {"metadata": {"annotations": {BIND_IMMEDIATE: "true"}}})
        else:
            self._k8s(where, self._api.create,
                      CDI_GROUP, CDI_VERSION, self.namespace, DV_PLURAL,
                      self.datavolume(item, name))
        self._wait_phase(name, {"UploadReady"}, label)
        token = self._token(name, label)
        refreshes = 0
        while True:
            status = self._probe(token, label)
            if status == 401 and refreshes < self.options.token_retries:
                token, refreshes = self._token(name, label), refreshes + 1
                continue
            if status >= 300:
                raise TransferError(f"{label}: upload proxy {self.options.url} answered {status} "
                                    "to the probe")
            break
        # Say what is about to be sent before sending it: a run killed after CDI took the
        # bytes (the DataVolume Succeeded) but before the journal recorded it resumes on this.
        journal.update(KIND_UPLOAD, item.item, dv=name, namespace=self.namespace,
                       sending=item.checksum, answered=False)
        while True:
            progress.on_queued(item, item.size, 0)
            status, checksum, text, sent = self._post(item, token, progress)
            if status == 401 and refreshes < self.options.token_retries:
                if item.stream is not None:
                    raise TransferError(f"{label}: token refused mid-upload and a stream "
                                        "cannot be sent again; rerun")
                token, refreshes = self._token(name, label), refreshes + 1
                continue
            if status >= 300:
                raise TransferError(f"{label}: upload proxy answered {status}: {text.strip()}")
            if sent != item.size:
                raise TransferError(f"{label}: upload proxy answered {status} after {sent} of "
                                    f"{item.size} bytes; rerun to send the image again")
            break
        if item.checksum and item.checksum != checksum:
            # CDI may still fill the DataVolume with these bytes: a rerun must not take
            # them for the converted image.
            journal.update(KIND_UPLOAD, item.item, sending=checksum)
            raise TransferError(f"{label}: the bytes sent do not match the recorded checksum "
                                f"{checksums.short(item.checksum)}: the image changed since "
                                "conversion")
        self._wait_phase(name, {"Succeeded"}, label)
        journal.update(KIND_UPLOAD, item.item, answered=True)
        return self._result(item, name, UPLOADED, checksum, item.size)

    def _delete(self, name: str, where: str) -> None:
        """Delete DataVolume ``name`` (vmmove's) and wait until it is gone."""
        self._k8s(where, self._api.delete,
                  CDI_GROUP, CDI_VERSION, self.namespace, DV_PLURAL, name)
        deadline = time.monotonic() + self.options.wait_timeout
        while self._k8s(where, self._get_dv, name) is not None:
            if time.monotonic() >= deadline:
                raise TransferError(f"{where}: still there {self.options.wait_timeout:.0f}s "
                                    "after vmmove deleted it to upload the image again")
            time.sleep(self.options.poll_interval)

    def _result(self, item: TransferItem, name: str, status: str, checksum: str | None,
                sent: int) -> TransferResult:
        return TransferResult(item.item, self.name, status, item.size, checksum=checksum,
                              sent=sent, dv=name, namespace=self.namespace,
                              extra={"proxy": self.options.url})
