"""The naive way, as the original step did it, in one process (the baseline to beat 5x).

Per message: ``fastavro.reader`` parses the embedded schema; per batch: one crossmatch
(the same local engine, keyed by objectId), matches joined back per object with a pandas
merge (first row wins); per message: the schema text parsed again with ``xmatches``
appended and the alert re-encoded with ``fastavro.writer`` (schema embedded), one
autocommitted INSERT per row, a plain produce; per batch: flush and commit the offsets.
"""

from __future__ import annotations

import io
import json
from typing import Any

import fastavro
import pandas as pd
import psycopg2  # type: ignore[import-untyped]
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from xmatch_pipeline.match.catalogs import allwise
from xmatch_pipeline.match.local.index import LocalCrossmatchEngine
from xmatch_pipeline.microbatch.offset_range import OffsetRange
from xmatch_pipeline.publish.enriched_alert import xmatches_field
from xmatch_pipeline.settings import PipelineSettings

_ALLWISE_COLUMNS = ", ".join(allwise.DATABASE_COLUMNS[column] for column in allwise.CDS_COLUMNS)


def _insert_rows(cursor: Any, records: list[dict[str, Any]], joined: pd.DataFrame) -> None:
    by_object = joined.drop_duplicates("objectId", keep="first").set_index("objectId")
    placeholders = ", ".join(["%s"] * len(allwise.DATABASE_COLUMNS))
    for record in records:
        oid = record["objectId"]
        cursor.execute("INSERT INTO object (oid) VALUES (%s) ON CONFLICT DO NOTHING", (oid,))
        match = by_object.loc[oid]
        if pd.isna(match["AllWISE"]):
            continue
        values = [_avro_value(match[column]) for column in allwise.CDS_COLUMNS]
        cursor.execute(
            f"INSERT INTO allwise ({_ALLWISE_COLUMNS}) VALUES ({placeholders}) "
            "ON CONFLICT DO NOTHING",
            values,
        )
        cursor.execute(
            "INSERT INTO xmatch (oid, catid, oid_catalog, dist) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT DO NOTHING",
            (oid, "allwise", match["AllWISE"], float(match["angDist"])),
        )


def _reencode(record: dict[str, Any], schema_text: str, xmatch: dict[str, Any] | None) -> bytes:
    schema = json.loads(schema_text)
    schema["fields"].append(xmatches_field("float32"))
    record["xmatches"] = xmatch
    buffer = io.BytesIO()
    fastavro.writer(buffer, schema, [record])
    return buffer.getvalue()


def run_naive(
    settings: PipelineSettings, offset_range: OffsetRange, batch_messages: int
) -> dict[str, float]:
    """Process the range the naive way; returns messages and bytes in and out."""
    kafka = {"bootstrap.servers": settings.kafka_bootstrap_servers}
    consumer = Consumer(
        kafka
        | {"group.id": settings.consumer_group_id, "enable.auto.commit": False}
        | {"auto.offset.reset": "earliest"}
    )
    consumer.assign(
        [TopicPartition(offset_range.topic, offset_range.partition, offset_range.start)]
    )
    producer = Producer(kafka)
    database = settings.database
    connection = psycopg2.connect(
        host=database.host, port=database.port, user=database.user,
        password=database.password.get_secret_value(), dbname=database.name,
    )  # fmt: skip
    connection.autocommit = True
    cursor = connection.cursor()
    engine = LocalCrossmatchEngine(settings.local_catalog_directories)
    catalog = settings.catalogs[0].spec
    totals = {"messages": 0.0, "bytes_in": 0.0, "bytes_out": 0.0, "matched": 0.0}
    next_offset = offset_range.start
    try:
        while next_offset < offset_range.end:
            wanted = min(batch_messages, offset_range.end - next_offset)
            received = consumer.consume(wanted, 1.0)
            errors = consumer_errors(received)
            if errors:
                raise RuntimeError(f"naive: consuming {offset_range}: {errors[0]}")
            messages = [
                message
                for message in received
                if message.error() is None and (message.offset() or 0) < offset_range.end
            ]
            if not messages:
                continue
            records: list[dict[str, Any]] = []
            schema_texts: list[str] = []
            for message in messages:
                value = message.value() or b""
                reader = fastavro.reader(io.BytesIO(value))
                record: Any = next(reader)
                records.append(record)
                schema_texts.append(reader.metadata["avro.schema"])
                totals["bytes_in"] += len(value)
            positions = pd.DataFrame(
                {
                    "objectId": [r["objectId"] for r in records],
                    "ra": [r["candidate"]["ra"] for r in records],
                    "dec": [r["candidate"]["dec"] for r in records],
                }
            )
            matches = engine.crossmatch(
                positions.rename(columns={"objectId": "id"}), catalog
            ).rename(columns={"id": "objectId"})
            joined = positions.merge(matches, on="objectId", how="left", suffixes=("", "_m"))
            first = joined.drop_duplicates("objectId", keep="first").set_index("objectId")
            _insert_rows(cursor, records, joined)
            for record, schema_text in zip(records, schema_texts, strict=True):
                row = first.loc[record["objectId"]]
                xmatch = None
                if not pd.isna(row["AllWISE"]):
                    xmatch = {"allwise": {c: _avro_value(row[c]) for c in catalog.columns}}
                    xmatch["allwise"]["angDist"] = float(row["angDist"])
                    totals["matched"] += 1
                value = _reencode(record, schema_text, xmatch)
                producer.produce(settings.output_topic, value, key=record["objectId"])
                producer.poll(0)
                totals["bytes_out"] += len(value)
            if producer.flush(60):
                raise RuntimeError("naive: messages undelivered after 60 s")
            next_offset = (messages[-1].offset() or 0) + 1
            totals["messages"] += len(messages)
            consumer.commit(
                offsets=[TopicPartition(offset_range.topic, offset_range.partition, next_offset)],
                asynchronous=False,
            )
    finally:
        consumer.close()
        connection.close()
    return totals


def _avro_value(value: Any) -> Any:
    if isinstance(value, str):
        return value
    return None if pd.isna(value) else float(value)


def consumer_errors(messages: list[Any]) -> list[str]:
    return [
        str(error)
        for message in messages
        if (error := message.error()) is not None and error.code() != KafkaError._PARTITION_EOF
    ]
