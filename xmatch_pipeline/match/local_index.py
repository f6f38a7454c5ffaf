"""The local crossmatch engine: a catalog on disk, partitioned by HEALPix, matched in memory.

A batch reads only the partitions its positions can reach (``healpix_partitions``), finds
candidates with KD-trees on unit vectors within a slightly widened chord, then keeps and
orders them by the exact great-circle distance (``sky_geometry``). ``best`` keeps the
nearest match of each position, ties going to the smallest catalog id, so the answer never
depends on file or thread order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from scipy.spatial import cKDTree

from xmatch_pipeline.match.catalog_build import (
    CatalogBuildError,
    CatalogIndexInfo,
    build_catalog_index,
)
from xmatch_pipeline.match.catalog_spec import CatalogSpec
from xmatch_pipeline.match.engine import POSITION_COLUMNS, CrossmatchError
from xmatch_pipeline.match.healpix_partitions import pixel_runs, touched_partitions
from xmatch_pipeline.match.index_manifest import (
    MANIFEST_FILE,
    IndexFormatError,
    IndexManifest,
    partition_path,
)
from xmatch_pipeline.match.nullable_frames import nullable_frame
from xmatch_pipeline.match.partition_cache import (
    DEFAULT_CACHE_BYTES,
    LoadedPartition,
    PartitionCache,
)
from xmatch_pipeline.match.provenance import EngineIdentity
from xmatch_pipeline.match.sky_geometry import (
    FloatArray,
    chord_length,
    separation_arcsec,
    unit_vectors,
)

__all__ = [
    "CatalogBuildError",
    "CatalogIndexInfo",
    "LocalCatalogIndex",
    "LocalCrossmatchEngine",
    "build_catalog_index",
]

OUTPUT_COLUMNS = ("id", "angDist")
#: The KD-tree search is widened by this relative margin so rounding in the chord never
#: drops a pair that the exact distance keeps.
_CHORD_MARGIN = 1e-9


class LocalCatalogIndex:
    """One catalog index on disk (see ``catalog_build``), with a cache of loaded partitions."""

    def __init__(
        self,
        directory: Path,
        manifest: IndexManifest,
        cache: PartitionCache,
        build_id: str | None = None,
    ) -> None:
        self.directory = directory
        self.manifest = manifest
        self._cache = cache
        self.build_id = build_id or index_build_id(directory)

    @classmethod
    def open(cls, directory: Path, *, cache_bytes: int = DEFAULT_CACHE_BYTES) -> LocalCatalogIndex:
        """Read the manifest only; partitions are read when a batch needs them."""
        directory = Path(directory)
        return cls(directory, IndexManifest.read(directory), PartitionCache(cache_bytes))

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def cache(self) -> PartitionCache:
        """The loaded partitions, kept for the index's life (warm across runs)."""
        return self._cache

    @property
    def columns(self) -> tuple[str, ...]:
        return self.manifest.columns

    def crossmatch(self, positions: pd.DataFrame, catalog: CatalogSpec) -> pd.DataFrame:
        """Matches of ``positions`` within ``catalog.radius_arcsec`` (engine contract)."""
        self._check_requested_columns(catalog)
        ra, dec = _position_coordinates(positions)
        manifest = self.manifest
        needed = list(
            dict.fromkeys(
                [manifest.id_column, manifest.ra_column, manifest.dec_column, *catalog.columns]
            )
        )
        position_index, pixels = touched_partitions(
            ra, dec, catalog.radius_arcsec, manifest.partition_order
        )
        stored = np.isin(pixels, np.fromiter(manifest.pixel_rows, dtype=np.int64))
        position_index, pixels = position_index[stored], pixels[stored]
        vectors = unit_vectors(ra, dec)
        chord = chord_length(catalog.radius_arcsec) * (1.0 + _CHORD_MARGIN)
        matched_positions: list[np.ndarray] = []
        matched_rows: list[pa.Table] = []
        for pixel, start, end in pixel_runs(pixels):
            partition = self._partition(pixel, needed)
            subset = position_index[start:end]
            pairs = partition.tree.sparse_distance_matrix(
                cKDTree(vectors[subset]), chord, output_type="ndarray"
            )
            if len(pairs):
                matched_positions.append(subset[pairs["j"]])
                matched_rows.append(partition.table.select(needed).take(pairs["i"]))
        if not matched_rows:
            empty = self._empty_table(needed)
            return _matches_frame(
                positions, np.empty(0, np.int64), np.empty(0), empty, catalog.columns
            )
        candidates = pa.concat_tables(matched_rows)
        candidate_positions = np.concatenate(matched_positions)
        distances = separation_arcsec(
            ra[candidate_positions],
            dec[candidate_positions],
            candidates.column(manifest.ra_column).to_numpy(),
            candidates.column(manifest.dec_column).to_numpy(),
        )
        ordered = _order_matches(
            candidate_positions,
            distances,
            candidates.column(manifest.id_column),
            catalog.radius_arcsec,
            best=catalog.selection == "best",
        )
        return _matches_frame(
            positions,
            candidate_positions[ordered],
            distances[ordered],
            candidates.take(ordered),
            catalog.columns,
        )

    def _check_requested_columns(self, catalog: CatalogSpec) -> None:
        unknown = [column for column in catalog.columns if column not in self.columns]
        if unknown:
            raise CrossmatchError(
                f"catalog {self.name!r} ({self.directory}) has no column(s) "
                f"{', '.join(unknown)}; it has {', '.join(self.columns)}"
            )
        clashing = [column for column in catalog.columns if column in OUTPUT_COLUMNS]
        if clashing or len(set(catalog.columns)) != len(catalog.columns):
            raise CrossmatchError(
                f"catalog {self.name!r}: requested columns {catalog.columns} repeat a column "
                f"or use a reserved output name ({', '.join(OUTPUT_COLUMNS)})"
            )

    def _partition(self, pixel: int, columns: Sequence[str]) -> LoadedPartition:
        """A partition with at least ``columns`` loaded, from the cache or from disk."""
        cached = self._cache.get(pixel)
        if cached is not None and all(name in cached.table.column_names for name in columns):
            return cached
        path = partition_path(self.directory, self.manifest.partition_order, pixel)
        try:
            if cached is None:
                table = _read_columns(path, list(columns))
                vectors = unit_vectors(
                    table.column(self.manifest.ra_column).to_numpy(),
                    table.column(self.manifest.dec_column).to_numpy(),
                )
                tree = cKDTree(vectors, balanced_tree=False, compact_nodes=False)
            else:
                missing = [name for name in columns if name not in cached.table.column_names]
                extra = _read_columns(path, missing)
                table, vectors, tree = cached.table, cached.vectors, cached.tree
                for name in missing:
                    table = table.append_column(name, extra.column(name))
        except (OSError, pa.ArrowException) as error:
            raise CrossmatchError(
                f"catalog {self.name!r}: cannot read partition {path}: {error}; the index "
                "may be incomplete, rebuild it with `xmatch-pipeline catalog build`"
            ) from error
        loaded = LoadedPartition(pixel=pixel, table=table, vectors=vectors, tree=tree)
        self._cache.put(loaded)
        return loaded

    def _empty_table(self, columns: Sequence[str]) -> pa.Table:
        """No rows, but the stored column types, so empty answers have the usual dtypes."""
        if not self.manifest.pixel_rows:
            return pa.table({name: pa.array([], pa.string()) for name in columns})
        any_pixel = next(iter(self.manifest.pixel_rows))
        path = partition_path(self.directory, self.manifest.partition_order, any_pixel)
        return pq.read_schema(path).empty_table().select(list(columns))


