"""Rubin's own sample alerts, as Rubin's stream carries them, from the installed
``lsst-alert-packet`` (one per schema version; GPL-3.0, never copied into this project).

Each ``fakeAlert.avro`` is an Avro container; its record bytes as Rubin wrote them, framed
in Confluent's wire format with Rubin's schema id, are what an LSST topic holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import fastavro

from xmatch_pipeline.decode.container import read_container
from xmatch_pipeline.decode.lsst_schemas import packaged_sample_alerts
from xmatch_pipeline.decode.wire_format import wire_message


@dataclass(frozen=True)
class SampleAlert:
    schema_id: int
    record: dict[str, Any]
    #: The record's Avro bytes as Rubin's file holds them.
    payload: bytes

    @property
    def value(self) -> bytes:
        """The Kafka message value: wire framing, then the record."""
        return wire_message(self.schema_id, self.payload)

    @property
    def key(self) -> str:
        """``diaObjectId`` in decimal, the key the pipeline's output uses too."""
        source = self.record["diaSource"]
        dia_object = self.record.get("diaObject") or {}
        return str(source.get("diaObjectId") or dia_object.get("diaObjectId") or "")


def sample_alerts() -> list[SampleAlert]:
    """One sample alert per schema version ``lsst-alert-packet`` ships, by schema id."""
    samples: list[SampleAlert] = []
    for schema_id, path in sorted(packaged_sample_alerts().items()):
        (block,) = read_container(path.read_bytes()).blocks
        with path.open("rb") as source:
            (record,) = list(fastavro.reader(source))
        if not isinstance(record, dict):
            raise ValueError(f"{path}: the sample is not a record")
        samples.append(SampleAlert(schema_id, record, bytes(block.payload)))
    return samples
