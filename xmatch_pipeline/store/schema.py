"""Creating the schema: idempotent, and safe when several processes start at once.

Every run and the sensor may call :func:`ensure_schema` on start. ``CREATE ... IF NOT
EXISTS`` alone still races (two sessions both see "missing" and one fails on the catalog's
unique index), so the DDL runs under a transaction-scoped advisory lock.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import Connection, Engine, func, select, text
from sqlalchemy.exc import DBAPIError

from xmatch_pipeline.store.advisory_keys import advisory_key
from xmatch_pipeline.store.errors import SchemaError
from xmatch_pipeline.store.tables import allwise_table, metadata, xmatch_table

SCHEMA_LOCK_KEY: Final = advisory_key("xmatch_pipeline.store.schema")
REQUIRED_EXTENSION: Final = "btree_gist"
_INSUFFICIENT_PRIVILEGE: Final = "42501"


def ensure_schema(engine: Engine) -> None:
    """Create the extension and the tables if missing, and check existing ones hold doubles."""
    with engine.begin() as connection:
        connection.execute(select(func.pg_advisory_xact_lock(SCHEMA_LOCK_KEY)))
        _ensure_extension(connection)
        metadata.create_all(connection, checkfirst=True)
        _refuse_single_precision(connection)


def _ensure_extension(connection: Connection) -> None:
    """btree_gist lets the ledger's exclusion constraint compare text and integers with ``=``."""
    installed = connection.execute(
        text("SELECT 1 FROM pg_extension WHERE extname = :name"), {"name": REQUIRED_EXTENSION}
    ).first()
    if installed:
        return
    available = connection.execute(
        text("SELECT 1 FROM pg_available_extensions WHERE name = :name"),
        {"name": REQUIRED_EXTENSION},
    ).first()
    server = _server_description(connection)
    if not available:
        raise SchemaError(
            f"PostgreSQL extension {REQUIRED_EXTENSION} is not available on {server}: the "
            "offset-range ledger needs it for its exclusion constraint; install the server's "
            "contrib extensions (Debian/Ubuntu: apt-get install postgresql-contrib, or the "
            "postgresql-<version> package that includes them) and retry"
        )
    try:
        with connection.begin_nested():
            connection.execute(text(f"CREATE EXTENSION IF NOT EXISTS {REQUIRED_EXTENSION}"))
    except DBAPIError as error:
        code = getattr(error.orig, "pgcode", None)
        advice = (
            "the database role may not create extensions; ask an administrator to run "
            f"'CREATE EXTENSION {REQUIRED_EXTENSION};' in this database"
            if code == _INSUFFICIENT_PRIVILEGE
            else "check the server log"
        )
        raise SchemaError(
            f"could not create extension {REQUIRED_EXTENSION} on {server}: "
            f"{str(error.orig).strip()}; {advice}"
        ) from error


def _refuse_single_precision(connection: Connection) -> None:
    """Tables created earlier by other tools may use REAL, which silently rounds positions."""
    rows = connection.execute(
        text(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = ANY(:tables) "
            "AND data_type = 'real' ORDER BY table_name, ordinal_position"
        ),
        {"tables": [allwise_table.name, xmatch_table.name]},
    ).all()
    if rows:
        columns = ", ".join(f"{table}.{column}" for table, column in rows)
        fixes = "; ".join(
            f"ALTER TABLE {table} ALTER COLUMN {column} TYPE double precision"
            for table, column in rows
        )
        raise SchemaError(
            f"existing columns {columns} are REAL (32-bit) and would round catalog values; "
            f"convert them first: {fixes}"
        )


def _server_description(connection: Connection) -> str:
    url = connection.engine.url
    return f"{url.host or 'localhost'}:{url.port or 5432}/{url.database}"
