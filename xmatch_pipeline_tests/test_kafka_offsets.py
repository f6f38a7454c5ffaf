"""The sensor's offsets reader against the real broker, and against no broker at all."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from xmatch_pipeline.kafka.client_config import KafkaClientConfig
from xmatch_pipeline.read.kafka_offsets import (
    KafkaOffsetsReader,
    KafkaUnavailableError,
    PartitionLag,
    TopicNotFoundError,
)

pytestmark = pytest.mark.timeout(60)


def _produce(bootstrap: str, topic: str, counts: dict[int, int]) -> None:
    """Plain (non-transactional) messages: offsets are dense, so high = count."""
    producer = Producer({"bootstrap.servers": bootstrap})
    for partition, count in counts.items():
        for number in range(count):
            producer.produce(topic, value=f"p{partition}-{number}".encode(), partition=partition)
    assert producer.flush(20) == 0


def _commit(bootstrap: str, group: str, topic: str, partition: int, offset: int) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        consumer.commit(offsets=[TopicPartition(topic, partition, offset)], asynchronous=False)
    finally:
        consumer.close()


def test_lag_with_and_without_a_committed_offset(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    topic = new_topic("offsets-lag", partitions=2)
    _produce(kafka_bootstrap, topic, {0: 10, 1: 4})
    group = f"test-lag-{uuid.uuid4().hex[:8]}"
    _commit(kafka_bootstrap, group, topic, 0, 6)

    reader = KafkaOffsetsReader(KafkaClientConfig(kafka_bootstrap), group, timeout_seconds=10)
    assert reader.partitions([topic]) == [(topic, 0), (topic, 1)]
    assert reader.committed_offsets([(topic, 0), (topic, 1)]) == {
        (topic, 0): 6,
        (topic, 1): None,
    }
    lags = reader.lags([topic])
    assert lags == [
        PartitionLag(topic, 0, committed=6, low=0, high=10, group_has_offset=True),
        PartitionLag(topic, 1, committed=0, low=0, high=4, group_has_offset=False),
    ]
    assert [lag.lag for lag in lags] == [4, 4]
    assert [lag.offsets_deleted_unprocessed for lag in lags] == [0, 0]


def test_one_reader_sees_every_new_commit_of_the_group(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    """The offset-fetching handle is kept between calls (a run's start check reuses it):
    each call still asks the coordinator, so a commit made in between is seen."""
    topic = new_topic("offsets-kept", partitions=1)
    _produce(kafka_bootstrap, topic, {0: 10})
    group = f"test-kept-{uuid.uuid4().hex[:8]}"
    reader = KafkaOffsetsReader(KafkaClientConfig(kafka_bootstrap), group, timeout_seconds=10)
    try:
        assert reader.committed_offsets([(topic, 0)]) == {(topic, 0): None}
        for offset in (3, 7, 10):
            _commit(kafka_bootstrap, group, topic, 0, offset)
            assert reader.committed_offsets([(topic, 0)]) == {(topic, 0): offset}
    finally:
        reader.close()
    # Closed, it makes a new handle when asked again.
    assert reader.committed_offsets([(topic, 0)]) == {(topic, 0): 10}
    reader.close()


def test_group_without_offset_starts_at_the_low_watermark(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    from confluent_kafka.admin import AdminClient

    topic = new_topic("offsets-low")
    _produce(kafka_bootstrap, topic, {0: 8})
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.delete_records([TopicPartition(topic, 0, 5)]).values():
        future.result(timeout=10)
    stale_group = f"test-stale-{uuid.uuid4().hex[:8]}"
    _commit(kafka_bootstrap, stale_group, topic, 0, 2)
    config = KafkaClientConfig(kafka_bootstrap)

    [fresh] = KafkaOffsetsReader(config, f"test-new-{uuid.uuid4().hex[:8]}", 10).lags([topic])
    assert (fresh.committed, fresh.low, fresh.high, fresh.lag) == (5, 5, 8, 3)
    assert not fresh.group_has_offset

    # A group whose committed offset retention has since deleted: the loss is reported.
    [stale] = KafkaOffsetsReader(config, stale_group, 10).lags([topic])
    assert (stale.committed, stale.low, stale.lag) == (2, 5, 6)
    assert stale.offsets_deleted_unprocessed == 3


def test_topics_are_listed_without_internal_ones(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    topic = new_topic("offsets-list", partitions=3)
    topics = KafkaOffsetsReader(KafkaClientConfig(kafka_bootstrap), "any-group").list_topics()
    assert topics[topic] == 3
    assert not [name for name in topics if name.startswith("__")]


def test_missing_topic_is_named(kafka_bootstrap: str) -> None:
    missing = f"offsets-missing-{uuid.uuid4().hex[:8]}"
    reader = KafkaOffsetsReader(KafkaClientConfig(kafka_bootstrap), "any-group")
    with pytest.raises(TopicNotFoundError, match=missing):
        reader.lags([missing])


@pytest.mark.timeout(15)
def test_unreachable_broker_fails_fast_with_a_typed_error() -> None:
    reader = KafkaOffsetsReader(KafkaClientConfig("127.0.0.1:1"), "any-group", 2.0)
    with pytest.raises(KafkaUnavailableError, match=r"127\.0\.0\.1:1"):
        reader.lags(["ztf_20240101_programid1"])
