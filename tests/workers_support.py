"""Jobs that really run: the Job controller and a kubelet, played on the test cluster.

:class:`Kubelet` (a :class:`~tests.kube_support.Reconciler`) watches ``batch/v1`` Jobs on
a :class:`tests.plan_support.Cluster` and runs each Job's pod as a real process on this
machine, as a kubelet would run its container:

* the container's ``command``/``args``/``env`` exactly as the Job gives them; the image
  is this checkout (``vmmove`` resolves to ``python3 -c 'from migrate.cli import run'``
  with this tree on ``PYTHONPATH``);
* volumes at their ``mountPath``/``devicePath`` inside a private mount namespace
  (``unshare --mount``): a tmpfs over :data:`ROOT`, then bind mounts of the PVC's folder
  (Filesystem: the folder holding ``disk.img``, made sparse at the DataVolume's size as
  CDI's blank import does), the PVC's loop device (Block), the Secret's items written
  with their ``defaultMode``, and the ``terminationMessagePath`` file — so a wrong path
  in the Job fails as it would in a pod;
* a Secret or Secret key that does not exist leaves the pod ``Pending`` with the
  container waiting (``CreateContainerConfigError``), as kubelet does;
* the termination message is the file at ``terminationMessagePath`` or, on failure with
  ``FallbackToLogsOnError``, the log's last lines; exit codes as the runtime reports them
  (SIGKILL: 137);
* the Job controller's part: a new pod after each failed one while ``failed ≤
  backoffLimit``, then the ``Failed`` condition; ``Complete`` after a success; deleting
  a Job deletes its pods and kills their processes.

:meth:`Kubelet.kill` kills a Job's running pod (a node lost, an OOM kill).  Skips when
not root or ``unshare`` is missing.
"""

from __future__ import annotations

import base64
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kmock
import pytest

from tests.kube_support import DV, Reconciler

ROOT = "/run/vmmove"
JOB = kmock.resource("batch", "v1", "jobs")
POD = kmock.resource("", "v1", "pods")
SECRET = kmock.resource("", "v1", "secrets")
CHECKOUT = Path(__file__).resolve().parents[1]


