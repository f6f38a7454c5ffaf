"""Helpers of the failure tests (crash, database outage, race guard): real services only.

Alerts are synthetic 3.3 packets placed on the real CDS request positions, and the catalog
is a local index of the real ALLWISE rows CDS returned for them, so the expected database
rows come straight from the CDS answer (row ``col1`` is request position ``col1``), not
from the pipeline under test.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from confluent_kafka import OFFSET_BEGINNING, KafkaError, Producer, TopicPartition
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from xmatch_pipeline.decode import encode_alert
from xmatch_pipeline.decode.avro_codec import decode_alert
from xmatch_pipeline.devtools.alert_tools.synthetic import SyntheticAlertFactory, read_positions_csv
from xmatch_pipeline.match.catalogs.allwise import DATABASE_COLUMNS
from xmatch_pipeline.microbatch.offset_range import OffsetRange
from xmatch_pipeline_tests.pipeline_fixtures import (
    REQUEST_FILE,
    RESPONSE_FILE,
    allwise_data,
    high_watermarks,
    verifying_consumer,
)

CHUNK_MESSAGES = 40
"""Small chunks, so that a range of a few hundred alerts passes every stage several times."""

ONE_MAS_IN_ARCSEC = 1e-3
READ_TIMEOUT_SECONDS = 20.0


@dataclass(frozen=True)
class InputStream:
    """Alerts written to one input partition, and what the database must hold afterwards."""

    topic: str
    candids: tuple[int, ...]
    object_ids: tuple[str, ...]
    expected_xmatch: Mapping[str, tuple[str, float]]
    """objectId → (ALLWISE id, distance in arcsec) from the CDS answer."""
    expected_allwise: Mapping[str, Mapping[str, float | None]]
    """ALLWISE id → the ``allwise`` table's values, from the CDS answer."""

    @property
    def offset_range(self) -> OffsetRange:
        return OffsetRange(self.topic, 0, 0, len(self.candids))

    def first(self, count: int) -> InputStream:
        """The stream's first ``count`` alerts (offsets ``[0, count)``) and what they store."""
        object_ids = self.object_ids[:count]
        expected_xmatch = {
            oid: self.expected_xmatch[oid] for oid in object_ids if oid in self.expected_xmatch
        }
        sources = {source for source, _ in expected_xmatch.values()}
        return InputStream(
            self.topic,
            self.candids[:count],
            object_ids,
            expected_xmatch,
            {source: self.expected_allwise[source] for source in sources},
        )


@dataclass(frozen=True)
class DatabaseSnapshot:
    object_ids: frozenset[str]
    xmatch: Mapping[str, tuple[str, str, float]]
    """oid → (catid, ALLWISE id, dist)."""
    allwise: Mapping[str, Mapping[str, float | None]]


def write_input_stream(
    bootstrap: str, topic: str, shared_data_dir: Path, count: int, seed: int
) -> InputStream:
    """Produce ``count`` synthetic alerts on the real request positions to ``topic``[0]."""
    positions = read_positions_csv(allwise_data(shared_data_dir) / REQUEST_FILE)
    factory = SyntheticAlertFactory(seed, positions[:count])
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    failures: list[str] = []
    candids: list[int] = []
    object_ids: list[str] = []
    for index in range(count):
        record = factory.record(index)
        candids.append(int(record["candid"]))
        object_ids.append(str(record["objectId"]))
        producer.produce(
            topic,
            encode_alert(record, factory.schema),
            key=record["objectId"],
            partition=0,
            on_delivery=lambda error, _message: failures.append(str(error)) if error else None,
        )
        producer.poll(0)
    remaining = producer.flush(30)
    assert remaining == 0, f"{remaining} input alerts not delivered to {topic}"
    assert not failures, f"input alerts not delivered to {topic}: {failures[:3]}"
    answer = pd.read_csv(
        allwise_data(shared_data_dir) / RESPONSE_FILE,
        dtype={"id_in": str, "AllWISE": str},
        keep_default_na=False,
        na_values=[""],
    )
    matched = answer[answer["col1"] < count]
    expected_xmatch = {
        object_ids[int(position)]: (str(source), float(distance))
        for position, source, distance in zip(
            matched["col1"].tolist(),
            matched["AllWISE"].tolist(),
            matched["angDist"].tolist(),
            strict=True,
        )
    }
    expected_allwise = {
        str(row["AllWISE"]): {
            database: _none_for_nan(row[cds])
            for cds, database in DATABASE_COLUMNS.items()
            if database != "oid_catalog"
        }
        for row in matched.to_dict(orient="records")
    }
    return InputStream(topic, tuple(candids), tuple(object_ids), expected_xmatch, expected_allwise)


