"""PostgreSQL stopped between produce and the database commit: nothing half-done, then a retry.

The test runs its own PostgreSQL server (the devstack's server module, another folder and
port) so that stopping it never disturbs the shared one other tests use.
"""

from __future__ import annotations

import dataclasses
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from xmatch_pipeline.devstack import DevstackSettings
from xmatch_pipeline.devstack.postgres_server import (
    start_postgres,
    stop_postgres,
    wait_until_postgres_ready,
)
from xmatch_pipeline.devstack.stack import prepare_devstack_directory
from xmatch_pipeline.microbatch import MicrobatchError, MicrobatchRunner
from xmatch_pipeline.services import PipelineServices
from xmatch_pipeline.settings import load_settings
from xmatch_pipeline.store.range_ledger import RangeLedger
from xmatch_pipeline_tests.failure_fixtures import (
    assert_database_holds_exactly,
    build_allwise_index,
    committed_offset,
    pipeline_environment,
    read_candids,
    write_input_stream,
)

ALERT_COUNT = 120


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def own_postgres(devstack: DevstackSettings) -> Iterator[DevstackSettings]:
    """A PostgreSQL server of this module alone, removed afterwards."""
    # Not under pytest's private tmp folder: the server runs as the 'postgres' account.
    folder = Path(tempfile.mkdtemp(prefix="xmatch-outage-", dir="/tmp"))
    settings = dataclasses.replace(devstack, devstack_dir=folder, postgres_port=_free_port())
    try:
        prepare_devstack_directory(folder)
        start_postgres(settings)
        wait_until_postgres_ready(settings)
        yield settings
    finally:
        stop_postgres(settings)
        shutil.rmtree(folder, ignore_errors=True)


def test_database_stopped_before_commit_leaves_nothing_then_retry_succeeds(
    *,
    own_postgres: DevstackSettings,
    kafka_bootstrap: str,
    new_topic: Callable[..., str],
    shared_data_dir: Path,
    tmp_path: Path,
) -> None:
    index_dir = build_allwise_index(shared_data_dir, tmp_path / "allwise")
    input_topic = new_topic("outage-input")
    output_topic = new_topic("outage-output")
    group_id = f"outage-{output_topic}"
    stream = write_input_stream(kafka_bootstrap, input_topic, shared_data_dir, ALERT_COUNT, 43)
    offset_range = stream.offset_range
    environment = pipeline_environment(
        bootstrap=kafka_bootstrap,
        database_url=own_postgres.database_url,
        input_topic=input_topic,
        output_topic=output_topic,
        group_id=group_id,
        index_dir=index_dir,
    )
    services = PipelineServices(load_settings(environment))
    stopped: list[str] = []

    def stop_database_after_produce(stage: str) -> None:
        if stage == "produced" and not stopped:
            assert stop_postgres(own_postgres)
            stopped.append(stage)

    runner = MicrobatchRunner(
        services.microbatch_config(),
        services.crossmatch_engine,
        services.database,
        stage_hook=stop_database_after_produce,
    )
    try:
        with pytest.raises(MicrobatchError) as failure:
            runner.run(offset_range, run_id="outage-first")
        assert stopped == ["produced"]
        message = str(failure.value)
        assert str(offset_range) in message
        assert "database" in message.lower()

        # Nothing of the failed run: no offsets, its transaction aborted (read to the end).
        assert committed_offset(kafka_bootstrap, group_id, input_topic) is None
        assert read_candids(kafka_bootstrap, output_topic, "read_committed") == []
        assert read_candids(kafka_bootstrap, output_topic, "read_uncommitted"), (
            "the failed run should have produced (then aborted) its output"
        )

        start_postgres(own_postgres)
        wait_until_postgres_ready(own_postgres)
        report = runner.run(offset_range, run_id="outage-retry")
        assert report.offsets_committed
        assert report.messages_in == ALERT_COUNT
    finally:
        services.dispose()

    assert sorted(read_candids(kafka_bootstrap, output_topic)) == sorted(stream.candids)
    assert committed_offset(kafka_bootstrap, group_id, input_topic) == offset_range.end
    assert_database_holds_exactly(own_postgres.database_url, stream)
    engine = create_engine(own_postgres.database_url, poolclass=NullPool)
    try:
        entry = RangeLedger(engine).entry(offset_range)
    finally:
        engine.dispose()
    assert entry is not None
    assert (entry.status, entry.attempts, entry.run_id) == ("succeeded", 2, "outage-retry")
