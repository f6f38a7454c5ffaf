"""``xmatch_backfill`` over processed ranges: the database stays as it is, output is opt-in,
and the live consumer group's offsets are never touched."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, ExecuteInProcessResult

from xmatch_pipeline.decode.avro_codec import decode_alert
from xmatch_pipeline.microbatch.offset_range import OffsetRange
from xmatch_pipeline.microbatch.planning import PlannedRun
from xmatch_pipeline.orchestration.assets import CROSSMATCH_TABLES, OUTPUT_TOPIC
from xmatch_pipeline.orchestration.jobs import xmatch_backfill, xmatch_microbatch
from xmatch_pipeline.orchestration.resources import XmatchResource
from xmatch_pipeline.orchestration.sensors import run_request
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

pytestmark = pytest.mark.timeout(120)

ALERTS = 12
CROSSMATCH_TABLE_KEYS = {
    "object": "oid",
    "allwise": "oid_catalog",
    "xmatch": "oid, catid",
    "step": "step_id",
}


def _run_backfill(
    xmatch: XmatchResource,
    instance: DagsterInstance,
    topic: str,
    start: int,
    end: int,
    *,
    produce_output: bool,
) -> ExecuteInProcessResult:
    return xmatch_backfill.execute_in_process(
        run_config={
            "ops": {
                "backfill_offset_ranges": {
                    "config": {
                        "ranges": [
                            {
                                "topic": topic,
                                "partition": 0,
                                "start_offset": start,
                                "end_offset": end,
                            }
                        ],
                        "produce_output": produce_output,
                    }
                }
            }
        },
        instance=instance,
        resources=JOB_RESOURCES | {"xmatch": xmatch},
    )


def _dump(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every crossmatch table in full, and the live ledger rows (backfills add their own)."""
    dump = {
        table: table_rows(database_url, table, order_by)
        for table, order_by in CROSSMATCH_TABLE_KEYS.items()
    }
    dump["live ledger"] = query(
        database_url,
        "SELECT * FROM offset_range_ledger WHERE mode = 'live' "
        "ORDER BY topic, partition, start_offset",
    )
    return dump


