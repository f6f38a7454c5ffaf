"""The jobs: ``xmatch_microbatch`` (one range, partitioned by offset range: live from the
sensor, or reprocessed in backfill mode by a Dagster backfill over its partitions),
``xmatch_backfill`` (explicit ranges in one run, the scripted way of the same backfill
mode) and ``add_offset_ranges`` (ranges never planned live, added as partitions).

The ops stay thin: every decision and every write is in ``xmatch_pipeline.microbatch.runner``.
The read → decode → match → store → publish stages run inside one op because the two
transactions (PostgreSQL, then Kafka with the offsets) must straddle all of them, and
because streaming the range chunk by chunk keeps memory flat instead of holding a whole
batch between ops; each stage's time is reported in the run's metadata.
"""

from collections.abc import Iterator
from typing import Any

from dagster import (
    AssetCheckEvaluation,
    AssetMaterialization,
    Config,
    Failure,
    In,
    Nothing,
    OpExecutionContext,
    Out,
    Output,
    PartitionedConfig,
    ResourceParam,
    in_process_executor,
    job,
    op,
)
from pydantic import Field

from xmatch_pipeline.kafka.client_config import KafkaOperationError
from xmatch_pipeline.microbatch.offset_precondition import group_start_problem
from xmatch_pipeline.microbatch.offset_range import OffsetRange
from xmatch_pipeline.microbatch.report import MicrobatchReport
from xmatch_pipeline.orchestration import run_tags
from xmatch_pipeline.orchestration.metadata import lag_metadata, run_materializations
from xmatch_pipeline.orchestration.partitions import OFFSET_RANGES, OFFSET_RANGES_NAME, run_mode
from xmatch_pipeline.orchestration.range_checks import range_check_evaluations
from xmatch_pipeline.orchestration.resources import XmatchResource
from xmatch_pipeline.read.kafka_offsets import PartitionLag


class OffsetRangeConfig(Config):
    """One partition's offsets ``[start_offset, end_offset)``."""

    topic: str = Field(description="Input topic, e.g. ztf_20200101_programid1.")
    partition: int = Field(ge=0, description="Partition of the topic.")
    start_offset: int = Field(ge=0, description="First offset of the range.")
    end_offset: int = Field(gt=0, description="One past the last offset of the range.")

    def offset_range(self) -> OffsetRange:
        return OffsetRange(self.topic, self.partition, self.start_offset, self.end_offset)


def microbatch_run_config(offset_range: OffsetRange) -> dict[str, Any]:
    """The run config of ``xmatch_microbatch`` over one range (sensor, launchpad, tests)."""
    return {
        "ops": {
            "check_offset_range": {
                "config": {
                    "topic": offset_range.topic,
                    "partition": offset_range.partition,
                    "start_offset": offset_range.start,
                    "end_offset": offset_range.end,
                }
            }
        }
    }


def _partition_config(key: str) -> dict[str, Any]:
    return microbatch_run_config(OffsetRange.from_key(key))


def _partition_tags(key: str) -> dict[str, str]:
    """Tags of a run a backfill launches for a key: the range's, so the queue's
    one-run-per-partition limit holds it too (the attempt is the sensor's alone)."""
    tags = run_tags.range_tags(OffsetRange.from_key(key), attempt=1)
    del tags[run_tags.ATTEMPT]
    return tags


#: ``xmatch_microbatch`` is partitioned by offset range: a key alone gives its run config.
MICROBATCH_PARTITIONED_CONFIG = PartitionedConfig(
    partitions_def=OFFSET_RANGES,
    run_config_for_partition_key_fn=_partition_config,
    tags_for_partition_key_fn=_partition_tags,
)


class BackfillConfig(Config):
    ranges: list[OffsetRangeConfig] = Field(min_length=1, description="Ranges to process.")
    produce_output: bool = Field(
        default=False,
        description="Produce the enriched alerts again (downstream sees them twice); by "
        "default a backfill only rewrites the database rows.",
    )


def _partition_lag(
    context: OpExecutionContext, xmatch: ResourceParam[XmatchResource], offset_range: OffsetRange
) -> PartitionLag | None:
    """The partition's lag, or None when Kafka cannot say now: lag is only metadata, and
    right after a transactional commit the broker briefly refuses the group's offsets
    (UNSTABLE_OFFSET_COMMIT); that must not fail a run whose work is already committed."""
    try:
        lags = xmatch.services().offsets_reader.lags([offset_range.topic])
    except KafkaOperationError as error:
        context.log.warning(f"{offset_range}: lag not recorded: {error}")
        return None
    for lag in lags:
        if lag.partition == offset_range.partition:
            return lag
    return None


@op(out=Out(OffsetRange))
def check_offset_range(
    context: OpExecutionContext, config: OffsetRangeConfig, xmatch: ResourceParam[XmatchResource]
) -> Iterator[Output[OffsetRange]]:
    """Note the group's lag before the run, and refuse early a live range that does not start
    at the group's offset (the runner enforces it in any case, even when the lag is unknown).
    A backfill's range is anywhere: it never touches the group's offsets."""
    offset_range = config.offset_range()
    lag = _partition_lag(context, xmatch, offset_range)
    mode, produce_output = run_mode(context.run.tags)
    if mode == "backfill":
        context.log.info(f"{offset_range}: backfill, output produced: {produce_output}")
    elif lag is not None:
        context.log.info(
            f"{offset_range}: group at {lag.committed}, high watermark {lag.high}, lag {lag.lag}"
        )
        problem = group_start_problem(offset_range, lag.committed)
        if problem is not None:  # the runner refuses it too; failing here saves the run
            raise Failure(problem)
    yield Output(offset_range, metadata=lag_metadata("before", lag))


