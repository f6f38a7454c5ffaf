"""Read back what the pipeline published, as downstream steps see it (``read_committed``)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from xmatch_pipeline.decode import decode_alert
from xmatch_pipeline.publish.enriched_alert import APPENDED_FIELDS


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
            seen += 1
            yield {
                "partition": message.partition(),
                "offset": message.offset(),
                **_summary(message.value() or b""),
            }
    finally:
        consumer.close()


def _summary(value: bytes) -> dict[str, Any]:
    """ZTF's ids from an Avro container, or an LSST alert's from Rubin's framing under an
    output id of this pipeline (``publish.lsst_output``; registry ids are not looked up)."""
    if value[:1] != b"\x00":
        alert = decode_alert(value)
        return {
            "objectId": alert.object_id,
            "candid": alert.candid,
            **{name: alert.record.get(name) for name in APPENDED_FIELDS},
        }
    import io

    import fastavro

    from xmatch_pipeline.decode.lsst_schemas import PackagedLsstSchemas
    from xmatch_pipeline.decode.wire_format import split_wire_message
    from xmatch_pipeline.publish.lsst_output import output_schema_for_fixed_id

    output_id, payload = split_wire_message(value)
    schema = output_schema_for_fixed_id(output_id, PackagedLsstSchemas())
    record = fastavro.schemaless_reader(io.BytesIO(bytes(payload)), schema.parsed, None)
    if not isinstance(record, dict):
        raise ValueError(f"output schema {output_id} does not describe a record")
    source = record["diaSource"]
    dia_object = record.get("diaObject") or {}
    return {
        "schemaId": output_id,
        "diaObjectId": source.get("diaObjectId") or dia_object.get("diaObjectId"),
        "diaSourceId": source["diaSourceId"],
        **{name: record.get(name) for name in APPENDED_FIELDS},
    }


def tail_lines(bootstrap: str, topic: str, limit: int) -> Iterator[str]:
    for summary in tail_summaries(bootstrap, topic, limit):
        yield json.dumps(summary)
