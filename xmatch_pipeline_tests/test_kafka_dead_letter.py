"""Dead letters: original bytes and key, reason and origin headers, in the batch transaction."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from xmatch_pipeline.kafka.client_config import KafkaClientConfig
from xmatch_pipeline.microbatch.offset_range import OffsetRange
from xmatch_pipeline.publish.dead_letter import (
    DeadLetter,
    dead_letter_topic_for,
    publish_dead_letter,
)
from xmatch_pipeline.publish.kafka_transaction import TransactionalPublisher
from xmatch_pipeline.read.kafka_offsets import KafkaOffsetsReader
from xmatch_pipeline.read.kafka_range_reader import KafkaRangeReader, KafkaRecord
from xmatch_pipeline_tests.pipeline_fixtures import read_committed

GARBAGE = b"\x00not an avro container\xff"


def test_headers_carry_reason_and_origin() -> None:
    record = KafkaRecord("ztf_20240131_programid1", 7, 123456789012, b"ZTF24aaaaaaa", GARBAGE, 17)
    letter = DeadLetter.from_exception(record, ValueError("bad magic bytes"))
    assert letter.headers() == [
        ("reason", b"bad magic bytes"),
        ("error.type", b"ValueError"),
        ("origin.topic", b"ztf_20240131_programid1"),
        ("origin.partition", b"7"),
        ("origin.offset", b"123456789012"),
        ("origin.timestamp", b"17"),
    ]
    untimed = KafkaRecord("t", 0, 1, None, b"", None)
    assert "origin.timestamp" not in dict(DeadLetter(untimed, "empty", "X").headers())
    huge = DeadLetter(untimed, "é" * 10_000, "X").headers()[0][1]
    assert len(huge) <= 4096
    assert huge.decode("utf-8") == "é" * 2048


def test_dead_letter_topic_name() -> None:
    assert dead_letter_topic_for("xmatch") == "xmatch.dlq"
    assert dead_letter_topic_for("xmatch", "alerts-rejected") == "alerts-rejected"


def test_dead_letter_commits_with_the_output_and_offsets(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    config = KafkaClientConfig(kafka_bootstrap)
    source, output, dead_letters = new_topic("dl-in"), new_topic("dl-out"), new_topic("dl-dlq")
    with TransactionalPublisher(config, f"test-dl-writer-{uuid.uuid4().hex}") as writer:
        writer.init()
        with writer.transaction():
            writer.produce(source, value=b"good alert", key=b"ZTF1")
            writer.produce(source, value=GARBAGE, key=b"ZTF2")
            writer.commit()  # offsets 0-1, marker 2
    read_committed(kafka_bootstrap, source, expected_end=3)

    group = f"test-dl-{uuid.uuid4().hex[:8]}"
    with (
        KafkaRangeReader(config, group) as reader,
        TransactionalPublisher(config, f"test-dl-{uuid.uuid4().hex}") as publisher,
    ):
        publisher.init()
        with publisher.transaction():
            for chunk in reader.read(OffsetRange(source, 0, 0, 3), 10):
                for record in chunk:
                    if record.value == GARBAGE:
                        error = ValueError("not an Avro container file")
                        letter = DeadLetter.from_exception(record, error)
                        publish_dead_letter(publisher, dead_letters, letter)
                    else:
                        publisher.produce(output, value=record.value, key=record.key)
            publisher.commit_with_offsets({(source, 0): 3}, reader.consumer_group_metadata())

    [received] = read_committed(kafka_bootstrap, dead_letters, expected_end=2)
    key, value, headers = received.key, received.value, received.headers
    assert (key, value) == (b"ZTF2", GARBAGE)
    assert headers["reason"] == b"not an Avro container file"
    assert headers["error.type"] == b"ValueError"
    assert (headers["origin.topic"], headers["origin.partition"]) == (source.encode(), b"0")
    assert headers["origin.offset"] == b"1"
    assert int(headers["origin.timestamp"]) > 1_600_000_000_000
    assert [m.value for m in read_committed(kafka_bootstrap, output, 2)] == [b"good alert"]
    offsets = KafkaOffsetsReader(config, group, timeout_seconds=10)
    assert offsets.committed_offsets([(source, 0)]) == {(source, 0): 3}
