"""Crossmatch a batch of decoded alerts: one position per alert, a match per alert.

The original joined matches back per object, so two alerts of one object got the same row;
here every alert is keyed by its own ``candid`` from positions to output. The flow loops
over the configured catalogs and knows none by name. For a stored catalog matched with
``best``, objects whose match of the same release is already stored are not sent to the
engine again (a release is static): their stored source is reused and its distance
recomputed for this alert's position, and only if that source is still within the
radius. ``selection: "all"`` keeps up to ``max_matches`` per alert, nearest first, for the
output; the database keeps the nearest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd

from xmatch_pipeline.match.catalog_configuration import ConfiguredCatalog
from xmatch_pipeline.match.catalog_definition import CatalogDefinition
from xmatch_pipeline.match.catalog_rows import ANGULAR_DISTANCE, cds_values, plain_value
from xmatch_pipeline.match.crossmatch_engine import CrossmatchEngine
from xmatch_pipeline.match.provenance import MatchProvenance
from xmatch_pipeline.match.sky_geometry import separation_arcsec
from xmatch_pipeline.store.match_cache import KnownMatch

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


#: ``(oids, catalog) → {oid: stored match}``; the pipeline passes
#: ``store.match_cache.StoredMatchCache.known_matches``.
KnownMatchLookup = Callable[[Sequence[str], CatalogDefinition], Mapping[str, KnownMatch]]


@dataclass(frozen=True)
class CatalogProvenance:
    """What one alert's answer from one catalog came from (the output's provenance)."""

    provenance: MatchProvenance
    from_cache: bool = False


@dataclass
class StoredMatches:
    """A stored catalog's nearest match per alert (CDS names, ``id`` = objectId,
    ``candid`` the alert's), with each row's provenance, for the database."""

    catalog: ConfiguredCatalog
    frame: pd.DataFrame
    provenance: list[MatchProvenance]


@dataclass
class BatchMatches:
    """What a batch's crossmatch gives the rest of the flow."""

    #: ``candid → {catalog: {column: value}}``, the nearest match, for alerts with one.
    xmatches_by_candid: dict[int, dict[str, dict[str, object]]] = field(default_factory=dict)
    #: ``candid → {catalog: [match, …]}`` nearest first, for ``selection: "all"`` catalogs.
    all_matches_by_candid: dict[int, dict[str, list[dict[str, object]]]] = field(
        default_factory=dict
    )
    #: ``candid → {catalog: provenance}`` for every alert and configured catalog.
    provenance_by_candid: dict[int, dict[str, CatalogProvenance]] = field(default_factory=dict)
    #: Stored catalogs' matches for the database, in alert order.
    stored_matches: list[StoredMatches] = field(default_factory=list)
    sent_to_engine: int = 0
    served_from_cache: int = 0

    @property
    def matched_alerts(self) -> int:
        return len(self.xmatches_by_candid)

    def only(self, candids: set[int]) -> BatchMatches:
        """The matches of these alerts alone (a dead-lettered alert leaves no row)."""
        return BatchMatches(
            xmatches_by_candid={c: m for c, m in self.xmatches_by_candid.items() if c in candids},
            all_matches_by_candid={
                c: m for c, m in self.all_matches_by_candid.items() if c in candids
            },
            provenance_by_candid={
                c: p for c, p in self.provenance_by_candid.items() if c in candids
            },
            stored_matches=[
                StoredMatches(
                    stored.catalog,
                    stored.frame[kept].reset_index(drop=True),
                    [p for p, k in zip(stored.provenance, kept, strict=True) if k],
                )
                for stored in self.stored_matches
                for kept in [stored.frame[CANDID].isin(candids).to_numpy()]
            ],
            sent_to_engine=self.sent_to_engine,
            served_from_cache=self.served_from_cache,
        )


def alert_positions(alerts: Sequence[MatchableAlert]) -> pd.DataFrame:
    """Positions keyed by ``candid`` (int64, never a float), in double precision."""
    return pd.DataFrame(
        {
            "id": np.array([alert.candid for alert in alerts], dtype=np.int64),
            "ra": np.array([alert.ra for alert in alerts], dtype=np.float64),
            "dec": np.array([alert.dec for alert in alerts], dtype=np.float64),
        }
    )


