"""The output message: the whole input alert plus the crossmatch fields, as an Avro container.

The output schema is the input's writer schema with three fields appended, so a 4.x alert
gives a 4.x output and consumers decode with the schema embedded, as with the original:

- ``xmatch_provenance`` (new, nullable, default null): per configured catalog, the release,
  engine (``cds`` or ``local``), the local index's build id, the radius and whether the
  match came from the cache;
- ``xmatch_matches`` (new, nullable, default null): for catalogs with ``selection: "all"``,
  up to ``max_matches`` matches within the radius, nearest first;
- ``xmatches``, the original's field, last and unchanged: the nearest match per catalog.

A reader holding the original's schema ignores the two new fields; a reader of the new
schema reading an old message gets their defaults.

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
from collections.abc import Mapping, Sequence
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
from xmatch_pipeline.match.alert_matching import CatalogProvenance

XMATCHES_FIELD = "xmatches"
PROVENANCE_FIELD = "xmatch_provenance"
ALL_MATCHES_FIELD = "xmatch_matches"
APPENDED_FIELDS = (PROVENANCE_FIELD, ALL_MATCHES_FIELD, XMATCHES_FIELD)
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


def provenance_field() -> dict[str, Any]:
    """Per catalog, what produced this alert's answer (every configured catalog)."""
    entry = {
        "type": "record",
        "name": "catalog_provenance",
        "namespace": "xmatch_pipeline",
        "fields": [
            {"name": "release", "type": "string"},
            {"name": "engine", "type": "string", "doc": "cds or local"},
            {"name": "index_build", "type": ["null", "string"], "default": None},
            {"name": "radius_arcsec", "type": "double"},
            {"name": "from_cache", "type": "boolean", "default": False},
        ],
    }
    return {
        "name": PROVENANCE_FIELD,
        "type": ["null", {"type": "map", "values": entry}],
        "default": None,
    }


def all_matches_field(precision: Precision = "double") -> dict[str, Any]:
    """Per ``selection: "all"`` catalog, its matches nearest first."""
    match = {"type": "map", "values": _VALUE_TYPES[precision]}
    matches = {"type": "map", "values": {"type": "array", "items": match}}
    return {"name": ALL_MATCHES_FIELD, "type": ["null", matches], "default": None}


def appended_fields(precision: Precision = "double") -> list[dict[str, Any]]:
    """The fields appended to the writer schema, in order (``xmatches`` last)."""
    return [provenance_field(), all_matches_field(precision), xmatches_field(precision)]


_schemas: dict[tuple[bytes, Precision], AlertSchema] = {}
_field_schemas: dict[Precision, Any] = {}
_lock = threading.Lock()


