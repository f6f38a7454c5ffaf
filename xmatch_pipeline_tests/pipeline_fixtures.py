"""Shared helpers for the pipeline tests: environments, topics, the sensor → job loop, readers.

Everything runs against the devstack's real Kafka and PostgreSQL. A test builds an
environment dict (the variables a deployment sets), loads settings from it and hands the
resource built from them to the sensor and the jobs, which run in process on one Dagster
instance, the way the daemon would drive them, including its run-key dedupe.
"""

from __future__ import annotations

import csv
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from dagster import (
    AddDynamicPartitionsRequest,
    DagsterInstance,
    ExecuteInProcessResult,
    RunRequest,
    RunsFilter,
    SensorResult,
    build_sensor_context,
    mem_io_manager,
)
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.pool import NullPool

from xmatch_pipeline.kafka.client_config import KafkaClientConfig
from xmatch_pipeline.match.catalogs.allwise import CDS_COLUMNS
from xmatch_pipeline.match.local.build import build_catalog_index
from xmatch_pipeline.orchestration.jobs import xmatch_microbatch
from xmatch_pipeline.orchestration.partitions import OFFSET_RANGES_NAME
from xmatch_pipeline.orchestration.resources import XmatchResource
from xmatch_pipeline.orchestration.sensors import build_kafka_lag_sensor
from xmatch_pipeline.publish.kafka_transaction import TransactionalPublisher
from xmatch_pipeline.settings import load_settings, setting_names

RUN_KEY_TAG = "dagster/run_key"
#: As the code location binds them (definitions.py): reports stay in memory between ops.
JOB_RESOURCES = {"io_manager": mem_io_manager}

#: Every variable ``load_settings`` reads.
SETTING_NAMES = setting_names()

RESPONSE_FILE = "cds_response_allwise_best_1arcsec.csv"
REQUEST_FILE = "cds_request_positions.csv"
KAFKA_WAIT_SECONDS = 20.0


def database_environment(database_url: str) -> dict[str, str]:
    """The original's DB_* variables for a SQLAlchemy URL."""
    url = make_url(database_url)
    return {
        "DB_ENGINE": "postgresql",
        "DB_HOST": url.host or "127.0.0.1",
        "DB_PORT": str(url.port or 5432),
        "DB_USER": url.username or "",
        "DB_PASSWORD": url.password or "",
        "DB_NAME": url.database or "",
    }


def pipeline_environment(
    *,
    kafka_bootstrap: str,
    database_url: str,
    input_topic: str,
    output_topic: str,
    group_id: str,
    index_dir: Path | None = None,
    **overrides: str,
) -> dict[str, str]:
    """A complete environment: local engine over ``index_dir`` unless overridden."""
    environment = {
        "CONSUMER_SERVER": kafka_bootstrap,
        "CONSUMER_TOPICS": input_topic,
        "CONSUMER_GROUP_ID": group_id,
        "PRODUCER_TOPIC": output_topic,
        "XMATCH_KAFKA_TIMEOUT": "10",
        "STEP_ID": "xmatch-test",
        "STEP_VERSION": "test",
        **database_environment(database_url),
    }
    if index_dir is not None:
        environment |= {"XMATCH_ENGINE": "local", "XMATCH_LOCAL_CATALOGS": f"allwise={index_dir}"}
    environment |= overrides
    return environment


def xmatch_resource(environment: Mapping[str, str]) -> XmatchResource:
    """The resource a code location with exactly ``environment`` would build."""
    return XmatchResource(load_settings(environment))


