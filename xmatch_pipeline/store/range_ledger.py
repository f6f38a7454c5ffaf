"""The race guard: one live run per partition, and a ledger of the offset ranges runs work on.

Both are per consumer group: deployments with different groups may share one database
and each reads every partition on its own, so neither sees the other's locks or entries.

Two mechanisms, because each covers what the other cannot:

* :meth:`RangeLedger.hold_partition` takes a session-level advisory lock on a dedicated
  connection for the whole run. PostgreSQL drops it when that session ends, so a run whose
  process is SIGKILLed never leaves a stale lock behind, and two runs of one partition
  (two sensors, an operator's manual launch, ``execute_in_process``) cannot overlap.
* The ledger table records each range's status and attempts for the sensor's retry policy.
  Its exclusion constraint refuses a live range overlapping a *different* live range of
  the partition; a retry reuses the same range and so updates the same row.

A ``running`` entry whose partition is not held (:meth:`RangeLedger.is_partition_held`)
belongs to a run that died; retrying it is safe.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Connection, Engine, Row, and_, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError

from xmatch_pipeline.microbatch.offset_range import OffsetRange
from xmatch_pipeline.store.advisory_keys import advisory_key, split_key
from xmatch_pipeline.store.errors import (
    LedgerOwnershipError,
    OverlappingRangeError,
    PartitionBusyError,
    database_unavailable,
)
from xmatch_pipeline.store.tables import (
    LEDGER_LIVE_OVERLAP_CONSTRAINT,
    LEDGER_MODES,
    LedgerMode,
    LedgerStatus,
    offset_range_ledger_table,
)

ledger: Final = offset_range_ledger_table
MAX_ERROR_CHARACTERS: Final = 8000
_EXCLUSION_VIOLATION: Final = "23P01"
_APPLICATION_NAME_LIMIT: Final = 63


@dataclass(frozen=True)
class RangeCounts:
    """What a run did with its range, kept in the ledger for the sensor and operators."""

    alerts_in: int
    matched: int
    dead_lettered: int = 0


@dataclass(frozen=True)
class LedgerEntry:
    """One range's latest state. ``error`` is the last failure, kept until a success."""

    offset_range: OffsetRange
    mode: LedgerMode
    status: LedgerStatus
    attempts: int
    run_id: str | None
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None
    alerts_in: int | None
    matched: int | None
    dead_lettered: int | None


class PartitionHold:
    """Proof that this process holds a partition; valid while the ``with`` block runs."""

    def __init__(self, connection: Connection, topic: str, partition: int, key: int) -> None:
        self._connection = connection
        self.topic = topic
        self.partition = partition
        self._key = key

    def still_held(self) -> bool:
        """False if the lock's session was lost (server restart, network): stop, do not commit."""
        classid, objid = split_key(self._key)
        try:
            held = self._connection.execute(
                text(
                    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' "
                    "AND pid = pg_backend_pid() AND granted AND classid = :classid "
                    "AND objid = :objid AND objsubid = 1)"
                ),
                {"classid": classid, "objid": objid},
            ).scalar_one()
        except DBAPIError:
            return False
        return bool(held)


def partition_lock_key(consumer_group: str, topic: str, partition: int) -> int:
    return _partition_scoped_key("partition", consumer_group, topic, partition)


def _partition_scoped_key(purpose: str, consumer_group: str, topic: str, partition: int) -> int:
    # JSON keeps the name unambiguous when a group or topic contains a separator.
    return advisory_key(
        f"xmatch_pipeline.{purpose}:" + json.dumps([consumer_group, topic, partition])
    )


