"""The crossmatch answer as a VOTable (``RESPONSEFORMAT=votable``, what astroquery asks for).

The columns and rows are the CSV answer's (``angDist``, ``col1``, the uploaded columns, the
catalog's). Types are kept: doubles as ``double`` (written with ``repr``, so they read back
exactly), 64-bit ids as ``long``, text as ``char``; a null is a masked cell, never NaN.
Uploaded columns arrive as text and are typed as CDS types them: ``long`` when every value
is an integer that fits, ``double`` when every value is a number, ``char`` otherwise.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pandas as pd

from xmatch_pipeline.devtools.cds_server.protocol import UploadTable

_INT64_MAX = (1 << 63) - 1


def format_votable_answer(
    upload: UploadTable, matches: pd.DataFrame, catalog_columns: tuple[str, ...]
) -> bytes:
    """The VOTable document of a crossmatch answer (TABLEDATA serialization)."""
    from astropy.io.votable import from_table
    from astropy.table import MaskedColumn, Table

    upload_rows = matches["id"].to_numpy(dtype=np.int64)
    table = Table()
    table["angDist"] = matches["angDist"].to_numpy(dtype=np.float64)
    table["col1"] = upload_rows
    for position, name in enumerate(upload.header):
        texts = [upload.rows[row][position] for row in upload_rows]
        table[name] = _typed_text(texts)
    for name in catalog_columns:
        values, mask = _catalog_values(matches[name])
        table[name] = MaskedColumn(values, mask=mask) if mask.any() else values
    votable = from_table(table)
    resource = votable.resources[0]
    resource.type = "results"
    field_table = resource.tables[0]
    field_table.name = "results"
    for field in field_table.fields:
        if field.datatype == "long" and field.name != "col1":
            field.values.null = _null_for(field_table.array[field.name])
    buffer = io.BytesIO()
    votable.to_xml(buffer, tabledata_format="tabledata")
    return buffer.getvalue()


def _typed_text(texts: Sequence[str]) -> object:
    """Uploaded text values as int64, float64 or text, masked where empty."""
    from astropy.table import MaskedColumn

    present = [text for text in texts if text != ""]
    mask = np.array([text == "" for text in texts], dtype=bool)
    if present and all(_is_int64(text) for text in present):
        values: np.ndarray = np.array([int(text) if text else 0 for text in texts], np.int64)
    elif present and all(_is_number(text) for text in present):
        values = np.array([float(text) if text else np.nan for text in texts], np.float64)
    else:
        values = np.array(texts, dtype=object).astype(str)
    return MaskedColumn(values, mask=mask) if mask.any() else values


def _is_int64(text: str) -> bool:
    try:
        return abs(int(text)) <= _INT64_MAX
    except ValueError:
        return False


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _catalog_values(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Values and null mask of one catalog column, in its own type (never through a float)."""
    mask = column.isna().to_numpy(dtype=bool)
    dtype = column.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return column.fillna(False).to_numpy(dtype=bool), mask
    if pd.api.types.is_integer_dtype(dtype):
        return column.fillna(0).to_numpy(dtype=np.int64), mask
    if pd.api.types.is_float_dtype(dtype):
        return column.to_numpy(dtype=np.float64, na_value=np.nan), mask
    texts = ["" if missing else str(value) for value, missing in zip(column, mask, strict=True)]
    return np.array(texts), mask


def _null_for(values: np.ndarray) -> int:
    """A ``long`` null sentinel that no real value of the column uses."""
    taken = set(np.asarray(values).tolist())
    candidate = -(1 << 63)
    while candidate in taken:
        candidate += 1
    return candidate
