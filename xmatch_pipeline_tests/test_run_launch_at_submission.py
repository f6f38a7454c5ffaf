"""Runs of a free partition start at their submission; a partition's next run waits in the
queue behind the one in flight (orchestration/run_coordinator.py), on the real daemon,
Celery launcher, worker, Kafka, PostgreSQL and Redis."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterRunStatus

from xmatch_pipeline.devtools.cds_server import CdsXmatchServer
from xmatch_pipeline.devtools.cds_server.faults import Fault
from xmatch_pipeline.devtools.devstack import DevstackSettings
from xmatch_pipeline.orchestration import run_tags
from xmatch_pipeline_tests.dagster_services import Deployment, dagster_deployment, wait_for
from xmatch_pipeline_tests.failure_fixtures import read_candids, write_input_stream
from xmatch_pipeline_tests.pipeline_fixtures import (
    fresh_database,
    group_offsets,
    pipeline_environment,
    unique_group,
)

pytestmark = pytest.mark.timeout(240)

ALERTS = 40
#: How long the first run's crossmatch is held, so that the sensor (every 5 s) sees the
#: second batch while that run is in flight and queues its successor.
HELD_SECONDS = 12.0


def _event_times(deployment: Deployment, run_id: str) -> dict[DagsterEventType, datetime]:
    """The first time each Dagster event of the run was written."""
    times: dict[DagsterEventType, datetime] = {}
    for entry in deployment.instance.all_logs(run_id):
        event = entry.dagster_event
        if event is not None and event.event_type not in times:
            times[event.event_type] = datetime.fromtimestamp(entry.timestamp)
    return times


def test_a_free_partitions_run_starts_at_submission_and_its_successor_waits_in_the_queue(
    *,
    devstack: DevstackSettings,
    kafka_bootstrap: str,
    new_topic: Callable[..., str],
    shared_data_dir: Path,
    cds_server: CdsXmatchServer,
    tmp_path: Path,
) -> None:
    input_topic = new_topic("submission-input")
    output_topic = new_topic("submission-output")
    first = write_input_stream(kafka_bootstrap, input_topic, shared_data_dir, ALERTS, 91)
    group = unique_group("submission")
    cds_server.set_faults([Fault("delay", times=1, seconds=HELD_SECONDS)])
    cds_server.clear_requests()
    with fresh_database(devstack.database_url) as database_url:
        environment = pipeline_environment(
            kafka_bootstrap=kafka_bootstrap,
            database_url=database_url,
            input_topic=input_topic,
            output_topic=output_topic,
            group_id=group,
            XMATCH_ENGINE="cds",
            XMATCH_CDS_URL=cds_server.url,
            XMATCH_CDS_READ_TIMEOUT="120",
            XMATCH_MATCH_CACHE="off",
        )
        with dagster_deployment(devstack, environment, tmp_path) as deployment:
            deployment.start_worker()
            deployment.start_daemon()
            wait_for("the first run's CDS request", lambda: bool(cds_server.requests), 120)
            second = write_input_stream(kafka_bootstrap, input_topic, shared_data_dir, ALERTS, 92)

            def committed_and_ended() -> bool:
                ended = all(run.is_finished for run in deployment.microbatch_runs())
                return ended and group_offsets(kafka_bootstrap, group, input_topic).get(0) == (
                    2 * ALERTS
                )

            try:
                wait_for("both ranges committed and their runs ended", committed_and_ended, 150)
            except AssertionError as error:
                raise AssertionError(f"{error}\n{deployment.diagnostics()}") from None

            runs = sorted(
                deployment.microbatch_runs(), key=lambda run: int(run.tags[run_tags.START_OFFSET])
            )
            ranges = [
                (int(run.tags[run_tags.START_OFFSET]), int(run.tags[run_tags.END_OFFSET]))
                for run in runs
            ]
            assert ranges == [(0, ALERTS), (ALERTS, 2 * ALERTS)], deployment.diagnostics()
            assert [run.status for run in runs] == [DagsterRunStatus.SUCCESS] * 2
            head, successor = (_event_times(deployment, run.run_id) for run in runs)
            timeline = f"first run: {head}\nsuccessor: {successor}"
            # The first run never entered the queue: launched by the sensor's submission.
            assert DagsterEventType.PIPELINE_ENQUEUED not in head, timeline
            assert DagsterEventType.PIPELINE_STARTING in head, timeline
            # Its successor was submitted while it worked: queued, and launched only once
            # the first run had ended (one run per partition).
            enqueued = successor.get(DagsterEventType.PIPELINE_ENQUEUED)
            assert enqueued is not None, timeline
            assert enqueued < head[DagsterEventType.PIPELINE_SUCCESS], timeline
            starting = successor[DagsterEventType.PIPELINE_STARTING]
            assert starting >= head[DagsterEventType.PIPELINE_SUCCESS], timeline
            expected = sorted(first.candids + second.candids)
            assert sorted(read_candids(kafka_bootstrap, output_topic)) == expected
