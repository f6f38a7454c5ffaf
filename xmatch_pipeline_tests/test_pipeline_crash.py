"""Exactly once under SIGKILL: a run killed at any stage, then the same range run again.

The killed run is a real process (``crash_worker``) killed by SIGKILL, so nothing of its
own cleanup runs: its Kafka transaction stays open, its partition lock dies with its
database session. The rerun goes through the Dagster job, as the sensor's retry would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from xmatch_pipeline.microbatch.runner import STAGES
from xmatch_pipeline.store.range_ledger import RangeLedger
from xmatch_pipeline_tests.failure_fixtures import (
    CHUNK_MESSAGES,
    InputStream,
    assert_database_holds_exactly,
    assert_nothing_stored,
    read_candids,
    run_microbatch_job,
    visible_now,
    write_input_stream,
)
from xmatch_pipeline_tests.pipeline_fixtures import (
    create_topic,
    delete_topics,
    fresh_database,
    group_offsets,
    pipeline_environment,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ALERT_COUNT = 200
#: Per-chunk stages are killed at the second chunk: the first chunk's output is already
#: produced (uncommitted) when the process dies mid-range.
KILL_OCCURRENCE = {"consumed": 2, "crossmatching": 2, "produced": 1, "database_committed": 1}
WORKER_TIMEOUT_SECONDS = 90
LOCK_RELEASE_TIMEOUT_SECONDS = 15


@pytest.fixture(scope="module")
def input_stream(kafka_bootstrap: str, shared_data_dir: Path) -> Iterator[InputStream]:
    """One input partition shared by the tests; each test has its own group and output."""
    topic = create_topic(kafka_bootstrap, "crash-input")
    try:
        yield write_input_stream(kafka_bootstrap, topic, shared_data_dir, ALERT_COUNT, seed=41)
    finally:
        delete_topics(kafka_bootstrap, [topic])


def test_inputs_span_several_chunks_and_mostly_match(input_stream: InputStream) -> None:
    assert len(input_stream.candids) == ALERT_COUNT == len(set(input_stream.candids))
    assert ALERT_COUNT >= 4 * CHUNK_MESSAGES
    assert 0.9 * ALERT_COUNT < len(input_stream.expected_xmatch) < ALERT_COUNT


def _wait_until_released(ledger: RangeLedger, topic: str) -> None:
    deadline = time.monotonic() + LOCK_RELEASE_TIMEOUT_SECONDS
    while ledger.is_partition_held(topic, 0):
        assert time.monotonic() < deadline, "the killed run's partition lock was never released"
        time.sleep(0.1)


@pytest.mark.parametrize("stage", STAGES)
def test_killed_run_then_rerun_outputs_every_alert_exactly_once(
    stage: str,
    *,
    kafka_bootstrap: str,
    database_url: str,
    new_topic: Callable[..., str],
    allwise_index: Path,
    input_stream: InputStream,
) -> None:
    offset_range = input_stream.offset_range
    output_topic = new_topic("crash-output")
    group_id = f"crash-{stage}-{uuid.uuid4().hex[:8]}"
    with fresh_database(database_url) as url:
        environment = pipeline_environment(
            kafka_bootstrap=kafka_bootstrap,
            database_url=url,
            input_topic=input_stream.topic,
            output_topic=output_topic,
            group_id=group_id,
            index_dir=allwise_index,
            XMATCH_CHUNK_MESSAGES=str(CHUNK_MESSAGES),
        )
        killed_run_id = f"killed-at-{stage}"
        worker = subprocess.run(
            [
                sys.executable, "-m", "xmatch_pipeline_tests.crash_worker", stage,
                str(KILL_OCCURRENCE[stage]), offset_range.topic, str(offset_range.partition),
                str(offset_range.start), str(offset_range.end), killed_run_id,
            ],
            env={**os.environ, **environment},
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=WORKER_TIMEOUT_SECONDS,
        )  # fmt: skip
        assert worker.returncode == -signal.SIGKILL, (
            f"worker was not killed at {stage} (exit {worker.returncode}):\n{worker.stderr[-3000:]}"
        )

        engine = create_engine(url, poolclass=NullPool)
        try:
            ledger = RangeLedger(engine, group_id)
            killed = ledger.entry(offset_range)
            assert killed is not None
            assert killed.run_id == killed_run_id
            assert killed.attempts == 1
            # Killed before its database commit: nothing stored and still "running";
            # killed after it: rows and ledger committed together, the offsets not.
            if stage == "database_committed":
                assert killed.status == "succeeded"
                assert_database_holds_exactly(url, input_stream)
            else:
                assert killed.status == "running"
                assert_nothing_stored(url)
            assert group_offsets(kafka_bootstrap, group_id, offset_range.topic)[0] is None
            assert visible_now(kafka_bootstrap, output_topic, seconds=1.0) == []
            _wait_until_released(ledger, offset_range.topic)

            result = run_microbatch_job(offset_range, environment)
            assert result.success, [str(event) for event in result.all_events if event.is_failure]

            committed = read_candids(kafka_bootstrap, output_topic, "read_committed")
            assert sorted(committed) == sorted(input_stream.candids)
            # The killed run's output did reach the broker, and stays aborted.
            everything = read_candids(kafka_bootstrap, output_topic, "read_uncommitted")
            assert len(everything) > ALERT_COUNT
            assert set(everything) == set(input_stream.candids)

            assert_database_holds_exactly(url, input_stream)
            assert group_offsets(kafka_bootstrap, group_id, offset_range.topic)[0] == len(
                input_stream.candids
            )
            entry = ledger.entry(offset_range)
            assert entry is not None
            assert (entry.status, entry.attempts, entry.run_id) == (
                "succeeded",
                2,
                result.run_id,
            )
            assert (entry.alerts_in, entry.matched) == (
                ALERT_COUNT,
                len(input_stream.expected_xmatch),
            )
        finally:
            engine.dispose()
