"""End to end on the real ZTF alerts: sensor → xmatch_microbatch runs → Kafka + PostgreSQL.

The catalog holds the real ALLWISE rows plus synthetic sources placed at known distances
from some real alerts (inside and outside 1″), so the expected matches are known by
construction and checked against an independent brute force with astropy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from dagster import DagsterInstance
from fastavro.schema import to_parsing_canonical_form

from xmatch_pipeline.decode.avro_codec import DecodedAlert, decode_alert
from xmatch_pipeline.devtools.cds_server.catalogs import ServedCatalogs
from xmatch_pipeline.devtools.cds_server.server import CdsXmatchServer
from xmatch_pipeline.match.catalogs.allwise import CDS_COLUMNS, DATABASE_COLUMNS
from xmatch_pipeline.orchestration import run_tags
from xmatch_pipeline.orchestration.assets import CROSSMATCH_TABLES, DEAD_LETTER_TOPIC, OUTPUT_TOPIC
from xmatch_pipeline.publish.enriched_alert import (
    XMATCHES_FIELD,
    appended_fields,
    xmatches_field,
)
from xmatch_pipeline_tests.pipeline_fixtures import (
    allwise_rows,
    build_allwise_catalog,
    drive_sensor_and_jobs,
    fresh_database,
    group_offsets,
    high_watermarks,
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

RADIUS_ARCSEC = 1.0
MAX_MESSAGES_PER_RUN = 20
#: Distances (arcsec) of synthetic sources from chosen alerts; 1.5″ must never match.
INSIDE_OFFSETS = (0.2, 0.3, 0.45, 0.6, 0.75, 0.9)
OUTSIDE_OFFSET = 1.5


def _offset_position(ra: float, dec: float, arcsec: float, angle_deg: float) -> tuple[float, float]:
    """The point ``arcsec`` away from (ra, dec) towards position angle ``angle_deg``."""
    moved = SkyCoord(ra * u.deg, dec * u.deg).directional_offset_by(
        angle_deg * u.deg, arcsec * u.arcsec
    )
    return float(moved.ra.deg), float(moved.dec.deg)


def _synthetic_sources(alerts: list[DecodedAlert]) -> list[dict[str, str]]:
    """Sources near some alerts: one inside 1″, some also a farther decoy, some only outside."""
    sources: list[dict[str, str]] = []
    for index, alert in enumerate(alerts):
        placements: list[float] = []
        if index % 3 == 0:
            placements.append(INSIDE_OFFSETS[(index // 3) % len(INSIDE_OFFSETS)])
            if index % 2 == 0:
                placements.append(0.95)  # a farther source inside: best must be the nearest
        elif index % 3 == 1 and index % 2 == 1:
            placements.append(OUTSIDE_OFFSET)
        for number, offset in enumerate(placements):
            ra, dec = _offset_position(alert.ra, alert.dec, offset, 37.0 * index + 90 * number)
            values = {
                "AllWISE": f"J-synthetic-{index:03d}-{number}",
                "RAJ2000": repr(ra),
                "DEJ2000": repr(dec),
            }
            for position, column in enumerate(CDS_COLUMNS[3:]):
                # Every fourth source has no W4 error, as 584 real ALLWISE rows.
                missing = column == "e_W4mag" and index % 4 == 0
                values[column] = "" if missing else repr(10.0 + index / 7.0 + position / 3.0)
            sources.append(values)
    return sources


def _canonical(schema: dict[str, object]) -> str:
    """Avro's parsing canonical form: equal for schemas that read and write the same data."""
    return str(to_parsing_canonical_form(schema))


def _parsed(row: dict[str, str]) -> dict[str, object]:
    return {
        column: (
            row[column] if column == "AllWISE" else (float(row[column]) if row[column] else None)
        )
        for column in CDS_COLUMNS
    }


def _brute_force_best(
    alerts: list[DecodedAlert], catalog: list[dict[str, str]]
) -> dict[int, dict[str, object]]:
    """candid → the nearest catalog row within 1″ with its angDist, by astropy."""
    sources = SkyCoord(
        np.array([float(row["RAJ2000"]) for row in catalog]) * u.deg,
        np.array([float(row["DEJ2000"]) for row in catalog]) * u.deg,
    )
    expected: dict[int, dict[str, object]] = {}
    for alert in alerts:
        separations = SkyCoord(alert.ra * u.deg, alert.dec * u.deg).separation(sources).arcsec
        nearest = int(np.argmin(separations))
        if separations[nearest] <= RADIUS_ARCSEC:
            expected[alert.candid] = {"angDist": float(separations[nearest])} | _parsed(
                catalog[nearest]
            )
    return expected


