"""Building a HATS catalog from CSV or Parquet files, for the local engine (and for LSDB).

The output is a plain HATS catalog (``properties``, ``partition_info.csv``,
``dataset/Norder=K/Dir=D/Npix=N.parquet`` with the ``_healpix_29`` spatial index column,
``dataset/_metadata``), the same format as the published copies the engine also reads, so
there is one format. Partitions have one order, chosen from the row count; the metadata
files are written by the ``hats`` library itself.

The build streams: rows are read in chunks, validated, tagged with their order-29 pixel and
spilled to one Arrow stream per coarse sky bucket; each bucket is then sorted and cut into
one Parquet file per partition pixel. Memory therefore holds one chunk, then one bucket
(1/192 of the sky), never the whole catalog. hats-import was not used because it needs a
dask cluster and holds no ids exactly for CSV input. The catalog is written in a temporary
directory and renamed into place at the end, so a failed build leaves nothing half-written.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as pa_ipc
import pyarrow.parquet as pq

from xmatch_pipeline.match.local.catalog_input import CatalogInputError, read_batches
from xmatch_pipeline.match.local.hats_catalog import (
    ID_COLUMN_PROPERTY,
    PARTITION_INFO_FILE,
    SPATIAL_INDEX_COLUMN,
    partition_path,
)
from xmatch_pipeline.match.local.healpix_partitions import pixel_count, pixel_runs

#: Rows are tagged with their pixel at this order (HATS' ``_healpix_29``, kept in the rows).
TAG_ORDER = 29
MAX_PARTITION_ORDER = 10
#: Spill buckets: 192 open Arrow streams, each about 1/192 of the sky.
SPILL_ORDER = 2
#: Automatic partition order: the coarsest whose mean partition holds at most this many rows
#: (ALLWISE, 747 M rows: order 5, ~61 k rows a partition; 10 M rows: order 2).
TARGET_ROWS_PER_PARTITION = 100_000
DEFAULT_CHUNK_ROWS = 1_000_000
_PIXEL_TAG = SPATIAL_INDEX_COLUMN


class CatalogBuildError(ValueError):
    """The index cannot be built; the message names the input and what to fix."""


@dataclass(frozen=True)
class CatalogIndexInfo:
    """What a finished build wrote."""

    name: str
    directory: Path
    columns: tuple[str, ...]
    row_count: int
    partition_order: int
    pixel_rows: Mapping[int, int] = field(default_factory=dict)


def build_catalog_index(
    inputs: Sequence[Path],
    output_dir: Path,
    *,
    id_column: str,
    ra_column: str,
    dec_column: str,
    name: str | None = None,
    partition_order: int | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> CatalogIndexInfo:
    """Build a HATS catalog in ``output_dir`` (which must not exist or be empty).

    ``partition_order`` None chooses the order from the row count (see
    ``TARGET_ROWS_PER_PARTITION``).
    """
    if not inputs:
        raise CatalogBuildError("no input files given")
    if partition_order is not None and not 0 <= partition_order <= MAX_PARTITION_ORDER:
        raise CatalogBuildError(
            f"partition order must be in [0, {MAX_PARTITION_ORDER}], got {partition_order}"
        )
    output_dir = Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise CatalogBuildError(
            f"output directory {output_dir} already exists and is not empty; "
            "choose a new directory or remove it"
        )
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.building-", dir=output_dir.parent))
    try:
        spill_dir = work_dir / "spill"
        spill_dir.mkdir()
        spill = _SpillWriter(spill_dir)
        try:
            for path in inputs:
                _spill_input(Path(path), spill, id_column, (ra_column, dec_column), chunk_rows)
        finally:
            spill.close()
        if spill.schema is None or spill.row_count == 0:
            raise CatalogBuildError(f"no rows in {', '.join(str(path) for path in inputs)}")
        order = (
            partition_order
            if partition_order is not None
            else automatic_partition_order(spill.row_count)
        )
        index_dir = work_dir / "index"
        index_dir.mkdir()
        pixel_rows = _write_partitions(spill, index_dir, order, id_column)
        shutil.rmtree(spill_dir)
        catalog_name = name or output_dir.name
        _write_hats_metadata(
            index_dir,
            name=catalog_name,
            order=order,
            pixel_rows=pixel_rows,
            id_column=id_column,
            ra_column=ra_column,
            dec_column=dec_column,
        )
        data_schema = spill.schema.remove(spill.schema.get_field_index(_PIXEL_TAG))
        if output_dir.exists():
            output_dir.rmdir()
        index_dir.rename(output_dir)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return CatalogIndexInfo(
        name=catalog_name,
        directory=output_dir,
        columns=tuple(data_schema.names),
        row_count=sum(pixel_rows.values()),
        partition_order=order,
        pixel_rows=pixel_rows,
    )


def _write_hats_metadata(
    directory: Path,
    *,
    name: str,
    order: int,
    pixel_rows: Mapping[int, int],
    id_column: str,
    ra_column: str,
    dec_column: str,
) -> None:
    """``partition_info.csv``, ``dataset/_metadata`` and ``properties``, written by hats."""
    from hats.catalog import PartitionInfo, TableProperties
    from hats.io import write_parquet_metadata
    from hats.pixel_math import HealpixPixel

    pixels = [HealpixPixel(order, pixel) for pixel in sorted(pixel_rows)]
    PartitionInfo.from_healpix(pixels).write_to_file(directory / PARTITION_INFO_FILE)
    write_parquet_metadata(directory)
    properties = TableProperties(
        catalog_name=name,
        catalog_type="object",
        total_rows=sum(pixel_rows.values()),
        ra_column=ra_column,
        dec_column=dec_column,
        healpix_column=SPATIAL_INDEX_COLUMN,
        healpix_order=TAG_ORDER,
        hats_max_rows=max(pixel_rows.values()),
        **{ID_COLUMN_PROPERTY: id_column},
    )
    properties.to_properties_file(directory)


def automatic_partition_order(row_count: int) -> int:
    order = 0
    while (
        order < MAX_PARTITION_ORDER and row_count / pixel_count(order) > TARGET_ROWS_PER_PARTITION
    ):
        order += 1
    return order


class _SpillWriter:
    """One Arrow stream per coarse sky bucket, so the second pass reads one bucket at a time."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.schema: pa.Schema | None = None
        self.row_count = 0
        self._writers: dict[int, pa_ipc.RecordBatchStreamWriter] = {}

    def bucket_path(self, bucket: int) -> Path:
        return self.directory / f"bucket{bucket}.arrows"

    @property
    def buckets(self) -> list[int]:
        return sorted(self._writers)

    def write(self, batch: pa.RecordBatch, tags: np.ndarray) -> None:
        buckets = tags >> (2 * (TAG_ORDER - SPILL_ORDER))
        order = np.argsort(buckets, kind="stable")
        sorted_buckets = buckets[order]
        batch = batch.take(pa.array(order))
        for bucket, start, end in pixel_runs(sorted_buckets):
            writer = self._writers.get(bucket)
            if writer is None:
                writer = pa_ipc.new_stream(str(self.bucket_path(bucket)), batch.schema)
                self._writers[bucket] = writer
            writer.write_batch(batch.slice(start, end - start))
        self.row_count += batch.num_rows

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()

    def read_bucket(self, bucket: int) -> pa.Table:
        with pa_ipc.open_stream(str(self.bucket_path(bucket))) as reader:
            return reader.read_all()


