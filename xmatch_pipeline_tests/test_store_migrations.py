"""Migrations on the real PostgreSQL: several processes at once, and databases made before
migrations existed (by the pipeline, and by the original step) upgraded with every row kept."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.pool import NullPool

from xmatch_pipeline.microbatch.offset_range import OffsetRange
from xmatch_pipeline.store import migrations
from xmatch_pipeline.store.errors import SchemaError
from xmatch_pipeline.store.range_ledger import RangeLedger
from xmatch_pipeline.store.schema import (
    VERSION_TABLE,
    current_revision,
    ensure_schema,
    head_revision,
)
from xmatch_pipeline.store.tables import metadata
from xmatch_pipeline_tests.pipeline_fixtures import fresh_database

PROCESSES = 3


def _first_revision() -> ModuleType:
    """Revision 0001, whose tables are exactly what the pipeline created before migrations."""
    path = Path(migrations.__file__).parent / "versions" / "0001_initial_schema.py"
    spec = importlib.util.spec_from_file_location("revision_0001", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def database(database_url: str) -> Iterator[str]:
    with fresh_database(database_url) as url:
        yield url


@pytest.fixture
def engine(database: str) -> Iterator[Engine]:
    engine = create_engine(database, poolclass=NullPool)
    yield engine
    engine.dispose()


#: A process that starts as the pipeline does (only the store imported, to start quickly),
#: says it is ready, waits for the go file, then migrates.
MIGRATING_PROCESS = """
import sys, time
from pathlib import Path
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool
from xmatch_pipeline.store.schema import ensure_schema
engine = create_engine(sys.argv[1], poolclass=NullPool)
go = Path(sys.argv[2])
Path(sys.argv[3]).touch()
while not go.exists():
    time.sleep(0.01)
