"""Matches (CDS names) as database rows of a stored catalog, and stored rows as matches again.

One mapping per catalog, from its declaration: the catalog's table takes each stored
column under its stored name; ``xmatch`` links the object to the source by the source's
id as text (an int64 id as its decimal digits, never through a float), with the
distance and the provenance of the match.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from xmatch_pipeline.match.catalog_definition import CatalogDefinition
from xmatch_pipeline.match.provenance import MatchProvenance

ANGULAR_DISTANCE = "angDist"


def plain_value(value: Any) -> Any:
    """A DataFrame cell as a plain Python value: None for missing, never NaN."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if hasattr(value, "item") else value


def source_key(value: object) -> str:
    """A source id as ``xmatch.oid_catalog`` holds it: text, integers as their digits."""
    plain = plain_value(value)
    if isinstance(plain, float):
        raise ValueError(f"source id {plain!r} is a float: it may have lost digits already")
    return str(plain)


def catalog_table_rows(
    definition: CatalogDefinition, matches: pd.DataFrame
) -> list[dict[str, Any]]:
    """Rows of the catalog's own table from its matches (CDS names), one per source."""
    stored = definition.stored_columns
    missing = [column.name for column in stored if column.name not in matches.columns]
    if missing:
        raise ValueError(
            f"{definition.name} matches lack columns {missing} (got {list(matches.columns)})"
        )
    renamed = matches[[column.name for column in stored]].rename(
        columns={column.name: column.stored_as for column in stored}
    )
    key = definition.table.key if definition.table is not None else definition.id_column
    unique = renamed.drop_duplicates(subset=key, keep="first")
    records = unique.to_dict(orient="records")
    return [{str(name): plain_value(value) for name, value in record.items()} for record in records]


def xmatch_rows(
    definition: CatalogDefinition,
    matches: pd.DataFrame,
    provenance: Sequence[MatchProvenance],
) -> list[dict[str, Any]]:
    """Rows of ``xmatch`` (``oid, catid, oid_catalog, dist`` and the provenance) from matches
    whose ``id`` is the object id; ``provenance`` is per row."""
    return [
        {
            "oid": plain_value(identifier),
            "catid": definition.name,
            "oid_catalog": source_key(source),
            "dist": float(distance),
            **origin.database_values(),
        }
        for identifier, source, distance, origin in zip(
            matches["id"],
            matches[definition.id_column],
            matches[ANGULAR_DISTANCE],
            provenance,
            strict=True,
        )
    ]


def cds_values(definition: CatalogDefinition, database_row: Mapping[str, Any]) -> dict[str, Any]:
    """A row of the catalog's table under CDS's names again (for the cache of stored
    matches, whose values must read as a fresh answer)."""
    return {
        column.name: database_row[column.stored_as]
        for column in definition.stored_columns
        if column.stored_as is not None
    }
