"""Schema creation on the real PostgreSQL: idempotent, concurrent, double precision only."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, inspect, text

from xmatch_pipeline.store.errors import SchemaError
from xmatch_pipeline.store.schema import ensure_schema

EXPECTED_TABLES = {"object", "allwise", "xmatch", "step", "offset_range_ledger"}


@pytest.fixture(scope="module")
def empty_engine(fresh_database_url: str) -> Iterator[Engine]:
    engine = create_engine(fresh_database_url)
    yield engine
    engine.dispose()


def test_schema_created_concurrently_by_two_sessions_and_again(
    fresh_database_url: str, empty_engine: Engine
):
    engines = [create_engine(fresh_database_url) for _ in range(2)]
    barrier = threading.Barrier(len(engines))
    failures: list[BaseException] = []

    def create(engine: Engine) -> None:
        try:
            barrier.wait(timeout=10)
            ensure_schema(engine)
        except BaseException as error:  # the thread must report any failure
            failures.append(error)

    threads = [threading.Thread(target=create, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for engine in engines:
        engine.dispose()
    assert failures == []

    ensure_schema(empty_engine)  # a second call on an existing schema changes nothing

    inspector = inspect(empty_engine)
    assert set(inspector.get_table_names()) >= EXPECTED_TABLES
    with empty_engine.connect() as connection:
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
    assert inspector.get_pk_constraint("xmatch")["constrained_columns"] == ["oid", "catid"]


def test_existing_real_columns_are_refused_with_the_fix(empty_engine: Engine):
    """A legacy allwise table in REAL would round positions; the error says how to convert."""
    with empty_engine.begin() as connection:
        connection.execute(text("CREATE SCHEMA legacy"))
        connection.execute(
            text("CREATE TABLE legacy.allwise (oid_catalog text PRIMARY KEY, ra real, dec real)")
        )
    legacy = create_engine(
        empty_engine.url, connect_args={"options": "-c search_path=legacy,public"}
    )
    try:
        with pytest.raises(SchemaError, match=r"allwise\.ra, allwise\.dec are REAL") as raised:
            ensure_schema(legacy)
    finally:
        legacy.dispose()
    assert "ALTER TABLE allwise ALTER COLUMN ra TYPE double precision" in str(raised.value)
    with empty_engine.connect() as connection:
        legacy_tables = connection.execute(
            text("SELECT table_name FROM information_schema.tables WHERE table_schema = 'legacy'")
        ).scalars()
        assert set(legacy_tables) == {"allwise"}, "the refused call must roll its DDL back"