@dataclass(frozen=True)
class RealStream:
    values: list[bytes]
    alerts: list[DecodedAlert]
    catalog: list[dict[str, str]]
    index_dir: Path


@pytest.fixture(scope="module")
def real_stream(
    ztf_alert_files: list[Path], shared_data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> RealStream:
    values = [path.read_bytes() for path in ztf_alert_files]
    alerts = [
        decode_alert(value, source=str(path))
        for value, path in zip(values, ztf_alert_files, strict=True)
    ]
    catalog = allwise_rows(shared_data_dir) + _synthetic_sources(alerts)
    index_dir = build_allwise_catalog(catalog, tmp_path_factory.mktemp("e2e-catalog"))
    return RealStream(values, alerts, catalog, index_dir)


@pytest.fixture
def engine_settings(
    request: pytest.FixtureRequest, real_stream: RealStream
) -> Iterator[dict[str, str]]:
    """The local engine, or CDS (the default engine, with its match cache) served over the
    same catalog by the local cds-server."""
    if request.param == "local":
        yield {}
        return
    with CdsXmatchServer(ServedCatalogs({"allwise": real_stream.index_dir})) as server:
        yield {"XMATCH_ENGINE": "cds", "XMATCH_CDS_URL": server.url, "XMATCH_LOCAL_CATALOGS": ""}


@pytest.fixture
def own_database_url(database_url: str) -> Iterator[str]:
    with fresh_database(database_url) as url:
        yield url


@pytest.mark.parametrize("engine_settings", ["local", "cds"], indirect=True)
def test_real_alerts_through_sensor_and_job_exactly_once(
    *,
    real_stream: RealStream,
    engine_settings: dict[str, str],
    kafka_bootstrap: str,
    own_database_url: str,
    new_topic: Callable[..., str],
) -> None:
    fresh_database_url = own_database_url
    alerts = real_stream.alerts
    assert len(alerts) == 86
    assert {a.schema_version for a in alerts} == {"3.3", "4.01"}
    expected = _brute_force_best(alerts, real_stream.catalog)
    # The construction gives matches at every chosen distance, and unmatched alerts too.
    assert 20 <= len(expected) < len(alerts)
    input_topic = new_topic("e2e-in", partitions=2)
    output_topic = new_topic("e2e-out")
    metrics_topic = new_topic("e2e-metrics")
    group = unique_group()
    xmatch = xmatch_resource(
        pipeline_environment(
            kafka_bootstrap=kafka_bootstrap,
            database_url=fresh_database_url,
            input_topic=input_topic,
            output_topic=output_topic,
            group_id=group,
            index_dir=real_stream.index_dir,
            XMATCH_MAX_MESSAGES_PER_RUN=str(MAX_MESSAGES_PER_RUN),
            METRICS_TOPIC=metrics_topic,
        )
        | engine_settings,
    )
    produce_values(
        kafka_bootstrap,
        input_topic,
        [(alert.object_id, value) for alert, value in zip(alerts, real_stream.values, strict=True)],
        partitions=2,
    )

    instance = DagsterInstance.ephemeral()
    log = drive_sensor_and_jobs(xmatch, instance)

    # Runs: 43 alerts per partition in ranges of at most 20, one range per partition a tick.
    assert not log.failed_runs, [run.all_events for run in log.failed_runs][:1]
    assert len(log.runs) == 6
    launched = [request for tick in log.ticks for request in tick.launched]
    ranges = sorted(
        (
            r.tags[run_tags.PARTITION],
            int(r.tags[run_tags.START_OFFSET]),
            int(r.tags[run_tags.END_OFFSET]),
        )
        for r in launched
    )
    assert ranges == [
        (str(p), start, end) for p in (0, 1) for start, end in ((0, 20), (20, 40), (40, 43))
    ]
    assert all(r.run_key and r.run_key.endswith("#attempt1") for r in launched)
    assert json.loads(log.cursor or "{}") == {
        f"{input_topic}:{p}": {"start": 40, "end": 43, "attempt": 1} for p in (0, 1)
    }
    last = log.ticks[-1].result
    assert not last.run_requests
    assert last.skip_reason is not None
    assert "no lag" in (last.skip_reason.skip_message or "")
    # Lag observations: all of it before the first run, none after the last.
    first_observation = log.ticks[0].result.asset_events[0]
    assert first_observation.metadata["lag_total"].value == 86
    assert last.asset_events[0].metadata["lag_total"].value == 0

    # Output: every alert exactly once, read_committed, key objectId, writer schema + xmatches.
    received = read_committed(kafka_bootstrap, output_topic)
    by_candid: dict[int, DecodedAlert] = {}
    for message in received:
        output = decode_alert(message.value)
        assert output.candid not in by_candid, f"candid {output.candid} produced twice"
        by_candid[output.candid] = output
        assert message.key == output.object_id.encode()
    assert sorted(by_candid) == sorted(a.candid for a in alerts)
    for alert in alerts:
        output = by_candid[alert.candid]
        assert output.schema_version == alert.schema_version
        output_schema = output.schema.as_json()
        appended = appended_fields("double")
        assert output_schema["fields"][-len(appended) :] == appended
        assert appended[-1] == xmatches_field("double")
        without_xmatches = output_schema | {"fields": output_schema["fields"][: -len(appended)]}
        assert _canonical(without_xmatches) == _canonical(alert.schema.as_json())
        assert bytes(output.payload).startswith(bytes(alert.payload)), "the alert was altered"
        xmatches = output.record[XMATCHES_FIELD]
        want = expected.get(alert.candid)
        if want is None:
            assert xmatches is None, alert.candid
            continue
        got = xmatches["allwise"]
        assert set(got) == {"angDist", *CDS_COLUMNS}, "internal columns leaked"
        assert got["AllWISE"] == want["AllWISE"]
        assert math.isclose(got["angDist"], float(want["angDist"]), abs_tol=1e-3)  # type: ignore[arg-type]
        for column in CDS_COLUMNS[1:]:
            assert got[column] == want[column], (alert.candid, column)  # bit for bit, or None
    assert any(
        m["allwise"]["e_W4mag"] is None
        for m in (by_candid[c].record[XMATCHES_FIELD] for c in expected)
    )

    # The input group's offsets are the high watermarks.
    assert (
        group_offsets(kafka_bootstrap, group, input_topic)
        == high_watermarks(kafka_bootstrap, input_topic)
        == {0: 43, 1: 43}
    )

    # Database: objects, the nearest match per object, ALLWISE rows in double precision.
    objects = {row[0] for row in table_rows(fresh_database_url, "object", "oid")}
    assert objects == {alert.object_id for alert in alerts}
    nearest_by_object: dict[str, dict[str, object]] = {}
    for alert in alerts:
        want = expected.get(alert.candid)
        held = nearest_by_object.get(alert.object_id)
        if want is not None and (held is None or want["angDist"] < held["angDist"]):  # type: ignore[operator]
            nearest_by_object[alert.object_id] = want
    xmatch_rows = query(fresh_database_url, "SELECT oid, catid, oid_catalog, dist FROM xmatch")
    assert {row[0] for row in xmatch_rows} == set(nearest_by_object)
    for oid, catid, oid_catalog, dist in xmatch_rows:
        want = nearest_by_object[oid]
        assert (catid, oid_catalog) == ("allwise", want["AllWISE"])
        assert math.isclose(dist, want["angDist"], abs_tol=1e-3)  # type: ignore[arg-type]
    columns = [DATABASE_COLUMNS[c] for c in CDS_COLUMNS]
    allwise_stored = {
        row[0]: row
        for row in query(fresh_database_url, f"SELECT {', '.join(columns)} FROM allwise")
    }
    matched_sources = {str(m["AllWISE"]): m for m in expected.values()}
    assert set(allwise_stored) == set(matched_sources)
    for source_id, row in allwise_stored.items():
        assert list(row[1:]) == [matched_sources[source_id][c] for c in CDS_COLUMNS[1:]]
    types = dict(
        query(
            fresh_database_url,
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'allwise' AND column_name <> 'oid_catalog'",
        )
    )
    assert set(types.values()) == {"double precision"}
    assert query(fresh_database_url, "SELECT step_id, version FROM step") == [
        ("xmatch-test", "test")
    ]
    ledger = query(
        fresh_database_url,
        "SELECT status, attempts, alerts_in, matched FROM offset_range_ledger "
        "WHERE topic = :topic AND mode = 'live'",
        topic=input_topic,
    )
    assert len(ledger) == 6
    assert {(s, a) for s, a, _, _ in ledger} == {("succeeded", 1)}
    assert sum(row[2] for row in ledger) == 86
    assert sum(row[3] for row in ledger) == len(expected)

    # Metrics in the UI: one materialization per run and asset, numbers adding up.
    outputs = instance.fetch_materializations(OUTPUT_TOPIC, limit=100).records
    tables = instance.fetch_materializations(CROSSMATCH_TABLES, limit=100).records
    assert len(outputs) == len(tables) == 6
    metadata = [record.asset_materialization.metadata for record in outputs]  # type: ignore[union-attr]
    assert sum(m["alerts_in"].value for m in metadata) == 86  # type: ignore[misc]
    assert sum(m["matched"].value for m in metadata) == len(expected)  # type: ignore[misc]
    assert all("lag_after" in m and "seconds_crossmatch" in m for m in metadata)
    assert all(0.0 <= m["match_rate"].value <= 1.0 for m in metadata)  # type: ignore[operator]

    # With CDS the match cache answers for the second alert of ZTF20aajcdad (its first
    # alert's source is stored by then); the answer above is the same as a new crossmatch.
    served = sum(m["served_from_cache"].value for m in metadata)  # type: ignore[misc]
    sent = sum(m["sent_to_engine"].value for m in metadata)  # type: ignore[misc]
    assert (served, sent) == ((1, 85) if engine_settings else (0, 86))

    # The original's metrics message, one per run, naming every alert once.
    reports = [json.loads(m.value) for m in read_committed(kafka_bootstrap, metrics_topic)]
    assert len(reports) == 6
    assert sum(report["n_messages"] for report in reports) == 86
    assert sorted(c for report in reports for c in report["candid"]) == sorted(by_candid)
    assert {report["source"] for report in reports} == {"xmatch-test"}


def test_an_undecodable_message_is_dead_lettered_and_never_blocks_the_partition(
    *,
    shared_data_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    kafka_bootstrap: str,
    fresh_database_url: str,
    new_topic: Callable[..., str],
) -> None:
    stream = small_stream(shared_data_dir, tmp_path_factory.mktemp("dead-letter-catalog"))
    input_topic, output_topic = new_topic("e2e-dlq-in"), new_topic("e2e-dlq-out")
    dead_letters = new_topic("e2e-dlq")
    environment = pipeline_environment(
        kafka_bootstrap=kafka_bootstrap,
        database_url=fresh_database_url,
        input_topic=input_topic,
        output_topic=output_topic,
        group_id=unique_group(),
        index_dir=stream.index_dir,
        XMATCH_DEAD_LETTER_TOPIC=dead_letters,
    )
    xmatch = xmatch_resource(environment)
    garbage = b"not an avro container"
    good = stream.messages[:4]
    produce_values(kafka_bootstrap, input_topic, [*good[:2], ("broken", garbage), *good[2:]])
    instance = DagsterInstance.ephemeral()

    log = drive_sensor_and_jobs(xmatch, instance)

    assert [run.success for run in log.runs] == [True]
    received = read_committed(kafka_bootstrap, output_topic)
    assert sorted(decode_alert(m.value).object_id for m in received) == sorted(o for o, _ in good)
    (letter,) = read_committed(kafka_bootstrap, dead_letters)
    assert (letter.key, letter.value) == (b"broken", garbage)
    assert letter.headers["origin.topic"] == input_topic.encode()
    assert letter.headers["origin.offset"] == b"2"
    assert letter.headers["reason"]
    assert group_offsets(kafka_bootstrap, environment["CONSUMER_GROUP_ID"], input_topic) == {0: 5}
    assert query(
        fresh_database_url,
        "SELECT alerts_in, dead_lettered FROM offset_range_ledger WHERE topic = :topic",
        topic=input_topic,
    ) == [(5, 1)]
    (event,) = instance.fetch_materializations(DEAD_LETTER_TOPIC, limit=5).records
    assert event.asset_materialization.metadata["dead_lettered"].value == 1  # type: ignore[union-attr]
