"""alerts inspect / replay / generate: real files, the real broker, schema 3.3."""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import fastavro
import pytest
from fastavro.validation import validate
from typer.testing import CliRunner

from xmatch_pipeline.cli.alerts import app
from xmatch_pipeline.decode import decode_alert, ztf_alert_schema
from xmatch_pipeline.devtools.alert_tools.replay import BrokerUnreachableError, replay_alerts
from xmatch_pipeline.devtools.alert_tools.synthetic import (
    PositionsFileError,
    SyntheticAlertFactory,
    generate_alert_bytes,
    read_positions_csv,
)
from xmatch_pipeline_tests.pipeline_fixtures import read_committed

runner = CliRunner()


def test_inspect_gives_exact_ids_and_positions(
    shared_data_dir: Path, ztf_alert_files: list[Path]
) -> None:
    result = runner.invoke(app, ["inspect", str(shared_data_dir / "ztf-alerts")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 86
    for line, path in zip(lines, ztf_alert_files, strict=True):
        summary = json.loads(line)
        with path.open("rb") as handle:
            reference = cast("dict[str, Any]", next(iter(fastavro.reader(handle))))
        assert list(summary) == ["objectId", "candid", "ra", "dec", "schemavsn"]
        assert summary["objectId"] == reference["objectId"]
        assert summary["candid"] == reference["candid"]
        assert f'"candid": {reference["candid"]},' in line  # an integer, never 1.09e18
        assert summary["ra"] == reference["candidate"]["ra"]
        assert summary["dec"] == reference["candidate"]["dec"]
        assert summary["schemavsn"] == reference["schemavsn"]


def test_inspect_reports_a_corrupt_file_and_goes_on(
    tmp_path: Path, ztf_alert_files: list[Path]
) -> None:
    shutil.copy(ztf_alert_files[0], tmp_path / "a_good.avro")
    (tmp_path / "b_corrupt.avro").write_bytes(ztf_alert_files[1].read_bytes()[:5000])
    result = runner.invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code == 1
    assert len(result.stdout.splitlines()) == 1
    assert "b_corrupt.avro" in result.stderr
    assert "truncated" in result.stderr


def test_replay_produces_the_files_bytes_unchanged(
    shared_data_dir: Path,
    kafka_bootstrap: str,
    new_topic: Callable[..., str],
) -> None:
    topic = new_topic("replay")
    folder = shared_data_dir / "ztf-alerts" / "v3.3"
    report = replay_alerts([folder], topic, kafka_bootstrap)
    assert (report.delivered, report.skipped, report.failed) == (62, [], [])
    messages = [
        (m.key or b"", m.value) for m in read_committed(kafka_bootstrap, topic, expected_end=62)
    ]
    files = sorted(folder.rglob("*.avro"))
    assert [value for _, value in messages] == [path.read_bytes() for path in files]
    for key, value in messages:
        assert key == decode_alert(value).object_id.encode()


def test_replay_cli_skips_bad_input_and_never_sends_twice(
    tmp_path: Path,
    ztf_alert_files: list[Path],
    kafka_bootstrap: str,
    new_topic: Callable[..., str],
) -> None:
    topic = new_topic("replay-bad")
    good = [shutil.copy(path, tmp_path / path.name) for path in ztf_alert_files[:3]]
    (tmp_path / "corrupt.avro").write_bytes(b"Obj\x01 not really")
    shutil.copy(ztf_alert_files[0], tmp_path / "copy_of_first.avro")  # same candid again
    arguments = ["replay", str(tmp_path), str(good[0]), "--topic", topic]
    result = runner.invoke(app, [*arguments, "--bootstrap", kafka_bootstrap])
    assert result.exit_code == 0, result.output
    assert "produced 3 alerts" in result.stderr
    assert "corrupt.avro" in result.stderr
    assert "already sent" in result.stderr
    assert "listed more than once" in result.stderr
    messages = [
        (m.key or b"", m.value) for m in read_committed(kafka_bootstrap, topic, expected_end=3)
    ]
    assert sorted(value for _, value in messages) == sorted(
        Path(path).read_bytes() for path in good
    )


def test_replay_to_an_unreachable_broker_names_the_address(
    ztf_alert_files: list[Path],
) -> None:
    with pytest.raises(BrokerUnreachableError, match=r"127\.0\.0\.1:9"):
        replay_alerts(ztf_alert_files[:1], "anything", "127.0.0.1:9", connect_timeout_seconds=1)


def test_generated_alerts_are_valid_realistic_and_deterministic() -> None:
    schema = ztf_alert_schema("3.3")
    first = list(generate_alert_bytes(5, seed=11))
    assert list(generate_alert_bytes(5, seed=11)) == first
    assert list(generate_alert_bytes(5, seed=12)) != first
    candids = set()
    for data in first:
        alert = decode_alert(data)
        assert alert.schema is schema
        assert validate(alert.record, schema.parsed, raise_errors=True)
        assert 55_000 < len(data) < 90_000
        assert alert.record["prv_candidates"]
        assert -31.0 <= alert.dec <= 90.0
        assert 0.0 <= alert.ra < 360.0
        fits = gzip.decompress(alert.record["cutoutScience"]["stampData"])
        assert fits.startswith(b"SIMPLE  =                    T")
        assert len(fits) % 2880 == 0
        assert 8_000 < len(alert.record["cutoutDifference"]["stampData"]) < 16_000
        candids.add(alert.candid)
    assert len(candids) == 5
    assert SyntheticAlertFactory(11).alert_bytes(3) == first[3]  # random access


def test_generate_cli_uses_csv_positions_exactly(shared_data_dir: Path, tmp_path: Path) -> None:
    csv_path = shared_data_dir / "allwise" / "cds_request_positions.csv"
    positions = read_positions_csv(csv_path)
    out = tmp_path / "alerts"
    result = runner.invoke(
        app,
        ["generate", "--count", "3", "--out", str(out), "--positions", str(csv_path)],
    )
    assert result.exit_code == 0, result.output
    files = sorted(out.glob("*.avro"))
    assert len(files) == 3
    decoded = sorted((decode_alert(path.read_bytes()) for path in files), key=lambda a: a.candid)
    assert [(alert.ra, alert.dec) for alert in decoded] == positions[:3]
    again = tmp_path / "again"
    runner.invoke(app, ["generate", "-n", "3", "-o", str(again), "--positions", str(csv_path)])
    assert [path.read_bytes() for path in sorted(again.glob("*.avro"))] == [
        path.read_bytes() for path in files
    ]


def test_bad_positions_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "positions.csv"
    bad.write_text("x,y\n1,2\n")
    with pytest.raises(PositionsFileError, match=r"positions\.csv: needs 'ra' and 'dec'"):
        read_positions_csv(bad)
    result = runner.invoke(
        app, ["generate", "-n", "1", "-o", str(tmp_path), "--positions", str(bad)]
    )
    assert result.exit_code == 2
