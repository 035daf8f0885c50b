"""The challenge shard format, read and written in one place.

A shard is a 256 x int32 little-endian header (magic 20240520, version 1, token count, zeros)
followed by that many little-endian uint16 tokens. Token shards put BOS (id 1) before every
document and no EOS; byte sidecars (`fineweb_val_bytes_*.bin`) use the same container with one
byte count per token.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
SHARD_TOKENS = 100_000_000
BOS_ID = 1
SPLITS = ("train", "val")
SHARD_RE = re.compile(r"^fineweb_(train|val|val_bytes)_(\d{6})\.bin$")


class ShardError(ValueError):
    """A shard that is not what the challenge format says it must be."""


def shard_name(kind: str, index: int) -> str:
    """kind is 'train', 'val' or 'val_bytes'."""
    return f"fineweb_{kind}_{index:06d}.bin"


def list_shards(directory: Path, kind: str) -> list[Path]:
    """Shards of one kind in index order; the glob never mixes val tokens with val byte sidecars."""
    found = []
    for p in Path(directory).iterdir():
        m = SHARD_RE.match(p.name)
        if m and m.group(1) == kind:
            found.append((int(m.group(2)), p))
    return [p for _, p in sorted(found)]


def read_header(path: Path) -> int:
    """Checks magic, version and file size; returns the token count."""
    path = Path(path)
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ShardError(f"{path}: {size} bytes is shorter than the {HEADER_BYTES}-byte header (truncated?)")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if header[0] != MAGIC:
        raise ShardError(f"{path}: magic {header[0]} is not the challenge magic {MAGIC}")
    if header[1] != VERSION:
        raise ShardError(f"{path}: version {header[1]} is not the supported version {VERSION}")
    n = int(header[2])
    expected = HEADER_BYTES + 2 * n
    if n < 0 or size != expected:
        raise ShardError(
            f"{path}: header declares {n} tokens, so the file must be {expected} bytes, but it is {size} "
            "(truncated or padded)"
        )
    return n


def load_shard(path: Path) -> np.ndarray:
    """The tokens of a shard as uint16, after the header checks."""
    n = read_header(path)
    return np.fromfile(path, dtype="<u2", count=n, offset=HEADER_BYTES)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checksums(paths: list[Path]) -> dict[str, dict]:
    """file name -> {"tokens", "sha256"} of each shard, for a manifest: the header checks cannot tell a shard
    with one token changed from the one that was written, its sha256 can."""
    return {Path(p).name: {"tokens": read_header(p), "sha256": file_sha256(p)} for p in sorted(paths)}


def atomic_write(path: Path, write) -> None:
    """Calls write(file) on a temporary sibling and renames it over path only when it succeeded."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; datasets are shared between users and ranks
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_shard(path: Path, tokens: np.ndarray) -> None:
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() > 65535):
        raise ShardError(f"{path}: values must fit uint16, got range [{tokens.min()}, {tokens.max()}]")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (MAGIC, VERSION, tokens.size)

    def write(f):
        f.write(header.tobytes())
        f.write(tokens.astype("<u2").tobytes())

    atomic_write(path, write)


def iter_docs(paths: list[Path], bos_id: int = BOS_ID, load=load_shard) -> Iterator[np.ndarray]:
    """Whole documents (without their BOS) over a list of shards in order, joining a document
    that continues across a shard boundary."""
    current = None  # the pieces of the document still open
    for path in paths:
        tokens = load(path)
        starts = np.flatnonzero(tokens == bos_id)
        head = starts[0] if starts.size else tokens.size
        if head:
            if current is None:
                raise ShardError(f"{path}: the first shard of a split must start with BOS (id {bos_id})")
            current.append(tokens[:head])
        for a, b in zip(starts, [*starts[1:], tokens.size]):
            if current is not None:
                yield np.concatenate(current)
            current = [tokens[a + 1 : b]]
    if current is not None:
        yield np.concatenate(current)
