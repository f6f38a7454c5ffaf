"""Which inputs found no match: CDS (and our engines, alike) leave them out of the answer."""

from __future__ import annotations

import pandas as pd


def unmatched_ids(positions: pd.DataFrame, matches: pd.DataFrame) -> pd.Series:
    """The ids of ``positions`` absent from ``matches``, in input order, dtype kept."""
    missing = ~positions["id"].isin(matches["id"])
    return positions.loc[missing, "id"].reset_index(drop=True)
