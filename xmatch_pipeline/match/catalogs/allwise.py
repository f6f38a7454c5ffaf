"""ALLWISE (brief §1): CDS's names in the output message, ALeRCE's ``allwise`` table in the DB.

Downstream steps read ``xmatches.allwise`` with CDS's column names; ALeRCE's ``allwise``
table (db-plugins) stores the same values renamed, and ``xmatch`` links objects to them
with ``catid = 'allwise'``. Both lists live here, once.
"""

from __future__ import annotations

from collections.abc import Mapping

from xmatch_pipeline.match.catalog_definition import CatalogColumn, CatalogDefinition, CatalogTable
from xmatch_pipeline.match.catalog_spec import CatalogSpec

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

CATALOG = CatalogDefinition(
    name="allwise",
    vizier_table="II/328/allwise",
    release="AllWISE (2013)",
    id_column="AllWISE",
    ra_column="RAJ2000",
    dec_column="DEJ2000",
    columns=tuple(
        CatalogColumn(
            name, "text" if name == "AllWISE" else "float64", stored_as=DATABASE_COLUMNS[name]
        )
        for name in CDS_COLUMNS
    ),
    default_radius_arcsec=1.0,
    table=CatalogTable(name="allwise", key="oid_catalog"),
)
CATALOG_NAME = CATALOG.name
VIZIER_TABLE = CATALOG.vizier_table

#: The original step's match: the best ALLWISE source within 1″.
ALLWISE_SPEC = CatalogSpec(
    name=CATALOG_NAME, columns=CDS_COLUMNS, radius_arcsec=1.0, selection="best"
)
