"""Turn consumer-group lag into the next run per partition, or a stated reason to wait.

One range per partition at a time, always starting at the group's committed offset: a
partition's ranges commit in order, so a failed range is retried (the same ``[start, end)``,
so its run key and its ledger row stay the same) until it succeeds or runs out of attempts,
and then the partition waits for an operator; it never commits past a hole.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from xmatch_pipeline.offset_range import OffsetRange
from xmatch_pipeline.read.kafka_offsets import PartitionLag
from xmatch_pipeline.store.range_ledger import LedgerEntry

PartitionKey = tuple[str, int]
LedgerLookup = Callable[[str, int, int], LedgerEntry | None]
HeldCheck = Callable[[str, int], bool]


@dataclass(frozen=True)
class PlannedRun:
    offset_range: OffsetRange
    attempt: int
    reason: str

    @property
    def run_key(self) -> str:
        """Unique per range and attempt: Dagster never launches one key twice."""
        return f"{self.offset_range}#attempt{self.attempt}"


@dataclass(frozen=True)
class PartitionSkip:
    topic: str
    partition: int
    reason: str
    #: True when the partition cannot go on without an operator (not just "nothing to do").
    needs_operator: bool = False


@dataclass(frozen=True)
class RunPlan:
    runs: tuple[PlannedRun, ...]
    skips: tuple[PartitionSkip, ...]


def partition_key(topic: str, partition: int) -> str:
    """The value of the run tag that Dagster's queue limits to one run at a time."""
    return f"{topic}:{partition}"


def _retry(entry: LedgerEntry, max_attempts: int, why: str) -> PlannedRun | PartitionSkip:
    offset_range = entry.offset_range
    if entry.attempts >= max_attempts:
        return PartitionSkip(
            offset_range.topic,
            offset_range.partition,
            f"{offset_range} {why} after {entry.attempts} attempts (last error: "
            f"{entry.error or 'none recorded'}); the partition waits: fix the cause, then "
            "launch xmatch_microbatch for this range from the launchpad",
            needs_operator=True,
        )
    return PlannedRun(offset_range, entry.attempts + 1, f"retry: {why}")


def plan_partition(
    lag: PartitionLag,
    entry: LedgerEntry | None,
    *,
    run_in_flight: bool,
    partition_held: bool,
    max_messages_per_run: int,
    max_attempts: int,
) -> PlannedRun | PartitionSkip | None:
    """The next run of one partition, a reason to wait, or None when there is no lag."""
    topic, partition = lag.topic, lag.partition
    if run_in_flight:
        return PartitionSkip(topic, partition, "a run for this partition is queued or running")
    if lag.offsets_deleted_unprocessed:
        return PartitionSkip(
            topic,
            partition,
            f"retention deleted offsets [{lag.committed}, {lag.low}) before they were "
            "processed; the partition waits: reset the group's offset to accept the loss",
            needs_operator=True,
        )
    if entry is not None and entry.offset_range.start == lag.committed:
        if entry.status == "running":
            if partition_held:
                return PartitionSkip(
                    topic, partition, f"{entry.offset_range} is running (run {entry.run_id})"
                )
            return _retry(entry, max_attempts, "was left running by a run that died")
        if entry.status == "failed":
            return _retry(entry, max_attempts, "failed")
        # Succeeded in the database but the offsets were not committed: the Kafka commit
        # was lost (a crash between the two commits). Rerunning is safe and converges.
        return _retry(entry, max_attempts, "stored but its offsets were not committed")
    if lag.lag == 0:
        return None
    end = min(lag.committed + max_messages_per_run, lag.high)
    return PlannedRun(
        OffsetRange(topic, partition, lag.committed, end), 1, f"lag {lag.lag} messages"
    )


def plan_runs(
    lags: Sequence[PartitionLag],
    ledger_entry: LedgerLookup,
    partition_held: HeldCheck,
    in_flight: Collection[PartitionKey],
    *,
    max_messages_per_run: int,
    max_attempts: int,
) -> RunPlan:
    """Plan every partition; reads the ledger only where the group has something to do."""
    runs: list[PlannedRun] = []
    skips: list[PartitionSkip] = []
    for lag in lags:
        key = (lag.topic, lag.partition)
        entry = ledger_entry(lag.topic, lag.partition, lag.committed)
        if entry is None and lag.lag == 0:
            continue
        decision = plan_partition(
            lag,
            entry,
            run_in_flight=key in in_flight,
            partition_held=partition_held(*key) if entry is not None else False,
            max_messages_per_run=max_messages_per_run,
            max_attempts=max_attempts,
        )
        if isinstance(decision, PlannedRun):
            runs.append(decision)
        elif isinstance(decision, PartitionSkip):
            skips.append(decision)
    return RunPlan(tuple(runs), tuple(skips))
