"""The Kubernetes API as vmmove uses it: kubeconfig like kubectl, server-side apply, watches.

Why server-side apply with one field manager (``vmmove``): applying the same object again
changes nothing on the server (same ``resourceVersion``), so every vmmove command can be
rerun; and fields another manager owns (an operator's ``kubectl edit``, the cutover) are
reported as a conflict instead of being silently overwritten.

Everything goes through the real ``kubernetes`` client (its :class:`DynamicClient`, whose
discovery also tells whether the cluster serves KubeVirt and CDI).  Failures become one
line naming the cause: no kubeconfig, unknown context, API unreachable, credentials
refused, KubeVirt or CDI not installed.  Requests that are safe to repeat (apply, get,
list) are retried on 409/429/500/502/503/504 with a short backoff.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migrate.core.errors import VmmoveError

FIELD_MANAGER = "vmmove"
NAMESPACE = ("v1", "Namespace")
SECRET = ("v1", "Secret")
VIRTUAL_MACHINE = ("kubevirt.io/v1", "VirtualMachine")
DATA_VOLUME = ("cdi.kubevirt.io/v1beta1", "DataVolume")
#: What ``vmmove apply`` needs the cluster to serve, and what is missing when it does not.
REQUIRED_APIS = {
    VIRTUAL_MACHINE: "KubeVirt is not installed (or not v1)",
    DATA_VOLUME: "CDI (Containerized Data Importer) is not installed (or not v1beta1)",
}
RETRY_STATUSES = {409, 429, 500, 502, 503, 504}


class KubeError(VmmoveError):
    """A cluster problem, in one line naming the cluster/context and the cause."""


class ConflictError(KubeError):
    """Server-side apply met fields owned by another manager."""


@dataclass
class KubeOptions:
    """``--kubeconfig``, ``--context``, ``-n`` as kubectl takes them."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    request_timeout: float = 30.0
    retries: int = 5
    backoff: float = 0.2


def _message(exc: Any) -> str:
    """The API server's ``Status.message`` of an error, else its reason."""
    body = getattr(exc, "body", None)
    if body:
        try:
            data = json.loads(body)
            if isinstance(data, dict) and data.get("message"):
                return str(data["message"])
        except (ValueError, TypeError):
            pass
    return str(getattr(exc, "reason", None) or exc).strip()


