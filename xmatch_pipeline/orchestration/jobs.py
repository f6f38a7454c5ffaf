"""The two jobs: ``xmatch_microbatch`` (one live range, from the sensor or by hand) and
``xmatch_backfill`` (explicit ranges, never touching the live group's offsets).

The ops stay thin: every decision and every write is in ``xmatch_pipeline.microbatch``.
The read → decode → match → store → publish stages run inside one op because the two
transactions (PostgreSQL, then Kafka with the offsets) must straddle all of them, and
because streaming the range chunk by chunk keeps memory flat instead of holding a whole
batch between ops; each stage's time is reported in the run's metadata.
"""

from collections.abc import Iterator
from typing import Any

from dagster import (
    AssetMaterialization,
    Config,
    Failure,
    In,
    Nothing,
    OpExecutionContext,
    Out,
    Output,
    ResourceParam,
    in_process_executor,
    job,
    op,
)
from pydantic import Field

from xmatch_pipeline.kafka_config import KafkaOperationError
from xmatch_pipeline.microbatch import MicrobatchReport
from xmatch_pipeline.offset_precondition import group_start_problem
from xmatch_pipeline.offset_range import OffsetRange
from xmatch_pipeline.orchestration.metadata import lag_metadata, run_materializations
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
    """Note the group's lag before the run, and refuse early a range that does not start at
    the group's offset (the runner enforces it in any case, even when the lag is unknown)."""
    offset_range = config.offset_range()
    lag = _partition_lag(context, xmatch, offset_range)
    if lag is not None:
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
    """Read → decode → match → store → publish and commit the offsets, exactly once."""
    report = xmatch.services().runner().run(offset_range, run_id=context.run_id, mode="live")
    context.log.info(
        f"{offset_range}: {report.messages_in} alerts, {report.alerts_matched} matched, "
        f"{report.dead_lettered} dead-lettered in {report.elapsed_seconds:.2f} s"
    )
    return report


@op(ins={"report": In(MicrobatchReport)}, out=Out(Nothing))
def record_run_metrics(
    context: OpExecutionContext, report: MicrobatchReport, xmatch: ResourceParam[XmatchResource]
) -> Iterator[AssetMaterialization]:
    """Lineage and metrics in the UI; the original's metrics message when configured."""
    lag_after = _partition_lag(context, xmatch, report.offset_range)
    yield from run_materializations(report, lag_metadata("after", lag_after))
    if xmatch.services().send_metrics(report):
        context.log.info("metrics message sent")


@job(
    executor_def=in_process_executor,
    description="Crossmatch one offset range of one input partition and commit its offsets.",
)
def xmatch_microbatch() -> None:
    record_run_metrics(crossmatch_offset_range(check_offset_range()))


@op(out=Out(Nothing))
def backfill_offset_ranges(
    context: OpExecutionContext, config: BackfillConfig, xmatch: ResourceParam[XmatchResource]
) -> Iterator[AssetMaterialization]:
    """Process each range again; upserts make a processed range leave the tables unchanged."""
    runner = xmatch.services().runner()
    for range_config in config.ranges:
        offset_range = range_config.offset_range()
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
    description="Reprocess explicit offset ranges; never commits the live group's offsets.",
)
def xmatch_backfill() -> None:
    backfill_offset_ranges()