class RangeLedger:
    """The guard and ledger of one consumer group over one database (advisory locks are per
    database)."""

    def __init__(self, database: Engine, consumer_group: str) -> None:
        if not consumer_group:
            raise ValueError("the range ledger needs a consumer group id, got an empty one")
        self._database = database
        self.consumer_group = consumer_group

    @contextmanager
    def hold_partition(
        self, topic: str, partition: int, run_id: str | None = None
    ) -> Iterator[PartitionHold]:
        """Hold ``topic[partition]`` for this run, or raise :class:`PartitionBusyError`.

        The lock lives on its own autocommit connection (no transaction stays open for the
        run's lifetime). ``run_id`` is shown as the session's application name so that a
        refused run can say who holds the partition.
        """
        key = self._lock_key(topic, partition)
        try:
            connection = self._database.connect().execution_options(isolation_level="AUTOCOMMIT")
        except OperationalError as error:
            raise database_unavailable(
                self._database.url, f"holding partition {topic}[{partition}]", error
            ) from error
        try:
            if run_id is not None:
                connection.execute(
                    select(func.set_config("application_name", _application_name(run_id), False))
                )
            acquired = connection.execute(select(func.pg_try_advisory_lock(key))).scalar_one()
            if not acquired:
                raise PartitionBusyError(topic, partition, self._describe_holder(topic, partition))
            try:
                yield PartitionHold(connection, topic, partition, key)
            finally:
                _unlock(connection, key)
        finally:
            # Never hand this session back to the pool: its name (and, if the unlock
            # failed, its lock) must end with it.
            connection.invalidate()
            connection.close()

    def is_partition_held(self, topic: str, partition: int) -> bool:
        """Whether some live session holds the partition (a run is really running)."""
        return self._lock_holder(self._lock_key(topic, partition)) is not None

    def record_started(
        self, offset_range: OffsetRange, mode: LedgerMode, run_id: str
    ) -> LedgerEntry:
        """Mark the range running for ``run_id``; a retry of the same range adds an attempt.

        Raises :class:`OverlappingRangeError` when a live range overlaps a different live
        range of the partition.
        """
        _check_mode(mode)
        now = func.clock_timestamp()
        new_entry = insert(ledger).values(
            **self._key_values(offset_range, mode),
            status="running",
            attempts=1,
            run_id=run_id,
            started_at=now,
            updated_at=now,
        )
        statement = new_entry.on_conflict_do_update(
            index_elements=[
                ledger.c.consumer_group,
                ledger.c.topic,
                ledger.c.partition,
                ledger.c.start_offset,
                ledger.c.end_offset,
                ledger.c.mode,
            ],
            set_={
                "status": "running",
                "attempts": ledger.c.attempts + 1,
                "run_id": run_id,
                "started_at": now,
                "finished_at": None,
                "alerts_in": None,
                "matched": None,
                "dead_lettered": None,
                "updated_at": now,
            },
        ).returning(*ledger.c)
        try:
            with self._database.begin() as connection:
                # Two speculative inserts checked by one exclusion constraint can deadlock
                # each other; queueing the partition's starts makes the loser see the
                # overlap instead.
                connection.execute(
                    select(func.pg_advisory_xact_lock(self._start_queue_key(offset_range)))
                )
                row = connection.execute(statement).one()
        except IntegrityError as error:
            if _is_live_overlap(error):
                raise OverlappingRangeError(
                    str(offset_range), self._overlapping_live_ranges(offset_range)
                ) from error
            raise
        return _entry(row)

    def record_succeeded(
        self,
        offset_range: OffsetRange,
        mode: LedgerMode,
        run_id: str,
        counts: RangeCounts,
        *,
        connection: Connection | None = None,
    ) -> None:
        """Mark the range done. Pass the batch's ``connection`` to commit with its rows.

        Raises :class:`LedgerOwnershipError` if ``run_id`` does not own the entry (another
        run took it over): inside the batch's transaction this rolls the batch back, which
        is what fences a stale run out.
        """
        values = {
            "status": "succeeded",
            "error": None,
            "finished_at": func.clock_timestamp(),
            "updated_at": func.clock_timestamp(),
            "alerts_in": counts.alerts_in,
            "matched": counts.matched,
            "dead_lettered": counts.dead_lettered,
        }
        if connection is not None:
            updated = self._finish(connection, offset_range, mode, run_id, values)
        else:
            with self._database.begin() as own_connection:
                updated = self._finish(own_connection, offset_range, mode, run_id, values)
        if not updated:
            raise LedgerOwnershipError(self._ownership_message(offset_range, mode, run_id))

    def record_failed(
        self, offset_range: OffsetRange, mode: LedgerMode, run_id: str, error: str
    ) -> bool:
        """Mark the range failed with the reason; False if ``run_id`` does not own the entry.

        It returns rather than raises so that a failure handler never hides the run's own
        error behind a bookkeeping one.
        """
        values = {
            "status": "failed",
            "error": error[:MAX_ERROR_CHARACTERS],
            "finished_at": func.clock_timestamp(),
            "updated_at": func.clock_timestamp(),
        }
        with self._database.begin() as connection:
            return self._finish(connection, offset_range, mode, run_id, values)

    def entry(self, offset_range: OffsetRange, mode: LedgerMode = "live") -> LedgerEntry | None:
        """The ledger entry of exactly this range, if any."""
        _check_mode(mode)
        with self._database.connect() as connection:
            row = connection.execute(
                select(ledger).where(self._key_matches(offset_range, mode))
            ).first()
        return None if row is None else _entry(row)

    def entry_starting_at(
        self, topic: str, partition: int, start: int, mode: LedgerMode = "live"
    ) -> LedgerEntry | None:
        """The latest entry of a range starting at ``start`` (whatever its end)."""
        _check_mode(mode)
        with self._database.connect() as connection:
            row = connection.execute(
                select(ledger)
                .where(
                    *self._partition_matches(topic, partition, mode),
                    ledger.c.start_offset == start,
                )
                .order_by(ledger.c.updated_at.desc())
                .limit(1)
            ).first()
        return None if row is None else _entry(row)

    def failed_or_running(
        self, topic: str, partition: int, mode: LedgerMode = "live"
    ) -> list[LedgerEntry]:
        """Unfinished ranges of the partition, lowest offsets first: what the sensor must settle."""
        _check_mode(mode)
        with self._database.connect() as connection:
            rows = connection.execute(
                select(ledger)
                .where(
                    *self._partition_matches(topic, partition, mode),
                    ledger.c.status.in_(("failed", "running")),
                )
                .order_by(ledger.c.start_offset, ledger.c.end_offset)
            ).all()
        return [_entry(row) for row in rows]

    def _finish(
        self,
        connection: Connection,
        offset_range: OffsetRange,
        mode: LedgerMode,
        run_id: str,
        values: dict[str, Any],
    ) -> bool:
        _check_mode(mode)
        result = connection.execute(
            update(ledger)
            .where(self._key_matches(offset_range, mode), ledger.c.run_id == run_id)
            .values(**values)
        )
        return result.rowcount == 1

    def _ownership_message(self, offset_range: OffsetRange, mode: LedgerMode, run_id: str) -> str:
        current = self.entry(offset_range, mode)
        if current is None:
            return (
                f"{mode} range {offset_range} has no ledger entry: call record_started "
                f"before finishing it (run {run_id})"
            )
        return (
            f"{mode} range {offset_range} belongs to run {current.run_id} "
            f"(status {current.status}, attempt {current.attempts}), not to run {run_id}: "
            "this run was superseded and must not commit"
        )

    def _overlapping_live_ranges(self, offset_range: OffsetRange) -> list[str]:
        with self._database.connect() as connection:
            rows = connection.execute(
                select(ledger)
                .where(
                    *self._partition_matches(offset_range.topic, offset_range.partition, "live"),
                    func.int8range(ledger.c.start_offset, ledger.c.end_offset).op("&&")(
                        func.int8range(offset_range.start, offset_range.end)
                    ),
                )
                .order_by(ledger.c.start_offset)
            ).all()
        return [
            f"{entry.offset_range} ({entry.status}, run {entry.run_id})"
            for entry in map(_entry, rows)
        ]

    def _lock_key(self, topic: str, partition: int) -> int:
        return partition_lock_key(self.consumer_group, topic, partition)

    def _start_queue_key(self, offset_range: OffsetRange) -> int:
        return _partition_scoped_key(
            "ledger_start", self.consumer_group, offset_range.topic, offset_range.partition
        )

    def _partition_matches(self, topic: str, partition: int, mode: LedgerMode) -> list[Any]:
        """This group's entries of one partition and mode: every query filters by them."""
        return [
            ledger.c.consumer_group == self.consumer_group,
            ledger.c.topic == topic,
            ledger.c.partition == partition,
            ledger.c.mode == mode,
        ]

    def _key_values(self, offset_range: OffsetRange, mode: LedgerMode) -> dict[str, Any]:
        return {
            "consumer_group": self.consumer_group,
            "topic": offset_range.topic,
            "partition": offset_range.partition,
            "start_offset": offset_range.start,
            "end_offset": offset_range.end,
            "mode": mode,
        }

    def _key_matches(self, offset_range: OffsetRange, mode: LedgerMode) -> Any:
        return and_(
            *(
                ledger.c[name] == value
                for name, value in self._key_values(offset_range, mode).items()
            )
        )

    def _lock_holder(self, key: int) -> Row[Any] | None:
        classid, objid = split_key(key)
        with self._database.connect() as connection:
            return connection.execute(
                text(
                    "SELECT activity.pid, activity.application_name, activity.client_addr "
                    "FROM pg_locks AS lock JOIN pg_stat_activity AS activity "
                    "ON activity.pid = lock.pid "
                    "WHERE lock.locktype = 'advisory' AND lock.granted "
                    "AND lock.classid = :classid AND lock.objid = :objid "
                    "AND lock.objsubid = 1 AND lock.database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())"
                ),
                {"classid": classid, "objid": objid},
            ).first()

    def _describe_holder(self, topic: str, partition: int) -> str | None:
        """Who holds the partition: the session's run name and the ledger's running entry."""
        parts: list[str] = []
        try:
            holder = self._lock_holder(self._lock_key(topic, partition))
            if holder is not None:
                name = holder.application_name or "an unnamed session"
                parts.append(f"{name} (server pid {holder.pid}, client {holder.client_addr})")
            running = [
                entry
                for entry in self.failed_or_running(topic, partition)
                if entry.status == "running"
            ]
            if running:
                latest = max(running, key=lambda entry: entry.started_at or datetime.min)
                parts.append(
                    f"ledger: {latest.offset_range} running as run {latest.run_id} "
                    f"(attempt {latest.attempts})"
                )
        except DBAPIError:
            return None
        return "; ".join(parts) or None


