"""Deterministic pseudo-random bodies of any size, cheap to produce and to check.

MiB number i of a body is a fixed random 1 MiB block rotated by (i * 7919) mod 1 MiB, so no two MiB of a
body are equal and a lost, repeated or reordered piece changes the sha256. The block comes from a seed,
so the sender and the checker need only agree on (seed, size).
"""

from __future__ import annotations

import functools
import hashlib
import random

MIB = 1024 * 1024
DEFAULT_SEED = 20240611


@functools.lru_cache(maxsize=4)
def block(seed: int = DEFAULT_SEED) -> bytes:
    return random.Random(seed).randbytes(MIB)


def piece(offset: int, size: int, seed: int = DEFAULT_SEED) -> bytes:
    """Bytes [offset, offset+size) of the pattern."""
    out = bytearray()
    while size > 0:
        mib, pos = divmod(offset, MIB)
        b = block(seed)
        rot = (mib * 7919) % MIB
        start = (rot + pos) % MIB
        take = min(size, MIB - pos)
        first = min(take, MIB - start)
        out += b[start:start + first]
        if take > first:
            out += b[:take - first]
        offset += take
        size -= take
    return bytes(out)


def chunks(total: int, chunk: int = MIB, seed: int = DEFAULT_SEED):
    """Yields the pattern of `total` bytes in pieces of at most `chunk` bytes (never crossing a MiB)."""
    sent = 0
    while sent < total:
        size = min(chunk, total - sent, MIB - sent % MIB)
        yield piece(sent, size, seed)
        sent += size


def data(total: int, seed: int = DEFAULT_SEED) -> bytes:
    return b"".join(chunks(total, MIB, seed))


class Slice:
    """Bytes [offset, end) of the pattern, made only when bytes() is taken of it. Slicing gives another
    Slice, so a sender can queue a large body and pay for each piece as its peer's window lets it go:
    building 64 MiB up front takes seconds on a loaded machine, which a stalled-stream test would count
    against the proxy's timeout."""

    __slots__ = ("offset", "end", "seed")

    def __init__(self, end: int, offset: int = 0, seed: int = DEFAULT_SEED):
        self.offset, self.end, self.seed = offset, end, seed

    def __len__(self) -> int:
        return self.end - self.offset

    def __getitem__(self, s: slice) -> "Slice":
        start, stop, step = s.indices(len(self))
        assert step == 1, "a pattern slice is contiguous"
        return Slice(self.offset + max(start, stop), self.offset + start, self.seed)

    def __bytes__(self) -> bytes:
        return piece(self.offset, len(self), self.seed)


@functools.lru_cache(maxsize=32)
def sha256(total: int, seed: int = DEFAULT_SEED) -> str:
    h = hashlib.sha256()
    for c in chunks(total, MIB, seed):
        h.update(c)
    return h.hexdigest()
