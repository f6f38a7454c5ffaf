"""Schema creation on the real PostgreSQL: idempotent, concurrent, double precision only."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, inspect, text

from xmatch_pipeline.microbatch.offset_range import OffsetRange
from xmatch_pipeline.store.errors import OverlappingRangeError, SchemaError
from xmatch_pipeline.store.range_ledger import RangeLedger
from xmatch_pipeline.store.schema import ensure_schema
from xmatch_pipeline_tests.pipeline_fixtures import fresh_database

EXPECTED_TABLES = {"object", "allwise", "xmatch", "step", "offset_range_ledger"}


@pytest.fixture(scope="module")
def empty_database(fresh_database_url: str) -> Iterator[Engine]:
    database = create_engine(fresh_database_url)
    yield database
    database.dispose()


def test_schema_created_concurrently_by_two_sessions_and_again(
    fresh_database_url: str, empty_database: Engine
):
    databases = [create_engine(fresh_database_url) for _ in range(2)]
    barrier = threading.Barrier(len(databases))
    failures: list[BaseException] = []

    def create(database: Engine) -> None:
        try:
            barrier.wait(timeout=10)
            ensure_schema(database)
        except BaseException as error:  # the thread must report any failure
            failures.append(error)

    threads = [threading.Thread(target=create, args=(database,)) for database in databases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for database in databases:
        database.dispose()
    assert failures == []

    ensure_schema(empty_database)  # a second call on an existing schema changes nothing

    inspector = inspect(empty_database)
    assert set(inspector.get_table_names()) >= EXPECTED_TABLES
    with empty_database.connect() as connection:
        extensions = connection.execute(text("SELECT extname FROM pg_extension")).scalars()
        assert "btree_gist" in set(extensions)
        columns = connection.execute(
            text(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = 'allwise' AND column_name <> 'oid_catalog'"
            )
        )
        allwise_types: dict[str, str] = {row.column_name: row.data_type for row in columns}
    assert len(allwise_types) == 16
    assert set(allwise_types.values()) == {"double precision"}
    assert inspector.get_pk_constraint("xmatch")["constrained_columns"] == ["oid", "sid", "catid"]
    assert inspector.get_pk_constraint("object")["constrained_columns"] == ["oid", "sid"]


def test_existing_real_columns_are_refused_with_the_fix(empty_database: Engine):
    """A legacy allwise table in REAL would round positions; the error says how to convert."""
    with empty_database.begin() as connection:
        connection.execute(text("CREATE SCHEMA legacy"))
        connection.execute(
            text("CREATE TABLE legacy.allwise (oid_catalog text PRIMARY KEY, ra real, dec real)")
        )
    legacy = create_engine(
        empty_database.url, connect_args={"options": "-c search_path=legacy,public"}
    )
    try:
        with pytest.raises(SchemaError, match=r"allwise\.ra, allwise\.dec are REAL") as raised:
            ensure_schema(legacy)
    finally:
        legacy.dispose()
    assert "ALTER TABLE allwise ALTER COLUMN ra TYPE double precision" in str(raised.value)
    with empty_database.connect() as connection:
        legacy_tables = connection.execute(
            text("SELECT table_name FROM information_schema.tables WHERE table_schema = 'legacy'")
        ).scalars()
        assert set(legacy_tables) == {"allwise"}, "the refused call must roll its DDL back"


TABLES_BEFORE_SURVEYS = """
CREATE TABLE object (oid text PRIMARY KEY);
CREATE TABLE allwise (oid_catalog text PRIMARY KEY, ra double precision);
CREATE TABLE xmatch (
    oid text NOT NULL REFERENCES object (oid), catid text NOT NULL,
    oid_catalog text NOT NULL, dist double precision NOT NULL, PRIMARY KEY (oid, catid)
);
INSERT INTO object VALUES ('ZTF18aaaaaaa'), ('ZTF18bbbbbbb');
INSERT INTO xmatch VALUES ('ZTF18aaaaaaa', 'allwise', 'J000000.00+000000.0', 0.25);
"""


def test_tables_from_before_lsst_get_the_survey_in_their_keys_and_keep_their_rows(
    database_url: str,
):
    """The survey-column block: every existing row is ZTF's, readers' columns unchanged."""
    with fresh_database(database_url) as url:
        old = create_engine(url)
        try:
            _check_survey_block(old)
        finally:
            old.dispose()


def _check_survey_block(old: Engine) -> None:
    with old.begin() as connection:
        connection.execute(text(TABLES_BEFORE_SURVEYS))
    ensure_schema(old)
    ensure_schema(old)  # idempotent: the second call finds the keys done
    inspector = inspect(old)
    assert inspector.get_pk_constraint("object")["constrained_columns"] == ["oid", "sid"]
    assert inspector.get_pk_constraint("xmatch")["constrained_columns"] == [
        "oid",
        "sid",
        "catid",
    ]
    (foreign_key,) = inspector.get_foreign_keys("xmatch")
    assert foreign_key["constrained_columns"] == ["oid", "sid"]
    assert foreign_key["referred_columns"] == ["oid", "sid"]
    with old.begin() as connection:
        rows = connection.execute(
            text("SELECT oid, catid, oid_catalog, dist, sid FROM xmatch")
        ).all()
        assert [tuple(row) for row in rows] == [
            ("ZTF18aaaaaaa", "allwise", "J000000.00+000000.0", 0.25, "ztf")
        ]
        objects = connection.execute(text("SELECT oid, sid FROM object ORDER BY oid")).all()
        assert [tuple(row) for row in objects] == [
            ("ZTF18aaaaaaa", "ztf"),
            ("ZTF18bbbbbbb", "ztf"),
        ]
        # the same oid under the other survey is another object now
        connection.execute(text("INSERT INTO object (oid, sid) VALUES ('ZTF18aaaaaaa', 'lsst')"))


LEDGER_BEFORE_CONSUMER_GROUPS = """
CREATE TABLE offset_range_ledger (
    topic text NOT NULL, partition integer NOT NULL,
    start_offset bigint NOT NULL, end_offset bigint NOT NULL, mode text NOT NULL,
    status text NOT NULL, attempts integer NOT NULL DEFAULT 0, run_id text, error text,
    started_at timestamptz, finished_at timestamptz,
    alerts_in integer, matched integer, dead_lettered integer,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition, start_offset, end_offset, mode),
    CONSTRAINT offset_range_ledger_live_ranges_disjoint EXCLUDE USING gist
        (topic WITH =, partition WITH =, int8range(start_offset, end_offset) WITH &&)
        WHERE (mode = 'live')
)
"""


def test_a_ledger_without_consumer_group_is_refused_with_a_migration_that_works(
    empty_database: Engine,
):
    """Its rows' group is unknown to the pipeline, so the operator migrates it as told."""
    with empty_database.begin() as connection:
        connection.execute(text("CREATE EXTENSION IF NOT EXISTS btree_gist"))
        connection.execute(text("CREATE SCHEMA before_groups"))
        connection.execute(text("SET LOCAL search_path = before_groups, public"))
        connection.execute(text(LEDGER_BEFORE_CONSUMER_GROUPS))
        connection.execute(
            text(
                "INSERT INTO offset_range_ledger (topic, partition, start_offset, end_offset, "
                "mode, status, run_id) VALUES ('ztf', 0, 0, 10, 'live', 'failed', 'old-run')"
            )
        )
    legacy = create_engine(
        empty_database.url, connect_args={"options": "-c search_path=before_groups,public"}
    )
    try:
        with pytest.raises(
            SchemaError, match="offset_range_ledger has no consumer_group"
        ) as raised:
            ensure_schema(legacy)
        message = str(raised.value)
        assert "ALTER TABLE offset_range_ledger ADD COLUMN consumer_group text" in message
        migration = message.split("migrate it in one transaction: ")[1]
        migration = migration.split(" (or drop", maxsplit=1)[0]
        placeholder = "'<CONSUMER_GROUP_ID of the deployment that wrote it>'"
        with legacy.begin() as connection:
            for statement in migration.replace(placeholder, "'xmatch'").split("; "):
                connection.execute(text(statement))
        ensure_schema(legacy)

        old_range = OffsetRange("ztf", 0, 0, 10)
        retry = RangeLedger(legacy, "xmatch").record_started(old_range, "live", "new-run")
        assert (retry.attempts, retry.run_id) == (1, "new-run")
        with pytest.raises(OverlappingRangeError):
            RangeLedger(legacy, "xmatch").record_started(
                OffsetRange("ztf", 0, 5, 15), "live", "overlapping-run"
            )
        RangeLedger(legacy, "xmatch-staging").record_started(
            OffsetRange("ztf", 0, 5, 15), "live", "other-group-run"
        )
    finally:
        legacy.dispose()
