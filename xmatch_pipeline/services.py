"""Build the pipeline's long-lived clients from validated settings, in one place.

The Dagster resources, the CLI and the tests all go through here, so a setting means the
same thing everywhere. One process keeps one ``PipelineServices`` per settings for its
whole life (``warm_services``): the database pool, the CDS sessions, the local index's
partition cache, the offsets readers (the sensor's, and the runs' for their start check
and the topics' limits), the metrics producer and idle range readers are reused by every
run. What belongs to a run is built per run (the runner, its transactional producer, its
partition lock) and nothing the kept clients hold is run state: connections go back to
the pool at the end of every ``with`` block, a reader goes back only after a clean run.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from urllib.parse import urlsplit

from confluent_kafka import Producer
from sqlalchemy import Engine, create_engine

from xmatch_pipeline.decode.lsst_schemas import (
    LsstSchemaSource,
    PackagedLsstSchemas,
    RegistryLsstSchemas,
)
from xmatch_pipeline.kafka.client_config import KafkaClientConfig
from xmatch_pipeline.match.cds.client import CdsXmatchClient
from xmatch_pipeline.match.cds.session import SlotLimitedSession
from xmatch_pipeline.match.crossmatch_engine import CrossmatchEngine
from xmatch_pipeline.match.local.index import LocalCrossmatchEngine
from xmatch_pipeline.microbatch.report import MicrobatchReport
from xmatch_pipeline.microbatch.runner import MicrobatchConfig, MicrobatchRunner
from xmatch_pipeline.publish.lsst_output import LsstOutputSchemaIds
from xmatch_pipeline.read.kafka_offsets import KafkaOffsetsReader
from xmatch_pipeline.read.kafka_reader_pool import KafkaReaderPool
from xmatch_pipeline.read.topic_selection import select_topics
from xmatch_pipeline.settings import KafkaCredentials, PipelineSettings
from xmatch_pipeline.store.match_writer import StepRecord
from xmatch_pipeline.store.range_ledger import RangeLedger
from xmatch_pipeline.store.request_slots import RequestSlots
from xmatch_pipeline.store.schema import ensure_schema

logger = logging.getLogger(__name__)

METRICS_DELIVERY_TIMEOUT_SECONDS = 10.0


def kafka_client_config(
    servers: str,
    credentials: KafkaCredentials | None,
    *,
    ca_location: Path | None = None,
    variables: str = "CONSUMER",
) -> KafkaClientConfig:
    """A client's settings; ``variables`` is the prefix its credentials came from."""
    if credentials is None:
        return KafkaClientConfig(servers)
    return KafkaClientConfig(
        servers,
        credentials.username,
        credentials.password.get_secret_value(),
        {"ssl.ca.location": str(ca_location)} if ca_location is not None else {},
        credential_variables=f"{variables}_KAFKA_USERNAME and {variables}_KAFKA_PASSWORD",
    )


def open_database(settings: PipelineSettings) -> Engine:
    """A connection pool that notices dead connections, and whose sessions die with their client."""
    return create_engine(
        settings.database.sqlalchemy_url(),
        pool_pre_ping=True,
        pool_size=4,
        connect_args={
            "connect_timeout": 10,
            "application_name": "xmatch_pipeline",
            # A run's partition lock lives on its session: keepalives make the server drop
            # the session (and the lock) soon after the client machine disappears.
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
        },
    )


@dataclass(frozen=True)
class MetricsMessage:
    """The original step's per-batch metrics message, kept for existing dashboards."""

    report: MicrobatchReport
    source: str

    def to_json(self) -> bytes:
        report = self.report
        return json.dumps(
            {
                "timestamp_received": report.started_at.isoformat(),
                "timestamp_sent": (report.finished_at or datetime.now(UTC)).isoformat(),
                "execution_time": report.elapsed_seconds,
                "n_messages": report.messages_in,
                "candid": report.candids,
                "oid": report.object_ids,
                "source": self.source,
            }
        ).encode("utf-8")


