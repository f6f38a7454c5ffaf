"""The one interface both crossmatch engines (CDS and local index) implement.

Positions go in as a DataFrame with columns ``id``, ``ra``, ``dec`` (degrees, float64);
``id`` is carried through untouched (int64 or str, never through a float). Matches come out
as a DataFrame with ``id``, ``angDist`` (arcsec, float64) and the catalog's requested
columns in the spec's order, using pandas nullable dtypes so that a missing value is
``pd.NA``, never NaN. Inputs without a match are absent, as CDS does.
"""

from __future__ import annotations

from typing import Protocol

import pandas as pd

from xmatch_pipeline.match.catalog_spec import CatalogSpec
from xmatch_pipeline.match.provenance import EngineIdentity

POSITION_COLUMNS = ("id", "ra", "dec")


class CrossmatchError(RuntimeError):
    """A crossmatch could not be done; the message says what failed and what to do."""


class CrossmatchEngine(Protocol):
    """Crossmatches positions with one catalog."""

    def crossmatch(self, positions: pd.DataFrame, catalog: CatalogSpec) -> pd.DataFrame:
        """Return the matches of ``positions`` in ``catalog`` (see the module docstring)."""
        ...

    def identity(self, catalog: CatalogSpec) -> EngineIdentity:
        """Which engine answers for ``catalog`` (and which index build), for provenance."""
        ...
