"""Decode one Rubin alert: Confluent wire framing, schema by id, the whole record.

Every byte is checked as the ZTF scan checks it (``record_scan.compile_validator``: a
record cut inside a cutout is refused, fastavro alone would read what is there), then the
record is read whole with fastavro. What the pipeline reads of it:
``diaSource.diaSourceId`` (the match key, as ZTF's
``candid``), ``diaSource.ra`` / ``dec`` (``decl`` before schema 5.0) in degrees, and the
object id ``diaSource.diaObjectId``, or ``diaObject.diaObjectId`` where the source leaves
it null (as Rubin's sample alerts do). Both ids are Avro ``long``: Python ints, exact.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import fastavro

from xmatch_pipeline.decode.alert_schema import MAX_CACHED_SCHEMAS, AlertSchema
from xmatch_pipeline.decode.errors import AlertDecodeError
from xmatch_pipeline.decode.lsst_schemas import LsstSchemaSource
from xmatch_pipeline.decode.record_scan import ScanError, compile_validator
from xmatch_pipeline.decode.wire_format import split_wire_message

DECLINATION_FIELDS: Final = ("dec", "decl")

Validator = Callable[[bytes | memoryview], None]
_validators: dict[bytes, Validator | None] = {}


def _validator(schema: AlertSchema) -> Validator | None:
    """The byte-level check of ``schema``'s records, compiled once per schema text."""
    if schema.text not in _validators:
        if len(_validators) >= MAX_CACHED_SCHEMAS:
            _validators.pop(next(iter(_validators)))
        _validators[schema.text] = compile_validator(schema.as_json())
    return _validators[schema.text]


@dataclass(frozen=True, slots=True)
class LsstAlert:
    """A decoded Rubin alert, its writer schema and id, and the record's bytes as received."""

    record: dict[str, Any]
    schema: AlertSchema
    schema_id: int
    payload: bytes = field(repr=False, compare=False)
    survey: Literal["lsst"] = "lsst"
    complete: bool = True

    def full_record(self) -> dict[str, Any]:
        return self.record

    @property
    def writer_schema(self) -> dict[str, Any]:
        return self.schema.parsed

    @property
    def dia_source(self) -> dict[str, Any]:
        source: dict[str, Any] = self.record["diaSource"]
        return source

    @property
    def candid(self) -> int:
        """``diaSourceId``: one per alert, so it keys the match as ZTF's ``candid`` does."""
        source_id: int = self.dia_source["diaSourceId"]
        return source_id

    @property
    def dia_object_id(self) -> int | None:
        object_id = self.dia_source.get("diaObjectId")
        if object_id is None:
            dia_object = self.record.get("diaObject")
            object_id = dia_object.get("diaObjectId") if isinstance(dia_object, dict) else None
        return object_id if isinstance(object_id, int) else None

    @property
    def object_id(self) -> str:
        """``diaObjectId`` in decimal (the output key and the database's ``oid``)."""
        return "" if self.dia_object_id is None else str(self.dia_object_id)

    @property
    def ra(self) -> float:
        ra: float = self.dia_source["ra"]
        return ra

    @property
    def dec(self) -> float:
        source = self.dia_source
        dec: float = next(source[name] for name in DECLINATION_FIELDS if name in source)
        return dec

    @property
    def schema_version(self) -> str:
        return f"{self.schema_id // 100}.{self.schema_id % 100}"


def _shape_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return "not an LSST alert: the record is not a record"
    source = record.get("diaSource")
    if not isinstance(source, dict):
        return "not an LSST alert: no 'diaSource' record"
    if not isinstance(source.get("diaSourceId"), int):
        return "not an LSST alert: 'diaSource.diaSourceId' is missing or not a long"
    if not isinstance(source.get("ra"), float):
        return "not an LSST alert: 'diaSource.ra' is missing or not a double"
    if not any(isinstance(source.get(name), float) for name in DECLINATION_FIELDS):
        return "not an LSST alert: 'diaSource.dec' is missing or not a double"
    return None


def decode_lsst_alert(
    value: bytes | None,
    schemas: LsstSchemaSource,
    *,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
) -> LsstAlert:
    """Decode one message value in Rubin's framing; any fault of its bytes raises
    :class:`AlertDecodeError` (with the origin, when given). A registry that does not
    answer raises ``SchemaRegistryUnavailableError``, which is not the message's fault."""
    try:
        schema_id, view = split_wire_message(value)
        schema = schemas.schema_for_id(schema_id)
        payload = bytes(view)
        buffer = io.BytesIO(payload)
        validate = _validator(schema)
        try:
            if validate is not None:
                validate(payload)
            record = fastavro.schemaless_reader(buffer, schema.parsed, None)
        except (ScanError, UnicodeDecodeError) as error:
            raise AlertDecodeError(
                f"LSST alert data do not match schema id {schema_id}: {error}"
            ) from error
        except Exception as error:  # fastavro signals bad data with many exception types
            raise AlertDecodeError(
                f"LSST alert data do not match schema id {schema_id}: "
                f"{type(error).__name__}: {error}"
            ) from error
        if buffer.tell() != len(payload):
            raise AlertDecodeError(
                f"LSST alert data do not match schema id {schema_id}: "
                f"{len(payload) - buffer.tell()} bytes left over after the record"
            )
        problem = _shape_problem(record)
        if problem is not None or not isinstance(record, dict):
            raise AlertDecodeError(problem or "not an LSST alert: the record is not a record")
        return LsstAlert(record=record, schema=schema, schema_id=schema_id, payload=payload)
    except AlertDecodeError as error:
        if topic is None and partition is None and offset is None:
            raise
        raise error.located(topic=topic, partition=partition, offset=offset) from error.__cause__
