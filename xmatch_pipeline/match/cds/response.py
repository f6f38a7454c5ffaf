"""Reading what the CDS XMatch service sends back: CSV tables, error pages, VOTable errors.

The CSV is parsed strictly (every row as wide as the header, the body ending with a line
break) because a connection cut by a proxy leaves a short body that would otherwise parse
as a smaller, silently wrong answer. Values are typed without passing through the lossy
parts of ``read_csv``: integers that fit int64 become ``Int64``, other numbers ``Float64``
(parsed by Python's correctly rounded ``float``), everything else ``string``; an empty
field, ``NaN`` included, is ``pd.NA``.
"""

from __future__ import annotations

import csv
import io
import re
from xml.etree import ElementTree

import numpy as np
import pandas as pd

from xmatch_pipeline.match.cds.errors import RetryableResponseError

ANGULAR_DISTANCE_COLUMN = "angDist"
UPLOAD_INDEX_COLUMN = "col1"

_INTEGER = re.compile(r"^[+-]?\d+$")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_BUSY_TEXT = "too many jobs"
_ERROR_PAGE_MARKERS = ("<html", "<!doctype html", "<head", "<body")
_MESSAGE_LIMIT = 500


def body_preview(body: bytes, limit: int = _MESSAGE_LIMIT) -> str:
    """The start of a body, on one line, for error messages."""
    text = body[:limit].decode("utf-8", errors="replace")
    return " ".join(text.split())


def is_busy_message(body: bytes) -> bool:
    """CDS's "Too many jobs are being processed, try later!" refusal (never a CSV table)."""
    if body.lstrip().startswith(ANGULAR_DISTANCE_COLUMN.encode()):
        return False
    return _BUSY_TEXT in body[:4096].decode("utf-8", errors="replace").lower()


def is_html_page(body: bytes) -> bool:
    """An HTML page (a gateway's ``504 Gateway Time-out``) where a table was expected."""
    start = body[:1024].decode("utf-8", errors="replace").lstrip().lower()
    return any(marker in start for marker in _ERROR_PAGE_MARKERS)


def query_status_message(body: bytes) -> str | None:
    """The message of a VOTable ``INFO name="QUERY_STATUS" value="ERROR"``, if the body has one."""
    if b"QUERY_STATUS" not in body:
        return None
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        match = re.search(rb"QUERY_STATUS[^>]*>(.*?)</", body, re.DOTALL)
        return " ".join(match.group(1).decode("utf-8", "replace").split()) if match else None
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == "INFO" and element.get("name") == "QUERY_STATUS":
            if element.get("value", "").upper() != "ERROR":
                continue
            text = " ".join((element.text or "").split())
            return text or element.get("value", "ERROR")
    return None


def read_raw_table(body: bytes) -> pd.DataFrame:
    """Every field of a CDS CSV answer as text (``pd.NA`` for empty), after strict checks.

    Raises ``RetryableResponseError`` for a body that is not a complete CSV table.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RetryableResponseError(f"the CSV answer is not UTF-8 ({error})") from error
    if not text.strip():
        raise RetryableResponseError("the answer is empty, not a CSV table")
    if not text.endswith("\n"):
        raise RetryableResponseError(
            f"the CSV answer ends without a line break after {len(body)} bytes: it was cut short"
        )
    rows = list(csv.reader(io.StringIO(text)))
    header = rows[0]
    if ANGULAR_DISTANCE_COLUMN not in header:
        raise RetryableResponseError(
            f"the answer has no {ANGULAR_DISTANCE_COLUMN} column: {body_preview(body, 200)!r}"
        )
    if len(set(header)) != len(header):
        raise RetryableResponseError(f"the CSV header repeats a column name: {header}")
    records = [row for row in rows[1:] if row]
    for line_number, row in enumerate(records, start=2):
        if len(row) != len(header):
            raise RetryableResponseError(
                f"CSV line {line_number} has {len(row)} fields, the header {len(header)}: "
                "the answer was cut short or is corrupt"
            )
    columns = list(zip(*records, strict=True)) if records else [() for _ in header]
    return pd.DataFrame(
        {
            name: pd.array([value if value != "" else None for value in values], dtype="string")
            for name, values in zip(header, columns, strict=True)
        },
        index=pd.RangeIndex(len(records)),
    )


def typed_column(values: pd.Series) -> pd.Series:
    """A text column as ``Int64``, ``Float64`` or ``string``, missing values as ``pd.NA``."""
    present = values.dropna()
    texts = present.to_numpy(dtype=object)
    if len(texts) == 0:
        return pd.Series(pd.array([None] * len(values), dtype="Float64"), index=values.index)
    if all(_INTEGER.match(text) for text in texts):
        integers = [int(text) for text in texts]
        if all(_INT64_MIN <= value <= _INT64_MAX for value in integers):
            all_integers: list[int | None] = [None] * len(values)
            for position, value in zip(
                np.flatnonzero(values.notna().to_numpy()), integers, strict=True
            ):
                all_integers[position] = value
            return pd.Series(pd.array(all_integers, dtype="Int64"), index=values.index)
    try:
        floats = np.array(texts, dtype=str).astype(np.float64)
    except ValueError:
        return values.astype("string")
    all_floats = np.full(len(values), np.nan)
    all_floats[values.notna().to_numpy()] = floats
    # Built from a float64 array, Float64 turns NaN (empty fields, "NaN" text) into pd.NA.
    return pd.Series(pd.array(all_floats, dtype="Float64"), index=values.index)


def parse_xmatch_csv(body: bytes) -> pd.DataFrame:
    """A CDS CSV answer, typed: ``angDist`` float64, ``col1`` int64, the rest inferred.

    Every column other than ``angDist`` and ``col1`` keeps nullable types; uploaded
    columns are typed like catalog columns, so callers that need the upload's exact text
    (ids) should read it from ``read_raw_table``.
    """
    raw = read_raw_table(body)
    return type_raw_table(raw)


def type_raw_table(raw: pd.DataFrame) -> pd.DataFrame:
    """Types a table from ``read_raw_table`` (see ``parse_xmatch_csv``)."""
    try:
        return _typed_table(raw)
    except ValueError as error:
        raise RetryableResponseError(f"a CSV field is not of its column's type: {error}") from error


def _typed_table(raw: pd.DataFrame) -> pd.DataFrame:
    typed: dict[str, pd.Series] = {}
    for name in raw.columns:
        column = raw[name]
        if name == ANGULAR_DISTANCE_COLUMN:
            if column.isna().any():
                raise RetryableResponseError("an angDist field is empty")
            typed[name] = pd.Series(
                np.array(column.to_numpy(dtype=str), dtype=str).astype(np.float64),
                index=raw.index,
            )
        elif name == UPLOAD_INDEX_COLUMN:
            typed[name] = pd.Series(
                np.array([int(text) for text in column], dtype=np.int64), index=raw.index
            )
        else:
            typed[name] = typed_column(column)
    return pd.DataFrame(typed, index=raw.index)
