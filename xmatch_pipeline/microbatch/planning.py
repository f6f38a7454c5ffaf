"""Turn consumer-group lag into the next run per partition, or a stated reason to wait.

A partition's ranges commit in order, each starting where the group's committed offset
is, so a failed range is retried (the same ``[start, end)``, so its run key and its ledger
row stay the same) until it succeeds or runs out of attempts, and then the partition
waits for an operator; it never commits past a hole.

Pipelined ranges: while a partition's run is queued or running, its successor (from the
in-flight range's end) is planned and queued at once, so the queue's one-run-per-partition
limit starts it the moment the current run ends instead of a sensor tick later. One
successor at most: it covers everything up to the high watermark (up to the run size), so
a second would only hold alerts the next tick catches anyway. The successor's own offset
check keeps this safe: if its predecessor fails, the group is still at the predecessor's
start, so the successor fails before doing anything; with nothing in flight again the
next tick retries the failed range first, as without pipelining. While more than one run,
or a run that is not the group's current one (a successor whose predecessor failed), is in
flight, the partition waits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from xmatch_pipeline.kafka.partition_id import PartitionId
from xmatch_pipeline.microbatch.offset_range import OffsetRange
from xmatch_pipeline.read.kafka_offsets import PartitionLag
from xmatch_pipeline.store.range_ledger import LedgerEntry

LedgerLookup = Callable[[str, int, int], LedgerEntry | None]
HeldCheck = Callable[[str, int], bool]
#: The ranges of a partition's queued or running runs; None where the range is unknown
#: (a backfill, a run launched without the range tags).
InFlight = Sequence[OffsetRange | None]


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


def planning_offset(lag: PartitionLag, in_flight: InFlight) -> int:
    """Where the partition's next range starts: the group's offset, or, behind the one run
    in flight, that run's end."""
    if len(in_flight) == 1 and in_flight[0] is not None:
        return in_flight[0].end
    return lag.committed


def _successor_wait(lag: PartitionLag, in_flight: InFlight) -> PartitionSkip | None:
    """Why no successor can be queued behind the runs in flight, or None if one can."""
    topic, partition = lag.topic, lag.partition
    if len(in_flight) > 1:
        return PartitionSkip(topic, partition, "a run and its successor are queued or running")
    (current,) = in_flight
    if current is None:
        return PartitionSkip(
            topic, partition, "a run over an unknown range (a backfill?) is queued or running"
        )
    if lag.committed not in (current.start, current.end):
        # Its predecessor failed (the group did not reach its start): it will fail its
        # offset check, and the failed range must be retried first.
        return PartitionSkip(
            topic,
            partition,
            f"{current} is queued or running but the group is at {lag.committed}: waiting "
            "for it to end",
        )
    return None


def plan_partition(
    lag: PartitionLag,
    entry: LedgerEntry | None,
    *,
    in_flight: InFlight = (),
    partition_held: bool,
    max_messages_per_run: int,
    max_attempts: int,
) -> PlannedRun | PartitionSkip | None:
    """The next run of one partition, a reason to wait, or None when there is no lag.

    ``entry`` is the ledger entry starting at :func:`planning_offset`.
    """
    topic, partition = lag.topic, lag.partition
    if in_flight:
        wait = _successor_wait(lag, in_flight)
        if wait is not None:
            return wait
        # Plan as the partition will be once the run in flight commits.
        lag = replace(lag, committed=planning_offset(lag, in_flight))
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
        if in_flight:
            return PartitionSkip(
                topic, partition, f"{in_flight[0]} is queued or running; no lag after it"
            )
        return None
    end = min(lag.committed + max_messages_per_run, lag.high)
    reason = f"lag {lag.lag} messages"
    if in_flight:
        reason += f", queued behind {in_flight[0]}"
    return PlannedRun(OffsetRange(topic, partition, lag.committed, end), 1, reason)


def plan_runs(
    lags: Sequence[PartitionLag],
    ledger_entry: LedgerLookup,
    partition_held: HeldCheck,
    in_flight: Mapping[PartitionId, InFlight],
    *,
    max_messages_per_run: int,
    max_attempts: int,
) -> RunPlan:
    """Plan every partition; reads the ledger only where the group has something to do."""
    runs: list[PlannedRun] = []
    skips: list[PartitionSkip] = []
    for lag in lags:
        key = (lag.topic, lag.partition)
        running = in_flight.get(key, ())
        start = planning_offset(lag, running)
        entry = ledger_entry(lag.topic, lag.partition, start)
        if entry is None and lag.high <= start and not running:
            continue
        decision = plan_partition(
            lag,
            entry,
            in_flight=running,
            partition_held=partition_held(*key) if entry is not None else False,
            max_messages_per_run=max_messages_per_run,
            max_attempts=max_attempts,
        )
        if isinstance(decision, PlannedRun):
            runs.append(decision)
        elif isinstance(decision, PartitionSkip):
            skips.append(decision)
    return RunPlan(tuple(runs), tuple(skips))
