"""At most N requests at once to one remote service, across every process of the fleet.

CDS bans an address that runs too many jobs in parallel, and each run's own limit does not
bound the total once several runs (on several workers, on several hosts) crossmatch at
once. Every process of a deployment already shares the pipeline database, so the slots
are PostgreSQL session advisory locks there: a request takes one of ``limit`` slot locks
(trying each, then waiting with capped exponential backoff and jitter, up to a bound) and
releases it when its answer has been read. A session lock dies with its session, so a
process that is killed mid-request frees its slot as soon as PostgreSQL notices the
connection is gone (at once for a killed process, whose socket the kernel closes; within
the keepalive window for a vanished machine).

Why not a Dagster concurrency pool on the op: a pool is taken per op, and the crossmatch
runs inside the one op that also reads Kafka, writes the database and commits the
transaction (the two commits must straddle every stage), so a pool of 1 would serialize
whole runs, Kafka and database work included, where only the HTTP exchanges need it; it
would also not cover the CLI or any engine call made outside a Dagster run.

Failure modes: no slot free within the bound raises :class:`SlotWaitTimeoutError` naming
the holders; the database unreachable raises :class:`StoreError`. Either fails the caller's
run, which the retry policy runs again. If the slot's connection drops during a request,
the lock is gone while the request goes on: for that while one more request than the
limit may run.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Final

from sqlalchemy import Connection, Engine, func, select, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from xmatch_pipeline.store.advisory_keys import advisory_key, split_key
from xmatch_pipeline.store.errors import StoreError

FIRST_BACKOFF_SECONDS: Final = 0.05
MAX_BACKOFF_SECONDS: Final = 1.0


class SlotWaitTimeoutError(StoreError):
    """Every slot stayed taken for the whole wait."""


def slot_keys(service: str, limit: int) -> list[int]:
    """The advisory-lock key of each of the service's slots (the same in every process)."""
    return [
        advisory_key("xmatch_pipeline.request_slot:" + json.dumps([service, slot]))
        for slot in range(limit)
    ]


class RequestSlots:
    """``limit`` fleet-wide slots for requests to ``service`` (e.g. CDS's host name)."""

    def __init__(
        self,
        database: Engine,
        service: str,
        limit: int,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        jitter: random.Random | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError(f"the slot limit must be at least 1, got {limit}")
        self.service = service
        self.limit = limit
        self._database = database
        self._keys = slot_keys(service, limit)
        self._sleep = sleep
        self._clock = clock
        self._jitter = jitter or random.Random()

    @contextmanager
    def slot(self, max_wait_seconds: float) -> Iterator[int]:
        """Hold one slot for the ``with`` block; yields its number (0 … limit - 1)."""
        try:
            connection = self._database.connect().execution_options(isolation_level="AUTOCOMMIT")
        except DBAPIError as error:
            raise self._database_error(error) from error
        try:
            number = self._acquire(connection, max_wait_seconds)
        except SlotWaitTimeoutError:
            connection.close()  # it holds no slot: back to the pool
            raise
        except BaseException:
            # An error between a lock taken and its answer read would leave a slot held.
            connection.invalidate()
            connection.close()
            raise
        may_hold_a_slot = True
        try:
            yield number
        finally:
            with suppress(SQLAlchemyError):
                may_hold_a_slot = not connection.execute(
                    select(func.pg_advisory_unlock(self._keys[number]))
                ).scalar_one()
            if may_hold_a_slot:
                # Never pool a session that may still hold a slot: ending it frees the lock.
                connection.invalidate()
            connection.close()

    def holders(self) -> list[str]:
        """Who holds the slots now: server pid, application name and client address."""
        pairs = [split_key(key) for key in self._keys]
        clauses = " OR ".join(
            f"(lock.classid = {classid} AND lock.objid = {objid})" for classid, objid in pairs
        )
        with self._database.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT activity.pid, activity.application_name, activity.client_addr "
                    "FROM pg_locks AS lock JOIN pg_stat_activity AS activity "
                    "ON activity.pid = lock.pid WHERE lock.locktype = 'advisory' "
                    f"AND lock.granted AND lock.objsubid = 1 AND ({clauses}) "
                    "AND lock.database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())"
                )
            ).all()
        return [
            f"{row.application_name or 'an unnamed session'} (server pid {row.pid}, client "
            f"{row.client_addr})"
            for row in rows
        ]

    def _acquire(self, connection: Connection, max_wait_seconds: float) -> int:
        deadline = self._clock() + max_wait_seconds
        backoff = FIRST_BACKOFF_SECONDS
        while True:
            try:
                for number, key in enumerate(self._keys):
                    if connection.execute(select(func.pg_try_advisory_lock(key))).scalar_one():
                        return number
            except DBAPIError as error:
                raise self._database_error(error) from error
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise self._timeout(max_wait_seconds)
            self._sleep(min(remaining, backoff / 2 + self._jitter.uniform(0, backoff / 2)))
            backoff = min(MAX_BACKOFF_SECONDS, backoff * 2)

    def _timeout(self, waited: float) -> SlotWaitTimeoutError:
        try:
            holders = "; ".join(self.holders()) or "none visible now"
        except DBAPIError:
            holders = "unknown (the database did not answer)"
        return SlotWaitTimeoutError(
            f"all {self.limit} request slot(s) for {self.service} stayed taken for "
            f"{waited:g} s (holders: {holders}); the fleet is sending as many requests as "
            f"it may at once: the run will be retried. If this persists, look for a stuck "
            "request, or run fewer partitions at once"
        )

    def _database_error(self, error: DBAPIError) -> StoreError:
        reason = " ".join(str(error.orig).split())[:300]
        return StoreError(
            f"could not take a request slot for {self.service} in PostgreSQL "
            f"({type(error.orig).__name__}: {reason}); check the database, then run again"
        )
