"""The local crossmatch engine: a HATS catalog on disk, matched in memory.

The catalog is read as it is, through ``hats_catalog`` (a copy of a published HATS catalog
or one written by ``catalog build``). A batch reads only the partitions its positions can
reach (``healpix_partitions``, partitions of any order), and of those only the columns it
asks for; loaded partitions stay in a bounded cache for the index's life. It finds
candidates with KD-trees on unit vectors within a slightly widened chord, then keeps and
orders them by the exact great-circle distance (``sky_geometry``). ``best`` keeps the
nearest match of each position, ties going to the smallest catalog id, so the answer never
depends on file or thread order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, overload

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from scipy.spatial import cKDTree

from xmatch_pipeline.match.catalog_spec import CatalogSpec
from xmatch_pipeline.match.crossmatch_engine import POSITION_COLUMNS, CrossmatchError
from xmatch_pipeline.match.local.build import (
    CatalogBuildError,
    CatalogIndexInfo,
    build_catalog_index,
)
from xmatch_pipeline.match.local.hats_catalog import (
    HatsCatalog,
    HatsFormatError,
    open_hats_catalog,
    partition_path,
)
from xmatch_pipeline.match.local.healpix_partitions import (
    containing_partitions,
    covering_partitions,
    pixel_runs,
)
from xmatch_pipeline.match.local.partition_cache import (
    DEFAULT_CACHE_BYTES,
    LoadedPartition,
    PartitionCache,
)
from xmatch_pipeline.match.nullable_frames import nullable_frame
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
    """One HATS catalog on disk, with a cache of loaded partitions."""

    def __init__(
        self, catalog: HatsCatalog, cache: PartitionCache, build_id: str | None = None
    ) -> None:
        self.catalog = catalog
        self._cache = cache
        self.build_id = build_id or index_build_id(catalog.directory)

    @classmethod
    def open(cls, directory: Path, *, cache_bytes: int = DEFAULT_CACHE_BYTES) -> LocalCatalogIndex:
        """Read the catalog's metadata only; partitions are read when a batch needs them."""
        return cls(open_hats_catalog(Path(directory)), PartitionCache(cache_bytes))

    @property
    def directory(self) -> Path:
        return self.catalog.directory

    @property
    def name(self) -> str:
        return self.catalog.name

    @property
    def cache(self) -> PartitionCache:
        """The loaded partitions, kept for the index's life (warm across runs)."""
        return self._cache

    @property
    def columns(self) -> tuple[str, ...]:
        return self.catalog.columns

    def crossmatch(self, positions: pd.DataFrame, catalog: CatalogSpec) -> pd.DataFrame:
        """Matches of ``positions`` within ``catalog.radius_arcsec`` (engine contract)."""
        self._check_requested_columns(catalog)
        ra, dec = _position_coordinates(positions)
        hats = self.catalog
        needed = list(
            dict.fromkeys(
                [hats.ra_column, hats.dec_column, *hats.tie_break_columns, *catalog.columns]
            )
        )
        position_index, partition_index, with_margin = self._partitions_to_read(
            ra, dec, catalog.radius_arcsec
        )
        vectors = unit_vectors(ra, dec)
        chord = chord_length(catalog.radius_arcsec) * (1.0 + _CHORD_MARGIN)
        matched_positions: list[np.ndarray] = []
        matched_rows: list[pa.Table] = []

        def search(loaded: LoadedPartition | None, subset: np.ndarray) -> None:
            if loaded is None or not len(subset) or not loaded.table.num_rows:
                return
            pairs = loaded.tree.sparse_distance_matrix(
                cKDTree(vectors[subset]), chord, output_type="ndarray"
            )
            if len(pairs):
                matched_positions.append(subset[pairs["j"]])
                matched_rows.append(loaded.table.select(needed).take(pairs["i"]))

        for partition, start, end in pixel_runs(partition_index):
            search(self._partition(partition, needed), position_index[start:end])
            margin_subset = position_index[start:end][with_margin[start:end]]
            if len(margin_subset):
                search(self._partition(partition, needed, margin=True), margin_subset)
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
            candidates.column(hats.ra_column).to_numpy(),
            candidates.column(hats.dec_column).to_numpy(),
        )
        ordered = _order_matches(
            candidate_positions,
            distances,
            [candidates.column(name) for name in hats.tie_break_columns],
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

    def _partitions_to_read(
        self, ra: FloatArray, dec: FloatArray, radius_arcsec: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(position, partition, also its margin) triples, sorted by partition.

        With a margin cache at least as wide as the radius, a position reads the partition
        it lies in and that partition's margin; otherwise (no margin, a wider radius, or a
        position in sky no partition covers) every partition its disk may overlap.
        """
        hats = self.catalog
        margin = hats.margin
        if margin is None or radius_arcsec > margin.threshold_arcsec:
            positions, partitions = covering_partitions(
                ra, dec, radius_arcsec, hats.orders, hats.pixels
            )
            return positions, partitions, np.zeros(len(positions), dtype=bool)
        inside, own = containing_partitions(ra, dec, hats.orders, hats.pixels)
        outside = np.setdiff1d(np.arange(len(ra), dtype=np.int64), inside)
        near, covering = covering_partitions(
            ra[outside], dec[outside], radius_arcsec, hats.orders, hats.pixels
        )
        positions = np.concatenate([inside, outside[near]])
        partitions = np.concatenate([own, covering])
        with_margin = np.concatenate([np.ones(len(inside), bool), np.zeros(len(near), bool)])
        order = np.lexsort((positions, partitions))
        return positions[order], partitions[order], with_margin[order]

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

    @overload
    def _partition(
        self, partition: int, columns: Sequence[str], *, margin: Literal[False] = False
    ) -> LoadedPartition: ...

    @overload
    def _partition(
        self, partition: int, columns: Sequence[str], *, margin: Literal[True]
    ) -> LoadedPartition | None: ...

    def _partition(
        self, partition: int, columns: Sequence[str], *, margin: bool = False
    ) -> LoadedPartition | None:
        """A partition (or its margin rows) with at least ``columns`` loaded, from the cache
        or from disk; None for a margin the partition does not have."""
        order = int(self.catalog.orders[partition])
        pixel = int(self.catalog.pixels[partition])
        # Margins share the cache, under the negated key of their partition.
        key = -_unique_pixel(order, pixel) if margin else _unique_pixel(order, pixel)
        cached = self._cache.get(key)
        if cached is not None and all(name in cached.table.column_names for name in columns):
            return cached
        read = self._read_margin if margin else self.catalog.read_partition
        try:
            if cached is None:
                table = read(order, pixel, list(columns))
                if table is None:
                    return None
                vectors = unit_vectors(
                    table.column(self.catalog.ra_column).to_numpy(),
                    table.column(self.catalog.dec_column).to_numpy(),
                )
                tree = cKDTree(vectors, balanced_tree=False, compact_nodes=False)
            else:
                missing = [name for name in columns if name not in cached.table.column_names]
                extra = read(order, pixel, missing)
                if extra is None:  # cannot be: these rows were read from it before
                    raise OSError("the partition's file disappeared")
                table, vectors, tree = cached.table, cached.vectors, cached.tree
                for name in missing:
                    table = table.append_column(name, extra.column(name))
        except (OSError, pa.ArrowException) as error:
            path = self.catalog.partition_path(order, pixel)
            margin_cache = self.catalog.margin
            if margin and margin_cache is not None:
                path = partition_path(
                    margin_cache.directory, order, pixel, margin_cache.npix_suffix
                )
            raise CrossmatchError(
                f"catalog {self.name!r}: cannot read partition {path}: {error}; the HATS "
                "catalog may be incomplete: copy it again, or rebuild it with "
                "`xmatch-pipeline catalog build`"
            ) from error
        loaded = LoadedPartition(pixel=key, table=table, vectors=vectors, tree=tree)
        self._cache.put(loaded)
        return loaded

    def _read_margin(self, order: int, pixel: int, columns: list[str]) -> pa.Table | None:
        margin = self.catalog.margin
        return None if margin is None else margin.read_partition(order, pixel, columns)

    def _empty_table(self, columns: Sequence[str]) -> pa.Table:
        """No rows, but the stored column types, so empty answers have the usual dtypes."""
        schema = self.catalog.schema
        return pa.schema([schema.field(name) for name in columns]).empty_table()


def _unique_pixel(order: int, pixel: int) -> int:
    """HEALPix's NUNIQ number: one integer for a pixel of any order."""
    return 4 * (1 << (2 * order)) + pixel


#: The HATS files that describe a catalog's content: its properties (row count, columns),
#: its partitions, and the Parquet footers of every file (rows, sizes and each column's
#: min/max per row group), so that other rows in the same partitions give another id.
BUILD_ID_FILES = ("properties", "partition_info.csv", "dataset/_metadata")


def index_build_id(directory: Path) -> str:
    """The build id of a HATS catalog: a digest of ``BUILD_ID_FILES`` (those present), so a
    catalog rebuilt with other rows or partitions gets another id, and the same rows the
    same id."""
    digest = hashlib.sha256()
    for name in BUILD_ID_FILES:
        path = Path(directory) / name
        try:
            digest.update(path.read_bytes() if path.is_file() else b"")
        except OSError as error:
            raise CrossmatchError(f"cannot read {path} of catalog {directory}: {error}") from error
    return digest.hexdigest()[:16]


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


def _order_matches(
    positions: np.ndarray,
    distances: FloatArray,
    tie_breakers: Sequence[pa.ChunkedArray],
    radius_arcsec: float,
    *,
    best: bool,
) -> np.ndarray:
    """Indices of kept candidates, by (input row, distance, catalog id); one each for best."""
    within = np.flatnonzero(distances <= radius_arcsec)
    taken = pa.array(within)
    keys = pa.table(
        {
            "position": positions[within],
            "distance": distances[within],
            **{f"tie{rank}": column.take(taken) for rank, column in enumerate(tie_breakers)},
        }
    )
    order = pc.sort_indices(
        keys,
        sort_keys=[
            ("position", "ascending"),
            ("distance", "ascending"),
            *((f"tie{rank}", "ascending") for rank in range(len(tie_breakers))),
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
            except HatsFormatError as error:
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
