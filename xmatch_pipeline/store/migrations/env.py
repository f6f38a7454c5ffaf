"""Alembic's entry point: runs the revisions on the connection ``ensure_schema`` hands over.

The pipeline never lets Alembic open its own connection: ``ensure_schema`` passes one that
already holds the schema's advisory lock inside an open transaction, so the upgrade, the
checks after it and the lock all end with one commit (PostgreSQL's DDL is transactional).
"""

from alembic import context
from sqlalchemy import Connection

from xmatch_pipeline.store.tables import metadata

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError(
        "xmatch_pipeline's migrations run through xmatch_pipeline.store.schema.ensure_schema "
        "(which holds the schema lock), not from the alembic command line"
    )
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table="xmatch_pipeline_schema_version",
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()
