"""Avro Object Container Files, read and written by hand.

fastavro's container reader parses the embedded schema for every file; a Kafka message is
one such file, so we read the header ourselves and let the caller cache the parsed schema.
Writing uses a sync marker derived from the schema so equal inputs give equal bytes.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass

from xmatch_pipeline.decode.errors import AlertDecodeError

MAGIC = b"Obj\x01"
SYNC_SIZE = 16
SUPPORTED_CODECS = ("null", "deflate")
_DEFLATE_LEVEL = 6


@dataclass(frozen=True, slots=True)
class ContainerBlock:
    """One data block: how many records it holds and their (decompressed) encoding.

    For the null codec ``payload`` is a view into the message, not a copy: a decoded alert
    keeps it so that its enriched form can reuse the bytes instead of re-encoding them.
    """

    record_count: int
    payload: bytes | memoryview


@dataclass(frozen=True, slots=True)
class Container:
    """A parsed container file: the schema text as embedded and the data blocks."""

    schema_text: bytes
    codec: str
    blocks: tuple[ContainerBlock, ...]


class _Cursor:
    """Reads Avro's zig-zag varints from a buffer, failing with a decode error at the end."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.view = memoryview(data)
        self.position = 0

    def read_long(self, what: str) -> int:
        data = self.data
        shift = 0
        accumulated = 0
        while True:
            if self.position >= len(data):
                raise AlertDecodeError(f"truncated Avro container: ends inside the {what}")
            byte = data[self.position]
            self.position += 1
            accumulated |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift > 63:
                raise AlertDecodeError(f"corrupt Avro container: {what} is not a valid long")
        return (accumulated >> 1) ^ -(accumulated & 1)

    def read_bytes(self, size: int, what: str) -> bytes:
        return bytes(self.read_view(size, what))

    def read_view(self, size: int, what: str) -> memoryview:
        if size < 0:
            raise AlertDecodeError(f"corrupt Avro container: negative length for the {what}")
        end = self.position + size
        if end > len(self.data):
            raise AlertDecodeError(
                f"truncated Avro container: the {what} needs {size} bytes, "
                f"{len(self.data) - self.position} left"
            )
        chunk = self.view[self.position : end]
        self.position = end
        return chunk

    @property
    def at_end(self) -> bool:
        return self.position >= len(self.data)


def _read_metadata(cursor: _Cursor) -> dict[str, bytes]:
    metadata: dict[str, bytes] = {}
    while True:
        count = cursor.read_long("header metadata")
        if count == 0:
            return metadata
        if count < 0:
            count = -count
            cursor.read_long("header metadata block size")
        for _ in range(count):
            key_bytes = cursor.read_bytes(cursor.read_long("metadata key"), "metadata key")
            value = cursor.read_bytes(cursor.read_long("metadata value"), "metadata value")
            try:
                key = key_bytes.decode("utf-8")
            except UnicodeDecodeError as error:
                raise AlertDecodeError("corrupt Avro container: metadata key not UTF-8") from error
            metadata[key] = value


def _decompress(payload: memoryview, codec: str) -> bytes | memoryview:
    if codec == "null":
        return payload
    try:
        return zlib.decompress(payload, -15)
    except zlib.error as error:
        raise AlertDecodeError(f"corrupt deflate block in Avro container: {error}") from error


def read_container(data: bytes | bytearray | memoryview | None) -> Container:
    """Split a container file into schema text, codec and blocks, checking every sync marker."""
    if data is None:
        raise AlertDecodeError("empty message: no value (a tombstone?)")
    if not isinstance(data, bytes):
        if not isinstance(data, bytearray | memoryview):
            raise AlertDecodeError(f"expected bytes, got {type(data).__name__}")
        data = bytes(data)
    if not data:
        raise AlertDecodeError("empty message: no Avro container")
    if data[: len(MAGIC)] != MAGIC:
        raise AlertDecodeError(
            "not an Avro container file (bad magic bytes "
            f"{data[: len(MAGIC)]!r}, expected {MAGIC!r})"
        )
    cursor = _Cursor(data)
    cursor.position = len(MAGIC)
    metadata = _read_metadata(cursor)
    schema_text = metadata.get("avro.schema")
    if not schema_text:
        raise AlertDecodeError("Avro container without an embedded schema (avro.schema)")
    codec = metadata.get("avro.codec", b"null").decode("utf-8", "replace") or "null"
    if codec not in SUPPORTED_CODECS:
        raise AlertDecodeError(
            f"unsupported Avro codec {codec!r} (supported: {', '.join(SUPPORTED_CODECS)})"
        )
    sync = cursor.read_bytes(SYNC_SIZE, "sync marker")
    blocks: list[ContainerBlock] = []
    while not cursor.at_end:
        count = cursor.read_long("block record count")
        size = cursor.read_long("block size")
        if count < 0:
            raise AlertDecodeError("corrupt Avro container: negative record count in a block")
        payload = cursor.read_view(size, "data block")
        if cursor.read_bytes(SYNC_SIZE, "block sync marker") != sync:
            raise AlertDecodeError("corrupt Avro container: block sync marker does not match")
        blocks.append(ContainerBlock(count, _decompress(payload, codec)))
    return Container(schema_text=schema_text, codec=codec, blocks=tuple(blocks))


def _long(value: int) -> bytes:
    encoded = bytearray()
    zigzag = (value << 1) ^ (value >> 63)
    while zigzag & ~0x7F:
        encoded.append((zigzag & 0x7F) | 0x80)
        zigzag >>= 7
    encoded.append(zigzag)
    return bytes(encoded)


def _bytes(value: bytes) -> bytes:
    return _long(len(value)) + value


def sync_marker_for(schema_text: bytes) -> bytes:
    """A sync marker fixed by the schema: the container bytes depend only on its content."""
    return hashlib.sha256(b"xmatch-pipeline sync\x00" + schema_text).digest()[:SYNC_SIZE]


def write_container(
    schema_text: bytes,
    record_payload: bytes,
    record_count: int,
    *,
    codec: str = "null",
    sync_marker: bytes | None = None,
) -> bytes:
    """One container file holding ``record_count`` records already Avro-encoded together.

    ``sync_marker`` defaults to :func:`sync_marker_for` the schema; callers that encode many
    records with one schema pass it precomputed.
    """
    if codec not in SUPPORTED_CODECS:
        raise ValueError(f"unsupported Avro codec {codec!r} (supported: {SUPPORTED_CODECS})")
    if codec == "deflate":
        compressor = zlib.compressobj(_DEFLATE_LEVEL, zlib.DEFLATED, -15)
        block = compressor.compress(record_payload) + compressor.flush()
    else:
        block = record_payload
    sync = sync_marker if sync_marker is not None else sync_marker_for(schema_text)
    if len(sync) != SYNC_SIZE:
        raise ValueError(f"sync marker must be {SYNC_SIZE} bytes, got {len(sync)}")
    header = b"".join(
        (
            MAGIC,
            _long(2),
            _bytes(b"avro.codec"),
            _bytes(codec.encode()),
            _bytes(b"avro.schema"),
            _bytes(schema_text),
            _long(0),
            sync,
        )
    )
    return b"".join((header, _long(record_count), _long(len(block)), block, sync))
