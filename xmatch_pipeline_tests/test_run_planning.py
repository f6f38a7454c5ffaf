"""The planning rules on plain values: the next range per partition, retries, and the
successor queued behind a run in flight (pipelined ranges)."""

from __future__ import annotations

from xmatch_pipeline.microbatch.offset_range import OffsetRange
from xmatch_pipeline.microbatch.planning import (
    PartitionSkip,
    PlannedRun,
    plan_partition,
    plan_runs,
    planning_offset,
)
from xmatch_pipeline.read.kafka_offsets import PartitionLag
from xmatch_pipeline.store.range_ledger import LedgerEntry

TOPIC = "ztf_20200101_programid1"
LIMITS = {"max_messages_per_run": 10, "max_attempts": 3}


def _lag(committed: int, high: int, low: int = 0) -> PartitionLag:
    return PartitionLag(TOPIC, 0, committed, low, high, group_has_offset=True)


def _range(start: int, end: int) -> OffsetRange:
    return OffsetRange(TOPIC, 0, start, end)


def _entry(start: int, end: int, status: str, attempts: int = 1) -> LedgerEntry:
    return LedgerEntry(
        offset_range=_range(start, end),
        mode="live",
        status=status,  # type: ignore[arg-type]
        attempts=attempts,
        run_id="run-1",
        error="CdsUnavailableError: down" if status == "failed" else None,
        started_at=None,
        finished_at=None,
        alerts_in=None,
        matched=None,
        dead_lettered=None,
    )


def _plan(
    lag: PartitionLag,
    entry: LedgerEntry | None = None,
    in_flight: tuple[OffsetRange | None, ...] = (),
    *,
    held: bool = False,
) -> PlannedRun | PartitionSkip | None:
    return plan_partition(lag, entry, in_flight=in_flight, partition_held=held, **LIMITS)


def test_an_idle_partition_starts_at_the_group_offset_up_to_the_run_size() -> None:
    assert _plan(_lag(0, 25)) == PlannedRun(_range(0, 10), 1, "lag 25 messages")
    assert _plan(_lag(20, 25)) == PlannedRun(_range(20, 25), 1, "lag 5 messages")
    assert _plan(_lag(25, 25)) is None


def test_the_successor_of_the_run_in_flight_starts_at_its_end() -> None:
    planned = _plan(_lag(0, 25), in_flight=(_range(0, 10),))
    assert isinstance(planned, PlannedRun)
    assert (planned.offset_range, planned.attempt) == (_range(10, 20), 1)
    assert "queued behind" in planned.reason
    # The run in flight has committed and is finishing: the same successor.
    planned = _plan(_lag(10, 25), in_flight=(_range(0, 10),))
    assert isinstance(planned, PlannedRun)
    assert planned.offset_range == _range(10, 20)


def test_no_successor_while_nothing_lies_past_the_run_in_flight() -> None:
    skip = _plan(_lag(0, 10), in_flight=(_range(0, 10),))
    assert isinstance(skip, PartitionSkip)
    assert "no lag after it" in skip.reason
    assert not skip.needs_operator


def test_at_most_one_successor_is_queued() -> None:
    skip = _plan(_lag(0, 40), in_flight=(_range(0, 10), _range(10, 20)))
    assert isinstance(skip, PartitionSkip)
    assert "a run and its successor are queued or running" in skip.reason


def test_a_successor_whose_predecessor_failed_is_waited_out_then_the_failed_range_retried() -> None:
    # The predecessor [0,10) failed; its queued successor [10,20) is still in flight and
    # will fail its offset check: nothing is planned behind it.
    skip = _plan(_lag(0, 40), _entry(10, 20, "failed"), in_flight=(_range(10, 20),))
    assert isinstance(skip, PartitionSkip)
    assert "the group is at 0: waiting for it to end" in skip.reason
    # Once it has ended, the failed range comes first, the same range with attempt + 1.
    retry = _plan(_lag(0, 40), _entry(0, 10, "failed", attempts=1))
    assert retry == PlannedRun(_range(0, 10), 2, "retry: failed")
    # And its successor is queued behind the retry, never past it.
    successor = _plan(_lag(0, 40), None, in_flight=(_range(0, 10),))
    assert isinstance(successor, PlannedRun)
    assert successor.offset_range == _range(10, 20)


def test_a_successor_range_that_failed_before_is_retried_as_the_same_range() -> None:
    planned = _plan(_lag(0, 40), _entry(10, 17, "failed", attempts=2), in_flight=(_range(0, 10),))
    assert planned == PlannedRun(_range(10, 17), 3, "retry: failed")
    exhausted = _plan(_lag(0, 40), _entry(10, 17, "failed", attempts=3), in_flight=(_range(0, 10),))
    assert isinstance(exhausted, PartitionSkip)
    assert exhausted.needs_operator


def test_a_run_of_unknown_range_in_flight_blocks_the_partition() -> None:
    skip = _plan(_lag(0, 40), in_flight=(None,))
    assert isinstance(skip, PartitionSkip)
    assert "unknown range" in skip.reason


def test_planning_offset() -> None:
    assert planning_offset(_lag(3, 40), ()) == 3
    assert planning_offset(_lag(3, 40), (_range(3, 9),)) == 9
    assert planning_offset(_lag(3, 40), (None,)) == 3
    assert planning_offset(_lag(3, 40), (_range(3, 9), _range(9, 12))) == 3


def test_plan_runs_reads_the_ledger_at_the_successors_start() -> None:
    lookups: list[tuple[str, int, int]] = []

    def ledger(topic: str, partition: int, start: int) -> LedgerEntry | None:
        lookups.append((topic, partition, start))
        return None

    other = PartitionLag("other", 0, 5, 0, 5, group_has_offset=True)
    plan = plan_runs(
        [_lag(0, 25), other],
        ledger,
        lambda topic, partition: False,
        {(TOPIC, 0): [_range(0, 10)]},
        **LIMITS,
    )
    assert [run.offset_range for run in plan.runs] == [_range(10, 20)]
    assert plan.skips == ()
    assert lookups == [(TOPIC, 0, 10), ("other", 0, 5)]
