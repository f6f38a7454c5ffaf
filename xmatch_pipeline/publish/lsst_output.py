"""The enriched LSST alert in Rubin's own framing, under a schema id of its own.

The output record is the input's with ``xmatches`` appended, so its schema is not the
input's: a consumer that decoded it with the input's id would read the alert and stop
before ``xmatches`` (or fail on the bytes left over). So the output never carries the
input's id:

- with a schema registry (``XMATCH_LSST_SCHEMA_REGISTRY_URL``), the enriched schema is
  registered under the output topic's subject, ``<PRODUCER_TOPIC>-value`` (Confluent's
  TopicNameStrategy), and the message carries the id the registry gives; consumers look it
  up as they do Rubin's own;
- without one, the id is fixed and documented: :data:`OUTPUT_ID_BASE` plus the input's
  id (1,001,101 for 11.1 in double precision, 2,001,101 with ``float32`` values), whose
  schema ``xmatch-pipeline alerts lsst-output-schema ID`` prints. Rubin's own ids stay
  below 10,000 (``major * 100 + minor``), so the two never meet.

Each input id's output id is found once per process and kept.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Final

from xmatch_pipeline.decode.alert_schema import AlertSchema
from xmatch_pipeline.decode.lsst_alert import LsstAlert
from xmatch_pipeline.decode.lsst_schemas import LsstSchemaSource, RegistryLsstSchemas
from xmatch_pipeline.decode.wire_format import wire_message
from xmatch_pipeline.match.alert_matching import CatalogProvenance
from xmatch_pipeline.publish.enriched_alert import Precision, enriched_record_bytes, enriched_schema

OUTPUT_ID_BASE: Final[Mapping[Precision, int]] = {"double": 1_000_000, "float32": 2_000_000}


def output_subject(output_topic: str) -> str:
    """The registry subject of the output's values (Confluent's TopicNameStrategy)."""
    return f"{output_topic}-value"


def fixed_output_id(input_id: int, precision: Precision) -> int:
    """The output id used without a registry."""
    return OUTPUT_ID_BASE[precision] + input_id


def output_schema_for_fixed_id(output_id: int, schemas: LsstSchemaSource) -> AlertSchema:
    """The enriched schema a fixed output id stands for (what consumers decode it with)."""
    for precision, base in OUTPUT_ID_BASE.items():
        if base < output_id < base + OUTPUT_ID_BASE["double"]:
            return enriched_schema(schemas.schema_for_id(output_id - base), precision)
    raise ValueError(
        f"{output_id} is not an output id of this pipeline (ids from "
        f"{OUTPUT_ID_BASE['double']:,} for double and {OUTPUT_ID_BASE['float32']:,} "
        "for float32 values)"
    )


class LsstOutputSchemaIds:
    """Output schema id per input schema id and precision, registered or fixed, kept."""

    def __init__(self, output_topic: str, registry: RegistryLsstSchemas | None = None) -> None:
        self.subject = output_subject(output_topic)
        self.registry = registry
        self._ids: dict[tuple[int, Precision], int] = {}
        self._lock = threading.Lock()

    def output_id(self, alert: LsstAlert, schema: AlertSchema, precision: Precision) -> int:
        key = (alert.schema_id, precision)
        known = self._ids.get(key)
        if known is not None:
            return known
        if self.registry is None:
            found = fixed_output_id(alert.schema_id, precision)
        else:
            found = self.registry.register_output_schema(self.subject, schema)
        with self._lock:
            return self._ids.setdefault(key, found)


def encode_enriched_lsst_alert(
    alert: LsstAlert,
    xmatches: Mapping[str, Mapping[str, object]] | None,
    output_ids: LsstOutputSchemaIds,
    *,
    precision: Precision = "double",
    provenance: Mapping[str, CatalogProvenance] | None = None,
    all_matches: Mapping[str, Sequence[Mapping[str, object]]] | None = None,
) -> bytes:
    """The output message value of an LSST alert: wire framing, the output schema's id."""
    schema, record = enriched_record_bytes(alert, xmatches, precision, provenance, all_matches)
    return wire_message(output_ids.output_id(alert, schema, precision), record)
