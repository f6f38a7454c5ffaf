"""Decode one Kafka message value (an Avro container with one ZTF alert) and encode one back."""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import fastavro

from xmatch_pipeline.decode.alert_schema import AlertSchema, schema_from_text
from xmatch_pipeline.decode.container import read_container, write_container
from xmatch_pipeline.decode.errors import AlertDecodeError
from xmatch_pipeline.decode.record_scan import ScanError

SUPPORTED_MAJOR_VERSIONS = frozenset({3, 4})
"""ZTF alert schema generations this pipeline has been checked against (3.3, 4.01)."""


@dataclass(frozen=True, slots=True)
class DecodedAlert:
    """A decoded alert and the writer schema it came with (kept for re-encoding).

    ``payload`` is the record's Avro encoding as received (a view into the message for
    uncompressed containers), so an output that only appends fields need not re-encode it.
    ``record`` holds every field, or only the header fields when decoded with
    ``header_only=True`` (``complete`` False); :meth:`full_record` always has them all.
    """

    record: dict[str, Any]
    schema: AlertSchema
    payload: bytes | memoryview = field(repr=False, compare=False)
    complete: bool = True

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any], AlertSchema, bytes, bool]]:
        """Picklable (a memoryview is not), e.g. for an orchestrator's IO manager."""
        return DecodedAlert, (self.record, self.schema, bytes(self.payload), self.complete)

    def full_record(self) -> dict[str, Any]:
        """Every field of the alert, decoding the payload again if only the header was read."""
        if self.complete:
            return self.record
        record = fastavro.schemaless_reader(io.BytesIO(self.payload), self.schema.parsed, None)
        if not isinstance(record, dict):
            raise AlertDecodeError("not a ZTF alert: the record is not a record")
        return record

    @property
    def survey(self) -> Literal["ztf"]:
        return "ztf"

    @property
    def writer_schema(self) -> dict[str, Any]:
        return self.schema.parsed

    @property
    def schema_fingerprint(self) -> str:
        return self.schema.fingerprint

    @property
    def object_id(self) -> str:
        object_id: str = self.record["objectId"]
        return object_id

    @property
    def candid(self) -> int:
        candid: int = self.record["candid"]
        return candid

    @property
    def ra(self) -> float:
        ra: float = self.record["candidate"]["ra"]
        return ra

    @property
    def dec(self) -> float:
        dec: float = self.record["candidate"]["dec"]
        return dec

    @property
    def schema_version(self) -> str:
        version: str = self.record["schemavsn"]
        return version


_checked_versions: set[str] = set()


def _check_version(version: Any) -> None:
    if version in _checked_versions:
        return
    major_text = str(version).split(".", 1)[0]
    if not major_text.isdigit() or int(major_text) not in SUPPORTED_MAJOR_VERSIONS:
        supported = ", ".join(f"{major}.x" for major in sorted(SUPPORTED_MAJOR_VERSIONS))
        raise AlertDecodeError(
            f"unknown ZTF alert schema version {version!r} (this pipeline reads {supported})"
        )
    _checked_versions.add(str(version))


def _decode(value: bytes | None, header_only: bool = False) -> DecodedAlert:
    container = read_container(value)
    schema = schema_from_text(container.schema_text)
    if schema.not_ztf_reason is not None:
        raise AlertDecodeError(schema.not_ztf_reason)
    total = sum(block.record_count for block in container.blocks)
    if total != 1:
        raise AlertDecodeError(f"expected exactly one alert in the container, found {total}")
    payload = next(block.payload for block in container.blocks if block.record_count)
    if header_only and schema.header_scanner is not None:
        try:
            header = schema.header_scanner(payload)
        except (ScanError, UnicodeDecodeError) as error:
            raise AlertDecodeError(
                f"alert data do not match the embedded schema: {type(error).__name__}: {error}"
            ) from error
        _check_version(header["schemavsn"])
        return DecodedAlert(record=header, schema=schema, payload=payload, complete=False)
    buffer = io.BytesIO(payload)
    reader = schema.header_reader if header_only else None
    try:
        record = fastavro.schemaless_reader(buffer, schema.parsed, reader)
    except Exception as error:  # fastavro signals bad data with many exception types
        raise AlertDecodeError(
            f"alert data do not match the embedded schema: {type(error).__name__}: {error}"
        ) from error
    if buffer.tell() != len(payload):
        raise AlertDecodeError(
            f"alert data do not match the embedded schema: {len(payload) - buffer.tell()} "
            "bytes left over after the record"
        )
    if not isinstance(record, dict):
        raise AlertDecodeError("not a ZTF alert: the record is not a record")
    _check_version(record["schemavsn"])
    return DecodedAlert(record=record, schema=schema, payload=payload, complete=reader is None)


def decode_alert(
    value: bytes | None,
    *,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
    source: str | None = None,
    header_only: bool = False,
) -> DecodedAlert:
    """Decode one message value; the origin, when given, is carried by any error raised.

    ``header_only`` checks every byte as a full read would (strings' UTF-8 included, see
    ``record_scan``) but keeps only objectId, candid, schemavsn and the candidate's
    position: what the pipeline routes and matches on.
    """
    try:
        return _decode(value, header_only)
    except AlertDecodeError as error:
        if topic is None and partition is None and offset is None and source is None:
            raise
        raise error.located(
            topic=topic, partition=partition, offset=offset, source=source
        ) from error.__cause__


def encode_alert(record: Mapping[str, Any], schema: AlertSchema, *, codec: str = "null") -> bytes:
    """One container file with ``record`` and ``schema`` embedded; same input, same bytes."""
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema.parsed, record)
    return write_container(
        schema.text, buffer.getvalue(), 1, codec=codec, sync_marker=schema.sync_marker
    )
