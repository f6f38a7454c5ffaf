"""XMATCH_CATALOGS and the catalog registry: bad entries stop the load, each named."""

from __future__ import annotations

import json

import pytest

from xmatch_pipeline.match.catalog_configuration import (
    CatalogConfigurationError,
    configured_catalogs,
)
from xmatch_pipeline.match.catalog_definition import CatalogColumn, CatalogDefinition
from xmatch_pipeline.match.catalogs import allwise, find_catalog, gaia_dr3, registered_catalogs
from xmatch_pipeline.settings import SettingsError, load_settings

MINIMAL = {
    "CONSUMER_SERVER": "127.0.0.1:9092",
    "CONSUMER_TOPICS": "ztf",
    "CONSUMER_GROUP_ID": "xmatch",
    "PRODUCER_TOPIC": "xmatch",
    "DB_HOST": "127.0.0.1",
    "DB_USER": "u",
    "DB_PASSWORD": "p",
    "DB_NAME": "d",
}
TWOMASS_COLUMNS = ["2MASS", "RAJ2000", "DEJ2000", "Jmag", "Hmag", "Kmag"]
TWOMASS: dict[str, object] = {
    "name": "twomass",
    "vizier_table": "II/246/out",
    "release": "2MASS All-Sky PSC (2003)",
    "id_column": "2MASS",
    "columns": TWOMASS_COLUMNS,
    "radius_arcsec": 2.0,
}


def test_the_registry_finds_every_catalog_module_by_name_alias_and_table() -> None:
    assert [c.name for c in registered_catalogs()] == ["allwise", "gaia_dr3"]
    assert find_catalog("ALLWISE") is allwise.CATALOG
    assert find_catalog("vizier:II/328/allwise") is allwise.CATALOG
    assert find_catalog("gaia") is find_catalog("I/355/gaiadr3") is gaia_dr3.CATALOG
    assert find_catalog("II/246/out") is None


def test_gaia_is_stored_in_its_own_table_with_an_int64_id() -> None:
    gaia = gaia_dr3.CATALOG
    assert gaia.table is not None
    assert gaia.table.key == "source_id"
    assert gaia.column("Source").kind == "int64"
    assert gaia.storage == "table gaia_dr3 + xmatch"


def test_entries_resolve_with_defaults_and_selection_all() -> None:
    allwise_entry, gaia, twomass = configured_catalogs(
        [
            {"name": "allwise"},
            {"name": "gaia", "selection": "all", "max_matches": 3, "columns": ["Source", "Gmag"]},
            TWOMASS,
        ]
    )
    assert allwise_entry.output_columns == allwise.CDS_COLUMNS
    assert (gaia.name, gaia.selection, gaia.max_matches) == ("gaia_dr3", "all", 3)
    # The engine is asked for the stored columns too; the output keeps the configured ones.
    assert gaia.output_columns == ("Source", "Gmag")
    assert set(gaia.spec.columns) == set(gaia_dr3.CATALOG.column_names)
    assert gaia.spec.vizier_table == "I/355/gaiadr3"
    assert not twomass.stored
    assert twomass.spec.vizier_table == "II/246/out"
    assert twomass.spec.columns == tuple(TWOMASS_COLUMNS)
    assert twomass.definition.release == "2MASS All-Sky PSC (2003)"


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        (
            [{"name": "sdss"}],
            "XMATCH_CATALOGS[0] (sdss).name: unknown catalog 'sdss'; it should be one of "
            "allwise, gaia_dr3",
        ),
        (
            [{"name": "allwise", "columns": ["AllWISE", "W9mag"]}],
            "XMATCH_CATALOGS[0] (allwise).columns: catalog 'allwise' has no column(s) "
            "['W9mag']; they should be among",
        ),
        (
            [{"name": "gaia_dr3", "radius_arcsec": 200}],
            "XMATCH_CATALOGS[0] (gaia_dr3).radius_arcsec should be in (0, 180] arcsec",
        ),
        (
            [{"name": "allwise"}, {"name": "ALLWISE", "radius_arcsec": 2}],
            "XMATCH_CATALOGS[1] names catalog 'allwise' again (entry 0 already does)",
        ),
        (
            [{"name": "gaia_dr3", "selection": "all", "max_matches": 0}],
            "XMATCH_CATALOGS[0] (gaia_dr3).max_matches should be an integer of at least 1, got 0",
        ),
        (
            [{"name": "allwise", "max_matches": 3}],
            "max_matches is 3 but selection is 'best'",
        ),
        (
            [TWOMASS | {"id_column": "designation"}],
            "XMATCH_CATALOGS[0] (twomass).id_column: 'designation' should be one of its",
        ),
        ([{"name": "allwise", "radius": 2}], "unknown field(s) ['radius']"),
    ],
)
def test_a_bad_entry_is_named_with_what_it_should_be(
    entries: list[dict[str, object]], expected: str
) -> None:
    with pytest.raises(CatalogConfigurationError) as raised:
        configured_catalogs(entries)
    assert len(raised.value.problems) == 1, raised.value.problems
    assert expected in raised.value.problems[0]


def test_a_bad_entry_stops_the_load_with_one_message() -> None:
    environment = MINIMAL | {
        "XMATCH_CATALOGS": json.dumps([{"name": "allwise"}, {"name": "gaia", "max_matches": 0}])
    }
    with pytest.raises(SettingsError) as raised:
        load_settings(environment)
    message = str(raised.value)
    assert message.count("XMATCH_CATALOGS") == 1
    assert "XMATCH_CATALOGS[1] (gaia).max_matches should be an integer of at least 1" in message


def test_two_catalog_modules_answering_to_one_name_are_refused() -> None:
    from xmatch_pipeline.match import catalogs

    clash = CatalogDefinition(
        name="gaia_dr4",
        aliases=("gaia",),
        vizier_table="II/999/x",
        release="r",
        id_column="id",
        ra_column="ra",
        dec_column="dec",
        columns=(CatalogColumn("id"), CatalogColumn("ra"), CatalogColumn("dec")),
    )
    with pytest.raises(ValueError, match="both answer to 'gaia'"):
        catalogs._refuse_clashing_names([gaia_dr3.CATALOG, clash])