class PipelineServices:
    """Clients built lazily from settings and reused for the life of the process."""

    def __init__(self, settings: PipelineSettings) -> None:
        self.settings = settings
        #: CDS sessions opened so far: a warm process opens one per concurrent request, not
        #: one per run (a session whose exchange failed is closed and replaced).
        self.cds_sessions_opened = 0

    @cached_property
    def kafka(self) -> KafkaClientConfig:
        """The reader's connection (range reads and the sensor's offsets): CONSUMER_…."""
        return kafka_client_config(
            self.settings.kafka_bootstrap_servers,
            self.settings.consumer_credentials,
            ca_location=self.settings.kafka_ssl_ca_location,
        )

    @cached_property
    def publisher_kafka(self) -> KafkaClientConfig:
        """The transactional producer's connection: PRODUCER_…, else the reader's."""
        if self.settings.producer_credentials is None:
            return self.kafka
        return kafka_client_config(
            self.settings.kafka_bootstrap_servers,
            self.settings.producer_credentials,
            ca_location=self.settings.kafka_ssl_ca_location,
            variables="PRODUCER",
        )

    @cached_property
    def database(self) -> Engine:
        database = open_database(self.settings)
        try:
            ensure_schema(database)  # a server that cannot be reached: DatabaseUnavailableError
        except BaseException:
            database.dispose()
            raise
        return database

    @cached_property
    def ledger(self) -> RangeLedger:
        return RangeLedger(self.database, self.settings.consumer_group_id)

    @cached_property
    def cds_request_slots(self) -> RequestSlots:
        """The fleet's ``XMATCH_CDS_MAX_IN_FLIGHT`` slots, per CDS host, in the database."""
        cds = self.settings.cds
        return RequestSlots(self.database, urlsplit(cds.url).netloc, cds.max_in_flight)

    @cached_property
    def crossmatch_engine(self) -> CrossmatchEngine:
        if self.settings.engine == "local":
            return LocalCrossmatchEngine(self.settings.local_catalog_directories)
        return CdsXmatchClient(
            self.settings.cds.client_settings(), session_factory=self._new_cds_session
        )

    def _new_cds_session(self) -> SlotLimitedSession:
        self.cds_sessions_opened += 1
        return SlotLimitedSession(self.cds_request_slots, self.settings.cds.deadline_seconds)

    @cached_property
    def range_readers(self) -> KafkaReaderPool:
        return KafkaReaderPool(self.kafka)

    @cached_property
    def offsets_reader(self) -> KafkaOffsetsReader:
        return KafkaOffsetsReader(
            self.kafka,
            self.settings.consumer_group_id,
            timeout_seconds=self.settings.kafka_admin_timeout_seconds,
        )

    @cached_property
    def lsst_schema_registry(self) -> RegistryLsstSchemas | None:
        settings = self.settings
        if settings.lsst_schema_registry_url is None:
            return None
        return RegistryLsstSchemas(
            settings.lsst_schema_registry_url,
            timeout_seconds=settings.lsst_registry_timeout_seconds,
            max_retries=settings.lsst_registry_retries,
        )

    @cached_property
    def lsst_schemas(self) -> LsstSchemaSource | None:
        """Rubin's schemas by id for LSST topics: the registry's, else the packaged ones."""
        if self.lsst_schema_registry is not None:
            return self.lsst_schema_registry
        return PackagedLsstSchemas() if self.settings.topic_surveys.names("lsst") else None

    @cached_property
    def lsst_output_ids(self) -> LsstOutputSchemaIds:
        return LsstOutputSchemaIds(self.settings.output_topic, self.lsst_schema_registry)

    def microbatch_config(self) -> MicrobatchConfig:
        """The settings and the connections built from them; the step row dated now."""
        step = self.settings.step
        return MicrobatchConfig(
            settings=self.settings,
            kafka=self.kafka,
            publisher_kafka=self.publisher_kafka,
            step=StepRecord(
                step_id=step.step_id,
                name=step.name,
                version=step.version,
                date=datetime.now(UTC),
                comments=step.comments or None,
            ),
            lsst_schemas=self.lsst_schemas,
            lsst_output_ids=self.lsst_output_ids,
        )

    def runner(self) -> MicrobatchRunner:
        """A runner for one run (its step date is the run's), on the kept clients."""
        return MicrobatchRunner(
            self.microbatch_config(),
            self.crossmatch_engine,
            self.database,
            readers=self.range_readers,
            group_offsets=self.run_offsets_reader,
        )

    @cached_property
    def run_offsets_reader(self) -> KafkaOffsetsReader:
        """The runs' own reader of the group's offset and the topics' limits (their start
        check), kept: it holds no run state; with the runs' request timeout."""
        return KafkaOffsetsReader(
            self.kafka,
            self.settings.consumer_group_id,
            timeout_seconds=self.settings.consume_timeout_seconds,
        )

    def input_topics(self, now: datetime | None = None) -> list[str]:
        """The input topics that exist now (daily topics appear as nights begin)."""
        selection = self.settings.input_topics
        return select_topics(
            self.offsets_reader.list_topics(),
            topics=selection.topics,
            daily_format=selection.daily_format,
            pattern=selection.pattern,
            now=now,
        )

    @cached_property
    def metrics_producer(self) -> Producer | None:
        """A plain producer, kept: it holds nothing of a run once each message is flushed."""
        settings = self.settings
        if settings.metrics_topic is None or settings.metrics_bootstrap_servers is None:
            return None
        config = kafka_client_config(
            settings.metrics_bootstrap_servers,
            settings.metrics_credentials,
            ca_location=settings.kafka_ssl_ca_location,
            variables="METRICS",
        )
        return Producer(config.as_dict({"client.id": "xmatch-metrics"}))

    def send_metrics(self, report: MicrobatchReport) -> bool:
        """Send the original's metrics message when METRICS_TOPIC is set; never fail the run.

        It goes after the run's commit, so a lost metrics message loses nothing else.
        """
        settings = self.settings
        producer = self.metrics_producer
        if settings.metrics_topic is None or producer is None:
            return False
        failures: list[str] = []
        producer.produce(
            settings.metrics_topic,
            MetricsMessage(report, settings.step.step_id).to_json(),
            on_delivery=lambda error, _message: failures.append(str(error)) if error else None,
        )
        remaining = producer.flush(METRICS_DELIVERY_TIMEOUT_SECONDS)
        if remaining or failures:
            logger.warning(
                "metrics message for %s not delivered to %s: %s",
                report.offset_range,
                settings.metrics_topic,
                failures or f"{remaining} still queued after {METRICS_DELIVERY_TIMEOUT_SECONDS} s",
            )
            return False
        return True

    def dispose(self) -> None:
        """Close every client built so far (at process exit, or when evicted)."""
        built = self.__dict__
        if "range_readers" in built:
            self.range_readers.close()
        for reader in ("offsets_reader", "run_offsets_reader"):
            if reader in built:
                built[reader].close()
        producer = built.get("metrics_producer")
        if producer is not None:
            producer.flush(METRICS_DELIVERY_TIMEOUT_SECONDS)
        crossmatch_engine = built.get("crossmatch_engine")
        if isinstance(crossmatch_engine, CdsXmatchClient):
            crossmatch_engine.close()
        if "database" in built:
            self.database.dispose()
