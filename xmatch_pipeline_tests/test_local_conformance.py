"""The local engine reproduces a real CDS XMatch answer (ALLWISE, best match within 1″).

The index is built from the 5,440 ALLWISE rows that CDS returned, so every CDS match is in
it; crossmatching the 5,553 request positions must find the same source for every input,
the same distance to 1 mas, and the same 113 inputs without a match.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xmatch_pipeline.match.catalog_spec import CatalogSpec
from xmatch_pipeline.match.local.index import (
    LocalCatalogIndex,
    LocalCrossmatchEngine,
    build_catalog_index,
)

ALLWISE_COLUMNS = (
    "AllWISE", "RAJ2000", "DEJ2000", "W1mag", "W2mag", "W3mag", "W4mag", "Jmag", "Hmag",
    "Kmag", "e_W1mag", "e_W2mag", "e_W3mag", "e_W4mag", "e_Jmag", "e_Hmag", "e_Kmag",
)  # fmt: skip
MAGNITUDE_COLUMNS = ALLWISE_COLUMNS[3:]
ONE_MAS_IN_ARCSEC = 1e-3


@pytest.fixture(scope="module")
def allwise_dir(shared_data_dir: Path) -> Path:
    return shared_data_dir / "allwise"


@pytest.fixture(scope="module")
def cds_answer(allwise_dir: Path) -> pd.DataFrame:
    return pd.read_csv(
        allwise_dir / "cds_response_allwise_best_1arcsec.csv",
        dtype={"id_in": str, "AllWISE": str},
        keep_default_na=False,
        na_values=[""],
    )


@pytest.fixture(scope="module")
def request_positions(allwise_dir: Path) -> pd.DataFrame:
    return pd.read_csv(allwise_dir / "cds_request_positions.csv", dtype={"id": "int64"})


@pytest.fixture(scope="module")
def allwise_index(allwise_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The CDS answer itself is the catalog: its ALLWISE columns are the 5,440 sources.
    directory = tmp_path_factory.mktemp("allwise") / "index"
    build_catalog_index(
        [allwise_dir / "cds_response_allwise_best_1arcsec.csv"],
        directory,
        id_column="AllWISE",
        ra_column="RAJ2000",
        dec_column="DEJ2000",
        name="allwise",
    )
    return directory


@pytest.fixture(scope="module")
def local_answer(allwise_index: Path, request_positions: pd.DataFrame) -> pd.DataFrame:
    engine = LocalCrossmatchEngine({"allwise": allwise_index})
    return engine.crossmatch(
        request_positions, CatalogSpec("allwise", ALLWISE_COLUMNS, 1.0, "best")
    )


def test_inputs_are_the_real_exchange(
    request_positions: pd.DataFrame, cds_answer: pd.DataFrame
) -> None:
    assert len(request_positions) == 5553
    assert len(cds_answer) == 5440
    assert cds_answer["e_W4mag"].isna().sum() == 584


def test_same_allwise_source_for_every_input(
    local_answer: pd.DataFrame, cds_answer: pd.DataFrame
) -> None:
    assert list(local_answer.columns) == ["id", "angDist", *ALLWISE_COLUMNS]
    assert local_answer["id"].is_unique
    local = dict(zip(local_answer["id"].astype(str), local_answer["AllWISE"], strict=True))
    cds = dict(zip(cds_answer["id_in"], cds_answer["AllWISE"], strict=True))
    assert local == cds


def test_distances_agree_within_one_mas(
    local_answer: pd.DataFrame, cds_answer: pd.DataFrame
) -> None:
    local = local_answer.assign(key=local_answer["id"].astype(str)).set_index("key")["angDist"]
    cds = cds_answer.set_index("id_in")["angDist"]
    difference = (local - cds.reindex(local.index)).abs()
    assert difference.max() < ONE_MAS_IN_ARCSEC
    assert local.dtype == np.float64


def test_same_113_unmatched(
    local_answer: pd.DataFrame, cds_answer: pd.DataFrame, request_positions: pd.DataFrame
) -> None:
    requested = set(request_positions["id"].astype(str))
    local_unmatched = requested - set(local_answer["id"].astype(str))
    cds_unmatched = requested - set(cds_answer["id_in"])
    assert len(cds_unmatched) == 113
    assert local_unmatched == cds_unmatched


def test_ids_beyond_double_precision_stay_exact(
    local_answer: pd.DataFrame, allwise_dir: Path
) -> None:
    as_text = pd.read_csv(allwise_dir / "cds_request_positions.csv", dtype={"id": str})["id"]
    assert local_answer["id"].dtype == np.int64
    assert set(local_answer["id"].astype(str)) <= set(as_text)
    # 18-digit ids: far beyond 2**53, so any trip through a double would change them.
    assert (local_answer["id"] > 2**53).all()


def test_catalog_values_and_missing_magnitudes(
    local_answer: pd.DataFrame, cds_answer: pd.DataFrame
) -> None:
    local = local_answer.assign(key=local_answer["id"].astype(str)).set_index("key")
    cds = cds_answer.set_index("id_in").reindex(local.index)
    for column in ("RAJ2000", "DEJ2000", *MAGNITUDE_COLUMNS):
        assert str(local[column].dtype) == "Float64"
        np.testing.assert_array_equal(local[column].isna(), cds[column].isna())
        present = local[column].notna()
        np.testing.assert_array_equal(
            local.loc[present, column].to_numpy(np.float64), cds.loc[present, column]
        )
    missing_w4_error = local["e_W4mag"][local["e_W4mag"].isna()]
    assert len(missing_w4_error) == 584
    assert all(value is pd.NA for value in missing_w4_error)
    assert str(local["AllWISE"].dtype) == "string"


def test_all_selection_contains_the_best(
    allwise_index: Path, request_positions: pd.DataFrame, local_answer: pd.DataFrame
) -> None:
    index = LocalCatalogIndex.open(allwise_index)
    every = index.crossmatch(request_positions, CatalogSpec("allwise", ("AllWISE",), 1.0, "all"))
    assert len(every) >= len(local_answer)
    first = every.drop_duplicates("id", keep="first").reset_index(drop=True)
    pd.testing.assert_series_equal(first["AllWISE"], local_answer["AllWISE"])
