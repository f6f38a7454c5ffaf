"""A validating scan of one Avro record: every byte checked as a full read checks it, only the
header built as Python values. It is the header-only decode's fast path.

A full read builds ~1,000 Python values per ZTF alert; fastavro's projected read
(``reader_projection``) still pays for resolving each field and for the strings it must
read to check their UTF-8. The scanner compiles the writer schema once: runs of fields of
fixed shape (numbers, booleans, enums, unions of those) become one regular expression over
the bytes, and Python steps in only for what is length- or count-prefixed (strings, bytes,
arrays, maps, unions holding those). A string is decoded as UTF-8, to check it, and dropped.

It refuses what Avro readers refuse: bytes that end early, a length or count that overruns
the record, a union index or enum symbol out of range (negative included, which fastavro
would wrap around), an int or long longer than its widest encoding, a string that is not
UTF-8, bytes left over. A schema it cannot compile (a recursive record, a header field
that is not a plain string, long or double) gets no scanner; the projected read is used.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from typing import Any

from xmatch_pipeline.decode.reader_projection import HEADER_FIELDS, POSITION_FIELDS, full_name

#: A header capture: the path of the value in the header record.
Capture = tuple[str, ...]
Program = tuple[tuple[Any, ...], ...]
#: One pass over a record's bytes: the header values and where the record ends.
Scanner = Callable[[bytes | memoryview], dict[str, Any]]


class ScanError(ValueError):
    """The bytes do not hold a record of the schema; the message says where and why."""


class _UncompilableError(Exception):
    """The schema needs the projected read instead (recursion, unusual header types)."""


_PATTERNS = {
    "null": b"",
    "boolean": b".",  # readers take 1 as true and any other byte as false
    "int": b"[\\x80-\\xff]{0,4}[\\x00-\\x7f]",
    "long": b"[\\x80-\\xff]{0,9}[\\x00-\\x7f]",
    "float": b".{4}",
    "double": b".{8}",
}
_SINGLE_BYTE_INDEXES = 64  # zig-zag indexes 0..63 take one byte: 0x00, 0x02, ... 0x7e
_MAX_EMPTY_ITEMS = 1_000_000  # an array of zero-byte items cannot be bounded by its bytes

_RE, _STRING, _BYTES, _LONG, _DOUBLE, _UNION, _ARRAY, _MAP, _ENUM = range(9)


def _index_byte(index: int) -> bytes:
    return re.escape(bytes([index << 1]))


class _Compiler:
    def __init__(self) -> None:
        self.named: dict[str, tuple[dict[str, Any], str | None]] = {}
        self.active: set[str] = set()

    def node(self, node: Any, space: str | None, capture: Any = None) -> list[tuple[Any, ...]]:
        """The ops reading ``node``; fixed-shape parts as raw pattern bytes, not compiled."""
        if isinstance(capture, tuple):
            return [self._capture(node, capture)]
        if isinstance(node, str):
            if node in _PATTERNS:
                return [(_RE, _PATTERNS[node])]
            if node == "string":
                return [(_STRING, None)]
            if node == "bytes":
                return [(_BYTES,)]
            full = node if "." in node or not space else f"{space}.{node}"
            if full not in self.named and node in self.named:
                full = node
            if full not in self.named:
                raise _UncompilableError(f"unknown named type {node!r}")
            definition, defined_in = self.named[full]
            return self._named(definition, defined_in, capture)
        if isinstance(node, list):
            return [self._union(node, space)]
        kind = node.get("type")
        if kind in ("record", "enum", "fixed"):
            full = full_name(node, space)
            self.named.setdefault(full, (node, space))
            return self._named(node, space, capture)
        if kind == "array":
            return [(_ARRAY, self.program(node["items"], space))]
        if kind == "map":
            return [(_MAP, self.program(node["values"], space))]
        return self.node(kind, space, capture)

    def _named(self, node: dict[str, Any], space: str | None, capture: Any) -> list[Any]:
        kind = node["type"]
        full = full_name(node, space)
        if kind == "fixed":
            return [(_RE, b".{%d}" % int(node["size"]))]
        if kind == "enum":
            count = len(node["symbols"])
            if count <= _SINGLE_BYTE_INDEXES:
                return [(_RE, b"[" + b"".join(_index_byte(i) for i in range(count)) + b"]")]
            return [(_ENUM, count)]
        if full in self.active:
            raise _UncompilableError(f"recursive record {full}")
        self.active.add(full)
        inner = full.rpartition(".")[0] or None
        ops: list[tuple[Any, ...]] = []
        for entry in node["fields"]:
            sub = capture.get(entry["name"]) if isinstance(capture, dict) else None
            ops.extend(self.node(entry["type"], inner, sub))
        self.active.discard(full)
        return _merge_patterns(ops)

    def _capture(self, node: Any, path: Capture) -> tuple[Any, ...]:
        kind = node.get("type") if isinstance(node, dict) and not node.get("logicalType") else node
        if kind == "string":
            return (_STRING, path)
        if kind == "long":
            return (_LONG, path)
        if kind == "double":
            return (_DOUBLE, path)
        raise _UncompilableError(f"header field {'.'.join(path)} has type {node!r}")

    def _union(self, branches: list[Any], space: str | None) -> tuple[Any, ...]:
        compiled = [self.node(branch, space) for branch in branches]
        if len(branches) <= _SINGLE_BYTE_INDEXES and all(
            len(ops) == 1 and ops[0][0] == _RE for ops in compiled
        ):
            alternatives = b"|".join(_index_byte(i) + ops[0][1] for i, ops in enumerate(compiled))
            return (_RE, b"(?:" + alternatives + b")")
        return (_UNION, tuple(_finish(ops) for ops in compiled))

    def program(self, node: Any, space: str | None, capture: Any = None) -> Program:
        return _finish(self.node(node, space, capture))


def _merge_patterns(ops: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Adjacent patterns as one (a record of fixed-shape fields is itself of fixed shape)."""
    merged: list[tuple[Any, ...]] = []
    for op in ops:
        if op[0] == _RE and merged and merged[-1][0] == _RE:
            merged[-1] = (_RE, merged[-1][1] + op[1])
        else:
            merged.append(op)
    return merged or [(_RE, b"")]


