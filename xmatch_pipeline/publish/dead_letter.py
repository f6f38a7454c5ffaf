"""Undecodable input goes to a dead-letter topic, in the batch's own transaction.

A bad message must neither block its partition nor vanish: it is produced with its
original key and bytes, and headers saying why and where it came from, in the same Kafka
transaction as the batch's output and offsets, so it is dead-lettered exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from xmatch_pipeline.read.kafka_range_reader import KafkaRecord

DEAD_LETTER_SUFFIX = ".dlq"
MAX_REASON_BYTES = 4096

HEADER_REASON = "reason"
HEADER_ERROR_TYPE = "error.type"
HEADER_ORIGIN_TOPIC = "origin.topic"
HEADER_ORIGIN_PARTITION = "origin.partition"
HEADER_ORIGIN_OFFSET = "origin.offset"
HEADER_ORIGIN_TIMESTAMP = "origin.timestamp"


class MessageSink(Protocol):
    """Where a dead letter is produced: the batch's open transaction."""

    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | str | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None: ...


@dataclass(frozen=True)
class DeadLetter:
    """An input message that could not be processed, and why."""

    record: KafkaRecord
    reason: str
    error_type: str

    @classmethod
    def from_exception(cls, record: KafkaRecord, error: BaseException) -> DeadLetter:
        return cls(record, str(error) or type(error).__name__, type(error).__qualname__)

    def headers(self) -> list[tuple[str, bytes]]:
        """Reason and origin as UTF-8 headers; numbers in decimal."""
        reason = self.reason.encode("utf-8")[:MAX_REASON_BYTES].decode("utf-8", "ignore")
        headers = [
            (HEADER_REASON, reason.encode("utf-8")),
            (HEADER_ERROR_TYPE, self.error_type.encode("utf-8")),
            (HEADER_ORIGIN_TOPIC, self.record.topic.encode("utf-8")),
            (HEADER_ORIGIN_PARTITION, str(self.record.partition).encode("ascii")),
            (HEADER_ORIGIN_OFFSET, str(self.record.offset).encode("ascii")),
        ]
        if self.record.timestamp_ms is not None:
            headers.append((HEADER_ORIGIN_TIMESTAMP, str(self.record.timestamp_ms).encode()))
        return headers


def dead_letter_topic_for(output_topic: str, configured: str | None = None) -> str:
    """The configured dead-letter topic, or ``<output>.dlq``."""
    return configured or f"{output_topic}{DEAD_LETTER_SUFFIX}"


def publish_dead_letter(sink: MessageSink, topic: str, dead_letter: DeadLetter) -> None:
    """Produce the original key and bytes with reason and origin headers into the sink."""
    sink.produce(
        topic,
        value=dead_letter.record.value,
        key=dead_letter.record.key,
        headers=dead_letter.headers(),
    )
