"""The tables the step writes: ALeRCE's crossmatch tables plus the pipeline's range ledger.

The crossmatch tables keep the names and keys of ALeRCE's db-plugins so that existing
readers keep working; ``object`` holds only ``oid`` because its other columns belong to
later steps (the correction step computes positions and dates) and this step must not
overwrite them. Every catalog value is DOUBLE PRECISION: a 32-bit REAL would move
RA 342.16949390 to 342.16949463.
"""

from __future__ import annotations

from typing import Final, Literal

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Double,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ExcludeConstraint

metadata = MetaData()

#: The survey of an object (ALeRCE's later tables call it ``sid``): ``ztf`` or ``lsst``.
#: It is part of every object key, so a ZTF object and an LSST object never collide.
SURVEY_COLUMN: Final = "sid"
ZTF_SURVEY_ID: Final = "ztf"

object_table = Table(
    "object",
    metadata,
    Column("oid", Text, primary_key=True),
    Column(SURVEY_COLUMN, Text, primary_key=True, server_default=text(f"'{ZTF_SURVEY_ID}'")),
)

ALLWISE_VALUE_COLUMNS: Final = (
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
"""The allwise columns besides its key, in the original's order."""

allwise_table = Table(
    "allwise",
    metadata,
    Column("oid_catalog", Text, primary_key=True),
    *(Column(name, Double, nullable=True) for name in ALLWISE_VALUE_COLUMNS),
)

xmatch_table = Table(
    "xmatch",
    metadata,
    Column("oid", Text, nullable=False),
    Column("catid", Text, nullable=False),
    Column("oid_catalog", Text, nullable=False),
    Column("dist", Double, nullable=False, comment="angular distance, arcsec"),
    Column(SURVEY_COLUMN, Text, nullable=False, server_default=text(f"'{ZTF_SURVEY_ID}'")),
    # Provenance (issue 9), nullable: rows written before it have none.
    Column("release", Text, nullable=True, comment="catalog release that gave the match"),
    Column("engine", Text, nullable=True, comment="cds or local"),
    Column("index_build", Text, nullable=True, comment="the local index's build id"),
    Column("radius_arcsec", Double, nullable=True, comment="match radius asked, arcsec"),
    PrimaryKeyConstraint("oid", SURVEY_COLUMN, "catid"),
    ForeignKeyConstraint(
        ["oid", SURVEY_COLUMN], ["object.oid", f"object.{SURVEY_COLUMN}"], name="xmatch_object_fkey"
    ),
)

#: The provenance columns of ``xmatch``, in order.
XMATCH_PROVENANCE_COLUMNS: Final = ("release", "engine", "index_build", "radius_arcsec")

step_table = Table(
    "step",
    metadata,
    Column("step_id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("version", Text, nullable=False),
    Column("comments", Text, nullable=True),
    Column("date", DateTime(timezone=True), nullable=False),
)

LedgerMode = Literal["live", "backfill"]
LedgerStatus = Literal["running", "succeeded", "failed"]
LEDGER_MODES: Final[tuple[LedgerMode, ...]] = ("live", "backfill")
LEDGER_STATUSES: Final[tuple[LedgerStatus, ...]] = ("running", "succeeded", "failed")

LEDGER_LIVE_OVERLAP_CONSTRAINT: Final = "offset_range_ledger_live_ranges_disjoint"

offset_range_ledger_table = Table(
    "offset_range_ledger",
    metadata,
    # Several deployments (consumer groups) may share one database; each has its own ledger.
    Column("consumer_group", Text, nullable=False),
    Column("topic", Text, nullable=False),
    Column("partition", Integer, nullable=False),
    Column("start_offset", BigInteger, nullable=False),
    Column("end_offset", BigInteger, nullable=False),
    Column("mode", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("run_id", Text, nullable=True),
    Column("error", Text, nullable=True),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("alerts_in", Integer, nullable=True),
    Column("matched", Integer, nullable=True),
    Column("dead_lettered", Integer, nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # The key the upsert of a retry lands on: a retry is the same range, so it updates
    # the same row (attempts + 1) instead of tripping the exclusion constraint below.
    PrimaryKeyConstraint(
        "consumer_group", "topic", "partition", "start_offset", "end_offset", "mode"
    ),
    CheckConstraint("0 <= start_offset AND start_offset < end_offset", name="ledger_range_valid"),
    CheckConstraint(f"mode IN {LEDGER_MODES!r}", name="ledger_mode_known"),
    CheckConstraint(f"status IN {LEDGER_STATUSES!r}", name="ledger_status_known"),
    # Two different live ranges of one partition must never overlap within a consumer group:
    # live runs commit the group's offsets, so an overlap means two runs claim the same alerts.
    # Another group reads the partition independently. Backfills may overlap anything.
    ExcludeConstraint(
        (Column("consumer_group"), "="),
        (Column("topic"), "="),
        (Column("partition"), "="),
        (func.int8range(Column("start_offset"), Column("end_offset")), "&&"),
        using="gist",
        where=text("mode = 'live'"),
        name=LEDGER_LIVE_OVERLAP_CONSTRAINT,
    ),
)
