"""The range reader against the real broker: exact ranges across transaction gaps."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from xmatch_pipeline.kafka.client_config import KafkaClientConfig, KafkaOperationError
from xmatch_pipeline.microbatch.offset_range import OffsetRange
from xmatch_pipeline.read.kafka_range_reader import (
    KafkaRangeReader,
    OffsetsDeletedError,
    RangeBeyondHighWatermarkError,
)
from xmatch_pipeline_tests.pipeline_fixtures import write_transactions

pytestmark = pytest.mark.timeout(60)


def _reader(bootstrap: str, **options: Any) -> KafkaRangeReader:
    return KafkaRangeReader(
        KafkaClientConfig(bootstrap), f"test-group-{uuid.uuid4().hex[:8]}", **options
    )


def test_reads_exactly_the_range_across_transaction_markers(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    topic = new_topic("range-markers")
    # Offsets: m0..m3 at 0-3, marker 4, m4..m7 at 5-8, marker 9, m8..m11 at 10-13, marker 14.
    write_transactions(kafka_bootstrap, topic, [(4, True), (4, True), (4, True)])

    with _reader(kafka_bootstrap, stall_timeout_seconds=30) as reader:
        assert reader.watermarks(topic, 0) == (0, 15)

        chunks = list(reader.read(OffsetRange(topic, 0, 2, 12), chunk_size=3))
        offsets = [record.offset for chunk in chunks for record in chunk]
        assert offsets == [2, 3, 5, 6, 7, 8, 10, 11]
        assert [len(chunk) for chunk in chunks] == [3, 3, 2]

        # The range ends on a commit marker at the very end of the log: nothing at or past
        # the end ever arrives, the position alone says the range is complete.
        tail = [r for chunk in reader.read(OffsetRange(topic, 0, 10, 15), 100) for r in chunk]
        assert [record.offset for record in tail] == [10, 11, 12, 13]
        assert [record.value for record in tail] == [b"m8", b"m9", b"m10", b"m11"]
        assert tail[0].key == b"k8"
        assert tail[0].topic == topic
        assert tail[0].partition == 0
        assert tail[0].timestamp_ms is not None
        assert tail[0].timestamp_ms > 1_600_000_000_000

        # A range made only of a gap (one marker) completes with no chunk at all.
        assert list(reader.read(OffsetRange(topic, 0, 9, 10), 10)) == []


def test_aborted_transactions_are_invisible_and_leave_a_gap(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    topic = new_topic("range-aborted")
    # m0,m1 at 0-1, marker 2; aborted m2..m4 at 3-5, abort marker 6; m5 at 7, marker 8.
    write_transactions(kafka_bootstrap, topic, [(2, True), (3, False), (1, True)])

    with _reader(kafka_bootstrap, stall_timeout_seconds=30) as reader:
        records = [r for chunk in reader.read(OffsetRange(topic, 0, 0, 9), 50) for r in chunk]
    assert [(record.offset, record.value) for record in records] == [
        (0, b"m0"),
        (1, b"m1"),
        (7, b"m5"),
    ]


def test_range_beyond_high_watermark_is_refused(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    topic = new_topic("range-beyond")
    write_transactions(kafka_bootstrap, topic, [(3, True)])
    with (
        _reader(kafka_bootstrap) as reader,
        pytest.raises(RangeBeyondHighWatermarkError, match="high watermark 4") as caught,
    ):
        list(reader.read(OffsetRange(topic, 0, 0, 100), 10))
    assert caught.value.high_watermark == 4
    assert caught.value.offset_range == OffsetRange(topic, 0, 0, 100)


def test_range_deleted_by_retention_is_refused(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    topic = new_topic("range-deleted")
    write_transactions(kafka_bootstrap, topic, [(5, True)])
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    deleted = admin.delete_records([TopicPartition(topic, 0, 3)], request_timeout=10)
    for future in deleted.values():
        future.result(timeout=10)

    with _reader(kafka_bootstrap) as reader:
        with pytest.raises(OffsetsDeletedError, match="deleted by retention") as caught:
            list(reader.read(OffsetRange(topic, 0, 1, 4), 10))
        assert caught.value.low_watermark == 3
        # What is still there reads fine.
        records = [r for chunk in reader.read(OffsetRange(topic, 0, 3, 6), 10) for r in chunk]
    assert [record.offset for record in records] == [3, 4]


def test_unknown_topic_is_a_typed_error(kafka_bootstrap: str) -> None:
    missing = f"no-such-topic-{uuid.uuid4().hex[:8]}"
    with (
        _reader(kafka_bootstrap, request_timeout_seconds=3, request_attempts=1) as reader,
        pytest.raises(KafkaOperationError, match=missing),
    ):
        list(reader.read(OffsetRange(missing, 0, 0, 1), 10))


def test_consumer_group_metadata_names_the_group(kafka_bootstrap: str) -> None:
    with KafkaRangeReader(KafkaClientConfig(kafka_bootstrap), "xmatch-live-group") as reader:
        assert reader.group_id == "xmatch-live-group"
        assert "xmatch-live-group" in str(reader.consumer_group_metadata())
