"""Bad input goes to a dead-letter topic, in the batch's own transaction.

A bad message must neither block its partition nor vanish: it is produced with its
original key and value as they came (a tombstone's null included), and headers saying why
and where it came from, in the same Kafka transaction as the batch's output and offsets, so
it is dead-lettered exactly once. Which failures are the alert's is ``bad_input``'s rule.

A dead letter too large for its own topic is cut: its value to the first
:data:`DEAD_LETTER_CUT_BYTES` bytes (the Avro header and embedded schema, enough to say what
it was), less if the topic allows less, its key to :data:`DEAD_LETTER_KEY_CUT_BYTES`; the
headers ``value.truncated.from`` / ``key.truncated.from`` give the original sizes, and the
reason and origin headers are always kept whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from xmatch_pipeline.publish.message_limits import record_bytes
from xmatch_pipeline.read.kafka_range_reader import KafkaRecord

DEAD_LETTER_SUFFIX = ".dlq"
MAX_REASON_BYTES = 4096
DEAD_LETTER_CUT_BYTES = 65_536
DEAD_LETTER_KEY_CUT_BYTES = 1024

HEADER_REASON = "reason"
HEADER_ERROR_TYPE = "error.type"
HEADER_ORIGIN_TOPIC = "origin.topic"
HEADER_ORIGIN_PARTITION = "origin.partition"
HEADER_ORIGIN_OFFSET = "origin.offset"
HEADER_ORIGIN_TIMESTAMP = "origin.timestamp"
HEADER_VALUE_TRUNCATED_FROM = "value.truncated.from"
HEADER_KEY_TRUNCATED_FROM = "key.truncated.from"


class MessageSink(Protocol):
    """Where a dead letter is produced: the batch's open transaction."""

    def produce(
        self,
        topic: str,
        value: bytes | None,
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


def fitted(
    dead_letter: DeadLetter, max_record_bytes: int | None
) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """``(value, key, headers)`` of the dead letter, cut to fit ``max_record_bytes``."""
    value, key, headers = dead_letter.record.value, dead_letter.record.key, dead_letter.headers()
    if max_record_bytes is None or record_bytes(value, key, headers) <= max_record_bytes:
        return value, key, headers
    if key is not None and len(key) > DEAD_LETTER_KEY_CUT_BYTES:
        headers.append((HEADER_KEY_TRUNCATED_FROM, str(len(key)).encode("ascii")))
        key = key[:DEAD_LETTER_KEY_CUT_BYTES]
    if value is not None:
        headers.append((HEADER_VALUE_TRUNCATED_FROM, str(len(value)).encode("ascii")))
        room = max_record_bytes - record_bytes(b"", key, headers)
        value = value[: max(0, min(DEAD_LETTER_CUT_BYTES, room))]
    return value, key, headers


def publish_dead_letter(
    sink: MessageSink, topic: str, dead_letter: DeadLetter, max_record_bytes: int | None = None
) -> None:
    """Produce the original key and value with reason and origin headers into the sink,
    cut to ``max_record_bytes`` (the topic's limit, see ``message_limits``) if larger."""
    value, key, headers = fitted(dead_letter, max_record_bytes)
    sink.produce(topic, value=value, key=key, headers=headers)