def _quantity(text: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "k": 1000,
             "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


@dataclass
class RunningPod:
    name: str
    job: str
    proc: subprocess.Popen[bytes]
    folder: Path


@dataclass
class Kubelet(Reconciler):
    cluster: Any
    folder: Path
    interval: float = 0.1
    block: bool = False  # Block-mode PVCs: loop devices
    running: dict[tuple[str, str], RunningPod] = field(default_factory=dict)  # (ns, job)
    pods_started: list[str] = field(default_factory=list)
    loops: dict[str, str] = field(default_factory=dict)  # claim → /dev/loopN
    max_running: int = 0  # most pods running at once
    #: called with (namespace, job) before each pod starts (tests break things there)
    before_start: Callable[[str, str], None] | None = None

    def __post_init__(self) -> None:
        self.cluster.declare(JOB, "Job")
        self.cluster.declare(POD, "Pod")
        self._lock = threading.Lock()
        os.makedirs(ROOT, exist_ok=True)
        self.start("kubelet")

    # -- volumes ----------------------------------------------------------------------------
    def pvc(self, claim: str, namespace: str = "vms") -> Path:
        """The PVC's storage here: a folder (Filesystem) holding disk.img, or the backing
        file of its loop device (Block)."""
        return self.folder / "pvcs" / namespace / claim

    def _provision(self, namespace: str, claim: str) -> tuple[Path, str | None]:
        folder = self.pvc(claim, namespace)
        dv = self.cluster.get(DV, namespace, claim)
        if dv is None:
            raise LookupError(f"persistentvolumeclaim {claim!r} not found")
        storage = (dv.get("spec") or {}).get("storage") or {}
        size = _quantity(storage["resources"]["requests"]["storage"])
        block = storage.get("volumeMode") == "Block"
        if not folder.exists():
            folder.mkdir(parents=True)
            if block:
                backing = folder / "block.img"
                with open(backing, "wb") as fh:
                    fh.truncate(size)
                loop = subprocess.run(["losetup", "--find", "--show", str(backing)],
                                      capture_output=True, text=True, check=True).stdout.strip()
                self.loops[claim] = loop
            else:
                with open(folder / "disk.img", "wb") as fh:  # CDI's blank import
                    fh.truncate(size)
        return folder, self.loops.get(claim)

    # -- the Job controller -----------------------------------------------------------------
    def _reconcile(self) -> None:
        jobs = self.cluster.objects(JOB)
        with self._lock:
            for key in [k for k in self.running if k not in jobs]:
                self._kill(key)  # the Job was deleted: its pods go too
        for pod_key, pod in self.cluster.objects(POD).items():
            owner = (pod.get("metadata") or {}).get("labels", {}).get("job-name")
            if (pod_key[0], owner) not in jobs:
                self.cluster.call(
                    lambda k=pod_key: self.cluster.emulator.objects[POD, k[0], k[1]].delete())
        for (ns, name), job in jobs.items():
            status = job.get("status") or {}
            conditions = {c["type"] for c in status.get("conditions") or []}
            if conditions & {"Complete", "Failed"}:
                continue
            with self._lock:
                busy = (ns, name) in self.running
            if busy or self._pending(ns, name):
                continue
            self._start_pod(ns, name, job)

    def _pending(self, ns: str, job: str) -> bool:
        for (pns, _), pod in self.cluster.objects(POD).items():
            labels = (pod.get("metadata") or {}).get("labels") or {}
            if pns == ns and labels.get("job-name") == job and \
                    (pod.get("status") or {}).get("phase") == "Pending":
                return True
        return False

    def _job_status(self, ns: str, name: str, change: dict[str, Any]) -> None:
        self.cluster.status_patch(JOB, ns, name, {"status": change})

    def _start_pod(self, ns: str, job_name: str, job: dict[str, Any]) -> None:
        template = job["spec"]["template"]
        pod_name = f"{job_name}-{uuid.uuid4().hex[:5]}"
        labels = {**((template.get("metadata") or {}).get("labels") or {}),
                  "job-name": job_name, "batch.kubernetes.io/job-name": job_name}
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": pod_name, "namespace": ns, "labels": labels,
                            "uid": str(uuid.uuid4())},
               "spec": template["spec"], "status": {"phase": "Pending"}}
        self.cluster.create(POD, ns, pod)
        self.pods_started.append(pod_name)
        if self.before_start is not None:
            self.before_start(ns, job_name)
        spec = template["spec"]
        container = spec["containers"][0]
        folder = self.folder / "pods" / pod_name
        folder.mkdir(parents=True)
        try:
            mounts = self._mounts(ns, spec, container, folder)
        except LookupError as exc:  # kubelet: the container cannot be created
            self.cluster.status_patch(POD, ns, pod_name, {"status": {
                "phase": "Pending", "containerStatuses": [{"name": container["name"],
                "state": {"waiting": {"reason": "CreateContainerConfigError",
                                      "message": str(exc)}}}]}})
            return
        term = folder / "termination-log"
        term.touch()
        mounts.append(("file", str(term), container.get("terminationMessagePath",
                                                          "/dev/termination-log")))
        proc = self._exec(container, mounts, folder)
        # tracked before any API call: a call that fails here (a loaded API server) must not
        # leave a running container the next pass does not know of (it would start a second
        # pod of the same Job beside it, which a kubelet never does)
        running = RunningPod(pod_name, job_name, proc, folder)
        with self._lock:
            self.running[(ns, job_name)] = running
            self.max_running = max(self.max_running, len(self.running))
        try:
            self.cluster.status_patch(POD, ns, pod_name, {"status": {"phase": "Running"}})
            self._job_status(ns, job_name, {"active": 1})
        finally:  # its outcome is reported after the Running status, whatever happened
            threading.Thread(target=self._wait, args=(ns, job, running, container, term),
                             daemon=True).start()

    def _mounts(self, ns: str, spec: dict[str, Any], container: dict[str, Any],
                folder: Path) -> list[tuple[str, str, str]]:
        """(kind, source here, path in the container) for every mount and device."""
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        out: list[tuple[str, str, str]] = []
        for m in container.get("volumeMounts") or []:
            vol = volumes[m["name"]]
            if "persistentVolumeClaim" in vol:
                pvc, _ = self._provision(ns, vol["persistentVolumeClaim"]["claimName"])
                out.append(("dir", str(pvc), m["mountPath"]))
            elif "secret" in vol:
                out.append(("dir", str(self._secret(ns, vol["secret"], folder / m["name"])),
                            m["mountPath"]))
        for dvc in container.get("volumeDevices") or []:
            vol = volumes[dvc["name"]]
            _, loop = self._provision(ns, vol["persistentVolumeClaim"]["claimName"])
            if loop is None:
                raise LookupError(f"volume {dvc['name']!r} is not a Block volume")
            out.append(("file", loop, dvc["devicePath"]))
        return out

    def _secret(self, ns: str, ref: dict[str, Any], folder: Path) -> Path:
        secret = self.cluster.get(SECRET, ns, ref["secretName"])
        if secret is None:
            raise LookupError(f"secret {ref['secretName']!r} not found")
        data = secret.get("data") or {}
        folder.mkdir(parents=True)
        items = ref.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            if item["key"] not in data:
                raise LookupError(f"couldn't find key {item['key']} in Secret "
                                  f"{ns}/{ref['secretName']}")
            path = folder / item["path"]
            path.write_bytes(base64.b64decode(data[item["key"]]))
            path.chmod(item.get("mode", ref.get("defaultMode", 0o644)))
        return folder

    def _exec(self, container: dict[str, Any], mounts: list[tuple[str, str, str]],
              folder: Path) -> subprocess.Popen[bytes]:
        lines = ["set -e", f"mount -t tmpfs vmmove-pod {ROOT}"]
        for kind, source, path in mounts:
            if not (path == ROOT or path.startswith(ROOT + "/")):
                raise AssertionError(f"the test kubelet mounts only under {ROOT}: {path}")
            q = shlex.quote(path)
            lines.append(f"mkdir -p {q}" if kind == "dir" else
                         f"mkdir -p $(dirname {q}) && touch {q}")
            lines.append(f"mount --bind {shlex.quote(source)} {q}")
        lines.append('exec "$@"')
        command = list(container.get("command") or []) + list(container.get("args") or [])
        if command and command[0] == "vmmove":
            command[:1] = [sys.executable, "-c", "from migrate.cli import run; run()"]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/root",
               "PYTHONPATH": str(CHECKOUT), "LANG": "C.UTF-8"}
        for e in container.get("env") or []:
            env[e["name"]] = str(e.get("value", ""))
        log = open(folder / "log", "wb")
        return subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
             "\n".join(lines), "sh", *command],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True)

    def _wait(self, ns: str, job: dict[str, Any], running: RunningPod,
              container: dict[str, Any], term: Path) -> None:
        code = running.proc.wait()
        exit_code = 128 - code if code < 0 else code  # SIGKILL → 137
        message = term.read_text(errors="replace")[-4096:] if term.exists() else ""
        if exit_code != 0 and not message.strip() and \
                container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            log = (running.folder / "log").read_text(errors="replace").strip().splitlines()
            message = "\n".join(log[-5:])
        name = running.job
        try:
            self.cluster.status_patch(POD, ns, running.name, {"status": {
                "phase": "Succeeded" if exit_code == 0 else "Failed",
                "containerStatuses": [{"name": container["name"], "state": {"terminated": {
                    "exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                    "message": message}}}]}})
            current = self.cluster.get(JOB, ns, name)
            if current is None:
                return
            status = current.get("status") or {}
            if exit_code == 0:
                self._job_status(ns, name, {"active": 0, "succeeded": 1, "conditions": [
                    {"type": "Complete", "status": "True"}]})
            else:
                failed = int(status.get("failed") or 0) + 1
                change: dict[str, Any] = {"active": 0, "failed": failed}
                if failed > int(job["spec"].get("backoffLimit", 6)):
                    change["conditions"] = [{"type": "Failed", "status": "True",
                                             "reason": "BackoffLimitExceeded",
                                             "message": "Job has reached the specified "
                                                        "backoff limit"}]
                self._job_status(ns, name, change)
        except Exception:  # noqa: BLE001 - the cluster is gone (test ended)
            pass
        finally:
            # only now, with the Job's status updated: the controller loop must not see a
            # Job with no running pod and no outcome (it would start a second pod)
            with self._lock:
                self.running.pop((ns, name), None)

    def _kill(self, key: tuple[str, str]) -> None:
        pod = self.running.get(key)
        if pod is not None and pod.proc.poll() is None:
            os.killpg(pod.proc.pid, signal.SIGKILL)

    def kill(self, job: str, namespace: str = "vms") -> bool:
        """SIGKILL the running pod of ``job``; False when none runs."""
        with self._lock:
            running = (namespace, job) in self.running
            self._kill((namespace, job))
        return running

    def wait_running(self, timeout: float = 60.0) -> str:
        """The name of the first Job seen with a running pod."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.running:
                    return next(iter(self.running))[1]
            time.sleep(0.02)
        raise AssertionError("no worker pod ran")

    def stop(self) -> None:
        super().stop()
        with self._lock:
            for key in list(self.running):
                self._kill(key)
        for loop in self.loops.values():
            subprocess.run(["losetup", "-d", loop], capture_output=True)


@pytest.fixture
def kubelet(cluster: Any, tmp_path: Path) -> Iterator[Kubelet]:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("the test kubelet needs root and unshare (mount namespaces)")
    k = Kubelet(cluster, tmp_path / "kubelet")
    try:
        yield k
    finally:
        k.stop()
