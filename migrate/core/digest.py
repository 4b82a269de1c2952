"""The checksums vmmove records and compares, named by the form in front of their hex.

A checksum is a string ``FORM:HEX``; the form says how the hex was computed, so every
place that checks one computes the same form (:func:`form_of`) and journals written by
older vmmove versions still verify:

``xxh3-1m:<32 hex>`` (the default, :data:`DEFAULT`)
    XXH3-128 of each 1 MiB block of the bytes (the last block may be short), then XXH3-128
    of those 16-byte digests concatenated in order.
``sha256-1m:<64 hex>``
    The same tree with SHA-256 (guest-view checksums before issue 17).
``sha256:<64 hex>``
    SHA-256 of the bytes, flat (file checksums before issue 17).

Why a tree of 1 MiB blocks: a hole contributes a precomputed digest without being read
(the cost follows the data, not the disk size), and blocks may be hashed in any order and
assembled (:class:`BlockTree`: an upload that sends a file's parts out of order still
yields the file's checksum).  The same function serves a guest view (the disk as the
guest sees it, holes as zeros) and a file's bytes (a qcow2 as it is uploaded).

Why XXH3-128 (``xxhash``, https://xxhash.com): it runs at ~27 GB/s per core here against
SHA-256's ~1.9 GB/s, so verifying a copy in the stream costs almost nothing beside the
copy.  Its 128 bits make an accidental match of two different disks (a conversion,
transfer or storage error) a 2^-128 event; it is not a defence against a collision made
on purpose, and needs none here: every checksum compares a copy with its own source,
whose owner controls both.  Transport integrity has its own check (S3: SigV4 and a CRC
per part).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any, Protocol

BLOCK = 1 << 20  # bytes per tree block
XXH3_1M = "xxh3-1m"
SHA256_1M = "sha256-1m"
SHA256 = "sha256"
DEFAULT = XXH3_1M
TREE_FORMS = (XXH3_1M, SHA256_1M)
HEX_LENGTH = {XXH3_1M: 32, SHA256_1M: 64, SHA256: 64}
_ZEROS = bytes(BLOCK)


class UnknownForm(ValueError):
    """A checksum form vmmove does not compute."""


def parse(checksum: str | None) -> tuple[str, str] | None:
    """``(form, hex)`` of a well-formed checksum of a known form (hex lower-cased), else
    None.  ``"xxh3-1m:ab…"`` → ``("xxh3-1m", "ab…")``."""
    if not checksum or ":" not in checksum:
        return None
    form, _, hexpart = checksum.partition(":")
    if HEX_LENGTH.get(form) != len(hexpart):
        return None
    try:
        int(hexpart, 16)
    except ValueError:
        return None
    return form, hexpart.lower()


def form_of(checksum: str | None, default: str = DEFAULT) -> str:
    """The form to compute to compare with ``checksum``; ``default`` when there is none
    (nothing recorded yet).  Raises :class:`UnknownForm` for a malformed or unknown one."""
    if not checksum:
        return default
    parsed = parse(checksum)
    if parsed is None:
        raise UnknownForm(f"unknown checksum form {checksum.partition(':')[0]!r}")
    return parsed[0]


def _new_hash(form: str) -> Any:
    if form == XXH3_1M:
        import xxhash

        return xxhash.xxh3_128()
    if form in (SHA256_1M, SHA256):
        return hashlib.sha256()
    raise UnknownForm(f"unknown checksum form {form!r}")


def block_digest(form: str, data: bytes | bytearray | memoryview) -> bytes:
    """The digest of one tree block (``len(data) <= BLOCK``) in tree form ``form``."""
    if form == XXH3_1M:
        import xxhash

        return xxhash.xxh3_128_digest(data)
    if form == SHA256_1M:
        return hashlib.sha256(data).digest()
    raise UnknownForm(f"not a tree checksum form: {form!r}")


@lru_cache(maxsize=None)
def zero_digest(form: str) -> bytes:
    """The digest of a whole block of zeros (a hole) in tree form ``form``."""
    return block_digest(form, _ZEROS)


def combine(form: str, digests: Iterable[bytes]) -> str:
    """``FORM:HEX`` of the bytes whose blocks' digests (:func:`block_digest`, in order) are
    ``digests``: the tree's outer hash, for a caller that kept the block digests (warm
    migration's recorded per-block hashes)."""
    if form not in TREE_FORMS:
        raise UnknownForm(f"not a tree checksum form: {form!r}")
    outer = _new_hash(form)
    for d in digests:
        outer.update(d)
    return f"{form}:{outer.hexdigest()}"


class Digest(Protocol):
    """What every form's running digest offers."""

    bytes: int

    def update(self, data: bytes | bytearray | memoryview) -> None: ...
    def zeros(self, count: int) -> None: ...
    def hexdigest(self) -> str: ...


