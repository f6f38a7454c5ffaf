"""What a CDS XMatch answer must be before any of it is used: the rows of the upload, within
the radius asked for, one per uploaded id under ``selection=best``.

A table that fails these checks is refused as a whole with :class:`CdsResponseError` (one
error per kind, naming the chunk, the row and what to do), never trimmed to its plausible
rows: a row beyond the radius, for an id never sent, or a second "best" row for one id
means the service answered another question than the one asked (or the answer was mixed
up on the way), so no row of that table can be trusted to be the nearest match within
the radius. The refusal is **not retried by the client**: the same request would bring
the same answer, and retrying a deterministic fault would only spend the deadline (and
CDS's patience). The run fails; the sensor runs the range again up to its attempt limit
(a transient mix-up recovers there), then the partition waits for an operator, and
nothing of the range is produced, committed or stored meanwhile.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from xmatch_pipeline.match.catalog_spec import CatalogSpec
from xmatch_pipeline.match.cds.errors import CdsResponseError
from xmatch_pipeline.match.cds.response import ANGULAR_DISTANCE_COLUMN, UPLOAD_INDEX_COLUMN
from xmatch_pipeline.match.cds.upload import UPLOAD_ID_COLUMN, UploadChunk

#: 1 mas: far above the 6-decimal rounding of CDS's ``angDist``, far below any radius used.
DISTANCE_TOLERANCE_ARCSEC = 1e-3

_WHAT_TO_DO = (
    "the service answered another request than the one sent; the run fails and the range "
    "is retried by the sensor; if it persists, report it to CDS (cds-question@unistra.fr) "
    "or use the local engine (XMATCH_ENGINE=local)"
)


def checked_source_rows(
    table: pd.DataFrame, chunk: UploadChunk, catalog: CatalogSpec, where: str
) -> np.ndarray:
    """Each answer row's position in the caller's DataFrame, once the table is checked.

    ``table`` is the raw (text) answer to ``chunk``; ``where`` names the URL and chunk.
    Raises :class:`CdsResponseError` for a table CDS could not have sent for this upload.
    """
    upload_rows = _upload_rows(table, chunk, where)
    _check_echoed_ids(table, upload_rows, chunk, where)
    _check_distances(table, upload_rows, chunk, catalog, where)
    if catalog.selection == "best":
        _check_one_row_per_id(upload_rows, chunk, where)
    return np.asarray(chunk.source_rows[upload_rows], dtype=np.int64)


def _upload_rows(table: pd.DataFrame, chunk: UploadChunk, where: str) -> np.ndarray:
    if UPLOAD_INDEX_COLUMN not in table.columns:
        raise CdsResponseError(
            f"{where}: the answer has no {UPLOAD_INDEX_COLUMN} column (the uploaded row of "
            f"each match), so no match can be attributed to an alert; {_WHAT_TO_DO}"
        )
    try:
        upload_rows = np.array([int(text) for text in table[UPLOAD_INDEX_COLUMN]], dtype=np.int64)
    except (TypeError, ValueError) as error:
        raise CdsResponseError(
            f"{where}: a {UPLOAD_INDEX_COLUMN} field is not an integer ({error}); {_WHAT_TO_DO}"
        ) from error
    outside = (upload_rows < 0) | (upload_rows >= chunk.row_count)
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        raise CdsResponseError(
            f"{where}: answer row {row + 1} has {UPLOAD_INDEX_COLUMN}={upload_rows[row]}, but "
            f"only {UPLOAD_INDEX_COLUMN} 0..{chunk.row_count - 1} were uploaded: an id never sent; "
            f"{_WHAT_TO_DO}"
        )
    return upload_rows


def _check_echoed_ids(
    table: pd.DataFrame, upload_rows: np.ndarray, chunk: UploadChunk, where: str
) -> None:
    if UPLOAD_ID_COLUMN not in table.columns:
        return  # CDS echoes the upload's columns; without them col1 alone ties a row back
    sent = set(chunk.id_texts)
    for row, (upload_row, echoed) in enumerate(
        zip(upload_rows.tolist(), table[UPLOAD_ID_COLUMN].tolist(), strict=True)
    ):
        expected = chunk.id_texts[upload_row]
        if echoed == expected:
            continue
        if echoed not in sent:
            raise CdsResponseError(
                f"{where}: answer row {row + 1} is for id {echoed!r}, which was never sent "
                f"({UPLOAD_INDEX_COLUMN}={upload_row} was uploaded as {expected!r}); "
                f"{_WHAT_TO_DO}"
            )
        raise CdsResponseError(
            f"{where}: answer row {row + 1} came back with id {echoed!r}, but its "
            f"{UPLOAD_INDEX_COLUMN}={upload_row} was uploaded as {expected!r}: the answer does "
            f"not match the upload; {_WHAT_TO_DO}"
        )


def _check_distances(
    table: pd.DataFrame,
    upload_rows: np.ndarray,
    chunk: UploadChunk,
    catalog: CatalogSpec,
    where: str,
) -> None:
    texts = table[ANGULAR_DISTANCE_COLUMN]
    if texts.isna().any():
        row = int(np.flatnonzero(texts.isna().to_numpy())[0])
        raise CdsResponseError(
            f"{where}: answer row {row + 1} has no {ANGULAR_DISTANCE_COLUMN}; {_WHAT_TO_DO}"
        )
    try:
        distances = np.array(texts.to_numpy(dtype=str), dtype=str).astype(np.float64)
    except ValueError as error:
        raise CdsResponseError(
            f"{where}: an {ANGULAR_DISTANCE_COLUMN} field is not a number ({error}); {_WHAT_TO_DO}"
        ) from error
    limit = catalog.radius_arcsec + DISTANCE_TOLERANCE_ARCSEC
    bad = ~np.isfinite(distances) | (distances < 0) | (distances > limit)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise CdsResponseError(
            f"{where}: answer row {row + 1} (id {chunk.id_texts[upload_rows[row]]!r}) has "
            f"{ANGULAR_DISTANCE_COLUMN}={texts.iloc[row]} arcsec, outside the requested radius "
            f"[0, {catalog.radius_arcsec:g}] ({int(bad.sum())} such rows); {_WHAT_TO_DO}"
        )


def _check_one_row_per_id(upload_rows: np.ndarray, chunk: UploadChunk, where: str) -> None:
    unique, counts = np.unique(upload_rows, return_counts=True)
    repeated = unique[counts > 1]
    if len(repeated):
        first = int(repeated[0])
        raise CdsResponseError(
            f"{where}: {int(counts[counts > 1].sum())} rows for {len(repeated)} ids under "
            f"selection=best, which allows one row per id (first: id "
            f"{chunk.id_texts[first]!r}, {int(counts[unique == first][0])} rows); "
            f"{_WHAT_TO_DO}"
        )
