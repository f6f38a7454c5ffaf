"""The local demo's data: a synthetic ALLWISE-like catalog and alerts that match it.

Everything is generated from a seed, so the demo needs nothing from outside the project
and gives the same matches on every machine. Four alerts in five lie within 0.8″ of a
catalog source; the rest fall between sources and stay unmatched, as real alerts often do.
"""

from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass
from pathlib import Path

from xmatch_pipeline.devtools.alert_tools.synthetic import write_synthetic_alerts
from xmatch_pipeline.match.catalogs import allwise
from xmatch_pipeline.match.local.index import build_catalog_index

DEMO_SEED = 2020
#: A patch of sky in ZTF's footprint, away from the poles and RA 0/360.
PATCH_RA = (150.0, 154.0)
PATCH_DEC = (10.0, 14.0)
MATCHED_FRACTION = 0.8
MAX_MATCH_OFFSET_ARCSEC = 0.8


@dataclass(frozen=True)
class DemoData:
    catalog_csv: Path
    catalog_index: Path
    alerts_dir: Path
    alert_count: int


def _allwise_name(ra: float, dec: float) -> str:
    """An ALLWISE-style designation, Jhhmmss.ss+ddmmss.s, from the position."""
    hours = ra / 15.0
    hh, rest = divmod(hours * 3600.0, 3600.0)
    mm, ss = divmod(rest, 60.0)
    sign = "+" if dec >= 0 else "-"
    dd, rest = divmod(abs(dec) * 3600.0, 3600.0)
    dm, ds = divmod(rest, 60.0)
    return f"J{int(hh):02d}{int(mm):02d}{ss:05.2f}{sign}{int(dd):02d}{int(dm):02d}{ds:04.1f}"


def write_demo_catalog(path: Path, sources: int, rng: random.Random) -> list[tuple[float, float]]:
    """Write ``sources`` ALLWISE-like rows (CDS column names); return their positions."""
    positions: list[tuple[float, float]] = []
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(allwise.CDS_COLUMNS)
        for _ in range(sources):
            ra = rng.uniform(*PATCH_RA)
            dec = math.degrees(
                math.asin(rng.uniform(*(math.sin(math.radians(d)) for d in PATCH_DEC)))
            )
            positions.append((ra, dec))
            w1 = rng.uniform(9.0, 17.0)
            magnitudes = [w1, w1 - 0.3, w1 - 2.0, w1 - 3.5]
            twomass = [w1 + 2.0, w1 + 1.2, w1 + 0.9]
            errors = [0.02 + rng.random() * 0.1 for _ in range(7)]
            # Faint W4 and 2MASS values are often missing in ALLWISE: keep some nulls.
            w4_error = "" if rng.random() < 0.1 else f"{errors[3]:.3f}"
            row = [
                _allwise_name(ra, dec),
                repr(ra),
                repr(dec),
                *(f"{value:.3f}" for value in magnitudes),
                *(f"{value:.3f}" for value in errors[:3]),
                w4_error,
                *(f"{value:.3f}" for value in twomass),
                *(f"{value:.3f}" for value in errors[4:]),
            ]
            writer.writerow(row)
    return positions


def _alert_positions(
    sources: list[tuple[float, float]], count: int, rng: random.Random
) -> list[tuple[float, float]]:
    positions = []
    for _ in range(count):
        if rng.random() < MATCHED_FRACTION:
            ra, dec = rng.choice(sources)
            offset = rng.uniform(0.0, MAX_MATCH_OFFSET_ARCSEC) / 3600.0
            angle = rng.uniform(0.0, 2.0 * math.pi)
            dec_alert = dec + offset * math.sin(angle)
            ra_alert = ra + offset * math.cos(angle) / math.cos(math.radians(dec))
            positions.append((ra_alert, dec_alert))
        else:
            positions.append((rng.uniform(*PATCH_RA), rng.uniform(*PATCH_DEC)))
    return positions


def prepare_demo_data(directory: Path, alert_count: int, catalog_sources: int = 20_000) -> DemoData:
    """Build the catalog (HATS) and alert files once; reuse them when already there."""
    data = DemoData(
        catalog_csv=directory / "allwise-demo.csv",
        catalog_index=directory / "allwise-hats",
        alerts_dir=directory / f"alerts-{alert_count}",
        alert_count=alert_count,
    )
    rng = random.Random(DEMO_SEED)
    sources = write_demo_catalog(data.catalog_csv, catalog_sources, rng)
    if not (data.catalog_index / "properties").is_file():
        build_catalog_index(
            [data.catalog_csv],
            data.catalog_index,
            id_column="AllWISE",
            ra_column="RAJ2000",
            dec_column="DEJ2000",
            name=allwise.CATALOG_NAME,
        )
    if not data.alerts_dir.is_dir() or len(list(data.alerts_dir.glob("*.avro"))) < alert_count:
        write_synthetic_alerts(
            data.alerts_dir,
            alert_count,
            seed=DEMO_SEED,
            positions=_alert_positions(sources, alert_count, rng),
        )
    return data