def unique_group(prefix: str = "xmatch-test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --- catalogs -------------------------------------------------------------------------


def allwise_data(shared_data_dir: Path) -> Path:
    """The real CDS exchange: the request positions and the ALLWISE rows CDS returned."""
    return shared_data_dir / "allwise"


def allwise_rows(shared_data_dir: Path) -> list[dict[str, str]]:
    """The real ALLWISE rows CDS returned (CDS columns only, in CDS's order, each source once,
    text as is)."""
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    with (allwise_data(shared_data_dir) / RESPONSE_FILE).open(newline="") as source:
        reader = csv.DictReader(source)
        columns = [column for column in reader.fieldnames or () if column in CDS_COLUMNS]
        for row in reader:
            if row["AllWISE"] not in seen:
                seen.add(row["AllWISE"])
                rows.append({column: row[column] for column in columns})
    return rows


def build_allwise_catalog(rows: Sequence[Mapping[str, str]], work_dir: Path) -> Path:
    """An index named ``allwise`` over ``rows`` (CDS column names, empty text = null), its
    columns in the first row's order."""
    work_dir.mkdir(parents=True, exist_ok=True)
    columns = list(rows[0]) if rows else list(CDS_COLUMNS)
    catalog_csv = work_dir / "allwise_rows.csv"
    with catalog_csv.open("w", newline="") as target:
        writer = csv.writer(target, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([row.get(column, "") for column in columns])
    index_dir = work_dir / "allwise_index"
    build_catalog_index(
        [catalog_csv],
        index_dir,
        id_column="AllWISE",
        ra_column="RAJ2000",
        dec_column="DEJ2000",
        name="allwise",
    )
    return index_dir


def build_allwise_index(shared_data_dir: Path, work_dir: Path) -> Path:
    """The local index of the 5,440 real ALLWISE rows CDS returned (conftest's
    ``allwise_index`` builds it once per session)."""
    return build_allwise_catalog(allwise_rows(shared_data_dir), work_dir)


@dataclass(frozen=True)
class SmallStream:
    """Synthetic 3.3 alerts on real ALLWISE sources (every third one 10″ away: no match)."""

    index_dir: Path
    #: ``(objectId, message value)`` per alert, in stream order.
    messages: list[tuple[str, bytes]]
    matching: int


_small_streams: dict[Path, SmallStream] = {}


def small_stream(shared_data_dir: Path, work_dir: Path, count: int = 60) -> SmallStream:
    """Built once per session (the index over the 5,440 real rows takes a moment)."""
    cached = _small_streams.get(shared_data_dir)
    if cached is not None and len(cached.messages) >= count:
        return cached
    rows = allwise_rows(shared_data_dir)
    positions = [
        (float(row["RAJ2000"]), float(row["DEJ2000"]) + (10 / 3600 if number % 3 == 2 else 0.0))
        for number, row in enumerate(rows[:count])
    ]
    from xmatch_pipeline.decode.avro_codec import decode_alert
    from xmatch_pipeline.devtools.alert_tools.synthetic import SyntheticAlertFactory

    factory = SyntheticAlertFactory(seed=7, positions=positions)
    messages = []
    for number in range(count):
        value = factory.alert_bytes(number)
        messages.append((decode_alert(value).object_id, value))
    stream = SmallStream(
        index_dir=build_allwise_catalog(rows, work_dir),
        messages=messages,
        matching=sum(1 for number in range(count) if number % 3 != 2),
    )
    _small_streams[shared_data_dir] = stream
    return stream


def compact_alert_schema(
    candidate_fields: Sequence[Mapping[str, Any]] = (),
    fields: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """A small ZTF-shaped writer schema (``ztf.alert``): the header fields, a
    ``ztf.candidate`` record with ``ra``, ``dec`` and ``candidate_fields``, then ``fields``."""
    candidate = {
        "type": "record",
        "name": "candidate",
        "fields": [
            {"name": "ra", "type": "double"},
            {"name": "dec", "type": "double"},
            *candidate_fields,
        ],
    }
    return {
        "type": "record",
        "name": "alert",
        "namespace": "ztf",
        "fields": [
            {"name": "schemavsn", "type": "string"},
            {"name": "objectId", "type": "string"},
            {"name": "candid", "type": "long"},
            {"name": "candidate", "type": candidate},
            *fields,
        ],
    }


# --- Kafka ----------------------------------------------------------------------------


def create_topics(
    bootstrap: str,
    names: Sequence[str],
    partitions: int = 1,
    config: Mapping[str, str] | None = None,
) -> None:
    """Create ``names`` (with topic ``config``, e.g. ``max.message.bytes``) and wait until the
    broker's metadata shows them with leaders (a topic reaches the metadata a moment after
    it is created)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(name, partitions, 1, config=dict(config or {})) for name in names],
        operation_timeout=30,
    )
    for future in futures.values():
        future.result(timeout=30)
    deadline = time.monotonic() + 30
    for name in names:
        while not _has_leaders(admin, name, partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {name} did not appear in the broker's metadata")
            time.sleep(0.1)


def _has_leaders(admin: Any, topic: str, partitions: int) -> bool:
    metadata = admin.list_topics(timeout=5).topics.get(topic)
    return (
        metadata is not None
        and metadata.error is None
        and len(metadata.partitions) == partitions
        and all(p.leader >= 0 for p in metadata.partitions.values())
    )


def create_topic(
    bootstrap: str,
    prefix: str = "test",
    partitions: int = 1,
    config: Mapping[str, str] | None = None,
) -> str:
    """A new topic with a unique name, so that tests never see each other's messages."""
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    create_topics(bootstrap, [name], partitions, config)
    return name


def delete_topics(bootstrap: str, names: Sequence[str]) -> None:
    if names:
        AdminClient({"bootstrap.servers": bootstrap}).delete_topics(
            list(names), operation_timeout=30
        )


def produce_values(
    bootstrap: str,
    topic: str,
    messages: Sequence[tuple[str | None, bytes | None]],
    *,
    partitions: int = 1,
) -> None:
    """Produce ``(key, value)`` pairs round-robin over ``partitions``, bytes unchanged (a
    ``None`` value is a tombstone); up to the broker's default limit of 1,048,588 bytes."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "message.max.bytes": 1_048_588,
        }
    )
    failures: list[str] = []

    def delivered(error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            failures.append(str(error))

    for index, (key, value) in enumerate(messages):
        producer.produce(topic, value, key=key, partition=index % partitions, on_delivery=delivered)
    assert producer.flush(30) == 0, "messages still queued after 30 s"
    assert not failures, failures


def write_transactions(bootstrap: str, topic: str, batches: list[tuple[int, bool]]) -> None:
    """Write each batch (size, commit?) to ``topic``[0] in its own transaction; values
    number the messages (``m0``, key ``k0``, ...).

    Returns once the last stable offset covers every batch: the coordinator writes the
    commit markers just after ``commit_transaction`` returns.
    """
    number = 0
    with TransactionalPublisher(
        KafkaClientConfig(bootstrap), f"test-writer-{uuid.uuid4().hex}"
    ) as publisher:
        publisher.init()
        for size, commit in batches:
            publisher.begin()
            for _ in range(size):
                publisher.produce(topic, value=f"m{number}".encode(), key=f"k{number}")
                number += 1
            if commit:
                publisher.commit()
            else:
                publisher.flush()  # on the broker, so the abort leaves them in the log
                publisher.abort()
    wait_for_stable_end(bootstrap, topic, sum(size + 1 for size, _ in batches))


@dataclass(frozen=True)
class ReceivedMessage:
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]
    #: The value was null (``value`` is then ``b""``).
    tombstone: bool = False


def verifying_consumer(
    bootstrap: str, isolation: str = "read_committed", *, group_id: str | None = None
) -> Consumer:
    """A consumer that only verifies: its own group, no commits, end-of-partition events."""
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group_id or unique_group("test-verify"),
            "isolation.level": isolation,
            "enable.partition.eof": True,
            "enable.auto.commit": False,
        }
    )


def _partitions(consumer: Consumer, topic: str) -> list[int]:
    metadata = consumer.list_topics(topic, timeout=10)
    return sorted(metadata.topics[topic].partitions)


def wait_for_stable_end(bootstrap: str, topic: str, end: int, partition: int = 0) -> None:
    """Until the last stable offset of ``topic``[partition] reaches ``end``: the coordinator
    writes commit markers just after ``commit_transaction`` returns."""
    deadline = time.monotonic() + KAFKA_WAIT_SECONDS
    while high_watermarks(bootstrap, topic)[partition] < end:
        assert time.monotonic() < deadline, f"{topic}[{partition}]: committed end never reached"
        time.sleep(0.05)


def read_committed(
    bootstrap: str,
    topic: str,
    expected_end: int | None = None,
    *,
    timeout_seconds: float = KAFKA_WAIT_SECONDS,
) -> list[ReceivedMessage]:
    """Everything a ``read_committed`` consumer sees on every partition of ``topic``; with
    ``expected_end``, once partition 0's log reaches it (markers land just after a commit)."""
    if expected_end is not None:
        wait_for_stable_end(bootstrap, topic, expected_end)
    consumer = verifying_consumer(bootstrap)
    try:
        partitions = _partitions(consumer, topic)
        consumer.assign([TopicPartition(topic, partition, 0) for partition in partitions])
        pending = set(partitions)
        received: list[ReceivedMessage] = []
        deadline = time.monotonic() + timeout_seconds
        while pending:
            assert time.monotonic() < deadline, f"{topic}: end of {sorted(pending)} never reached"
            for message in consumer.consume(200, 0.2):
                error = message.error()
                if error is not None:
                    assert error.code() == KafkaError._PARTITION_EOF, error
                    pending.discard(message.partition() or 0)
                    continue
                raw = message.headers() or []
                pairs = list(raw.items()) if isinstance(raw, dict) else raw
                partition, offset = message.partition(), message.offset()
                assert partition is not None
                assert offset is not None
                received.append(
                    ReceivedMessage(
                        partition=partition,
                        offset=offset,
                        key=message.key(),
                        value=message.value() or b"",
                        headers={k: v for k, v in pairs if isinstance(v, bytes)},
                        tombstone=message.value() is None,
                    )
                )
        return received
    finally:
        consumer.close()


def group_offsets(bootstrap: str, group_id: str, topic: str) -> dict[int, int | None]:
    """The group's committed next offset per partition (None: nothing committed)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group_id})
    try:
        partitions = _partitions(consumer, topic)
        committed = consumer.committed(
            [TopicPartition(topic, partition) for partition in partitions], timeout=10
        )
        return {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in committed}
    finally:
        consumer.close()


def high_watermarks(
    bootstrap: str, topic: str, isolation: str = "read_committed"
) -> dict[int, int]:
    """The end of each partition as ``isolation`` sees it: read_committed the last stable
    offset, read_uncommitted the log end (open transactions included)."""
    consumer = verifying_consumer(bootstrap, isolation)
    try:
        return {
            partition: consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=10, cached=False
            )[1]
            for partition in _partitions(consumer, topic)
        }
    finally:
        consumer.close()


# --- Dagster: the sensor → job loop ----------------------------------------------------


def evaluate_sensor(
    xmatch: XmatchResource, instance: DagsterInstance, cursor: str | None
) -> SensorResult:
    """One tick of ``kafka_lag_sensor`` as the daemon evaluates it."""
    sensor = build_kafka_lag_sensor(5)
    with build_sensor_context(
        instance=instance, cursor=cursor, resources={"xmatch": xmatch}
    ) as context:
        result = sensor(context)
    assert isinstance(result, SensorResult), result
    return result


def run_key_used(instance: DagsterInstance, run_key: str) -> bool:
    return bool(instance.get_run_ids(RunsFilter(tags={RUN_KEY_TAG: run_key}), limit=1))


def execute_request(
    xmatch: XmatchResource, instance: DagsterInstance, request: RunRequest
) -> ExecuteInProcessResult:
    """Run a sensor's request in process, for its partition and tagged with its run key,
    as the daemon would (the sensor adds the partition with its request)."""
    if request.partition_key is not None:
        instance.add_dynamic_partitions(OFFSET_RANGES_NAME, [request.partition_key])
    return xmatch_microbatch.execute_in_process(
        run_config=request.run_config,
        instance=instance,
        resources=JOB_RESOURCES | {"xmatch": xmatch},
        tags={**request.tags, RUN_KEY_TAG: request.run_key or ""},
        partition_key=request.partition_key,
        raise_on_error=False,
    )


def add_requested_partitions(instance: DagsterInstance, result: SensorResult) -> None:
    """What the daemon does with a tick's partition requests before it launches the runs."""
    for partitions_request in result.dynamic_partitions_requests or []:
        assert isinstance(partitions_request, AddDynamicPartitionsRequest), partitions_request
        instance.add_dynamic_partitions(
            partitions_request.partitions_def_name, list(partitions_request.partition_keys)
        )


@dataclass
class SensorTick:
    result: SensorResult
    launched: list[RunRequest]
    #: Requests whose run key had already run: the daemon drops these silently.
    deduplicated: list[RunRequest]


@dataclass
class DriveLog:
    ticks: list[SensorTick] = field(default_factory=list)
    runs: list[ExecuteInProcessResult] = field(default_factory=list)
    cursor: str | None = None

    @property
    def failed_runs(self) -> list[ExecuteInProcessResult]:
        return [run for run in self.runs if not run.success]


def drive_sensor_and_jobs(
    xmatch: XmatchResource,
    instance: DagsterInstance,
    *,
    cursor: str | None = None,
    max_ticks: int = 40,
) -> DriveLog:
    """Tick the sensor and run what it requests until a tick requests nothing new."""
    log = DriveLog(cursor=cursor)
    for _ in range(max_ticks):
        result = evaluate_sensor(xmatch, instance, log.cursor)
        add_requested_partitions(instance, result)
        log.cursor = result.cursor
        requests = list(result.run_requests or [])
        fresh = [r for r in requests if not run_key_used(instance, r.run_key or "")]
        tick = SensorTick(result, fresh, [r for r in requests if r not in fresh])
        log.ticks.append(tick)
        if not fresh:
            return log
        for request in fresh:
            log.runs.append(execute_request(xmatch, instance, request))
    raise AssertionError(f"the sensor still requested runs after {max_ticks} ticks")


# --- PostgreSQL -----------------------------------------------------------------------


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new, empty database on the server of ``server_url``, dropped afterwards (conftest's
    module-scoped ``fresh_database_url`` is one; a test may need one of its own)."""
    name = f"xmatch_test_{uuid.uuid4().hex[:16]}"
    server = create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with server.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with server.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        server.dispose()


def table_rows(database_url: str, table: str, order_by: str) -> list[tuple[Any, ...]]:
    """A full dump of ``table``, ordered, every column as stored."""
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            result = connection.execute(text(f'SELECT * FROM "{table}" ORDER BY {order_by}'))
            return [tuple(row) for row in result]
    finally:
        engine.dispose()


def query(database_url: str, statement: str, **parameters: Any) -> list[tuple[Any, ...]]:
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(statement), parameters)]
    finally:
        engine.dispose()


def environment_without_secrets(environment: Mapping[str, str]) -> dict[str, str]:
    """For assertion messages: the environment with passwords replaced."""
    return {name: ("***" if "PASSWORD" in name else value) for name, value in environment.items()}
