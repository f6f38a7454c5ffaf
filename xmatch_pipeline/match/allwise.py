"""The ALLWISE contract (brief §1): CDS's names in the output message, ALeRCE's in the database.

Downstream steps read ``xmatches.allwise`` with CDS's column names; ALeRCE's ``allwise``
table (db-plugins) stores the same values renamed. Both lists live here, once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from xmatch_pipeline.match.catalog_spec import CatalogSpec

CATALOG_NAME = "allwise"
VIZIER_TABLE = "II/328/allwise"

#: ALLWISE columns as CDS names them, in the order of the message's ``xmatches.allwise``.
CDS_COLUMNS: tuple[str, ...] = (
    "AllWISE",
    "RAJ2000",
    "DEJ2000",
    "W1mag",
    "W2mag",
    "W3mag",
    "W4mag",
    "e_W1mag",
    "e_W2mag",
    "e_W3mag",
    "e_W4mag",
    "Jmag",
    "Hmag",
    "Kmag",
    "e_Jmag",
    "e_Hmag",
    "e_Kmag",
)

#: CDS column → column of ALeRCE's ``allwise`` table.
DATABASE_COLUMNS: Mapping[str, str] = {
    "AllWISE": "oid_catalog",
    "RAJ2000": "ra",
    "DEJ2000": "dec",
    "W1mag": "w1mpro",
    "W2mag": "w2mpro",
    "W3mag": "w3mpro",
    "W4mag": "w4mpro",
    "e_W1mag": "w1sigmpro",
    "e_W2mag": "w2sigmpro",
    "e_W3mag": "w3sigmpro",
    "e_W4mag": "w4sigmpro",
    "Jmag": "j_m_2mass",
    "Hmag": "h_m_2mass",
    "Kmag": "k_m_2mass",
    "e_Jmag": "j_msig_2mass",
    "e_Hmag": "h_msig_2mass",
    "e_Kmag": "k_msig_2mass",
}

#: The original step's match: the best ALLWISE source within 1″.
ALLWISE_SPEC = CatalogSpec(
    name=CATALOG_NAME, columns=CDS_COLUMNS, radius_arcsec=1.0, selection="best"
)


def plain_value(value: Any) -> Any:
    """A DataFrame cell as a plain Python value: None for missing, never NaN."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if hasattr(value, "item") else value


def allwise_database_rows(matches: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows of ALeRCE's ``allwise`` table from ALLWISE matches (CDS names), None for missing.

    One row per ALLWISE source: two inputs matching the same source give one row.
    """
    missing = [column for column in CDS_COLUMNS if column not in matches.columns]
    if missing:
        raise ValueError(f"ALLWISE matches lack columns {missing} (got {list(matches.columns)})")
    renamed = matches[list(CDS_COLUMNS)].rename(columns=dict(DATABASE_COLUMNS))
    unique = renamed.drop_duplicates(subset="oid_catalog", keep="first")
    records = unique.to_dict(orient="records")
    return [{str(key): plain_value(value) for key, value in record.items()} for record in records]


def xmatch_database_rows(matches: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows of ALeRCE's ``xmatch`` table (``oid, catid, oid_catalog, dist``) from matches.

    ``id`` is taken as the object id (``oid``); ``dist`` is ``angDist`` in arcsec.
    """
    return [
        {
            "oid": plain_value(identifier),
            "catid": CATALOG_NAME,
            "oid_catalog": plain_value(source),
            "dist": float(distance),
        }
        for identifier, source, distance in zip(
            matches["id"], matches["AllWISE"], matches["angDist"], strict=True
        )
    ]


def cds_values(database_row: Mapping[str, Any]) -> dict[str, Any]:
    """A row of ALeRCE's ``allwise`` table under CDS's names again (for a cache of stored
    matches, whose values must read as a fresh CDS answer)."""
    return {cds: database_row[database] for cds, database in DATABASE_COLUMNS.items()}
