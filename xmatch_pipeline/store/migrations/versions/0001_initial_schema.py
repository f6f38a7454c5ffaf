"""The schema as it was before migrations: ALeRCE's tables, the step row, the range ledger.

Each table is created only where it is missing, so this one revision brings three kinds of
database to the same place without touching a row:

- an empty database: every table is created;
- a database made by the pipeline before it had migrations (``metadata.create_all``): every
  table is there already, and only the version is recorded;
- a database of the original step (ALeRCE's ``object``, ``allwise``, ``xmatch``): those
  tables are kept as they are (extra columns such as ``xmatch.class_catalog`` included) and
  ``step`` and the ledger are added.

The tables are written out here, not imported from ``tables.py``: a revision is frozen, and
later ones change ``tables.py`` and add a revision of their own. The request slots
(``request_slots.py``) and the partition lock are advisory locks and have no table.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ExcludeConstraint

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ALLWISE_VALUE_COLUMNS = (
    "ra",
    "dec",
    "w1mpro",
    "w2mpro",
    "w3mpro",
    "w4mpro",
    "w1sigmpro",
    "w2sigmpro",
    "w3sigmpro",
    "w4sigmpro",
    "j_m_2mass",
    "h_m_2mass",
    "k_m_2mass",
    "j_msig_2mass",
    "h_msig_2mass",
    "k_msig_2mass",
)


def _tables() -> list[sa.Table]:
    metadata = sa.MetaData()
    sa.Table("object", metadata, sa.Column("oid", sa.Text, primary_key=True))
    sa.Table(
        "allwise",
        metadata,
        sa.Column("oid_catalog", sa.Text, primary_key=True),
        *(sa.Column(name, sa.Double, nullable=True) for name in ALLWISE_VALUE_COLUMNS),
    )
    sa.Table(
        "xmatch",
        metadata,
        sa.Column("oid", sa.Text, sa.ForeignKey("object.oid"), nullable=False),
        sa.Column("catid", sa.Text, nullable=False),
        sa.Column("oid_catalog", sa.Text, nullable=False),
        sa.Column("dist", sa.Double, nullable=False, comment="angular distance, arcsec"),
        sa.PrimaryKeyConstraint("oid", "catid"),
    )
    sa.Table(
        "step",
        metadata,
        sa.Column("step_id", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("comments", sa.Text, nullable=True),
        sa.Column("date", sa.DateTime(timezone=True), nullable=False),
    )
    sa.Table(
        "offset_range_ledger",
        metadata,
        sa.Column("consumer_group", sa.Text, nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("start_offset", sa.BigInteger, nullable=False),
        sa.Column("end_offset", sa.BigInteger, nullable=False),
        sa.Column("mode", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("run_id", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("alerts_in", sa.Integer, nullable=True),
        sa.Column("matched", sa.Integer, nullable=True),
        sa.Column("dead_lettered", sa.Integer, nullable=True),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint(
            "consumer_group", "topic", "partition", "start_offset", "end_offset", "mode"
        ),
        sa.CheckConstraint(
            "0 <= start_offset AND start_offset < end_offset", name="ledger_range_valid"
        ),
        sa.CheckConstraint("mode IN ('live', 'backfill')", name="ledger_mode_known"),
        sa.CheckConstraint(
            "status IN ('running', 'succeeded', 'failed')", name="ledger_status_known"
        ),
        ExcludeConstraint(
            (sa.Column("consumer_group"), "="),
            (sa.Column("topic"), "="),
            (sa.Column("partition"), "="),
            (sa.func.int8range(sa.Column("start_offset"), sa.Column("end_offset")), "&&"),
            using="gist",
            where=sa.text("mode = 'live'"),
            name="offset_range_ledger_live_ranges_disjoint",
        ),
    )
    return list(metadata.sorted_tables)


def upgrade() -> None:
    connection = op.get_bind()
    for table in _tables():
        table.create(connection, checkfirst=True)


def downgrade() -> None:
    raise NotImplementedError(
        "revision 0001 is the first: going below it would drop ALeRCE's tables and their rows"
    )
