"""Read exactly one partition's offset range ``[start, end)`` from Kafka.

A run owns a fixed range chosen by the sensor, so the reader assigns the partition and
starts at ``start`` itself (no subscription, no group membership, no auto-commit) and stops
on the *offset*, never on a message count: transaction markers and compaction leave gaps,
so a range of 100 offsets may hold fewer than 100 messages. The end is reached when a
message at or past ``end`` arrives, or the consumer's position (which librdkafka advances
past control markers) reaches ``end``. Short polls keep the last, partial chunk from
waiting out a long timeout, and a range that can never complete (beyond the high
watermark, or already deleted by retention) is refused up front with a typed error instead
of being skipped or waited on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from xmatch_pipeline.closing import ClosedOnExit
from xmatch_pipeline.kafka.client_config import KafkaClientConfig, KafkaOperationError
from xmatch_pipeline.kafka.errors import (
    AUTHORIZATION_CODES,
    SecurityErrorRecorder,
    authorization_failure,
)
from xmatch_pipeline.microbatch.offset_range import OffsetRange

logger = logging.getLogger(__name__)

MAX_MESSAGES_PER_POLL = 10_000

# Errors librdkafka reports while it reconnects on its own: keep polling until the stall
# deadline rather than failing the run on a broker's brief restart.
_TRANSIENT_CODES = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._RESOLVE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
    }
)


@dataclass(frozen=True)
class KafkaRecord:
    """One input message as read; a tombstone's value stays ``None`` (it is dead-lettered
    as it came, null)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None

    @property
    def size(self) -> int:
        """Bytes of the value (0 for a tombstone)."""
        return len(self.value) if self.value is not None else 0


class KafkaRangeError(KafkaOperationError):
    """Reading an offset range failed; ``offset_range`` says which."""

    def __init__(self, offset_range: OffsetRange, message: str) -> None:
        super().__init__(f"{offset_range}: {message}")
        self.offset_range = offset_range


class RangeBeyondHighWatermarkError(KafkaRangeError):
    """The range ends past the last committed offset: those messages do not exist yet."""

    def __init__(self, offset_range: OffsetRange, high_watermark: int) -> None:
        super().__init__(
            offset_range,
            f"end {offset_range.end} is beyond the partition's high watermark {high_watermark} "
            "(the last stable offset for read_committed: messages not yet written, or an "
            "upstream transaction still open); plan ranges from the current watermarks",
        )
        self.high_watermark = high_watermark


class OffsetsDeletedError(KafkaRangeError):
    """The range starts before the earliest offset still kept: retention deleted messages."""

    def __init__(self, offset_range: OffsetRange, low_watermark: int) -> None:
        super().__init__(
            offset_range,
            f"start {offset_range.start} was deleted by retention (earliest offset kept is "
            f"{low_watermark}); {low_watermark - offset_range.start} messages cannot be read. "
            "Nothing was skipped: an operator must accept the loss and move the consumer "
            "group's offset (kafka-consumer-groups --reset-offsets --to-earliest)",
        )
        self.low_watermark = low_watermark


class RangeReadStalledError(KafkaRangeError):
    """No progress towards the range's end within the stall timeout."""


class KafkaFetchError(KafkaRangeError):
    """The broker or client reported an error while fetching the range."""

    def __init__(self, offset_range: OffsetRange, offset: int, error: KafkaError) -> None:
        super().__init__(
            offset_range,
            f"Kafka error at offset {offset}: {error.name()} ({error.str()})",
        )
        self.offset = offset
        self.kafka_error = error


