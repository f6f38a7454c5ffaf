"""The bad-input rules on plain values: positions, sizes, cut dead letters, schema text, the
offset precondition, and what the header-only decode checks in the fields it skips."""

from __future__ import annotations

import io
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
import pytest

from xmatch_pipeline.decode import (
    AlertDecodeError,
    AlertSchema,
    decode_alert,
    encode_alert,
    schema_from_text,
)
from xmatch_pipeline.decode.container import read_container
from xmatch_pipeline.decode.record_scan import ScanError
from xmatch_pipeline.decode.schema_text import with_last_field
from xmatch_pipeline.match.alert_matching import crossmatch_alerts
from xmatch_pipeline.match.catalog_configuration import default_catalog
from xmatch_pipeline.match.catalogs import allwise
from xmatch_pipeline.match.local.index import LocalCrossmatchEngine
from xmatch_pipeline.microbatch.bad_input import PositionOffSkyError, sky_position
from xmatch_pipeline.microbatch.offset_precondition import group_start_problem
from xmatch_pipeline.microbatch.offset_range import OffsetRange
from xmatch_pipeline.publish.dead_letter import (
    DEAD_LETTER_CUT_BYTES,
    DEAD_LETTER_KEY_CUT_BYTES,
    DeadLetter,
    fitted,
)
from xmatch_pipeline.publish.message_limits import FRAMING_BYTES, MessageLimits, record_bytes
from xmatch_pipeline.read.kafka_range_reader import KafkaRecord
from xmatch_pipeline_tests.pipeline_fixtures import allwise_rows, compact_alert_schema

# --- positions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ra", "dec"),
    [
        (math.nan, 10.0),
        (10.0, math.nan),
        (math.inf, 10.0),
        (-math.inf, 10.0),
        (10.0, math.inf),
        (10.0, 90.000001),
        (10.0, -91.0),
    ],
)
def test_a_position_off_the_sky_is_refused(ra: float, dec: float) -> None:
    with pytest.raises(PositionOffSkyError):
        sky_position(ra, dec)


@pytest.mark.parametrize(
    ("ra", "expected"),
    [
        (0.0, 0.0),
        (359.9999999, 359.9999999),
        (360.0, 0.0),
        (361.25, 1.25),
        (720.5, 0.5),
        (-0.5, 359.5),
        (-1e-20, 0.0),  # 360 - 1e-20 rounds to 360 itself: it must come back as 0
        (-360.0, 0.0),
    ],
)
def test_a_finite_ra_outside_0_360_is_the_same_direction(ra: float, expected: float) -> None:
    wrapped, dec = sky_position(ra, -12.5)
    assert dec == -12.5
    assert 0.0 <= wrapped < 360.0
    assert wrapped == pytest.approx(expected, abs=1e-9)


def test_the_poles_are_on_the_sky() -> None:
    assert sky_position(10.0, 90.0) == (10.0, 90.0)
    assert sky_position(10.0, -90.0) == (10.0, -90.0)


# --- sizes and cut dead letters ------------------------------------------------------------


def test_record_bytes_counts_key_value_headers_and_the_widest_framing() -> None:
    assert record_bytes(None) == FRAMING_BYTES
    assert record_bytes(b"x" * 100, "ZTF20abc") == FRAMING_BYTES + 108
    assert record_bytes(b"", None, [("reason", b"bad")]) == FRAMING_BYTES + 10 + 6 + 3


def test_the_producer_is_sized_to_the_topics() -> None:
    limits = MessageLimits(output_bytes=2_000_000, dead_letter_bytes=500_000)
    assert limits.producer_max_bytes == 2_000_000  # the larger topic's messages must pass
    assert limits.producer_batch_bytes == 500_000 - FRAMING_BYTES  # a batch fits both
    assert MessageLimits().producer_batch_bytes == 1_000_000


def _record(value: bytes | None, key: bytes | None = b"ZTF20aaaaaaa") -> KafkaRecord:
    return KafkaRecord("ztf_20200101_programid1", 3, 41, key, value, 1_600_000_000_000)


def test_a_dead_letter_that_fits_is_kept_whole() -> None:
    letter = DeadLetter(_record(b"v" * 1000), "not an Avro container", "AlertDecodeError")
    value, key, headers = fitted(letter, 1_048_588)
    assert (value, key, headers) == (b"v" * 1000, b"ZTF20aaaaaaa", letter.headers())


def test_a_tombstone_stays_null() -> None:
    value, _key, headers = fitted(DeadLetter(_record(None), "tombstone", "AlertDecodeError"), 200)
    assert value is None
    assert dict(headers)["reason"] == b"tombstone"


def test_a_dead_letter_too_large_is_cut_and_keeps_reason_and_origin() -> None:
    original = bytes(range(256)) * 4000  # 1,024,000 bytes
    letter = DeadLetter(_record(original), "too large to publish", "OutputTooLarge")
    value, key, headers = fitted(letter, 1_000_000)
    assert value == original[:DEAD_LETTER_CUT_BYTES]
    assert key == b"ZTF20aaaaaaa"
    named = dict(headers)
    assert named["value.truncated.from"] == b"1024000"
    assert named["reason"] == b"too large to publish"
    assert (named["origin.topic"], named["origin.offset"]) == (b"ztf_20200101_programid1", b"41")


