"""Helpers of the failure tests (crash, database outage, race guard): real services only.

Alerts are synthetic 3.3 packets placed on the real CDS request positions, and the catalog
is a local index of the real ALLWISE rows CDS returned for them, so the expected database
rows come straight from the CDS answer (row ``col1`` is request position ``col1``), not
from the pipeline under test.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.pool import NullPool

from xmatch_pipeline.alert_tools.synthetic import SyntheticAlertFactory, read_positions_csv
from xmatch_pipeline.decode import encode_alert
from xmatch_pipeline.decode.avro_codec import decode_alert
from xmatch_pipeline.kafka_config import KafkaClientConfig
from xmatch_pipeline.match.allwise import DATABASE_COLUMNS
from xmatch_pipeline.match.catalog_build import build_catalog_index
from xmatch_pipeline.offset_range import OffsetRange
from xmatch_pipeline.read.kafka_offsets import KafkaOffsetsReader

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


@dataclass(frozen=True)
class DatabaseSnapshot:
    object_ids: frozenset[str]
    xmatch: Mapping[str, tuple[str, str, float]]
    """oid → (catid, ALLWISE id, dist)."""
    allwise: Mapping[str, Mapping[str, float | None]]


def build_allwise_index(shared_data_dir: Path, directory: Path) -> Path:
    """The 5,440 real ALLWISE sources CDS returned, as a local index named ``allwise``."""
    build_catalog_index(
        [shared_data_dir / "allwise" / "cds_response_allwise_best_1arcsec.csv"],
        directory,
        id_column="AllWISE",
        ra_column="RAJ2000",
        dec_column="DEJ2000",
        name="allwise",
    )
    return directory


def create_topic(bootstrap: str, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, 1, 1)], operation_timeout=30)[name].result(timeout=30)
    return name


def delete_topics(bootstrap: str, topics: Sequence[str]) -> None:
    if topics:
        AdminClient({"bootstrap.servers": bootstrap}).delete_topics(
            list(topics), operation_timeout=30
        )


def write_input_stream(
    bootstrap: str, topic: str, shared_data_dir: Path, count: int, seed: int
) -> InputStream:
    """Produce ``count`` synthetic alerts on the real request positions to ``topic``[0]."""
    allwise_dir = shared_data_dir / "allwise"
    positions = read_positions_csv(allwise_dir / "cds_request_positions.csv")
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
        allwise_dir / "cds_response_allwise_best_1arcsec.csv",
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


def pipeline_environment(
    *,
    bootstrap: str,
    database_url: str,
    input_topic: str,
    output_topic: str,
    group_id: str,
    index_dir: Path,
) -> dict[str, str]:
    """The settings of a run as the deployment would set them (the original's names)."""
    url = make_url(database_url)
    return {
        "CONSUMER_SERVER": bootstrap,
        "CONSUMER_TOPICS": input_topic,
        "CONSUMER_GROUP_ID": group_id,
        "PRODUCER_TOPIC": output_topic,
        "DB_HOST": str(url.host),
        "DB_PORT": str(url.port),
        "DB_USER": str(url.username),
        "DB_PASSWORD": str(url.password),
        "DB_NAME": str(url.database),
        "XMATCH_ENGINE": "local",
        "XMATCH_LOCAL_CATALOGS": f"allwise={index_dir}",
        "XMATCH_CHUNK_MESSAGES": str(CHUNK_MESSAGES),
    }


@contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    """A new empty database on the server of ``server_url``, dropped afterwards."""
    name = f"xmatch_failure_{uuid.uuid4().hex[:16]}"
    server = create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with server.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with server.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        server.dispose()


def read_candids(bootstrap: str, topic: str, isolation: str = "read_committed") -> list[int]:
    """The candid of every message of ``topic``[0] visible under ``isolation``, in order.

    Reads to the end: until the position passes the log end (read_uncommitted's high
    watermark), which under read_committed also waits for open transactions to settle.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"failure-test-reader-{uuid.uuid4().hex[:8]}",
            "isolation.level": isolation,
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    log_end = _log_end(bootstrap, topic)
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
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"failure-test-reader-{uuid.uuid4().hex[:8]}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
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


def _log_end(bootstrap: str, topic: str) -> int:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "failure-test-watermarks",
         "isolation.level": "read_uncommitted"}
    )  # fmt: skip
    try:
        _low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        return int(high)
    finally:
        consumer.close()


def committed_offset(bootstrap: str, group_id: str, topic: str) -> int | None:
    reader = KafkaOffsetsReader(KafkaClientConfig(bootstrap), group_id, timeout_seconds=10)
    return reader.committed_offsets([(topic, 0)])[(topic, 0)]


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


def run_microbatch_job(offset_range: OffsetRange) -> Any:
    """The Dagster job over one range, settings from ``os.environ``; the result."""
    from xmatch_pipeline.orchestration.jobs import xmatch_microbatch
    from xmatch_pipeline.orchestration.resources import XmatchResource

    config = {
        "topic": offset_range.topic,
        "partition": offset_range.partition,
        "start_offset": offset_range.start,
        "end_offset": offset_range.end,
    }
    return xmatch_microbatch.execute_in_process(
        run_config={"ops": {"check_offset_range": {"config": config}}},
        resources={"xmatch": XmatchResource()},
        raise_on_error=False,
    )
