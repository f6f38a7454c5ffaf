"""Matches already stored, so objects matched before are not sent to CDS again.

Catalogs are static, so an object's stored match stays valid. Only positive matches are
stored (``xmatch`` has no row for "no match"), so an object that matched nothing before is
not in the cache and will be crossmatched again. The stored match came from an earlier
alert's position: a caller wanting a strictly per-alert match must not use the cache.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from sqlalchemy import Engine, select

from xmatch_pipeline.store.tables import ZTF_SURVEY_ID, allwise_table, xmatch_table

ALLWISE_CATALOG_ID: Final = "allwise"
LOOKUP_CHUNK: Final = 10_000


@dataclass(frozen=True)
class KnownMatch:
    """An object's stored match: the distance and the catalog row, in database names."""

    oid: str
    dist: float
    allwise: Mapping[str, object]


class StoredMatchCache:
    """Stored allwise matches by object id (the database side of ``match.match_cache``)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def known_matches(
        self,
        object_ids: Iterable[str],
        catid: str = ALLWISE_CATALOG_ID,
        survey: str = ZTF_SURVEY_ID,
    ) -> dict[str, KnownMatch]:
        """The stored match of every given object of ``survey`` that has one, by ``oid``."""
        wanted = sorted(set(object_ids))
        found: dict[str, KnownMatch] = {}
        if not wanted:
            return found
        query = (
            select(xmatch_table.c.oid, xmatch_table.c.dist, *allwise_table.c)
            .join(allwise_table, allwise_table.c.oid_catalog == xmatch_table.c.oid_catalog)
            .where(xmatch_table.c.catid == catid, xmatch_table.c.sid == survey)
        )
        with self._engine.connect() as connection:
            for first in range(0, len(wanted), LOOKUP_CHUNK):
                chunk = wanted[first : first + LOOKUP_CHUNK]
                rows = connection.execute(query.where(xmatch_table.c.oid.in_(chunk))).all()
                for row in rows:
                    values = row._mapping
                    found[row.oid] = KnownMatch(
                        oid=row.oid,
                        dist=row.dist,
                        allwise={column.name: values[column] for column in allwise_table.c},
                    )
        return found
