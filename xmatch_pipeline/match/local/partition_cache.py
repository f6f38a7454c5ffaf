"""A bounded, thread-safe LRU of loaded catalog partitions.

Alerts arrive in micro-batches that keep hitting the same patches of sky; keeping the
partitions (and their KD-trees) of recent batches avoids reading and indexing them again,
while the byte bound keeps a catalog of ALLWISE's size from filling memory.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import pyarrow as pa
from scipy.spatial import cKDTree

from xmatch_pipeline.match.sky_geometry import FloatArray

DEFAULT_CACHE_BYTES = 1 << 30
#: Rough cost of a KD-tree node set and index per point, beside the 24-byte vector.
_TREE_BYTES_PER_ROW = 40


@dataclass(frozen=True)
class LoadedPartition:
    """One partition's rows (the columns read so far), unit vectors and KD-tree."""

    pixel: int
    table: pa.Table
    vectors: FloatArray
    tree: cKDTree

    @property
    def nbytes(self) -> int:
        return (
            int(self.table.nbytes)
            + int(self.vectors.nbytes)
            + _TREE_BYTES_PER_ROW * len(self.vectors)
        )


class PartitionCache:
    """Least-recently-used partitions, evicted once their total size exceeds the bound."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[int, LoadedPartition] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, pixel: int) -> LoadedPartition | None:
        with self._lock:
            entry = self._entries.get(pixel)
            if entry is not None:
                self._entries.move_to_end(pixel)
            return entry

    def put(self, entry: LoadedPartition) -> None:
        with self._lock:
            previous = self._entries.pop(entry.pixel, None)
            if previous is not None:
                self._bytes -= previous.nbytes
            self._entries[entry.pixel] = entry
            self._bytes += entry.nbytes
            while self._bytes > self.max_bytes and len(self._entries) > 1:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes
            if self._bytes > self.max_bytes:  # a single partition larger than the bound
                self._entries.clear()
                self._bytes = 0

    @property
    def cached_bytes(self) -> int:
        return self._bytes

    @property
    def keys(self) -> tuple[int, ...]:
        """The cached entries' keys, least recently used first."""
        with self._lock:
            return tuple(self._entries)
