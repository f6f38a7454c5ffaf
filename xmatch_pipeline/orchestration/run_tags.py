"""Run tags: what the UI filters on, and what Dagster's queue limits per partition."""

from xmatch_pipeline.microbatch.offset_range import OffsetRange
from xmatch_pipeline.microbatch.planning import partition_key

TOPIC = "xmatch/topic"
PARTITION = "xmatch/partition"
START_OFFSET = "xmatch/start_offset"
END_OFFSET = "xmatch/end_offset"
ATTEMPT = "xmatch/attempt"
#: ``topic:partition``; dagster.yaml allows one queued run at a time per value.
PARTITION_KEY = "xmatch/partition_key"
#: Dagster's own tag on runs a sensor launched: the key it never launches twice.
DAGSTER_RUN_KEY = "dagster/run_key"


def range_tags(offset_range: OffsetRange, attempt: int) -> dict[str, str]:
    return {
        TOPIC: offset_range.topic,
        PARTITION: str(offset_range.partition),
        START_OFFSET: str(offset_range.start),
        END_OFFSET: str(offset_range.end),
        ATTEMPT: str(attempt),
        PARTITION_KEY: partition_key(offset_range.topic, offset_range.partition),
    }
