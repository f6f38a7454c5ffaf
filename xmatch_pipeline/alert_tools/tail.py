"""Read back what the pipeline published, as downstream steps see it (``read_committed``)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from xmatch_pipeline.decode import decode_alert


def tail_summaries(
    bootstrap: str, topic: str, limit: int, timeout_seconds: float = 10.0
) -> Iterator[dict[str, Any]]:
    """The first ``limit`` committed messages of ``topic``: ids and the crossmatch fields."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"xmatch-tail-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "socket.connection.setup.timeout.ms": int(timeout_seconds * 1000),
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_seconds)
        partitions = metadata.topics[topic].partitions
        if metadata.topics[topic].error is not None or not partitions:
            raise KafkaException(metadata.topics[topic].error)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        seen = 0
        deadline = time.monotonic() + timeout_seconds
        while seen < limit and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error() is not None:
                continue
            alert = decode_alert(message.value() or b"")
            seen += 1
            yield {
                "partition": message.partition(),
                "offset": message.offset(),
                "objectId": alert.object_id,
                "candid": alert.candid,
                "xmatches": alert.record.get("xmatches"),
                "xmatch_matches": alert.record.get("xmatch_matches"),
                "xmatch_provenance": alert.record.get("xmatch_provenance"),
            }
    finally:
        consumer.close()


def tail_lines(bootstrap: str, topic: str, limit: int) -> Iterator[str]:
    for summary in tail_summaries(bootstrap, topic, limit):
        yield json.dumps(summary)
