"""The devstack side of a benchmark: fresh databases and topics, settings, loading input.

Every measurement gets its own database (created and dropped on the devstack's server),
consumer group and output topic, so nothing is shared with other users of the devstack or
with the previous measurement.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.pool import NullPool

from xmatch_pipeline.devtools.devstack import DevstackSettings

ADMIN_TIMEOUT_SECONDS = 30.0


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@contextmanager
def fresh_database(devstack: DevstackSettings, *, with_schema: bool = True) -> Iterator[str]:
    """A new database on the devstack server (the pipeline's tables in it), dropped after."""
    name = f"xmatch_bench_{uuid.uuid4().hex[:12]}"
    server = create_engine(devstack.database_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with server.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(devstack.database_url).set(database=name).render_as_string(hide_password=False)
    try:
        if with_schema:
            from xmatch_pipeline.store.schema import ensure_schema

            engine = create_engine(url, poolclass=NullPool)
            ensure_schema(engine)
            engine.dispose()
        yield url
    finally:
        with server.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        server.dispose()


def database_name(url: str) -> str:
    return make_url(url).database or ""


def _admin(devstack: DevstackSettings) -> AdminClient:
    return AdminClient({"bootstrap.servers": devstack.kafka_bootstrap_servers})


def create_topic(
    devstack: DevstackSettings,
    name: str,
    partitions: int = 1,
    config: dict[str, str] | None = None,
) -> str:
    admin = _admin(devstack)  # kept alive until the futures complete
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
        request_timeout=ADMIN_TIMEOUT_SECONDS,
    )
    futures[name].result(timeout=ADMIN_TIMEOUT_SECONDS)
    return name


def delete_topics(devstack: DevstackSettings, names: Iterable[str]) -> None:
    """Delete our topics (Kafka frees their disk a minute later); absent ones are fine."""
    names = list(names)
    if not names:
        return
    admin = _admin(devstack)  # kept alive until the futures complete
    futures = admin.delete_topics(names, request_timeout=ADMIN_TIMEOUT_SECONDS)
    for future in futures.values():
        try:
            future.result(timeout=ADMIN_TIMEOUT_SECONDS)
        except Exception as error:  # an already deleted topic is not a problem here
            print(f"  (topic deletion: {error})", flush=True)


@contextmanager
def fresh_topic(
    devstack: DevstackSettings,
    prefix: str,
    partitions: int = 1,
    config: dict[str, str] | None = None,
) -> Iterator[str]:
    name = create_topic(devstack, unique_name(prefix), partitions, config)
    try:
        yield name
    finally:
        delete_topics(devstack, [name])


def produce_alerts(
    devstack: DevstackSettings, topic: str, values: Iterable[bytes], partitions: int = 1
) -> tuple[int, int]:
    """Produce the alerts round-robin over ``partitions``; returns (messages, bytes)."""
    producer = Producer(
        {
            "bootstrap.servers": devstack.kafka_bootstrap_servers,
            "enable.idempotence": True,
            "linger.ms": 20,
            "batch.size": 1_000_000,
        }
    )
    failures: list[str] = []

    def delivered(error: KafkaError | None, _message: object) -> None:
        if error is not None:
            failures.append(str(error))

    count = size = 0
    started = time.perf_counter()
    for value in values:
        while True:
            try:
                producer.produce(topic, value, partition=count % partitions, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
        count += 1
        size += len(value)
    remaining = producer.flush(120)
    if remaining or failures:
        raise RuntimeError(f"loading {topic}: {remaining} undelivered, errors {failures[:3]}")
    print(
        f"loaded {count:,} alerts ({size / 1e6:,.0f} MB) into {topic} "
        f"in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    return count, size


def pipeline_environment(
    devstack: DevstackSettings,
    *,
    database_url: str,
    input_topic: str,
    output_topic: str,
    group_id: str,
    index_dir: Path,
    **overrides: str,
) -> dict[str, str]:
    """The pipeline's settings (the original's variables) for one measurement."""
    url = make_url(database_url)
    environment = {
        **devstack.as_environment(),
        "CONSUMER_SERVER": devstack.kafka_bootstrap_servers,
        "CONSUMER_TOPICS": input_topic,
        "CONSUMER_GROUP_ID": group_id,
        "PRODUCER_TOPIC": output_topic,
        "DB_HOST": url.host or devstack.postgres_host,
        "DB_PORT": str(url.port or devstack.postgres_port),
        "DB_USER": url.username or "",
        "DB_PASSWORD": url.password or "",
        "DB_NAME": url.database or "",
        "XMATCH_ENGINE": "local",
        "XMATCH_LOCAL_CATALOGS": f"allwise={index_dir}",
        "STEP_ID": "xmatch-bench",
        "STEP_VERSION": "bench",
    }
    environment.pop("PRODUCER_SERVER", None)
    return environment | overrides
