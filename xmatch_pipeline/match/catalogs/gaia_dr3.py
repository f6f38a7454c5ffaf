"""Gaia DR3 (VizieR ``I/355/gaiadr3``), stored in ``gaia_dr3`` under the Gaia archive's names.

``Source`` (the archive's ``source_id``) is a 19-digit integer: it stays an int64 from the
engine to the ``gaia_dr3`` table's BIGINT key and the output message's ``long``, and is
written to ``xmatch.oid_catalog`` as its decimal text; it never passes through a float.
Gaia Collaboration, Vallenari et al. 2023, A&A 674, A1.
"""

from __future__ import annotations

from xmatch_pipeline.match.catalog_definition import CatalogColumn, CatalogDefinition, CatalogTable

CATALOG = CatalogDefinition(
    name="gaia_dr3",
    aliases=("gaia", "gaiadr3"),
    vizier_table="I/355/gaiadr3",
    release="Gaia DR3 (2022-06-13)",
    id_column="Source",
    ra_column="RA_ICRS",
    dec_column="DE_ICRS",
    columns=(
        CatalogColumn("Source", "int64", stored_as="source_id"),
        CatalogColumn("RA_ICRS", "float64", stored_as="ra"),
        CatalogColumn("DE_ICRS", "float64", stored_as="dec"),
        CatalogColumn("Plx", "float64", stored_as="parallax"),
        CatalogColumn("e_Plx", "float64", stored_as="parallax_error"),
        CatalogColumn("pmRA", "float64", stored_as="pmra"),
        CatalogColumn("pmDE", "float64", stored_as="pmdec"),
        CatalogColumn("Gmag", "float64", stored_as="phot_g_mean_mag"),
        CatalogColumn("BPmag", "float64", stored_as="phot_bp_mean_mag"),
        CatalogColumn("RPmag", "float64", stored_as="phot_rp_mean_mag"),
        CatalogColumn("RUWE", "float64", stored_as="ruwe"),
    ),
    default_radius_arcsec=1.0,
    table=CatalogTable(name="gaia_dr3", key="source_id"),
)
