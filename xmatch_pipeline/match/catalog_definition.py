"""What a catalog is to the pipeline: one declaration per catalog, read by every stage.

A catalog module (``match/catalogs/<name>.py``) declares one :class:`CatalogDefinition`:
its name and aliases, its VizieR table (what CDS is asked), its release (carried by every
match), its id and position columns, the columns it can give with their types, its
default radius, and its storage: a table of its own (``CatalogTable``), or the output
message only. Nothing else in the flow knows a catalog by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ColumnKind = Literal["text", "int64", "float64"]
COLUMN_KINDS: tuple[ColumnKind, ...] = ("text", "int64", "float64")


@dataclass(frozen=True)
class CatalogColumn:
    """A column as CDS (VizieR) names it, its type, and where its own table keeps it."""

    name: str
    #: None for a catalog declared in configuration only: values go out as the engine gives them.
    kind: ColumnKind | None = None
    #: The column of the catalog's own table, or None when the value is not stored.
    stored_as: str | None = None


@dataclass(frozen=True)
class CatalogTable:
    """The catalog's own table: one row per source, keyed by the source id."""

    name: str
    #: The key column (the stored name of the definition's ``id_column``).
    key: str


@dataclass(frozen=True)
class CatalogDefinition:
    """One catalog, declared once."""

    name: str
    vizier_table: str
    release: str
    id_column: str
    ra_column: str
    dec_column: str
    columns: tuple[CatalogColumn, ...]
    default_radius_arcsec: float = 1.0
    aliases: tuple[str, ...] = ()
    #: Its own table, or None: its matches go to the output message only.
    table: CatalogTable | None = None
    #: The columns an entry of XMATCH_CATALOGS without ``columns`` gets (default: all).
    default_columns: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        names = self.column_names
        for role, column in (
            ("id_column", self.id_column),
            ("ra_column", self.ra_column),
            ("dec_column", self.dec_column),
        ):
            if column not in names:
                raise ValueError(f"catalog {self.name!r}: {role} {column!r} is not a column")
        if self.table is not None:
            id_stored = self.column(self.id_column).stored_as
            if id_stored != self.table.key:
                raise ValueError(
                    f"catalog {self.name!r}: the id column must be stored as the table's key "
                    f"{self.table.key!r}, got {id_stored!r}"
                )
            for column in (self.ra_column, self.dec_column):
                if self.column(column).stored_as is None:
                    raise ValueError(
                        f"catalog {self.name!r}: a stored catalog stores its position "
                        f"({column!r}), so the match cache can check it"
                    )

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)

    def column(self, name: str) -> CatalogColumn:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(f"catalog {self.name!r} has no column {name!r}")

    @property
    def stored_columns(self) -> tuple[CatalogColumn, ...]:
        """The columns its own table keeps (none for an output-only catalog)."""
        if self.table is None:
            return ()
        return tuple(column for column in self.columns if column.stored_as is not None)

    @property
    def storage(self) -> str:
        """How it is stored, in words (``catalog list``)."""
        if self.table is None:
            return "output only"
        return f"table {self.table.name} + xmatch"

    @property
    def names(self) -> set[str]:
        """Every spelling (lower case) that names it: name, aliases, VizieR table."""
        return {spelling.lower() for spelling in (self.name, *self.aliases, self.vizier_table)}
