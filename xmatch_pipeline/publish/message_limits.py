"""How large a message the output and dead-letter topics accept, checked before producing.

The broker refuses a record batch larger than the topic's ``max.message.bytes`` (1,048,588
by default), and inside a transaction such a refusal aborts the whole range: one large
alert would fail every attempt. So each run reads both topics' limits from the broker,
sizes the producer to them, and checks every message *before* producing it; one that does
not fit is the alert's fault and is dead-lettered instead (see ``bad_input``).

The check counts the message uncompressed, as a batch of one record at its widest framing
(:data:`FRAMING_BYTES`), so a message it passes is never refused by the broker, compressed
or not.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    ResourceType,
)

from xmatch_pipeline.kafka.client_config import KafkaClientConfig

logger = logging.getLogger(__name__)

KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
"""The broker's default ``message.max.bytes`` (1 MiB + the 12-byte log entry header)."""
FRAMING_BYTES = 12 + 61 + 36
"""Log entry header, record batch header, and one record's varints at their widest."""
HEADER_FRAMING_BYTES = 10
"""Two varints per header (key length, value length) at their widest."""
MAX_PRODUCER_BATCH_BYTES = 1_000_000
"""librdkafka's batch size; a larger message still goes, alone in its batch."""


def record_bytes(
    value: bytes | None,
    key: bytes | str | None = None,
    headers: Sequence[tuple[str, bytes]] = (),
) -> int:
    """The most bytes one record can take on the broker, counted as the broker counts."""
    key_bytes = len(key.encode("utf-8") if isinstance(key, str) else key or b"")
    header_bytes = sum(
        HEADER_FRAMING_BYTES + len(name.encode("utf-8")) + len(data) for name, data in headers
    )
    return FRAMING_BYTES + key_bytes + len(value or b"") + header_bytes


@dataclass(frozen=True)
class MessageLimits:
    """``max.message.bytes`` of the output and dead-letter topics."""

    output_bytes: int = KAFKA_DEFAULT_MAX_MESSAGE_BYTES
    dead_letter_bytes: int = KAFKA_DEFAULT_MAX_MESSAGE_BYTES

    @property
    def producer_max_bytes(self) -> int:
        """The producer's ``message.max.bytes``: never below what either topic accepts."""
        return max(self.output_bytes, self.dead_letter_bytes)

    @property
    def producer_batch_bytes(self) -> int:
        """The producer's ``batch.size``: a batch of several records must fit either topic."""
        smallest = min(self.output_bytes, self.dead_letter_bytes) - FRAMING_BYTES
        return max(1, min(MAX_PRODUCER_BATCH_BYTES, smallest))


def read_message_limits(
    client_config: KafkaClientConfig,
    output_topic: str,
    dead_letter_topic: str,
    *,
    timeout_seconds: float = 10.0,
    admin: AdminClient | None = None,
) -> MessageLimits:
    """The topics' ``max.message.bytes`` from the broker.

    A topic that does not exist yet (created on first produce) gets the broker's
    ``message.max.bytes``. When the broker cannot say (no DescribeConfigs permission, no
    answer within ``timeout_seconds``), Kafka's default is assumed and a warning logged:
    a smaller real limit then fails the run as before, a larger one only dead-letters
    messages that would have fit.
    """
    if admin is None:  # a long-lived process passes its kept one (no connection per run)
        admin = AdminClient(client_config.as_dict({"client.id": "xmatch-message-limits"}))
    try:
        topics = _topic_limits(admin, [output_topic, dead_letter_topic], timeout_seconds)
        missing = [topic for topic in (output_topic, dead_letter_topic) if topic not in topics]
        if missing:
            broker = _broker_limit(admin, timeout_seconds)
            topics |= dict.fromkeys(missing, broker)
    except (KafkaException, TimeoutError, OSError, ValueError) as error:
        logger.warning(
            "could not read max.message.bytes of %s and %s (%s); assuming Kafka's default %d",
            output_topic,
            dead_letter_topic,
            error,
            KAFKA_DEFAULT_MAX_MESSAGE_BYTES,
        )
        return MessageLimits()
    return MessageLimits(topics[output_topic], topics[dead_letter_topic])


def _topic_limits(admin: AdminClient, topics: list[str], timeout: float) -> dict[str, int]:
    resources = [ConfigResource(ResourceType.TOPIC, topic) for topic in dict.fromkeys(topics)]
    futures = admin.describe_configs(resources, request_timeout=timeout)
    limits: dict[str, int] = {}
    for resource, future in futures.items():
        try:
            entries = future.result(timeout=timeout + 1.0)
        except KafkaException as exception:
            if exception.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                continue
            raise
        limits[resource.name] = int(entries["max.message.bytes"].value)
    return limits


def _broker_limit(admin: AdminClient, timeout: float) -> int:
    brokers = admin.list_topics(timeout=timeout).brokers
    if not brokers:
        raise ValueError("the cluster reported no broker")
    resource = ConfigResource(ResourceType.BROKER, str(min(brokers)))
    future = admin.describe_configs([resource], request_timeout=timeout)[resource]
    return int(future.result(timeout=timeout + 1.0)["message.max.bytes"].value)