def _spill_input(
    path: Path,
    spill: _SpillWriter,
    id_column: str,
    coordinate_columns: tuple[str, str],
    chunk_rows: int,
) -> None:
    from hats.pixel_math.spatial_index import compute_spatial_index

    problems = _CoordinateProblems(path, coordinate_columns)
    rows_read = 0
    try:
        for raw_batch in read_batches(
            path,
            id_column=id_column,
            coordinate_columns=coordinate_columns,
            chunk_rows=chunk_rows,
        ):
            batch = _conform(path, raw_batch, spill.schema)
            ra, dec = (
                batch.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
                for name in coordinate_columns
            )
            null_ids = batch.column(id_column).null_count
            if null_ids:
                raise CatalogBuildError(
                    f"{path}: {null_ids} row(s) near row {rows_read + 1} have no id in "
                    f"column {id_column!r}"
                )
            problems.check(ra, dec, first_row=rows_read + 1)
            rows_read += batch.num_rows
            if not problems.found and batch.num_rows:
                tags = np.asarray(compute_spatial_index(ra, dec), dtype=np.int64)
                tagged = batch.append_column(_PIXEL_TAG, pa.array(tags, pa.int64()))
                if spill.schema is None:
                    spill.schema = tagged.schema
                spill.write(tagged, tags)
    except CatalogInputError as error:
        raise CatalogBuildError(str(error)) from error
    problems.raise_if_any()


