"""CDS XMatch's table listing (``…/sync/tables?action=…``), over the catalogs served here.

astroquery's ``XMatch`` asks ``action=getVizieRTableNames&RESPONSEFORMAT=txt`` before every
query and sends ``cat2`` as a VizieR table only if it is listed, so the served catalogs are
listed under their VizieR names (``II/328/allwise`` for ``allwise``), one a line as CDS
writes them (``json``: a JSON array). ``action=getColList&tabName=…`` lists a table's
columns in the formats CDS offers (``votable``, ``json``, ``csv``, ``tsv``, ``txt``).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

from xmatch_pipeline.devtools.cds_server.catalogs import ServedCatalog, ServedCatalogs
from xmatch_pipeline.devtools.cds_server.protocol import ProtocolError
from xmatch_pipeline.match.catalog_aliases import VIZIER_PREFIX, vizier_table

COLUMN_LIST_FORMATS = ("votable", "json", "csv", "tsv", "txt")


@dataclass(frozen=True)
class TablesAnswer:
    body: bytes
    content_type: str


def answer_tables_action(catalogs: ServedCatalogs, fields: dict[str, str]) -> TablesAnswer:
    """The answer to one ``tables`` action; ``ProtocolError`` (HTTP 400) for a bad one."""
    lowered = {key.lower(): value for key, value in fields.items()}
    action = lowered.get("action", "")
    response_format = lowered.get("responseformat", "txt").lower()
    if action == "getVizieRTableNames":
        names = [vizier_table(catalog.name) for catalog in catalogs.catalogs]
        if response_format == "json":
            return TablesAnswer(json.dumps(names).encode(), "application/json")
        return TablesAnswer(("\n".join(names) + "\n").encode(), "text/plain; charset=utf-8")
    if action == "getColList":
        table = lowered.get("tabname", "")
        if not table:
            raise ProtocolError("Missing parameter tabName (e.g. tabName=II/328/allwise)")
        name = table if table.lower().startswith(VIZIER_PREFIX) else VIZIER_PREFIX + table
        return _column_list(catalogs.resolve(name), response_format)
    raise ProtocolError(
        f"Unknown action '{action}': this server answers getVizieRTableNames and getColList"
    )


def _column_list(catalog: ServedCatalog, response_format: str) -> TablesAnswer:
    columns = list(catalog.columns)
    types = [catalog.column_types[column] for column in columns]
    if response_format == "json":
        document = [{"name": c, "datatype": t} for c, t in zip(columns, types, strict=True)]
        return TablesAnswer(json.dumps(document).encode(), "application/json")
    if response_format in ("csv", "tsv"):
        separator = "," if response_format == "csv" else "\t"
        lines = [
            f"name{separator}datatype",
            *(f"{c}{separator}{t}" for c, t in zip(columns, types, strict=True)),
        ]
        return TablesAnswer(("\n".join(lines) + "\n").encode(), f"text/{response_format}")
    if response_format == "txt":
        return TablesAnswer(("\n".join(columns) + "\n").encode(), "text/plain; charset=utf-8")
    if response_format == "votable":
        return TablesAnswer(_column_votable(columns, types), "application/x-votable+xml")
    raise ProtocolError(
        f"RESPONSEFORMAT '{response_format}' is not served for getColList: use one of "
        + ", ".join(COLUMN_LIST_FORMATS)
    )


def _column_votable(columns: list[str], types: list[str]) -> bytes:
    from astropy.io.votable import from_table
    from astropy.table import Table

    votable = from_table(Table({"name": columns, "datatype": types}))
    buffer = io.BytesIO()
    votable.to_xml(buffer)
    return buffer.getvalue()