def _finish(ops: list[tuple[Any, ...]]) -> Program:
    """Merge runs of patterns into one compiled expression each; drop empty ones."""
    finished: list[tuple[Any, ...]] = []
    run: list[bytes] = []

    def flush() -> None:
        if run and any(run):
            finished.append((_RE, re.compile(b"".join(run), re.DOTALL).match))
        run.clear()

    for op in ops:
        if op[0] == _RE and isinstance(op[1], bytes):
            run.append(op[1])
        else:
            flush()
            finished.append(op)
    flush()
    return tuple(finished)


def _varint(data: bytes, position: int) -> tuple[int, int]:
    byte = data[position]
    if byte < 0x80:
        return (byte >> 1) ^ -(byte & 1), position + 1
    value, shift = byte & 0x7F, 7
    while True:
        position += 1
        byte = data[position]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (value >> 1) ^ -(value & 1), position + 1
        shift += 7
        if shift > 63:
            raise ScanError(f"a varint longer than 10 bytes at byte {position}")


_DOUBLE_AT = struct.Struct("<d").unpack_from


def _run(  # noqa: PLR0912 - one flat dispatch per op: this loop is the hot path
    program: Program, data: bytes, position: int, header: dict[Capture, Any]
) -> int:
    size = len(data)
    for op in program:
        code = op[0]
        if code == _RE:
            match = op[1](data, position)
            if match is None:
                raise ScanError(f"bytes from {position} do not match the schema")
            position = match.end()
        elif code in (_STRING, _BYTES):
            length, position = _varint(data, position)
            end = position + length
            if length < 0 or end > size:
                raise ScanError(f"a length of {length} at byte {position} overruns the record")
            if code == _STRING:
                text = str(data[position:end], "utf-8")
                if op[1] is not None:
                    header[op[1]] = text
            position = end
        elif code == _UNION:
            index, position = _varint(data, position)
            if not 0 <= index < len(op[1]):
                raise ScanError(f"union index {index} out of range at byte {position}")
            position = _run(op[1][index], data, position, header)
        elif code in (_ARRAY, _MAP):
            position = _blocks(op[1], code == _MAP, data, position, header)
        elif code == _LONG:
            header[op[1]], position = _varint(data, position)
        elif code == _DOUBLE:
            if position + 8 > size:
                raise ScanError("the record ends inside a double")
            header[op[1]] = _DOUBLE_AT(data, position)[0]
            position += 8
        else:  # _ENUM with more symbols than one byte indexes
            index, position = _varint(data, position)
            if not 0 <= index < op[1]:
                raise ScanError(f"enum index {index} out of range at byte {position}")
    return position


def _blocks(
    item: Program, is_map: bool, data: bytes, position: int, header: dict[Capture, Any]
) -> int:
    while True:
        count, position = _varint(data, position)
        if count == 0:
            return position
        if count < 0:
            count = -count
            _, position = _varint(data, position)  # the block's size in bytes
        if count > max(len(data) - position, _MAX_EMPTY_ITEMS if not item else 0):
            raise ScanError(f"a block of {count} items at byte {position} overruns the record")
        for _ in range(count):
            if is_map:
                position = _run(((_STRING, None),), data, position, header)
            position = _run(item, data, position, header)


def compile_scanner(document: dict[str, Any]) -> Scanner | None:
    """A scanner for records of the ZTF-shaped writer schema ``document``, or None when the
    schema needs the projected read."""
    captures: dict[str, Any] = {name: (name,) for name in HEADER_FIELDS}
    captures["candidate"] = {name: ("candidate", name) for name in POSITION_FIELDS}
    try:
        program = _Compiler().program(document, None, captures)
    except (_UncompilableError, KeyError, TypeError, ValueError, re.error):
        return None

    def scan(payload: bytes | memoryview) -> dict[str, Any]:
        if not isinstance(payload, bytes):
            payload = bytes(payload)
        header: dict[Capture, Any] = {}
        try:
            end = _run(program, payload, 0, header)
        except IndexError:
            raise ScanError("the record ends early") from None
        if end != len(payload):
            raise ScanError(f"{len(payload) - end} bytes left over after the record")
        record: dict[str, Any] = {"candidate": {}}
        for path, value in header.items():
            if len(path) == 1:
                record[path[0]] = value
            else:
                record["candidate"][path[1]] = value
        return record

    return scan


def compile_validator(document: dict[str, Any]) -> Callable[[bytes | memoryview], None] | None:
    """A check that the bytes hold exactly one record of ``document``, every byte checked as
    the scan checks it, no value kept; None for a schema the scan cannot compile.

    fastavro alone does not see a record cut inside a ``bytes`` or ``string`` value (it
    reads what is there), so a full read is checked with this first.
    """
    try:
        program = _Compiler().program(document, None)
    except (_UncompilableError, KeyError, TypeError, ValueError, re.error):
        return None

    def validate(payload: bytes | memoryview) -> None:
        if not isinstance(payload, bytes):
            payload = bytes(payload)
        try:
            end = _run(program, payload, 0, {})
        except IndexError:
            raise ScanError("the record ends early") from None
        if end != len(payload):
            raise ScanError(f"{len(payload) - end} bytes left over after the record")

    return validate