def _cached_matches(
    alerts: Sequence[MatchableAlert], known: Mapping[str, KnownMatch], catalog: ConfiguredCatalog
) -> tuple[pd.DataFrame, list[MatchProvenance]]:
    """Matches (engine shape) rebuilt from stored sources still within this alert's radius."""
    definition = catalog.definition
    columns = catalog.spec.columns
    rows: list[dict[str, object]] = []
    provenance: list[MatchProvenance] = []
    for alert in alerts:
        stored = known.get(alert.object_id)
        if stored is None:
            continue
        source = cds_values(definition, stored.source)
        source_ra, source_dec = source[definition.ra_column], source[definition.dec_column]
        if not isinstance(source_ra, float) or not isinstance(source_dec, float):
            continue  # a stored source without a position cannot be checked: match again
        distance = float(separation_arcsec(alert.ra, alert.dec, source_ra, source_dec))
        if distance <= catalog.radius_arcsec:
            rows.append(
                {"id": alert.candid, ANGULAR_DISTANCE: distance}
                | {column: source.get(column) for column in columns}
            )
            provenance.append(stored.provenance)
    return pd.DataFrame(rows, columns=["id", ANGULAR_DISTANCE, *columns]), provenance


def _nearest_first(matches: pd.DataFrame, catalog: ConfiguredCatalog) -> pd.DataFrame:
    """Up to ``max_matches`` per input, by distance (ties: the smaller catalog id)."""
    if catalog.selection == "best" or matches.empty:
        return matches
    ordered = matches.sort_values(
        ["id", ANGULAR_DISTANCE, catalog.definition.id_column], kind="stable"
    ).reset_index(drop=True)
    rank = ordered.groupby("id", sort=False).cumcount()
    return ordered[rank < catalog.max_matches].reset_index(drop=True)


def crossmatch_alerts(
    alerts: Sequence[MatchableAlert],
    engine: CrossmatchEngine,
    catalogs: Sequence[ConfiguredCatalog],
    known_matches: KnownMatchLookup | None = None,
) -> BatchMatches:
    """Crossmatch every alert with every configured catalog."""
    result = BatchMatches()
    if not alerts:
        return result
    object_id_by_candid = {alert.candid: alert.object_id for alert in alerts}
    for catalog in catalogs:
        spec = catalog.spec
        fresh = MatchProvenance.of(
            catalog.definition.release, engine.identity(spec), spec.radius_arcsec
        )
        to_match: Sequence[MatchableAlert] = alerts
        cached = pd.DataFrame()
        cached_provenance: list[MatchProvenance] = []
        if known_matches is not None and catalog.stored and catalog.selection == "best":
            cached, cached_provenance = _cached_matches(
                alerts, known_matches([a.object_id for a in alerts], catalog.definition), catalog
            )
            served = set(cached["id"].tolist())
            to_match = [alert for alert in alerts if alert.candid not in served]
            result.served_from_cache += len(served)
        by_cache = dict(
            zip(cached["id"].tolist() if len(cached) else [], cached_provenance, strict=True)
        )
        for alert in alerts:
            origin = by_cache.get(alert.candid)
            result.provenance_by_candid.setdefault(alert.candid, {})[catalog.name] = (
                CatalogProvenance(origin, from_cache=True) if origin else CatalogProvenance(fresh)
            )
        # One position per candid: an alert that came twice upstream is matched once (an
        # engine may refuse two answers for one id).
        positions = alert_positions(to_match).drop_duplicates("id")
        matches = (
            _nearest_first(engine.crossmatch(positions, spec), catalog) if len(positions) else None
        )
        result.sent_to_engine += len(positions)
        parts = [
            (frame, origins)
            for frame, origins in (
                (cached, cached_provenance),
                (matches, [fresh] * (0 if matches is None else len(matches))),
            )
            if frame is not None and len(frame)
        ]
        if not parts:
            continue
        combined = pd.concat([frame for frame, _ in parts], ignore_index=True)
        provenance = [origin for _, origins in parts for origin in origins]
        _add_output(result, catalog, combined)
        if catalog.stored:
            nearest = ~combined["id"].duplicated()
            by_object = combined[nearest.to_numpy()].reset_index(drop=True)
            by_object[CANDID] = by_object["id"]
            by_object["id"] = [object_id_by_candid[int(c)] for c in by_object["id"]]
            kept = [origin for origin, keep in zip(provenance, nearest, strict=True) if keep]
            result.stored_matches.append(StoredMatches(catalog, by_object, kept))
    return result


def _add_output(result: BatchMatches, catalog: ConfiguredCatalog, combined: pd.DataFrame) -> None:
    """The output's values: the nearest in ``xmatches``, every kept one for ``all``."""
    columns = [ANGULAR_DISTANCE, *catalog.output_columns]
    for record in combined.to_dict(orient="records"):
        candid = int(record["id"])
        values = {column: plain_value(record[column]) for column in columns}
        nearest = result.xmatches_by_candid.setdefault(candid, {})
        nearest.setdefault(catalog.name, values)
        if catalog.selection == "all":
            result.all_matches_by_candid.setdefault(candid, {}).setdefault(catalog.name, []).append(
                values
            )
