"""Local engine units: distances, partition covering, ties, lazy loading, building, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.coordinates import SkyCoord
from typer.testing import CliRunner

from xmatch_pipeline.cli.catalog import app as catalog_cli
from xmatch_pipeline.match.catalog_spec import CatalogSpec
from xmatch_pipeline.match.crossmatch_engine import CrossmatchEngine, CrossmatchError
from xmatch_pipeline.match.local.hats_catalog import HatsFormatError, partition_path
from xmatch_pipeline.match.local.healpix_partitions import covering_partitions, pixels_of
from xmatch_pipeline.match.local.index import (
    CatalogBuildError,
    LocalCatalogIndex,
    LocalCrossmatchEngine,
    build_catalog_index,
)
from xmatch_pipeline.match.local.partition_cache import LoadedPartition, PartitionCache
from xmatch_pipeline.match.sky_geometry import chord_length, separation_arcsec, unit_vectors

BIG_IDS = [1234567890123456789, 9223372036854775806, 9007199254740993]  # none fit a double


def _write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _build(tmp_path: Path, frame: pd.DataFrame, **options) -> LocalCatalogIndex:
    source = tmp_path / "catalog.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), source)
    directory = tmp_path / "index"
    build_catalog_index(
        [source], directory, id_column="source_id", ra_column="ra", dec_column="dec", **options
    )
    return LocalCatalogIndex.open(directory)


def _positions(ids, ra, dec) -> pd.DataFrame:
    return pd.DataFrame({"id": ids, "ra": np.asarray(ra, float), "dec": np.asarray(dec, float)})


# --- distances ---------------------------------------------------------------------------


def test_separation_agrees_with_astropy_at_every_scale() -> None:
    rng = np.random.default_rng(1)
    count = 2000
    ra1 = rng.uniform(0, 360, count)
    dec1 = np.r_[rng.uniform(-90, 90, count - 4), 90.0, -90.0, 89.9999999, -89.99999]
    scales_deg = 10.0 ** rng.uniform(-10, 2.2, count)  # 0.36 µas to ~160°
    first = SkyCoord(ra1 * u.deg, dec1 * u.deg)
    second = first.directional_offset_by(rng.uniform(0, 360, count) * u.deg, scales_deg * u.deg)
    ra2, dec2 = second.ra.deg, second.dec.deg
    expected = first.separation(second).arcsec
    ours = separation_arcsec(ra1, dec1, ra2, dec2)
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(separation_arcsec(ra2, dec2, ra1, dec1), ours, rtol=1e-12, atol=1e-9)


def test_separation_across_ra_zero_and_at_the_pole() -> None:
    # 0.36 arcsec either side of RA 0 on the equator: 0.72 arcsec apart, not 360°.
    assert separation_arcsec(359.9999, 0.0, 0.0001, 0.0) == pytest.approx(0.72, abs=1e-9)
    # Two points at the pole are the same point, whatever their RA.
    assert separation_arcsec(10.0, 90.0, 250.0, 90.0) == pytest.approx(0.0, abs=1e-9)
    # A milliarcsecond near the pole keeps its digits.
    near_pole = separation_arcsec(0.0, 89.99999, 0.0, 89.99999 + 1e-3 / 3600)
    assert near_pole == pytest.approx(1e-3, rel=1e-7)


def test_unit_vectors_and_chord() -> None:
    vectors = unit_vectors([0.0, 90.0, 123.4], [0.0, 0.0, -90.0])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0)
    np.testing.assert_allclose(vectors[0], [1.0, 0.0, 0.0])
    # The chord of a 180-arcsec angle is the distance between the two unit vectors.
    pair = unit_vectors([10.0, 10.0], [0.0, 180.0 / 3600.0])
    assert np.linalg.norm(pair[0] - pair[1]) == pytest.approx(chord_length(180.0), rel=1e-12)


# --- partitions a query touches ---------------------------------------------------------


def _mixed_order_partitions(orders: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """A whole-sky tiling where base pixel b is split down to order ``orders[b % len]``."""
    partitions = []
    for base in range(12):
        order = orders[base % len(orders)]
        children = 1 << (2 * order)
        partitions += [(order, base * children + child) for child in range(children)]
    partitions.sort()
    return (np.array([o for o, _ in partitions], np.int64),
            np.array([p for _, p in partitions], np.int64))  # fmt: skip


@pytest.mark.parametrize("partition_orders", [[0], [3], [5], [8], [0, 2, 5], [1, 4]])
@pytest.mark.parametrize("radius_arcsec", [1.0, 180.0])
def test_covering_partitions_cover_the_whole_disk(
    partition_orders: list[int], radius_arcsec: float
) -> None:
    orders, pixels = _mixed_order_partitions(partition_orders)
    rng = np.random.default_rng(len(orders))
    count = 400
    ra = rng.uniform(0, 360, count)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, count)))
    dec[:100] = np.r_[90 - rng.uniform(0, 1, 50), -90 + rng.uniform(0, 1, 50)]  # near poles
    ra[100:150] = np.mod(rng.normal(0, 0.01, 50), 360)  # across RA 0
    position_index, partition_index = covering_partitions(ra, dec, radius_arcsec, orders, pixels)
    touched = set(zip(position_index.tolist(), partition_index.tolist(), strict=True))
    assert len(touched) == len(position_index)  # unique pairs
    assert np.all(np.diff(partition_index) >= 0)

    def holding(ra_deg: np.ndarray, dec_deg: np.ndarray) -> set[tuple[int, int]]:
        """(row, index of the partition holding the point), found by brute force."""
        index_of = {
            (int(o), int(p)): i for i, (o, p) in enumerate(zip(orders, pixels, strict=True))
        }
        found = set()
        for order in np.unique(orders):
            for row, pixel in enumerate(pixels_of(ra_deg, dec_deg, int(order))):
                if (int(order), int(pixel)) in index_of:
                    found.add((row, index_of[int(order), int(pixel)]))
        return found

    centres = SkyCoord(ra * u.deg, dec * u.deg)
    for angle in np.arange(0.0, 360.0, 360.0 / 48):
        edge = centres.directional_offset_by(angle * u.deg, radius_arcsec * u.arcsec)
        assert holding(edge.ra.deg, edge.dec.deg) <= touched
    assert holding(ra, dec) <= touched


def test_sky_without_partitions_is_not_touched() -> None:
    from astropy_healpix import HEALPix

    orders, pixels = np.array([2, 2], np.int64), np.array([10, 11], np.int64)
    centre = HEALPix(nside=4, order="nested").healpix_to_lonlat([11])
    position_index, partition_index = covering_partitions(
        [180.0, centre[0].deg[0]], [0.0, centre[1].deg[0]], 1.0, orders, pixels
    )
    assert position_index.tolist() == [1]
    assert partition_index.tolist() == [1]


# --- crossmatch behaviour ----------------------------------------------------------------


def test_ties_are_broken_by_catalog_id(tmp_path: Path) -> None:
    catalog = pd.DataFrame(
        {"source_id": [30, 10, 20, 40], "ra": [10.0, 10.0, 10.0, 10.0001],
         "dec": [5.0, 5.0, 5.0, 5.0], "mag": [3.0, 1.0, 2.0, 4.0]}
    )  # fmt: skip
    index = _build(tmp_path, catalog)
    positions = _positions([7], [10.0 + 0.1 / 3600], [5.0])
    best = index.crossmatch(positions, CatalogSpec("c", ("source_id", "mag"), 1.0, "best"))
    assert best["source_id"].tolist() == [10]
    every = index.crossmatch(positions, CatalogSpec("c", ("source_id", "mag"), 1.0, "all"))
    assert every["source_id"].tolist() == [10, 20, 30, 40]
    assert every["mag"].tolist() == [1.0, 2.0, 3.0, 4.0]


def test_string_ids_tie_break_and_survive(tmp_path: Path) -> None:
    source = _write_csv(
        tmp_path / "wise.csv",
        "AllWISE,RA,DE,W1\nJ124131.46+260233.6,190.5,26.0,10.5\nJ000000.00+000000.0,190.5,26.0,\n",
    )
    build_catalog_index([source], tmp_path / "idx", id_column="AllWISE", ra_column="RA",
                        dec_column="DE")  # fmt: skip
    index = LocalCatalogIndex.open(tmp_path / "idx")
    found = index.crossmatch(
        _positions(["a"], [190.5], [26.0]), CatalogSpec("w", ("AllWISE", "W1"))
    )
    assert found["AllWISE"].tolist() == ["J000000.00+000000.0"]
    assert found["W1"].iloc[0] is pd.NA
    assert str(found["AllWISE"].dtype) == "string"
    assert found["id"].tolist() == ["a"]


def test_only_touched_partitions_are_read_and_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(3)
    count = 20000
    catalog = pd.DataFrame(
        {
            "source_id": np.arange(count, dtype=np.int64),
            "ra": rng.uniform(0, 360, count),
            "dec": np.degrees(np.arcsin(rng.uniform(-1, 1, count))),
            "mag": rng.normal(18, 1, count),
            "flag": rng.integers(0, 5, count),
        }
    )
    index = _build(tmp_path, catalog, partition_order=2)
    reads: list[tuple[str, tuple[str, ...]]] = []

    class RecordingParquetFile(pq.ParquetFile):  # type: ignore[misc]
        def __init__(self, source, *args, **kwargs):
            self.file_name = Path(source).name
            super().__init__(source, *args, **kwargs)

        def read(self, columns=None, *args, **kwargs):
            reads.append((self.file_name, tuple(columns or ())))
            return super().read(columns, *args, **kwargs)

    monkeypatch.setattr(pq, "ParquetFile", RecordingParquetFile)
    # A pixel's centre: far from every edge, so only that partition is read.
    centre_pixel = 77
    from astropy_healpix import HEALPix

    centre = HEALPix(nside=4, order="nested").healpix_to_lonlat([centre_pixel])
    ra, dec = centre[0].deg[0], centre[1].deg[0]
    positions = _positions([1, 2], [ra, ra + 0.01], [dec, dec])
    spec = CatalogSpec("c", ("mag",), 180.0, "all")
    index.crossmatch(positions, spec)
    assert [name for name, _ in reads] == [partition_path(Path(), 2, centre_pixel).name]
    assert set(reads[0][1]) == {"source_id", "ra", "dec", "mag"}  # only the columns asked
    # Same sky again: served from the cache.
    index.crossmatch(positions, spec)
    assert len(reads) == 1
    # A new column: only that column is read, from the same file.
    index.crossmatch(positions, CatalogSpec("c", ("mag", "flag"), 180.0, "all"))
    assert reads[1:] == [(partition_path(Path(), 2, centre_pixel).name, ("flag",))]
    # The north pole is the corner of four partitions: all four are read.
    reads.clear()
    index.crossmatch(_positions([3], [0.0], [90.0]), spec)
    assert sorted(name for name, _ in reads) == sorted(
        partition_path(Path(), 2, pixel).name for pixel in (15, 31, 47, 63)
    )


def test_partition_cache_evicts_least_recently_used() -> None:
    def partition(pixel: int) -> LoadedPartition:
        from scipy.spatial import cKDTree

        vectors = unit_vectors(np.zeros(100), np.zeros(100))
        return LoadedPartition(pixel, pa.table({"x": np.zeros(100)}), vectors, cKDTree(vectors))

    size = partition(0).nbytes
    cache = PartitionCache(max_bytes=2 * size)
    cache.put(partition(1))
    cache.put(partition(2))
    assert cache.get(1) is not None  # 1 is now the most recent
    cache.put(partition(3))
    assert cache.get(2) is None
    assert cache.get(1) is not None
    assert cache.get(3) is not None
    assert cache.cached_bytes <= 2 * size


def test_empty_answer_keeps_the_contract_dtypes(tmp_path: Path) -> None:
    index = _build(
        tmp_path, pd.DataFrame({"source_id": [1], "ra": [0.0], "dec": [0.0], "mag": [1.5]})
    )
    found = index.crossmatch(
        _positions([1], [180.0], [0.0]), CatalogSpec("c", ("source_id", "mag"))
    )
    assert found.empty
    assert list(found.columns) == ["id", "angDist", "source_id", "mag"]
    assert [str(dtype) for dtype in found.dtypes] == ["int64", "float64", "Int64", "Float64"]
    nothing = index.crossmatch(_positions([], [], []), CatalogSpec("c", ("mag",)))
    assert list(nothing.columns) == ["id", "angDist", "mag"]


def test_nan_in_a_catalog_column_comes_back_as_na(tmp_path: Path) -> None:
    index = _build(
        tmp_path,
        pd.DataFrame({"source_id": [1, 2], "ra": [1.0, 2.0], "dec": [0.0, 0.0],
                      "mag": np.array([np.nan, 1.0], np.float32)}),
    )  # fmt: skip
    found = index.crossmatch(_positions([5, 6], [1.0, 2.0], [0.0, 0.0]), CatalogSpec("c", ("mag",)))
    assert found["mag"].iloc[0] is pd.NA
    assert found["mag"].iloc[1] == 1.0
    assert str(found["mag"].dtype) == "Float64"


def test_engine_routes_by_name_and_rejects_bad_requests(tmp_path: Path) -> None:
    _build(tmp_path, pd.DataFrame({"source_id": BIG_IDS, "ra": [1.0, 2.0, 3.0],
                                   "dec": [0.0, 0.0, 0.0]}))  # fmt: skip
    engine: CrossmatchEngine = LocalCrossmatchEngine({"mine": tmp_path / "index"})
    found = engine.crossmatch(
        _positions(BIG_IDS[::-1], [3.0, 2.0, 1.0], [0.0, 0.0, 0.0]),
        CatalogSpec("mine", ("source_id",)),
    )
    assert found["id"].tolist() == BIG_IDS[::-1]
    assert found["source_id"].tolist() == BIG_IDS[::-1]
    with pytest.raises(CrossmatchError, match="no local index for catalog 'other'"):
        engine.crossmatch(_positions([1], [1.0], [0.0]), CatalogSpec("other", ("source_id",)))
    with pytest.raises(CrossmatchError, match=r"no column\(s\) W9mag"):
        engine.crossmatch(_positions([1], [1.0], [0.0]), CatalogSpec("mine", ("W9mag",)))
    with pytest.raises(CrossmatchError, match="1 row"):
        engine.crossmatch(_positions([1], [np.nan], [0.0]), CatalogSpec("mine", ("source_id",)))
    with pytest.raises(CrossmatchError, match="lack column"):
        engine.crossmatch(pd.DataFrame({"id": [1]}), CatalogSpec("mine", ("source_id",)))
    with pytest.raises(CrossmatchError, match="not a directory holding a HATS catalog"):
        LocalCrossmatchEngine({"missing": tmp_path / "nowhere"})
    with pytest.raises(HatsFormatError, match="no `properties` file"):
        LocalCatalogIndex.open(tmp_path)


# --- building -----------------------------------------------------------------------------


def test_csv_and_parquet_build_the_same_index(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    count = 3000
    frame = pd.DataFrame(
        {
            "source_id": np.r_[BIG_IDS, rng.integers(0, 2**62, count - 3)].astype(np.int64),
            "ra": rng.uniform(0, 360, count),
            "dec": rng.uniform(-90, 90, count),
            "mag": np.where(rng.uniform(size=count) < 0.2, np.nan, rng.normal(18, 1, count)),
        }
    )
    csv_source = tmp_path / "catalog.csv"
    frame.to_csv(csv_source, index=False)
    parquet_source = tmp_path / "catalog.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), parquet_source)
    options: dict[str, Any] = {"id_column": "source_id", "ra_column": "ra", "dec_column": "dec"}
    from_csv = build_catalog_index([csv_source], tmp_path / "from_csv", **options, chunk_rows=500)
    from_parquet = build_catalog_index([parquet_source], tmp_path / "from_parquet", **options,
                                       partition_order=1, chunk_rows=700)  # fmt: skip
    assert from_csv.row_count == from_parquet.row_count == count
    assert from_csv.columns == ("source_id", "ra", "dec", "mag")
    positions = _positions(np.arange(count), frame["ra"], frame["dec"])
    spec = CatalogSpec("c", ("source_id", "ra", "dec", "mag"), 0.01, "best")
    answers = [
        LocalCatalogIndex.open(directory).crossmatch(positions, spec)
        for directory in (tmp_path / "from_csv", tmp_path / "from_parquet")
    ]
    pd.testing.assert_frame_equal(answers[0], answers[1])
    assert answers[0]["source_id"].tolist() == frame["source_id"].tolist()  # exact, every id
    assert (answers[0]["angDist"] == 0.0).all()
    assert answers[0]["mag"].isna().sum() == frame["mag"].isna().sum()


def test_several_inputs_make_one_catalog(tmp_path: Path) -> None:
    first = _write_csv(tmp_path / "a.csv", "id,ra,dec\n1,10.0,0.0\n2,20.0,0.0\n")
    second = _write_csv(tmp_path / "b.csv", "id,ra,dec\n3,30.0,0.0\n")
    info = build_catalog_index([first, second], tmp_path / "idx", id_column="id",
                               ra_column="ra", dec_column="dec", name="two")  # fmt: skip
    assert (info.name, info.row_count) == ("two", 3)
    index = LocalCatalogIndex.open(tmp_path / "idx")
    assert index.name == "two"
    assert index.columns == ("id", "ra", "dec")


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("1,360.0,0\n2,10,0\n", r"1 row\(s\) with ra outside \[0, 360\)"),
        ("1,10,90.5\n2,10,-91\n", r"2 row\(s\) with dec outside \[-90, 90\]"),
        ("1,,0\n2,10,0\n3,nan,4\n", r"2 row\(s\) with a missing or NaN coordinate"),
    ],
)
def test_bad_coordinates_name_the_file_and_rows(tmp_path: Path, rows: str, message: str) -> None:
    source = _write_csv(tmp_path / "bad.csv", "id,ra,dec\n" + rows)
    with pytest.raises(CatalogBuildError, match=message) as raised:
        build_catalog_index([source], tmp_path / "idx", id_column="id", ra_column="ra",
                            dec_column="dec")  # fmt: skip
    assert str(source) in str(raised.value)
    assert not (tmp_path / "idx").exists()
    assert [path.name for path in tmp_path.iterdir()] == ["bad.csv"]  # no leftovers


def test_unusable_inputs_are_refused_clearly(tmp_path: Path) -> None:
    options: dict[str, Any] = {"id_column": "id", "ra_column": "ra", "dec_column": "dec"}
    good = _write_csv(tmp_path / "good.csv", "id,ra,dec\n1,10,0\n")
    with pytest.raises(CatalogBuildError, match=r"good.csv: column\(s\) ID not found"):
        build_catalog_index([good], tmp_path / "i1", **{**options, "id_column": "ID"})
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(CatalogBuildError, match=r"garbage\.parquet"):
        build_catalog_index([garbage], tmp_path / "i2", **options)
    float_ids = tmp_path / "float_ids.parquet"
    pq.write_table(pa.table({"id": [1.0], "ra": [1.0], "dec": [1.0]}), float_ids)
    with pytest.raises(CatalogBuildError, match="floating-point id"):
        build_catalog_index([float_ids], tmp_path / "i3", **options)
    other_columns = _write_csv(tmp_path / "other.csv", "id,ra,dec,mag\n2,10,0,1\n")
    with pytest.raises(CatalogBuildError, match="differ from the first input"):
        build_catalog_index([good, other_columns], tmp_path / "i4", **options)
    build_catalog_index([good], tmp_path / "done", **options)
    with pytest.raises(CatalogBuildError, match="not empty"):
        build_catalog_index([good], tmp_path / "done", **options)


def test_catalog_build_command(tmp_path: Path) -> None:
    source = _write_csv(tmp_path / "c.csv", "oid,RAJ2000,DEJ2000\n7,10,0\n8,11,1\n")
    arguments = ["build", str(source), "--id-col", "oid", "--ra-col", "RAJ2000",
                 "--dec-col", "DEJ2000", "-o", str(tmp_path / "idx"), "--name", "mine"]  # fmt: skip
    result = CliRunner().invoke(catalog_cli, arguments)
    assert result.exit_code == 0, result.output
    assert "2 rows" in result.output
    assert LocalCatalogIndex.open(tmp_path / "idx").name == "mine"
    failed = CliRunner().invoke(
        catalog_cli,
        [*arguments[:-4], "-o", str(tmp_path / "x"), "--order", "3", "--id-col", "nope"],
    )
    assert failed.exit_code == 1
    assert "nope" in failed.output
    missing = CliRunner().invoke(
        catalog_cli, ["build", str(tmp_path / "absent.csv"), *arguments[2:]]
    )
    assert missing.exit_code == 2
    assert "absent.csv" in missing.output
