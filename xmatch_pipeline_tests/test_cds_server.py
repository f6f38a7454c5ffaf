"""The local ``cds-server``: CDS's request fields, response shape, errors and faults, over HTTP."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from xmatch_pipeline.devtools.cds_server import FAULT_KINDS, CdsXmatchServer, Fault
from xmatch_pipeline.devtools.cds_server.catalogs import parse_catalog_argument
from xmatch_pipeline.match.catalogs.allwise import CDS_COLUMNS
from xmatch_pipeline.match.cds.response import parse_xmatch_csv, query_status_message
from xmatch_pipeline.match.cds.upload import upload_body
from xmatch_pipeline_tests.pipeline_fixtures import (
    REQUEST_FILE,
    RESPONSE_FILE,
    allwise_data,
)

TIMEOUT = (1.0, 5.0)


@pytest.fixture(scope="module")
def request_upload(shared_data_dir: Path) -> bytes:
    """The 5,553 real request positions, uploaded as the original client did."""
    with (allwise_data(shared_data_dir) / REQUEST_FILE).open(newline="") as source:
        rows = list(csv.DictReader(source))
    lines = ["id_in,ra_in,dec_in", *(f"{r['id']},{r['ra']},{r['dec']}" for r in rows)]
    return ("\n".join(lines) + "\n").encode()


def xmatch(url: str, upload: bytes, **fields: str) -> requests.Response:
    form = {
        "request": "xmatch",
        "cat2": "vizier:II/328/allwise",
        "colRA1": "ra_in",
        "colDec1": "dec_in",
        "distMaxArcsec": "1",
        "selection": "best",
        "RESPONSEFORMAT": "csv",
        "cols2": ",".join(CDS_COLUMNS),
        **fields,
    }
    return requests.post(
        url, data=form, files={"cat1": ("upload.csv", upload, "text/csv")}, timeout=TIMEOUT
    )


def small_upload() -> bytes:
    import numpy as np

    return upload_body(
        ["a", "b"], np.array([190.38112, 10.0]), np.array([26.04266, -10.0])
    )  # the first matches J124131.46+260233.6, the second nothing


def test_answer_has_the_shape_of_the_real_exchange(
    cds_server: CdsXmatchServer, request_upload: bytes, shared_data_dir: Path
) -> None:
    real = (allwise_data(shared_data_dir) / RESPONSE_FILE).read_bytes()
    response = xmatch(cds_server.url, request_upload)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/csv")
    assert response.content.split(b"\n", 1)[0] == real.split(b"\n", 1)[0]

    ours = parse_xmatch_csv(response.content)
    theirs = parse_xmatch_csv(real).sort_values("col1", ignore_index=True)
    assert len(ours) == len(theirs) == 5440
    assert ours["col1"].tolist() == theirs["col1"].tolist()
    assert ours["AllWISE"].tolist() == theirs["AllWISE"].tolist()
    assert (ours["angDist"] - theirs["angDist"]).abs().max() < 1e-3
    for column in CDS_COLUMNS[1:]:  # catalog values round-trip exactly, nulls stay empty
        assert ours[column].isna().tolist() == theirs[column].isna().tolist(), column
        assert (ours[column].dropna() == theirs[column].dropna()).all(), column
    # Uploaded fields are echoed as sent.
    first = response.content.split(b"\n")[1].split(b",")
    assert first[1:5] == [b"0", b"587741727654543452", b"190.38112", b"26.04266"]


def test_unmatched_rows_are_absent_and_all_columns_without_cols2(
    cds_server: CdsXmatchServer, shared_data_dir: Path
) -> None:
    real = (allwise_data(shared_data_dir) / RESPONSE_FILE).read_text()
    response = xmatch(cds_server.url, small_upload(), cols2="")
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == real.split("\n", 1)[0].split(",")
    assert [row[1:3] for row in rows[1:]] == [["0", "a"]]
    assert rows[1][5] == "J124131.46+260233.6"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"distMaxArcsec": "181"}, "distMaxArcsec"),
        ({"distMaxArcsec": "abc"}, "distMaxArcsec"),
        ({"cat2": "vizier:II/999/none"}, "Unknown table 'II/999/none'"),
        ({"cat2": "simbad"}, "vizier"),
        ({"cols2": "AllWISE,W9mag"}, "W9mag"),
        ({"colRA1": "ra"}, "Column 'ra' not found"),
        ({"selection": "first"}, "selection"),
        ({"RESPONSEFORMAT": "tsv"}, "RESPONSEFORMAT"),
        ({"area": "zone"}, "Invalid area 'zone'"),
    ],
)
def test_bad_requests_get_a_votable_query_status(
    cds_server: CdsXmatchServer, fields: dict[str, str], message: str
) -> None:
    response = xmatch(cds_server.url, small_upload(), **fields)
    assert response.status_code == 400
    status = query_status_message(response.content)
    assert status is not None
    assert message in status


def test_aliases_and_short_names_reach_the_same_catalog(cds_server: CdsXmatchServer) -> None:
    answers = {
        cat2: xmatch(cds_server.url, small_upload(), cat2=cat2).content
        for cat2 in ("vizier:II/328/allwise", "vizier:allwise", "vizier:ALLWISE")
    }
    assert len(set(answers.values())) == 1


@pytest.mark.parametrize(
    ("kind", "status", "marker"),
    [
        ("500", 500, b"Internal Server Error"),
        ("503", 503, b"Service Unavailable"),
        ("504", 504, b"Gateway"),
        ("403", 403, b"Forbidden"),
        ("html200", 200, b"<title>504 Gateway Time-out</title>"),
        ("too_many_jobs", 200, b"Too many jobs are being processed, try later!"),
        ("400", 400, b'name="QUERY_STATUS" value="ERROR">'),
    ],
)
def test_each_fault_answers_as_configured_then_clears(
    cds_server: CdsXmatchServer, kind: str, status: int, marker: bytes
) -> None:
    admin = requests.post(
        f"{cds_server.base_url}/_faults", json=[{"kind": kind, "times": 2}], timeout=TIMEOUT
    )
    assert admin.json() == [
        {"kind": kind, "times": 2, "seconds": 0.0, "message": Fault(kind).message}
    ]
    for _ in range(2):
        faulty = xmatch(cds_server.url, small_upload())
        assert faulty.status_code == status
        assert marker in faulty.content
    assert xmatch(cds_server.url, small_upload()).status_code == 200
    log = requests.get(f"{cds_server.base_url}/_requests", timeout=TIMEOUT).json()
    assert [entry["fault"] for entry in log] == [kind, kind, None]
    assert [entry["status"] for entry in log] == [status, status, 200]
    assert len({entry["upload_sha256"] for entry in log}) == 1


def test_truncated_answers(cds_server: CdsXmatchServer, request_upload: bytes) -> None:
    cds_server.set_faults([Fault("truncated"), Fault("cut_connection"), Fault("drop")])
    cut = xmatch(cds_server.url, request_upload)
    assert cut.status_code == 200
    assert not cut.content.endswith(b"\n")
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        xmatch(cds_server.url, request_upload)
    with pytest.raises(requests.ConnectionError):
        xmatch(cds_server.url, request_upload)
    assert xmatch(cds_server.url, request_upload).content.endswith(b"\n")


def test_delay_and_fault_admin(cds_server: CdsXmatchServer) -> None:
    cds_server.set_faults([Fault("delay", seconds=0.5)])
    with pytest.raises(requests.Timeout):
        requests.post(
            cds_server.url,
            data={
                "request": "xmatch",
                "cat2": "vizier:allwise",
                "RESPONSEFORMAT": "csv",
                "distMaxArcsec": "1",
                "colRA1": "ra_in",
                "colDec1": "dec_in",
            },
            files={"cat1": ("upload.csv", small_upload())},
            timeout=(1.0, 0.1),
        )
    bad = requests.post(f"{cds_server.base_url}/_faults", json=[{"kind": "418"}], timeout=TIMEOUT)
    assert bad.status_code == 400
    assert "unknown fault kind" in bad.json()["error"]
    requests.post(
        f"{cds_server.base_url}/_faults", json=[{"kind": "503", "times": None}], timeout=TIMEOUT
    )
    assert (
        requests.get(f"{cds_server.base_url}/_faults", timeout=TIMEOUT).json()[0]["times"] is None
    )
    requests.delete(f"{cds_server.base_url}/_faults", timeout=TIMEOUT)
    assert xmatch(cds_server.url, small_upload()).status_code == 200


def test_fault_text_from_the_command_line() -> None:
    assert Fault.from_text("500:2") == Fault("500", times=2)
    assert Fault.from_text("delay:1:2.5") == Fault("delay", times=1, seconds=2.5)
    assert Fault.from_text("403:*") == Fault("403", times=None)
    assert Fault.from_text("html200") == Fault("html200", times=1)
    with pytest.raises(ValueError, match="unknown fault kind"):
        Fault.from_text("502")
    assert {"delay", "500", "503", "504", "html200", "403", "400", "truncated"} <= set(FAULT_KINDS)


def test_catalog_arguments(allwise_index: Path) -> None:
    assert parse_catalog_argument(f"wise={allwise_index}") == ("wise", allwise_index)
    assert parse_catalog_argument(str(allwise_index)) == ("allwise", allwise_index)


def test_cds_server_command_serves_until_interrupted(allwise_index: Path) -> None:
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "xmatch-pipeline"),
            "cds-server",
            "--catalog",
            f"allwise={allwise_index}",
            "--port",
            "0",
            "--fault",
            "503:1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert banner.startswith("serving allwise at http://127.0.0.1:"), banner
        url = banner.split()[3]
        assert xmatch(url, small_upload()).status_code == 503
        assert xmatch(url, small_upload()).status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        # Generous: on a loaded machine the interpreter's exit (its imported libraries'
        # clean-up) took over 10 s once; the exit itself is what is checked. The pipes are
        # drained meanwhile (a full stderr pipe would block the exit it waits for).
        try:
            _, errors = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            _, errors = process.communicate()
            pytest.fail(f"cds-server still running 60 s after SIGINT; stderr:\n{errors[-3000:]}")
