"""The race guard: never two live runs on one partition, never two overlapping live ranges.

Two layers: Dagster's queue (one run per ``xmatch/partition_key`` value, dagster.yaml) for
runs that go through the queue, and PostgreSQL (advisory lock per partition, ledger of
ranges) for everything, including runs that bypass it (``execute_in_process``, a second
sensor, an operator's launch).
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from xmatch_pipeline.devtools.devstack import DevstackSettings
from xmatch_pipeline.microbatch.offset_range import OffsetRange
from xmatch_pipeline.microbatch.report import MicrobatchReport
from xmatch_pipeline.microbatch.runner import MicrobatchRunner
from xmatch_pipeline.orchestration import run_tags
from xmatch_pipeline.services import PipelineServices
from xmatch_pipeline.settings import load_settings
from xmatch_pipeline.store.errors import OverlappingRangeError, PartitionBusyError
from xmatch_pipeline.store.range_ledger import LedgerEntry, RangeLedger
from xmatch_pipeline_tests.failure_fixtures import (
    CHUNK_MESSAGES,
    InputStream,
    read_candids,
    write_input_stream,
)
from xmatch_pipeline_tests.pipeline_fixtures import (
    fresh_database,
    group_offsets,
    pipeline_environment,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ALERT_COUNT = 3 * CHUNK_MESSAGES
HOLD_TIMEOUT_SECONDS = 60.0


class _Pipeline:
    """One topic pair, one group, one fresh database; builds runners as separate processes would
    (each with its own database engine)."""

    def __init__(self, environment: dict[str, str], database_url: str) -> None:
        self.environment = environment
        self.database_url = database_url
        self._services: list[PipelineServices] = []

    def runner(self, stage_hook: Callable[[str], None] | None = None) -> MicrobatchRunner:
        services = PipelineServices(load_settings(self.environment))
        self._services.append(services)
        return MicrobatchRunner(
            services.microbatch_config(),
            services.crossmatch_engine,
            services.database,
            stage_hook=stage_hook,
        )

    def ledger_entry(self, offset_range: OffsetRange) -> LedgerEntry | None:
        engine = create_engine(self.database_url, poolclass=NullPool)
        try:
            return RangeLedger(engine, self.environment["CONSUMER_GROUP_ID"]).entry(offset_range)
        finally:
            engine.dispose()

    def dispose(self) -> None:
        for services in self._services:
            services.dispose()


@pytest.fixture
def pipeline(
    *,
    kafka_bootstrap: str,
    database_url: str,
    new_topic: Callable[..., str],
    shared_data_dir: Path,
    allwise_index: Path,
) -> Iterator[tuple[_Pipeline, InputStream]]:
    input_topic = new_topic("race-input")
    output_topic = new_topic("race-output")
    stream = write_input_stream(kafka_bootstrap, input_topic, shared_data_dir, ALERT_COUNT, 45)
    with fresh_database(database_url) as url:
        environment = pipeline_environment(
            kafka_bootstrap=kafka_bootstrap,
            database_url=url,
            input_topic=input_topic,
            output_topic=output_topic,
            group_id=f"race-{output_topic}",
            index_dir=allwise_index,
            XMATCH_CHUNK_MESSAGES=str(CHUNK_MESSAGES),
        )
        pipeline = _Pipeline(environment, url)
        try:
            yield pipeline, stream
        finally:
            pipeline.dispose()


def test_second_run_on_a_held_partition_is_refused_and_leaves_no_trace(
    pipeline: tuple[_Pipeline, InputStream], kafka_bootstrap: str
) -> None:
    flow, stream = pipeline
    offset_range = stream.offset_range
    holding = threading.Event()
    release = threading.Event()

    def wait_while_holding(stage: str) -> None:
        if stage == "consumed" and not holding.is_set():
            holding.set()
            assert release.wait(HOLD_TIMEOUT_SECONDS)

    reports: list[MicrobatchReport] = []
    errors: list[BaseException] = []

    def first_run() -> None:
        try:
            reports.append(flow.runner(wait_while_holding).run(offset_range, run_id="race-first"))
        except BaseException as error:  # reported to the test thread below
            errors.append(error)

    thread = threading.Thread(target=first_run, name="first run")
    thread.start()
    try:
        assert holding.wait(HOLD_TIMEOUT_SECONDS), errors
        with pytest.raises(PartitionBusyError) as refused:
            flow.runner().run(offset_range, run_id="race-second")
    finally:
        release.set()
        thread.join(HOLD_TIMEOUT_SECONDS)
    assert not errors
    assert len(reports) == 1

    busy = refused.value
    assert (busy.topic, busy.partition) == (offset_range.topic, 0)
    assert f"{offset_range.topic}[0]" in str(busy)
    assert busy.holder is not None
    assert "race-first" in busy.holder
    # The refused run never started: not in the ledger, nothing produced even uncommitted.
    entry = flow.ledger_entry(offset_range)
    assert entry is not None
    assert (entry.run_id, entry.attempts, entry.status) == ("race-first", 1, "succeeded")
    output = flow.environment["PRODUCER_TOPIC"]
    assert sorted(read_candids(kafka_bootstrap, output, "read_uncommitted")) == sorted(
        stream.candids
    )
    group = flow.environment["CONSUMER_GROUP_ID"]
    assert group_offsets(kafka_bootstrap, group, offset_range.topic)[0] == offset_range.end


def test_overlapping_live_range_is_refused_and_leaves_no_trace(
    pipeline: tuple[_Pipeline, InputStream], kafka_bootstrap: str
) -> None:
    """A retry must reuse its failed range exactly: a longer range from the same start
    (which the runner's offset check lets through) is refused by the ledger."""
    flow, stream = pipeline
    topic = stream.topic
    first = OffsetRange(topic, 0, 0, CHUNK_MESSAGES)
    failed = OffsetRange(topic, 0, CHUNK_MESSAGES, 2 * CHUNK_MESSAGES)
    overlapping = OffsetRange(topic, 0, CHUNK_MESSAGES, ALERT_COUNT)
    flow.runner().run(first, run_id="range-first")

    def fail_after_produce(stage: str) -> None:
        if stage == "produced":
            raise RuntimeError("the run dies after producing")

    with pytest.raises(RuntimeError, match="dies after producing"):
        flow.runner(fail_after_produce).run(failed, run_id="range-failed")
    with pytest.raises(OverlappingRangeError) as refused:
        flow.runner().run(overlapping, run_id="range-overlapping")

    assert refused.value.requested == str(overlapping)
    assert any(str(failed) in colliding for colliding in refused.value.colliding)
    assert flow.ledger_entry(overlapping) is None
    output = flow.environment["PRODUCER_TOPIC"]
    assert sorted(read_candids(kafka_bootstrap, output)) == sorted(stream.candids[: first.end])
    group = flow.environment["CONSUMER_GROUP_ID"]
    assert group_offsets(kafka_bootstrap, group, topic)[0] == first.end


def test_dagster_queue_allows_one_run_per_partition(
    devstack: DevstackSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster import DagsterInstance
    from dagster._core.run_coordinator import QueuedRunCoordinator

    shutil.copy(PROJECT_ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    for name, value in devstack.as_environment().items():
        if name.startswith("DAGSTER_PG_"):
            monkeypatch.setenv(name, value)

    instance = DagsterInstance.get()
    try:
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        # Read from dagster.yaml as a fraction of a second, which Dagster's own config refuses.
        assert instance.run_coordinator.dequeue_interval_seconds == 0.5
        # The queue daemon reads its limits from the instance's concurrency settings.
        queue = instance.get_concurrency_config().run_queue_config
        assert queue is not None
        assert queue.tag_concurrency_limits == [
            {"key": run_tags.PARTITION_KEY, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
        ]
    finally:
        instance.dispose()