def index_build_id(directory: Path) -> str:
    """The build id of an index: a digest of its manifest, which lists every partition and
    its row count, so a rebuilt index with other rows gets another id."""
    try:
        manifest = (Path(directory) / MANIFEST_FILE).read_bytes()
    except OSError as error:
        raise CrossmatchError(f"cannot read the manifest of index {directory}: {error}") from error
    return hashlib.sha256(manifest).hexdigest()[:16]


def _matches_frame(
    positions: pd.DataFrame,
    position_rows: np.ndarray,
    distances: FloatArray,
    rows: pa.Table,
    columns: Sequence[str],
) -> pd.DataFrame:
    """The engine contract's frame: input id, angDist, then the requested catalog columns."""
    frame = pd.DataFrame(
        {
            "id": positions["id"].iloc[position_rows].reset_index(drop=True),
            "angDist": pd.Series(distances, dtype=np.float64),
        }
    )
    catalog_frame = nullable_frame(rows.select(list(columns)))
    return pd.concat([frame, catalog_frame], axis=1)


def _read_columns(path: Path, columns: list[str]) -> pa.Table:
    # ParquetFile.read is several times cheaper per file than pq.read_table's dataset layer.
    with pq.ParquetFile(path) as parquet_file:
        return parquet_file.read(columns=columns)


