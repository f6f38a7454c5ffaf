"""Offset ranges as Dagster partitions: the keys, the sensor adding them, a Dagster backfill
over them running in backfill mode, and the asset checks each range's run records (one
failing on purpose)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from dagster import AssetCheckKey, DagsterInstance

from xmatch_pipeline.microbatch.offset_range import OffsetRange
from xmatch_pipeline.microbatch.range_checks import RangeCheckBounds, RangeCounts, evaluate_range
from xmatch_pipeline.orchestration.assets import CROSSMATCH_TABLES
from xmatch_pipeline.orchestration.jobs import add_offset_ranges, xmatch_microbatch
from xmatch_pipeline.orchestration.partitions import BACKFILL_TAG, OFFSET_RANGES_NAME, run_mode
from xmatch_pipeline_tests.pipeline_fixtures import (
    JOB_RESOURCES,
    SmallStream,
    drive_sensor_and_jobs,
    group_offsets,
    pipeline_environment,
    produce_values,
    query,
    read_committed,
    small_stream,
    table_rows,
    unique_group,
    xmatch_resource,
)

pytestmark = pytest.mark.timeout(180)

ALERTS = 12


def test_a_range_key_names_the_range_and_reads_back() -> None:
    offset_range = OffsetRange("ztf_20200101_programid1", 3, 5000, 10000)

    assert offset_range.key == "ztf_20200101_programid1/3/5000-10000"
    assert OffsetRange.from_key(offset_range.key) == offset_range
    assert OffsetRange.from_key("a.b-c_d/0/0-1") == OffsetRange("a.b-c_d", 0, 0, 1)


@pytest.mark.parametrize(
    "key", ["topic/0/5-", "topic/0/5-3", "topic/x/0-5", "topic/0/0-5/extra", "topic[0]@[0,5)"]
)
def test_a_malformed_range_key_is_refused_with_the_expected_form(key: str) -> None:
    with pytest.raises(ValueError, match=r"topic/partition/start-end|start < end"):
        OffsetRange.from_key(key)


def test_splitting_a_range_covers_it_without_overlap() -> None:
    parts = OffsetRange("t", 0, 10, 35).split(10)

    assert [(p.start, p.end) for p in parts] == [(10, 20), (20, 30), (30, 35)]


def test_only_a_dagster_backfill_runs_in_backfill_mode_and_output_is_opt_in() -> None:
    assert run_mode({}) == ("live", True)
    assert run_mode({BACKFILL_TAG: "abc"}) == ("backfill", False)
    assert run_mode({BACKFILL_TAG: "abc", "xmatch/produce_output": "true"}) == ("backfill", True)


def _counts(**changes: object) -> RangeCounts:
    values: dict[str, object] = {
        "messages": 10,
        "decoded": 9,
        "produced": 9,
        "dead_lettered": 1,
        "matched": 6,
        "duplicate_candids": 0,
        "output_produced": True,
        "lag_after": 40,
    }
    return RangeCounts(**(values | changes))  # type: ignore[arg-type]


def _failed(counts: RangeCounts, bounds: RangeCheckBounds | None = None) -> set[str]:
    outcomes = evaluate_range(counts, bounds or RangeCheckBounds())
    return {outcome.name for outcome in outcomes if not outcome.passed}


def test_the_range_checks_pass_on_a_sound_range() -> None:
    outcomes = evaluate_range(_counts(), RangeCheckBounds())

    assert [o.name for o in outcomes] == [
        "offsets_accounted",
        "no_duplicate_candid",
        "match_rate_in_bounds",
        "lag_below_threshold",
    ]
    assert all(o.passed for o in outcomes)
    assert outcomes[0].description == "9 produced + 1 dead-lettered = 10 of 10 messages"


def test_each_range_check_fails_on_what_it_guards() -> None:
    assert _failed(_counts(produced=8)) == {"offsets_accounted"}
    # Without output, the decoded alerts are what is accounted for.
    assert _failed(_counts(produced=0, output_produced=False)) == set()
    assert _failed(_counts(duplicate_candids=2)) == {"no_duplicate_candid"}
    assert _failed(_counts(), RangeCheckBounds(min_match_rate=0.8)) == {"match_rate_in_bounds"}
    assert _failed(_counts(), RangeCheckBounds(max_lag=39)) == {"lag_below_threshold"}
    assert "lag_below_threshold" not in {
        o.name for o in evaluate_range(_counts(lag_after=None), RangeCheckBounds())
    }


@pytest.fixture(scope="module")
def stream(shared_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> SmallStream:
    return small_stream(shared_data_dir, tmp_path_factory.mktemp("partitions-catalog"))


def _environment(
    stream: SmallStream,
    kafka_bootstrap: str,
    database_url: str,
    new_topic: Callable[..., str],
    **extra: str,
) -> dict[str, str]:
    return pipeline_environment(
        kafka_bootstrap=kafka_bootstrap,
        database_url=database_url,
        input_topic=new_topic("partitions-in"),
        output_topic=new_topic("partitions-out"),
        group_id=unique_group(),
        index_dir=stream.index_dir,
        XMATCH_MAX_MESSAGES_PER_RUN="7",
        **extra,
    )


def _check_evaluations(instance: DagsterInstance, name: str) -> dict[str, bool]:
    """The latest evaluation of a check per partition: passed or not."""
    records = instance.event_log_storage.get_asset_check_execution_history(
        AssetCheckKey(CROSSMATCH_TABLES, name), limit=100
    )
    latest: dict[str, bool] = {}
    for record in reversed(records):  # oldest first, so the newest wins
        evaluation = record.evaluation
        assert evaluation is not None
        assert evaluation.partition is not None
        latest[evaluation.partition] = evaluation.passed
    return latest


def test_the_sensor_adds_each_range_as_a_partition_and_its_run_records_the_checks(
    stream: SmallStream,
    kafka_bootstrap: str,
    fresh_database_url: str,
    new_topic: Callable[..., str],
) -> None:
    # A minimum match rate no real range reaches: that check fails on purpose, the others pass.
    environment = _environment(
        stream,
        kafka_bootstrap,
        fresh_database_url,
        new_topic,
        XMATCH_CHECK_MIN_MATCH_RATE="1.0",
    )
    xmatch = xmatch_resource(environment)
    topic = environment["CONSUMER_TOPICS"]
    produce_values(kafka_bootstrap, topic, stream.messages[:ALERTS])
    instance = DagsterInstance.ephemeral()

    log = drive_sensor_and_jobs(xmatch, instance)

    keys = [f"{topic}/0/0-7", f"{topic}/0/7-12"]
    assert [run.success for run in log.runs] == [True, True]
    assert instance.get_dynamic_partitions(OFFSET_RANGES_NAME) == keys
    assert [run.dagster_run.tags["dagster/partition"] for run in log.runs] == keys
    assert instance.get_materialized_partitions(CROSSMATCH_TABLES) == set(keys)
    for name in ("offsets_accounted", "no_duplicate_candid", "lag_below_threshold"):
        assert _check_evaluations(instance, name) == dict.fromkeys(keys, True), name
    assert _check_evaluations(instance, "match_rate_in_bounds") == dict.fromkeys(keys, False)
    # The check failed, the range did not: its data are committed and the group moved on.
    assert group_offsets(kafka_bootstrap, environment["CONSUMER_GROUP_ID"], topic) == {0: ALERTS}


def test_a_dagster_backfill_over_processed_ranges_rewrites_only_the_database(
    stream: SmallStream,
    kafka_bootstrap: str,
    fresh_database_url: str,
    new_topic: Callable[..., str],
) -> None:
    environment = _environment(stream, kafka_bootstrap, fresh_database_url, new_topic)
    xmatch = xmatch_resource(environment)
    topic, output = environment["CONSUMER_TOPICS"], environment["PRODUCER_TOPIC"]
    group = environment["CONSUMER_GROUP_ID"]
    produce_values(kafka_bootstrap, topic, stream.messages[:ALERTS])
    instance = DagsterInstance.ephemeral()
    assert all(run.success for run in drive_sensor_and_jobs(xmatch, instance).runs)
    xmatch_before = table_rows(fresh_database_url, "xmatch", "oid, catid")
    output_before = read_committed(kafka_bootstrap, output)

    # What Dagster's backfill daemon launches for a key: the job for the partition, tagged
    # with the backfill's id; the key alone gives the run config.
    result = xmatch_microbatch.execute_in_process(
        partition_key=f"{topic}/0/0-7",
        tags={BACKFILL_TAG: "backfill1"},
        instance=instance,
        resources=JOB_RESOURCES | {"xmatch": xmatch},
    )

    assert result.success
    assert result.dagster_run.tags["xmatch/partition_key"] == f"{topic}:0"
    assert table_rows(fresh_database_url, "xmatch", "oid, catid") == xmatch_before
    assert read_committed(kafka_bootstrap, output) == output_before
    assert group_offsets(kafka_bootstrap, group, topic) == {0: ALERTS}
    assert query(
        fresh_database_url,
        "SELECT start_offset, end_offset, status FROM offset_range_ledger "
        "WHERE topic = :topic AND mode = 'backfill'",
        topic=topic,
    ) == [(0, 7, "succeeded")]
    # Without output, the decoded alerts account for the range.
    assert _check_evaluations(instance, "offsets_accounted")[f"{topic}/0/0-7"] is True


def test_ranges_never_planned_live_are_added_as_partitions_by_a_job(
    stream: SmallStream,
    kafka_bootstrap: str,
    fresh_database_url: str,
    new_topic: Callable[..., str],
) -> None:
    environment = _environment(stream, kafka_bootstrap, fresh_database_url, new_topic)
    xmatch = xmatch_resource(environment)
    topic = environment["CONSUMER_TOPICS"]
    produce_values(kafka_bootstrap, topic, stream.messages[:ALERTS])
    instance = DagsterInstance.ephemeral()

    result = add_offset_ranges.execute_in_process(
        run_config={
            "ops": {
                "add_offset_range_partitions": {
                    "config": {"topic": topic, "start_offset": 2, "range_size": 4}
                }
            }
        },
        instance=instance,
        resources=JOB_RESOURCES | {"xmatch": xmatch},
    )

    assert result.success
    assert instance.get_dynamic_partitions(OFFSET_RANGES_NAME) == [
        f"{topic}/0/2-6",
        f"{topic}/0/6-10",
        f"{topic}/0/10-12",
    ]
    # Planned by nobody live: the group has not moved.
    assert group_offsets(kafka_bootstrap, environment["CONSUMER_GROUP_ID"], topic) == {0: None}
