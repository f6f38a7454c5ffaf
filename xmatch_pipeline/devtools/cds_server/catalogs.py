"""The catalogs a local CDS server serves: local indexes under the names CDS clients use.

A catalog served as ``allwise`` answers ``cat2=vizier:allwise`` and, through the alias
table, ``cat2=vizier:II/328/allwise``, so an unmodified CDS client works against it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from threading import Lock

import pandas as pd
import pyarrow as pa

from xmatch_pipeline.devtools.cds_server.protocol import ProtocolError
from xmatch_pipeline.match.catalog_aliases import VIZIER_PREFIX, catalog_names_for
from xmatch_pipeline.match.catalog_spec import CatalogSpec
from xmatch_pipeline.match.local.index import LocalCatalogIndex


def parse_catalog_argument(text: str) -> tuple[str, Path]:
    """``NAME=DIR`` or ``DIR`` (named after the index's own name) from the command line."""
    name, separator, directory = text.partition("=")
    if separator and name and "/" not in name:
        return name, Path(directory)
    path = Path(text)
    return LocalCatalogIndex.open(path).name, path


class ServedCatalog:
    """One local index, matched one batch at a time (the index's caches are not shared)."""

    def __init__(self, name: str, index: LocalCatalogIndex) -> None:
        self.name = name
        self.index = index
        self._lock = Lock()

    @property
    def columns(self) -> tuple[str, ...]:
        return self.index.columns

    @property
    def column_types(self) -> dict[str, str]:
        """Each column's VOTable datatype (``long``, ``double``, ``char``, ``boolean``)."""
        schema = self.index.catalog.schema
        return {name: _votable_datatype(schema.field(name).type) for name in self.columns}

    def crossmatch(self, positions: pd.DataFrame, spec: CatalogSpec) -> pd.DataFrame:
        unknown = [column for column in spec.columns if column not in self.columns]
        if unknown:
            raise ProtocolError(
                f"Column(s) {', '.join(repr(column) for column in unknown)} not found in "
                f"table {self.name}"
            )
        with self._lock:
            return self.index.crossmatch(positions, spec)


def _votable_datatype(arrow_type: pa.DataType) -> str:
    if pa.types.is_boolean(arrow_type):
        return "boolean"
    if pa.types.is_integer(arrow_type):
        return "long"
    if pa.types.is_floating(arrow_type):
        return "double"
    return "char"


class ServedCatalogs:
    """Catalogs by every name that refers to them (name, alias, VizieR table; any case)."""

    def __init__(self, directories: Mapping[str, Path] | Iterable[tuple[str, Path]]) -> None:
        items = directories.items() if isinstance(directories, Mapping) else directories
        self._by_name: dict[str, ServedCatalog] = {}
        self.catalogs: list[ServedCatalog] = []
        for name, directory in items:
            catalog = ServedCatalog(name, LocalCatalogIndex.open(Path(directory)))
            self.catalogs.append(catalog)
            for spelling in catalog_names_for(name):
                self._by_name[spelling] = catalog

    def resolve(self, cat2: str) -> ServedCatalog:
        """The catalog a ``cat2`` value names; ``ProtocolError`` (HTTP 400) if none."""
        name = cat2.strip()
        if name.lower().startswith(VIZIER_PREFIX):
            name = name[len(VIZIER_PREFIX) :]
        else:
            raise ProtocolError(
                f"Invalid cat2 '{cat2}': this server serves VizieR tables only (vizier:<table>)"
            )
        catalog = self._by_name.get(name.lower())
        if catalog is None:
            served = ", ".join(catalog.name for catalog in self.catalogs)
            raise ProtocolError(f"Unknown table '{name}' (served here: {served})")
        return catalog
