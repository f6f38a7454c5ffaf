"""Matches already stored, so objects matched before are not sent to the engine again.

A catalog release is static, so an object's stored match stays valid within it: the cache
is keyed by object, catalog and release, and a new release (or a row of unknown release,
written before provenance) is matched again, never served from the old one. Only positive
matches are stored (``xmatch`` has no row for "no match"), so an object that matched
nothing before is not in the cache and will be crossmatched again. The stored match came
from an earlier alert's position: a caller wanting a strictly per-alert match must not
use the cache.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from sqlalchemy import BigInteger, ColumnElement, Engine, case, cast, select

from xmatch_pipeline.match.catalog_definition import CatalogDefinition
from xmatch_pipeline.match.provenance import MatchProvenance
from xmatch_pipeline.store.catalog_tables import catalog_table
from xmatch_pipeline.store.tables import ZTF_SURVEY_ID, xmatch_table

LOOKUP_CHUNK: Final = 10_000


@dataclass(frozen=True)
class KnownMatch:
    """An object's stored match: the distance, the catalog row (database names) and the
    provenance of the run that found it."""

    oid: str
    dist: float
    source: Mapping[str, object]
    provenance: MatchProvenance


class StoredMatchCache:
    """Stored matches by object id, for every stored catalog."""

    def __init__(self, database: Engine) -> None:
        self._database = database

    def known_matches(
        self,
        object_ids: Iterable[str],
        catalog: CatalogDefinition,
        survey: str = ZTF_SURVEY_ID,
    ) -> dict[str, KnownMatch]:
        """The stored match, of the catalog's current release, of every given object of
        ``survey`` that has one, keyed by ``oid``."""
        wanted = sorted(set(object_ids))
        found: dict[str, KnownMatch] = {}
        if not wanted or catalog.table is None:
            return found
        table = catalog_table(catalog)
        key = table.c[catalog.table.key]
        link: ColumnElement[object] = xmatch_table.c.oid_catalog
        if isinstance(key.type, BigInteger):
            # Cast only this catalog's links: another catalog's ids are not numbers.
            link = case((xmatch_table.c.catid == catalog.name, cast(link, BigInteger)))
        joined_on = key == link
        query = (
            select(
                xmatch_table.c.oid,
                xmatch_table.c.dist,
                xmatch_table.c.engine,
                xmatch_table.c.index_build,
                xmatch_table.c.radius_arcsec,
                *table.c,
            )
            .join(table, joined_on)
            .where(xmatch_table.c.catid == catalog.name)
            .where(xmatch_table.c.release == catalog.release)
            .where(xmatch_table.c.sid == survey)
        )
        with self._database.connect() as connection:
            for first in range(0, len(wanted), LOOKUP_CHUNK):
                chunk = wanted[first : first + LOOKUP_CHUNK]
                rows = connection.execute(query.where(xmatch_table.c.oid.in_(chunk))).all()
                for row in rows:
                    values = row._mapping
                    found[row.oid] = KnownMatch(
                        oid=row.oid,
                        dist=row.dist,
                        source={column.name: values[column] for column in table.c},
                        provenance=MatchProvenance(
                            catalog.release,
                            row.engine or "unknown",
                            row.index_build,
                            row.radius_arcsec if row.radius_arcsec is not None else 0.0,
                        ),
                    )
        return found