def _order_matches(
    positions: np.ndarray,
    distances: FloatArray,
    catalog_ids: pa.ChunkedArray,
    radius_arcsec: float,
    *,
    best: bool,
) -> np.ndarray:
    """Indices of kept candidates, by (input row, distance, catalog id); one each for best."""
    within = np.flatnonzero(distances <= radius_arcsec)
    keys = pa.table(
        {
            "position": positions[within],
            "distance": distances[within],
            "catalog_id": catalog_ids.take(pa.array(within)),
        }
    )
    order = pc.sort_indices(
        keys,
        sort_keys=[
            ("position", "ascending"),
            ("distance", "ascending"),
            ("catalog_id", "ascending"),
        ],
    ).to_numpy()
    kept: np.ndarray = within[order]
    if best and kept.size:
        sorted_positions = positions[kept]
        kept = kept[np.r_[True, sorted_positions[1:] != sorted_positions[:-1]]]
    return kept


def _position_coordinates(positions: pd.DataFrame) -> tuple[FloatArray, FloatArray]:
    missing = [column for column in POSITION_COLUMNS if column not in positions.columns]
    if missing:
        raise CrossmatchError(
            f"positions lack column(s) {', '.join(missing)}; expected {', '.join(POSITION_COLUMNS)}"
        )
    try:
        ra = positions["ra"].to_numpy(dtype=np.float64, na_value=np.nan)
        dec = positions["dec"].to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError) as error:
        raise CrossmatchError(f"positions: ra/dec are not numbers: {error}") from error
    not_finite = int((~np.isfinite(ra) | ~np.isfinite(dec)).sum())
    with np.errstate(invalid="ignore"):
        bad_dec = int(((dec < -90.0) | (dec > 90.0)).sum())
    if not_finite or bad_dec:
        raise CrossmatchError(
            f"positions: {not_finite} row(s) with a missing or infinite ra/dec and {bad_dec} "
            "with dec outside [-90, 90]; drop or fix them before crossmatching"
        )
    return np.mod(ra, 360.0), dec


class LocalCrossmatchEngine:
    """The ``CrossmatchEngine`` over local indexes, one per catalog name."""

    def __init__(
        self,
        catalog_directories: Mapping[str, Path],
        *,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self._indexes: dict[str, LocalCatalogIndex] = {}
        for name, directory in catalog_directories.items():
            try:
                self._indexes[name] = LocalCatalogIndex.open(directory, cache_bytes=cache_bytes)
            except IndexFormatError as error:
                raise CrossmatchError(f"catalog {name!r}: {error}") from error

    def index(self, name: str) -> LocalCatalogIndex:
        try:
            return self._indexes[name]
        except KeyError:
            raise CrossmatchError(
                f"no local index for catalog {name!r}; known: {', '.join(sorted(self._indexes))}"
            ) from None

    def crossmatch(self, positions: pd.DataFrame, catalog: CatalogSpec) -> pd.DataFrame:
        return self.index(catalog.name).crossmatch(positions, catalog)

    def identity(self, catalog: CatalogSpec) -> EngineIdentity:
        return EngineIdentity("local", self.index(catalog.name).build_id)
