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
from xmatch_pipeline.match.alert_matching import CatalogProvenance
from xmatch_pipeline.match.provenance import EngineIdentity, MatchProvenance
from xmatch_pipeline.publish.enriched_alert import (
    encode_enriched_alert,
    enriched_record,
    enriched_schema,
    xmatches_field,
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
        assert (record.pop("xmatch_provenance"), record.pop("xmatch_matches")) == (None, None)
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


GAIA_SOURCE_ID = 3_890_123_456_789_012_345  # 19 digits


def test_provenance_and_nearest_matches_are_added_fields_the_old_schema_ignores(
    ztf_alert_files: list[Path],
) -> None:
    alert = decode_alert(ztf_alert_files[0].read_bytes())
    release = "Gaia DR3 (2022-06-13)"
    provenance = {
        "allwise": CatalogProvenance(
            MatchProvenance.of("AllWISE (2013)", EngineIdentity("cds"), 1.0), from_cache=True
        ),
        "gaia_dr3": CatalogProvenance(
            MatchProvenance.of(release, EngineIdentity("local", "0123abcd"), 2.0)
        ),
    }
    nearest = {"Source": np.int64(GAIA_SOURCE_ID), "angDist": 0.1}
    second = {"Source": np.int64(GAIA_SOURCE_ID + 1), "angDist": 0.7}
    xmatches = _xmatches() | {"gaia_dr3": nearest}
    value = encode_enriched_alert(
        alert, xmatches, provenance=provenance, all_matches={"gaia_dr3": [nearest, second]}
    )
    record, schema = _read(value)
    names = [entry["name"] for entry in schema["fields"]]
    assert names[-3:] == ["xmatch_provenance", "xmatch_matches", "xmatches"]
    assert all(entry["default"] is None for entry in schema["fields"][-3:])
    assert record["xmatch_provenance"] == {
        "allwise": {
            "release": "AllWISE (2013)",
            "engine": "cds",
            "index_build": None,
            "radius_arcsec": 1.0,
            "from_cache": True,
        },
        "gaia_dr3": {
            "release": release,
            "engine": "local",
            "index_build": "0123abcd",
            "radius_arcsec": 2.0,
            "from_cache": False,
        },
    }
    assert [m["Source"] for m in record["xmatch_matches"]["gaia_dr3"]] == [
        GAIA_SOURCE_ID,
        GAIA_SOURCE_ID + 1,
    ]
    assert record["xmatches"]["gaia_dr3"]["Source"] == GAIA_SOURCE_ID
    # A consumer holding the original's schema (input + xmatches) reads the new message.
    original = alert.schema.as_json()
    original["fields"] = [*original["fields"], xmatches_field()]
    (old_view,) = [
        cast(dict[str, Any], r) for r in fastavro.reader(io.BytesIO(value), reader_schema=original)
    ]
    assert "xmatch_provenance" not in old_view
    assert old_view["xmatches"]["gaia_dr3"]["Source"] == GAIA_SOURCE_ID
