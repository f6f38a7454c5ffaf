"""Persisting one micro-batch's crossmatch results: idempotent upserts in the caller's transaction.

The caller owns the transaction so that the results and the ledger entry commit together
(or not at all). Every write is an ``INSERT ... ON CONFLICT`` that skips rows whose values
are already stored, so replaying a batch writes nothing and reports zero changes.

Several alerts of one object in a batch: ``xmatch`` has one row per object and catalog, so
the batch is reduced first (PostgreSQL refuses to update one row twice in a statement).
With ``keep="latest"`` (the default) the last row in input order wins, and input order is
offset order, so the last alert by offset wins; a later batch overwrites an earlier one.
With ``keep="nearest"`` the smallest ``dist`` wins (ties: smallest ``oid_catalog``), in
the batch and against the stored row, which makes the result independent of the order
in which batches (or backfills of old ranges) are written. Nearest wins within one
catalog release only: a row of another release (or of none, written before provenance)
is replaced by the batch's, so a backfill after a release change rewrites the rows.

Rows are written sorted by key so that concurrent batches lock rows in the same order
and cannot deadlock on each other.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

import numpy as np
import pandas as pd
from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    Connection,
    Double,
    Table,
    and_,
    literal_column,
    or_,
    tuple_,
)
from sqlalchemy.dialects.postgresql import Insert, insert

from xmatch_pipeline.store.catalog_tables import stored_catalog_tables
from xmatch_pipeline.store.tables import (
    SURVEY_COLUMN,
    XMATCH_PROVENANCE_COLUMNS,
    ZTF_SURVEY_ID,
    object_table,
    step_table,
    xmatch_table,
)

XmatchKeep = Literal["latest", "nearest"]
XMATCH_COLUMNS: Final = ("oid", "catid", "oid_catalog", "dist")
STEP_IDENTITY: Final = ("name", "version", "comments")


@dataclass(frozen=True)
class StepRecord:
    """The step that wrote the rows, as in the original's ``step`` table."""

    step_id: str
    name: str
    version: str
    date: datetime
    comments: str | None = None


@dataclass(frozen=True)
class MatchBatchRows:
    """One micro-batch's rows, already in database column names, in offset order.

    ``catalog_rows`` maps a stored catalog's table (``allwise``, ``gaia_dr3``) to its rows,
    in the table's names (mapped from CDS names by ``match.catalog_rows``); ``xmatch_rows``
    hold ``oid, catid, oid_catalog, dist`` (arcsec) and the provenance columns (``release,
    engine, index_build, radius_arcsec``; absent ones are NULL). Objects named only in
    ``xmatch_rows`` are created too. Every object and xmatch row of the batch is of
    ``survey`` (the ``sid`` column): a run reads one topic, so one survey; catalog rows
    belong to the catalog, not to a survey.
    """

    object_ids: Sequence[str]
    catalog_rows: Mapping[str, Sequence[Mapping[str, object]]]
    xmatch_rows: Sequence[Mapping[str, object]]
    step: StepRecord
    survey: str = ZTF_SURVEY_ID


@dataclass(frozen=True)
class TableWriteCount:
    """Rows newly inserted and existing rows changed; rows already equal are neither."""

    inserted: int = 0
    updated: int = 0

    @property
    def written(self) -> int:
        return self.inserted + self.updated


@dataclass(frozen=True)
class MatchBatchWriteCounts:
    objects: TableWriteCount
    #: Per stored catalog table.
    catalogs: Mapping[str, TableWriteCount]
    xmatch: TableWriteCount
    step: TableWriteCount


