"""Writer schemas of ZTF alerts: parsed once, cached by their bytes, checked once.

A Kafka stream carries the same ~23 kB schema in every message; parsing it each time costs
about as much as decoding the alert, so the parsed form is kept per distinct schema text.
"""

from __future__ import annotations

import copy
import json
import threading
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from xmatch_pipeline.decode.container import sync_marker_for
from xmatch_pipeline.decode.errors import AlertDecodeError
from xmatch_pipeline.decode.reader_projection import header_reader_schema
from xmatch_pipeline.decode.record_scan import Scanner, compile_scanner

MAX_CACHED_SCHEMAS = 64
"""Distinct writer schemas kept parsed; a stream has one or two, a replay of history a few."""

PACKAGED_VERSIONS = ("3.3",)


@dataclass(frozen=True, eq=False)
class AlertSchema:
    """One Avro schema as embedded in containers (``text``) and as fastavro uses it."""

    text: bytes
    parsed: dict[str, Any] = field(repr=False)
    fingerprint: str
    version: str | None
    not_ztf_reason: str | None = field(repr=False)
    sync_marker: bytes = field(repr=False)
    #: Reader schema of the header-only decode (``reader_projection``): the fields the
    #: pipeline routes on and every string, enum and map, parsed; None when the schema is
    #: not a ZTF alert's.
    header_reader: dict[str, Any] | None = field(default=None, repr=False)
    #: The header-only decode's fast path (``record_scan``); None where the schema needs
    #: the projected read.
    header_scanner: Scanner | None = field(default=None, repr=False)

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        """Pickle as the text alone: unpickling goes through the cache, never re-parses twice."""
        return schema_from_text, (self.text,)

    def as_json(self) -> dict[str, Any]:
        """A fresh, unparsed copy of the schema, safe to modify."""
        document: dict[str, Any] = json.loads(self.text)
        return document


def _ztf_shape_problem(document: Any) -> str | None:
    """Why a schema cannot hold a ZTF alert, or None when it has what the pipeline reads."""
    if not isinstance(document, dict) or document.get("type") != "record":
        return "not a ZTF alert: the writer schema is not a record"
    fields = {entry.get("name"): entry.get("type") for entry in document.get("fields", [])}
    for name in ("objectId", "candid", "schemavsn", "candidate"):
        if name not in fields:
            return f"not a ZTF alert: the writer schema has no {name!r} field"
    candidate = fields["candidate"]
    if not isinstance(candidate, dict) or candidate.get("type") != "record":
        return "not a ZTF alert: 'candidate' is not a record"
    candidate_fields = {entry.get("name"): entry.get("type") for entry in candidate["fields"]}
    for name in ("ra", "dec"):
        if candidate_fields.get(name) != "double":
            return f"not a ZTF alert: 'candidate.{name}' is missing or not a double"
    if fields["candid"] != "long":
        return "not a ZTF alert: 'candid' is not a long"
    return None


def _build(text: bytes) -> AlertSchema:
    try:
        document = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AlertDecodeError(f"embedded writer schema is not valid JSON: {error}") from error
    try:
        parsed = fastavro.parse_schema(copy.deepcopy(document), named_schemas={})
        canonical = to_parsing_canonical_form(parsed)
    except Exception as error:  # fastavro raises many types for a bad schema
        raise AlertDecodeError(
            f"embedded writer schema is not a valid Avro schema: {error}"
        ) from error
    if not isinstance(parsed, dict):
        raise AlertDecodeError("not a ZTF alert: the writer schema is not a record")
    version = document.get("version") if isinstance(document, dict) else None
    not_ztf_reason = _ztf_shape_problem(document)
    header_reader = None
    header_scanner = None
    if not_ztf_reason is None:
        reader = fastavro.parse_schema(header_reader_schema(document), named_schemas={})
        header_reader = reader if isinstance(reader, dict) else None
        header_scanner = compile_scanner(document)
    return AlertSchema(
        text=bytes(text),
        parsed=parsed,
        fingerprint=fingerprint(canonical, "SHA-256"),
        version=str(version) if version is not None else None,
        not_ztf_reason=not_ztf_reason,
        sync_marker=sync_marker_for(bytes(text)),
        header_reader=header_reader,
        header_scanner=header_scanner,
    )


_cache: dict[bytes, AlertSchema] = {}
_cache_lock = threading.Lock()


def schema_from_text(text: bytes) -> AlertSchema:
    """The parsed schema for this exact text, parsed only the first time it is seen."""
    cached = _cache.get(text)
    if cached is not None:
        return cached
    built = _build(text)
    with _cache_lock:
        if len(_cache) >= MAX_CACHED_SCHEMAS:
            _cache.pop(next(iter(_cache)))
        return _cache.setdefault(built.text, built)


def schema_from_json(document: dict[str, Any]) -> AlertSchema:
    """The schema for a JSON document, serialised deterministically so bytes stay stable."""
    return schema_from_text(json.dumps(document, ensure_ascii=False).encode("utf-8"))


def cached_schema_count() -> int:
    """How many distinct writer schemas are parsed and kept (for tests and metrics)."""
    return len(_cache)


def inline_named_types(node: Any, named: dict[str, Any], defined: set[str]) -> Any:
    """Replace the first use of each named type by its definition, as ZTF embeds schemas."""
    if isinstance(node, str):
        if node in named and node not in defined:
            return inline_named_types(copy.deepcopy(named[node]), named, defined)
        return node
    if isinstance(node, list):
        return [inline_named_types(item, named, defined) for item in node]
    if isinstance(node, dict):
        kind = node.get("type")
        if kind == "record":
            full_name = (
                f"{node['namespace']}.{node['name']}" if "namespace" in node else node["name"]
            )
            defined.add(full_name)
            for entry in node["fields"]:
                entry["type"] = inline_named_types(entry["type"], named, defined)
        elif kind == "array":
            node["items"] = inline_named_types(node["items"], named, defined)
        elif kind == "map":
            node["values"] = inline_named_types(node["values"], named, defined)
        elif isinstance(kind, dict | list):
            node["type"] = inline_named_types(kind, named, defined)
    return node


@cache
def ztf_alert_schema(version: str = "3.3") -> AlertSchema:
    """The project's own ZTF alert schema (``decode/schemas/*.avsc``), as one document."""
    if version not in PACKAGED_VERSIONS:
        raise ValueError(f"no packaged ZTF schema {version!r} (have {PACKAGED_VERSIONS})")
    folder = resources.files("xmatch_pipeline.decode") / "schemas"
    named: dict[str, Any] = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".avsc"):
            named[entry.name.removesuffix(".avsc")] = json.loads(entry.read_text("utf-8"))
    top = named["ztf.alert"]
    if str(top.get("version")) != version:
        raise ValueError(f"packaged ZTF schema is version {top.get('version')}, not {version}")
    return schema_from_json(inline_named_types(copy.deepcopy(top), named, set()))
