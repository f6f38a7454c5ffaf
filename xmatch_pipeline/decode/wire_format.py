"""Confluent's wire format, as Rubin publishes alerts: byte 0 is 0, bytes 1 to 4 the schema
id (big-endian, unsigned), then the Avro record without its schema.

The reader finds the schema by its id (``lsst_schemas``); a value too short to hold the
five bytes or with another first byte is not in this framing, which is the message's fault.
"""

from __future__ import annotations

import struct
from typing import Final

from xmatch_pipeline.decode.errors import AlertDecodeError

MAGIC_BYTE: Final = 0
HEADER_SIZE: Final = 5
_HEADER: Final = struct.Struct(">BI")


def split_wire_message(value: bytes | bytearray | memoryview | None) -> tuple[int, memoryview]:
    """``(schema id, record bytes)`` of one message, or :class:`AlertDecodeError`."""
    if value is None:
        raise AlertDecodeError("empty message: no value (a tombstone?)")
    view = memoryview(value)
    if len(view) < HEADER_SIZE:
        raise AlertDecodeError(
            f"truncated Confluent wire message: {len(view)} bytes, the header alone takes "
            f"{HEADER_SIZE} (magic byte and schema id)"
        )
    magic, schema_id = _HEADER.unpack_from(view)
    if magic != MAGIC_BYTE:
        raise AlertDecodeError(
            f"not in Confluent's wire format: magic byte {view[0]:#04x}, expected "
            f"{MAGIC_BYTE:#04x} (an LSST topic must carry Rubin's framing; is this topic's "
            "survey set right in XMATCH_SURVEY / XMATCH_TOPIC_SURVEYS?)"
        )
    return schema_id, view[HEADER_SIZE:]


def wire_message(schema_id: int, record: bytes) -> bytes:
    """One message in the wire format: the framing of ``schema_id`` followed by ``record``."""
    return _HEADER.pack(MAGIC_BYTE, schema_id) + record
