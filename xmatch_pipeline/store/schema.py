"""The schema at start: numbered Alembic migrations, applied under one advisory lock.

Every run and the sensor call :func:`ensure_schema` on start. It upgrades the database to
the newest revision in ``store/migrations/versions/`` (recorded in the table
``xmatch_pipeline_schema_version``, not Alembic's default name, which Dagster's own storage
uses). Two processes starting at once would race (both see "missing", one fails on the
catalog's unique index), so the whole upgrade runs in one transaction under a
transaction-scoped advisory lock: the second process waits, then finds nothing to do.

A schema change is a new revision file plus the same change in ``tables.py``;
``test_store_migrations`` fails while the two differ. ``versions/__init__.py`` says how.
"""

from __future__ import annotations

from typing import Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, func, select, text
from sqlalchemy.dialects.postgresql import ExcludeConstraint
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.schema import AddConstraint

from xmatch_pipeline.store.advisory_keys import advisory_key
from xmatch_pipeline.store.catalog_tables import stored_catalog_tables
from xmatch_pipeline.store.errors import SchemaError, database_unavailable
from xmatch_pipeline.store.tables import (
    LEDGER_LIVE_OVERLAP_CONSTRAINT,
    offset_range_ledger_table,
    xmatch_table,
)

SCHEMA_LOCK_KEY: Final = advisory_key("xmatch_pipeline.store.schema")
REQUIRED_EXTENSION: Final = "btree_gist"
_INSUFFICIENT_PRIVILEGE: Final = "42501"
VERSION_TABLE: Final = "xmatch_pipeline_schema_version"
"""Where the applied revision is recorded (set in ``migrations/env.py`` too)."""


def ensure_schema(database: Engine) -> None:
    """Create the extension, apply the migrations not yet applied, and check what was there.

    Tables that existed before (made by the pipeline before it had migrations, or by the
    original step) are kept with their rows; the checks refuse the ones it cannot use. A
    refusal rolls the whole upgrade back. A server that cannot be reached raises
    :class:`DatabaseUnavailableError`.
    """
    try:
        connection = database.connect()
    except OperationalError as error:
        raise database_unavailable(database.url, "preparing the schema", error) from error
    with connection, connection.begin():
        connection.execute(select(func.pg_advisory_xact_lock(SCHEMA_LOCK_KEY)))
        _ensure_extension(connection)
        _upgrade_to_head(connection)
        _create_later_catalog_tables(connection)
        _refuse_single_precision(connection)
        _refuse_ledger_without_consumer_group(connection)


def migrations_config() -> Config:
    """Alembic's configuration for the pipeline's revisions (no ``alembic.ini`` needed)."""
    config = Config()
    config.set_main_option("script_location", "xmatch_pipeline.store:migrations")
    return config


def head_revision() -> str:
    """The newest revision this code knows."""
    head = ScriptDirectory.from_config(migrations_config()).get_current_head()
    if head is None:
        raise SchemaError("xmatch_pipeline.store.migrations has no revision")
    return head


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at; None before the first upgrade."""
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def _upgrade_to_head(connection: Connection) -> None:
    config = migrations_config()
    config.attributes["connection"] = connection
    try:
        command.upgrade(config, "head")
    except CommandError as error:
        # The usual cause: a newer deployment migrated this database further than this code
        # knows (its revision is not among ours).
        raise SchemaError(
            f"cannot migrate the schema of {_server_description(connection)} (at revision "
            f"{current_revision(connection)!r}, this code knows up to {head_revision()!r}): "
            f"{error}; run the newest xmatch_pipeline against this database"
        ) from error


def _create_later_catalog_tables(connection: Connection) -> None:
    """The table of a stored catalog declared after the migrations (``match/catalogs/``),
    created from its declaration when missing: adding a catalog is one module. A catalog
    table that exists is never altered here; a change to one is a migration."""
    for table in stored_catalog_tables():
        table.create(connection, checkfirst=True)


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
