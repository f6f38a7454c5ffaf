"""Exactly-once publishing against the real broker: offsets, aborts and fencing."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from xmatch_pipeline.kafka.client_config import KafkaClientConfig
from xmatch_pipeline.microbatch.offset_range import OffsetRange
from xmatch_pipeline.publish.kafka_transaction import (
    ProducerFencedError,
    TransactionalPublisher,
    TransactionalPublisherError,
    TransactionTimeouts,
    backfill_transactional_id,
    transactional_id_for,
)
from xmatch_pipeline.read.kafka_offsets import KafkaOffsetsReader
from xmatch_pipeline.read.kafka_range_reader import KafkaRangeReader
from xmatch_pipeline_tests.pipeline_fixtures import read_committed, write_transactions

pytestmark = pytest.mark.timeout(90)

FAST = TransactionTimeouts(init_seconds=20, operation_seconds=20, retry_backoff_seconds=0.2)


def test_output_and_input_offsets_commit_together_exactly_once(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    config = KafkaClientConfig(kafka_bootstrap)
    source = new_topic("tx-input")
    output = new_topic("tx-output")
    write_transactions(kafka_bootstrap, source, [(6, True)])  # offsets 0-5, marker 6
    group = f"test-live-{uuid.uuid4().hex[:8]}"
    offset_range = OffsetRange(source, 0, 0, 7)

    with (
        KafkaRangeReader(config, group) as reader,
        TransactionalPublisher(config, transactional_id_for(group, source, 0), FAST) as publisher,
    ):
        publisher.init()
        publisher.begin()
        for chunk in reader.read(offset_range, chunk_size=4):
            for record in chunk:
                publisher.produce(output, value=(record.value or b"").upper(), key=record.key)
        assert publisher.produced_in_transaction == 6
        publisher.commit_with_offsets(
            {(source, 0): offset_range.end}, reader.consumer_group_metadata()
        )
        assert not publisher.in_transaction

    offsets = KafkaOffsetsReader(config, group, timeout_seconds=10)
    assert offsets.committed_offsets([(source, 0)]) == {(source, 0): 7}
    [lag] = offsets.lags([source])
    assert (lag.committed, lag.high, lag.lag, lag.group_has_offset) == (7, 7, 0, True)

    received = read_committed(kafka_bootstrap, output, expected_end=7)
    assert [message.value for message in received] == [f"M{n}".encode() for n in range(6)]
    assert [message.key for message in received] == [f"k{n}".encode() for n in range(6)]


def test_aborted_transaction_is_invisible(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    output = new_topic("tx-abort")
    config = KafkaClientConfig(kafka_bootstrap)
    with TransactionalPublisher(config, f"test-abort-{uuid.uuid4().hex}", FAST) as publisher:
        publisher.init()
        publisher.begin()
        for number in range(3):
            publisher.produce(output, value=f"aborted{number}".encode())
        publisher.flush()  # really on the broker, not just dropped from the local queue
        publisher.abort()

        def crashing_batch() -> None:
            with publisher.transaction():
                publisher.produce(output, value=b"rolled back by the context manager")
                publisher.flush()
                raise RuntimeError("crash in the batch")

        with pytest.raises(RuntimeError, match="crash in the batch"):
            crashing_batch()
        assert not publisher.in_transaction

        with publisher.transaction():
            publisher.produce(output, value=b"kept")
            publisher.commit()

    # aborted0-2 at 0-2, abort marker 3, rolled back at 4, marker 5, kept at 6, marker 7.
    received = read_committed(kafka_bootstrap, output, expected_end=8)
    assert [message.value for message in received] == [b"kept"]


def test_restarted_run_fences_its_dead_predecessor(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    config = KafkaClientConfig(kafka_bootstrap)
    source = new_topic("tx-fence-input")
    output = new_topic("tx-fence-output")
    write_transactions(kafka_bootstrap, source, [(2, True)])  # offsets 0-1, marker 2
    group = f"test-live-{uuid.uuid4().hex[:8]}"
    transactional_id = transactional_id_for(group, source, 0)
    reader = KafkaRangeReader(config, group)

    dead = TransactionalPublisher(config, transactional_id, FAST)
    dead.init()
    dead.begin()
    dead.produce(output, value=b"from the dead run")
    dead.flush()  # delivered but never committed: the run "died" here

    with TransactionalPublisher(config, transactional_id, FAST) as restarted:
        restarted.init()  # fences the dead run and aborts its open transaction
        restarted.begin()
        restarted.produce(output, value=b"from the restarted run")
        restarted.commit_with_offsets({(source, 0): 3}, reader.consumer_group_metadata())

    with pytest.raises(ProducerFencedError, match="took over"):
        dead.commit_with_offsets({(source, 0): 3}, reader.consumer_group_metadata())
    reader.close()

    # dead message 0, abort marker 1, restarted message 2, commit marker 3.
    received = read_committed(kafka_bootstrap, output, expected_end=4)
    assert [message.value for message in received] == [b"from the restarted run"]
    offsets = KafkaOffsetsReader(config, group, timeout_seconds=10)
    assert offsets.committed_offsets([(source, 0)]) == {(source, 0): 3}


def test_misuse_is_refused_before_reaching_kafka(kafka_bootstrap: str) -> None:
    publisher = TransactionalPublisher(
        KafkaClientConfig(kafka_bootstrap), f"test-misuse-{uuid.uuid4().hex}", FAST
    )
    with pytest.raises(TransactionalPublisherError, match=r"init\(\) before begin"):
        publisher.begin()
    with pytest.raises(TransactionalPublisherError, match="outside a transaction"):
        publisher.produce("any-topic", value=b"x")
    with pytest.raises(TransactionalPublisherError, match="without an open transaction"):
        publisher.commit()


def test_transactional_ids_are_stable_and_distinct() -> None:
    live = transactional_id_for("xmatch", "ztf_20240101_programid1", 3)
    assert live == "xmatch-xmatch-ztf_20240101_programid1-3"
    assert live == transactional_id_for("xmatch", "ztf_20240101_programid1", 3)
    assert live != transactional_id_for("xmatch", "ztf_20240101_programid1", 4)
    backfill = backfill_transactional_id(OffsetRange("ztf_20240101_programid1", 3, 10, 20))
    assert backfill == "xmatch-backfill-ztf_20240101_programid1-3-10-20"
    assert transactional_id_for("group one", "t", 0) == "xmatch-group_one-t-0"


def test_full_local_queue_waits_instead_of_failing(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    output = new_topic("tx-queue")
    tiny_queue = KafkaClientConfig(kafka_bootstrap, extra={"queue.buffering.max.messages": 3})
    with TransactionalPublisher(tiny_queue, f"test-queue-{uuid.uuid4().hex}", FAST) as publisher:
        publisher.init()
        with publisher.transaction():
            for number in range(40):  # far more than the queue holds: BufferError inside
                publisher.produce(output, value=f"q{number}".encode())
            publisher.commit()
    received = read_committed(kafka_bootstrap, output, expected_end=41)
    assert [message.value for message in received] == [f"q{n}".encode() for n in range(40)]
