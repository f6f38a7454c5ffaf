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


class DatabaseUnavailableError(StoreError):
    """PostgreSQL could not be reached or refused the connection: a system fault, retried."""


def database_unavailable(engine_url: object, what: str, error: BaseException) -> StoreError:
    """The pipeline's own error for a failed connection: what failed, where, and what to do.

    ``engine_url`` is a SQLAlchemy URL; only its host, port, database and user are shown
    (never the password), and only the driver's message, not SQLAlchemy's wrapper text.
    """
    host = getattr(engine_url, "host", None) or "?"
    port = getattr(engine_url, "port", None) or 5432
    database = getattr(engine_url, "database", None) or "?"
    user = getattr(engine_url, "username", None) or "?"
    cause = getattr(error, "orig", None) or error
    reason = " ".join(str(cause).split())[:300]
    return DatabaseUnavailableError(
        f"{what}: cannot connect to PostgreSQL {database} at {host}:{port} as {user} "
        f"({type(cause).__name__}: {reason}); check that the server is running and reachable "
        "and that DB_HOST, DB_PORT, DB_USER, DB_PASSWORD and DB_NAME are right. Nothing was "
        "read or written; the run can simply be launched again"
    )