ensure_schema(engine)
"""


def test_several_processes_starting_at_once_migrate_once(
    database: str, engine: Engine, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATING_PROCESS, database, str(go), str(tmp_path / str(n))],
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(PROCESSES)
    ]
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / str(n)).exists() for n in range(PROCESSES)):
            assert time.monotonic() < deadline, "the processes did not start"
            assert all(process.poll() is None for process in processes)
            time.sleep(0.05)
        go.touch()  # all at once, each with its imports done
        errors = [process.communicate(timeout=120)[1] for process in processes]
    finally:
        for process in processes:
            process.kill()
    assert [process.returncode for process in processes] == [0] * PROCESSES, errors

    with engine.connect() as connection:
        assert current_revision(connection) == head_revision()
        versions = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).all()
    assert len(versions) == 1
    assert set(inspect(engine).get_table_names()) >= set(metadata.tables)


def test_the_migrations_build_exactly_the_tables_the_code_declares(engine: Engine) -> None:
    """A change to tables.py without a revision (or the reverse) fails here."""
    ensure_schema(engine)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    differences = [d for d in differences if not _is_version_table(d)]
    assert differences == []


def _is_version_table(difference: Any) -> bool:
    return (
        isinstance(difference, tuple)
        and difference[0] == "remove_table"
        and difference[1].name == VERSION_TABLE
    )


ROWS: dict[str, list[dict[str, Any]]] = {
    "object": [{"oid": "ZTF18aaaaaaa"}, {"oid": "ZTF20bbbbbbb"}],
    "allwise": [
        {"oid_catalog": "J123456.78+123456.7", "ra": 342.16949390, "dec": -12.345678901234}
        | dict.fromkeys(("w1mpro", "w2mpro", "w3mpro", "w4mpro"))
        | {"w1sigmpro": 0.023, "k_msig_2mass": None}
    ],
    "xmatch": [
        {
            "oid": "ZTF18aaaaaaa",
            "catid": "allwise",
            "oid_catalog": "J123456.78+123456.7",
            "dist": 0.123456789012,
        }
    ],
    "step": [
        {
            "step_id": "xmatch",
            "name": "xmatch",
            "version": "1.0",
            "comments": None,
            "date": datetime(2020, 1, 1, tzinfo=UTC),
        }
    ],
    "offset_range_ledger": [
        {
            "consumer_group": "xmatch",
            "topic": "ztf_20200101_programid1",
            "partition": 0,
            "start_offset": 0,
            "end_offset": 500,
            "mode": "live",
            "status": "succeeded",
            "attempts": 1,
            "run_id": "run-1",
            "alerts_in": 500,
            "matched": 411,
            "dead_lettered": 2,
        },
        {
            "consumer_group": "xmatch",
            "topic": "ztf_20200101_programid1",
            "partition": 0,
            "start_offset": 500,
            "end_offset": 900,
            "mode": "live",
            "status": "failed",
            "attempts": 2,
            "run_id": "run-2",
            "error": "CDS down",
        },
    ],
}


def _insert(engine: Engine, rows: dict[str, list[dict[str, Any]]]) -> None:
    with engine.begin() as connection:
        for table, table_rows in rows.items():
            for row in table_rows:
                columns = ", ".join(f'"{column}"' for column in row)
                values = ", ".join(f":{column}" for column in row)
                connection.execute(
                    text(f'INSERT INTO "{table}" ({columns}) VALUES ({values})'), row
                )


def _dump(engine: Engine, tables: list[str]) -> dict[str, list[tuple[Any, ...]]]:
    """The rows in the columns of revision 0001: later revisions add columns (the survey,
    provenance), whose values for old rows are checked on their own."""
    first = {table.name: table for table in _first_revision()._tables()}
    with engine.connect() as connection:
        return {
            table: [
                tuple(row)
                for row in connection.execute(
                    text(
                        f"SELECT {', '.join(c.name for c in first[table].columns)} "
                        f'FROM "{table}" ORDER BY 1'
                    )
                )
            ]
            for table in tables
        }


def test_a_database_made_before_migrations_is_upgraded_with_every_row(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text("CREATE EXTENSION IF NOT EXISTS btree_gist"))
        for table in _first_revision()._tables():
            table.create(connection)  # what ensure_schema's create_all made before
    _insert(engine, ROWS)
    before = _dump(engine, list(ROWS))
    assert all(before[table] for table in ROWS)

    ensure_schema(engine)
    ensure_schema(engine)  # and again: nothing left to do

    assert _dump(engine, list(ROWS)) == before
    with engine.connect() as connection:
        assert current_revision(connection) == head_revision()
    # The migrated ledger still retries its failed range and refuses an overlap.
    retry = RangeLedger(engine, "xmatch").record_started(
        OffsetRange("ztf_20200101_programid1", 0, 500, 900), "live", "run-3"
    )
    assert (retry.attempts, retry.run_id) == (3, "run-3")


#: ALeRCE's db-plugins tables as the original step wrote them: varchar ids, an object table
#: with more columns (filled by later steps), xmatch's class_catalog and period.
ORIGINAL_TABLES = (
    "CREATE TABLE object (oid varchar PRIMARY KEY, ndethist integer, ncovhist integer, "
    "meanra double precision, meandec double precision, firstmjd double precision)",
    "CREATE TABLE allwise (oid_catalog varchar PRIMARY KEY, ra double precision NOT NULL, "
    "dec double precision NOT NULL, "
    + ", ".join(
        f"{column} double precision"
        for column in _first_revision().ALLWISE_VALUE_COLUMNS
        if column not in ("ra", "dec")
    )
    + ")",
    "CREATE TABLE xmatch (oid varchar REFERENCES object(oid), catid varchar, "
    "oid_catalog varchar NOT NULL, dist double precision NOT NULL, class_catalog varchar, "
    "period double precision, PRIMARY KEY (oid, catid))",
)


def test_the_original_steps_tables_are_kept_and_the_pipelines_added(engine: Engine) -> None:
    with engine.begin() as connection:
        for statement in ORIGINAL_TABLES:
            connection.execute(text(statement))
    original_rows = {
        "object": [
            {"oid": "ZTF18aaaaaaa", "ndethist": 12, "meanra": 342.16949390, "meandec": -12.5},
            {"oid": "ZTF20bbbbbbb", "ndethist": 3},
        ],
        "allwise": ROWS["allwise"],
        "xmatch": [ROWS["xmatch"][0] | {"class_catalog": "QSO", "period": 0.5}],
    }
    _insert(engine, original_rows)
    before = _dump(engine, list(original_rows))

    ensure_schema(engine)

    assert _dump(engine, list(original_rows)) == before
    inspector = inspect(engine)
    assert set(inspector.get_table_names()) >= {"step", "offset_range_ledger", VERSION_TABLE}
    assert {"class_catalog", "period", "oid_catalog"} <= {
        column["name"] for column in inspector.get_columns("xmatch")
    }
    with engine.connect() as connection:
        assert current_revision(connection) == head_revision()
    RangeLedger(engine, "xmatch").record_started(
        OffsetRange("ztf_20200101_programid1", 0, 0, 10), "live", "first-run"
    )


def test_a_database_migrated_by_newer_code_is_refused_with_what_to_do(engine: Engine) -> None:
    ensure_schema(engine)
    with engine.begin() as connection:
        connection.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '9999'"))
    with pytest.raises(SchemaError, match=r"at revision '9999'.*run the newest xmatch_pipeline"):
        ensure_schema(engine)
