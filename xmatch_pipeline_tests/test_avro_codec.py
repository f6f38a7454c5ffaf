"""The alert codec on every real ZTF alert (3.3 and 4.01) and on bad input."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any, cast

import fastavro
import pytest
from fastavro.schema import to_parsing_canonical_form

from xmatch_pipeline.decode import (
    AlertDecodeError,
    decode_alert,
    encode_alert,
    schema_from_json,
    ztf_alert_schema,
)
from xmatch_pipeline.decode.alert_schema import cached_schema_count


def _reference_record(path: Path) -> dict[str, Any]:
    """The record as fastavro's own container reader sees it (the reference to agree with)."""
    with path.open("rb") as handle:
        return cast("dict[str, Any]", next(iter(fastavro.reader(handle))))


def test_every_real_alert_decodes_like_fastavro(ztf_alert_files: list[Path]) -> None:
    versions: dict[str, int] = {}
    for path in ztf_alert_files:
        alert = decode_alert(path.read_bytes(), source=str(path))
        reference = _reference_record(path)
        assert alert.record == reference, path
        assert alert.candid == reference["candid"]
        assert alert.object_id == reference["objectId"]
        assert alert.ra == reference["candidate"]["ra"]
        assert alert.dec == reference["candidate"]["dec"]
        versions[alert.schema_version] = versions.get(alert.schema_version, 0) + 1
    assert versions == {"3.3": 62, "4.01": 24}


def test_writer_schema_is_parsed_once_per_distinct_schema(ztf_alert_files: list[Path]) -> None:
    first, second = (path.read_bytes() for path in ztf_alert_files[:2])
    alert_one, alert_two = decode_alert(first), decode_alert(second)
    count = cached_schema_count()
    again = decode_alert(first)
    assert again.schema is alert_one.schema  # the same parsed object, not a re-parse
    assert alert_two.schema is alert_one.schema  # same writer schema text in both files
    assert cached_schema_count() == count


def test_packaged_schema_matches_the_real_3_3_writer_schemas(ztf_alert_files: list[Path]) -> None:
    ours = ztf_alert_schema("3.3")
    assert ours.version == "3.3"
    real_3_3 = [path for path in ztf_alert_files if "v3.3" in path.parts]
    writer_texts = {decode_alert(path.read_bytes()).schema.text for path in real_3_3}
    assert len(writer_texts) >= 2  # fink-broker and kowalski embed different texts
    for text in writer_texts:
        real = fastavro.parse_schema(json.loads(text))
        assert to_parsing_canonical_form(real) == to_parsing_canonical_form(ours.parsed)


def test_encode_is_byte_stable_and_readable_by_fastavro(ztf_alert_files: list[Path]) -> None:
    for path in (ztf_alert_files[0], ztf_alert_files[-1]):  # a 3.3 and a 4.01 alert
        alert = decode_alert(path.read_bytes())
        encoded = encode_alert(alert.record, alert.schema)
        assert encode_alert(dict(alert.record), alert.schema) == encoded
        assert decode_alert(encoded).record == alert.record
        reader = fastavro.reader(io.BytesIO(encoded))
        assert next(iter(reader)) == alert.record
        assert json.loads(reader.metadata["avro.schema"]) == json.loads(alert.schema.text)


def test_deflate_containers_decode(ztf_alert_files: list[Path]) -> None:
    alert = decode_alert(ztf_alert_files[0].read_bytes())
    ours = encode_alert(alert.record, alert.schema, codec="deflate")
    buffer = io.BytesIO()
    fastavro.writer(buffer, alert.schema.parsed, [alert.record], codec="deflate")
    for data in (ours, buffer.getvalue()):
        assert decode_alert(data).record == alert.record
    assert len(ours) < len(encode_alert(alert.record, alert.schema))


@pytest.mark.parametrize(
    ("value", "reason_part"),
    [
        (b"", "empty message"),
        (None, "empty message"),
        (b"\x00garbage bytes, not Avro", "not an Avro container"),
        (b"Obj\x01\x04\x16avro.schema", "truncated Avro container"),
    ],
)
def test_garbage_raises_the_typed_error_with_origin(value: bytes | None, reason_part: str) -> None:
    with pytest.raises(AlertDecodeError) as caught:
        decode_alert(value, topic="ztf_20200101_programid1", partition=3, offset=42)
    error = caught.value
    assert reason_part in error.reason
    assert (error.topic, error.partition, error.offset) == ("ztf_20200101_programid1", 3, 42)
    assert "offset 42" in str(error)


