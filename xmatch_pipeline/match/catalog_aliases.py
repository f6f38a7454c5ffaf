"""Short catalog names and the VizieR tables they stand for.

Users and the seed's settings say ``allwise``; CDS wants ``vizier:II/328/allwise``. The
aliases are the registered catalogs' names and aliases (``match/catalogs/``). Any name that
is not an alias is taken as a VizieR table as it is, so every VizieR catalog works.
"""

from __future__ import annotations

from xmatch_pipeline.match.catalogs import find_catalog

VIZIER_PREFIX = "vizier:"


def vizier_table(name: str) -> str:
    """The VizieR table for a catalog name: an alias, a table, or ``vizier:<table>``."""
    bare = name.strip()
    if bare.lower().startswith(VIZIER_PREFIX):
        bare = bare[len(VIZIER_PREFIX) :]
    if not bare:
        raise ValueError(f"catalog name {name!r} names no VizieR table")
    registered = find_catalog(bare)
    return registered.vizier_table if registered is not None else bare


def cds_catalog_parameter(name: str) -> str:
    """The ``cat2`` value CDS expects for a catalog name."""
    return VIZIER_PREFIX + vizier_table(name)


def catalog_names_for(table_or_alias: str) -> set[str]:
    """Every spelling (lower case) that refers to the same catalog: alias and table."""
    registered = find_catalog(table_or_alias)
    names = {vizier_table(table_or_alias).lower(), table_or_alias.strip().lower()}
    if registered is not None:
        names |= registered.names
    return names
