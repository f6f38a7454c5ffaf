"""astroquery's own ``XMatch`` client against the local ``cds-server``: offline crossmatches.

astroquery lists the tables first (``…/sync/tables?action=getVizieRTableNames``), then asks
for ``RESPONSEFORMAT=votable``; its answer must hold what the CSV answer holds, value for
value: ids exact, doubles exact, nulls masked, never NaN.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
import requests
from astropy.io import votable
from astropy.table import Table

from xmatch_pipeline.devtools.cds_server import CdsXmatchServer
from xmatch_pipeline.match.catalogs.allwise import CDS_COLUMNS
from xmatch_pipeline_tests.pipeline_fixtures import REQUEST_FILE, allwise_data

TIMEOUT = (1.0, 30.0)


@pytest.fixture
def xmatch_client(cds_server: CdsXmatchServer):
    from astroquery.xmatch import XMatchClass

    client = XMatchClass()
    client.URL = cds_server.url
    client.TIMEOUT = 60
    return client


@pytest.fixture(scope="module")
def request_positions(shared_data_dir: Path) -> Table:
    """The 5,553 real request positions, as an astropy table (``id`` 64-bit)."""
    with (allwise_data(shared_data_dir) / REQUEST_FILE).open(newline="") as source:
        rows = list(csv.DictReader(source))
    return Table(
        {
            "id": np.array([int(row["id"]) for row in rows], np.int64),
            "ra": np.array([float(row["ra"]) for row in rows]),
            "dec": np.array([float(row["dec"]) for row in rows]),
        }
    )


def test_astroquery_lists_the_served_tables(xmatch_client) -> None:
    assert xmatch_client.get_available_tables(cache=False) == ["II/328/allwise"]
    assert xmatch_client.is_table_available("vizier:II/328/allwise")
    assert not xmatch_client.is_table_available("II/246/out")


def test_astroquery_query_equals_the_csv_answer(
    xmatch_client, cds_server: CdsXmatchServer, request_positions: Table
) -> None:
    found = xmatch_client.query(
        cat1=request_positions,
        cat2="vizier:II/328/allwise",
        max_distance=1 * u.arcsec,
        colRA1="ra",
        colDec1="dec",
        cache=False,
    )
    sent = cds_server.requests[-1]
    assert sent.fields["RESPONSEFORMAT"] == "votable"
    assert sent.upload is not None
    csv_answer = requests.post(
        cds_server.url,
        data={key: value for key, value in sent.fields.items() if key != "RESPONSEFORMAT"}
        | {"RESPONSEFORMAT": "csv"},
        files={"cat1": ("cat1.csv", sent.upload, "text/csv")},
        timeout=TIMEOUT,
    )
    assert csv_answer.status_code == 200
    rows = list(csv.reader(io.StringIO(csv_answer.text)))
    header, body = rows[0], rows[1:]
    assert found.colnames == header
    assert header[:5] == ["angDist", "col1", "id", "ra", "dec"]
    assert sorted(header[5:]) == sorted(CDS_COLUMNS)
    # No selection sent: CDS's default, every match within the radius.
    assert len(found) == len(body) >= 5440
    assert found["id"].dtype == np.int64
    assert found["id"].tolist() == [int(row[2]) for row in body]  # 19-digit ids exact
    for position, name in enumerate(header):
        column = found[name]
        texts = [row[position] for row in body]
        mask = np.ma.getmaskarray(column)
        assert mask.tolist() == [text == "" for text in texts], name
        if column.dtype.kind == "f":
            assert not np.isnan(np.ma.getdata(column)[~mask]).any(), name
            assert np.ma.getdata(column)[~mask].tolist() == [float(t) for t in texts if t], name
        elif column.dtype.kind == "i":
            assert np.ma.getdata(column)[~mask].tolist() == [int(t) for t in texts if t], name
        else:
            assert [str(v) for v in np.ma.getdata(column)[~mask]] == [t for t in texts if t], name
    assert np.ma.getmaskarray(found["e_W4mag"]).any()  # real nulls come back masked


def test_astroquery_sees_a_refused_query_as_invalid(
    xmatch_client, request_positions: Table
) -> None:
    from astroquery.exceptions import InvalidQueryError

    with pytest.raises(InvalidQueryError, match="Column 'nope' not found"):
        xmatch_client.query(
            cat1=request_positions[:3],
            cat2="vizier:II/328/allwise",
            max_distance=1 * u.arcsec,
            colRA1="nope",
            colDec1="dec",
            cache=False,
        )


def test_a_cone_area_keeps_the_uploaded_rows_inside_it(
    cds_server: CdsXmatchServer, request_positions: Table
) -> None:
    """astroquery sends ``area=cone`` for a ``regions.CircleSkyRegion``; the fields as it
    sends them (``regions`` itself is not installed here)."""
    from astropy.coordinates import SkyCoord

    upload = io.StringIO()
    request_positions.write(upload, format="ascii.csv")
    centre = SkyCoord(request_positions["ra"][0] * u.deg, request_positions["dec"][0] * u.deg)
    answer = requests.post(
        cds_server.url,
        data={"request": "xmatch", "distMaxArcsec": 1.0, "RESPONSEFORMAT": "votable",
              "cat2": "vizier:II/328/allwise", "colRA1": "ra", "colDec1": "dec",
              "area": "cone", "coneRA": centre.ra.deg, "coneDec": centre.dec.deg,
              "coneRadiusDeg": 5.0},
        files={"cat1": ("cat1.csv", upload.getvalue())},
        timeout=TIMEOUT,
    )  # fmt: skip
    assert answer.status_code == 200
    found = Table.read(io.BytesIO(answer.content), format="votable")
    inside = SkyCoord(found["ra"] * u.deg, found["dec"] * u.deg).separation(centre) <= 5 * u.deg
    assert 0 < len(found) < len(request_positions)
    assert inside.all()


@pytest.mark.parametrize("response_format", ["votable", "json", "csv", "tsv", "txt"])
def test_column_list_action(cds_server: CdsXmatchServer, response_format: str) -> None:
    answer = requests.get(
        cds_server.url + "/tables",
        params={"action": "getColList", "tabName": "II/328/allwise",
                "RESPONSEFORMAT": response_format},
        timeout=TIMEOUT,
    )  # fmt: skip
    assert answer.status_code == 200
    if response_format == "votable":
        table = votable.parse_single_table(io.BytesIO(answer.content)).to_table()
        names = [str(name) for name in table["name"]]
        assert dict(zip(names, table["datatype"], strict=True))["W1mag"] == "double"
    elif response_format == "json":
        names = [column["name"] for column in json.loads(answer.text)]
    elif response_format == "txt":
        names = answer.text.split()
    else:
        names = [line.split("," if response_format == "csv" else "\t")[0]
                 for line in answer.text.splitlines()[1:]]  # fmt: skip
    assert sorted(names) == sorted(CDS_COLUMNS)


def test_unknown_tables_action_and_table_are_refused(cds_server: CdsXmatchServer) -> None:
    for params, message in (
        ({"action": "dropTables"}, "Unknown action 'dropTables'"),
        ({"action": "getColList", "tabName": "II/999/none"}, "Unknown table 'II/999/none'"),
    ):
        answer = requests.get(cds_server.url + "/tables", params=params, timeout=TIMEOUT)
        assert answer.status_code == 400
        status = votable.parse(io.BytesIO(answer.content)).get_info_by_id("QUERY_STATUS")
        assert message in status.content