def test_truncated_alert_is_an_error(ztf_alert_files: list[Path]) -> None:
    data = ztf_alert_files[0].read_bytes()
    with pytest.raises(AlertDecodeError, match="truncated") as caught:
        decode_alert(data[: len(data) // 2], source="half.avro")
    assert caught.value.source == "half.avro"


def test_corrupted_record_bytes_are_an_error(ztf_alert_files: list[Path]) -> None:
    alert = decode_alert(ztf_alert_files[0].read_bytes())
    encoded = bytearray(encode_alert(alert.record, alert.schema))
    header_size = len(encoded) - len(alert.payload) - 16
    encoded[header_size - 3 : header_size + 40] = b"\xff" * 43  # block header and record start
    with pytest.raises(AlertDecodeError):
        decode_alert(bytes(encoded))


def test_other_avro_is_not_a_ztf_alert() -> None:
    schema = schema_from_json(
        {"type": "record", "name": "ping", "fields": [{"name": "n", "type": "long"}]}
    )
    with pytest.raises(AlertDecodeError, match="not a ZTF alert"):
        decode_alert(encode_alert({"n": 1}, schema))


def test_unknown_schema_version_is_named(ztf_alert_files: list[Path]) -> None:
    alert = decode_alert(ztf_alert_files[0].read_bytes())
    record = {**alert.record, "schemavsn": "9.9"}
    with pytest.raises(AlertDecodeError, match=r"unknown ZTF alert schema version '9\.9'"):
        decode_alert(encode_alert(record, alert.schema))


def test_two_alerts_in_one_message_are_refused(ztf_alert_files: list[Path]) -> None:
    alert = decode_alert(ztf_alert_files[0].read_bytes())
    buffer = io.BytesIO()
    fastavro.writer(buffer, alert.schema.parsed, [alert.record, alert.record])
    with pytest.raises(AlertDecodeError, match="exactly one alert"):
        decode_alert(buffer.getvalue())


def test_decoded_alerts_pickle_through_the_schema_cache(ztf_alert_files: list[Path]) -> None:
    alert = decode_alert(ztf_alert_files[-1].read_bytes())
    copy = pickle.loads(pickle.dumps(alert))
    assert copy.record == alert.record
    assert copy.schema is alert.schema
    assert bytes(copy.payload) == bytes(alert.payload)


def _leaves(value: object, path: str = "") -> set[tuple[str, object]]:
    """``(path, value)`` of every scalar in a decoded record."""
    if isinstance(value, dict):
        return {leaf for key, item in value.items() for leaf in _leaves(item, f"{path}.{key}")}
    if isinstance(value, list):
        return {
            leaf for index, item in enumerate(value) for leaf in _leaves(item, f"{path}[{index}]")
        }
    return {(path, value)}


def test_header_only_decoding_keeps_the_routing_fields_and_the_full_record(
    ztf_alert_files: list[Path],
) -> None:
    for path in ztf_alert_files:
        data = path.read_bytes()
        full = decode_alert(data)
        header = decode_alert(data, header_only=True)
        assert not header.complete
        assert {"schemavsn", "objectId", "candid", "candidate"} <= set(header.record)
        assert (header.ra, header.dec) == (full.ra, full.dec)
        # Besides the routing fields it holds only strings (read to check their UTF-8),
        # each as the full decode reads it.
        assert _leaves(header.record) <= _leaves(full.record)
        assert {type(value) for path, value in _leaves(header.record)} <= {
            str,
            float,
            int,
            type(None),
        }
        assert not any(
            isinstance(value, float) and not path.endswith(("ra", "dec"))
            for path, value in _leaves(header.record)
        )
        assert (header.object_id, header.candid, header.schema_version) == (
            full.object_id,
            full.candid,
            full.schema_version,
        )
        assert header.full_record() == full.record
        assert bytes(header.payload) == bytes(full.payload)


def test_header_only_decoding_still_rejects_bad_bytes(ztf_alert_files: list[Path]) -> None:
    data = ztf_alert_files[0].read_bytes()
    with pytest.raises(AlertDecodeError):
        decode_alert(data[: len(data) // 2], header_only=True)
    alert = decode_alert(data)
    encoded = bytearray(encode_alert(alert.record, alert.schema))
    header_size = len(encoded) - len(alert.payload) - 16
    encoded[header_size - 3 : header_size + 40] = b"\xff" * 43
    with pytest.raises(AlertDecodeError):
        decode_alert(bytes(encoded), header_only=True)
