"""The output message: input alert plus xmatches, full precision by default."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, cast

import fastavro
import numpy as np
import pandas as pd
import pytest

from xmatch_pipeline.decode import decode_alert, encode_alert
from xmatch_pipeline.publish.enriched_alert import (
    encode_enriched_alert,
    enriched_record,
    enriched_schema,
)

RA_FROM_THE_BRIEF = 342.16949390
ALLWISE_ID_AS_INT = 1234567890123456789  # 19 digits: corrupted by any float on the way


def _xmatches() -> dict[str, dict[str, object]]:
    return {
        "allwise": {
            "AllWISE": "J224840.67+000301.1",
            "RAJ2000": RA_FROM_THE_BRIEF,
            "DEJ2000": np.float64(0.0503214),
            "W1mag": float("nan"),
            "e_W4mag": pd.NA,
            "Jmag": np.float32(15.5),
            "source_id": np.int64(ALLWISE_ID_AS_INT),
            "angDist": 0.372813,
        }
    }


def _read(data: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """Record and writer schema as a consumer using fastavro's container reader sees them."""
    reader = fastavro.reader(io.BytesIO(data))
    record = cast("dict[str, Any]", next(iter(reader)))
    return record, cast("dict[str, Any]", reader.writer_schema)


def test_round_trip_keeps_the_alert_and_every_bit(ztf_alert_files: list[Path]) -> None:
    for path in ztf_alert_files:
        alert = decode_alert(path.read_bytes())
        output = encode_enriched_alert(alert, _xmatches())
        decoded = decode_alert(output)
        record = dict(decoded.record)
        xmatches = record.pop("xmatches")
        assert record == alert.record, path
        allwise = xmatches["allwise"]
        assert allwise["RAJ2000"] == RA_FROM_THE_BRIEF  # exact, not 342.16949463
        assert allwise["source_id"] == ALLWISE_ID_AS_INT
        assert allwise["W1mag"] is None
        assert allwise["e_W4mag"] is None
        assert allwise["Jmag"] == 15.5
        assert not any(isinstance(v, float) and math.isnan(v) for v in allwise.values())


def test_version_4_input_gives_a_version_4_output(ztf_alert_files: list[Path]) -> None:
    path = next(path for path in ztf_alert_files if "v4.01" in path.parts)
    alert = decode_alert(path.read_bytes())
    record, schema = _read(encode_enriched_alert(alert, _xmatches()))
    names = [entry["name"] for entry in schema["fields"]]
    assert "fp_hists" in names
    assert names[-1] == "xmatches"
    assert record["schemavsn"] == "4.01"
    assert record["fp_hists"] == alert.record["fp_hists"]


def test_no_match_is_null_and_bytes_are_deterministic(ztf_alert_files: list[Path]) -> None:
    alert = decode_alert(ztf_alert_files[0].read_bytes())
    output = encode_enriched_alert(alert, None)
    assert encode_enriched_alert(decode_alert(ztf_alert_files[0].read_bytes()), None) == output
    record, _ = _read(output)
    assert record["xmatches"] is None


def test_appending_to_the_received_bytes_equals_a_full_encode(
    ztf_alert_files: list[Path],
) -> None:
    for path in (ztf_alert_files[0], ztf_alert_files[-1]):
        alert = decode_alert(path.read_bytes())
        for precision in ("double", "float32"):
            full = encode_alert(
                enriched_record(alert, _xmatches(), precision=precision),
                enriched_schema(alert.schema, precision),
            )
            assert encode_enriched_alert(alert, _xmatches(), precision=precision) == full


def test_output_schema_is_derived_once_per_writer_schema(ztf_alert_files: list[Path]) -> None:
    first = decode_alert(ztf_alert_files[0].read_bytes())
    second = decode_alert(ztf_alert_files[1].read_bytes())
    assert enriched_schema(first.schema) is enriched_schema(second.schema)
    assert enriched_schema(first.schema) is not enriched_schema(first.schema, "float32")


def test_seed_compatible_float32_mode(ztf_alert_files: list[Path]) -> None:
    alert = decode_alert(ztf_alert_files[0].read_bytes())
    record, schema = _read(encode_enriched_alert(alert, _xmatches(), precision="float32"))
    field = schema["fields"][-1]
    assert field["type"][1] == "null"
    assert field["type"][0]["values"]["values"] == ["string", "float", "null"]
    allwise = record["xmatches"]["allwise"]
    # The seed's 32-bit float loses the RA, exactly as the brief reports ...
    assert f"{allwise['RAJ2000']:.8f}" == "342.16949463"
    # ... but ids never go through a float: they travel as strings.
    assert allwise["source_id"] == str(ALLWISE_ID_AS_INT)
    assert allwise["W1mag"] is None


def test_unsupported_values_are_refused(ztf_alert_files: list[Path]) -> None:
    alert = decode_alert(ztf_alert_files[0].read_bytes())
    with pytest.raises(TypeError, match=r"allwise\.blob"):
        encode_enriched_alert(alert, {"allwise": {"blob": object()}})