def test_a_dead_letter_is_cut_further_for_a_small_topic_and_a_huge_key() -> None:
    letter = DeadLetter(_record(b"v" * 100_000, key=b"k" * 50_000), "too large", "X")
    value, key, headers = fitted(letter, 20_000)
    assert key == b"k" * DEAD_LETTER_KEY_CUT_BYTES
    assert value is not None
    assert 0 < len(value) < DEAD_LETTER_CUT_BYTES
    assert record_bytes(value, key, headers) == 20_000
    assert dict(headers)["key.truncated.from"] == b"50000"


# --- the offset precondition -----------------------------------------------------------


def test_a_live_range_must_start_at_the_group_offset() -> None:
    offset_range = OffsetRange("t", 0, 100, 200)
    assert group_start_problem(offset_range, 100) is None
    behind = group_start_problem(offset_range, 150)
    ahead = group_start_problem(offset_range, 40)
    assert behind is not None
    assert "a second time" in behind
    assert ahead is not None
    assert "skip offsets [40, 100)" in ahead


# --- the output schema's text ------------------------------------------------------------

FIELD = {"name": "xmatches", "type": ["null", "string"], "default": None}


def test_a_field_is_appended_and_every_other_byte_is_kept() -> None:
    text = (
        b'{ "type":"record",\n  "name" : "a", "doc": "caf\\u00e9 \xc3\xa9",\n'
        b'  "fields":[\n    {"name":"x","type":"double"} ] ,"z":1.0e3}'
    )
    edited = with_last_field(text, FIELD)
    prefix = text[: text.index(b"}", text.index(b'"x"')) + 1]
    assert edited.startswith(prefix)
    assert edited.endswith(text[len(prefix) :])
    assert json.loads(edited)["fields"] == [{"name": "x", "type": "double"}, FIELD]


def test_a_field_of_the_same_name_is_replaced() -> None:
    text = json.dumps(
        {
            "type": "record",
            "name": "a",
            "fields": [{"name": "xmatches", "type": "int"}, {"name": "y", "type": "int"}],
        }
    ).encode()
    assert json.loads(with_last_field(text, FIELD))["fields"] == [
        {"name": "y", "type": "int"},
        FIELD,
    ]
    empty = b'{"type": "record", "name": "a", "fields": []}'
    assert json.loads(with_last_field(empty, FIELD))["fields"] == [FIELD]


# --- what the header-only decode checks in the fields it skips -----------------------------


