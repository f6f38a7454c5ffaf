"""Names to PostgreSQL advisory-lock keys, so every process derives the same key."""

from __future__ import annotations

import hashlib


def advisory_key(name: str) -> int:
    """A signed 64-bit key for ``pg_advisory_lock(bigint)``, stable across processes.

    Python's ``hash()`` is salted per process, so a digest is used instead; 64 bits make
    an accidental collision between two of our names negligible.
    """
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def split_key(key: int) -> tuple[int, int]:
    """The ``(classid, objid)`` pair under which ``pg_locks`` shows a bigint advisory key."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF
