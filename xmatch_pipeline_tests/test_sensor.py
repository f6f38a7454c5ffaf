"""``kafka_lag_sensor`` on the real broker and database: requests, keys, tags, cursor, retries.

Each test follows its own topics and consumer group, ticks the sensor as the daemon would
(``build_sensor_context``) and runs what it requests in process on the same instance.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from dagster import (
    AddDynamicPartitionsRequest,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    RunRequest,
)
from dagster._core.remote_origin import (
    InProcessCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.utils import make_new_run_id
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from xmatch_pipeline.microbatch.offset_range import OffsetRange
from xmatch_pipeline.microbatch.planning import PlannedRun
from xmatch_pipeline.orchestration import run_tags
from xmatch_pipeline.orchestration.jobs import xmatch_backfill, xmatch_microbatch
from xmatch_pipeline.orchestration.resources import XmatchResource
from xmatch_pipeline.orchestration.sensors import run_request
from xmatch_pipeline.store.range_ledger import RangeLedger
from xmatch_pipeline.store.schema import ensure_schema
from xmatch_pipeline_tests.failure_fixtures import read_candids
from xmatch_pipeline_tests.pipeline_fixtures import (
    SmallStream,
    create_topics,
    delete_topics,
    drive_sensor_and_jobs,
    evaluate_sensor,
    execute_request,
    group_offsets,
    pipeline_environment,
    produce_values,
    query,
    read_committed,
    small_stream,
    unique_group,
    xmatch_resource,
)

pytestmark = pytest.mark.timeout(120)

IN_PROCESS_ORIGIN = RemoteJobOrigin(
    RemoteRepositoryOrigin(
        InProcessCodeLocationOrigin(
            LoadableTargetOrigin(module_name="xmatch_pipeline.orchestration.definitions")
        ),
        "__repository__",
    ),
    "xmatch_microbatch",
)
DEAD_CDS_URL = "http://127.0.0.1:9/xmatch/api/v1/sync"
#: CDS unreachable, and the run giving up on it at once.
DEAD_CDS = {
    "XMATCH_ENGINE": "cds",
    "XMATCH_CDS_URL": DEAD_CDS_URL,
    "XMATCH_CDS_CONNECT_TIMEOUT": "0.2",
    "XMATCH_CDS_DEADLINE": "1",
    "RETRIES": "0",
}


@pytest.fixture(scope="module")
def stream(shared_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> SmallStream:
    return small_stream(shared_data_dir, tmp_path_factory.mktemp("sensor-catalog"))


@dataclass
class Harness:
    """What every sensor test needs: the stream, the services and a way to set settings."""

    stream: SmallStream
    bootstrap: str
    database_url: str
    new_topic: Callable[..., str]
    xmatch: XmatchResource = field(init=False)

    def environment(
        self, input_topic: str, output_topic: str = "unused-output", **overrides: str
    ) -> dict[str, str]:
        return pipeline_environment(
            kafka_bootstrap=self.bootstrap,
            database_url=self.database_url,
            input_topic=input_topic,
            output_topic=output_topic,
            group_id=unique_group(),
            index_dir=self.stream.index_dir,
            **overrides,
        )

    def use(self, environment: dict[str, str]) -> dict[str, str]:
        """From now on the sensor and the jobs run with exactly these settings."""
        self.xmatch = xmatch_resource(environment)
        return environment

    def produce(self, topic: str, first: int, last: int, partitions: int = 1) -> None:
        produce_values(
            self.bootstrap, topic, self.stream.messages[first:last], partitions=partitions
        )


@pytest.fixture
def harness(
    stream: SmallStream,
    kafka_bootstrap: str,
    fresh_database_url: str,
    new_topic: Callable[..., str],
) -> Harness:
    return Harness(stream, kafka_bootstrap, fresh_database_url, new_topic)


def _skip_message(result: object) -> str:
    reason = getattr(result, "skip_reason", None)
    return "" if reason is None else str(reason.skip_message)


def test_requests_one_range_per_lagging_partition_with_keys_tags_and_cursor(
    harness: Harness,
) -> None:
    topic = harness.new_topic("sensor-in", partitions=2)
    settings = harness.environment(topic, XMATCH_MAX_MESSAGES_PER_RUN="10")
    harness.use(settings)
    harness.produce(topic, 0, 26, partitions=2)  # 13 each

    previous_cursor = json.dumps({"other-topic:3": {"start": 5, "end": 9, "attempt": 1}})
    result = evaluate_sensor(harness.xmatch, DagsterInstance.ephemeral(), previous_cursor)

    requests = sorted(result.run_requests or [], key=lambda r: r.tags[run_tags.PARTITION])
    assert [r.run_key for r in requests] == [
        f"{topic}[0]@[0,10)#attempt1",
        f"{topic}[1]@[0,10)#attempt1",
    ]
    for partition, request in enumerate(requests):
        assert request.tags == {
            run_tags.TOPIC: topic,
            run_tags.PARTITION: str(partition),
            run_tags.START_OFFSET: "0",
            run_tags.END_OFFSET: "10",
            run_tags.ATTEMPT: "1",
            run_tags.PARTITION_KEY: f"{topic}:{partition}",
        }
        assert request.run_config == {
            "ops": {
                "check_offset_range": {
                    "config": {
                        "topic": topic,
                        "partition": partition,
                        "start_offset": 0,
                        "end_offset": 10,
                    }
                }
            }
        }
        assert request.job_name in (None, xmatch_microbatch.name)
        assert request.partition_key == f"{topic}/{partition}/0-10"
    # Each range is added as a partition of offset_ranges in the same tick.
    (partitions_request,) = result.dynamic_partitions_requests or []
    assert isinstance(partitions_request, AddDynamicPartitionsRequest)
    assert partitions_request.partitions_def_name == "offset_ranges"
    assert sorted(partitions_request.partition_keys) == [f"{topic}/0/0-10", f"{topic}/1/0-10"]
    # The cursor keeps what it knew and adds the last range requested per partition.
    assert json.loads(result.cursor or "") == {
        "other-topic:3": {"start": 5, "end": 9, "attempt": 1},
        f"{topic}:0": {"start": 0, "end": 10, "attempt": 1},
        f"{topic}:1": {"start": 0, "end": 10, "attempt": 1},
    }
    (observation,) = result.asset_events
    assert observation.metadata["lag_total"].value == 26
    assert observation.metadata[f"lag[{topic}]"].value == 26
    assert observation.metadata[f"lag[{topic}][0]"].value == 13
    # Reading lag never consumes: the group still has nothing committed.
    assert group_offsets(harness.bootstrap, settings["CONSUMER_GROUP_ID"], topic) == {
        0: None,
        1: None,
    }


def test_no_lag_and_no_topic_are_skips_with_reasons(
    harness: Harness,
) -> None:
    topic = harness.new_topic("sensor-idle", partitions=2)
    harness.use(harness.environment(topic))
    result = evaluate_sensor(harness.xmatch, DagsterInstance.ephemeral(), None)
    assert not result.run_requests
    assert _skip_message(result) == f"no lag on 2 partitions of {topic}"

    harness.use(harness.environment(f"missing-{uuid.uuid4().hex[:8]}"))
    result = evaluate_sensor(harness.xmatch, DagsterInstance.ephemeral(), "{}")
    assert not result.run_requests
    assert "no input topic exists yet" in _skip_message(result)
    assert result.cursor == "{}"


def test_failed_range_is_retried_with_the_same_range_then_waits_for_an_operator(
    harness: Harness,
) -> None:
    topic, output = harness.new_topic("sensor-fail"), harness.new_topic("sensor-fail-out")
    broken = harness.environment(
        topic,
        output,
        XMATCH_MAX_MESSAGES_PER_RUN="8",
        XMATCH_MAX_RUN_ATTEMPTS="2",
        **DEAD_CDS,
    )
    harness.use(broken)
    harness.produce(topic, 0, 12)
    instance = DagsterInstance.ephemeral()

    first = evaluate_sensor(harness.xmatch, instance, None)
    (request,) = first.run_requests or []
    assert request.run_key == f"{topic}[0]@[0,8)#attempt1"
    assert not execute_request(harness.xmatch, instance, request).success

    second = evaluate_sensor(harness.xmatch, instance, first.cursor)
    (retry,) = second.run_requests or []
    assert retry.run_key == f"{topic}[0]@[0,8)#attempt2"
    assert retry.run_config == request.run_config
    assert retry.tags[run_tags.ATTEMPT] == "2"
    assert json.loads(second.cursor or "")[f"{topic}:0"] == {"start": 0, "end": 8, "attempt": 2}
    assert not execute_request(harness.xmatch, instance, retry).success

    # Out of attempts: no run, the reason names the range, the error and the way out, and
    # nothing later in the partition is requested, even as more alerts arrive.
    harness.produce(topic, 12, 20)
    third = evaluate_sensor(harness.xmatch, instance, second.cursor)
    assert not third.run_requests
    reason = _skip_message(third)
    assert f"{topic}[0]@[0,8) failed after 2 attempts" in reason
    assert "the partition waits" in reason
    assert "launchpad" in reason
    assert DEAD_CDS_URL.split("/xmatch", maxsplit=1)[0] in reason or "CDS" in reason
    (status, attempts, error) = query(
        harness.database_url,
        "SELECT status, attempts, error FROM offset_range_ledger WHERE topic = :topic",
        topic=topic,
    )[0]
    assert (status, attempts) == ("failed", 2)
    assert error
    assert read_committed(harness.bootstrap, output) == []
    assert group_offsets(harness.bootstrap, broken["CONSUMER_GROUP_ID"], topic) == {0: None}

    # The operator fixes the cause and launches the range; the sensor goes on after it.
    fixed = broken | {"XMATCH_ENGINE": "local", "XMATCH_CDS_URL": ""}
    harness.use(fixed)
    manual = run_request(PlannedRun(OffsetRange(topic, 0, 0, 8), 3, "operator"))
    assert execute_request(harness.xmatch, instance, manual).success
    log = drive_sensor_and_jobs(harness.xmatch, instance, cursor=third.cursor)
    assert not log.failed_runs
    assert [r.run_key for t in log.ticks for r in t.launched] == [
        f"{topic}[0]@[8,16)#attempt1",
        f"{topic}[0]@[16,20)#attempt1",
    ]
    assert group_offsets(harness.bootstrap, broken["CONSUMER_GROUP_ID"], topic) == {0: 20}
    assert len(read_committed(harness.bootstrap, output)) == 20


def test_a_range_left_running_by_a_dead_run_is_retried_but_a_held_one_waits(
    harness: Harness,
) -> None:
    topic = harness.new_topic("sensor-dead")
    environment = harness.use(harness.environment(topic, XMATCH_MAX_MESSAGES_PER_RUN="5"))
    harness.produce(topic, 0, 7)
    engine = create_engine(harness.database_url, poolclass=NullPool)
    ensure_schema(engine)
    ledger = RangeLedger(engine, environment["CONSUMER_GROUP_ID"])
    ledger.record_started(OffsetRange(topic, 0, 0, 5), "live", "a-run-that-died")
    instance = DagsterInstance.ephemeral()
    try:
        with ledger.hold_partition(topic, 0, "a-run-still-alive"):
            held = evaluate_sensor(harness.xmatch, instance, None)
            assert not held.run_requests
            assert "is running (run a-run-that-died)" in _skip_message(held)
        retried = evaluate_sensor(harness.xmatch, instance, None)
    finally:
        engine.dispose()
    (request,) = retried.run_requests or []
    assert request.run_key == f"{topic}[0]@[0,5)#attempt2"
    assert execute_request(harness.xmatch, instance, request).success


@pytest.mark.parametrize(
    "status", [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTED]
)
def test_a_partition_with_a_run_in_flight_is_skipped(
    status: DagsterRunStatus,
    harness: Harness,
) -> None:
    topic = harness.new_topic("sensor-busy", partitions=2)
    harness.use(harness.environment(topic, XMATCH_MAX_MESSAGES_PER_RUN="50"))
    harness.produce(topic, 0, 6, partitions=2)
    instance = DagsterInstance.ephemeral()
    queued = run_request(PlannedRun(OffsetRange(topic, 1, 0, 3), 1, "queued by hand"))
    instance.add_run(
        DagsterRun(
            job_name=xmatch_microbatch.name,
            run_id=make_new_run_id(),
            run_config=queued.run_config,
            tags=queued.tags,
            status=status,
            # Dagster refuses a queued run without the code location it would launch from.
            remote_job_origin=IN_PROCESS_ORIGIN,
        )
    )
    result = evaluate_sensor(harness.xmatch, instance, None)
    assert [r.run_key for r in result.run_requests or []] == [f"{topic}[0]@[0,3)#attempt1"]


def test_a_partition_with_a_backfill_in_flight_is_skipped(harness: Harness) -> None:
    """Backfill runs carry no partition tags: the sensor reads their ranges from config."""
    topic = harness.new_topic("sensor-backfill-busy", partitions=2)
    harness.use(harness.environment(topic, XMATCH_MAX_MESSAGES_PER_RUN="50"))
    harness.produce(topic, 0, 6, partitions=2)
    instance = DagsterInstance.ephemeral()
    backfill_range = {"topic": topic, "partition": 1, "start_offset": 0, "end_offset": 3}
    instance.add_run(
        DagsterRun(
            job_name=xmatch_backfill.name,
            run_id=make_new_run_id(),
            run_config={
                "ops": {"backfill_offset_ranges": {"config": {"ranges": [backfill_range]}}}
            },
            status=DagsterRunStatus.STARTED,
            remote_job_origin=IN_PROCESS_ORIGIN,
        )
    )
    result = evaluate_sensor(harness.xmatch, instance, None)
    assert [r.run_key for r in result.run_requests or []] == [f"{topic}[0]@[0,3)#attempt1"]


def test_a_run_refused_by_the_partition_guard_is_requested_again(
    harness: Harness,
) -> None:
    """Another process (an operator's ``dagster job execute``) holds the partition: the run
    fails before it reaches the ledger, and the partition must not stall on a used run key."""
    topic, output = harness.new_topic("sensor-guard"), harness.new_topic("sensor-guard-out")
    environment = harness.use(harness.environment(topic, output))
    harness.produce(topic, 0, 4)
    engine = create_engine(harness.database_url, poolclass=NullPool)
    ensure_schema(engine)
    instance = DagsterInstance.ephemeral()
    try:
        with RangeLedger(engine, environment["CONSUMER_GROUP_ID"]).hold_partition(
            topic, 0, "someone-else"
        ):
            (request,) = evaluate_sensor(harness.xmatch, instance, None).run_requests or []
            refused = execute_request(harness.xmatch, instance, request)
        assert not refused.success
        assert "someone-else" in str(refused.get_step_failure_events()[0].event_specific_data)
    finally:
        engine.dispose()
    assert read_committed(harness.bootstrap, output) == []
    log = drive_sensor_and_jobs(harness.xmatch, instance)
    assert [run.success for run in log.runs] == [True]
    assert len(read_committed(harness.bootstrap, output)) == 4


def test_daily_topic_formats_and_patterns_resolve_existing_topics(
    harness: Harness,
) -> None:
    marker = uuid.uuid4().hex[:8]
    today = datetime.now(UTC).strftime("%Y%m%d")
    daily = [f"ztf{marker}_{today}_programid1", f"ztf{marker}_{today}_programid2"]
    patterned = [f"pattern{marker}-a", f"pattern{marker}-b"]
    created = daily + patterned
    create_topics(harness.bootstrap, created)
    try:
        for name in created:
            harness.produce(name, 0, 2)
        base = harness.environment("ignored")
        del base["CONSUMER_TOPICS"]

        formats = f"ztf{marker}_%s_programid1,ztf{marker}_%s_programid2"
        harness.use(base | {"TOPIC_STRATEGY_FORMAT": formats})
        result = evaluate_sensor(harness.xmatch, DagsterInstance.ephemeral(), None)
        assert sorted(r.tags[run_tags.TOPIC] for r in result.run_requests or []) == daily

        harness.use(base | {"XMATCH_TOPIC_PATTERN": f"^pattern{marker}-.$"})
        result = evaluate_sensor(harness.xmatch, DagsterInstance.ephemeral(), None)
        assert sorted(r.tags[run_tags.TOPIC] for r in result.run_requests or []) == patterned
    finally:
        delete_topics(harness.bootstrap, created)


def _launched_as_daemon_would(instance: DagsterInstance, request: RunRequest) -> DagsterRun:
    """Record a request as a started run, as the daemon leaves it while the run works."""
    run = DagsterRun(
        job_name=xmatch_microbatch.name,
        run_id=make_new_run_id(),
        run_config=request.run_config,
        tags={**request.tags, run_tags.DAGSTER_RUN_KEY: request.run_key or ""},
        status=DagsterRunStatus.STARTED,
        remote_job_origin=IN_PROCESS_ORIGIN,
    )
    return instance.add_run(run)


def test_the_successor_of_a_run_in_flight_is_queued_behind_it_and_starts_where_it_ends(
    harness: Harness,
) -> None:
    topic, output = harness.new_topic("sensor-pipe"), harness.new_topic("sensor-pipe-out")
    environment = harness.use(harness.environment(topic, output, XMATCH_MAX_MESSAGES_PER_RUN="8"))
    harness.produce(topic, 0, 20)
    instance = DagsterInstance.ephemeral()

    (current,) = evaluate_sensor(harness.xmatch, instance, None).run_requests or []
    assert current.run_key == f"{topic}[0]@[0,8)#attempt1"
    in_flight = _launched_as_daemon_would(instance, current)

    # While it works, its successor is planned from its end, with the same partition tag
    # (the queue holds it until the current run ends) …
    (successor,) = evaluate_sensor(harness.xmatch, instance, None).run_requests or []
    assert successor.run_key == f"{topic}[0]@[8,16)#attempt1"
    assert successor.tags[run_tags.PARTITION_KEY] == current.tags[run_tags.PARTITION_KEY]
    # … and only one: with the successor queued too, nothing more is requested.
    queued = _launched_as_daemon_would(instance, successor)
    idle = evaluate_sensor(harness.xmatch, instance, None)
    assert not idle.run_requests
    assert "a run and its successor are queued or running" in _skip_message(idle)

    # The queue runs them in order; each passes its offset check.
    assert execute_request(harness.xmatch, instance, current).success
    instance.delete_run(in_flight.run_id)
    assert execute_request(harness.xmatch, instance, successor).success
    instance.delete_run(queued.run_id)
    assert group_offsets(harness.bootstrap, environment["CONSUMER_GROUP_ID"], topic) == {0: 16}
    log = drive_sensor_and_jobs(harness.xmatch, instance)
    assert not log.failed_runs
    assert group_offsets(harness.bootstrap, environment["CONSUMER_GROUP_ID"], topic) == {0: 20}
    candids = read_candids(harness.bootstrap, output)
    assert len(candids) == len(set(candids)) == 20


def test_a_successor_whose_predecessor_failed_does_nothing_and_the_failed_range_comes_first(
    harness: Harness,
) -> None:
    topic, output = harness.new_topic("sensor-pipe-fail"), harness.new_topic("sensor-pf-out")
    broken = harness.environment(
        topic,
        output,
        XMATCH_MAX_MESSAGES_PER_RUN="8",
        **DEAD_CDS,
    )
    harness.use(broken)
    group = broken["CONSUMER_GROUP_ID"]
    harness.produce(topic, 0, 20)
    instance = DagsterInstance.ephemeral()
    (current,) = evaluate_sensor(harness.xmatch, instance, None).run_requests or []
    in_flight = _launched_as_daemon_would(instance, current)
    (successor,) = evaluate_sensor(harness.xmatch, instance, None).run_requests or []
    assert successor.run_key == f"{topic}[0]@[8,16)#attempt1"
    queued = _launched_as_daemon_would(instance, successor)

    # The predecessor fails (CDS down) …
    assert not execute_request(harness.xmatch, instance, current).success
    instance.report_run_failed(instance.get_run_by_id(in_flight.run_id))  # type: ignore[arg-type]
    # … while its successor is still queued, the sensor plans nothing past it.
    waiting = evaluate_sensor(harness.xmatch, instance, None)
    assert not waiting.run_requests
    assert "the group is at 0: waiting for it to end" in _skip_message(waiting)

    # The successor then starts and fails its offset check, without any effect: no
    # output, no dead letter, no offsets, no ledger entry, no rows.
    refused = execute_request(harness.xmatch, instance, successor)
    assert not refused.success
    failure = str(refused.get_step_failure_events()[0].event_specific_data)
    assert "not at the range's start 8" in failure
    instance.report_run_failed(instance.get_run_by_id(queued.run_id))  # type: ignore[arg-type]
    assert read_committed(harness.bootstrap, output) == []
    assert read_committed(harness.bootstrap, f"{output}.dlq") == []
    assert group_offsets(harness.bootstrap, group, topic) == {0: None}
    assert query(
        harness.database_url,
        "SELECT start_offset, end_offset, status FROM offset_range_ledger WHERE topic = :t",
        t=topic,
    ) == [(0, 8, "failed")]

    # The retry policy redoes the failed range first: never the successor's, never a rewind.
    (retry,) = evaluate_sensor(harness.xmatch, instance, None).run_requests or []
    assert retry.run_key == f"{topic}[0]@[0,8)#attempt2"
    harness.use(broken | {"XMATCH_ENGINE": "local", "XMATCH_CDS_URL": ""})
    assert execute_request(harness.xmatch, instance, retry).success
    log = drive_sensor_and_jobs(harness.xmatch, instance)
    assert not log.failed_runs
    # The successor's range runs again under a fresh key (its first one was used).
    assert [r.run_key for t in log.ticks for r in t.launched] == [
        f"{topic}[0]@[8,16)#attempt2",
        f"{topic}[0]@[16,20)#attempt1",
    ]
    assert group_offsets(harness.bootstrap, group, topic) == {0: 20}
    candids = read_candids(harness.bootstrap, output)
    assert len(candids) == len(set(candids)) == 20
