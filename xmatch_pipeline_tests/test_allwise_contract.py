"""The ALLWISE contract: CDS's names in the message, ALeRCE's in the database."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pandas as pd
import pytest

from xmatch_pipeline.match import catalog_rows
from xmatch_pipeline.match.catalogs.allwise import (
    ALLWISE_SPEC,
    CATALOG,
    CDS_COLUMNS,
    DATABASE_COLUMNS,
)
from xmatch_pipeline.match.cds.response import parse_xmatch_csv
from xmatch_pipeline.match.provenance import EngineIdentity, MatchProvenance
from xmatch_pipeline_tests.pipeline_fixtures import RESPONSE_FILE, allwise_data

PROVENANCE = MatchProvenance.of(CATALOG.release, EngineIdentity("cds"), 1.0)


def allwise_database_rows(matches: pd.DataFrame) -> list[dict[str, object]]:
    return catalog_rows.catalog_table_rows(CATALOG, matches)


def xmatch_database_rows(matches: pd.DataFrame) -> list[dict[str, object]]:
    return catalog_rows.xmatch_rows(CATALOG, matches, [PROVENANCE] * len(matches))


def cds_values(row: dict[str, object]) -> dict[str, object]:
    return catalog_rows.cds_values(CATALOG, row)


ALERCE_ALLWISE_COLUMNS = [
    "oid_catalog",
    "ra",
    "dec",
    "w1mpro",
    "w2mpro",
    "w3mpro",
    "w4mpro",
    "w1sigmpro",
    "w2sigmpro",
    "w3sigmpro",
    "w4sigmpro",
    "j_m_2mass",
    "h_m_2mass",
    "k_m_2mass",
    "j_msig_2mass",
    "h_msig_2mass",
    "k_msig_2mass",
]


@pytest.fixture(scope="module")
def real_matches(shared_data_dir: Path) -> pd.DataFrame:
    body = (allwise_data(shared_data_dir) / RESPONSE_FILE).read_bytes()
    table = parse_xmatch_csv(body).rename(columns={"id_in": "id"})
    return table[["id", "angDist", *CDS_COLUMNS]]


def test_the_original_steps_spec() -> None:
    assert ALLWISE_SPEC.name == "allwise"
    assert ALLWISE_SPEC.radius_arcsec == 1.0
    assert ALLWISE_SPEC.selection == "best"
    assert ALLWISE_SPEC.columns == CDS_COLUMNS
    assert len(CDS_COLUMNS) == 17


def test_every_cds_column_has_its_alerce_name() -> None:
    assert tuple(DATABASE_COLUMNS) == CDS_COLUMNS
    assert sorted(DATABASE_COLUMNS.values()) == sorted(ALERCE_ALLWISE_COLUMNS)
    assert DATABASE_COLUMNS["AllWISE"] == "oid_catalog"
    assert DATABASE_COLUMNS["RAJ2000"] == "ra"
    assert DATABASE_COLUMNS["e_W3mag"] == "w3sigmpro"
    assert DATABASE_COLUMNS["Kmag"] == "k_m_2mass"
    assert DATABASE_COLUMNS["e_Hmag"] == "h_msig_2mass"


def test_database_rows_from_real_matches(real_matches: pd.DataFrame, shared_data_dir: Path) -> None:
    rows = allwise_database_rows(real_matches)
    assert len(rows) == real_matches["AllWISE"].nunique() == 5440
    assert set(rows[0]) == set(ALERCE_ALLWISE_COLUMNS)
    assert sum(row["w4sigmpro"] is None for row in rows) == 584
    assert all(isinstance(row["oid_catalog"], str) for row in rows)
    assert all(type(row["ra"]) is float for row in rows)
    # Doubles as CDS wrote them, not rounded to 32 bits.
    text = (allwise_data(shared_data_dir) / RESPONSE_FILE).read_text()
    first = next(csv.DictReader(io.StringIO(text)))
    by_id = {row["oid_catalog"]: row for row in rows}
    assert by_id[first["AllWISE"]]["ra"] == float(first["RAJ2000"])
    assert cds_values(by_id[first["AllWISE"]])["RAJ2000"] == float(first["RAJ2000"])


def test_one_database_row_per_source_and_xmatch_rows(real_matches: pd.DataFrame) -> None:
    twice = pd.concat([real_matches.iloc[:3], real_matches.iloc[:1].assign(id=1)])
    assert len(allwise_database_rows(twice)) == 3
    links = xmatch_database_rows(twice)
    assert len(links) == 4
    assert links[0] == {
        "oid": int(real_matches["id"].iloc[0]),
        "catid": "allwise",
        "oid_catalog": real_matches["AllWISE"].iloc[0],
        "dist": float(real_matches["angDist"].iloc[0]),
        "release": "AllWISE (2013)",
        "engine": "cds",
        "index_build": None,
        "radius_arcsec": 1.0,
    }


def test_missing_columns_are_named() -> None:
    with pytest.raises(ValueError, match="W4mag"):
        allwise_database_rows(pd.DataFrame({"id": [1], "angDist": [0.1], "AllWISE": ["J1"]}))


def test_the_mapping_matches_the_database_tables() -> None:
    from xmatch_pipeline.store.tables import SURVEY_COLUMN, allwise_table, xmatch_table

    assert list(DATABASE_COLUMNS.values()) == [column.name for column in allwise_table.c]
    links = xmatch_database_rows(
        pd.DataFrame({"id": ["ZTF20aaaaaaa"], "angDist": [0.5], "AllWISE": ["J1"]})
    )
    # The survey is the batch's, added by the writer (match_writer), not by the mapping.
    assert list(links[0]) == [c.name for c in xmatch_table.c if c.name != SURVEY_COLUMN]
