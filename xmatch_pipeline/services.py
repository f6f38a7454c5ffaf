"""Build the pipeline's long-lived clients from validated settings, in one place.

The Dagster resources, the CLI and the tests all go through here, so a setting means the
same thing everywhere.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property

from confluent_kafka import Producer
from sqlalchemy import Engine, create_engine
from sqlalchemy.exc import DBAPIError

from xmatch_pipeline.kafka_config import KafkaClientConfig
from xmatch_pipeline.match.cds_client import CdsXmatchClient
from xmatch_pipeline.match.engine import CrossmatchEngine
from xmatch_pipeline.match.local_index import LocalCrossmatchEngine
from xmatch_pipeline.microbatch import MicrobatchConfig, MicrobatchReport, MicrobatchRunner
from xmatch_pipeline.read.kafka_offsets import KafkaOffsetsReader
from xmatch_pipeline.read.topic_selection import select_topics
from xmatch_pipeline.settings import KafkaCredentials, PipelineSettings
from xmatch_pipeline.store.errors import StoreError
from xmatch_pipeline.store.match_writer import StepRecord
from xmatch_pipeline.store.range_ledger import RangeLedger
from xmatch_pipeline.store.schema import ensure_schema

logger = logging.getLogger(__name__)

METRICS_DELIVERY_TIMEOUT_SECONDS = 10.0


def kafka_client_config(servers: str, credentials: KafkaCredentials | None) -> KafkaClientConfig:
    if credentials is None:
        return KafkaClientConfig(servers)
    return KafkaClientConfig(servers, credentials.username, credentials.password.reveal())


def database_engine(settings: PipelineSettings) -> Engine:
    """An engine that notices dead connections, and whose sessions die with their client."""
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

    @cached_property
    def kafka(self) -> KafkaClientConfig:
        return kafka_client_config(
            self.settings.kafka_bootstrap_servers, self.settings.consumer_credentials
        )

    @cached_property
    def database(self) -> Engine:
        engine = database_engine(self.settings)
        try:
            ensure_schema(engine)
        except DBAPIError as error:
            engine.dispose()
            reason = " ".join(str(error.orig).split())[:300]
            raise StoreError(
                f"could not reach the pipeline database {self.settings.database.redacted_url()} "
                f"({type(error.orig).__name__}: {reason}); check that PostgreSQL runs and the "
                "DB_* settings, then run again"
            ) from error
        return engine

    @cached_property
    def ledger(self) -> RangeLedger:
        return RangeLedger(self.database, self.settings.consumer_group_id)

    @cached_property
    def crossmatch_engine(self) -> CrossmatchEngine:
        if self.settings.engine == "local":
            return LocalCrossmatchEngine(self.settings.local_catalog_directories)
        return CdsXmatchClient(self.settings.cds)

    @cached_property
    def offsets_reader(self) -> KafkaOffsetsReader:
        return KafkaOffsetsReader(
            self.kafka,
            self.settings.consumer_group_id,
            timeout_seconds=self.settings.kafka_admin_timeout_seconds,
        )

    def microbatch_config(self) -> MicrobatchConfig:
        settings = self.settings
        return MicrobatchConfig(
            kafka=self.kafka,
            consumer_group_id=settings.consumer_group_id,
            output_topic=settings.output_topic,
            dead_letter_topic=settings.dead_letter_topic,
            catalogs=settings.catalogs,
            step=StepRecord(
                step_id=settings.step.step_id,
                name=settings.step.name,
                version=settings.step.version,
                date=datetime.now(UTC),
                comments=settings.step.comments or None,
            ),
            chunk_messages=settings.chunk_messages,
            output_precision=settings.output_precision,
            use_match_cache=settings.use_match_cache,
        )

    def runner(self) -> MicrobatchRunner:
        return MicrobatchRunner(self.microbatch_config(), self.crossmatch_engine, self.database)

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

    def send_metrics(self, report: MicrobatchReport) -> bool:
        """Send the original's metrics message when METRICS_TOPIC is set; never fail the run.

        It goes after the run's commit, so a lost metrics message loses nothing else.
        """
        settings = self.settings
        if settings.metrics_topic is None or settings.metrics_bootstrap_servers is None:
            return False
        config = kafka_client_config(
            settings.metrics_bootstrap_servers, settings.metrics_credentials
        )
        producer = Producer(config.as_dict({"client.id": "xmatch-metrics"}))
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
        if "database" in self.__dict__:
            self.database.dispose()