def _conform(path: Path, batch: pa.RecordBatch, spill_schema: pa.Schema | None) -> pa.RecordBatch:
    """Later files must have the first file's columns; their values are cast to its types."""
    if spill_schema is None:
        return batch
    expected = spill_schema.remove(spill_schema.get_field_index(_PIXEL_TAG))
    if sorted(batch.schema.names) != sorted(expected.names):
        raise CatalogBuildError(
            f"{path}: columns {', '.join(batch.schema.names)} differ from the first input's "
            f"{', '.join(expected.names)}"
        )
    try:
        return pa.RecordBatch.from_arrays(
            [
                batch.column(name).cast(column.type)
                for name, column in zip(expected.names, expected, strict=True)
            ],
            schema=expected,
        )
    except pa.ArrowException as error:
        raise CatalogBuildError(
            f"{path}: values do not fit the first input's column types: {error}"
        ) from error


class _CoordinateProblems:
    """Counts bad coordinates over a whole file, so the error says how many rows to fix."""

    def __init__(self, path: Path, coordinate_columns: tuple[str, str]) -> None:
        self.path = path
        self.coordinate_columns = coordinate_columns
        self.missing = 0
        self.ra_out_of_range = 0
        self.dec_out_of_range = 0
        self.first_bad_row: int | None = None

    @property
    def found(self) -> bool:
        return self.first_bad_row is not None

    def check(self, ra: np.ndarray, dec: np.ndarray, *, first_row: int) -> None:
        missing = np.isnan(ra) | np.isnan(dec)
        with np.errstate(invalid="ignore"):
            bad_ra = ~missing & ~((ra >= 0.0) & (ra < 360.0))
            bad_dec = ~missing & ~((dec >= -90.0) & (dec <= 90.0))
        bad = missing | bad_ra | bad_dec
        self.missing += int(missing.sum())
        self.ra_out_of_range += int(bad_ra.sum())
        self.dec_out_of_range += int(bad_dec.sum())
        if self.first_bad_row is None and bad.any():
            self.first_bad_row = first_row + int(np.flatnonzero(bad)[0])

    def raise_if_any(self) -> None:
        if self.first_bad_row is None:
            return
        ra_column, dec_column = self.coordinate_columns
        parts = []
        if self.missing:
            parts.append(f"{self.missing} row(s) with a missing or NaN coordinate")
        if self.ra_out_of_range:
            parts.append(f"{self.ra_out_of_range} row(s) with {ra_column} outside [0, 360)")
        if self.dec_out_of_range:
            parts.append(f"{self.dec_out_of_range} row(s) with {dec_column} outside [-90, 90]")
        raise CatalogBuildError(
            f"{self.path}: bad coordinates: {'; '.join(parts)} (first at data row "
            f"{self.first_bad_row}); fix or drop those rows and build again"
        )


def _write_partitions(
    spill: _SpillWriter, index_dir: Path, order: int, id_column: str
) -> dict[int, int]:
    """Cut each spill bucket (or group of buckets, for orders coarser than the spill) into files."""
    pixel_rows: dict[int, int] = {}
    group_shift = 2 * max(0, SPILL_ORDER - order)
    groups: dict[int, list[int]] = {}
    for bucket in spill.buckets:
        groups.setdefault(bucket >> group_shift, []).append(bucket)
    for buckets in groups.values():
        table = pa.concat_tables(spill.read_bucket(bucket) for bucket in buckets)
        table = table.take(
            pc.sort_indices(table, sort_keys=[(_PIXEL_TAG, "ascending"), (id_column, "ascending")])
        )
        pixels = table.column(_PIXEL_TAG).to_numpy() >> (2 * (TAG_ORDER - order))
        for pixel, start, end in pixel_runs(pixels):
            path = partition_path(index_dir, order, pixel)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(
                table.slice(start, end - start),
                path,
                compression="snappy",  # decoding speed matters more than size
            )
            pixel_rows[pixel] = end - start
    return pixel_rows
