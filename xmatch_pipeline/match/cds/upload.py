"""The tables uploaded to CDS: validated, sorted by HEALPix index, cut into chunks.

CDS asks for chunks of 10,000 to 50,000 rows sorted by HEALPix index (nested, order ~12) so
that each job touches few catalog partitions. Each chunk's CSV bytes are built once and
sent unchanged on every attempt (the original renamed columns in place, so its retries sent
a different, broken table). Upload columns are suffixed ``_in`` so they never clash with a
catalog's columns, and the id travels as text so that no id passes through a float.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass

import astropy.units as u
import numpy as np
import pandas as pd
from astropy_healpix import lonlat_to_healpix

from xmatch_pipeline.match.crossmatch_engine import POSITION_COLUMNS

UPLOAD_ID_COLUMN = "id_in"
UPLOAD_RA_COLUMN = "ra_in"
UPLOAD_DEC_COLUMN = "dec_in"
UPLOAD_COLUMNS = (UPLOAD_ID_COLUMN, UPLOAD_RA_COLUMN, UPLOAD_DEC_COLUMN)

HEALPIX_ORDER = 12
DEFAULT_CHUNK_ROWS = 50_000
#: CDS's upload limit is 100 MB (about 3 M rows); 50,000 is the top of its advised range.
MAX_CHUNK_ROWS = 50_000


def validate_positions(positions: pd.DataFrame) -> None:
    """One clear error for positions that no engine can match."""
    missing = [column for column in POSITION_COLUMNS if column not in positions.columns]
    if missing:
        raise ValueError(
            f"positions need columns {list(POSITION_COLUMNS)}; missing {missing} "
            f"(got {list(positions.columns)})"
        )
    if positions["id"].isna().any():
        raise ValueError("positions: the id column has missing values")
    for column, low, high in (("ra", -360.0, 360.0), ("dec", -90.0, 90.0)):
        try:
            values = positions[column].to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(f"positions: column {column!r} is not numeric ({error})") from error
        bad = ~np.isfinite(values) | (values < low) | (values > high)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"positions: {int(bad.sum())} {column} values outside [{low}, {high}] degrees "
                f"or not finite; first at row {first} (id {positions['id'].iloc[first]!r}): "
                f"{values[first]!r}"
            )


def healpix_indices(
    ra_deg: np.ndarray, dec_deg: np.ndarray, order: int = HEALPIX_ORDER
) -> np.ndarray:
    """Nested HEALPix indices of positions at ``order`` (nside = 2**order)."""
    indices = lonlat_to_healpix(
        np.asarray(ra_deg, dtype=np.float64) * u.deg,
        np.asarray(dec_deg, dtype=np.float64) * u.deg,
        2**order,
        order="nested",
    )
    return np.asarray(indices, dtype=np.int64)


def healpix_order(positions: pd.DataFrame, order: int = HEALPIX_ORDER) -> np.ndarray:
    """Row positions that put ``positions`` in nested HEALPix order (stable within a cell)."""
    indices = healpix_indices(
        positions["ra"].to_numpy(dtype=np.float64),
        positions["dec"].to_numpy(dtype=np.float64),
        order,
    )
    return np.argsort(indices, kind="stable")


@dataclass(frozen=True, eq=False)
class UploadChunk:
    """One chunk as uploaded: its CSV bytes and, by upload row, where the row came from.

    ``source_rows[i]`` is the position in the caller's DataFrame of upload row ``i`` (CDS's
    ``col1``), so the caller's ids are taken back from the caller's own column, dtype and
    all; ``id_texts[i]`` is the id as uploaded, to check the answer's ``id_in`` against.
    """

    number: int
    source_rows: np.ndarray
    id_texts: tuple[str, ...]
    body: bytes

    @property
    def row_count(self) -> int:
        return len(self.id_texts)


def upload_body(id_texts: list[str], ra_deg: np.ndarray, dec_deg: np.ndarray) -> bytes:
    """The CSV bytes of an upload; ``repr`` writes each double so that it reads back exactly."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(UPLOAD_COLUMNS)
    for id_text, ra, dec in zip(id_texts, ra_deg.tolist(), dec_deg.tolist(), strict=True):
        writer.writerow((id_text, repr(ra), repr(dec)))
    return buffer.getvalue().encode("utf-8")


def upload_chunks(
    positions: pd.DataFrame, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Iterator[UploadChunk]:
    """Positions sorted by HEALPix index and cut into chunks of at most ``chunk_rows``."""
    if not 1 <= chunk_rows <= MAX_CHUNK_ROWS:
        raise ValueError(f"chunk_rows must be in [1, {MAX_CHUNK_ROWS}], got {chunk_rows}")
    rows = healpix_order(positions)
    ids = positions["id"].to_numpy(dtype=object)[rows]
    ra = positions["ra"].to_numpy(dtype=np.float64)[rows]
    dec = positions["dec"].to_numpy(dtype=np.float64)[rows]
    for number, start in enumerate(range(0, len(rows), chunk_rows)):
        stop = start + chunk_rows
        id_texts = [str(identifier) for identifier in ids[start:stop]]
        yield UploadChunk(
            number=number,
            source_rows=rows[start:stop],
            id_texts=tuple(id_texts),
            body=upload_body(id_texts, ra[start:stop], dec[start:stop]),
        )
