"""Reading a catalog's rows in chunks from CSV or Parquet, with types that never lose ids.

A catalog such as ALLWISE (747 M rows) never fits in memory, so rows arrive as Arrow record
batches. The id column must stay exact: CSV ids are read as text and kept as int64 only
when every sampled value is an integer that fits, so ``J124131.46+260233.6`` stays a string
and a 19-digit integer never passes through a double.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

PARQUET_MAGIC = b"PAR1"
#: The CSV sample from which column types are inferred; later blocks must fit those types.
CSV_SAMPLE_BYTES = 32 << 20
_INTEGER_TEXT = re.compile(r"^-?[0-9]+$")
_INT64_MAX = (1 << 63) - 1


class CatalogInputError(ValueError):
    """An input file cannot be read as a catalog; the message names the file."""


def is_parquet(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(4) == PARQUET_MAGIC


def read_batches(
    path: Path, *, id_column: str, coordinate_columns: tuple[str, str], chunk_rows: int
) -> Iterator[pa.RecordBatch]:
    """Record batches of at most about ``chunk_rows`` rows from a CSV or Parquet file."""
    try:
        parquet = is_parquet(path)
    except OSError as error:
        raise CatalogInputError(f"cannot read {path}: {error}") from error
    if parquet:
        yield from _parquet_batches(path, id_column, coordinate_columns, chunk_rows)
    else:
        yield from _csv_batches(path, id_column, coordinate_columns, chunk_rows)


def _require_columns(path: Path, available: list[str], required: list[str]) -> None:
    missing = [name for name in required if name not in available]
    if missing:
        raise CatalogInputError(
            f"{path}: column(s) {', '.join(missing)} not found; the file has {', '.join(available)}"
        )


def _check_id_type(path: Path, id_column: str, id_type: pa.DataType) -> None:
    if not (
        pa.types.is_integer(id_type)
        or pa.types.is_string(id_type)
        or pa.types.is_large_string(id_type)
    ):
        raise CatalogInputError(
            f"{path}: id column {id_column!r} has type {id_type}; ids must be integers or "
            "strings (a floating-point id loses digits)"
        )


def _parquet_batches(
    path: Path, id_column: str, coordinate_columns: tuple[str, str], chunk_rows: int
) -> Iterator[pa.RecordBatch]:
    try:
        parquet_file = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as error:
        raise CatalogInputError(f"cannot read Parquet file {path}: {error}") from error
    schema = parquet_file.schema_arrow
    _require_columns(path, schema.names, [id_column, *coordinate_columns])
    _check_id_type(path, id_column, schema.field(id_column).type)
    for name in coordinate_columns:
        coordinate_type = schema.field(name).type
        if not (pa.types.is_floating(coordinate_type) or pa.types.is_integer(coordinate_type)):
            raise CatalogInputError(
                f"{path}: coordinate column {name!r} has type {coordinate_type}, not a number"
            )
    try:
        yield from parquet_file.iter_batches(batch_size=chunk_rows)
    except (OSError, pa.ArrowException) as error:
        raise CatalogInputError(f"cannot read Parquet file {path}: {error}") from error


def _csv_batches(
    path: Path, id_column: str, coordinate_columns: tuple[str, str], chunk_rows: int
) -> Iterator[pa.RecordBatch]:
    column_types = _csv_column_types(path, id_column, coordinate_columns)
    # Arrow splits CSV by bytes, not rows: aim at chunk_rows for a typical ~100-byte row.
    block_bytes = max(1 << 20, min(chunk_rows * 100, 1 << 30))
    try:
        reader = pa_csv.open_csv(
            path,
            read_options=pa_csv.ReadOptions(block_size=block_bytes),
            convert_options=pa_csv.ConvertOptions(column_types=column_types),
        )
        yield from reader
    except (OSError, pa.ArrowException) as error:
        raise CatalogInputError(
            f"cannot read CSV file {path}: {error} (column types were inferred from the "
            f"first {CSV_SAMPLE_BYTES >> 20} MB; a later value does not fit them)"
        ) from error


def _csv_column_types(
    path: Path, id_column: str, coordinate_columns: tuple[str, str]
) -> dict[str, pa.DataType]:
    """Column types from a sample: ids as int64 or text, coordinates as float64."""
    try:
        sample_reader = pa_csv.open_csv(
            path,
            read_options=pa_csv.ReadOptions(block_size=CSV_SAMPLE_BYTES),
            convert_options=pa_csv.ConvertOptions(column_types={id_column: pa.string()}),
        )
        sample = sample_reader.read_next_batch()
    except StopIteration:
        raise CatalogInputError(f"{path}: the CSV file has a header but no rows") from None
    except (OSError, pa.ArrowException) as error:
        raise CatalogInputError(f"cannot read CSV file {path}: {error}") from error
    _require_columns(path, sample.schema.names, [id_column, *coordinate_columns])
    types: dict[str, pa.DataType] = {}
    for field in sample.schema:
        if field.name == id_column:
            types[field.name] = _id_type(sample.column(id_column))
        elif field.name in coordinate_columns:
            types[field.name] = pa.float64()
        elif pa.types.is_null(field.type):
            types[field.name] = pa.string()  # empty throughout the sample: keep text
        else:
            types[field.name] = field.type
    return types


def _id_type(ids: pa.Array) -> pa.DataType:
    values = [value for value in ids.to_pylist() if value is not None]
    if values and all(
        _INTEGER_TEXT.match(value) and abs(int(value)) <= _INT64_MAX for value in values
    ):
        return pa.int64()
    return pa.string()
