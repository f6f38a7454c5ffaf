"""The local engine against a brute-force matcher on random skies.

Catalogs and positions cluster where spherical code usually breaks: across RA 0/360 and
within a degree of both poles, with duplicated catalog positions to exercise ties. The
brute force computes every pair's angle from unit vectors (atan2 of cross and dot
products), a formula independent of the engine's Vincenty distance.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from xmatch_pipeline.match.catalog_spec import CatalogSpec
from xmatch_pipeline.match.local.index import LocalCatalogIndex, build_catalog_index

#: Pairs this close to the radius may fall either side depending on the formula.
BOUNDARY_TOLERANCE_ARCSEC = 1e-7
CLUSTER_KINDS = ("ra_wrap", "north_pole", "south_pole", "anywhere")


def _cluster(rng: np.random.Generator, kind: str, count: int, scale_deg: float):
    """Positions scattered within about ``scale_deg`` of a centre of the given kind."""
    if kind in ("north_pole", "south_pole"):
        # Within 1° of the pole, uniformly in RA: every RA meets at the pole.
        distance = np.minimum(np.abs(rng.normal(0.0, scale_deg, count)), 1.0)
        ra = rng.uniform(0.0, 360.0, count)
        dec = 90.0 - distance if kind == "north_pole" else -90.0 + distance
        return ra, dec
    centre_ra = 0.0 if kind == "ra_wrap" else rng.uniform(0.0, 360.0)
    centre_dec = rng.uniform(-60.0, 60.0)
    dec = np.clip(centre_dec + rng.normal(0.0, scale_deg, count), -90.0, 90.0)
    ra = np.mod(centre_ra + rng.normal(0.0, scale_deg, count) / np.cos(np.radians(dec)), 360.0)
    return ra, dec


def _near(rng: np.random.Generator, ra, dec, scale_arcsec: float):
    """Points displaced from (ra, dec) by about ``scale_arcsec``, correct at the poles too."""
    ra_rad, dec_rad = np.radians(ra), np.radians(dec)
    vectors = np.column_stack(
        (np.cos(dec_rad) * np.cos(ra_rad), np.cos(dec_rad) * np.sin(ra_rad), np.sin(dec_rad))
    )
    moved = vectors + rng.normal(0.0, np.radians(scale_arcsec / 3600.0), vectors.shape)
    moved /= np.linalg.norm(moved, axis=1, keepdims=True)
    new_ra = np.mod(np.degrees(np.arctan2(moved[:, 1], moved[:, 0])), 360.0)
    new_dec = np.degrees(np.arcsin(np.clip(moved[:, 2], -1.0, 1.0)))
    return new_ra, new_dec


def _random_sky(scenario: dict[str, Any]):
    """A catalog (ids beyond 2**53, some duplicated positions) and positions to match."""
    seed, kinds, scale_deg = scenario["seed"], scenario["kinds"], scenario["scale_deg"]
    catalog_size, duplicates = scenario["catalog_size"], scenario["duplicates"]
    radius_arcsec = scenario["radius_arcsec"]
    rng = np.random.default_rng(seed)
    catalog_parts, position_parts = [], []
    for kind in kinds:
        catalog_parts.append(_cluster(rng, kind, catalog_size, scale_deg))
        position_parts.append(_cluster(rng, kind, catalog_size // 2 + 1, scale_deg))
    ra = np.concatenate([part[0] for part in catalog_parts])
    dec = np.concatenate([part[1] for part in catalog_parts])
    copies = rng.integers(0, ra.size, duplicates)  # same position, another id: a tie
    ra, dec = np.r_[ra, ra[copies]], np.r_[dec, dec[copies]]
    ids = rng.permutation(ra.size).astype(np.int64) * 7 + 10**18  # beyond 2**53
    catalog = pd.DataFrame(
        {"source_id": ids, "ra": ra, "dec": dec, "mag": rng.normal(18, 2, ra.size)}
    )
    # Half the positions sit about a radius from catalog sources, so matches are common.
    near = rng.integers(0, ra.size, ra.size // 2 + 1)
    position_parts.append(_near(rng, ra[near], dec[near], radius_arcsec))
    positions_ra = np.concatenate([part[0] for part in position_parts])
    positions_dec = np.concatenate([part[1] for part in position_parts])
    order = rng.permutation(positions_ra.size)
    positions = pd.DataFrame(
        {
            "id": np.arange(positions_ra.size, dtype=np.int64) + 5,
            "ra": positions_ra[order],
            "dec": positions_dec[order],
        }
    )
    return catalog, positions


def _angles_arcsec(positions: pd.DataFrame, catalog: pd.DataFrame) -> np.ndarray:
    def vectors(frame: pd.DataFrame) -> np.ndarray:
        ra, dec = np.radians(frame["ra"].to_numpy()), np.radians(frame["dec"].to_numpy())
        return np.column_stack((np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)))

    a, b = vectors(positions)[:, None, :], vectors(catalog)[None, :, :]
    cross = np.linalg.norm(np.cross(a, b), axis=-1)
    dot = np.sum(a * b, axis=-1)
    angles: np.ndarray = np.degrees(np.arctan2(cross, dot)) * 3600.0
    return angles


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    """A random sky, a radius, a partition order and a selection."""
    return {
        "seed": draw(st.integers(0, 2**32 - 1)),
        "kinds": draw(st.lists(st.sampled_from(CLUSTER_KINDS), min_size=1, max_size=3)),
        "scale_deg": draw(st.sampled_from([0.002, 0.02, 0.3])),
        "catalog_size": draw(st.integers(1, 120)),
        "duplicates": draw(st.integers(0, 5)),
        "radius_arcsec": draw(st.sampled_from([0.5, 2.0, 30.0, 180.0])),
        "partition_order": draw(st.sampled_from([0, 3, 6, 8])),
        "selection": draw(st.sampled_from(["best", "all"])),
    }


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios())
def test_matches_equal_brute_force(scenario: dict[str, Any]) -> None:
    radius_arcsec, selection = scenario["radius_arcsec"], scenario["selection"]
    catalog, positions = _random_sky(scenario)
    has_matches = bool((_angles_arcsec(positions, catalog) <= radius_arcsec).any())
    event(f"{selection}, matches: {has_matches}")
    with tempfile.TemporaryDirectory() as work:
        source = Path(work) / "catalog.parquet"
        pq.write_table(pa.Table.from_pandas(catalog, preserve_index=False), source)
        build_catalog_index(
            [source],
            Path(work) / "index",
            id_column="source_id",
            ra_column="ra",
            dec_column="dec",
            partition_order=scenario["partition_order"],
        )
        index = LocalCatalogIndex.open(Path(work) / "index")
        spec = CatalogSpec("random", ("source_id", "mag"), radius_arcsec, selection)
        found = index.crossmatch(positions, spec)

    angles = _angles_arcsec(positions, catalog)
    ids = catalog["source_id"].to_numpy()
    surely_in = angles <= radius_arcsec - BOUNDARY_TOLERANCE_ARCSEC
    maybe_in = angles <= radius_arcsec + BOUNDARY_TOLERANCE_ARCSEC
    row_of_id = {identifier: row for row, identifier in enumerate(ids)}
    row_of_position = {identifier: row for row, identifier in enumerate(positions["id"])}

    found_rows = [row_of_position[identifier] for identifier in found["id"]]
    found_catalog_rows = [row_of_id[identifier] for identifier in found["source_id"]]
    # Distances agree with the independent formula to a micro-arcsecond.
    np.testing.assert_allclose(
        found["angDist"].to_numpy(), angles[found_rows, found_catalog_rows], rtol=0, atol=1e-6
    )
    # Catalog columns travel with their row.
    np.testing.assert_array_equal(
        found["mag"].to_numpy(np.float64), catalog["mag"].to_numpy()[found_catalog_rows]
    )
    # Sorted by (input order, distance, catalog id).
    keys = list(zip(found_rows, found["angDist"], found["source_id"], strict=True))
    assert keys == sorted(keys)

    if selection == "all":
        found_pairs = set(zip(found_rows, found_catalog_rows, strict=True))
        assert set(zip(*np.nonzero(surely_in), strict=True)) <= found_pairs
        assert found_pairs <= set(zip(*np.nonzero(maybe_in), strict=True))
        return

    assert found["id"].is_unique
    best_of = dict(zip(found_rows, found_catalog_rows, strict=True))
    for position_row in range(len(positions)):
        candidates = np.flatnonzero(maybe_in[position_row])
        if position_row not in best_of:
            assert not surely_in[position_row].any()
            continue
        nearest = angles[position_row, candidates].min()
        tied = candidates[angles[position_row, candidates] <= nearest + 1e-9]
        assert best_of[position_row] == tied[np.argmin(ids[tied])]