def _unreachable(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    text = str(reason)
    if "Connection refused" in text or "Errno 111" in text:
        return "connection refused"
    if "Name or service not known" in text or "nodename nor servname" in text or \
            "Temporary failure in name resolution" in text:
        return "host name not found"
    if "timed out" in text.lower():
        return "timed out"
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return "TLS certificate not trusted (certificate-authority in the kubeconfig?)"
    return " ".join(text.split())[:200]


class Kube:
    """A connection to one cluster, from a kubeconfig file and context."""

    def __init__(self, options: KubeOptions | None = None) -> None:
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        self.options = o = options or KubeOptions()
        path = o.kubeconfig or os.environ.get("KUBECONFIG") or str(Path.home() / ".kube/config")
        path = path.split(os.pathsep)[0]
        self.kubeconfig = path
        if not Path(path).is_file():
            raise KubeError(f"{path}: no kubeconfig here (give --kubeconfig or set KUBECONFIG)")
        try:
            contexts, active = config.list_kube_config_contexts(config_file=path)
        except (ConfigException, OSError, ValueError) as exc:
            raise KubeError(f"{path}: not a usable kubeconfig: {exc}") from None
        names = [c.get("name") for c in contexts or []]
        if o.context and o.context not in names:
            raise KubeError(f"{path}: no context {o.context!r} (contexts: "
                            f"{', '.join(n for n in names if n) or 'none'})")
        chosen = next((c for c in contexts if c.get("name") == o.context), None) \
            if o.context else active
        if chosen is None:
            raise KubeError(f"{path}: no current context; pass --context "
                            f"({', '.join(n for n in names if n) or 'none defined'})")
        self.context = str(chosen.get("name"))
        self.default_namespace = (chosen.get("context") or {}).get("namespace") or "default"
        self.namespace = o.namespace or self.default_namespace
        cfg = client.Configuration()
        try:
            config.load_kube_config(config_file=path, context=self.context,
                                    client_configuration=cfg, persist_config=False)
        except (ConfigException, OSError, ValueError) as exc:
            raise KubeError(f"{path}: context {self.context!r}: {exc}") from None
        cfg.retries = 1  # urllib3: one reconnect, so an unreachable API fails in seconds
        self.server = cfg.host
        self.api_client = client.ApiClient(cfg)
        self._cache_dir: str | None = None  # discovery cache, made with the DynamicClient
        self._dyn: Any = None
        self._resources: dict[tuple[str, str], Any] = {}

    # -- life cycle -------------------------------------------------------------------------
    def close(self) -> None:
        try:
            self.api_client.close()
        except Exception:  # pragma: no cover - best effort
            pass
        if self._cache_dir is not None:
            shutil.rmtree(self._cache_dir, ignore_errors=True)

    def __enter__(self) -> Kube:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def where(self) -> str:
        return f"{self.server} (context {self.context})"

    def failure(self, exc: BaseException, what: str) -> KubeError:
        """One line for any client failure during ``what`` (unreachable API, refused
        credentials, an API status): callers that use the client directly (e.g. through
        ``CustomObjectsApi`` on :attr:`api_client`) raise it, so every cluster error
        reads the same whoever made the request."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        status = getattr(exc, "status", None)
        if isinstance(exc, HTTPError) or isinstance(exc, OSError):
            return KubeError(f"cannot reach the Kubernetes API at {self.where}: "
                             f"{_unreachable(exc)}")
        if status in (401, 403):
            word = "Unauthorized" if status == 401 else "Forbidden"
            return KubeError(f"{what}: the API at {self.where} refused the credentials "
                             f"({status} {word}): {_message(exc)}")
        if isinstance(exc, ApiException) or status is not None:
            return KubeError(f"{what}: {status} {_message(exc)}")
        return KubeError(f"{what}: {exc}")

    @property
    def dynamic(self) -> Any:
        """The DynamicClient (built on first use: it asks the server what it serves)."""
        if self._dyn is None:
            from kubernetes.dynamic import DynamicClient

            if self._cache_dir is None:
                self._cache_dir = tempfile.mkdtemp(prefix="vmmove-discovery-")
            try:
                self._dyn = DynamicClient(self.api_client,
                                          cache_file=os.path.join(self._cache_dir, "d.json"))
            except Exception as exc:
                raise self.failure(exc, f"discovery at {self.where}") from None
        return self._dyn

    # -- discovery ------------------------------------------------------------------------
    def resource(self, api_version: str, kind: str) -> Any:
        """The served resource for ``apiVersion``/``kind``; KubeError when not served."""
        key = (api_version, kind)
        if key not in self._resources:
            from kubernetes.dynamic.exceptions import ResourceNotFoundError

            try:
                self._resources[key] = self.dynamic.resources.get(api_version=api_version,
                                                                  kind=kind)
            except ResourceNotFoundError:
                hint = REQUIRED_APIS.get(key, "")
                raise KubeError(f"the cluster at {self.where} does not serve {api_version} "
                                f"{kind}" + (f": {hint}" if hint else "")) from None
            except KubeError:
                raise
            except Exception as exc:
                raise self.failure(exc, f"discovery of {api_version} {kind}") from None
        return self._resources[key]

    def check_apis(self, required: dict[tuple[str, str], str] | None = None) -> None:
        """Refuse early, in one line, when the cluster lacks KubeVirt or CDI."""
        missing = []
        for (api_version, kind), hint in (required or REQUIRED_APIS).items():
            try:
                self.resource(api_version, kind)
            except KubeError as exc:
                if "does not serve" not in str(exc):
                    raise
                missing.append(f"{api_version} {kind} ({hint})")
        if missing:
            raise KubeError(f"the cluster at {self.where} does not serve "
                            + "; ".join(missing))

    # -- requests -------------------------------------------------------------------------
    def retrying(self, what: str, call: Any) -> Any:
        """``call()``, repeated on 409/429/5xx with backoff (``options.retries``); a final
        failure becomes one :class:`KubeError` line naming ``what`` (a 409 a
        :class:`ConflictError`).  Only for requests that are safe to repeat: apply, get,
        list, a merge patch, a delete that tolerates 404."""
        from kubernetes.client.exceptions import ApiException
        from kubernetes.dynamic.exceptions import DynamicApiError

        o = self.options
        attempt = 0
        while True:
            try:
                return call()
            except (ApiException, DynamicApiError) as exc:
                status = getattr(exc, "status", None)
                # A 409 to an apply is nearly always another manager's field, not a race:
                # two quick retries, then the conflict is reported.
                limit = min(2, o.retries) if status == 409 else o.retries
                if status in RETRY_STATUSES and attempt < limit:
                    attempt += 1
                    time.sleep(o.backoff * (2 ** (attempt - 1)))
                    continue
                if status == 409:
                    raise ConflictError(
                        f"{what}: conflict: {_message(exc)} (another field manager owns these "
                        "fields; rerun with --force-conflicts to take them over)") from None
                raise self.failure(exc, what) from None
            except Exception as exc:
                raise self.failure(exc, what) from None

    def apply(self, obj: dict[str, Any], *, dry_run: bool = False,
              force: bool = False) -> dict[str, Any]:
        """Server-side apply ``obj`` with field manager ``vmmove``; the server's answer."""
        api_version, kind = obj["apiVersion"], obj["kind"]
        meta = obj.get("metadata") or {}
        resource = self.resource(api_version, kind)
        namespace = meta.get("namespace") or (self.namespace if resource.namespaced else None)
        name = meta["name"]
        what = f"apply {kind} {namespace + '/' if namespace else ''}{name}"
        kwargs: dict[str, Any] = {"field_manager": FIELD_MANAGER,
                                  "_request_timeout": self.options.request_timeout}
        if force:
            kwargs["force_conflicts"] = True
        if dry_run:
            kwargs["dry_run"] = "All"

        def call() -> Any:
            return self.dynamic.server_side_apply(resource, body=obj, name=name,
                                                  namespace=namespace, **kwargs)

        return self.retrying(what, call).to_dict()

    def get(self, api_version: str, kind: str, name: str,
            namespace: str | None = None) -> dict[str, Any] | None:
        from kubernetes.dynamic.exceptions import NotFoundError

        resource = self.resource(api_version, kind)

        def call() -> Any:
            try:
                return resource.get(name=name, namespace=namespace,
                                    _request_timeout=self.options.request_timeout)
            except NotFoundError:
                return None

        found = self.retrying(f"get {kind} {name}", call)
        return found.to_dict() if found is not None else None

    def list(self, api_version: str, kind: str, namespace: str | None = None,
             label_selector: str | None = None) -> list[dict[str, Any]]:
        resource = self.resource(api_version, kind)

        def call() -> Any:
            return resource.get(namespace=namespace, label_selector=label_selector,
                                _request_timeout=self.options.request_timeout)

        found = self.retrying(f"list {kind} in {namespace or 'all namespaces'}", call)
        return [item for item in found.to_dict().get("items") or []]

    def watch(self, api_version: str, kind: str, namespace: str | None = None,
              label_selector: str | None = None, read_timeout: float = 5.0,
              timeout_seconds: int = 60) -> Iterator[dict[str, Any]]:
        """Watch events (``type``, ``object``) until the stream ends or goes quiet.

        A quiet stream (no event in ``read_timeout`` s) or a broken one simply ends the
        iteration: callers re-list and watch again, the usual list-and-watch loop, so a
        lost event never leaves them waiting forever.
        """
        from kubernetes import watch as kwatch
        from urllib3.exceptions import HTTPError

        resource = self.resource(api_version, kind)
        watcher = kwatch.Watch()
        try:
            for event in watcher.stream(resource.get, namespace=namespace,
                                        label_selector=label_selector, serialize=False,
                                        timeout_seconds=timeout_seconds,
                                        _request_timeout=(10, read_timeout)):
                obj = event.get("object")
                if isinstance(obj, dict):
                    yield {"type": event.get("type"), "object": obj}
        except (HTTPError, OSError, ValueError):
            return
        finally:
            watcher.stop()


def connect(kubeconfig: str | None = None, context: str | None = None,
            namespace: str | None = None, *, check: bool = True) -> Kube:
    """A :class:`Kube` for the kubectl-style options; with ``check``, KubeVirt and CDI
    must be served (one clear line otherwise).  Close it after use."""
    kube = Kube(KubeOptions(kubeconfig, context, namespace))
    try:
        if check:
            kube.check_apis()
        else:
            kube.dynamic  # noqa: B018 - reach the server now, fail early
    except BaseException:
        kube.close()
        raise
    return kube


# -- KubeVirt and CDI verbs ----------------------------------------------------------------------

VMI = ("kubevirt.io/v1", "VirtualMachineInstance")
CDI_GROUP, CDI_VERSION, DV_PLURAL = "cdi.kubevirt.io", "v1beta1", "datavolumes"


class WaitError(KubeError):
    """An object did not reach the awaited state in time (or reached a final other one)."""


def parse_quantity(value: Any) -> Any:
    """A Kubernetes quantity (``1.5Gi``, ``512Mi``, ``2``) as a :class:`~decimal.Decimal`;
    ValueError when it is not one."""
    from kubernetes.utils.quantity import parse_quantity as parse  # heavy import, only here

    return parse(value)


def set_run_strategy(kube: Kube, namespace: str, name: str, strategy: str) -> dict[str, Any]:
    """Merge-patch ``spec.runStrategy`` (only that field) of a VirtualMachine."""
    resource = kube.resource(*VIRTUAL_MACHINE)
    body = {"spec": {"runStrategy": strategy}}

    def call() -> Any:
        return resource.patch(body=body, name=name, namespace=namespace,
                              content_type="application/merge-patch+json",
                              _request_timeout=kube.options.request_timeout)

    return kube.retrying(f"patch VirtualMachine {namespace}/{name} runStrategy={strategy}",
                         call).to_dict()


def get_vmi(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    return kube.get(*VMI, name, namespace)


def agent_connected(vmi: dict[str, Any]) -> bool:
    """Whether the VMI's ``AgentConnected`` condition is True."""
    for cond in (vmi.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "AgentConnected" and str(cond.get("status")) == "True":
            return True
    return False


def _vmi_events(kube: Kube, namespace: str, name: str, deadline: float,
                poll: float) -> Iterator[dict[str, Any] | None]:
    """The VMI's state now, then at each watch event about it (list-and-watch); None
    while it does not exist.  A quiet or broken watch re-lists after ``poll`` seconds;
    ends at ``deadline`` (monotonic)."""
    while True:
        yield get_vmi(kube, namespace, name)
        left = deadline - time.monotonic()
        if left <= 0:
            return
        quiet = max(min(poll * 4, left, 5.0), 0.05)
        seen = False
        for event in kube.watch(*VMI, namespace, read_timeout=quiet,
                                timeout_seconds=max(1, int(min(left, 60)))):
            obj = event["object"]
            if (obj.get("metadata") or {}).get("name") != name:
                continue
            seen = True
            yield None if event["type"] == "DELETED" else obj
            if time.monotonic() >= deadline:
                return
        if not seen:
            time.sleep(min(poll, max(deadline - time.monotonic(), 0)))


def wait_running(kube: Kube, namespace: str, name: str, timeout: float, agent: bool,
                 poll: float) -> dict[str, Any]:
    """Wait (by watch) for the VMI to run, and its guest agent to connect when ``agent``;
    its phase, agent, node and the seconds waited.  Raises :class:`WaitError` when it
    ends Failed/Succeeded or ``timeout`` passes."""
    started = time.monotonic()
    phase = None
    for vmi in _vmi_events(kube, namespace, name, started + timeout, poll):
        phase = ((vmi or {}).get("status") or {}).get("phase")
        if phase == "Running" and (not agent or agent_connected(vmi or {})):
            return {"phase": phase, "agent": agent_connected(vmi or {}),
                    "node": ((vmi or {}).get("status") or {}).get("nodeName"),
                    "seconds": round(time.monotonic() - started, 3)}
        if phase in ("Failed", "Succeeded"):
            raise WaitError(f"VirtualMachineInstance {namespace}/{name} is {phase}, not "
                            "Running")
    what = (f"is {phase}" if phase else "does not exist")
    if phase == "Running" and agent:
        what = "runs but its guest agent did not connect"
    raise WaitError(f"VirtualMachineInstance {namespace}/{name} {what} after "
                    f"{timeout:g}s (--verify-timeout)")


def wait_vmi_gone(kube: Kube, namespace: str, name: str, timeout: float,
                  poll: float) -> float:
    """Wait (by watch) until the VMI no longer exists; the seconds waited.  Raises
    :class:`WaitError` after ``timeout``."""
    started = time.monotonic()
    for vmi in _vmi_events(kube, namespace, name, started + timeout, poll):
        if vmi is None:
            return time.monotonic() - started
    raise WaitError(
        f"VirtualMachineInstance {namespace}/{name} still exists {timeout:g}s after "
        "runStrategy became Halted; the source was NOT started (two copies must never "
        "run at once): check the VM with kubectl, then rerun vmmove rollback")


def delete_datavolume(kube: Kube, namespace: str, name: str) -> None:
    """Delete a DataVolume (gone already is fine), retried like every safe call."""
    from kubernetes.dynamic.exceptions import NotFoundError

    resource = kube.resource(*DATA_VOLUME)

    def call() -> None:
        try:
            resource.delete(name=name, namespace=namespace)
        except NotFoundError:
            pass

    kube.retrying(f"delete DataVolume {namespace}/{name}", call)


class DataVolumeWait(WaitError):
    """A DataVolume did not reach the awaited phase: ``outcome`` is ``gone`` (it
    disappeared), ``failed`` (phase Failed; ``detail``: its condition's message) or
    ``timeout`` (``phase``: where it stayed)."""

    def __init__(self, what: str, outcome: str, phase: str | None, detail: str = "") -> None:
        super().__init__(f"{what}: {outcome} ({phase or 'no phase'})")
        self.outcome, self.phase, self.detail = outcome, phase, detail


def condition_message(status: dict[str, Any]) -> str:
    """The first condition message of an object's status ("" when none says anything)."""
    for cond in status.get("conditions") or []:
        if cond.get("message"):
            return str(cond["message"])
    return ""


class CustomObjects:
    """CDI's objects through ``CustomObjectsApi`` on a :class:`Kube`'s connection (no
    discovery): DataVolume get/create/patch/delete and the upload token.  Calls are made
    once (a create is not safe to repeat); a failure is :class:`KubeError` naming
    ``what`` (:meth:`Kube.failure`)."""

    def __init__(self, kube: Kube) -> None:
        from kubernetes import client

        self.kube = kube
        self.api = client.CustomObjectsApi(kube.api_client)

    def once(self, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError as Urllib3Error

        try:
            return call(*args, **kwargs)
        except (ApiException, Urllib3Error, OSError) as exc:
            raise self.kube.failure(exc, what) from None

    def get_dv(self, namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.get_namespaced_custom_object(  # type: ignore[no-any-return]
                CDI_GROUP, CDI_VERSION, namespace, DV_PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, group: str, version: str, namespace: str, plural: str,
               body: dict[str, Any]) -> Any:
        return self.api.create_namespaced_custom_object(group, version, namespace, plural, body)

    def patch(self, group: str, version: str, namespace: str, plural: str, name: str,
              body: dict[str, Any]) -> Any:
        return self.api.patch_namespaced_custom_object(group, version, namespace, plural,
                                                       name, body)

    def delete(self, group: str, version: str, namespace: str, plural: str,
               name: str) -> Any:
        return self.api.delete_namespaced_custom_object(group, version, namespace, plural,
                                                        name)

    def wait_dv(self, namespace: str, name: str, wanted: set[str], timeout: float,
                poll: float, what: str) -> dict[str, Any]:
        """The DataVolume once its phase is one of ``wanted``; :class:`DataVolumeWait`
        when it disappears, fails or ``timeout`` seconds pass; a failed request is
        :class:`KubeError` naming ``what``."""
        deadline = time.monotonic() + timeout
        while True:
            dv = self.once(what, self.get_dv, namespace, name)
            if dv is None:
                raise DataVolumeWait(what, "gone", None)
            status = dv.get("status") or {}
            phase = status.get("phase") or "Pending"
            if phase in wanted:
                return dv  # type: ignore[no-any-return]
            if phase == "Failed":
                raise DataVolumeWait(what, "failed", phase, condition_message(status))
            if time.monotonic() >= deadline:
                raise DataVolumeWait(what, "timeout", phase)
            time.sleep(poll)