def _container(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    return encode_alert(record, schema_from_text(json.dumps(schema).encode()))


def _small_alert_schema(extra_fields: list[dict[str, Any]]) -> dict[str, Any]:
    return compact_alert_schema([{"name": "note", "type": ["null", "string"]}], extra_fields)


_EXTRA = [
    {"name": "flag", "type": {"type": "enum", "name": "flag", "symbols": ["good", "bad"]}},
    {"name": "tags", "type": {"type": "map", "values": "long"}},
    {"name": "history", "type": {"type": "array", "items": "ztf.candidate"}},
]
_RECORD = {
    "schemavsn": "3.3",
    "objectId": "ZTF20aaaaaaa",
    "candid": 1,
    "candidate": {"ra": 1.0, "dec": 2.0, "note": "ok"},
    "flag": "bad",
    "tags": {"kéy": 3},
    "history": [{"ra": 1.0, "dec": 2.0, "note": "Kulkarni"}],
}


def _replace_last(data: bytes, old: bytes, new: bytes) -> bytes:
    at = data.rindex(old)
    return data[:at] + new + data[at + len(old) :]


def _enum_out_of_range(value: bytes) -> bytes:
    """The enum's index byte (found where 'good' and 'bad' encode differently) set to 3."""
    good = _container(_small_alert_schema(_EXTRA), _RECORD | {"flag": "good"})
    (at,) = [i for i, (a, b) in enumerate(zip(good, value, strict=True)) if a != b]
    return value[:at] + b"\x06" + value[at + 1 :]


@pytest.mark.parametrize(
    ("what", "corrupt"),
    [
        (
            "a string in an array of records",
            lambda v: _replace_last(v, b"Kulkarni", b"Kulk\xffrni"),
        ),
        ("a map key", lambda v: _replace_last(v, "kéy".encode(), b"k\xc3\x28y")),
        ("an enum index beyond the symbols", _enum_out_of_range),
    ],
)
def test_header_only_decoding_refuses_what_a_full_reader_refuses(what: str, corrupt: Any) -> None:
    value = _container(_small_alert_schema(_EXTRA), _RECORD)
    assert decode_alert(value, header_only=True).candid == 1
    broken = corrupt(value)
    assert len(broken) == len(value), what
    with pytest.raises(AlertDecodeError):
        decode_alert(broken)  # a full read refuses it ...
    with pytest.raises(AlertDecodeError):
        decode_alert(broken, header_only=True)  # ... and so does the header-only one


def test_header_only_decoding_refuses_invalid_utf8_in_a_real_alerts_skipped_fields(
    ztf_alert_files: list[Path],
) -> None:
    data = ztf_alert_files[0].read_bytes()
    for skipped in (b"Kulkarni", b"ZTF (www.ztf.caltech.edu)", b".fits.gz"):
        broken = _replace_last(data, skipped, b"\xff" + skipped[1:])
        with pytest.raises(AlertDecodeError, match="UnicodeDecodeError"):
            decode_alert(broken, header_only=True)


# --- the header scan against a full read ---------------------------------------------------


def _full_read(payload: bytes, schema: AlertSchema) -> dict[str, Any] | None:
    """fastavro's full read, or None where it refuses the bytes (or leaves some over)."""
    buffer = io.BytesIO(payload)
    try:
        record = fastavro.schemaless_reader(buffer, schema.parsed, None)
    except Exception:  # fastavro signals bad data with many exception types
        return None
    return record if isinstance(record, dict) and buffer.tell() == len(payload) else None


def test_what_the_header_scan_accepts_a_full_read_accepts_with_the_same_header(
    ztf_alert_files: list[Path],
) -> None:
    """Random damage to real alerts: the scan never lets through what a full read refuses."""
    rng = random.Random(20201)
    refused_by_both = 0
    for path in ztf_alert_files[::20]:
        container = read_container(path.read_bytes())
        schema = schema_from_text(container.schema_text)
        assert schema.header_scanner is not None
        payload = bytes(container.blocks[0].payload)
        for _ in range(200):
            damaged = bytearray(payload)
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
            if rng.random() < 0.2:
                del damaged[rng.randrange(len(damaged))]
            try:
                header = schema.header_scanner(bytes(damaged))
            except (ScanError, UnicodeDecodeError):
                refused_by_both += _full_read(bytes(damaged), schema) is None
                continue
            full = _full_read(bytes(damaged), schema)
            assert full is not None, "the scan accepted bytes a full read refuses"
            assert (header["objectId"], header["candid"]) == (full["objectId"], full["candid"])
            assert header["candidate"]["ra"] == full["candidate"]["ra"] or math.isnan(
                header["candidate"]["ra"]
            )
    assert refused_by_both > 50  # the damage did reach the checks


def test_the_header_scan_refuses_a_negative_union_index_that_fastavro_wraps() -> None:
    """fastavro reads union index -1 as the last branch; Avro readers such as Java's refuse it."""
    value = _container(_small_alert_schema([]), _RECORD)
    # The record ends with note = "ok": union index 1 (0x02), length 2 (0x04), "ok"; then
    # the 16-byte sync marker.
    assert value[-20:-16] == b"\x02\x04ok"
    broken = value[:-20] + b"\x01" + value[-19:]  # index zig-zag -1
    assert decode_alert(broken).record["candidate"]["note"] == "ok"  # fastavro wraps it
    with pytest.raises(AlertDecodeError, match="union index -1"):
        decode_alert(broken, header_only=True)


def test_a_schema_the_scan_cannot_compile_falls_back_to_the_validating_read() -> None:
    recursive = _small_alert_schema(
        [
            {
                "name": "tree",
                "type": {
                    "type": "record",
                    "name": "node",
                    "fields": [
                        {"name": "label", "type": "string"},
                        {"name": "children", "type": {"type": "array", "items": "node"}},
                    ],
                },
            }
        ]
    )
    record = _RECORD | {
        "tree": {"label": "root", "children": [{"label": "Kulkarni", "children": []}]}
    }
    value = _container(recursive, record)
    assert schema_from_text(json.dumps(recursive).encode()).header_scanner is None
    assert decode_alert(value, header_only=True).candid == 1
    with pytest.raises(AlertDecodeError, match="UnicodeDecodeError"):
        decode_alert(_replace_last(value, b"Kulkarni", b"Kulk\xffrni"), header_only=True)


# --- an alert sent twice upstream ----------------------------------------------------------


@dataclass(frozen=True)
class _Position:
    candid: int
    object_id: str
    ra: float
    dec: float


def test_an_alert_that_came_twice_is_matched_once_and_both_copies_get_the_match(
    allwise_index: Path, shared_data_dir: Path
) -> None:
    row = allwise_rows(shared_data_dir)[0]
    ra, dec = float(row["RAJ2000"]), float(row["DEJ2000"])
    twice = [_Position(7, "ZTF20twice", ra, dec), _Position(7, "ZTF20twice", ra, dec)]
    engine = LocalCrossmatchEngine({"allwise": allwise_index})

    matches = crossmatch_alerts(twice, engine, [default_catalog(allwise.CATALOG)])

    assert matches.sent_to_engine == 1
    assert matches.xmatches_by_candid[7]["allwise"]["AllWISE"] == row["AllWISE"]
