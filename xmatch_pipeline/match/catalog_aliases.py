"""Short catalog names and the VizieR tables they stand for.

Users and the seed's settings say ``allwise``; CDS wants ``vizier:II/328/allwise``. Any name
that is not an alias is taken as a VizieR table as it is, so every VizieR catalog works.
"""

from __future__ import annotations

VIZIER_PREFIX = "vizier:"

#: Alias (lower case) → VizieR table.
VIZIER_ALIASES: dict[str, str] = {
    "allwise": "II/328/allwise",
}


def vizier_table(name: str) -> str:
    """The VizieR table for a catalog name: an alias, a table, or ``vizier:<table>``."""
    bare = name.strip()
    if bare.lower().startswith(VIZIER_PREFIX):
        bare = bare[len(VIZIER_PREFIX) :]
    if not bare:
        raise ValueError(f"catalog name {name!r} names no VizieR table")
    return VIZIER_ALIASES.get(bare.lower(), bare)


def cds_catalog_parameter(name: str) -> str:
    """The ``cat2`` value CDS expects for a catalog name."""
    return VIZIER_PREFIX + vizier_table(name)


def catalog_names_for(table_or_alias: str) -> set[str]:
    """Every spelling (lower case) that refers to the same catalog: alias and table."""
    table = vizier_table(table_or_alias)
    names = {table.lower(), table_or_alias.strip().lower()}
    names.update(alias for alias, aliased in VIZIER_ALIASES.items() if aliased == table)
    return names
