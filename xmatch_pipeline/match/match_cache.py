"""Matches already known: catalogs are static, so an object matched once need not be sent again.

The client asks the cache before uploading and tells it what it learnt after. Only matches
are cached: CDS omits unmatched inputs, and an unmatched object is cheap to ask again.
"""

from __future__ import annotations

from collections.abc import Sequence
from threading import Lock
from typing import Protocol

import pandas as pd

from xmatch_pipeline.match.catalog_spec import CatalogSpec


class MatchCache(Protocol):
    """Earlier matches, per catalog spec (a 1″ match says nothing about a 5″ request)."""

    def lookup(self, catalog: CatalogSpec, ids: Sequence[object]) -> pd.DataFrame:
        """The cached matches of those ``ids`` that were matched before (engine contract shape)."""
        ...

    def store(self, catalog: CatalogSpec, matches: pd.DataFrame) -> None:
        """Remember ``matches`` (engine contract shape) for ``catalog``."""
        ...


class InMemoryMatchCache:
    """A ``MatchCache`` in a dict, for tests and single-process runs."""

    def __init__(self) -> None:
        self._matches: dict[CatalogSpec, pd.DataFrame] = {}
        self._lock = Lock()

    def lookup(self, catalog: CatalogSpec, ids: Sequence[object]) -> pd.DataFrame:
        with self._lock:
            known = self._matches.get(catalog)
        if known is None:
            return pd.DataFrame(columns=["id", "angDist", *catalog.columns])
        return known[known["id"].isin(list(ids))].reset_index(drop=True)

    def store(self, catalog: CatalogSpec, matches: pd.DataFrame) -> None:
        if matches.empty:
            return
        with self._lock:
            known = self._matches.get(catalog)
            if known is None or known.empty:
                self._matches[catalog] = matches.reset_index(drop=True)
                return
            fresh = matches[~matches["id"].isin(known["id"])]
            self._matches[catalog] = pd.concat([known, fresh], ignore_index=True)
