"""Faults of the deployed run path: the real daemon (sensor, queue, run monitoring), the
Celery run launcher on the devstack's Redis and ``xmatch-pipeline worker`` processes.

A worker's pool process or the whole worker SIGKILLed mid-run, Redis down while runs are
launched, a run stuck past its limit: each time the run is ended or waits, the sensor runs
the same range again, and the output holds every alert exactly once (read_committed).

Runs are held mid-crossmatch by the local ``cds-server``'s delay fault, so each kill lands
inside a run, after it took the partition lock and opened its Kafka transaction.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dagster import DagsterRun, DagsterRunStatus

from xmatch_pipeline.devtools.cds_server import CdsXmatchServer
from xmatch_pipeline.devtools.cds_server.faults import Fault
from xmatch_pipeline.devtools.devstack import DevstackSettings
from xmatch_pipeline.devtools.devstack.redis_server import (
    start_redis,
    stop_redis,
    wait_until_redis_ready,
)
from xmatch_pipeline.orchestration import run_tags
from xmatch_pipeline_tests.dagster_services import (
    MONITOR_INTERVAL_SECONDS,
    Deployment,
    dagster_deployment,
    wait_for,
)
from xmatch_pipeline_tests.failure_fixtures import (
    CHUNK_MESSAGES,
    InputStream,
    assert_database_holds_exactly,
    read_candids,
    write_input_stream,
)
from xmatch_pipeline_tests.pipeline_fixtures import (
    fresh_database,
    group_offsets,
    pipeline_environment,
    unique_group,
)

pytestmark = pytest.mark.timeout(240)

ALERTS = CHUNK_MESSAGES
#: Long enough to kill a run while CDS "works"; the retry's request is answered at once.
HELD_SECONDS = 15.0
#: A killed pool process is reported by its worker at once; a dead worker is seen within
#: the monitoring interval plus two unanswered questions (run_launcher.py).
DETECTION_SECONDS = {"pool process": 10.0, "worker": MONITOR_INTERVAL_SECONDS + 4 + 10.0}
COMPLETION_SECONDS = 120.0
#: Run monitoring's runtime limit in the stuck-run test (other tests: 60 s, never reached).
STUCK_LIMIT_SECONDS = 10


@dataclass
class Flow:
    deployment: Deployment
    stream: InputStream
    cds: CdsXmatchServer
    database_url: str
    kafka_bootstrap: str

    def hold_next_crossmatch(self, seconds: float = HELD_SECONDS) -> None:
        self.cds.set_faults([Fault("delay", times=1, seconds=seconds)])
        self.cds.clear_requests()

    def wait_until_crossmatching(self) -> DagsterRun:
        """The run that is inside its crossmatch now (CDS got its request)."""
        wait_for("a run's CDS request", lambda: bool(self.cds.requests), 120)
        run = self.deployment.run_with_status(DagsterRunStatus.STARTED)
        assert run is not None, self.deployment.diagnostics()
        return run

    def wait_until_failed(self, run: DagsterRun, within: float) -> float:
        """Seconds until the run is marked failed (fails the test past ``within``)."""
        started = time.monotonic()

        def failed() -> bool:
            current = self.deployment.instance.get_run_by_id(run.run_id)
            return current is not None and current.status == DagsterRunStatus.FAILURE

        try:
            wait_for(f"run {run.run_id} marked failed", failed, within)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.deployment.diagnostics()}") from None
        return time.monotonic() - started

    def wait_until_range_committed(self) -> None:
        group = self.deployment.environment["CONSUMER_GROUP_ID"]
        end = self.stream.offset_range.end

        def committed() -> bool:
            return group_offsets(self.kafka_bootstrap, group, self.stream.topic).get(0) == end

        try:
            wait_for(f"the group committed to {end}", committed, COMPLETION_SECONDS)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.deployment.diagnostics()}") from None

    def assert_every_alert_exactly_once(self) -> None:
        output = self.deployment.environment["PRODUCER_TOPIC"]
        assert sorted(read_candids(self.kafka_bootstrap, output)) == sorted(self.stream.candids)
        assert_database_holds_exactly(self.database_url, self.stream)

    def assert_failed_then_retried(self, failed: DagsterRun) -> None:
        """The failed run's range ran again as the next attempt, and that succeeded."""
        runs = self.deployment.microbatch_runs()
        succeeded = [run for run in runs if run.status == DagsterRunStatus.SUCCESS]
        assert len(succeeded) == 1, [(run.tags, run.status) for run in runs]
        retry = succeeded[0]
        range_keys = [run_tags.TOPIC, run_tags.PARTITION, run_tags.START_OFFSET]
        range_keys.append(run_tags.END_OFFSET)
        assert [retry.tags[key] for key in range_keys] == [failed.tags[key] for key in range_keys]
        assert int(retry.tags[run_tags.ATTEMPT]) > int(failed.tags[run_tags.ATTEMPT])


