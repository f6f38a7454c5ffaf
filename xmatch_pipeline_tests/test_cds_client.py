"""The CDS XMatch client against a real local ``cds-server`` and the real CDS exchange."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from xmatch_pipeline.devtools.cds_server import CdsXmatchServer, Fault
from xmatch_pipeline.devtools.cds_server.faults import NEVER_SENT_ID, SLOW_BODY_PIECE_BYTES
from xmatch_pipeline.match.catalog_aliases import cds_catalog_parameter, vizier_table
from xmatch_pipeline.match.catalog_spec import CatalogSpec
from xmatch_pipeline.match.catalogs.allwise import ALLWISE_SPEC, CDS_COLUMNS
from xmatch_pipeline.match.cds.answer import DISTANCE_TOLERANCE_ARCSEC, checked_source_rows
from xmatch_pipeline.match.cds.client import CdsClientSettings, CdsXmatchClient
from xmatch_pipeline.match.cds.errors import (
    CdsBannedError,
    CdsRejectedError,
    CdsResponseError,
    CdsUnavailableError,
    RetryableResponseError,
)
from xmatch_pipeline.match.cds.response import (
    is_html_page,
    parse_xmatch_csv,
    query_status_message,
    read_raw_table,
)
from xmatch_pipeline.match.cds.upload import UploadChunk, healpix_indices
from xmatch_pipeline.match.crossmatch_engine import CrossmatchError
from xmatch_pipeline.match.unmatched import unmatched_ids
from xmatch_pipeline_tests.pipeline_fixtures import (
    REQUEST_FILE,
    RESPONSE_FILE,
    allwise_data,
)

RETRIED_KINDS = [
    "500",
    "503",
    "504",
    "html200",
    "too_many_jobs",
    "truncated",
    "cut_connection",
    "drop",
]


@pytest.fixture(scope="module")
def positions(shared_data_dir: Path) -> pd.DataFrame:
    return pd.read_csv(allwise_data(shared_data_dir) / REQUEST_FILE, dtype={"id": "int64"})


@pytest.fixture(scope="module")
def response_body(shared_data_dir: Path) -> bytes:
    return (allwise_data(shared_data_dir) / RESPONSE_FILE).read_bytes()


def quick_client(url: str, **overrides: Any) -> CdsXmatchClient:
    """Sub-second timeouts and backoffs, so fault tests stay fast."""
    settings = {
        "connect_timeout_seconds": 0.5,
        "read_timeout_seconds": 2.0,
        "deadline_seconds": 5.0,
        "backoff_initial_seconds": 0.01,
        "backoff_max_seconds": 0.05,
        **overrides,
    }
    return CdsXmatchClient(CdsClientSettings(url=url, **settings))


def uploaded_positions(upload: bytes) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(upload), dtype={"id_in": "string"})


# --- the real exchange, parsed ---------------------------------------------------------


def test_real_response_is_parsed_with_exact_types(response_body: bytes) -> None:
    table = parse_xmatch_csv(response_body)
    assert len(table) == 5440
    assert table["angDist"].dtype == np.float64
    assert table["col1"].dtype == np.int64
    assert table["AllWISE"].dtype == "string"
    for column in CDS_COLUMNS[1:]:
        assert table[column].dtype == "Float64", column
    assert int(table["e_W4mag"].isna().sum()) == 584
    assert not np.isnan(table["e_W4mag"].to_numpy(dtype=np.float64, na_value=0.0)).any()
    texts = [row["id_in"] for row in csv.DictReader(io.StringIO(response_body.decode()))]
    assert [str(value) for value in table["id_in"]] == texts
    assert table["RAJ2000"].iloc[1] == 214.49810609999997


def test_cut_short_or_foreign_bodies_are_retryable(response_body: bytes) -> None:
    with pytest.raises(RetryableResponseError, match="cut short"):
        read_raw_table(response_body[: len(response_body) // 2])
    cut_at_line_end = response_body[: response_body.index(b"\n", 5000) + 1]
    cut_mid_row = cut_at_line_end + response_body[len(cut_at_line_end) :][:40] + b"\n"
    with pytest.raises(RetryableResponseError, match="fields"):
        read_raw_table(cut_mid_row)
    with pytest.raises(RetryableResponseError, match="angDist"):
        read_raw_table(b"Too many jobs\n")
    assert is_html_page(b"<html><head><title>504 Gateway Time-out</title></head></html>")
    assert not is_html_page(response_body)


def test_query_status_message_is_read_from_a_votable() -> None:
    body = (
        b'<?xml version="1.0"?><VOTABLE xmlns="http://www.ivoa.net/xml/VOTable/v1.3">'
        b'<RESOURCE type="results"><INFO name="QUERY_STATUS" value="ERROR">'
        b"Unknown column foo</INFO></RESOURCE></VOTABLE>"
    )
    assert query_status_message(body) == "Unknown column foo"
    assert query_status_message(b"angDist,col1\n") is None


def test_catalog_aliases() -> None:
    assert cds_catalog_parameter("allwise") == "vizier:II/328/allwise"
    assert cds_catalog_parameter("ALLWISE") == "vizier:II/328/allwise"
    assert cds_catalog_parameter("vizier:I/355/gaiadr3") == "vizier:I/355/gaiadr3"
    assert vizier_table("II/246/out") == "II/246/out"


def test_radius_above_cds_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="180"):
        CatalogSpec("allwise", CDS_COLUMNS, radius_arcsec=181.0)


# --- the full run --------------------------------------------------------------------


def test_full_run_in_chunks_reproduces_the_real_cds_answer(
    cds_server: CdsXmatchServer, positions: pd.DataFrame, response_body: bytes
) -> None:
    client = quick_client(cds_server.url, chunk_rows=1000)
    matches = client.crossmatch(positions, ALLWISE_SPEC)

    assert len(cds_server.requests) == 6
    assert [len(uploaded_positions(r.upload or b"")) for r in cds_server.requests] == [1000] * 5 + [
        553
    ]
    assert list(matches.columns) == ["id", "angDist", *CDS_COLUMNS]
    assert matches["id"].dtype == np.int64
    assert matches["angDist"].dtype == np.float64

    expected = parse_xmatch_csv(response_body).set_index("id_in")
    got = matches.set_index("id")
    assert sorted(got.index) == sorted(expected.index)
    assert (got["AllWISE"].to_numpy() == expected.loc[got.index, "AllWISE"].to_numpy()).all()
    distance_error = np.abs(
        got["angDist"].to_numpy() - expected.loc[got.index, "angDist"].to_numpy()
    )
    assert distance_error.max() < 1e-3
    assert got["e_W4mag"].isna().sum() == 584

    unmatched = unmatched_ids(positions, matches)
    assert len(unmatched) == 113
    assert not set(unmatched) & set(expected.index)
    # Matches come back in input order.
    order = positions.reset_index().set_index("id").loc[matches["id"], "index"]
    assert order.is_monotonic_increasing


def test_uploads_are_in_healpix_order(cds_server: CdsXmatchServer, positions: pd.DataFrame) -> None:
    quick_client(cds_server.url, chunk_rows=2000).crossmatch(positions, ALLWISE_SPEC)
    uploads = pd.concat(
        [uploaded_positions(record.upload or b"") for record in cds_server.requests],
        ignore_index=True,
    )
    assert len(cds_server.requests) == 3
    assert len(uploads) == len(positions)
    cells = healpix_indices(uploads["ra_in"].to_numpy(), uploads["dec_in"].to_numpy())
    assert (np.diff(cells) >= 0).all()
    # Positions travel as exact doubles and ids as exact text.
    by_id = positions.set_index("id")
    assert (uploads["ra_in"].to_numpy() == by_id.loc[uploads["id_in"].astype("int64"), "ra"]).all()


def test_two_requests_in_flight_give_the_same_answer(
    cds_server: CdsXmatchServer, positions: pd.DataFrame
) -> None:
    sequential = quick_client(cds_server.url, chunk_rows=1500).crossmatch(positions, ALLWISE_SPEC)
    parallel = quick_client(cds_server.url, chunk_rows=1500, max_in_flight=2).crossmatch(
        positions, ALLWISE_SPEC
    )
    pd.testing.assert_frame_equal(sequential, parallel)
    assert len(cds_server.requests) == 8


def test_string_and_nineteen_digit_ids_come_back_exact(
    cds_server: CdsXmatchServer, positions: pd.DataFrame
) -> None:
    sample = positions.iloc[:50].reset_index(drop=True)
    big = sample.assign(id=np.arange(50, dtype=np.int64) + 9_123_456_789_012_345_000)
    matches = quick_client(cds_server.url).crossmatch(big, ALLWISE_SPEC)
    assert matches["id"].dtype == np.int64
    assert set(matches["id"]) <= set(big["id"])
    assert len(matches) == len(quick_client(cds_server.url).crossmatch(sample, ALLWISE_SPEC))

    texts = sample.assign(id=[f"00{number}" for number in range(50)]).astype({"id": object})
    string_matches = quick_client(cds_server.url).crossmatch(texts, ALLWISE_SPEC)
    assert set(string_matches["id"]) <= {f"00{number}" for number in range(50)}
    assert all(isinstance(value, str) for value in string_matches["id"])


def test_all_selection_and_wider_radius(
    cds_server: CdsXmatchServer, positions: pd.DataFrame
) -> None:
    spec = CatalogSpec("II/328/allwise", ("AllWISE", "W1mag"), radius_arcsec=30.0, selection="all")
    matches = quick_client(cds_server.url).crossmatch(positions.iloc[:500], spec)
    assert list(matches.columns) == ["id", "angDist", "AllWISE", "W1mag"]
    assert (matches["angDist"] <= 30.0).all()
    assert cds_server.requests[0].fields["cat2"] == "vizier:II/328/allwise"
    assert cds_server.requests[0].fields["selection"] == "all"
    assert cds_server.requests[0].fields["cols2"] == "AllWISE,W1mag"


# --- faults --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", RETRIED_KINDS)
def test_transient_faults_are_retried_with_the_same_upload(
    cds_server: CdsXmatchServer, positions: pd.DataFrame, kind: str
) -> None:
    sample = positions.iloc[:300]
    expected = quick_client(cds_server.url).crossmatch(sample, ALLWISE_SPEC)
    cds_server.clear_requests()
    cds_server.set_faults([Fault(kind, times=2)])

    matches = quick_client(cds_server.url).crossmatch(sample, ALLWISE_SPEC)

    pd.testing.assert_frame_equal(matches, expected)
    records = cds_server.requests
    assert [record.fault for record in records] == [kind, kind, None]
    assert len({record.upload for record in records}) == 1
    assert len({tuple(sorted(record.fields.items())) for record in records}) == 1


def test_a_slow_answer_times_out_and_is_retried(
    cds_server: CdsXmatchServer, positions: pd.DataFrame
) -> None:
    cds_server.set_faults([Fault("delay", times=1, seconds=1.0)])
    client = quick_client(cds_server.url, read_timeout_seconds=0.3)
    matches = client.crossmatch(positions.iloc[:100], ALLWISE_SPEC)
    assert len(matches) > 0
    assert [record.fault for record in cds_server.requests] == ["delay", None]


def test_the_deadline_bounds_the_attempts(
    cds_server: CdsXmatchServer, positions: pd.DataFrame
) -> None:
    cds_server.set_faults([Fault("delay", times=None, seconds=0.6)])
    client = quick_client(cds_server.url, read_timeout_seconds=0.2, deadline_seconds=1.0)
    with pytest.raises(CdsUnavailableError) as raised:
        client.crossmatch(positions.iloc[:100], ALLWISE_SPEC)
    message = str(raised.value)
    assert cds_server.url in message
    assert "chunk 1/1 (100 rows)" in message
    assert "deadline" in message
    assert "ReadTimeout" in message
    assert 2 <= len(cds_server.requests) <= 8
    assert f"after {len(cds_server.requests)} attempts" in message


def test_the_attempt_limit_bounds_the_retries(
    cds_server: CdsXmatchServer, positions: pd.DataFrame
) -> None:
    cds_server.set_faults([Fault("503", times=None)])
    client = quick_client(cds_server.url, max_attempts=3)
    with pytest.raises(CdsUnavailableError, match=r"failed 3 attempts.*HTTP 503") as raised:
        client.crossmatch(positions.iloc[:100], ALLWISE_SPEC)
    assert isinstance(raised.value, CrossmatchError)
    assert len(cds_server.requests) == 3


def test_a_400_is_not_retried_and_surfaces_the_service_message(
    cds_server: CdsXmatchServer, positions: pd.DataFrame
) -> None:
    cds_server.set_faults([Fault("400", times=None, message="Table II/328/allwise is busy")])
    with pytest.raises(CdsRejectedError) as raised:
        quick_client(cds_server.url).crossmatch(positions.iloc[:100], ALLWISE_SPEC)
    assert raised.value.service_message == "Table II/328/allwise is busy"
    assert "Not retried" in str(raised.value)
    assert len(cds_server.requests) == 1


def test_an_unknown_column_or_table_is_rejected_by_the_server(
    cds_server: CdsXmatchServer, positions: pd.DataFrame
) -> None:
    bad_column = CatalogSpec("allwise", ("AllWISE", "W9mag"))
    with pytest.raises(CdsRejectedError, match="W9mag"):
        quick_client(cds_server.url).crossmatch(positions.iloc[:10], bad_column)
    with pytest.raises(CdsRejectedError, match="Unknown table 'I/355/gaiadr3'"):
        quick_client(cds_server.url).crossmatch(
            positions.iloc[:10], CatalogSpec("I/355/gaiadr3", ())
        )
    assert len(cds_server.requests) == 2


def test_a_403_is_raised_at_once(cds_server: CdsXmatchServer, positions: pd.DataFrame) -> None:
    cds_server.set_faults([Fault("403", times=None)])
    with pytest.raises(CdsBannedError, match=r"banned.*wait.*contact CDS") as raised:
        quick_client(cds_server.url, chunk_rows=1000).crossmatch(positions, ALLWISE_SPEC)
    assert isinstance(raised.value, CrossmatchError)
    assert len(cds_server.requests) == 1


def test_an_unreachable_service_gives_a_clear_error(positions: pd.DataFrame) -> None:
    client = quick_client("http://127.0.0.1:9/xmatch/api/v1/sync", deadline_seconds=0.5)
    with pytest.raises(CdsUnavailableError, match=r"127\.0\.0\.1:9.*ConnectionError"):
        client.crossmatch(positions.iloc[:10], ALLWISE_SPEC)


def test_settings_refuse_what_would_get_the_address_banned() -> None:
    with pytest.raises(ValueError, match="banned"):
        CdsClientSettings(max_in_flight=8)
    with pytest.raises(ValueError, match="chunk_rows"):
        CdsClientSettings(chunk_rows=60_000)
    with pytest.raises(ValueError, match="dec values outside"):
        CdsXmatchClient().crossmatch(
            pd.DataFrame({"id": [1], "ra": [1.0], "dec": [91.0]}), ALLWISE_SPEC
        )


# --- slow answers: the deadline bounds the whole exchange --------------------------------


def test_an_answer_sent_in_small_pieces_is_read_whole(
    cds_server: CdsXmatchServer, positions: pd.DataFrame
) -> None:
    sample = positions.iloc[:20]
    expected = quick_client(cds_server.url).crossmatch(sample, ALLWISE_SPEC)
    cds_server.set_faults([Fault("slow_body", times=1, seconds=0.001)])
    matches = quick_client(cds_server.url).crossmatch(sample, ALLWISE_SPEC)
    pd.testing.assert_frame_equal(matches, expected)
    assert cds_server.requests[-1].fault == "slow_body"


def test_an_answer_trickling_in_is_cut_at_the_deadline(
    cds_server: CdsXmatchServer, positions: pd.DataFrame
) -> None:
    """Every read is quick (64 bytes each 50 ms), so only the deadline can stop it."""
    sample = positions.iloc[:100]
    quick_client(cds_server.url).crossmatch(sample, ALLWISE_SPEC)
    (normal,) = cds_server.requests
    _, answer, _ = cds_server.answer(normal.fields, {"cat1": normal.upload or b""})
    pause = 0.05
    seconds_to_send_it_all = len(answer) / SLOW_BODY_PIECE_BYTES * pause
    deadline, read_timeout = 1.5, 0.5
    assert seconds_to_send_it_all > 10 * deadline
    cds_server.set_faults([Fault("slow_body", times=None, seconds=pause)])
    client = quick_client(
        cds_server.url, deadline_seconds=deadline, read_timeout_seconds=read_timeout
    )

    started = time.monotonic()
    with pytest.raises(CdsUnavailableError) as raised:
        client.crossmatch(sample, ALLWISE_SPEC)
    elapsed = time.monotonic() - started

    message = str(raised.value)
    assert cds_server.url in message
    assert "chunk 1/1 (100 rows)" in message
    assert "still arriving when the chunk's deadline passed" in message
    assert "XMATCH_CDS_DEADLINE" in message
    # Bounded by the deadline plus at most one read slice, far from the body's own pace.
    assert elapsed < deadline + read_timeout + 1.0
    assert elapsed < seconds_to_send_it_all / 5


# --- answers checked before use --------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "complaint"),
    [
        ("far_row", "outside the requested radius [0, 1]"),
        ("unknown_id", f"is for id '{NEVER_SENT_ID}', which was never sent"),
        ("duplicate_row", "under selection=best, which allows one row per id"),
    ],
)
def test_a_wrong_answer_is_refused_once_with_a_clear_error(
    cds_server: CdsXmatchServer, positions: pd.DataFrame, kind: str, complaint: str
) -> None:
    cds_server.set_faults([Fault(kind, times=None)])
    with pytest.raises(CdsResponseError) as raised:
        quick_client(cds_server.url, chunk_rows=60).crossmatch(positions.iloc[:100], ALLWISE_SPEC)
    message = str(raised.value)
    assert complaint in message
    assert f"{cds_server.url}, chunk 1/2" in message
    assert "report it to CDS" in message
    assert isinstance(raised.value, CrossmatchError)
    # A deterministic fault: not retried, and the next chunk is never asked for.
    assert [record.fault for record in cds_server.requests] == [kind]


def _chunk(id_texts: tuple[str, ...]) -> UploadChunk:
    rows = np.arange(len(id_texts), dtype=np.int64)[::-1].copy()
    return UploadChunk(number=0, source_rows=rows, id_texts=id_texts, body=b"")


def _answer(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    """A raw answer of (angDist, col1, id_in) rows, as ``read_raw_table`` gives it."""
    names = ("angDist", "col1", "id_in")
    return pd.DataFrame({
        name: pd.array([row[position] for row in rows], dtype="string")
        for position, name in enumerate(names)
    })  # fmt: skip


def test_answer_checks_on_plain_tables() -> None:
    chunk = _chunk(("10", "11", "12"))
    spec = CatalogSpec("allwise", (), radius_arcsec=1.0, selection="best")
    inside = repr(1.0 + DISTANCE_TOLERANCE_ARCSEC / 2)
    good = _answer([("0.5", "0", "10"), (inside, "2", "12")])
    assert checked_source_rows(good, chunk, spec, "here").tolist() == [2, 0]

    beyond = repr(1.0 + 2 * DISTANCE_TOLERANCE_ARCSEC)
    refusals = {
        "outside the requested radius": _answer([("0.5", "0", "10"), (beyond, "1", "11")]),
        "not a number": _answer([("near", "0", "10")]),
        "col1=3, but only col1 0..2 were uploaded": _answer([("0.5", "3", "10")]),
        "uploaded as '10': the answer does not match": _answer([("0.5", "0", "11")]),
        "2 rows for 1 ids under selection=best": _answer([("0.5", "1", "11"), ("0.7", "1", "11")]),
    }
    for complaint, table in refusals.items():
        with pytest.raises(CdsResponseError, match=complaint):
            checked_source_rows(table, chunk, spec, "here")
    with pytest.raises(CdsResponseError, match="no col1 column"):
        checked_source_rows(good.drop(columns="col1"), chunk, spec, "here")
    # Several rows per id are the point of selection=all.
    every = CatalogSpec("allwise", (), radius_arcsec=1.0, selection="all")
    several = _answer([("0.5", "1", "11"), ("0.7", "1", "11")])
    assert checked_source_rows(several, chunk, every, "here").tolist() == [1, 1]
