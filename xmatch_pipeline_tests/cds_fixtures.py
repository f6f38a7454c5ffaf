"""Helpers shared by the CDS tests: a local ALLWISE index from the real CDS exchange."""

from __future__ import annotations

import csv
from pathlib import Path

from xmatch_pipeline.match.allwise import CDS_COLUMNS
from xmatch_pipeline.match.local_index import build_catalog_index

RESPONSE_FILE = "cds_response_allwise_best_1arcsec.csv"
REQUEST_FILE = "cds_request_positions.csv"


def allwise_data(shared_data_dir: Path) -> Path:
    return shared_data_dir / "allwise"


def build_allwise_index(shared_data_dir: Path, work_dir: Path) -> Path:
    """An index named ``allwise`` of the 5,440 ALLWISE rows CDS returned, text kept as is,
    columns in CDS's order."""
    catalog_csv = work_dir / "allwise_rows.csv"
    seen: set[str] = set()
    with (allwise_data(shared_data_dir) / RESPONSE_FILE).open(newline="") as source:
        reader = csv.DictReader(source)
        columns = [column for column in reader.fieldnames or () if column in CDS_COLUMNS]
        with catalog_csv.open("w", newline="") as target:
            writer = csv.writer(target, lineterminator="\n")
            writer.writerow(columns)
            for row in reader:
                if row["AllWISE"] not in seen:
                    seen.add(row["AllWISE"])
                    writer.writerow([row[column] for column in columns])
    index_dir = work_dir / "allwise_index"
    build_catalog_index(
        [catalog_csv],
        index_dir,
        id_column="AllWISE",
        ra_column="RAJ2000",
        dec_column="DEJ2000",
        name="allwise",
    )
    return index_dir