@pytest.fixture(scope="module")
def stream(shared_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> SmallStream:
    return small_stream(shared_data_dir, tmp_path_factory.mktemp("backfill-catalog"))


@pytest.fixture
def processed(
    stream: SmallStream,
    kafka_bootstrap: str,
    fresh_database_url: str,
    new_topic: Callable[..., str],
) -> tuple[DagsterInstance, dict[str, str]]:
    """A topic whose alerts the live pipeline has processed (two ranges), and its settings."""
    environment = pipeline_environment(
        kafka_bootstrap=kafka_bootstrap,
        database_url=fresh_database_url,
        input_topic=new_topic("backfill-in"),
        output_topic=new_topic("backfill-out"),
        group_id=unique_group(),
        index_dir=stream.index_dir,
        XMATCH_MAX_MESSAGES_PER_RUN="7",
    )
    xmatch = xmatch_resource(environment)
    produce_values(kafka_bootstrap, environment["CONSUMER_TOPICS"], stream.messages[:ALERTS])
    instance = DagsterInstance.ephemeral()
    log = drive_sensor_and_jobs(xmatch, instance)
    assert [run.success for run in log.runs] == [True, True]
    return instance, environment


def test_backfill_without_output_leaves_the_database_and_topics_unchanged(
    processed: tuple[DagsterInstance, dict[str, str]],
    kafka_bootstrap: str,
    fresh_database_url: str,
) -> None:
    instance, environment = processed
    xmatch = xmatch_resource(environment)
    topic, output = environment["CONSUMER_TOPICS"], environment["PRODUCER_TOPIC"]
    group = environment["CONSUMER_GROUP_ID"]
    before = _dump(fresh_database_url)
    assert len(before["xmatch"]) > 0
    output_before = read_committed(kafka_bootstrap, output)
    assert len(output_before) == ALERTS

    result = _run_backfill(xmatch, instance, topic, 0, ALERTS, produce_output=False)

    assert result.success
    assert _dump(fresh_database_url) == before
    assert read_committed(kafka_bootstrap, output) == output_before
    assert group_offsets(kafka_bootstrap, group, topic) == {0: ALERTS}
    assert group_offsets(kafka_bootstrap, f"{group}.backfill", topic) == {0: None}
    assert query(
        fresh_database_url,
        "SELECT status, alerts_in FROM offset_range_ledger "
        "WHERE topic = :topic AND mode = 'backfill'",
        topic=topic,
    ) == [("succeeded", ALERTS)]
    (record,) = instance.fetch_materializations(CROSSMATCH_TABLES, limit=10).records[:1]
    metadata = record.asset_materialization.metadata  # type: ignore[union-attr]
    assert metadata["mode"].value == "backfill"
    assert metadata["alerts_in"].value == ALERTS
    for table in ("object", "allwise", "xmatch"):
        assert metadata[f"{table}_inserted"].value == 0
        assert metadata[f"{table}_updated"].value == 0
    # Nothing produced, so the output topic has no new materialization from the backfill.
    output_events = instance.fetch_materializations(OUTPUT_TOPIC, limit=10).records
    assert {e.asset_materialization.metadata["mode"].value for e in output_events} == {"live"}  # type: ignore[union-attr]


def test_backfill_with_output_produces_again_but_never_moves_the_live_offsets(
    processed: tuple[DagsterInstance, dict[str, str]],
    kafka_bootstrap: str,
    fresh_database_url: str,
) -> None:
    instance, environment = processed
    xmatch = xmatch_resource(environment)
    topic, output = environment["CONSUMER_TOPICS"], environment["PRODUCER_TOPIC"]
    group = environment["CONSUMER_GROUP_ID"]
    before = _dump(fresh_database_url)
    first = read_committed(kafka_bootstrap, output)

    result = _run_backfill(xmatch, instance, topic, 2, 9, produce_output=True)

    assert result.success
    assert _dump(fresh_database_url) == before
    received = read_committed(kafka_bootstrap, output)
    assert received[: len(first)] == first
    again = received[len(first) :]
    # The same enriched alerts, byte for byte, with their keys, in their own transaction.
    assert [(m.key, m.value) for m in again] == [(m.key, m.value) for m in first[2:9]]
    assert len({decode_alert(m.value).candid for m in again}) == len(again) == 7
    assert group_offsets(kafka_bootstrap, group, topic) == {0: ALERTS}
    assert group_offsets(kafka_bootstrap, f"{group}.backfill", topic) == {0: None}


def test_backfill_of_an_unprocessed_range_leaves_the_live_group_where_it_was(
    stream: SmallStream,
    kafka_bootstrap: str,
    fresh_database_url: str,
    new_topic: Callable[..., str],
) -> None:
    environment = pipeline_environment(
        kafka_bootstrap=kafka_bootstrap,
        database_url=fresh_database_url,
        input_topic=new_topic("backfill-fresh-in"),
        output_topic=new_topic("backfill-fresh-out"),
        group_id=unique_group(),
        index_dir=stream.index_dir,
    )
    xmatch = xmatch_resource(environment)
    topic = environment["CONSUMER_TOPICS"]
    produce_values(kafka_bootstrap, topic, stream.messages[:5])
    instance = DagsterInstance.ephemeral()

    assert _run_backfill(xmatch, instance, topic, 0, 5, produce_output=True).success

    assert len(read_committed(kafka_bootstrap, environment["PRODUCER_TOPIC"])) == 5
    assert group_offsets(kafka_bootstrap, environment["CONSUMER_GROUP_ID"], topic) == {0: None}
    # The live pipeline still owes the range: the sensor requests it from the start.
    log = drive_sensor_and_jobs(xmatch, instance)
    assert [r.run_key for t in log.ticks for r in t.launched] == [f"{topic}[0]@[0,5)#attempt1"]
    assert group_offsets(kafka_bootstrap, environment["CONSUMER_GROUP_ID"], topic) == {0: 5}


def test_a_live_run_over_a_processed_range_is_refused_without_rewinding_the_group(
    processed: tuple[DagsterInstance, dict[str, str]],
    kafka_bootstrap: str,
    fresh_database_url: str,
) -> None:
    """Launching xmatch_microbatch (not xmatch_backfill) for an old range would commit the
    group back to its end: every alert after it would be output twice."""
    instance, environment = processed
    xmatch = xmatch_resource(environment)
    topic, output = environment["CONSUMER_TOPICS"], environment["PRODUCER_TOPIC"]
    group = environment["CONSUMER_GROUP_ID"]
    before = _dump(fresh_database_url)
    request = run_request(PlannedRun(OffsetRange(topic, 0, 0, 7), 1, "operator"))

    result = xmatch_microbatch.execute_in_process(
        run_config=request.run_config,
        instance=instance,
        resources=JOB_RESOURCES | {"xmatch": xmatch},
        raise_on_error=False,
    )

    assert not result.success
    failure = str(result.get_step_failure_events()[0].event_specific_data)
    assert "xmatch_backfill" in failure
    assert group_offsets(kafka_bootstrap, group, topic) == {0: ALERTS}
    assert len(read_committed(kafka_bootstrap, output)) == ALERTS
    assert _dump(fresh_database_url) == before
    assert not drive_sensor_and_jobs(xmatch, instance).runs
