"""Rubin's alerts, decoded from their own framing with the schemas lsst-alert-packet ships.

Pure decoding on Rubin's sample alert of every schema version (read from the installed
package), the faults of the framing, the survey of a topic, and the enriched output in the
same framing under an id of its own.
"""

from __future__ import annotations

import io
import json
import re

import fastavro
import pytest
from fastavro.schema import to_parsing_canonical_form

from xmatch_pipeline.decode.container import read_container
from xmatch_pipeline.decode.errors import AlertDecodeError
from xmatch_pipeline.decode.lsst_alert import decode_lsst_alert
from xmatch_pipeline.decode.lsst_schemas import (
    PackagedLsstSchemas,
    packaged_sample_alerts,
    rubin_schema_id,
)
from xmatch_pipeline.decode.wire_format import split_wire_message, wire_message
from xmatch_pipeline.publish.enriched_alert import APPENDED_FIELDS, XMATCHES_FIELD, xmatches_field
from xmatch_pipeline.publish.lsst_output import (
    LsstOutputSchemaIds,
    encode_enriched_lsst_alert,
    fixed_output_id,
    output_schema_for_fixed_id,
)
from xmatch_pipeline.survey import TopicSurveys
from xmatch_pipeline_tests.lsst_samples import SampleAlert, sample_alerts, variant

#: diaSource.ra / dec and the ids of Rubin's sample alerts (every version has the same).
SAMPLE_RA, SAMPLE_DEC = 351.570546978, 0.126243049656
SAMPLE_SOURCE_ID, SAMPLE_OBJECT_ID = 281323062375219200, 281323062375219201


@pytest.fixture(scope="module")
def schemas() -> PackagedLsstSchemas:
    return PackagedLsstSchemas()


@pytest.fixture(scope="module")
def samples() -> list[SampleAlert]:
    return sample_alerts()


def test_every_schema_version_the_package_ships_is_known_by_rubins_id(
    schemas: PackagedLsstSchemas,
) -> None:
    files = packaged_sample_alerts()
    assert len(schemas.known_ids) >= 15  # 3.0 … 11.1 in the version installed
    assert set(files) == set(schemas.known_ids)
    assert rubin_schema_id(11, 1) == 1101
    assert rubin_schema_id(7, 4) == 704
    for schema_id, path in files.items():
        embedded = fastavro.parse_schema(
            json.loads(read_container(path.read_bytes()).schema_text),
            named_schemas={},
        )
        assert to_parsing_canonical_form(embedded) == to_parsing_canonical_form(
            schemas.schema_for_id(schema_id).parsed
        ), f"schema {schema_id} differs from the one its sample was written with"


def test_rubins_sample_alert_of_every_version_decodes_with_exact_ids_and_position(
    schemas: PackagedLsstSchemas, samples: list[SampleAlert]
) -> None:
    for sample in samples:
        alert = decode_lsst_alert(sample.value, schemas)
        assert alert.schema_id == sample.schema_id
        assert alert.record == sample.record  # every field, as fastavro reads the file
        assert alert.candid == SAMPLE_SOURCE_ID  # diaSource.diaSourceId
        # null in diaSource; taken from diaObject.diaObjectId
        assert alert.dia_object_id == SAMPLE_OBJECT_ID
        assert alert.object_id == "281323062375219201"
        assert (alert.ra, alert.dec) == (SAMPLE_RA, SAMPLE_DEC)  # decl before 5.0


def test_64_bit_ids_stay_exact_and_the_source_s_object_id_comes_first(
    schemas: PackagedLsstSchemas, samples: list[SampleAlert]
) -> None:
    largest = 2**63 - 1
    for sample in samples:
        changed = variant(
            sample, dia_source_id=largest, dia_object_id=largest - 1, ra=0.0, dec=-90.0
        )
        alert = decode_lsst_alert(changed.value, schemas)
        assert (alert.candid, alert.dia_object_id) == (largest, largest - 1)
        assert alert.object_id == str(largest - 1)
        assert (alert.ra, alert.dec) == (0.0, -90.0)


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda value: b"\x01" + value[1:], "magic byte 0x01, expected 0x00"),
        (lambda value: b"Obj\x01" + value[4:], "magic byte 0x4f"),
        (lambda value: value[:3], "truncated Confluent wire message: 3 bytes"),
        (lambda value: b"", "truncated Confluent wire message: 0 bytes"),
        (lambda value: wire_message(9_999, value[5:]), "unknown LSST schema id 9999"),
        (lambda value: value[: len(value) // 2], "do not match schema id 1101"),
        (lambda value: value + b"\x00", "1 bytes left over"),
        (lambda value: None, "no value (a tombstone?)"),
    ],
    ids=[
        "wrong-magic",
        "a-ztf-container",
        "header-cut",
        "empty",
        "unknown-id",
        "record-cut",
        "bytes-left-over",
        "tombstone",
    ],
)
def test_undecodable_lsst_messages_raise_the_decode_error_with_their_reason(
    schemas: PackagedLsstSchemas, samples: list[SampleAlert], mangle, reason: str
) -> None:
    latest = next(sample for sample in samples if sample.schema_id == 1101)
    with pytest.raises(AlertDecodeError, match=re.escape(reason)) as raised:
        decode_lsst_alert(mangle(latest.value), schemas, topic="lsst", partition=0, offset=7)
    assert "offset 7" in str(raised.value)