class TreeDigest:
    """A tree-form checksum of bytes given in order: :meth:`update` with data,
    :meth:`zeros` for a hole (whole zero blocks are not materialised), then
    :meth:`hexdigest` → ``FORM:HEX``.  ``bytes`` counts the bytes given."""

    def __init__(self, form: str = DEFAULT) -> None:
        if form not in TREE_FORMS:
            raise UnknownForm(f"not a tree checksum form: {form!r}")
        self.form = form
        self._outer = _new_hash(form)
        self._pending = b""
        self._zero = zero_digest(form)
        self._sha = form == SHA256_1M
        self.bytes = 0

    def _block(self, block: bytes | bytearray | memoryview) -> None:
        if self._sha and len(block) == BLOCK and block == _ZEROS:
            self._outer.update(self._zero)  # comparing is ~50x cheaper than SHA-256
        else:
            self._outer.update(block_digest(self.form, block))

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        self.bytes += len(view)
        if self._pending:
            need = BLOCK - len(self._pending)
            self._pending += bytes(view[:need])
            view = view[need:]
            if len(self._pending) < BLOCK:
                return
            self._block(self._pending)
            self._pending = b""
        full = len(view) - len(view) % BLOCK
        for offset in range(0, full, BLOCK):  # no copies: the hash reads the view
            self._block(view[offset:offset + BLOCK])
        self._pending = bytes(view[full:])

    def zeros(self, count: int) -> None:
        """Add ``count`` zero bytes (a hole)."""
        if self._pending:
            n = min(count, BLOCK - len(self._pending))
            self.update(bytes(n))
            count -= n
        while count >= BLOCK:
            self._outer.update(self._zero)
            self.bytes += BLOCK
            count -= BLOCK
        if count:
            self.update(bytes(count))

    def hexdigest(self) -> str:
        if self._pending:
            self._block(self._pending)
            self._pending = b""
        return f"{self.form}:{self._outer.hexdigest()}"


class FlatDigest:
    """``sha256:<hex>`` of bytes given in order (the pre-issue-17 file checksum)."""

    form = SHA256

    def __init__(self, form: str = SHA256) -> None:
        if form != SHA256:
            raise UnknownForm(f"not a flat checksum form: {form!r}")
        self._hash = hashlib.sha256()
        self.bytes = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)
        self.bytes += len(data)

    def zeros(self, count: int) -> None:
        while count:
            n = min(count, BLOCK)
            self.update(_ZEROS[:n])
            count -= n

    def hexdigest(self) -> str:
        return f"{SHA256}:{self._hash.hexdigest()}"


def new(form: str = DEFAULT) -> TreeDigest | FlatDigest:
    """A running digest of ``form`` (:class:`UnknownForm` for another)."""
    return FlatDigest() if form == SHA256 else TreeDigest(form)


class BlockTree:
    """A tree-form checksum assembled from blocks given in any order: block ``i`` covers
    bytes ``[i × BLOCK, (i+1) × BLOCK)``; only the last block may be short.  Memory: 16 or
    32 bytes per block given (16 MiB for 1 TiB)."""

    def __init__(self, form: str = DEFAULT) -> None:
        if form not in TREE_FORMS:
            raise UnknownForm(f"not a tree checksum form: {form!r}")
        self.form = form
        self._digests: dict[int, bytes] = {}

    def put(self, index: int, data: bytes | bytearray | memoryview) -> None:
        """Hash block ``index`` (its bytes, ``len(data) <= BLOCK``)."""
        self._digests[index] = block_digest(self.form, data)

    def put_range(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Hash ``data`` found at byte ``offset`` (a multiple of :data:`BLOCK`), cut into
        blocks; only a range that ends the bytes may end with a short block."""
        if offset % BLOCK:
            raise ValueError(f"offset {offset} is not a multiple of {BLOCK}")
        view = memoryview(data).cast("B")
        first = offset // BLOCK
        for i, at in enumerate(range(0, len(view), BLOCK)):
            self.put(first + i, view[at:at + BLOCK])

    def hexdigest(self, size: int) -> str:
        """``FORM:HEX`` of ``size`` bytes; every block of them must have been given
        (``ValueError`` naming the first missing one)."""
        count = -(-size // BLOCK)
        outer = _new_hash(self.form)
        for i in range(count):
            digest = self._digests.get(i)
            if digest is None:
                raise ValueError(f"block {i} of {count} was not hashed")
            outer.update(digest)
        return f"{self.form}:{outer.hexdigest()}"


def file_checksum(path: str | os.PathLike[str], form: str = DEFAULT,
                  on_bytes: Callable[[int], None] | None = None) -> str:
    """``FORM:HEX`` of a file's bytes, read once in 4 MiB pieces (bounded memory).
    ``on_bytes`` gets the running count of bytes hashed (progress).  ``OSError`` for the
    file, :class:`UnknownForm` for the form."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return fd_checksum(fd, None, form, on_bytes)
    finally:
        os.close(fd)


def fd_checksum(fd: int, size: int | None = None, form: str = DEFAULT,
                on_bytes: Callable[[int], None] | None = None) -> str:
    """:func:`file_checksum` of the bytes ``[0, size)`` (``None``: to the end) of an open
    file ``fd``, read with ``pread`` (its offset is left alone; a file renamed since it
    was opened reads on)."""
    digest = new(form)
    buffer = bytearray(4 * BLOCK)
    view = memoryview(buffer)
    done = 0
    while size is None or done < size:
        want = view if size is None else view[:min(len(view), size - done)]
        n = os.preadv(fd, [want], done)
        if not n:
            break
        digest.update(view[:n])
        done += n
        if on_bytes is not None:
            on_bytes(done)
    return digest.hexdigest()


def matches(path: str | os.PathLike[str], recorded: str | None,
            on_bytes: Callable[[int], None] | None = None) -> bool:
    """Whether the file's bytes have the checksum ``recorded`` (``FORM:HEX``), computed in
    ``recorded``'s form (:func:`file_checksum`).  False when nothing is recorded or its form
    is unknown (the file cannot be vouched for); ``OSError`` for the file."""
    parsed = parse(recorded)
    if parsed is None:
        return False
    return file_checksum(path, parsed[0], on_bytes) == f"{parsed[0]}:{parsed[1]}"


def short(checksum: str) -> str:
    """``FORM:`` and the first 12 hex digits, for messages: ``"xxh3-1m:0123456789ab…"``."""
    form, _, hexpart = checksum.partition(":")
    return f"{form}:{hexpart[:12]}…"
