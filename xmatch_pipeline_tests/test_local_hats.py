"""The local engine on HATS catalogs, with LSDB's own crossmatch as the oracle.

Two HATS copies of one catalog: ours (``catalog build``, one partition order) and LSDB's
(``lsdb.from_dataframe(...).write_catalog``: a collection with mixed partition orders and a
margin cache, as published HATS catalogs are). The engine gives the same answer on both,
and that answer is LSDB's crossmatch of the same batch, pair for pair.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xmatch_pipeline.match.catalog_spec import CatalogSpec
from xmatch_pipeline.match.local.build import build_catalog_index
from xmatch_pipeline.match.local.hats_catalog import HatsFormatError, open_hats_catalog
from xmatch_pipeline.match.local.index import LocalCatalogIndex
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
