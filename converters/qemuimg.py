"""qemu-img as a library: measure, convert (with live progress), compare, map.

Every call runs qemu-img as a subprocess with an argument list, never through a shell,
and always names the source format with ``-f``: letting qemu probe a raw disk would let a
guest that wrote an image header into its own disk make qemu open host files.  Failures
raise :class:`QemuImgError` with qemu-img's last error line and the image's name.

``convert`` reads qemu-img's ``-p`` output (``    (NN.NN/100%)\\r``) as it comes and calls
back with a fraction, so callers can draw bars or log lines.  Long-running children are
started under ``setpriv --pdeathsig KILL`` when available, so a SIGKILLed vmmove does not
leave an orphan qemu-img writing on; and they can be cancelled through :class:`Canceller`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from migrate.core.errors import VmmoveError
from migrate.clients.imageinfo import qemu_img
from migrate.core.progress import trace_command

#: Flags added to every ``qemu-img convert``: none.  Chosen by measurement (bench/convert.py,
#: numbers in docs/convert.md): qemu-img's own defaults (``-t unsafe`` for the output, i.e.
#: no flushes; writeback source cache; 8 coroutines; in-order writes; 4 KiB zero detection)
#: were as fast as or faster than every hand-tuned set on this class of machine.
#: ``-t writeback`` cost ~1.9x, ``-t none``/``-T none`` 2.5-3x, ``-W``/``-m 16`` gave no
#: steady gain on 2 cores.  Durability is vmmove's job: it fsyncs an output it has verified
#: before the journal records it done (see converters.convert).
FAST_FLAGS: tuple[str, ...] = ()

#: Source formats vmmove converts (qemu driver names).  ``vpc`` is VHD.
SOURCE_FORMATS = frozenset(
    {"raw", "qcow2", "qcow", "qed", "vmdk", "vdi", "vhdx", "vpc", "parallels", "bochs",
     "cloop", "dmg", "luks"}
)
OUTPUT_FORMATS = ("qcow2", "raw")

_PROGRESS_RE = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")
_LOCK_HINTS = ('Failed to get shared "write" lock', "Failed to get \"write\" lock",
               "Is another process using the image")


class QemuImgError(VmmoveError):
    """qemu-img failed; the message names the image and says what qemu-img said."""


class ImageInUse(QemuImgError):
    """The image is locked by another process (typically the running VM's qemu)."""


@dataclass(frozen=True)
class Measure:
    """``qemu-img measure``: bytes an output needs now (``required``) and at most."""

    required: int
    fully_allocated: int


@dataclass(frozen=True)
class Extent:
    """One run of ``qemu-img map --output=json``."""

    start: int
    length: int
    data: bool
    zero: bool
    depth: int = 0


@dataclass(frozen=True)
class CompareResult:
    identical: bool
    message: str


class Canceller:
    """Lets another thread stop every qemu-img started with it (Ctrl-C, shutdown)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen[bytes]] = set()
        self.cancelled = threading.Event()

    def register(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._procs.add(proc)
            if self.cancelled.is_set():
                proc.kill()

    def unregister(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._procs.discard(proc)

    def cancel(self) -> None:
        with self._lock:
            self.cancelled.set()
            for proc in self._procs:
                if proc.poll() is None:
                    proc.kill()


def launcher() -> list[str]:
    """``setpriv --pdeathsig KILL --`` when present: the child dies with its parent."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


def _last_error(stderr: str, name: str) -> str:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    msg = lines[-1] if lines else "qemu-img failed"
    msg = msg.removeprefix("qemu-img: ")
    if msg.startswith("Could not open 'json:"):  # vmmove's own json: chain: name the disk
        msg = msg.split("': ", 1)[-1]
    # qemu-img repeats the file name first ("Could not open 'x': ..."); keep it short.
    return f"{name}: {msg}"


def _raise(stderr: str, name: str) -> None:
    message = _last_error(stderr, name)
    if any(hint in stderr for hint in _LOCK_HINTS):
        raise ImageInUse(message)
    raise QemuImgError(message)


def _run(args: Sequence[str], name: str, timeout: float = 600) -> str:
    trace_command([qemu_img(), *args])
    proc = subprocess.run(
        [qemu_img(), *args], capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        _raise(proc.stderr, name)
    return proc.stdout


def _src(fmt: str, force_share: bool) -> list[str]:
    return ["-f", fmt] + (["-U"] if force_share else [])


def measure(path: str, fmt: str, out_fmt: str = "qcow2", *, force_share: bool = False,
            options: str | None = None, label: str | None = None) -> Measure:
    """Space the converted image needs: allocated data plus the output's metadata.

    ``path`` may be a ``json:`` chain (:mod:`migrate.sources.containment`); ``label``
    names the image in errors then.
    """
    args = ["measure", "--output=json", *_src(fmt, force_share), "-O", out_fmt]
    if options:
        args += ["-o", options]
    data = json.loads(_run([*args, path], label or path))
    return Measure(required=int(data["required"]), fully_allocated=int(data["fully-allocated"]))


def create_overlay(backing: str, backing_fmt: str, dest: str) -> None:
    """A qcow2 at ``dest`` whose reads fall through to ``backing`` and whose writes stay in
    it (the boot test's throwaway layer); the backing format is pinned (``-F``), never
    probed, and ``backing`` must be an absolute path."""
    if not os.path.isabs(backing):
        raise QemuImgError(f"{backing}: an overlay's backing file must be an absolute path")
    _run(["create", "-q", "-f", "qcow2", "-F", backing_fmt, "-b", backing, dest], dest)


def read_head(path: str, fmt: str, length: int = 65536) -> bytes:
    """The first ``length`` bytes of the guest's view of an image (``qemu-img dd``)."""
    with tempfile.TemporaryDirectory(prefix="vmmove-head-") as tmp:
        out = os.path.join(tmp, "head.raw")
        _run(["dd", "-f", fmt, "-O", "raw", f"bs={length}", "count=1", f"if={path}",
              f"of={out}"], path)
        with open(out, "rb") as fh:
            return fh.read(length)


def check(path: str, fmt: str, *, force_share: bool = False,
          label: str | None = None) -> str | None:
    """``qemu-img check``: ``None`` when the image is sound, else what is wrong.

    Needed because a truncated qcow2 or vmdk still opens and converts "successfully":
    qemu reads the missing clusters as zeros.  Leaks (exit 3) are harmless; formats
    without a check (exit 63, e.g. raw) pass.
    """
    trace_command([qemu_img(), "check", "-q", *_src(fmt, force_share), path])
    proc = subprocess.run(
        [qemu_img(), "check", "-q", *_src(fmt, force_share), path],
        capture_output=True, text=True, timeout=600,
    )
    if proc.returncode in (0, 3, 63):
        return None
    if any(hint in proc.stderr for hint in _LOCK_HINTS):
        raise ImageInUse(_last_error(proc.stderr, label or path))
    text = proc.stderr + proc.stdout
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    problem = next((ln for ln in lines if ln.startswith("ERROR")), lines[-1] if lines else "")
    problem = problem.removeprefix("qemu-img: ").removeprefix("ERROR:").removeprefix("ERROR").strip()
    if problem.startswith("Could not open 'json:"):
        problem = problem.split("': ", 1)[-1]
    kind = "corrupt image" if proc.returncode == 2 else "image check failed"
    return f"{kind} ({problem or f'qemu-img check exit {proc.returncode}'})"


def image_map(path: str, fmt: str, *, force_share: bool = False) -> list[Extent]:
    """Allocation map of an image (its whole backing chain flattened)."""
    data = json.loads(_run(["map", "--output=json", *_src(fmt, force_share), path], path))
    return [
        Extent(int(e["start"]), int(e["length"]), bool(e.get("data")), bool(e.get("zero")),
               int(e.get("depth", 0)))
        for e in data
    ]


def data_bytes(extents: Sequence[Extent]) -> int:
    """Bytes holding data (not holes, not zero runs) in a :func:`image_map` result."""
    return sum(e.length for e in extents if e.data and not e.zero)


def compare(a: str, fmt_a: str, b: str, fmt_b: str, *, force_share: bool = False,
            canceller: Canceller | None = None, label: str | None = None,
            on_progress: Callable[[float], None] | None = None) -> CompareResult:
    """``qemu-img compare``: exit 0 identical, 1 different, 2 (or other) an error.

    ``label`` names ``a`` in errors when ``a`` is a ``json:`` chain.  ``on_progress`` gets
    the fraction compared (0..1, from ``-p``) as qemu-img reports it.
    """
    args = [qemu_img(), "compare", "-p", "-f", fmt_a, "-F", fmt_b]
    if force_share:
        args.append("-U")
    trace_command([*args, a, b])
    args = [*launcher(), *args]
    text_parts: list[bytes] = []
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([*args, a, b], stdout=subprocess.PIPE, stderr=err,
                                stdin=subprocess.DEVNULL)
        if canceller:
            canceller.register(proc)
        try:
            assert proc.stdout is not None
            fd = proc.stdout.fileno()
            parse_progress(lambda: os.read(fd, 4096), on_progress or (lambda _v: None),
                           text_parts.append)
            proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            if proc.stdout:
                proc.stdout.close()
            if canceller:
                canceller.unregister(proc)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    text = " ".join(p.decode(errors="replace").strip() for p in text_parts if p.strip())
    if proc.returncode == 0:
        return CompareResult(True, text or "Images are identical.")
    if proc.returncode == 1:
        return CompareResult(False, text or "Images differ.")
    if proc.returncode < 0:
        raise QemuImgError(f"{label or a}: qemu-img compare was stopped (signal "
                           f"{-proc.returncode})")
    _raise(stderr or text, label or a)
    raise AssertionError("unreachable")


def parse_progress(chunks: Callable[[], bytes], on_progress: Callable[[float], None],
                   on_text: Callable[[bytes], None] | None = None) -> None:
    """Feed qemu-img ``-p`` output (read by ``chunks`` until b"") to ``on_progress`` (0..1).

    qemu-img ends each report with ``\\r`` and no newline, so this reads raw chunks and
    splits on both ``\\r`` and ``\\n`` instead of reading lines.  Pieces that are not
    progress reports (``qemu-img compare``'s verdict) go to ``on_text``.
    """
    pending = b""
    last = -1.0
    while True:
        chunk = chunks()
        if not chunk:
            break
        pending += chunk
        *complete, pending = re.split(rb"[\r\n]", pending)
        for piece in complete:
            match = _PROGRESS_RE.search(piece)
            if match:
                value = min(float(match.group(1)) / 100.0, 1.0)
                if value != last:
                    last = value
                    on_progress(value)
            elif on_text is not None and piece.strip():
                on_text(piece)
    match = _PROGRESS_RE.search(pending)
    if match:
        value = min(float(match.group(1)) / 100.0, 1.0)
        if value != last:
            on_progress(value)
    elif on_text is not None and pending.strip():
        on_text(pending)


def convert_args(src: str, src_fmt: str, dest: str, out_fmt: str, *, compress: str | None = None,
                 force_share: bool = False, flags: Sequence[str] = FAST_FLAGS,
                 progress: bool = True) -> list[str]:
    """The qemu-img convert argument list (without the qemu-img executable)."""
    args = ["convert", *(["-p"] if progress else []), *flags, "-f", src_fmt, "-O", out_fmt]
    if force_share:
        args.append("-U")
    if compress:
        if out_fmt != "qcow2":
            raise QemuImgError(f"{dest}: compression needs qcow2 output, not {out_fmt}")
        args += ["-c", "-o", f"compression_type={compress}"]
    return [*args, src, dest]


def convert(src: str, src_fmt: str, dest: str, out_fmt: str, *, compress: str | None = None,
            force_share: bool = False, flags: Sequence[str] = FAST_FLAGS,
            on_progress: Callable[[float], None] | None = None,
            canceller: Canceller | None = None, label: str | None = None) -> None:
    """Convert ``src`` into a new image ``dest``; backing chains are read through (flattened).

    ``src`` may be a ``json:`` chain built by :mod:`migrate.sources.containment`, the only
    way vmmove hands an untrusted image to qemu-img; ``label`` names it in errors.

    ``dest`` is created (or overwritten) by qemu-img; callers write to a temporary name and
    rename afterwards, so a failure never leaves a complete-looking output behind.
    """
    args = convert_args(src, src_fmt, dest, out_fmt, compress=compress,
                        force_share=force_share, flags=flags)
    trace_command([qemu_img(), *args])
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [*launcher(), qemu_img(), *args], stdout=subprocess.PIPE, stderr=err,
            stdin=subprocess.DEVNULL,
        )
        if canceller:
            canceller.register(proc)
        try:
            assert proc.stdout is not None
            fd = proc.stdout.fileno()
            parse_progress(lambda: os.read(fd, 4096), on_progress or (lambda _v: None))
            proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            if proc.stdout:
                proc.stdout.close()
            if canceller:
                canceller.unregister(proc)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    if proc.returncode < 0:
        raise QemuImgError(f"{label or src}: qemu-img convert was stopped (signal "
                           f"{-proc.returncode})")
    if proc.returncode != 0:
        _raise(stderr, label or src)
