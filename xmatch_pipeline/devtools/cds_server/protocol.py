"""The CDS XMatch sync protocol as this server speaks it: form fields in, CSV or VOTable out.

Requests carry the same fields as CDS's (``request=xmatch``, an uploaded ``cat1``,
``colRA1``/``colDec1``, ``cat2=vizier:<table>``, ``distMaxArcsec``, ``selection``,
``cols2``, ``area``, ``RESPONSEFORMAT=csv|votable``); answers have CDS's shape: ``angDist``
first, ``col1`` (the upload's row index), the uploaded columns, then the catalog's,
unmatched rows absent, nulls empty (CSV) or masked (VOTable). ``area=cone`` keeps the
uploaded rows inside the cone, as CDS puts the area constraint on cat1. Errors are CDS's
VOTable ``QUERY_STATUS`` documents (with the ``ID`` astroquery looks the INFO up by).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape, quoteattr

import numpy as np
import pandas as pd

from xmatch_pipeline.match.catalog_spec import MAX_RADIUS_ARCSEC, Selection
from xmatch_pipeline.match.sky_geometry import ARCSEC_PER_DEGREE, separation_arcsec

ResponseFormat = Literal["csv", "votable"]
RESPONSE_FORMATS: tuple[ResponseFormat, ...] = ("csv", "votable")


class ProtocolError(ValueError):
    """A request CDS would refuse with HTTP 400; the message goes into QUERY_STATUS."""


@dataclass(frozen=True)
class FormData:
    """The decoded fields of a request: text fields and uploaded files."""

    fields: dict[str, str]
    files: dict[str, bytes]


@dataclass(frozen=True)
class XmatchQuery:
    """A validated crossmatch request."""

    catalog: str
    ra_column: str
    dec_column: str
    radius_arcsec: float
    selection: Selection
    columns: tuple[str, ...] | None  # None: every catalog column, as CDS does without cols2
    upload: bytes
    response_format: ResponseFormat = "csv"
    cone: Cone | None = None


@dataclass(frozen=True)
class Cone:
    """``area=cone``: only uploaded rows within ``radius_deg`` of the centre are matched."""

    ra_deg: float
    dec_deg: float
    radius_deg: float


@dataclass(frozen=True)
class UploadTable:
    """The uploaded CSV: its header and fields as text (echoed verbatim) and the positions."""

    header: list[str]
    rows: list[list[str]]
    ra_deg: np.ndarray
    dec_deg: np.ndarray


def parse_form(content_type: str, body: bytes, query_string: str) -> FormData:
    """Fields from the query string and a urlencoded or multipart body (multipart wins)."""
    fields = dict(parse_qsl(query_string, keep_blank_values=True))
    files: dict[str, bytes] = {}
    media_type, _, parameters = content_type.partition(";")
    media_type = media_type.strip().lower()
    if media_type == "application/x-www-form-urlencoded":
        fields.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    elif media_type == "multipart/form-data":
        boundary = _parameter(parameters, "boundary")
        if not boundary:
            raise ProtocolError("multipart/form-data request without a boundary")
        for name, filename, content in _multipart_parts(body, boundary.encode("latin-1")):
            if filename is not None:
                files[name] = content
            else:
                fields[name] = content.decode("utf-8", "replace")
    return FormData(fields, files)


def _parameter(parameters: str, wanted: str) -> str | None:
    for item in parameters.split(";"):
        key, _, value = item.strip().partition("=")
        if key.strip().lower() == wanted:
            return value.strip().strip('"')
    return None


def _multipart_parts(body: bytes, boundary: bytes) -> list[tuple[str, str | None, bytes]]:
    """(field name, file name or None, content) of each part, contents byte for byte."""
    delimiter = b"--" + boundary
    parts: list[tuple[str, str | None, bytes]] = []
    for section in body.split(delimiter)[1:]:
        if section.startswith(b"--"):
            break
        head, separator, content = section.partition(b"\r\n\r\n")
        if not separator:
            raise ProtocolError("malformed multipart body: a part has no header end")
        if content.endswith(b"\r\n"):
            content = content[:-2]
        disposition = ""
        for line in head.decode("utf-8", "replace").split("\r\n"):
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-disposition":
                disposition = value
        name = _parameter(disposition, "name")
        if name is None:
            raise ProtocolError("malformed multipart body: a part has no field name")
        parts.append((name, _parameter(disposition, "filename"), content))
    return parts


def parse_query(form: FormData) -> XmatchQuery:
    """The crossmatch asked for; ``ProtocolError`` for anything CDS would refuse."""
    fields = {key.lower(): value for key, value in form.fields.items()}
    request = fields.get("request", "xmatch")
    if request.lower() != "xmatch":
        raise ProtocolError(f"Unknown request '{request}': only 'xmatch' is supported")
    response_format = fields.get("responseformat", "votable").lower()
    if response_format not in RESPONSE_FORMATS:
        raise ProtocolError(
            f"RESPONSEFORMAT '{response_format}' is not served here: use RESPONSEFORMAT="
            + " or ".join(RESPONSE_FORMATS)
        )
    upload = form.files.get("cat1")
    if upload is None:
        raise ProtocolError("cat1 must be an uploaded table (multipart field 'cat1')")
    catalog = fields.get("cat2", "")
    if not catalog:
        raise ProtocolError("Missing parameter cat2 (e.g. cat2=vizier:II/328/allwise)")
    radius_text = fields.get("distmaxarcsec", "")
    try:
        radius = float(radius_text)
    except ValueError:
        raise ProtocolError(
            f"Invalid distMaxArcsec '{radius_text}': a number is expected"
        ) from None
    if not (math.isfinite(radius) and 0.0 < radius <= MAX_RADIUS_ARCSEC):
        raise ProtocolError(
            f"Invalid distMaxArcsec '{radius_text}': must be in ]0, {MAX_RADIUS_ARCSEC:g}]"
        )
    selection = fields.get("selection", "all").lower()
    if selection not in ("best", "all"):
        raise ProtocolError(f"Invalid selection '{selection}': expected 'best' or 'all'")
    columns_text = fields.get("cols2", "").strip()
    columns = (
        tuple(column.strip() for column in columns_text.split(",") if column.strip())
        if columns_text
        else None
    )
    return XmatchQuery(
        catalog=catalog,
        ra_column=fields.get("colra1", "ra"),
        dec_column=fields.get("coldec1", "dec"),
        radius_arcsec=radius,
        selection="best" if selection == "best" else "all",
        columns=columns,
        upload=upload,
        response_format="votable" if response_format == "votable" else "csv",
        cone=_area(fields),
    )


def _area(fields: dict[str, str]) -> Cone | None:
    """``area=allsky`` (None) or ``area=cone`` with its centre and radius."""
    area = fields.get("area", "allsky").lower()
    if area == "allsky":
        return None
    if area != "cone":
        raise ProtocolError(f"Invalid area '{area}': this server serves 'allsky' and 'cone'")
    try:
        cone = Cone(
            float(fields["conera"]), float(fields["conedec"]), float(fields["coneradiusdeg"])
        )
    except (KeyError, ValueError):
        raise ProtocolError("area=cone needs numbers coneRA, coneDec and coneRadiusDeg") from None
    if not (abs(cone.dec_deg) <= 90 and 0 < cone.radius_deg <= 180):
        raise ProtocolError("area=cone: coneDec must be in [-90, 90], coneRadiusDeg in ]0, 180]")
    return cone


def rows_in_area(query: XmatchQuery, upload: UploadTable) -> np.ndarray:
    """The upload rows the area lets through, as indexes."""
    if query.cone is None:
        return np.arange(len(upload.rows))
    cone = query.cone
    distances = separation_arcsec(upload.ra_deg, upload.dec_deg, cone.ra_deg, cone.dec_deg)
    return np.flatnonzero(distances <= cone.radius_deg * ARCSEC_PER_DEGREE)


def read_upload(query: XmatchQuery) -> UploadTable:
    """The uploaded CSV, with its position columns parsed as doubles."""
    try:
        text = query.upload.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ProtocolError(f"Uploaded table cat1 is not UTF-8 text: {error}") from None
    records = [row for row in csv.reader(io.StringIO(text)) if row]
    if not records:
        raise ProtocolError("Uploaded table cat1 is empty")
    header, rows = records[0], records[1:]
    for column in (query.ra_column, query.dec_column):
        if column not in header:
            raise ProtocolError(f"Column '{column}' not found in uploaded table cat1 ({header})")
    ra_at, dec_at = header.index(query.ra_column), header.index(query.dec_column)
    for line_number, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise ProtocolError(
                f"Uploaded table cat1, line {line_number}: {len(row)} fields, header {len(header)}"
            )
    try:
        ra = np.array([float(row[ra_at]) for row in rows], dtype=np.float64)
        dec = np.array([float(row[dec_at]) for row in rows], dtype=np.float64)
    except ValueError as error:
        raise ProtocolError(f"Uploaded table cat1: a position is not a number ({error})") from None
    if not (np.isfinite(ra).all() and np.isfinite(dec).all() and (np.abs(dec) <= 90).all()):
        raise ProtocolError("Uploaded table cat1: positions must be finite, |dec| <= 90")
    return UploadTable(header=header, rows=rows, ra_deg=ra, dec_deg=dec)


def format_value(value: object) -> str:
    """A field as CDS writes it: empty for null, doubles in a form that reads back exactly."""
    if value is None or value is pd.NA:
        return ""
    if isinstance(value, float | np.floating):
        number = float(value)
        return "" if math.isnan(number) else repr(number)
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, int | np.integer):
        return str(int(value))
    return str(value)


def format_csv_answer(
    upload: UploadTable, matches: pd.DataFrame, catalog_columns: tuple[str, ...]
) -> bytes:
    """The CSV answer: ``angDist``, ``col1``, the uploaded columns, the catalog columns."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["angDist", "col1", *upload.header, *catalog_columns])
    upload_rows = matches["id"].to_numpy(dtype=np.int64)
    distances = matches["angDist"].to_numpy(dtype=np.float64)
    catalog_values = [matches[column].tolist() for column in catalog_columns]
    for position, (upload_row, distance) in enumerate(zip(upload_rows, distances, strict=True)):
        writer.writerow(
            [
                repr(float(distance)),
                str(upload_row),
                *upload.rows[upload_row],
                *(format_value(values[position]) for values in catalog_values),
            ]
        )
    return buffer.getvalue().encode("utf-8")


def votable_error(message: str) -> bytes:
    """CDS's error document: a VOTable whose ``QUERY_STATUS`` INFO says ERROR and why."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<VOTABLE version="1.2" xmlns="http://www.ivoa.net/xml/VOTable/v1.2">\n'
        '<RESOURCE type="results">\n'
        f'<INFO ID="QUERY_STATUS" name="QUERY_STATUS" value="ERROR">{escape(message)}</INFO>\n'
        f'<INFO name="service" value={quoteattr("xmatch-pipeline cds-server")}/>\n'
        "</RESOURCE>\n"
        "</VOTABLE>\n"
    ).encode()
