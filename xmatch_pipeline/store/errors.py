"""Errors of the PostgreSQL layer, typed so that callers (sensor, runs, CLI) can react."""

from __future__ import annotations


class StoreError(RuntimeError):
    """The database could not do what the pipeline needs; the message says what to do."""


class SchemaError(StoreError):
    """The database cannot hold the pipeline's schema (missing extension, wrong types)."""


class PartitionBusyError(StoreError):
    """Another live run holds the partition; starting a second one would duplicate work."""

    def __init__(self, topic: str, partition: int, holder: str | None) -> None:
        self.topic = topic
        self.partition = partition
        self.holder = holder
        held_by = f" by {holder}" if holder else ""
        super().__init__(
            f"partition {topic}[{partition}] is held{held_by}: another live run is working "
            "on it; wait for it to finish (its lock is released when its process ends)"
        )


class OverlappingRangeError(StoreError):
    """A live range would overlap a different live range of the same partition."""

    def __init__(self, requested: str, colliding: list[str]) -> None:
        self.requested = requested
        self.colliding = colliding
        listed = ", ".join(colliding) if colliding else "a range committed meanwhile"
        super().__init__(
            f"live range {requested} overlaps live ledger range(s) {listed}: a retry must "
            "reuse exactly the same range, and new ranges must start where the last one ended"
        )


class LedgerOwnershipError(StoreError):
    """A run tried to finish a ledger entry it does not own (it was taken over or never started)."""
