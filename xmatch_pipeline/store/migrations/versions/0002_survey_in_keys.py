"""The survey (``sid``: ``ztf`` or ``lsst``) in the keys of ``object`` and ``xmatch``.

Tables of revision 0001 key ``object`` by ``oid`` and ``xmatch`` by ``(oid, catid)``. The
survey joins both keys so that a ZTF and an LSST object of one id never collide; every
existing row is ZTF's, hence the default. Readers of the original columns are unaffected;
``allwise`` is the catalog's and does not change. If another table of the database
references ``object(oid)``, the upgrade stops and says which statements to run by hand.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.exc import DBAPIError

from xmatch_pipeline.store.errors import SchemaError

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SURVEY_COLUMN_STATEMENTS = (
    "ALTER TABLE object ADD COLUMN IF NOT EXISTS sid text NOT NULL DEFAULT 'ztf'",
    "ALTER TABLE xmatch ADD COLUMN IF NOT EXISTS sid text NOT NULL DEFAULT 'ztf'",
)
#: Run only while ``object``'s primary key lacks ``sid`` (in this order, one transaction).
SURVEY_KEY_STATEMENTS = (
    "ALTER TABLE xmatch DROP CONSTRAINT IF EXISTS xmatch_oid_fkey",
    "ALTER TABLE xmatch DROP CONSTRAINT IF EXISTS xmatch_pkey",
    "ALTER TABLE xmatch ADD CONSTRAINT xmatch_pkey PRIMARY KEY (oid, sid, catid)",
    "ALTER TABLE object DROP CONSTRAINT object_pkey",
    "ALTER TABLE object ADD CONSTRAINT object_pkey PRIMARY KEY (oid, sid)",
    "ALTER TABLE xmatch ADD CONSTRAINT xmatch_object_fkey FOREIGN KEY (oid, sid) "
    "REFERENCES object (oid, sid)",
)


def _primary_key_columns(connection: sa.Connection, table: str) -> set[str]:
    rows = connection.execute(
        sa.text(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass(:table) "
            "AND i.indisprimary"
        ),
        {"table": table},
    ).scalars()
    return set(rows)


def upgrade() -> None:
    connection = op.get_bind()
    for statement in SURVEY_COLUMN_STATEMENTS:
        connection.execute(sa.text(statement))
    if "sid" in _primary_key_columns(connection, "object"):
        return
    try:
        with connection.begin_nested():
            for statement in SURVEY_KEY_STATEMENTS:
                connection.execute(sa.text(statement))
    except DBAPIError as error:
        url = connection.engine.url
        raise SchemaError(
            "could not add the survey (sid) to the keys of object and xmatch on "
            f"{url.host or 'localhost'}:{url.port or 5432}/{url.database}: "
            f"{str(error.orig).strip()}; other tables may reference object(oid): point them "
            "at object(oid, sid), or run these statements by hand: "
            + "; ".join(SURVEY_KEY_STATEMENTS)
        ) from error