@op
def crossmatch_offset_range(
    context: OpExecutionContext, offset_range: OffsetRange, xmatch: ResourceParam[XmatchResource]
) -> MicrobatchReport:
    """Read → decode → match → store → publish and commit the offsets, exactly once (in a
    backfill: rewrite the rows, and produce the output only if asked)."""
    mode, produce_output = run_mode(context.run.tags)
    report = (
        xmatch.services()
        .runner()
        .run(offset_range, run_id=context.run_id, mode=mode, produce_output=produce_output)
    )
    context.log.info(
        f"{offset_range}: {report.messages_in} alerts, {report.alerts_matched} matched, "
        f"{report.dead_lettered} dead-lettered in {report.elapsed_seconds:.2f} s"
    )
    return report


@op(ins={"report": In(MicrobatchReport)}, out=Out(Nothing))
def record_run_metrics(
    context: OpExecutionContext, report: MicrobatchReport, xmatch: ResourceParam[XmatchResource]
) -> Iterator[AssetMaterialization | AssetCheckEvaluation]:
    """Lineage, metrics and the range's asset checks in the UI; the original's metrics
    message when configured."""
    lag_after = _partition_lag(context, xmatch, report.offset_range)
    yield from run_materializations(report, lag_metadata("after", lag_after))
    yield from range_check_evaluations(report, lag_after, xmatch.services().settings.checks)
    if xmatch.services().send_metrics(report):
        context.log.info("metrics message sent")


@job(
    executor_def=in_process_executor,
    config=MICROBATCH_PARTITIONED_CONFIG,
    description="Crossmatch one offset range of one input partition and commit its offsets; "
    "partitioned by offset range (a backfill over ranges reprocesses them in backfill mode).",
)
def xmatch_microbatch() -> None:
    record_run_metrics(crossmatch_offset_range(check_offset_range()))


@op(out=Out(Nothing))
def backfill_offset_ranges(
    context: OpExecutionContext, config: BackfillConfig, xmatch: ResourceParam[XmatchResource]
) -> Iterator[AssetMaterialization]:
    """Process each range again; upserts make a processed range leave the tables unchanged.
    Each range is also added as a partition, so the partitions view shows it."""
    runner = xmatch.services().runner()
    offset_ranges = [range_config.offset_range() for range_config in config.ranges]
    context.instance.add_dynamic_partitions(
        OFFSET_RANGES_NAME, [offset_range.key for offset_range in offset_ranges]
    )
    for offset_range in offset_ranges:
        report = runner.run(
            offset_range,
            run_id=context.run_id,
            mode="backfill",
            produce_output=config.produce_output,
        )
        context.log.info(
            f"backfill {offset_range}: {report.messages_in} alerts, "
            f"{report.alerts_matched} matched, output produced: {report.output_produced}"
        )
        yield from run_materializations(report, {})


@job(
    executor_def=in_process_executor,
    description="Reprocess explicit offset ranges in one run (the scripted way); never "
    "commits the live group's offsets. From the UI, backfill xmatch_microbatch's partitions.",
)
def xmatch_backfill() -> None:
    backfill_offset_ranges()


class OffsetRangesToAdd(Config):
    """Offsets of one topic to add as partitions, e.g. an archive topic never read live."""

    topic: str = Field(description="Input topic, e.g. ztf_20200101_programid1.")
    partitions: list[int] | None = Field(
        default=None, description="Partitions of the topic; all of them when unset."
    )
    start_offset: int | None = Field(
        default=None, ge=0, description="First offset; the partition's earliest when unset."
    )
    end_offset: int | None = Field(
        default=None, gt=0, description="One past the last offset; the high watermark when unset."
    )
    range_size: int | None = Field(
        default=None, ge=1, description="Offsets per range; XMATCH_MAX_MESSAGES_PER_RUN when unset."
    )


@op(out=Out(Nothing))
def add_offset_range_partitions(
    context: OpExecutionContext, config: OffsetRangesToAdd, xmatch: ResourceParam[XmatchResource]
) -> None:
    """Split the offsets into ranges and add each as a partition of ``offset_ranges``."""
    services = xmatch.services()
    size = config.range_size or services.settings.max_messages_per_run
    keys: list[str] = []
    for lag in services.offsets_reader.lags([config.topic]):
        if config.partitions is not None and lag.partition not in config.partitions:
            continue
        start = max(lag.low, config.start_offset or 0)
        end = min(lag.high, config.end_offset) if config.end_offset else lag.high
        if start < end:
            whole = OffsetRange(config.topic, lag.partition, start, end)
            keys.extend(offset_range.key for offset_range in whole.split(size))
    if not keys:
        raise Failure(
            f"no offsets of {config.topic} in the range asked for (partitions "
            f"{config.partitions or 'all'}, offsets {config.start_offset}..{config.end_offset}): "
            "check the topic's name and its low and high watermarks"
        )
    context.instance.add_dynamic_partitions(OFFSET_RANGES_NAME, keys)
    context.log.info(
        f"added {len(keys)} ranges of {config.topic} as partitions ({keys[0]} … {keys[-1]}); "
        "backfill them from xmatch_microbatch's Partitions tab"
    )


@job(
    executor_def=in_process_executor,
    description="Add offset ranges never planned live (an archive topic, old offsets) as "
    "partitions of xmatch_microbatch, to backfill them from the UI.",
)
def add_offset_ranges() -> None:
    add_offset_range_partitions()