def _none_for_nan(value: Any) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def read_candids(bootstrap: str, topic: str, isolation: str = "read_committed") -> list[int]:
    """The candid of every message of ``topic``[0] visible under ``isolation``, in order.

    Reads to the end: until the position passes the log end (read_uncommitted's high
    watermark), which under read_committed also waits for open transactions to settle.
    """
    consumer = verifying_consumer(bootstrap, isolation)
    log_end = high_watermarks(bootstrap, topic, "read_uncommitted")[0]
    candids: list[int] = []
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + READ_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            for message in consumer.consume(500, 0.5):
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise AssertionError(f"reading {topic}: {error.str()}")
                value = message.value()
                assert value is not None
                candids.append(decode_alert(value).candid)
            position = consumer.position([TopicPartition(topic, 0)])[0].offset
            if position >= log_end:
                return candids
        raise AssertionError(
            f"{topic} not read to its end {log_end} within {READ_TIMEOUT_SECONDS:g} s "
            f"({isolation}: an open transaction never settled?)"
        )
    finally:
        consumer.close()


def visible_now(bootstrap: str, topic: str, seconds: float = 2.0) -> list[int]:
    """What a ``read_committed`` reader sees within ``seconds``, without waiting for the end."""
    consumer = verifying_consumer(bootstrap)
    candids: list[int] = []
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for message in consumer.consume(500, 0.2):
                value = message.value()
                if message.error() is None and value is not None:
                    candids.append(decode_alert(value).candid)
    finally:
        consumer.close()
    return candids


def database_snapshot(database_url: str) -> DatabaseSnapshot:
    engine = create_engine(database_url, poolclass=NullPool)
    value_columns = [name for name in DATABASE_COLUMNS.values() if name != "oid_catalog"]
    try:
        with engine.connect() as connection:
            objects = frozenset(connection.execute(text("SELECT oid FROM object")).scalars())
            xmatch = {
                row.oid: (row.catid, row.oid_catalog, row.dist)
                for row in connection.execute(
                    text("SELECT oid, catid, oid_catalog, dist FROM xmatch")
                )
            }
            allwise = {
                row.oid_catalog: {name: getattr(row, name) for name in value_columns}
                for row in connection.execute(
                    text(f"SELECT oid_catalog, {', '.join(value_columns)} FROM allwise")
                )
            }
    finally:
        engine.dispose()
    return DatabaseSnapshot(objects, xmatch, allwise)


def assert_database_holds_exactly(database_url: str, stream: InputStream) -> None:
    """Every alert's object, its CDS match (same source, same distance to 1 mas), nothing else."""
    snapshot = database_snapshot(database_url)
    assert snapshot.object_ids == frozenset(stream.object_ids)
    assert snapshot.xmatch.keys() == stream.expected_xmatch.keys()
    for oid, (source, distance) in stream.expected_xmatch.items():
        catid, stored_source, stored_distance = snapshot.xmatch[oid]
        assert (catid, stored_source) == ("allwise", source), oid
        assert abs(stored_distance - distance) < ONE_MAS_IN_ARCSEC, oid
    assert snapshot.allwise.keys() == stream.expected_allwise.keys()
    for source, values in stream.expected_allwise.items():
        stored = snapshot.allwise[source]
        for column, value in values.items():
            if value is None:
                assert stored[column] is None, (source, column)
            else:
                assert stored[column] == value, (source, column, stored[column], value)


def assert_nothing_stored(database_url: str) -> None:
    snapshot = database_snapshot(database_url)
    assert not snapshot.object_ids
    assert not snapshot.xmatch
    assert not snapshot.allwise


def run_microbatch_job(offset_range: OffsetRange, environment: Mapping[str, str]) -> Any:
    """The Dagster job over one range, with the settings of ``environment``; the result."""
    from xmatch_pipeline.orchestration.jobs import microbatch_run_config, xmatch_microbatch
    from xmatch_pipeline.orchestration.resources import XmatchResource
    from xmatch_pipeline.settings import load_settings

    return xmatch_microbatch.execute_in_process(
        run_config=microbatch_run_config(offset_range),
        resources={"xmatch": XmatchResource(load_settings(environment))},
        raise_on_error=False,
    )
