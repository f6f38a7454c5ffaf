"""Arrow tables to pandas with nullable dtypes, so a missing value is ``pd.NA``, never NaN."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

_NULLABLE_DTYPES: dict[pa.DataType, object] = {
    pa.int64(): pd.Int64Dtype(),
    pa.uint64(): pd.UInt64Dtype(),
    pa.float64(): pd.Float64Dtype(),
    pa.string(): pd.StringDtype(),
    pa.bool_(): pd.BooleanDtype(),
}


def _widened(column: pa.ChunkedArray) -> pa.ChunkedArray:
    column_type = column.type
    if pa.types.is_floating(column_type):
        as_double = column.cast(pa.float64())
        return pc.if_else(pc.is_nan(as_double), pa.scalar(None, pa.float64()), as_double)
    if pa.types.is_integer(column_type) and column_type != pa.uint64():
        return column.cast(pa.int64())
    if pa.types.is_large_string(column_type):
        return column.cast(pa.string())
    return column


def nullable_frame(table: pa.Table) -> pd.DataFrame:
    """Integers as Int64, floats as Float64 (NaN turned into NA), text as ``string``."""
    widened = pa.table([_widened(column) for column in table.columns], names=table.column_names)
    frame: pd.DataFrame = widened.to_pandas(types_mapper=_NULLABLE_DTYPES.get)
    return frame
