"""LSST end to end on Rubin's own sample alerts: a deployment reading a ZTF topic and an
LSST topic, through the sensor and ``xmatch_microbatch`` on the real Kafka and PostgreSQL;
and the schema-registry path, through the runner, against a registry that answers and one
that does not.

Rubin's samples (one per schema version, from the installed lsst-alert-packet) all sit at
one position; the catalog gets a source near it, and variants of each sample (other ids
near 2**62, other positions) get sources inside and outside 1″, so matches happen, some
do not, and every one is checked against an astropy brute force.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import astropy.units as u
import fastavro
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from dagster import DagsterInstance

from xmatch_pipeline.decode.alert_schema import schema_from_text
from xmatch_pipeline.decode.avro_codec import decode_alert
from xmatch_pipeline.decode.lsst_schemas import (
    PackagedLsstSchemas,
    SchemaRegistryUnavailableError,
    packaged_lsst_schemas,
)
from xmatch_pipeline.decode.wire_format import split_wire_message, wire_message
from xmatch_pipeline.devtools.alert_tools.tail import tail_summaries
from xmatch_pipeline.match.catalogs.allwise import CDS_COLUMNS
from xmatch_pipeline.microbatch.offset_range import OffsetRange
from xmatch_pipeline.publish.dead_letter import HEADER_ERROR_TYPE, HEADER_REASON
from xmatch_pipeline.publish.enriched_alert import XMATCHES_FIELD
from xmatch_pipeline.publish.lsst_output import output_schema_for_fixed_id, output_subject
from xmatch_pipeline.services import PipelineServices
from xmatch_pipeline.settings import load_settings
from xmatch_pipeline_tests.lsst_samples import SampleAlert, sample_alerts, variant
from xmatch_pipeline_tests.pipeline_fixtures import (
    allwise_rows,
    build_allwise_catalog,
    drive_sensor_and_jobs,
    fresh_database,
    group_offsets,
    pipeline_environment,
    produce_values,
    query,
    read_committed,
    unique_group,
    xmatch_resource,
)
from xmatch_pipeline_tests.schema_registry_server import SchemaRegistryServer

pytestmark = pytest.mark.timeout(240)

RADIUS_ARCSEC = 1.0
ZTF_ALERTS = 10
#: Ids of the variants: above 2**62, where a float64 would lose the last digits.
FIRST_VARIANT_ID = 2**62 + 12_345


def _offset(ra: float, dec: float, arcsec: float, angle_deg: float) -> tuple[float, float]:
    moved = SkyCoord(ra * u.deg, dec * u.deg).directional_offset_by(
        angle_deg * u.deg, arcsec * u.arcsec
    )
    return float(moved.ra.deg), float(moved.dec.deg)


def _source(name: str, ra: float, dec: float, index: int) -> dict[str, str]:
    row = {"AllWISE": name, "RAJ2000": repr(ra), "DEJ2000": repr(dec)}
    for position, column in enumerate(CDS_COLUMNS[3:]):
        row[column] = repr(11.0 + index / 9.0 + position / 4.0)
    return row


@dataclass(frozen=True)
class LsstStream:
    alerts: list[SampleAlert]
    catalog: list[dict[str, str]]
    index_dir: Path

    def expected(self) -> dict[int, dict[str, Any]]:
        """diaSourceId → the nearest source within 1″ (astropy), with angDist."""
        sources = SkyCoord(
            np.array([float(r["RAJ2000"]) for r in self.catalog]) * u.deg,
            np.array([float(r["DEJ2000"]) for r in self.catalog]) * u.deg,
        )
        expected: dict[int, dict[str, Any]] = {}
        for alert in self.alerts:
            source = alert.record["diaSource"]
            dec = source.get("dec", source.get("decl"))
            separations = SkyCoord(source["ra"] * u.deg, dec * u.deg).separation(sources).arcsec
            nearest = int(np.argmin(separations))
            if separations[nearest] <= RADIUS_ARCSEC:
                expected[source["diaSourceId"]] = {
                    "angDist": float(separations[nearest]),
                    "AllWISE": self.catalog[nearest]["AllWISE"],
                    "RAJ2000": float(self.catalog[nearest]["RAJ2000"]),
                }
        return expected


@pytest.fixture(scope="module")
def lsst_stream(shared_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LsstStream:
    samples = sample_alerts()
    alerts = list(samples)
    first = samples[0].record["diaSource"]
    catalog = allwise_rows(shared_data_dir)
    ra, dec = _offset(first["ra"], first.get("dec", first.get("decl")), 0.4, 60.0)
    catalog.append(_source("J-lsst-sample", ra, dec, 0))
    for index, sample in enumerate(samples):
        for copy in range(2):
            number = 2 * index + copy
            centre = (15.0 + 3.0 * number, -40.0 + 1.5 * number)
            alerts.append(
                variant(
                    sample,
                    dia_source_id=FIRST_VARIANT_ID + number,
                    dia_object_id=FIRST_VARIANT_ID + 1_000 + number,
                    ra=centre[0],
                    dec=centre[1],
                )
            )
            # The first copy has a source at 0.1″ … 0.9″, the second one only at 1.3″.
            distance = 0.1 + 0.8 * index / len(samples) if copy == 0 else 1.3
            catalog.append(
                _source(f"J-lsst-{number:02d}", *_offset(*centre, distance, 33.0), number)
            )
    index_dir = build_allwise_catalog(catalog, tmp_path_factory.mktemp("lsst-catalog"))
    return LsstStream(alerts, catalog, index_dir)


def split_source_ids(stream: LsstStream) -> list[int]:
    return [alert.record["diaSource"]["diaSourceId"] for alert in stream.alerts]


def _bad_lsst_messages() -> list[tuple[bytes, str]]:
    """Undecodable LSST messages and the reason each must be dead-lettered with."""
    latest = sample_alerts()[-1]
    return [
        (wire_message(4_242, latest.payload), "unknown LSST schema id 4242"),
        (b"\x07" + latest.value[1:], "magic byte 0x07, expected 0x00"),
        (latest.value[: len(latest.value) // 2], f"do not match schema id {latest.schema_id}"),
        (latest.value[:4], "truncated Confluent wire message: 4 bytes"),
    ]


def _check_lsst_outputs(
    received: list[Any], lsst_stream: LsstStream, output_schema: Callable[[int], dict[str, Any]]
) -> None:
    expected = lsst_stream.expected()
    assert len(received) == len(lsst_stream.alerts)
    seen: list[int] = []
    for message in received:
        output_id, payload = split_wire_message(message.value)
        record = fastavro.schemaless_reader(io.BytesIO(bytes(payload)), output_schema(output_id))
        assert isinstance(record, dict)
        source = record["diaSource"]
        seen.append(source["diaSourceId"])
        object_id = source["diaObjectId"] or record["diaObject"]["diaObjectId"]
        assert message.key == str(object_id).encode()  # key diaObjectId, exact
        want = expected.get(source["diaSourceId"])
        got = record[XMATCHES_FIELD]
        if want is None:
            assert got is None, source["diaSourceId"]
            continue
        allwise = got["allwise"]
        assert allwise["AllWISE"] == want["AllWISE"]
        assert allwise["RAJ2000"] == want["RAJ2000"]  # bit for bit
        assert math.isclose(allwise["angDist"], want["angDist"], abs_tol=1e-3)
    assert sorted(seen) == sorted(a.record["diaSource"]["diaSourceId"] for a in lsst_stream.alerts)


@pytest.fixture
def own_database_url(database_url: str) -> Iterator[str]:
    with fresh_database(database_url) as url:
        yield url


def test_a_deployment_reading_ztf_and_lsst_topics_matches_both_exactly_once(
    *,
    lsst_stream: LsstStream,
    ztf_alert_files: list[Path],
    kafka_bootstrap: str,
    own_database_url: str,
    new_topic: Callable[..., str],
) -> None:
    ztf_topic = new_topic("mixed-ztf")
    lsst_topic = new_topic("mixed-lsst", partitions=2)
    output_topic = new_topic("mixed-out")
    dead_letter_topic = new_topic("mixed-dlq")
    group = unique_group("mixed")
    xmatch = xmatch_resource(
        pipeline_environment(
            kafka_bootstrap=kafka_bootstrap,
            database_url=own_database_url,
            input_topic=f"{ztf_topic},{lsst_topic}",
            output_topic=output_topic,
            group_id=group,
            index_dir=lsst_stream.index_dir,
            XMATCH_DEAD_LETTER_TOPIC=dead_letter_topic,
            XMATCH_TOPIC_SURVEYS=f"{re.escape(lsst_topic)}=lsst",
            XMATCH_MAX_MESSAGES_PER_RUN="12",
            XMATCH_MATCH_CACHE="true",  # looked up per survey: the same oid text never mixes
        ),
    )
    ztf_values = [path.read_bytes() for path in ztf_alert_files[:ZTF_ALERTS]]
    ztf_alerts = [decode_alert(value) for value in ztf_values]
    produce_values(
        kafka_bootstrap,
        ztf_topic,
        [(a.object_id, v) for a, v in zip(ztf_alerts, ztf_values, strict=True)],
    )
    bad = _bad_lsst_messages()
    lsst_messages: list[tuple[str | None, bytes | None]] = [
        (None, alert.value) for alert in lsst_stream.alerts
    ]
    lsst_messages[7:7] = [(f"bad-{n}", value) for n, (value, _) in enumerate(bad)]
    produce_values(kafka_bootstrap, lsst_topic, lsst_messages, partitions=2)

    log = drive_sensor_and_jobs(xmatch, DagsterInstance.ephemeral())
    assert not log.failed_runs, [run.all_events for run in log.failed_runs][:1]

    # LSST: in Rubin's framing, under the documented output ids, matched as brute force says.
    received = read_committed(kafka_bootstrap, output_topic)
    lsst_out = [m for m in received if m.value[:1] == b"\x00"]
    schemas = PackagedLsstSchemas()
    _check_lsst_outputs(
        lsst_out,
        lsst_stream,
        lambda output_id: output_schema_for_fixed_id(output_id, schemas).parsed,
    )
    assert {split_wire_message(m.value)[0] for m in lsst_out} == {
        1_000_000 + schema_id for schema_id in schemas.known_ids
    }
    # ZTF: unchanged, Avro containers keyed objectId.
    ztf_out = [decode_alert(m.value) for m in received if m.value[:1] == b"O"]
    assert sorted(a.candid for a in ztf_out) == sorted(a.candid for a in ztf_alerts)
    assert len(received) == len(lsst_out) + len(ztf_out)
    # What an operator's `alerts tail` shows: both surveys' ids.
    summaries = list(tail_summaries(kafka_bootstrap, output_topic, len(received)))
    assert sorted(x["diaSourceId"] for x in summaries if "diaSourceId" in x) == sorted(
        split_source_ids(lsst_stream)
    )
    assert sum("candid" in x for x in summaries) == len(ztf_out)

    # Every undecodable LSST message is dead-lettered once, unchanged, with its reason.
    letters = read_committed(kafka_bootstrap, dead_letter_topic)
    assert sorted(m.value for m in letters) == sorted(value for value, _ in bad)
    for message in letters:
        reason = next(r for value, r in bad if value == message.value)
        assert reason in message.headers[HEADER_REASON].decode()
        assert message.headers[HEADER_ERROR_TYPE] == b"AlertDecodeError"
    total = len(lsst_messages)
    assert group_offsets(kafka_bootstrap, group, lsst_topic) == {
        0: (total + 1) // 2,
        1: total // 2,
    }

    # Database: objects and matches carry their survey; ZTF's stay as they were.
    objects = set(query(own_database_url, "SELECT oid, sid FROM object"))
    lsst_objects = {
        str(a.record["diaSource"]["diaObjectId"] or a.record["diaObject"]["diaObjectId"])
        for a in lsst_stream.alerts
    }
    assert objects == {(oid, "lsst") for oid in lsst_objects} | {
        (a.object_id, "ztf") for a in ztf_alerts
    }
    assert str(FIRST_VARIANT_ID + 1_000) in lsst_objects  # 64-bit, exact in the oid
    expected = lsst_stream.expected()
    lsst_matches = {
        oid: (source, dist)
        for oid, source, dist in query(
            own_database_url, "SELECT oid, oid_catalog, dist FROM xmatch WHERE sid = 'lsst'"
        )
    }
    want_by_object: dict[str, tuple[str, float]] = {}
    for alert in lsst_stream.alerts:
        source = alert.record["diaSource"]
        want = expected.get(source["diaSourceId"])
        if want is not None:
            oid = str(source["diaObjectId"] or alert.record["diaObject"]["diaObjectId"])
            want_by_object[oid] = (want["AllWISE"], want["angDist"])
    assert set(lsst_matches) == set(want_by_object)
    for oid, (source_name, dist) in lsst_matches.items():
        assert source_name == want_by_object[oid][0]
        assert math.isclose(dist, want_by_object[oid][1], abs_tol=1e-3)
    assert "J-lsst-sample" in {name for name, _ in lsst_matches.values()}
    # the originals' columns read as before: a ZTF reader's query is unchanged
    ztf_rows = query(own_database_url, "SELECT oid, catid, oid_catalog, dist FROM xmatch")
    assert len(ztf_rows) == len(lsst_matches) + len(
        query(own_database_url, "SELECT 1 FROM xmatch WHERE sid = 'ztf'")
    )


def test_with_a_schema_registry_the_output_schema_is_registered_and_a_silent_registry_fails_the_run(
    *,
    lsst_stream: LsstStream,
    kafka_bootstrap: str,
    own_database_url: str,
    new_topic: Callable[..., str],
) -> None:
    rubin_schemas = {i: s.text.decode() for i, s in packaged_lsst_schemas().items()}
    input_topic = new_topic("registry-in")
    output_topic = new_topic("registry-out")
    dead_letter_topic = new_topic("registry-dlq")
    group = unique_group("registry")
    alerts = lsst_stream.alerts
    with SchemaRegistryServer(rubin_schemas) as registry:
        environment = pipeline_environment(
            kafka_bootstrap=kafka_bootstrap,
            database_url=own_database_url,
            input_topic=input_topic,
            output_topic=output_topic,
            group_id=group,
            index_dir=lsst_stream.index_dir,
            XMATCH_DEAD_LETTER_TOPIC=dead_letter_topic,
            XMATCH_SURVEY="lsst",
            XMATCH_LSST_SCHEMA_REGISTRY_URL=registry.url,
            XMATCH_LSST_SCHEMA_REGISTRY_TIMEOUT="1",
            XMATCH_LSST_SCHEMA_REGISTRY_RETRIES="1",
        )
        produce_values(
            kafka_bootstrap,
            input_topic,
            [(None, a.value) for a in alerts] + [(None, wire_message(77, alerts[0].payload))],
        )
        everything = OffsetRange(input_topic, 0, 0, len(alerts) + 1)

        registry.silent = True
        services = PipelineServices(load_settings(environment))
        try:
            # The system's fault: the run fails (the sensor retries it), nothing is visible.
            with pytest.raises(SchemaRegistryUnavailableError, match="did not give LSST schema"):
                services.runner().run(everything, run_id="registry-silent")
            assert group_offsets(kafka_bootstrap, group, input_topic) == {0: None}
            assert read_committed(kafka_bootstrap, output_topic) == []
            assert query(own_database_url, "SELECT oid FROM object") == []

            registry.silent = False
            report = services.runner().run(everything, run_id="registry-back")
        finally:
            registry.silent = False
            services.dispose()
        assert report.dead_lettered == 1
        assert group_offsets(kafka_bootstrap, group, input_topic) == {0: len(alerts) + 1}
        subject = output_subject(output_topic)
        registered = registry.subjects[subject]
        # one output schema per input version, none of them Rubin's own id
        assert len(registered) == len(rubin_schemas)
        assert not set(registered) & set(rubin_schemas)
        _check_lsst_outputs(
            read_committed(kafka_bootstrap, output_topic),
            lsst_stream,
            lambda output_id: schema_from_text(registry.schemas[output_id].encode()).parsed,
        )
        (letter,) = read_committed(kafka_bootstrap, dead_letter_topic)
        assert "unknown LSST schema id 77" in letter.headers[HEADER_REASON].decode()
        assert "does not know it" in letter.headers[HEADER_REASON].decode()


def test_the_cli_puts_rubins_samples_on_a_topic_in_rubins_framing(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    from typer.testing import CliRunner

    from xmatch_pipeline.cli.main import app

    topic = new_topic("lsst-samples")
    result = CliRunner().invoke(app, ["lsst", "samples", "--topic", topic, "-b", kafka_bootstrap])
    assert result.exit_code == 0, result.output
    received = read_committed(kafka_bootstrap, topic)
    schemas = PackagedLsstSchemas()
    assert sorted(split_wire_message(m.value)[0] for m in received) == list(schemas.known_ids)
    assert {m.key for m in received} == {b"281323062375219201"}
