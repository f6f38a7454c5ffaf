"""Rubin's own sample alerts, as they would come over Kafka: read from the installed
``lsst-alert-packet`` (never copied into this repository; GPL-3.0), one per schema version.

Each ``fakeAlert.avro`` is an Avro container; its record bytes, as Rubin wrote them, framed
in Confluent's wire format with Rubin's schema id, are exactly what Rubin's stream carries.
``variant`` re-encodes a sample with other ids and another position, with the packaged
schema, so a stream of one version can hold many distinct alerts.
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass
from typing import Any

import fastavro

from xmatch_pipeline.decode.container import read_container
from xmatch_pipeline.decode.lsst_alert import DECLINATION_FIELDS
from xmatch_pipeline.decode.lsst_schemas import packaged_lsst_schemas, packaged_sample_alerts
from xmatch_pipeline.decode.wire_format import wire_message


@dataclass(frozen=True)
class SampleAlert:
    schema_id: int
    record: dict[str, Any]
    #: The record's Avro bytes as Rubin's file holds them.
    payload: bytes

    @property
    def value(self) -> bytes:
        return wire_message(self.schema_id, self.payload)


def sample_alerts() -> list[SampleAlert]:
    """One sample alert per schema version ``lsst-alert-packet`` ships, by schema id."""
    samples: list[SampleAlert] = []
    for schema_id, path in sorted(packaged_sample_alerts().items()):
        container = read_container(path.read_bytes())
        (block,) = container.blocks
        with path.open("rb") as source:
            (record,) = list(fastavro.reader(source))
        assert isinstance(record, dict)
        samples.append(SampleAlert(schema_id, record, bytes(block.payload)))
    return samples


def variant(
    sample: SampleAlert, *, dia_source_id: int, dia_object_id: int, ra: float, dec: float
) -> SampleAlert:
    """The sample with other ids and position, encoded with its packaged schema."""
    record = copy.deepcopy(sample.record)
    source = record["diaSource"]
    source["diaSourceId"] = dia_source_id
    source["ra"] = ra
    for name in DECLINATION_FIELDS:
        if name in source:
            source[name] = dec
    source["diaObjectId"] = dia_object_id
    if "diaSourceId" in record:
        record["diaSourceId"] = dia_source_id
    if isinstance(record.get("diaObject"), dict):
        record["diaObject"]["diaObjectId"] = dia_object_id
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, packaged_lsst_schemas()[sample.schema_id].parsed, record)
    return SampleAlert(sample.schema_id, record, buffer.getvalue())
