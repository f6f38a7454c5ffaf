"""Offset ranges as Dagster partitions: each range the sensor plans (or an operator adds)
is one key of the dynamic partitions definition ``offset_ranges``, so the UI shows per
range whether it succeeded, failed, is missing or in progress, and a backfill can be
launched over any set of them.

The key is :attr:`OffsetRange.key`, ``topic/partition/start-end``; it holds the whole
range, so a run launched for a key (by a backfill) needs nothing else. A run launched by
a Dagster backfill carries the tag ``dagster/backfill`` and runs in backfill mode (see
:func:`run_mode`).
"""

from collections.abc import Mapping

from dagster import DynamicPartitionsDefinition

from xmatch_pipeline.microbatch.report import RunMode

OFFSET_RANGES_NAME = "offset_ranges"
OFFSET_RANGES = DynamicPartitionsDefinition(name=OFFSET_RANGES_NAME)

#: Dagster's tag on every run of a backfill.
BACKFILL_TAG = "dagster/backfill"
#: Set to ``true`` on a backfill to produce its output again (downstream sees it twice).
PRODUCE_OUTPUT_TAG = "xmatch/produce_output"


def run_mode(tags: Mapping[str, str]) -> tuple[RunMode, bool]:
    """(mode, produce output) of a microbatch run from its tags.

    A run of a Dagster backfill reprocesses a range that is not the group's next one: it
    must never commit the live group's offsets, and by default only rewrites the database
    (nearest match wins, so a processed range changes no row). Any other run is live.
    """
    if BACKFILL_TAG in tags:
        return "backfill", tags.get(PRODUCE_OUTPUT_TAG, "").strip().lower() == "true"
    return "live", True
