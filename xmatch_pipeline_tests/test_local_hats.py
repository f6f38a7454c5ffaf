"""The local engine on HATS catalogs, with LSDB's own crossmatch as the oracle.

Two HATS copies of one catalog: ours (``catalog build``, one partition order) and LSDB's
(``lsdb.from_dataframe(...).write_catalog``: a collection with mixed partition orders and a
margin cache, as published HATS catalogs are). The engine gives the same answer on both,
and that answer is LSDB's crossmatch of the same batch, pair for pair. Positions on the
partitions' edges, with sources on both sides, check the margin cache: each position reads
its own partition and that partition's margin, and finds what a brute force finds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy_healpix import HEALPix

from xmatch_pipeline.match.catalog_spec import CatalogSpec
from xmatch_pipeline.match.local.build import build_catalog_index
from xmatch_pipeline.match.local.hats_catalog import HatsFormatError, open_hats_catalog
from xmatch_pipeline.match.local.healpix_partitions import containing_partitions
from xmatch_pipeline.match.local.index import LocalCatalogIndex
from xmatch_pipeline.match.local.partition_cache import PartitionCache
from xmatch_pipeline.settings import SettingsError, load_settings

RADIUS_ARCSEC = 5.0
BIG_IDS = [1234567890123456789, 9223372036854775806, 9007199254740993]


@pytest.fixture(scope="module")
def catalog_frame() -> pd.DataFrame:
    """6,000 sources in a 20° band across RA 0 (several partitions, some edges)."""
    rng = np.random.default_rng(11)
    count = 6000
    return pd.DataFrame(
        {
            "source_id": np.r_[BIG_IDS, rng.integers(0, 2**62, count - 3)].astype(np.int64),
            "ra": np.mod(rng.uniform(-10, 10, count), 360.0),
            "dec": rng.uniform(-10, 10, count),
            "mag": np.where(rng.uniform(size=count) < 0.2, np.nan, rng.normal(18, 1, count)),
        }
    )


@pytest.fixture(scope="module")
def batch(catalog_frame: pd.DataFrame) -> pd.DataFrame:
    """400 positions: most within a few arcsec of a source, some nowhere near one."""
    rng = np.random.default_rng(12)
    near = catalog_frame.sample(300, random_state=3)
    offset = rng.normal(0, 2.0 / 3600, (300, 2))
    ra = np.r_[np.mod(near["ra"].to_numpy() + offset[:, 0], 360.0), rng.uniform(20, 40, 100)]
    dec = np.r_[near["dec"].to_numpy() + offset[:, 1], rng.uniform(-10, 10, 100)]
    return pd.DataFrame({"id": np.arange(400, dtype=np.int64), "ra": ra, "dec": dec})


@pytest.fixture(scope="module")
def our_hats(catalog_frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("ours")
    source = work / "catalog.parquet"
    pq.write_table(pa.Table.from_pandas(catalog_frame, preserve_index=False), source)
    build_catalog_index(
        [source], work / "hats", id_column="source_id", ra_column="ra", dec_column="dec",
        name="c", partition_order=2,
    )  # fmt: skip
    return work / "hats"


@pytest.fixture(scope="module")
def lsdb_hats(catalog_frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import lsdb

    directory = tmp_path_factory.mktemp("lsdb") / "c"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        catalog = lsdb.from_dataframe(
            catalog_frame, ra_column="ra", dec_column="dec", catalog_name="c",
            lowest_order=2, partition_rows=400, margin_threshold=10.0,
        )  # fmt: skip
        catalog.write_catalog(directory, progress_bar=False)
    return directory


def _pairs(found: pd.DataFrame, catalog_id: str = "source_id") -> pd.DataFrame:
    pairs = pd.DataFrame(
        {
            "id": found["id"].to_numpy(np.int64),
            "source_id": found[catalog_id].to_numpy(np.int64),
            "angDist": found["angDist"].to_numpy(np.float64),
        }
    )
    return pairs.sort_values(["id", "source_id"], ignore_index=True)


def test_the_lsdb_copy_has_mixed_orders_and_a_margin(lsdb_hats: Path) -> None:
    opened = open_hats_catalog(lsdb_hats)
    assert len(set(opened.orders.tolist())) > 1
    assert opened.margin is not None
    assert opened.margin.threshold_arcsec == 10.0
    assert opened.margin.partitions
    assert opened.id_column is None  # LSDB names none: ties go to RA, then Dec
    assert (lsdb_hats / "collection.properties").is_file()


def test_engine_answers_equal_on_both_copies_and_equal_lsdb(
    our_hats: Path, lsdb_hats: Path, batch: pd.DataFrame
) -> None:
    import lsdb

    spec = CatalogSpec("c", ("source_id", "mag"), RADIUS_ARCSEC, "all")
    ours = LocalCatalogIndex.open(our_hats).crossmatch(batch, spec)
    theirs_copy = LocalCatalogIndex.open(lsdb_hats).crossmatch(batch, spec)
    pd.testing.assert_frame_equal(ours, theirs_copy)
    assert ours["source_id"].dtype == "Int64"
    assert ours["mag"].dtype == "Float64"
    assert ours["mag"].isna().any()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        oracle = lsdb.crossmatch(
            batch, lsdb.open_catalog(lsdb_hats), ra_column="ra", dec_column="dec",
            radius_arcsec=RADIUS_ARCSEC, n_neighbors=50, suffixes=("", "_cat"),
            suffix_method="overlapping_columns",
        ).compute()  # fmt: skip
    expected = pd.DataFrame(
        {
            "id": oracle["id"].to_numpy(np.int64),
            "source_id": oracle["source_id"].to_numpy(np.int64),
            "angDist": oracle["_dist_arcsec"].to_numpy(np.float64),
        }
    ).sort_values(["id", "source_id"], ignore_index=True)
    got = _pairs(ours)
    assert len(got) > 250
    pd.testing.assert_frame_equal(got[["id", "source_id"]], expected[["id", "source_id"]])
    np.testing.assert_allclose(got["angDist"], expected["angDist"], rtol=0, atol=1e-6)


def test_best_keeps_the_nearest_as_lsdb_does(
    our_hats: Path, lsdb_hats: Path, batch: pd.DataFrame
) -> None:
    import lsdb

    spec = CatalogSpec("c", ("source_id",), RADIUS_ARCSEC, "best")
    ours = _pairs(LocalCatalogIndex.open(our_hats).crossmatch(batch, spec))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        oracle = lsdb.crossmatch(
            batch, lsdb.open_catalog(lsdb_hats), ra_column="ra", dec_column="dec",
            radius_arcsec=RADIUS_ARCSEC, n_neighbors=1, suffixes=("", "_cat"),
            suffix_method="overlapping_columns",
        ).compute()  # fmt: skip
    assert sorted(zip(oracle["id"].tolist(), oracle["source_id"].tolist(), strict=True)) == list(
        zip(ours["id"].tolist(), ours["source_id"].tolist(), strict=True)
    )


def test_a_directory_without_properties_or_partitions_is_refused(
    our_hats: Path, tmp_path: Path
) -> None:
    with pytest.raises(HatsFormatError, match="no `properties` file"):
        open_hats_catalog(tmp_path)
    (tmp_path / "properties").write_text((our_hats / "properties").read_text())
    with pytest.raises(HatsFormatError, match="no partition info"):
        open_hats_catalog(tmp_path)


def test_opening_a_catalog_leaves_hats_out_of_the_process(our_hats: Path, tmp_path: Path) -> None:
    """hats and what it brings (numba, mocpy, matplotlib) live in the metadata helper only,
    not in the process that matches (a worker's); the helper's refusals arrive as they are.
    (This test process has hats loaded, conftest.py, so it reads metadata itself.)"""
    broken = tmp_path / "broken"
    shutil.copytree(our_hats, broken)
    for name in ("properties", "hats.properties"):
        text = (broken / name).read_text()
        (broken / name).write_text(text.replace("hats_col_dec=dec", "hats_col_dec=DEJ2000"))
    heavy = ("hats", "numba", "mocpy", "matplotlib")
    script = (
        "import sys\n"
        "from xmatch_pipeline.match.local.hats_catalog import HatsFormatError\n"
        "from xmatch_pipeline.match.local.index import LocalCatalogIndex\n"
        f"index = LocalCatalogIndex.open({str(our_hats)!r})\n"
        "try:\n"
        f"    LocalCatalogIndex.open({str(broken)!r})\n"
        "except HatsFormatError as error:\n"
        "    print(error)\n"
        f"print(len(index.catalog.orders), [m for m in {heavy!r} if m in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    refusal, summary = done.stdout.strip().splitlines()
    assert refusal == f"{broken}: column 'DEJ2000' named by properties is absent"
    partitions, imported = summary.split(maxsplit=1)
    assert int(partitions) == len(open_hats_catalog(our_hats).orders) > 1
    assert imported == "[]"


def test_a_catalog_changed_in_place_is_read_again(our_hats: Path, tmp_path: Path) -> None:
    copy = tmp_path / "c"
    shutil.copytree(our_hats, copy)
    assert open_hats_catalog(copy).ra_column == "ra"
    for name in ("properties", "hats.properties"):  # catalog build writes both names
        properties = (copy / name).read_text()
        (copy / name).write_text(properties.replace("hats_col_ra=ra", "hats_col_ra=RAJ2000"))
    with pytest.raises(HatsFormatError, match="'RAJ2000' named by properties is absent"):
        open_hats_catalog(copy)


def test_settings_name_the_variable_for_a_bad_hats_directory(
    our_hats: Path, tmp_path: Path
) -> None:
    base = {
        "CONSUMER_SERVER": "127.0.0.1:9092", "CONSUMER_TOPICS": "t", "CONSUMER_GROUP_ID": "g",
        "PRODUCER_TOPIC": "out", "DB_HOST": "localhost", "DB_USER": "u", "DB_NAME": "d",
        "XMATCH_ENGINE": "local",
    }  # fmt: skip
    with pytest.raises(SettingsError) as raised:
        load_settings({**base, "XMATCH_LOCAL_CATALOGS": f"allwise={tmp_path}"})
    assert f"XMATCH_LOCAL_CATALOGS allwise={tmp_path}" in str(raised.value)
    assert "no `properties` file" in str(raised.value)

    def entry(*columns: str) -> str:
        """An output-only catalog declared in XMATCH_CATALOGS, over this HATS copy."""
        declared = {
            "name": "c", "vizier_table": "X/1/c", "release": "test", "id_column": "source_id",
            "ra_column": "ra", "dec_column": "dec", "columns": ["source_id", "ra", "dec", *columns],
            "radius_arcsec": 1.0,
        }  # fmt: skip
        return json.dumps([declared])

    catalogs = entry("W9mag")
    with pytest.raises(SettingsError) as raised:
        load_settings(
            {**base, "XMATCH_LOCAL_CATALOGS": f"c={our_hats}", "XMATCH_CATALOGS": catalogs}
        )
    message = str(raised.value)
    assert "XMATCH_CATALOGS asks catalog 'c' for column(s) W9mag" in message
    assert f"XMATCH_LOCAL_CATALOGS c={our_hats}" in message
    good = entry("mag")
    settings = load_settings(
        {**base, "XMATCH_LOCAL_CATALOGS": f"c={our_hats}", "XMATCH_CATALOGS": good}
    )
    assert settings.local_catalog_directories == {"c": our_hats}


EDGE_ORDER = 2


@pytest.fixture(scope="module")
def edge_sky() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Positions on order-2 pixel edges in a 20° band, and sources 1-4.5″ from each of them
    in every direction (so on both sides of the edge), plus a sparse background."""
    rng = np.random.default_rng(21)
    healpix = HEALPix(nside=1 << EDGE_ORDER, order="nested")
    pixels = np.unique(healpix.lonlat_to_healpix(rng.uniform(-10, 10, 400) * u.deg,
                                                 rng.uniform(-10, 10, 400) * u.deg))  # fmt: skip
    lon, lat = healpix.boundaries_lonlat(pixels, step=6)
    edge_ra = lon.to_value(u.deg).ravel()
    edge_dec = lat.to_value(u.deg).ravel()
    keep = np.abs(edge_dec) < 10
    edge_ra, edge_dec = edge_ra[keep][:150], edge_dec[keep][:150]
    per_edge = 6
    count = len(edge_ra) * per_edge
    near = SkyCoord(
        np.repeat(edge_ra, per_edge) * u.deg, np.repeat(edge_dec, per_edge) * u.deg
    ).directional_offset_by(
        rng.uniform(0, 360, count) * u.deg, rng.uniform(1.0, 4.5, count) * u.arcsec
    )
    ra = np.r_[near.ra.deg, np.mod(rng.uniform(-10, 10, 3000), 360.0)]
    dec = np.r_[near.dec.deg, rng.uniform(-10, 10, 3000)]
    sources = pd.DataFrame(
        {"source_id": np.arange(len(ra), dtype=np.int64) + 10**15, "ra": ra, "dec": dec}
    )
    positions = pd.DataFrame(
        {"id": np.arange(len(edge_ra), dtype=np.int64), "ra": edge_ra, "dec": edge_dec}
    )
    return sources, positions


@pytest.fixture(scope="module")
def edge_hats(
    edge_sky: tuple[pd.DataFrame, pd.DataFrame], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    import lsdb

    directory = tmp_path_factory.mktemp("edges") / "c"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        catalog = lsdb.from_dataframe(
            edge_sky[0], ra_column="ra", dec_column="dec", catalog_name="c",
            lowest_order=EDGE_ORDER, highest_order=EDGE_ORDER, margin_threshold=10.0,
        )  # fmt: skip
        catalog.write_catalog(directory, progress_bar=False)
    return directory


def _brute_force(
    sources: pd.DataFrame, positions: pd.DataFrame, radius_arcsec: float
) -> list[tuple[int, int]]:
    def sky(frame: pd.DataFrame) -> SkyCoord:
        return SkyCoord(frame["ra"].to_numpy() * u.deg, frame["dec"].to_numpy() * u.deg)

    near, found, _, _ = sky(positions).search_around_sky(sky(sources), radius_arcsec * u.arcsec)
    ids, source_ids = positions["id"].to_numpy(), sources["source_id"].to_numpy()
    return sorted(zip(ids[found].tolist(), source_ids[near].tolist(), strict=True))


def test_positions_on_partition_edges_read_their_partition_and_its_margin(
    edge_sky: tuple[pd.DataFrame, pd.DataFrame], edge_hats: Path
) -> None:
    sources, positions = edge_sky
    index = LocalCatalogIndex.open(edge_hats)
    catalog = index.catalog
    assert catalog.margin is not None
    assert set(catalog.orders.tolist()) == {EDGE_ORDER}
    spec = CatalogSpec("c", ("source_id",), RADIUS_ARCSEC, "all")

    found = _pairs(index.crossmatch(positions, spec))

    expected = _brute_force(sources, positions, RADIUS_ARCSEC)
    assert len(expected) >= 6 * len(positions)
    assert list(zip(found["id"].tolist(), found["source_id"].tolist(), strict=True)) == expected
    # Read: only the partitions the positions lie in, and their margins (negative keys).
    _, own = containing_partitions(
        positions["ra"], positions["dec"], catalog.orders, catalog.pixels
    )
    own_keys = {4 * (1 << (2 * EDGE_ORDER)) + int(catalog.pixels[p]) for p in own}
    assert {key for key in index.cache.keys if key > 0} == own_keys
    assert {-key for key in index.cache.keys if key < 0} <= own_keys
    assert any(key < 0 for key in index.cache.keys)
    # The same answer without the margin (reading every partition a disk overlaps).
    without = LocalCatalogIndex(replace(catalog, margin=None), PartitionCache())
    pd.testing.assert_frame_equal(found, _pairs(without.crossmatch(positions, spec)))


def test_a_radius_wider_than_the_margin_reads_the_neighbouring_partitions(
    edge_sky: tuple[pd.DataFrame, pd.DataFrame], edge_hats: Path
) -> None:
    sources, positions = edge_sky
    index = LocalCatalogIndex.open(edge_hats)
    spec = CatalogSpec("c", ("source_id",), 15.0, "all")

    found = _pairs(index.crossmatch(positions, spec))

    expected = _brute_force(sources, positions, 15.0)
    assert list(zip(found["id"].tolist(), found["source_id"].tolist(), strict=True)) == expected
    assert not any(key < 0 for key in index.cache.keys)