def write_match_batch(
    connection: Connection, rows: MatchBatchRows, *, keep: XmatchKeep = "latest"
) -> MatchBatchWriteCounts:
    """Upsert objects, catalog rows, xmatch rows and the step row in the open transaction."""
    if not connection.in_transaction():
        raise ValueError(
            "write_match_batch needs an open transaction (use database.begin() or "
            "connection.begin()) so the batch and its ledger entry commit together"
        )
    if keep not in ("latest", "nearest"):
        raise ValueError(f"keep must be 'latest' or 'nearest', got {keep!r}")
    survey = _text(rows.survey, "survey")
    xmatch_rows = [
        row | {SURVEY_COLUMN: survey} for row in _reduce_xmatch_rows(rows.xmatch_rows, keep)
    ]
    object_ids = sorted(
        {_text(oid, "object id") for oid in rows.object_ids} | {row["oid"] for row in xmatch_rows}
    )
    tables = {table.name: table for table in stored_catalog_tables()}
    unknown = sorted(set(rows.catalog_rows) - set(tables))
    if unknown:
        raise ValueError(f"no stored catalog has table(s) {unknown}; known: {sorted(tables)}")
    catalog_rows = {
        name: _reduce_catalog_rows(tables[name], rows.catalog_rows[name])
        for name in sorted(rows.catalog_rows)
    }
    return MatchBatchWriteCounts(
        objects=_insert_objects(connection, object_ids, survey),
        catalogs={
            name: _upsert_catalog(connection, tables[name], table_rows)
            for name, table_rows in catalog_rows.items()
        },
        xmatch=_upsert_xmatch(connection, xmatch_rows, keep),
        step=_upsert_step(connection, rows.step),
    )


def _insert_objects(connection: Connection, object_ids: list[str], survey: str) -> TableWriteCount:
    if not object_ids:
        return TableWriteCount()
    statement = (
        insert(object_table)
        .on_conflict_do_nothing(index_elements=["oid", SURVEY_COLUMN])
        .returning(object_table.c.oid)
    )
    inserted = connection.execute(
        statement, [{"oid": oid, SURVEY_COLUMN: survey} for oid in object_ids]
    ).all()
    return TableWriteCount(inserted=len(inserted))


def _upsert_catalog(
    connection: Connection, table: Table, catalog_rows: list[dict[str, Any]]
) -> TableWriteCount:
    statement = insert(table)
    key = _key_column(table)
    values = [column.name for column in table.c if column.name != key]
    return _upsert(
        connection,
        table,
        statement.on_conflict_do_update(
            index_elements=[key],
            set_={name: statement.excluded[name] for name in values},
            where=_differs(table, statement, values),
        ),
        catalog_rows,
    )


def _key_column(table: Table) -> str:
    (key,) = table.primary_key.columns.keys()
    return key


def _upsert_xmatch(
    connection: Connection, xmatch_rows: list[dict[str, Any]], keep: XmatchKeep
) -> TableWriteCount:
    statement = insert(xmatch_table)
    excluded = statement.excluded
    replaced = ("oid_catalog", "dist", *XMATCH_PROVENANCE_COLUMNS)
    if keep == "nearest":
        replace_when = or_(
            excluded.release.is_distinct_from(xmatch_table.c.release),
            excluded.dist < xmatch_table.c.dist,
            and_(
                excluded.dist == xmatch_table.c.dist,
                excluded.oid_catalog < xmatch_table.c.oid_catalog,
            ),
        )
    else:
        replace_when = _differs(xmatch_table, statement, replaced)
    return _upsert(
        connection,
        xmatch_table,
        statement.on_conflict_do_update(
            index_elements=["oid", SURVEY_COLUMN, "catid"],
            set_={name: excluded[name] for name in replaced},
            where=replace_when,
        ),
        xmatch_rows,
    )


def _upsert_step(connection: Connection, step: StepRecord) -> TableWriteCount:
    """The date is refreshed only when the step's identity changes, so replays change nothing."""
    statement = insert(step_table)
    row = {
        "step_id": _text(step.step_id, "step id"),
        "name": step.name,
        "version": step.version,
        "comments": step.comments,
        "date": step.date,
    }
    return _upsert(
        connection,
        step_table,
        statement.on_conflict_do_update(
            index_elements=["step_id"],
            set_={name: statement.excluded[name] for name in (*STEP_IDENTITY, "date")},
            where=_differs(step_table, statement, STEP_IDENTITY),
        ),
        [row],
    )


def _upsert(
    connection: Connection, table: Table, statement: Insert, rows: list[dict[str, Any]]
) -> TableWriteCount:
    """Run a bulk upsert; ``xmax = 0`` marks a freshly inserted row in RETURNING."""
    if not rows:
        return TableWriteCount()
    freshly_inserted: ColumnElement[bool] = literal_column(f"{table.name}.xmax = 0", Boolean)
    flags = connection.execute(statement.returning(freshly_inserted), rows).scalars().all()
    inserted = sum(1 for flag in flags if flag)
    return TableWriteCount(inserted=inserted, updated=len(flags) - inserted)


