"""PostgreSQL failing between produce and the commits: nothing half-done, then a retry.

The tests run their own PostgreSQL server (the devstack's server module, another folder
and port) so that stopping it never disturbs the shared one other tests use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from xmatch_pipeline.devtools.devstack import DevstackSettings
from xmatch_pipeline.devtools.devstack.postgres_server import (
    start_postgres,
    stop_postgres,
    wait_until_postgres_ready,
)
from xmatch_pipeline.microbatch.runner import MicrobatchError, MicrobatchRunner
from xmatch_pipeline.services import PipelineServices
from xmatch_pipeline.settings import load_settings
from xmatch_pipeline.store.errors import DatabaseUnavailableError
from xmatch_pipeline.store.range_ledger import LedgerEntry, RangeLedger
from xmatch_pipeline_tests.failure_fixtures import (
    CHUNK_MESSAGES,
    InputStream,
    assert_database_holds_exactly,
    read_candids,
    write_input_stream,
)
from xmatch_pipeline_tests.own_services import own_postgres
from xmatch_pipeline_tests.pipeline_fixtures import (
    fresh_database,
    group_offsets,
    pipeline_environment,
)

ALERT_COUNT = 120


@pytest.fixture(scope="module")
def own_postgres_server(devstack: DevstackSettings) -> Iterator[DevstackSettings]:
    """A PostgreSQL server of this module alone, removed afterwards."""
    with own_postgres(devstack) as server:
        yield server.settings


@dataclass
class OutageCase:
    server: DevstackSettings
    database_url: str
    stream: InputStream
    output_topic: str
    group_id: str
    services: PipelineServices

    def runner(self, stage_hook: Callable[[str], None]) -> MicrobatchRunner:
        return MicrobatchRunner(
            self.services.microbatch_config(),
            self.services.crossmatch_engine,
            self.services.database,
            stage_hook=stage_hook,
        )

    def ledger_entry(self) -> LedgerEntry | None:
        engine = create_engine(self.database_url, poolclass=NullPool)
        try:
            return RangeLedger(engine, self.group_id).entry(self.stream.offset_range)
        finally:
            engine.dispose()


@pytest.fixture
def case(
    *,
    own_postgres_server: DevstackSettings,
    kafka_bootstrap: str,
    new_topic: Callable[..., str],
    shared_data_dir: Path,
    allwise_index: Path,
) -> Iterator[OutageCase]:
    input_topic = new_topic("outage-input")
    output_topic = new_topic("outage-output")
    stream = write_input_stream(kafka_bootstrap, input_topic, shared_data_dir, ALERT_COUNT, 43)
    with fresh_database(own_postgres_server.database_url) as database_url:
        environment = pipeline_environment(
            kafka_bootstrap=kafka_bootstrap,
            database_url=database_url,
            input_topic=input_topic,
            output_topic=output_topic,
            group_id=f"outage-{output_topic}",
            index_dir=allwise_index,
            XMATCH_CHUNK_MESSAGES=str(CHUNK_MESSAGES),
        )
        services = PipelineServices(load_settings(environment))
        try:
            yield OutageCase(
                own_postgres_server,
                database_url,
                stream,
                output_topic,
                f"outage-{output_topic}",
                services,
            )
        finally:
            services.dispose()


def _assert_nothing_visible(case: OutageCase, kafka_bootstrap: str) -> None:
    """No offsets, and the run's transaction aborted: read to the end, nothing committed."""
    assert group_offsets(kafka_bootstrap, case.group_id, case.stream.topic)[0] is None
    assert read_candids(kafka_bootstrap, case.output_topic, "read_committed") == []
    assert read_candids(kafka_bootstrap, case.output_topic, "read_uncommitted"), (
        "the failed run should have produced (then aborted) its output"
    )