class KafkaRangeReader(ClosedOnExit):
    """Reads offset ranges for one consumer group without ever committing or joining it.

    The group id only identifies whose offsets a transaction commits
    (:meth:`consumer_group_metadata`); backfills use a reader whose metadata is never sent.
    """

    def __init__(
        self,
        client_config: KafkaClientConfig,
        group_id: str,
        *,
        poll_timeout_seconds: float = 0.2,
        stall_timeout_seconds: float = 60.0,
        request_timeout_seconds: float = 10.0,
        request_attempts: int = 3,
    ) -> None:
        if not group_id:
            raise ValueError("consumer group id must not be empty")
        self.group_id = group_id
        self._poll_timeout = poll_timeout_seconds
        self._stall_timeout = stall_timeout_seconds
        self._request_timeout = request_timeout_seconds
        self._request_attempts = request_attempts
        self._config = client_config
        self._security = SecurityErrorRecorder()
        self._consumer = Consumer(
            {
                "error_cb": self._security,
                **client_config.as_dict(
                    {
                        "group.id": group_id,
                        "client.id": "xmatch-range-reader",
                        "enable.auto.commit": False,
                        "enable.auto.offset.store": False,
                        "isolation.level": "read_committed",
                        "enable.partition.eof": True,
                        # Fail loudly instead of jumping elsewhere when an offset is out of range.
                        "auto.offset.reset": "error",
                        # Alerts are ~65 kB: librdkafka's default 1 MB per partition fetch brings
                        # ~15 of them per round trip, and Python waited on the broker for a third
                        # of a run. Fetch big and keep a bounded prefetch queue (memory stays
                        # flat whatever the range size).
                        "max.partition.fetch.bytes": 16 * 1024 * 1024,
                        "fetch.max.bytes": 64 * 1024 * 1024,
                        "queued.max.messages.kbytes": 128 * 1024,
                    }
                ),
            }
        )

    def consumer_group_metadata(self) -> Any:
        """The group metadata to pass to ``send_offsets_to_transaction`` for this group."""
        return self._consumer.consumer_group_metadata()

    def watermarks(self, topic: str, partition: int) -> tuple[int, int]:
        """``(low, high)`` of a partition; high is the last stable offset (read_committed)."""
        where = f"{topic}[{partition}]"
        for attempt in range(1, self._request_attempts + 1):
            try:
                low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, partition),
                    timeout=self._request_timeout,
                    cached=False,
                )
                return int(low), int(high)
            except KafkaException as exception:
                error: KafkaError = exception.args[0]
                self._raise_if_refused(exception, error, topic)
                if error.code() in _TRANSIENT_CODES and attempt < self._request_attempts:
                    logger.warning("watermarks of %s: %s, retrying", where, error.str())
                    time.sleep(0.5 * 2 ** (attempt - 1))
                    continue
                raise KafkaOperationError(
                    f"could not read the watermarks of {where}: {error.name()} "
                    f"({error.str()}); check that the topic exists and the broker is reachable"
                ) from exception
        raise AssertionError("unreachable")  # pragma: no cover

    def check_readable(self, offset_range: OffsetRange) -> tuple[int, int]:
        """Refuse a range that cannot be read completely; returns the watermarks."""
        low, high = self.watermarks(offset_range.topic, offset_range.partition)
        if offset_range.start < low:
            raise OffsetsDeletedError(offset_range, low)
        if offset_range.end > high:
            raise RangeBeyondHighWatermarkError(offset_range, high)
        return low, high

    def read(self, offset_range: OffsetRange, chunk_size: int) -> Iterator[list[KafkaRecord]]:
        """Every committed message with an offset in the range, in chunks of ``chunk_size``.

        The last chunk may be shorter; no empty chunk is yielded. Time the caller spends
        between chunks does not count against the stall timeout.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk size must be >= 1, got {chunk_size}")
        self.check_readable(offset_range)
        partition = TopicPartition(offset_range.topic, offset_range.partition, offset_range.start)
        self._consumer.assign([partition])
        try:
            yield from self._read_assigned(offset_range, chunk_size)
        finally:
            self._consumer.unassign()

    def _read_assigned(
        self, offset_range: OffsetRange, chunk_size: int
    ) -> Iterator[list[KafkaRecord]]:
        next_offset = offset_range.start
        chunk: list[KafkaRecord] = []
        last_progress = time.monotonic()
        last_transient: KafkaError | None = None
        while next_offset < offset_range.end:
            wanted = min(chunk_size - len(chunk), MAX_MESSAGES_PER_POLL)
            messages: list[Message] = self._consumer.consume(wanted, self._poll_timeout)
            reached_end = False
            for message in messages:
                error = message.error()
                if error is not None:
                    last_transient = self._transient(error, offset_range, next_offset) or (
                        last_transient
                    )
                    continue
                record = _record(message, offset_range)
                if record.offset >= offset_range.end:
                    reached_end = True
                    break
                if record.offset < next_offset:
                    continue  # already delivered (a refetch after a reconnect)
                chunk.append(record)
                next_offset = record.offset + 1
                last_progress = time.monotonic()
            if not reached_end:
                position = self._position(offset_range)
                if position > next_offset:
                    next_offset = position  # only gaps (markers, aborted or compacted) between
                    last_progress = time.monotonic()
            else:
                next_offset = offset_range.end
            if len(chunk) >= chunk_size or (chunk and next_offset >= offset_range.end):
                yield chunk
                chunk = []
                last_progress = time.monotonic()
            refused_login = self._security.failure(self._config)
            if refused_login is not None:
                raise refused_login
            if time.monotonic() - last_progress > self._stall_timeout:
                raise self._stalled(offset_range, next_offset, last_transient)

    def _transient(
        self, error: KafkaError, offset_range: OffsetRange, next_offset: int
    ) -> KafkaError | None:
        """A message's error: None for end-of-partition, the error itself if transient (the
        client reconnects on its own); anything else fails the read."""
        if error.code() == KafkaError._PARTITION_EOF:
            return None  # the position check decides whether the range is done
        if error.code() in _TRANSIENT_CODES and not error.fatal():
            return error
        if error.code() in AUTHORIZATION_CODES:
            raise self._refused(error, offset_range.topic)
        raise KafkaFetchError(offset_range, next_offset, error)

    def _raise_if_refused(self, exception: KafkaException, error: KafkaError, topic: str) -> None:
        """A refused login (reported to error_cb, served by a poll) or a missing READ ACL."""
        if not self._consumer.assignment():
            with suppress(KafkaException):  # nothing assigned: serves callbacks, consumes nothing
                self._consumer.poll(0)
        refused_login = self._security.failure(self._config)
        if refused_login is not None:
            raise refused_login from exception
        if error.code() in AUTHORIZATION_CODES:
            raise self._refused(error, topic) from exception

    def _refused(self, error: KafkaError, topic: str) -> KafkaOperationError:
        return authorization_failure(
            self._config, error, operation="READ", resource="topic", name=topic
        )

    def _position(self, offset_range: OffsetRange) -> int:
        positions = self._consumer.position(
            [TopicPartition(offset_range.topic, offset_range.partition)]
        )
        return int(positions[0].offset)  # negative (OFFSET_INVALID) until a first fetch

    def _stalled(
        self, offset_range: OffsetRange, next_offset: int, last_transient: KafkaError | None
    ) -> RangeReadStalledError:
        cause = f"; last client error: {last_transient.str()}" if last_transient else ""
        try:
            low, high = self.watermarks(offset_range.topic, offset_range.partition)
            state = f"watermarks now low={low} high={high}"
        except KafkaOperationError as error:
            state = f"watermarks unavailable ({error})"
        return RangeReadStalledError(
            offset_range,
            f"no progress for {self._stall_timeout:.0f} s at offset {next_offset} ({state}"
            f"{cause}); check the broker, then run the range again",
        )

    def close(self) -> None:
        """Leave without committing anything (the transaction commits the offsets)."""
        self._consumer.close()


def _record(message: Message, offset_range: OffsetRange) -> KafkaRecord:
    offset = message.offset()
    if offset is None:  # librdkafka sets it on every message without an error
        raise KafkaRangeError(offset_range, "the client returned a message without an offset")
    timestamp_type, timestamp = message.timestamp()
    return KafkaRecord(
        topic=offset_range.topic,
        partition=offset_range.partition,
        offset=offset,
        key=message.key(),
        value=message.value(),
        timestamp_ms=None if timestamp_type == TIMESTAMP_NOT_AVAILABLE else int(timestamp),
    )
