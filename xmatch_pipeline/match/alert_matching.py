"""Crossmatch a batch of decoded alerts: one position per alert, a match per alert.

The original joined matches back per object, so two alerts of one object got the same row;
here every alert is keyed by its own ``candid`` from positions to output. Objects whose
ALLWISE match is already stored are not sent to the engine again (catalogs are static):
their stored source is reused and its distance recomputed for this alert's position, and
only if that source is still within the radius.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd

from xmatch_pipeline.match import allwise
from xmatch_pipeline.match.catalog_spec import CatalogSpec
from xmatch_pipeline.match.engine import CrossmatchEngine
from xmatch_pipeline.match.sky_geometry import separation_arcsec
from xmatch_pipeline.store.match_cache import KnownMatch

ANGULAR_DISTANCE = "angDist"
CANDID = "candid"


class MatchableAlert(Protocol):
    """What matching reads of an alert: its ids and a position on the sky (degrees).

    A decoded alert has these; the pipeline passes ``bad_input.ScreenedAlert``, whose
    position was checked and ``ra`` brought into [0, 360).
    """

    @property
    def candid(self) -> int: ...

    @property
    def object_id(self) -> str: ...

    @property
    def ra(self) -> float: ...

    @property
    def dec(self) -> float: ...


#: ``oid → stored match``; the pipeline passes ``store.match_cache.MatchCache.known_matches``.
KnownMatchLookup = Callable[[Sequence[str]], Mapping[str, KnownMatch]]


@dataclass
class BatchMatches:
    """What a batch's crossmatch gives the rest of the flow."""

    #: ``candid → {catalog: {column: value}}`` for alerts with at least one match.
    xmatches_by_candid: dict[int, dict[str, dict[str, object]]] = field(default_factory=dict)
    #: ALLWISE matches (CDS names, ``id`` = objectId, ``candid`` the alert's) for the
    #: database, in alert order.
    allwise_matches: list[pd.DataFrame] = field(default_factory=list)
    sent_to_engine: int = 0
    served_from_cache: int = 0

    @property
    def matched_alerts(self) -> int:
        return len(self.xmatches_by_candid)


def alert_positions(alerts: Sequence[MatchableAlert]) -> pd.DataFrame:
    """Positions keyed by ``candid`` (int64, never a float), in double precision."""
    return pd.DataFrame(
        {
            "id": np.array([alert.candid for alert in alerts], dtype=np.int64),
            "ra": np.array([alert.ra for alert in alerts], dtype=np.float64),
            "dec": np.array([alert.dec for alert in alerts], dtype=np.float64),
        }
    )


def _cached_allwise_matches(
    alerts: Sequence[MatchableAlert], known: Mapping[str, KnownMatch], catalog: CatalogSpec
) -> pd.DataFrame:
    """Matches (engine shape) rebuilt from stored sources still within this alert's radius."""
    rows: list[dict[str, object]] = []
    for alert in alerts:
        stored = known.get(alert.object_id)
        if stored is None:
            continue
        source = allwise.cds_values(stored.allwise)
        source_ra, source_dec = stored.allwise["ra"], stored.allwise["dec"]
        if not isinstance(source_ra, float) or not isinstance(source_dec, float):
            continue  # a stored source without a position cannot be checked: match again
        distance = float(separation_arcsec(alert.ra, alert.dec, source_ra, source_dec))
        if distance <= catalog.radius_arcsec:
            rows.append(
                {"id": alert.candid, ANGULAR_DISTANCE: distance}
                | {column: source.get(column) for column in catalog.columns}
            )
    return pd.DataFrame(rows, columns=["id", ANGULAR_DISTANCE, *catalog.columns])


def crossmatch_alerts(
    alerts: Sequence[MatchableAlert],
    engine: CrossmatchEngine,
    catalogs: Sequence[CatalogSpec],
    known_matches: KnownMatchLookup | None = None,
) -> BatchMatches:
    """Crossmatch every alert with every catalog (``best`` selection: one match each)."""
    result = BatchMatches()
    if not alerts:
        return result
    object_id_by_candid = {alert.candid: alert.object_id for alert in alerts}
    for catalog in catalogs:
        if catalog.selection != "best":
            raise ValueError(
                f"catalog {catalog.name!r}: the output message holds one match per catalog, "
                "so the pipeline needs selection='best'"
            )
        to_match: Sequence[MatchableAlert] = alerts
        cached = pd.DataFrame()
        if known_matches is not None and catalog.name == allwise.CATALOG_NAME:
            cached = _cached_allwise_matches(
                alerts, known_matches([a.object_id for a in alerts]), catalog
            )
            served = set(cached["id"].tolist())
            to_match = [alert for alert in alerts if alert.candid not in served]
            result.served_from_cache += len(served)
        # One position per candid: an alert that came twice upstream is matched once (an
        # engine may refuse two answers for one id).
        positions = alert_positions(to_match).drop_duplicates("id")
        matches = engine.crossmatch(positions, catalog) if len(positions) else None
        result.sent_to_engine += len(positions)
        frames = [frame for frame in (cached, matches) if frame is not None and len(frame)]
        if not frames:
            continue
        combined = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        columns = [ANGULAR_DISTANCE, *catalog.columns]
        for record in combined.to_dict(orient="records"):
            candid = int(record["id"])
            result.xmatches_by_candid.setdefault(candid, {})[catalog.name] = {
                column: allwise.plain_value(record[column]) for column in columns
            }
        if catalog.name == allwise.CATALOG_NAME:
            by_object = combined.copy()
            by_object[CANDID] = by_object["id"]
            by_object["id"] = [object_id_by_candid[int(c)] for c in by_object["id"]]
            result.allwise_matches.append(by_object)
    return result
