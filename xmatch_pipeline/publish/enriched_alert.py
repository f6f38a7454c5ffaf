"""The output message: the whole input alert plus ``xmatches``, as an Avro container.

The output schema is the input's writer schema with one field appended, so a 4.x alert
gives a 4.x output and consumers decode with the schema embedded, as with the original.

Precision. The original typed every crossmatch value as a 32-bit Avro ``float``: RA
342.16949390 came back as 342.16949463 (a 0.3 arcsec error, a third of the match radius)
and 19-digit ids were corrupted. The default mode (``"double"``) therefore types the
values ``["null", "long", "double", "string"]``: integers stay exact (``long`` comes before
``double`` because fastavro writes a Python int into the first numeric branch it meets),
floats keep 64 bits. ``"float32"`` reproduces the seed's type ``[string, float, null]`` for
consumers generated from the old schema; there integers go as strings, never via a float.
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Literal

import fastavro
import numpy as np
import pandas as pd

from xmatch_pipeline.decode import AlertSchema, DecodedAlert, schema_from_text
from xmatch_pipeline.decode.alert_schema import MAX_CACHED_SCHEMAS
from xmatch_pipeline.decode.container import write_container
from xmatch_pipeline.decode.lsst_alert import LsstAlert
from xmatch_pipeline.decode.schema_text import with_last_field

XMATCHES_FIELD = "xmatches"
Precision = Literal["double", "float32"]
PRECISIONS: tuple[Precision, ...] = ("double", "float32")

_VALUE_TYPES: dict[Precision, list[str]] = {
    "double": ["null", "long", "double", "string"],
    "float32": ["string", "float", "null"],
}


def xmatches_field(precision: Precision = "double") -> dict[str, Any]:
    """The Avro field appended to the writer schema for ``precision``."""
    xmatch_map = {"type": "map", "values": {"type": "map", "values": _VALUE_TYPES[precision]}}
    if precision == "double":
        return {"name": XMATCHES_FIELD, "type": ["null", xmatch_map], "default": None}
    # The seed's order: the map first, null second (readers resolve by the writer schema).
    return {"name": XMATCHES_FIELD, "type": [xmatch_map, "null"], "default": None}


_schemas: dict[tuple[bytes, Precision], AlertSchema] = {}
_field_schemas: dict[Precision, Any] = {}
_lock = threading.Lock()


def enriched_schema(writer: AlertSchema, precision: Precision = "double") -> AlertSchema:
    """The output schema for alerts written with ``writer``, derived once per schema text.

    It is the writer's text byte for byte with the ``xmatches`` field appended (one the
    writer already had is replaced). The cache is keyed by the exact text, not by Avro's
    fingerprint, which ignores ``doc``: two schemas differing only in their docs each get
    their own output schema.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (expected one of {PRECISIONS})")
    key = (writer.text, precision)
    cached = _schemas.get(key)
    if cached is not None:
        return cached
    derived = schema_from_text(with_last_field(writer.text, xmatches_field(precision)))
    with _lock:
        if len(_schemas) >= MAX_CACHED_SCHEMAS:
            _schemas.pop(next(iter(_schemas)))
        return _schemas.setdefault(key, derived)


def _field_schema(precision: Precision) -> Any:
    parsed = _field_schemas.get(precision)
    if parsed is None:
        parsed = fastavro.parse_schema(xmatches_field(precision)["type"], named_schemas={})
        _field_schemas[precision] = parsed
    return parsed


def _clean_value(value: object, precision: Precision, where: str) -> object:
    """One catalog value as the output union can carry it, without losing precision."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, bool | np.bool_ | np.integer):
        value = int(value)
    elif isinstance(value, np.floating | Decimal):
        value = float(value)
    elif isinstance(value, np.str_):
        value = str(value)
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, int):
        return value if precision == "double" else str(value)
    if isinstance(value, str):
        return value
    raise TypeError(f"crossmatch value {where} has unsupported type {type(value).__name__}")


def clean_xmatches(
    xmatches: Mapping[str, Mapping[str, object]] | None, precision: Precision = "double"
) -> dict[str, dict[str, object]] | None:
    """``{catalog: {column: value}}`` with NaN / pd.NA as None and numpy scalars unwrapped."""
    if xmatches is None:
        return None
    return {
        str(catalog): {
            str(column): _clean_value(value, precision, f"{catalog}.{column}")
            for column, value in columns.items()
        }
        for catalog, columns in xmatches.items()
    }


def enriched_record(
    decoded: DecodedAlert | LsstAlert,
    xmatches: Mapping[str, Mapping[str, object]] | None,
    *,
    precision: Precision = "double",
) -> dict[str, Any]:
    """The output record as a dict (the input record is not modified)."""
    return {**decoded.full_record(), XMATCHES_FIELD: clean_xmatches(xmatches, precision)}


def enriched_record_bytes(
    decoded: DecodedAlert | LsstAlert,
    xmatches: Mapping[str, Mapping[str, object]] | None,
    precision: Precision = "double",
) -> tuple[AlertSchema, bytes]:
    """The output schema and the output record's Avro encoding (without any framing).

    The alert's own encoding is reused as received and the ``xmatches`` field appended
    (Avro encodes a record as its fields in order), so the alert's bytes are untouched and
    the cost does not grow with cutouts and history.
    """
    schema = enriched_schema(decoded.schema, precision)
    cleaned = clean_xmatches(xmatches, precision)
    buffer = io.BytesIO()
    if any(entry["name"] == XMATCHES_FIELD for entry in decoded.writer_schema["fields"]):
        record = {**decoded.full_record(), XMATCHES_FIELD: cleaned}
        fastavro.schemaless_writer(buffer, schema.parsed, record)
    else:
        buffer.write(decoded.payload)
        fastavro.schemaless_writer(buffer, _field_schema(precision), cleaned)
    return schema, buffer.getvalue()


def encode_enriched_alert(
    decoded: DecodedAlert,
    xmatches: Mapping[str, Mapping[str, object]] | None,
    *,
    precision: Precision = "double",
) -> bytes:
    """The output message value of a ZTF alert: one Avro container, output schema
    embedded, stable bytes."""
    schema, record = enriched_record_bytes(decoded, xmatches, precision)
    return write_container(schema.text, record, 1, sync_marker=schema.sync_marker)