def _unlock(connection: Connection, key: int) -> None:
    """Release at once so the next run need not wait for the server to reap this session."""
    # If the session is gone, so is its lock; the run's own error must stay the one raised.
    # A connection that already failed (e.g. in ``still_held``) raises PendingRollbackError,
    # not a DBAPIError; the caller invalidates the session, which releases the lock anyway.
    with suppress(SQLAlchemyError):
        connection.execute(select(func.pg_advisory_unlock(key)))


def _application_name(run_id: str) -> str:
    return f"xmatch run {run_id}"[:_APPLICATION_NAME_LIMIT]


def _check_mode(mode: str) -> None:
    if mode not in LEDGER_MODES:
        raise ValueError(f"ledger mode must be one of {LEDGER_MODES}, got {mode!r}")


def _is_live_overlap(error: IntegrityError) -> bool:
    original = error.orig
    diagnostics = getattr(original, "diag", None)
    return getattr(original, "pgcode", None) == _EXCLUSION_VIOLATION and (
        getattr(diagnostics, "constraint_name", None) == LEDGER_LIVE_OVERLAP_CONSTRAINT
    )


def _entry(row: Row[Any]) -> LedgerEntry:
    return LedgerEntry(
        offset_range=OffsetRange(row.topic, row.partition, row.start_offset, row.end_offset),
        mode=row.mode,
        status=row.status,
        attempts=row.attempts,
        run_id=row.run_id,
        error=row.error,
        started_at=row.started_at,
        finished_at=row.finished_at,
        alerts_in=row.alerts_in,
        matched=row.matched,
        dead_lettered=row.dead_lettered,
    )