def _differs(table: Table, statement: Insert, columns: Iterable[str]) -> Any:
    names = list(columns)
    stored = tuple_(*(table.c[name] for name in names))
    incoming = tuple_(*(statement.excluded[name] for name in names))
    return stored.is_distinct_from(incoming)


def _reduce_xmatch_rows(
    rows: Sequence[Mapping[str, object]], keep: XmatchKeep
) -> list[dict[str, Any]]:
    chosen: dict[tuple[str, str], dict[str, Any]] = {}
    for position, raw in enumerate(rows):
        row = _xmatch_row(raw, position)
        key = (row["oid"], row["catid"])
        previous = chosen.get(key)
        if (
            previous is None
            or keep == "latest"
            or (row["dist"], row["oid_catalog"]) < (previous["dist"], previous["oid_catalog"])
        ):
            chosen[key] = row
    return [chosen[key] for key in sorted(chosen)]


def _reduce_catalog_rows(
    table: Table, rows: Sequence[Mapping[str, object]]
) -> list[dict[str, Any]]:
    """One row per catalog source (the catalog is static, so duplicates are equal anyway);
    every value checked against its column's type."""
    names = [column.name for column in table.c]
    key = _key_column(table)
    chosen: dict[object, dict[str, Any]] = {}
    for position, raw in enumerate(rows):
        where = f"{table.name} row {position}"
        unknown = set(raw) - set(names)
        if unknown:
            raise ValueError(
                f"{where}: unknown column(s) {sorted(unknown)}; rows must use the {table.name} "
                f"table's names {names} (map CDS names with match.catalog_rows first)"
            )
        row = {name: _typed(table, name, raw.get(name), f"{where} {name}") for name in names}
        if row[key] is None:
            raise ValueError(f"{where} {key} must be a source id, got null")
        chosen[row[key]] = row
    return [chosen[key] for key in sorted(chosen)]  # type: ignore[type-var]


def _typed(table: Table, name: str, value: object, what: str) -> object:
    column_type = table.c[name].type
    if isinstance(column_type, Double):
        return _double_or_null(value, what)
    if isinstance(column_type, BigInteger):
        return _integer_or_null(value, what)
    if value is None or value is pd.NA:
        return None
    return _text(value, what)


def _integer_or_null(value: object, what: str) -> int | None:
    """64-bit ids stay exact: a float is refused (it may already have lost digits)."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{what} must be an integer or None, got {value!r}")
    return int(value)


def _xmatch_row(raw: Mapping[str, object], position: int) -> dict[str, Any]:
    missing = [name for name in XMATCH_COLUMNS if name not in raw]
    if missing:
        raise ValueError(f"xmatch row {position}: missing column(s) {missing}")
    dist = _double_or_null(raw["dist"], f"xmatch row {position} dist")
    if dist is None:
        raise ValueError(f"xmatch row {position}: dist must be a distance in arcsec, got null")
    radius = _double_or_null(raw.get("radius_arcsec"), f"xmatch row {position} radius_arcsec")
    provenance = {
        name: (None if raw.get(name) is None else _text(raw[name], f"xmatch row {position} {name}"))
        for name in ("release", "engine", "index_build")
    }
    return {
        "oid": _text(raw["oid"], f"xmatch row {position} oid"),
        "catid": _text(raw["catid"], f"xmatch row {position} catid"),
        "oid_catalog": _text(raw["oid_catalog"], f"xmatch row {position} oid_catalog"),
        "dist": dist,
        **provenance,
        "radius_arcsec": radius,
    }


def _text(value: object, what: str) -> str:
    """Ids stay strings: an id that went through a number may already be corrupted."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _double_or_null(value: object, what: str) -> float | None:
    """Missing values become NULL (never NaN); 32-bit floats are refused, not widened."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, np.float32 | np.float16):
        raise ValueError(f"{what}: got a {type(value).__name__}, which has lost precision already")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} must be a number or None, got {value!r}")
    number = float(value)
    return None if math.isnan(number) else number
