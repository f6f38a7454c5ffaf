"""The race guard and the range ledger on the real PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, text

from xmatch_pipeline.microbatch.offset_range import OffsetRange
from xmatch_pipeline.store.errors import (
    LedgerOwnershipError,
    OverlappingRangeError,
    PartitionBusyError,
)
from xmatch_pipeline.store.match_writer import MatchBatchRows, StepRecord, write_match_batch
from xmatch_pipeline.store.range_ledger import RangeCounts, RangeLedger

HOLDER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from sqlalchemy import create_engine
    from xmatch_pipeline.store.range_ledger import RangeLedger

    url, group, topic = sys.argv[1], sys.argv[2], sys.argv[3]
    with RangeLedger(create_engine(url), group).hold_partition(topic, 0, run_id="doomed-run"):
        print("held", flush=True)
        time.sleep(120)
    """
)


GROUP = "xmatch"


@pytest.fixture
def ledger(schema_database: Engine) -> RangeLedger:
    return RangeLedger(schema_database, GROUP)


@pytest.fixture
def topic() -> str:
    return f"ztf_{uuid.uuid4().hex[:10]}_programid1"


def test_two_racing_runs_one_wins_and_the_other_is_told_who_holds_it(
    ledger: RangeLedger, topic: str
):
    barrier = threading.Barrier(2)
    loser_done = threading.Event()
    outcomes: dict[str, object] = {}

    def run(run_id: str) -> None:
        barrier.wait(timeout=10)
        try:
            with ledger.hold_partition(topic, 3, run_id=run_id):
                outcomes[run_id] = "held"
                loser_done.wait(timeout=10)  # keep holding until the other one has tried
        except PartitionBusyError as error:
            outcomes[run_id] = error
            loser_done.set()

    threads = [threading.Thread(target=run, args=(f"run-{name}",)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    winners = [run_id for run_id, outcome in outcomes.items() if outcome == "held"]
    losers = [outcome for outcome in outcomes.values() if isinstance(outcome, PartitionBusyError)]
    assert len(winners) == 1
    assert len(losers) == 1
    busy = losers[0]
    assert (busy.topic, busy.partition) == (topic, 3)
    assert f"{topic}[3]" in str(busy)
    assert f"xmatch run {winners[0]}" in str(busy)
    assert not ledger.is_partition_held(topic, 3), "the winner released on exit"
    with ledger.hold_partition(topic, 3) as hold:
        assert hold.still_held()


def test_other_partitions_are_not_blocked(ledger: RangeLedger, topic: str):
    with ledger.hold_partition(topic, 0), ledger.hold_partition(topic, 1):
        assert ledger.is_partition_held(topic, 0)
        assert ledger.is_partition_held(topic, 1)
        assert not ledger.is_partition_held(topic, 2)


def test_busy_error_names_the_running_ledger_entry(ledger: RangeLedger, topic: str):
    offset_range = OffsetRange(topic, 0, 0, 100)
    with ledger.hold_partition(topic, 0, run_id="first-run"):
        ledger.record_started(offset_range, "live", "first-run")
        with pytest.raises(PartitionBusyError) as raised, ledger.hold_partition(topic, 0):
            pass
    message = str(raised.value)
    assert "xmatch run first-run" in message
    assert f"ledger: {offset_range} running as run first-run (attempt 1)" in message


def test_a_sigkilled_holder_leaves_no_stale_lock(
    fresh_database_url: str, ledger: RangeLedger, topic: str
):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER_SCRIPT, fresh_database_url, GROUP, topic],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()
        assert line.strip() == "held", holder.stderr.read() if holder.stderr else line
        with pytest.raises(PartitionBusyError, match="doomed-run"), ledger.hold_partition(topic, 0):
            pass
    finally:
        holder.kill()  # SIGKILL: no cleanup code runs in the holder
        holder.wait(timeout=10)
    assert holder.returncode == -9

    # The server ends the dead client's session as soon as it sees the closed socket.
    deadline = time.monotonic() + 10
    while ledger.is_partition_held(topic, 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    with ledger.hold_partition(topic, 0, run_id="next-run") as hold:
        assert hold.still_held()


def test_a_retry_of_the_same_range_counts_attempts(ledger: RangeLedger, topic: str):
    offset_range = OffsetRange(topic, 0, 100, 200)
    first = ledger.record_started(offset_range, "live", "run-1")
    assert (first.status, first.attempts, first.run_id) == ("running", 1, "run-1")
    assert ledger.record_failed(offset_range, "live", "run-1", "CDS answered 504 three times")

    failed = ledger.entry(offset_range)
    assert failed is not None
    assert (failed.status, failed.attempts, failed.error) == (
        "failed",
        1,
        "CDS answered 504 three times",
    )
    assert ledger.failed_or_running(topic, 0) == [failed]

    retry = ledger.record_started(offset_range, "live", "run-2")
    assert (retry.status, retry.attempts, retry.run_id) == ("running", 2, "run-2")
    assert retry.error == "CDS answered 504 three times", "the last failure stays visible"

    ledger.record_succeeded(offset_range, "live", "run-2", RangeCounts(alerts_in=97, matched=40))
    done = ledger.entry_starting_at(topic, 0, 100)
    assert done is not None
    assert (done.status, done.attempts, done.error) == ("succeeded", 2, None)
    assert (done.alerts_in, done.matched, done.dead_lettered) == (97, 40, 0)
    assert done.finished_at is not None
    assert ledger.failed_or_running(topic, 0) == []


def test_overlapping_live_ranges_are_refused_and_named(ledger: RangeLedger, topic: str):
    ledger.record_started(OffsetRange(topic, 0, 0, 100), "live", "run-1")
    ledger.record_started(OffsetRange(topic, 0, 100, 200), "live", "run-2")  # adjacent: fine
    ledger.record_started(OffsetRange(topic, 1, 50, 150), "live", "run-3")  # other partition

    with pytest.raises(OverlappingRangeError) as raised:
        ledger.record_started(OffsetRange(topic, 0, 50, 150), "live", "run-4")

    message = str(raised.value)
    assert f"live range {topic}[0]@[50,150) overlaps" in message
    assert f"{topic}[0]@[0,100) (running, run run-1)" in message
    assert f"{topic}[0]@[100,200) (running, run run-2)" in message
    assert ledger.entry(OffsetRange(topic, 0, 50, 150)) is None


def test_backfill_ranges_may_overlap_live_and_each_other(ledger: RangeLedger, topic: str):
    ledger.record_started(OffsetRange(topic, 0, 0, 100), "live", "live-run")
    ledger.record_started(OffsetRange(topic, 0, 50, 150), "backfill", "backfill-1")
    ledger.record_started(OffsetRange(topic, 0, 0, 120), "backfill", "backfill-2")
    ledger.record_started(OffsetRange(topic, 0, 0, 100), "backfill", "backfill-3")

    backfills = ledger.failed_or_running(topic, 0, mode="backfill")
    assert [str(entry.offset_range) for entry in backfills] == [
        f"{topic}[0]@[0,100)",
        f"{topic}[0]@[0,120)",
        f"{topic}[0]@[50,150)",
    ]
    live = ledger.entry(OffsetRange(topic, 0, 0, 100), "live")
    assert live is not None
    assert live.attempts == 1


def test_success_commits_with_the_batch_and_a_superseded_run_cannot_commit(
    schema_database: Engine, ledger: RangeLedger, topic: str
):
    offset_range = OffsetRange(topic, 0, 0, 10)
    batch = MatchBatchRows(
        object_ids=["ZTF20fenced"],
        catalog_rows={},
        xmatch_rows=[],
        step=StepRecord("xmatch-1.0", "xmatch", "1.0", datetime.now(UTC)),
    )
    ledger.record_started(offset_range, "live", "stale-run")
    ledger.record_started(offset_range, "live", "new-run")  # took over after stale-run died

    with pytest.raises(LedgerOwnershipError, match="belongs to run new-run"):
        _persist(schema_database, ledger, offset_range, "stale-run", batch)
    assert _object_exists(schema_database, "ZTF20fenced") is False, (
        "the stale run's rows rolled back"
    )

    _persist(schema_database, ledger, offset_range, "new-run", batch)
    assert _object_exists(schema_database, "ZTF20fenced") is True
    entry = ledger.entry(offset_range)
    assert entry is not None
    assert (entry.status, entry.run_id, entry.alerts_in) == ("succeeded", "new-run", 1)
    assert not ledger.record_failed(offset_range, "live", "stale-run", "too late")


def test_finishing_a_range_never_started_is_refused(ledger: RangeLedger, topic: str):
    with pytest.raises(LedgerOwnershipError, match="has no ledger entry"):
        ledger.record_succeeded(OffsetRange(topic, 0, 0, 5), "live", "run-x", RangeCounts(5, 0))


def _persist(
    database: Engine,
    ledger: RangeLedger,
    offset_range: OffsetRange,
    run_id: str,
    batch: MatchBatchRows,
) -> None:
    with database.begin() as connection:
        write_match_batch(connection, batch)
        ledger.record_succeeded(
            offset_range, "live", run_id, RangeCounts(1, 0), connection=connection
        )


def _object_exists(database: Engine, oid: str) -> bool:
    with database.connect() as connection:
        found = connection.execute(text("SELECT 1 FROM object WHERE oid = :oid"), {"oid": oid})
        return found.first() is not None


def test_two_overlapping_ranges_started_at_once_admit_exactly_one(ledger: RangeLedger, topic: str):
    """Even without the partition lock (an operator's bypass), the ledger admits one range."""
    barrier = threading.Barrier(2)
    outcomes: list[object] = []

    def start(offset_range: OffsetRange, run_id: str) -> None:
        barrier.wait(timeout=10)
        try:
            outcomes.append(ledger.record_started(offset_range, "live", run_id))
        except OverlappingRangeError as error:
            outcomes.append(error)

    threads = [
        threading.Thread(target=start, args=(OffsetRange(topic, 0, 0, 100), "sensor-a")),
        threading.Thread(target=start, args=(OffsetRange(topic, 0, 0, 150), "sensor-b")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    refused = [outcome for outcome in outcomes if isinstance(outcome, OverlappingRangeError)]
    assert len(outcomes) == 2
    assert len(refused) == 1
    assert len(ledger.failed_or_running(topic, 0)) == 1


def test_two_consumer_groups_hold_the_same_partition_at_once(
    schema_database: Engine, ledger: RangeLedger, topic: str
):
    """Deployments with different groups sharing a database each read every partition."""
    other = RangeLedger(schema_database, "xmatch-staging")
    with ledger.hold_partition(topic, 0, run_id="production-run"):
        assert not other.is_partition_held(topic, 0)
        with other.hold_partition(topic, 0, run_id="staging-run") as hold:
            assert hold.still_held()
            assert ledger.is_partition_held(topic, 0)
            same_group = RangeLedger(schema_database, GROUP)
            with (
                pytest.raises(PartitionBusyError, match="production-run"),
                same_group.hold_partition(topic, 0),
            ):
                pass


def test_two_consumer_groups_record_overlapping_live_ranges_independently(
    schema_database: Engine, ledger: RangeLedger, topic: str
):
    other = RangeLedger(schema_database, "xmatch-staging")
    ledger.record_started(OffsetRange(topic, 0, 0, 100), "live", "production-run")
    same_range = other.record_started(OffsetRange(topic, 0, 0, 100), "live", "staging-run")
    assert (same_range.attempts, same_range.run_id) == (1, "staging-run"), "not a retry"
    other.record_started(OffsetRange(topic, 0, 100, 150), "live", "staging-run-2")

    ledger.record_failed(OffsetRange(topic, 0, 0, 100), "live", "production-run", "CDS down")
    assert [(e.offset_range.end, e.status) for e in ledger.failed_or_running(topic, 0)] == [
        (100, "failed")
    ]
    assert [(e.offset_range.end, e.status) for e in other.failed_or_running(topic, 0)] == [
        (100, "running"),
        (150, "running"),
    ]
    assert ledger.entry(OffsetRange(topic, 0, 100, 150)) is None
    staging_start = other.entry_starting_at(topic, 0, 0)
    assert staging_start is not None
    assert staging_start.run_id == "staging-run"
    counts = RangeCounts(alerts_in=100, matched=0)
    with pytest.raises(LedgerOwnershipError, match="belongs to run production-run"):
        ledger.record_succeeded(OffsetRange(topic, 0, 0, 100), "live", "staging-run", counts)

    with pytest.raises(OverlappingRangeError) as raised:
        ledger.record_started(OffsetRange(topic, 0, 90, 120), "live", "production-run-2")
    assert f"{topic}[0]@[0,100) (failed, run production-run)" in str(raised.value)
    assert "staging-run" not in str(raised.value), "the other group's ranges are not named"
