"""A live range must start at the consumer group's committed offset.

A live run commits the group's offset to its range's end in the output's transaction. From
anywhere else than the group's offset that outputs alerts a second time (a start behind
the group) or skips offsets for good (a start ahead of it). The runner checks it under the
partition lock, whatever launched the run (the sensor, the launchpad, a script); the
``check_offset_range`` op checks it earlier only to fail before the run starts.
"""

from __future__ import annotations

from xmatch_pipeline.microbatch.offset_range import OffsetRange


def group_start_problem(offset_range: OffsetRange, group_offset: int) -> str | None:
    """Why a live run of ``offset_range`` must not run with the group at ``group_offset``,
    or None when it starts where the group is."""
    if group_offset == offset_range.start:
        return None
    effect = (
        "output every alert after it a second time"
        if group_offset > offset_range.start
        else f"skip offsets [{group_offset}, {offset_range.start})"
    )
    return (
        f"{offset_range}: the consumer group is at offset {group_offset}, not at the range's "
        f"start {offset_range.start}; a live run would move it to {offset_range.end} and "
        f"{effect}. Reprocess a processed range with a backfill of its partition "
        "(xmatch_microbatch's Partitions tab) or with xmatch_backfill; a live range starts "
        "where the group is."
    )
