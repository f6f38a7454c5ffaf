"""``xmatch-pipeline crossmatch``: CDS-shaped CSV output, the same from both engines."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from typer.testing import CliRunner

from xmatch_pipeline.cli.main import app
from xmatch_pipeline.devtools.cds_server import CdsXmatchServer
from xmatch_pipeline.match.catalogs.allwise import CDS_COLUMNS
from xmatch_pipeline_tests.pipeline_fixtures import (
    REQUEST_FILE,
    RESPONSE_FILE,
    allwise_data,
)

runner = CliRunner()


def run(*arguments: str) -> str:
    result = runner.invoke(app, list(arguments))
    assert result.exit_code == 0, result.output
    return result.output


def test_both_engines_write_the_same_cds_shaped_file(
    cds_server: CdsXmatchServer, allwise_index: Path, shared_data_dir: Path, tmp_path: Path
) -> None:
    positions = allwise_data(shared_data_dir) / REQUEST_FILE
    columns = ",".join(CDS_COLUMNS)
    common = ["--radius-arcsec", "1", "--selection", "best", "--id-col", "id"]
    common += ["--ra-col", "ra", "--dec-col", "dec", "--columns", columns]
    local_output, cds_output = tmp_path / "local.csv", tmp_path / "cds.csv"
    message = run(
        "crossmatch", str(positions), "-o", str(local_output), "--engine", "local",
        "--catalog", str(allwise_index), *common,
    )  # fmt: skip
    assert "5440 match(es) for 5553 input row(s)" in message
    assert "(113 without a match)" in message
    run(
        "crossmatch", str(positions), "-o", str(cds_output), "--engine", "cds",
        "--catalog", "allwise", "--cds-url", cds_server.url, "--chunk-rows", "2000", *common,
    )  # fmt: skip
    assert local_output.read_bytes() == cds_output.read_bytes()

    rows = list(csv.reader(io.StringIO(local_output.read_text())))
    assert rows[0] == ["angDist", "id", "ra", "dec", *CDS_COLUMNS]
    real = {
        row["id_in"]: row
        for row in csv.DictReader(
            io.StringIO((allwise_data(shared_data_dir) / RESPONSE_FILE).read_text())
        )
    }
    inputs = {row["id"]: row for row in csv.DictReader(io.StringIO(positions.read_text()))}
    assert {row[1] for row in rows[1:]} == set(real)
    for row in rows[1:]:
        assert row[2:4] == [inputs[row[1]]["ra"], inputs[row[1]]["dec"]]  # input text kept
        assert row[4] == real[row[1]]["AllWISE"]
        assert abs(float(row[0]) - float(real[row[1]]["angDist"])) < 1e-3


def test_default_columns_and_all_selection(
    cds_server: CdsXmatchServer, allwise_index: Path, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    source.write_text("name,RA,DE,note\nx1,190.38112,26.04266,first\nx2,10.0,-10.0,none\n")
    output = tmp_path / "out.csv"
    run(
        "crossmatch", str(source), "-o", str(output), "--engine", "cds", "--cds-url",
        cds_server.url, "--id-col", "name", "--ra-col", "RA", "--dec-col", "DE",
        "--radius-arcsec", "5", "--selection", "all",
    )  # fmt: skip
    rows = list(csv.reader(io.StringIO(output.read_text())))
    assert rows[0] == ["angDist", "name", "RA", "DE", "note", *CDS_COLUMNS]
    assert [row[1] for row in rows[1:]] == ["x1"]
    assert rows[1][5] == "J124131.46+260233.6"


def test_bad_input_gets_one_clear_error(allwise_index: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("id,ra,dec\n1,10.0,95.0\n")
    arguments = ["crossmatch", str(source), "-o", str(tmp_path / "o.csv"), "--engine", "local"]
    result = runner.invoke(app, [*arguments, "--catalog", str(allwise_index)])
    assert result.exit_code == 1
    assert "dec" in result.output
    result = runner.invoke(app, [*arguments, "--catalog", str(allwise_index), "--id-col", "oid"])
    assert result.exit_code == 1
    assert "no column(s) ['oid']" in result.output
    result = runner.invoke(app, ["crossmatch", str(tmp_path / "missing.csv"), "-o", "x.csv"])
    assert result.exit_code == 2
    assert "not found" in result.output
    result = runner.invoke(
        app, [*arguments, "--catalog", str(allwise_index), "--radius-arcsec", "200"]
    )
    assert result.exit_code == 1
    assert "180" in result.output