@pytest.fixture
def flow(
    *,
    devstack: DevstackSettings,
    kafka_bootstrap: str,
    new_topic: Callable[..., str],
    shared_data_dir: Path,
    cds_server: CdsXmatchServer,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Flow]:
    """Alerts in an input topic, a fresh database, a deployment not started yet (the
    parameter, if any, is run monitoring's runtime limit)."""
    input_topic = new_topic("worker-input")
    output_topic = new_topic("worker-output")
    stream = write_input_stream(kafka_bootstrap, input_topic, shared_data_dir, ALERTS, 81)
    with fresh_database(devstack.database_url) as database_url:
        environment = pipeline_environment(
            kafka_bootstrap=kafka_bootstrap,
            database_url=database_url,
            input_topic=input_topic,
            output_topic=output_topic,
            group_id=unique_group("worker-faults"),
            XMATCH_ENGINE="cds",
            XMATCH_CDS_URL=cds_server.url,
            XMATCH_CDS_READ_TIMEOUT="120",
            XMATCH_CHUNK_MESSAGES=str(CHUNK_MESSAGES),
            XMATCH_MATCH_CACHE="off",
        )
        with dagster_deployment(
            devstack, environment, tmp_path, max_runtime_seconds=getattr(request, "param", 60)
        ) as deployment:
            yield Flow(deployment, stream, cds_server, database_url, kafka_bootstrap)


def test_pool_process_killed_mid_run_fails_the_run_and_the_retry_writes_each_alert_once(
    flow: Flow,
) -> None:
    deployment = flow.deployment
    deployment.start_worker()
    flow.hold_next_crossmatch()
    deployment.start_daemon()
    run = flow.wait_until_crossmatching()
    pool_process = deployment.instance.run_launcher.celery.AsyncResult(  # type: ignore[attr-defined]
        run.tags["dagster-celery/task_id"]
    ).info["pid"]
    os.kill(pool_process, signal.SIGKILL)

    flow.wait_until_failed(run, DETECTION_SECONDS["pool process"])
    flow.wait_until_range_committed()

    flow.assert_every_alert_exactly_once()
    flow.assert_failed_then_retried(run)


def test_whole_worker_killed_mid_run_is_detected_and_the_range_runs_again_on_another(
    flow: Flow,
) -> None:
    deployment = flow.deployment
    first_worker = deployment.start_worker("worker-1")
    flow.hold_next_crossmatch()
    deployment.start_daemon()
    run = flow.wait_until_crossmatching()
    deployment.kill_group(first_worker)  # main process and pool processes: a lost host
    deployment.start_worker("worker-2")  # as a supervisor would start a new one

    flow.wait_until_failed(run, DETECTION_SECONDS["worker"])
    flow.wait_until_range_committed()

    flow.assert_every_alert_exactly_once()
    flow.assert_failed_then_retried(run)
    assert "no longer runs it" in str(
        [event.message for event in deployment.instance.all_logs(run.run_id)]
    )


@pytest.mark.parametrize("flow", [STUCK_LIMIT_SECONDS], indirect=True)
def test_run_stuck_past_its_limit_is_ended_and_its_range_retried(flow: Flow) -> None:
    deployment = flow.deployment
    deployment.start_worker()
    flow.hold_next_crossmatch(seconds=3 * STUCK_LIMIT_SECONDS)  # stuck, far past the limit
    deployment.start_daemon()
    run = flow.wait_until_crossmatching()

    flow.wait_until_failed(run, STUCK_LIMIT_SECONDS + MONITOR_INTERVAL_SECONDS + 10)
    flow.wait_until_range_committed()

    flow.assert_every_alert_exactly_once()
    flow.assert_failed_then_retried(run)
    messages = str([event.message for event in deployment.instance.all_logs(run.run_id)])
    assert "maximum runtime" in messages


def test_runs_wait_while_redis_is_down_and_complete_when_it_is_back(
    flow: Flow, devstack: DevstackSettings
) -> None:
    deployment = flow.deployment
    deployment.start_worker()
    stop_redis(devstack)
    try:
        deployment.start_daemon()

        def requeued() -> DagsterRun | None:
            for run in deployment.microbatch_runs():
                messages = [event.message for event in deployment.instance.all_logs(run.run_id)]
                if any("re-submitting the run into the queue" in m for m in messages):
                    return run
            return None

        waiting = wait_for("a run put back in the queue", requeued, 120)
        assert waiting.status != DagsterRunStatus.FAILURE
    finally:
        start_redis(devstack)
        wait_until_redis_ready(devstack)

    flow.wait_until_range_committed()
    flow.assert_every_alert_exactly_once()
    runs = deployment.microbatch_runs()
    # The run that waited is the one that did the work: nothing failed, nothing retried.
    assert [(run.run_id, run.status) for run in runs] == [
        (waiting.run_id, DagsterRunStatus.SUCCESS)
    ], deployment.diagnostics()
