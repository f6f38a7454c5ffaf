"""Provenance on every match (release, engine, the local index's build, the radius) and
Gaia DR3's own table.

Rows written before this revision keep a NULL release: the match cache does not serve them
(their release is unknown), and the next match of their object rewrites them. The table of
a stored catalog declared later than this revision is created from its module's
declaration at start (``schema._create_later_catalog_tables``); Gaia DR3's is written out
here, frozen.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

GAIA_VALUE_COLUMNS = (
    "ra",
    "dec",
    "parallax",
    "parallax_error",
    "pmra",
    "pmdec",
    "phot_g_mean_mag",
    "phot_bp_mean_mag",
    "phot_rp_mean_mag",
    "ruwe",
)


def upgrade() -> None:
    op.add_column(
        "xmatch",
        sa.Column("release", sa.Text, nullable=True, comment="catalog release that gave the match"),
    )
    op.add_column("xmatch", sa.Column("engine", sa.Text, nullable=True, comment="cds or local"))
    op.add_column(
        "xmatch",
        sa.Column("index_build", sa.Text, nullable=True, comment="the local index's build id"),
    )
    op.add_column(
        "xmatch",
        sa.Column("radius_arcsec", sa.Double, nullable=True, comment="match radius asked, arcsec"),
    )
    connection = op.get_bind()
    if not sa.inspect(connection).has_table("gaia_dr3"):
        op.create_table(
            "gaia_dr3",
            sa.Column("source_id", sa.BigInteger, primary_key=True),
            *(sa.Column(name, sa.Double, nullable=True) for name in GAIA_VALUE_COLUMNS),
            comment="gaia_dr3: I/355/gaiadr3, Gaia DR3 (2022-06-13)",
        )
