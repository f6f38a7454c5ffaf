"""``xmatch_backfill`` over processed ranges: the database stays as it is, output is opt-in,
the live consumer group's offsets are never touched, and a new catalog release is matched
again and replaces the old release's rows."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, ExecuteInProcessResult

from xmatch_pipeline.decode.avro_codec import decode_alert
from xmatch_pipeline.match import catalogs
from xmatch_pipeline.match.catalogs import allwise
from xmatch_pipeline.match.local.index import index_build_id
from xmatch_pipeline.microbatch.offset_range import OffsetRange
from xmatch_pipeline.microbatch.planning import PlannedRun
from xmatch_pipeline.orchestration.assets import CROSSMATCH_TABLES, OUTPUT_TOPIC
from xmatch_pipeline.orchestration.jobs import xmatch_backfill, xmatch_microbatch
from xmatch_pipeline.orchestration.resources import XmatchResource
from xmatch_pipeline.orchestration.sensors import run_request
from xmatch_pipeline_tests.pipeline_fixtures import (
    JOB_RESOURCES,
    SmallStream,
    allwise_rows,
    build_allwise_catalog,
    drive_sensor_and_jobs,
    fresh_database,
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


NEW_RELEASE = "AllWISE (re-release for a test)"


@pytest.fixture
def new_allwise_release(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """ALLWISE's module declaring another release, as after an upgrade of the catalog."""
    monkeypatch.setattr(allwise, "CATALOG", replace(allwise.CATALOG, release=NEW_RELEASE))
    catalogs.registered_catalogs.cache_clear()
    yield NEW_RELEASE
    monkeypatch.undo()
    catalogs.registered_catalogs.cache_clear()


def _allwise_matches(database_url: str) -> dict[str, tuple[Any, ...]]:
    rows = query(
        database_url,
        "SELECT oid, oid_catalog, release, engine, index_build FROM xmatch "
        "WHERE catid = 'allwise' ORDER BY oid",
    )
    return {row[0]: tuple(row[1:]) for row in rows}


def test_a_backfill_after_a_release_change_matches_again_and_rewrites_the_rows(
    *,
    stream: SmallStream,
    shared_data_dir: Path,
    tmp_path: Path,
    kafka_bootstrap: str,
    database_url: str,
    new_topic: Callable[..., str],
    request: pytest.FixtureRequest,
) -> None:
    """Live runs store release R1 (the match cache on); a backfill with R1 serves every
    matched object from the cache and changes nothing; after the module declares R2, over a
    catalog whose sources have new designations, a backfill asks the engine for every
    alert again and every row carries R2 and the new source."""
    with fresh_database(database_url) as url:
        live = pipeline_environment(
            kafka_bootstrap=kafka_bootstrap,
            database_url=url,
            input_topic=new_topic("release-in"),
            output_topic=new_topic("release-out"),
            group_id=unique_group(),
            index_dir=stream.index_dir,
            XMATCH_CATALOGS='[{"name": "allwise"}]',
            XMATCH_MATCH_CACHE="true",
        )
        topic = live["CONSUMER_TOPICS"]
        produce_values(kafka_bootstrap, topic, stream.messages[:ALERTS])
        instance = DagsterInstance.ephemeral()
        assert all(
            run.success for run in drive_sensor_and_jobs(xmatch_resource(live), instance).runs
        )
        first = _allwise_matches(url)
        old_build = index_build_id(stream.index_dir)
        matching = sum(1 for number in range(ALERTS) if number % 3 != 2)
        assert len(first) == matching
        assert {row[1:] for row in first.values()} == {
            (allwise.CATALOG.release, "local", old_build)
        }

        # Same release: the stored matches are served, nothing is rewritten.
        same = _run_backfill(
            xmatch_resource(live), instance, topic, 0, ALERTS, produce_output=False
        )
        assert same.success
        metadata = _materialization_metadata(instance)
        assert metadata["served_from_cache"].value == matching
        assert metadata["xmatch_updated"].value == 0
        assert _allwise_matches(url) == first

        # The new release: every source renamed, so a row served from R1 would show it.
        renamed = [
            row | {"AllWISE": row["AllWISE"] + "-r2"} for row in allwise_rows(shared_data_dir)
        ]
        new_index = build_allwise_catalog(renamed, tmp_path / "allwise-r2")
        new_build = index_build_id(new_index)
        assert new_build != old_build
        request.getfixturevalue("new_allwise_release")
        upgraded = live | {"XMATCH_LOCAL_CATALOGS": f"allwise={new_index}"}

        result = _run_backfill(
            xmatch_resource(upgraded), instance, topic, 0, ALERTS, produce_output=False
        )

        assert result.success
        metadata = _materialization_metadata(instance)
        assert metadata["served_from_cache"].value == 0
        assert metadata["sent_to_engine"].value == ALERTS
        assert metadata["xmatch_updated"].value == matching
        second = _allwise_matches(url)
        assert set(second) == set(first)
        for oid, (source, release, engine, build) in second.items():
            assert (release, engine, build) == (NEW_RELEASE, "local", new_build)
            assert source == first[oid][0] + "-r2"
        stored = {row[0] for row in query(url, "SELECT oid_catalog FROM allwise")}
        assert {row[0] for row in second.values()} <= stored


def _materialization_metadata(instance: DagsterInstance) -> dict[str, Any]:
    """The newest materialization of the crossmatch tables' metadata."""
    record = instance.fetch_materializations(CROSSMATCH_TABLES, limit=1).records[0]
    return dict(record.asset_materialization.metadata)  # type: ignore[union-attr]
