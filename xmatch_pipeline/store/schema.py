"""Creating the schema: idempotent, and safe when several processes start at once.

Every run and the sensor may call :func:`ensure_schema` on start. ``CREATE ... IF NOT
EXISTS`` alone still races (two sessions both see "missing" and one fails on the catalog's
unique index), so the DDL runs under a transaction-scoped advisory lock.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import Connection, Engine, func, select, text
from sqlalchemy.dialects.postgresql import ExcludeConstraint
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.schema import AddConstraint

from xmatch_pipeline.store.advisory_keys import advisory_key
from xmatch_pipeline.store.catalog_tables import stored_catalog_tables
from xmatch_pipeline.store.errors import SchemaError, database_unavailable
from xmatch_pipeline.store.tables import (
    LEDGER_LIVE_OVERLAP_CONSTRAINT,
    XMATCH_PROVENANCE_COLUMNS,
    metadata,
    offset_range_ledger_table,
    xmatch_table,
)

SCHEMA_LOCK_KEY: Final = advisory_key("xmatch_pipeline.store.schema")
REQUIRED_EXTENSION: Final = "btree_gist"
_INSUFFICIENT_PRIVILEGE: Final = "42501"


def ensure_schema(engine: Engine) -> None:
    """Create the extension and the tables if missing, and check existing ones hold doubles.

    A server that cannot be reached raises :class:`DatabaseUnavailableError`.
    """
    try:
        connection = engine.connect()
    except OperationalError as error:
        raise database_unavailable(engine.url, "preparing the schema", error) from error
    with connection, connection.begin():
        connection.execute(select(func.pg_advisory_xact_lock(SCHEMA_LOCK_KEY)))
        _ensure_extension(connection)
        metadata.create_all(connection, checkfirst=True)
        ensure_provenance_and_catalog_tables(connection)
        _refuse_single_precision(connection)
        _refuse_ledger_without_consumer_group(connection)


# --- provenance and Gaia tables (issue 9) ---------------------------------------------
# One idempotent block, apart from the rest so that it can become a migration as it is:
#   ALTER TABLE xmatch ADD COLUMN IF NOT EXISTS release text,
#       ADD COLUMN IF NOT EXISTS engine text, ADD COLUMN IF NOT EXISTS index_build text,
#       ADD COLUMN IF NOT EXISTS radius_arcsec double precision;
#   CREATE TABLE IF NOT EXISTS gaia_dr3 (source_id bigint PRIMARY KEY, ra, dec, parallax,
#       parallax_error, pmra, pmdec, phot_g_mean_mag, phot_bp_mean_mag, phot_rp_mean_mag,
#       ruwe: double precision), and likewise the table of any stored catalog added later.
# Rows written before it keep a NULL release, so the match cache does not serve them
# (their release is unknown) and the next match of their object rewrites them.


def ensure_provenance_and_catalog_tables(connection: Connection) -> None:
    """Add the provenance columns to an existing ``xmatch`` and create every stored
    catalog's table; a no-op when they exist."""
    for table in stored_catalog_tables():
        table.create(connection, checkfirst=True)
    for name in XMATCH_PROVENANCE_COLUMNS:
        column = xmatch_table.c[name]
        column_type = column.type.compile(dialect=connection.dialect)
        connection.execute(
            text(f"ALTER TABLE {xmatch_table.name} ADD COLUMN IF NOT EXISTS {name} {column_type}")
        )


# --- end of provenance and Gaia tables ----------------------------------------------


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
        {"tables": [xmatch_table.name, *(table.name for table in stored_catalog_tables())]},
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


def _refuse_ledger_without_consumer_group(connection: Connection) -> None:
    """A ledger from before it was per consumer group is not migrated automatically: only the
    operator knows which group its rows belong to (with several groups, their rows are mixed)."""
    ledger = offset_range_ledger_table
    has_group = connection.execute(
        text(
            "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = :table AND column_name = 'consumer_group'"
        ),
        {"table": ledger.name},
    ).first()
    if has_group:
        return
    key_columns = ", ".join(ledger.primary_key.columns.keys())
    overlap = next(
        constraint
        for constraint in ledger.constraints
        if isinstance(constraint, ExcludeConstraint)
        and constraint.name == LEDGER_LIVE_OVERLAP_CONSTRAINT
    )
    statements = [
        f"ALTER TABLE {ledger.name} ADD COLUMN consumer_group text",
        f"UPDATE {ledger.name} SET consumer_group = '<CONSUMER_GROUP_ID of the deployment "
        "that wrote it>'",
        f"ALTER TABLE {ledger.name} ALTER COLUMN consumer_group SET NOT NULL",
        f"ALTER TABLE {ledger.name} DROP CONSTRAINT {ledger.name}_pkey",
        f"ALTER TABLE {ledger.name} ADD PRIMARY KEY ({key_columns})",
        f"ALTER TABLE {ledger.name} DROP CONSTRAINT {LEDGER_LIVE_OVERLAP_CONSTRAINT}",
        # Not isolated from the table: that would drop it from every later CREATE TABLE.
        str(AddConstraint(overlap, isolate_from_table=False).compile(bind=connection)).strip(),
    ]
    raise SchemaError(
        f"table {ledger.name} has no consumer_group column (it predates per-group ledgers, "
        "so deployments with different CONSUMER_GROUP_IDs sharing this database would see "
        "each other's ranges); with no run in progress, migrate it in one transaction: "
        + "; ".join(statements)
        + " (or drop the table if its failed ranges need no retry)"
    )


def _server_description(connection: Connection) -> str:
    url = connection.engine.url
    return f"{url.host or 'localhost'}:{url.port or 5432}/{url.database}"