def enriched_schema(writer: AlertSchema, precision: Precision = "double") -> AlertSchema:
    """The output schema for alerts written with ``writer``, derived once per schema text.

    It is the writer's text byte for byte with the crossmatch fields appended (ones the
    writer already had are replaced). The cache is keyed by the exact text, not by Avro's
    fingerprint, which ignores ``doc``: two schemas differing only in their docs each get
    their own output schema.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (expected one of {PRECISIONS})")
    key = (writer.text, precision)
    cached = _schemas.get(key)
    if cached is not None:
        return cached
    text = writer.text
    for appended in appended_fields(precision):
        text = with_last_field(text, appended)
    derived = schema_from_text(text)
    with _lock:
        if len(_schemas) >= MAX_CACHED_SCHEMAS:
            _schemas.pop(next(iter(_schemas)))
        return _schemas.setdefault(key, derived)


def _field_schema(precision: Precision) -> Any:
    parsed = _field_schemas.get(precision)
    if parsed is None:
        tail = {
            "type": "record",
            "name": "enriched_tail",
            "namespace": "xmatch_pipeline",
            "fields": appended_fields(precision),
        }
        parsed = fastavro.parse_schema(tail, named_schemas={})
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


def clean_provenance(
    provenance: Mapping[str, CatalogProvenance] | None,
) -> dict[str, dict[str, object]] | None:
    if provenance is None:
        return None
    return {
        catalog: {
            "release": entry.provenance.release,
            "engine": entry.provenance.engine,
            "index_build": entry.provenance.index_build,
            "radius_arcsec": float(entry.provenance.radius_arcsec),
            "from_cache": entry.from_cache,
        }
        for catalog, entry in provenance.items()
    }


def clean_all_matches(
    all_matches: Mapping[str, Sequence[Mapping[str, object]]] | None,
    precision: Precision = "double",
) -> dict[str, list[dict[str, object]]] | None:
    if all_matches is None:
        return None
    return {
        str(catalog): [
            {
                str(column): _clean_value(value, precision, f"{catalog}[{rank}].{column}")
                for column, value in match.items()
            }
            for rank, match in enumerate(matches)
        ]
        for catalog, matches in all_matches.items()
    }


def _appended_values(
    xmatches: Mapping[str, Mapping[str, object]] | None,
    precision: Precision,
    provenance: Mapping[str, CatalogProvenance] | None,
    all_matches: Mapping[str, Sequence[Mapping[str, object]]] | None,
) -> dict[str, Any]:
    return {
        PROVENANCE_FIELD: clean_provenance(provenance),
        ALL_MATCHES_FIELD: clean_all_matches(all_matches, precision),
        XMATCHES_FIELD: clean_xmatches(xmatches, precision),
    }


def enriched_record(
    decoded: DecodedAlert | LsstAlert,
    xmatches: Mapping[str, Mapping[str, object]] | None,
    *,
    precision: Precision = "double",
    provenance: Mapping[str, CatalogProvenance] | None = None,
    all_matches: Mapping[str, Sequence[Mapping[str, object]]] | None = None,
) -> dict[str, Any]:
    """The output record as a dict (the input record is not modified)."""
    return {
        **decoded.full_record(),
        **_appended_values(xmatches, precision, provenance, all_matches),
    }


def enriched_record_bytes(
    decoded: DecodedAlert | LsstAlert,
    xmatches: Mapping[str, Mapping[str, object]] | None,
    precision: Precision = "double",
    provenance: Mapping[str, CatalogProvenance] | None = None,
    all_matches: Mapping[str, Sequence[Mapping[str, object]]] | None = None,
) -> tuple[AlertSchema, bytes]:
    """The output schema and the output record's Avro encoding (without any framing).

    The alert's own encoding is reused as received and the crossmatch fields appended
    (Avro encodes a record as its fields in order), so the alert's bytes are untouched and
    the cost does not grow with cutouts and history.
    """
    schema = enriched_schema(decoded.schema, precision)
    appended = _appended_values(xmatches, precision, provenance, all_matches)
    buffer = io.BytesIO()
    if any(entry["name"] in APPENDED_FIELDS for entry in decoded.writer_schema["fields"]):
        record = {**decoded.full_record(), **appended}
        fastavro.schemaless_writer(buffer, schema.parsed, record)
    else:
        buffer.write(decoded.payload)
        fastavro.schemaless_writer(buffer, _field_schema(precision), appended)
    return schema, buffer.getvalue()


def encode_enriched_alert(
    decoded: DecodedAlert,
    xmatches: Mapping[str, Mapping[str, object]] | None,
    *,
    precision: Precision = "double",
    provenance: Mapping[str, CatalogProvenance] | None = None,
    all_matches: Mapping[str, Sequence[Mapping[str, object]]] | None = None,
) -> bytes:
    """The output message value of a ZTF alert: one Avro container, output schema
    embedded, stable bytes."""
    schema, record = enriched_record_bytes(decoded, xmatches, precision, provenance, all_matches)
    return write_container(schema.text, record, 1, sync_marker=schema.sync_marker)