def _assert_retry_succeeds(case: OutageCase, kafka_bootstrap: str) -> None:
    """The same runner (its engine's pool saw the outage) runs the range again, exactly once."""
    offset_range = case.stream.offset_range
    report = case.runner(lambda stage: None).run(offset_range, run_id="outage-retry")
    assert report.offsets_committed
    assert report.messages_in == ALERT_COUNT
    assert sorted(read_candids(kafka_bootstrap, case.output_topic)) == sorted(case.stream.candids)
    assert group_offsets(kafka_bootstrap, case.group_id, offset_range.topic)[0] == offset_range.end
    assert_database_holds_exactly(case.database_url, case.stream)
    entry = case.ledger_entry()
    assert entry is not None
    assert (entry.status, entry.attempts, entry.run_id) == ("succeeded", 2, "outage-retry")


def test_database_stopped_before_commit_leaves_nothing_then_retry_succeeds(
    case: OutageCase, kafka_bootstrap: str
) -> None:
    stopped: list[str] = []

    def stop_database_after_produce(stage: str) -> None:
        if stage == "produced" and not stopped:
            assert stop_postgres(case.server)
            stopped.append(stage)

    with pytest.raises(MicrobatchError) as failure:
        case.runner(stop_database_after_produce).run(case.stream.offset_range, run_id="outage")
    assert stopped == ["produced"]
    message = str(failure.value)
    assert str(case.stream.offset_range) in message
    assert "database" in message.lower()
    _assert_nothing_visible(case, kafka_bootstrap)

    start_postgres(case.server)
    wait_until_postgres_ready(case.server)
    _assert_retry_succeeds(case, kafka_bootstrap)


def test_database_restarted_before_commit_loses_the_lock_and_commits_no_output(
    case: OutageCase, kafka_bootstrap: str
) -> None:
    """The rows commit on a new connection, but the partition lock died with the old session:
    another run may already hold the partition, so this one must not commit to Kafka."""
    restarted: list[str] = []

    def restart_database_after_produce(stage: str) -> None:
        if stage == "produced" and not restarted:
            assert stop_postgres(case.server)
            start_postgres(case.server)
            wait_until_postgres_ready(case.server)
            restarted.append(stage)

    with pytest.raises(MicrobatchError, match="lost the partition lock"):
        case.runner(restart_database_after_produce).run(case.stream.offset_range, run_id="outage")
    assert restarted == ["produced"]
    _assert_nothing_visible(case, kafka_bootstrap)
    entry = case.ledger_entry()
    assert entry is not None
    assert (entry.status, entry.run_id) == ("failed", "outage")
    assert entry.error is not None
    assert "lost the partition lock" in entry.error

    _assert_retry_succeeds(case, kafka_bootstrap)


def test_database_down_when_a_run_starts_gives_the_pipelines_error_then_retry_succeeds(
    case: OutageCase, kafka_bootstrap: str
) -> None:
    """Down before the run's first statement (the partition lock): the pipeline's error,
    not the driver's, and nothing touched; the services say the same at their start."""
    runner = case.runner(lambda stage: None)
    assert stop_postgres(case.server)
    try:
        with pytest.raises(DatabaseUnavailableError) as failure:
            runner.run(case.stream.offset_range, run_id="outage")
        message = str(failure.value)
        assert "cannot connect to PostgreSQL" in message
        assert "check that the server is running" in message
        with pytest.raises(DatabaseUnavailableError, match=r"preparing the schema: cannot connect"):
            _ = PipelineServices(case.services.settings).database
    finally:
        start_postgres(case.server)
        wait_until_postgres_ready(case.server)
    assert group_offsets(kafka_bootstrap, case.group_id, case.stream.topic)[0] is None
    assert case.ledger_entry() is None

    report = case.runner(lambda stage: None).run(case.stream.offset_range, run_id="after")
    assert report.offsets_committed
    assert sorted(read_candids(kafka_bootstrap, case.output_topic)) == sorted(case.stream.candids)
    assert_database_holds_exactly(case.database_url, case.stream)
