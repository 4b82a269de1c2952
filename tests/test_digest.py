"""The checksum forms of migrate.core.digest: one function, in order or out of order."""

from __future__ import annotations

import hashlib
import os
import random

import pytest
import xxhash

from migrate.core import digest
from migrate.clients.nbd import file_guest_checksum

MiB = 1 << 20


def _tree_by_hand(form: str, data: bytes) -> str:
    """The documented definition, written out: hash each MiB, hash the digests."""
    inner = (lambda b: xxhash.xxh3_128_digest(b)) if form == digest.XXH3_1M else \
        (lambda b: hashlib.sha256(b).digest())
    outer = xxhash.xxh3_128() if form == digest.XXH3_1M else hashlib.sha256()
    for at in range(0, len(data), MiB):
        outer.update(inner(data[at:at + MiB]))
    return f"{form}:{outer.hexdigest()}"


@pytest.mark.parametrize("form", digest.TREE_FORMS)
def test_tree_digest_matches_its_definition_in_any_pieces(form: str) -> None:
    rng = random.Random(17)
    data = os.urandom(3 * MiB) + bytes(2 * MiB) + os.urandom(MiB // 3)
    expected = _tree_by_hand(form, data)
    whole = digest.TreeDigest(form)
    whole.update(data)
    assert whole.hexdigest() == expected
    pieces = digest.TreeDigest(form)  # odd pieces, the zero run given as a hole
    pos = 0
    while pos < 3 * MiB:
        n = min(rng.randrange(1, 700_000), 3 * MiB - pos)
        pieces.update(data[pos:pos + n])
        pos += n
    pieces.zeros(2 * MiB)
    pieces.update(data[5 * MiB:])
    assert pieces.hexdigest() == expected
    assert pieces.bytes == len(data)


@pytest.mark.parametrize("form", digest.TREE_FORMS)
def test_block_tree_out_of_order_equals_in_order(form: str) -> None:
    data = os.urandom(16 * MiB + 12345)
    tree = digest.BlockTree(form)
    ranges = [(8 * MiB, len(data)), (0, 8 * MiB)]  # the last part first
    for start, end in ranges:
        tree.put_range(start, data[start:end])
    assert tree.hexdigest(len(data)) == _tree_by_hand(form, data)
    with pytest.raises(ValueError, match="block 0 of 17"):
        digest.BlockTree(form).hexdigest(len(data))
    with pytest.raises(ValueError, match="not a multiple"):
        tree.put_range(MiB + 1, b"x")


@pytest.mark.parametrize("form", digest.TREE_FORMS)
def test_a_guest_view_is_hashed_in_the_form_asked(tmp_path, form: str) -> None:
    """nbd's guest checksums (the form a recorded checksum names: sha256-1m journals still
    verify) skip a raw file's holes and equal the definition over its bytes."""
    data = os.urandom(MiB + 5) + bytes(3 * MiB) + os.urandom(7)
    raw = tmp_path / "g.raw"
    with open(raw, "wb") as fh:
        fh.write(data[:MiB + 5])
        fh.seek(4 * MiB + 5)  # a hole where the zeros are
        fh.write(data[4 * MiB + 5:])
    assert file_guest_checksum(raw, form=form) == (_tree_by_hand(form, data), len(data))


def test_forms_parse_and_unknown_forms_are_refused(tmp_path) -> None:
    x = "xxh3-1m:" + "A" * 32
    assert digest.parse(x) == ("xxh3-1m", "a" * 32)
    assert digest.parse("sha256:" + "0" * 64) == ("sha256", "0" * 64)
    assert digest.parse("sha256:" + "0" * 63) is None
    assert digest.parse("md5:" + "0" * 32) is None
    assert digest.form_of(None) == digest.DEFAULT
    assert digest.form_of("sha256-1m:" + "f" * 64) == digest.SHA256_1M
    with pytest.raises(digest.UnknownForm, match="'md5'"):
        digest.form_of("md5:" + "0" * 32)
    f = tmp_path / "f"
    payload = os.urandom(5 * MiB + 7)
    f.write_bytes(payload)
    assert digest.file_checksum(f, digest.SHA256) == "sha256:" + hashlib.sha256(payload).hexdigest()
    assert digest.file_checksum(f) == _tree_by_hand(digest.XXH3_1M, payload)
