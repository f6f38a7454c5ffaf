"""Each stored catalog's own table, built from its declaration (``match/catalogs/``).

A catalog whose module declares a ``CatalogTable`` gets one row per source there, keyed by
its id, every value in its declared type (DOUBLE PRECISION for floats, BIGINT for int64
ids such as Gaia's ``source_id``, TEXT for text). ALLWISE's is ALeRCE's ``allwise`` table,
declared in ``tables.py`` as the original has it, and returned as it is.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Column, Double, Table, Text
from sqlalchemy.types import TypeEngine

from xmatch_pipeline.match.catalog_definition import CatalogDefinition, ColumnKind
from xmatch_pipeline.match.catalogs import registered_catalogs
from xmatch_pipeline.store.tables import metadata

_SQL_TYPES: dict[ColumnKind | None, type[TypeEngine[Any]]] = {
    "text": Text,
    "int64": BigInteger,
    "float64": Double,
    None: Text,
}


def catalog_table(definition: CatalogDefinition) -> Table:
    """The catalog's own table (in the pipeline's ``metadata``, built once)."""
    if definition.table is None:
        raise ValueError(f"catalog {definition.name!r} is output only: it has no table")
    existing = metadata.tables.get(definition.table.name)
    if existing is not None:
        return existing
    return Table(
        definition.table.name,
        metadata,
        *(
            Column(
                column.stored_as,
                _SQL_TYPES[column.kind],
                primary_key=column.stored_as == definition.table.key,
                nullable=column.stored_as != definition.table.key,
            )
            for column in definition.stored_columns
            if column.stored_as is not None
        ),
        comment=f"{definition.name}: {definition.vizier_table}, {definition.release}",
    )


def stored_catalog_tables() -> list[Table]:
    """The tables of every registered catalog that has one."""
    return [
        catalog_table(definition)
        for definition in registered_catalogs()
        if definition.table is not None
    ]