def test_the_wire_header_is_the_magic_byte_and_a_big_endian_id() -> None:
    assert wire_message(1101, b"abc") == b"\x00\x00\x00\x04\x4dabc"
    schema_id, rest = split_wire_message(b"\x00\xff\xff\xff\xffz")
    assert (schema_id, bytes(rest)) == (2**32 - 1, b"z")


def test_a_topic_s_survey_is_its_setting_never_its_name() -> None:
    surveys = TopicSurveys.parse("ztf", "lsst-alerts-v.*=lsst, rubin=lsst")
    assert surveys.survey_of("lsst-alerts-v11") == "lsst"
    assert surveys.survey_of("rubin") == "lsst"
    assert surveys.survey_of("rubin-2") == "ztf"  # the whole name must match
    assert surveys.survey_of("lsst_is_in_this_name") == "ztf"
    assert TopicSurveys.parse("lsst", None).survey_of("ztf_20200101_programid1") == "lsst"
    assert surveys.names("lsst")
    assert not TopicSurveys().names("lsst")
    for default, rules, message in [
        ("hsc", None, "unknown survey 'hsc'"),
        ("ztf", "lsst", "not regex=survey"),
        ("ztf", "(=lsst", "not a regular expression"),
        ("ztf", "x=decam", "unknown survey 'decam'"),
    ]:
        with pytest.raises(ValueError, match=message):
            TopicSurveys.parse(default, rules)


def _decode_output(value: bytes, schema: dict[str, object]) -> dict[str, object]:
    _schema_id, payload = split_wire_message(value)
    record = fastavro.schemaless_reader(io.BytesIO(bytes(payload)), schema, None)
    assert isinstance(record, dict)
    return record


def test_the_enriched_lsst_alert_keeps_rubins_framing_under_an_id_of_its_own(
    schemas: PackagedLsstSchemas, samples: list[SampleAlert]
) -> None:
    output_ids = LsstOutputSchemaIds("xmatch")
    match = {"allwise": {"angDist": 0.25, "AllWISE": "J2326", "RAJ2000": 351.57054}}
    for sample in samples:
        alert = decode_lsst_alert(sample.value, schemas)
        value = encode_enriched_lsst_alert(alert, match, output_ids)
        output_id, payload = split_wire_message(value)
        assert (
            output_id == fixed_output_id(sample.schema_id, "double") == 1_000_000 + sample.schema_id
        )
        assert output_id not in schemas.known_ids
        assert bytes(payload).startswith(sample.payload), "the alert's bytes were altered"
        documented = output_schema_for_fixed_id(output_id, schemas)
        assert documented.as_json()["fields"][-1] == xmatches_field("double")
        record = _decode_output(value, documented.parsed)
        assert record[XMATCHES_FIELD] == match
        assert {k: v for k, v in record.items() if k not in APPENDED_FIELDS} == sample.record
        no_match = encode_enriched_lsst_alert(alert, None, output_ids)
        assert _decode_output(no_match, documented.parsed)[XMATCHES_FIELD] is None
    float32 = encode_enriched_lsst_alert(
        decode_lsst_alert(samples[-1].value, schemas), match, output_ids, precision="float32"
    )
    assert split_wire_message(float32)[0] == 2_000_000 + samples[-1].schema_id
    with pytest.raises(ValueError, match="not an output id"):
        output_schema_for_fixed_id(1101, schemas)


def test_the_cli_prints_the_schema_behind_an_output_id_and_refuses_rubins_own(
    schemas: PackagedLsstSchemas,
) -> None:
    from typer.testing import CliRunner

    from xmatch_pipeline.cli.main import app

    runner = CliRunner()
    printed = runner.invoke(app, ["lsst", "output-schema", "1000704"])
    assert printed.exit_code == 0, printed.output
    document = json.loads(printed.stdout)
    assert document["fields"][-1] == xmatches_field("double")
    assert (
        document["fields"][: -len(APPENDED_FIELDS)]
        == schemas.schema_for_id(704).as_json()["fields"]
    )
    refused = runner.invoke(app, ["lsst", "output-schema", "704"])
    assert refused.exit_code == 2
    assert "not an output id" in refused.output
    unknown = runner.invoke(app, ["lsst", "output-schema", "1004242"])
    assert unknown.exit_code == 2
    assert "unknown LSST schema id 4242" in unknown.output
