"""ALLWISE, Gaia DR3 and a catalog declared in configuration, end to end on the real alerts.

The 86 real ZTF alerts go through the sensor and ``xmatch_microbatch`` runs, once over local
indexes and once through the local CDS server. The catalogs are built around the alerts'
positions at known distances: ALLWISE as in ``test_pipeline_end_to_end``, a Gaia-like
catalog with realistic 19-digit ``source_id``s (two sources within 1″ of some alerts, for
``selection: "all"``), and a 2MASS-like one declared in ``XMATCH_CATALOGS`` only (output
only). Expected answers come from an independent brute force with astropy.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from dagster import DagsterInstance

from xmatch_pipeline.decode.avro_codec import DecodedAlert, decode_alert
from xmatch_pipeline.devtools.cds_server.catalogs import ServedCatalogs
from xmatch_pipeline.devtools.cds_server.server import CdsXmatchServer
from xmatch_pipeline.match.catalogs import allwise, gaia_dr3
from xmatch_pipeline.match.local.build import build_catalog_index
from xmatch_pipeline.match.local.index import index_build_id
from xmatch_pipeline_tests.pipeline_fixtures import (
    allwise_rows,
    build_allwise_catalog,
    drive_sensor_and_jobs,
    fresh_database,
    pipeline_environment,
    produce_values,
    query,
    read_committed,
    unique_group,
    xmatch_resource,
)
from xmatch_pipeline_tests.test_pipeline_end_to_end import _offset_position, _synthetic_sources

pytestmark = pytest.mark.timeout(240)

GAIA_MAX_MATCHES = 2
#: Gaia DR3 source_ids run up to ~6.9e18: far beyond a double's 2**53.
GAIA_ID_BASE = 4_295_806_720_000_000_000
TWOMASS_RELEASE = "2MASS All-Sky PSC (2003)"
TWOMASS = {
    "name": "twomass",
    "vizier_table": "II/246/out",
    "release": TWOMASS_RELEASE,
    "id_column": "2MASS",
    "columns": ["2MASS", "RAJ2000", "DEJ2000", "Jmag", "Kmag"],
}
CATALOGS = [
    {"name": "allwise"},
    {"name": "gaia", "selection": "all", "max_matches": GAIA_MAX_MATCHES},
    TWOMASS,
]
GAIA_FLOATS = [c.name for c in gaia_dr3.CATALOG.columns if c.kind == "float64"][2:]


def _gaia_rows(alerts: list[DecodedAlert]) -> list[dict[str, str]]:
    """Sources near two alerts in three: 0.3″ (and a second at 0.8″ for every other one),
    some 1.4″ away (never matched); every fifth without BP."""
    rows: list[dict[str, str]] = []
    for index, alert in enumerate(alerts):
        placements = {0: [0.3, 0.8] if index % 2 == 0 else [0.3], 1: [1.4]}.get(index % 3, [])
        for number, offset in enumerate(placements):
            ra, dec = _offset_position(alert.ra, alert.dec, offset, 11.0 * index + 120 * number)
            row = {"Source": str(GAIA_ID_BASE + 7919 * index + number), "RA_ICRS": repr(ra)}
            row["DE_ICRS"] = repr(dec)
            for position, column in enumerate(GAIA_FLOATS):
                missing = column == "BPmag" and index % 5 == 0
                row[column] = "" if missing else repr(0.5 + index / 9.0 + position / 7.0)
            rows.append(row)
    return rows


def _twomass_rows(alerts: list[DecodedAlert]) -> list[dict[str, str]]:
    rows = []
    for index, alert in enumerate(alerts[::4]):
        ra, dec = _offset_position(alert.ra, alert.dec, 0.5, 200.0 + index)
        rows.append(
            {
                "2MASS": f"{index:08d}+synthetic",
                "RAJ2000": repr(ra),
                "DEJ2000": repr(dec),
                "Jmag": repr(12.0 + index / 10.0),
                "Kmag": "" if index % 3 == 0 else repr(11.0 + index / 10.0),
            }
        )
    return rows


def _index(
    rows: list[dict[str, str]], work: Path, name: str, *, id_column: str, ra: str, dec: str
) -> Path:
    source = work / f"{name}.csv"
    with source.open("w", newline="") as target:
        writer = csv.DictWriter(target, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    directory = work / f"{name}-index"
    build_catalog_index(
        [source], directory, id_column=id_column, ra_column=ra, dec_column=dec, name=name
    )
    return directory


def _within(
    alert: DecodedAlert, rows: list[dict[str, str]], ra: str, dec: str, radius: float
) -> list[tuple[float, dict[str, str]]]:
    """(distance, row) within the radius, nearest first, by astropy."""
    sources = SkyCoord(
        np.array([float(r[ra]) for r in rows]) * u.deg,
        np.array([float(r[dec]) for r in rows]) * u.deg,
    )
    separations = SkyCoord(alert.ra * u.deg, alert.dec * u.deg).separation(sources).arcsec
    order = np.argsort(separations, kind="stable")
    return [(float(separations[i]), rows[i]) for i in order if separations[i] <= radius]


@dataclass(frozen=True)
class Catalogs:
    values: list[bytes]
    alerts: list[DecodedAlert]
    allwise: list[dict[str, str]]
    gaia: list[dict[str, str]]
    twomass: list[dict[str, str]]
    directories: dict[str, Path]


@pytest.fixture(scope="module")
def catalogs(
    ztf_alert_files: list[Path], shared_data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Catalogs:
    values = [path.read_bytes() for path in ztf_alert_files]
    alerts = [decode_alert(value) for value in values]
    work = tmp_path_factory.mktemp("catalogs-e2e")
    allwise_catalog = allwise_rows(shared_data_dir) + _synthetic_sources(alerts)
    gaia, twomass = _gaia_rows(alerts), _twomass_rows(alerts)
    directories = {
        "allwise": build_allwise_catalog(allwise_catalog, work / "allwise"),
        "gaia_dr3": _index(gaia, work, "gaia_dr3", id_column="Source", ra="RA_ICRS", dec="DE_ICRS"),
        "twomass": _index(twomass, work, "twomass", id_column="2MASS", ra="RAJ2000", dec="DEJ2000"),
    }
    return Catalogs(values, alerts, allwise_catalog, gaia, twomass, directories)


@pytest.fixture
def engine(request: pytest.FixtureRequest, catalogs: Catalogs) -> Iterator[dict[str, str]]:
    directories = catalogs.directories
    if request.param == "local":
        yield {
            "XMATCH_ENGINE": "local",
            "XMATCH_LOCAL_CATALOGS": ",".join(f"{n}={d}" for n, d in directories.items()),
        }
        return
    served = {"allwise": directories["allwise"], "gaia_dr3": directories["gaia_dr3"]}
    served["II/246/out"] = directories["twomass"]
    with CdsXmatchServer(ServedCatalogs(served)) as server:
        yield {"XMATCH_ENGINE": "cds", "XMATCH_CDS_URL": server.url, "XMATCH_LOCAL_CATALOGS": ""}


@pytest.mark.parametrize("engine", ["local", "cds"], indirect=True)
def test_allwise_gaia_and_a_configured_catalog_end_to_end(
    *,
    catalogs: Catalogs,
    engine: dict[str, str],
    kafka_bootstrap: str,
    database_url: str,
    new_topic: Callable[..., str],
) -> None:
    alerts = catalogs.alerts
    assert len(alerts) == 86
    input_topic, output_topic = new_topic("cat-e2e-in", partitions=2), new_topic("cat-e2e-out")
    engine_name = engine["XMATCH_ENGINE"]
    builds = {
        name: (index_build_id(directory) if engine_name == "local" else None)
        for name, directory in catalogs.directories.items()
    }
    with fresh_database(database_url) as url:
        xmatch = xmatch_resource(
            pipeline_environment(
                kafka_bootstrap=kafka_bootstrap,
                database_url=url,
                input_topic=input_topic,
                output_topic=output_topic,
                group_id=unique_group(),
                XMATCH_MAX_MESSAGES_PER_RUN="50",
                XMATCH_CATALOGS=json.dumps(CATALOGS),
            )
            | engine,
        )
        produce_values(
            kafka_bootstrap,
            input_topic,
            [(a.object_id, v) for a, v in zip(alerts, catalogs.values, strict=True)],
            partitions=2,
        )
        log = drive_sensor_and_jobs(xmatch, DagsterInstance.ephemeral())
        assert not log.failed_runs, [run.all_events for run in log.failed_runs][:1]

        by_candid = {
            decoded.candid: decoded
            for decoded in (
                decode_alert(m.value) for m in read_committed(kafka_bootstrap, output_topic)
            )
        }
        assert sorted(by_candid) == sorted(a.candid for a in alerts)
        releases = {
            "allwise": allwise.CATALOG.release,
            "gaia_dr3": gaia_dr3.CATALOG.release,
            "twomass": TWOMASS_RELEASE,
        }
        nearest_gaia: dict[str, tuple[float, int]] = {}
        gaia_matched = twomass_matched = 0
        for alert in alerts:
            record = by_candid[alert.candid].record
            provenance = record["xmatch_provenance"]
            assert set(provenance) == set(releases)
            for name, entry in provenance.items():
                assert entry["release"] == releases[name]
                assert entry["radius_arcsec"] == 1.0
                if not entry["from_cache"]:
                    assert (entry["engine"], entry["index_build"]) == (engine_name, builds[name])
            xmatches = record["xmatches"] or {}
            # Gaia: up to two, nearest first, ids exact; xmatches holds the nearest.
            want = _within(alert, catalogs.gaia, "RA_ICRS", "DE_ICRS", 1.0)[:GAIA_MAX_MATCHES]
            got = (record["xmatch_matches"] or {}).get("gaia_dr3", [])
            assert [m["Source"] for m in got] == [int(r["Source"]) for _, r in want], alert.candid
            for match, (distance, row) in zip(got, want, strict=True):
                assert math.isclose(match["angDist"], distance, abs_tol=1e-3)
                assert match["RA_ICRS"] == float(row["RA_ICRS"])
                assert match["BPmag"] == (float(row["BPmag"]) if row["BPmag"] else None)
            if want:
                gaia_matched += 1
                assert xmatches["gaia_dr3"] == got[0]
                held = nearest_gaia.get(alert.object_id)
                if held is None or want[0][0] < held[0]:
                    nearest_gaia[alert.object_id] = (want[0][0], int(want[0][1]["Source"]))
            else:
                assert "gaia_dr3" not in xmatches
            # 2MASS, declared in configuration only: in the output, nowhere in the database.
            twomass = _within(alert, catalogs.twomass, "RAJ2000", "DEJ2000", 1.0)
            if twomass:
                twomass_matched += 1
                assert xmatches["twomass"]["2MASS"] == twomass[0][1]["2MASS"]
                assert set(xmatches["twomass"]) == {"angDist", *TWOMASS["columns"]}
            else:
                assert "twomass" not in xmatches
            if "allwise" in xmatches:
                assert set(xmatches["allwise"]) == {"angDist", *allwise.CDS_COLUMNS}
        assert gaia_matched >= 20
        assert twomass_matched >= 10
        gaia_lists = [(by_candid[a.candid].record["xmatch_matches"] or {}) for a in alerts]
        assert any(len(matches.get("gaia_dr3", [])) == 2 for matches in gaia_lists)

        # Database: xmatch rows for the stored catalogs only, each with its provenance.
        rows = query(
            url,
            "SELECT oid, catid, oid_catalog, release, engine, index_build, radius_arcsec "
            "FROM xmatch",
        )
        assert {row[1] for row in rows} == {"allwise", "gaia_dr3"}
        for _, catid, _, release, engine_used, index_build, radius in rows:
            assert (release, radius) == (releases[catid], 1.0)
            assert (engine_used, index_build) == (engine_name, builds[catid])
        gaia_links = {row[0]: int(row[2]) for row in rows if row[1] == "gaia_dr3"}
        assert gaia_links == {oid: source for oid, (_, source) in nearest_gaia.items()}
        stored_ids = {row[0] for row in query(url, "SELECT source_id FROM gaia_dr3")}
        assert stored_ids == set(gaia_links.values())
        assert all(source > 2**53 for source in stored_ids)
        assert query(url, "SELECT count(*) FROM allwise")[0][0] > 0
