"""``kafka_lag_sensor``: reads offsets (never messages) and requests one run per lagging
partition, and while a partition's run is in flight, its successor (queued behind it by
the one-run-per-partition limit). The planning rules are in
``xmatch_pipeline.microbatch.planning``."""

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from dagster import (
    AddDynamicPartitionsRequest,
    AssetObservation,
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    MetadataValue,
    ResourceParam,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from xmatch_pipeline.kafka.partition_id import PartitionId
from xmatch_pipeline.microbatch.offset_range import OffsetRange
from xmatch_pipeline.microbatch.planning import PlannedRun, plan_runs
from xmatch_pipeline.orchestration import run_tags
from xmatch_pipeline.orchestration.assets import INPUT_TOPICS
from xmatch_pipeline.orchestration.jobs import (
    microbatch_run_config,
    xmatch_backfill,
    xmatch_microbatch,
)
from xmatch_pipeline.orchestration.partitions import BACKFILL_TAG, OFFSET_RANGES_NAME
from xmatch_pipeline.orchestration.resources import XmatchResource
from xmatch_pipeline.read.kafka_offsets import PartitionLag

UNFINISHED_STATUSES = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]


def _backfill_partitions(run_config: Mapping[str, Any]) -> set[PartitionId]:
    """The partitions a backfill run was launched over, from its config (it has no tags)."""
    op_config = run_config.get("ops", {}).get("backfill_offset_ranges", {}).get("config", {})
    return {
        (str(entry["topic"]), int(entry["partition"]))
        for entry in op_config.get("ranges", [])
        if "topic" in entry and "partition" in entry
    }


def _tagged_range(tags: Mapping[str, str]) -> OffsetRange | None:
    """A live run's range from its tags (every run the sensor requests has them)."""
    try:
        return OffsetRange(
            tags[run_tags.TOPIC],
            int(tags[run_tags.PARTITION]),
            int(tags[run_tags.START_OFFSET]),
            int(tags[run_tags.END_OFFSET]),
        )
    except (KeyError, ValueError):
        return None


def runs_in_flight(instance: DagsterInstance) -> dict[PartitionId, list[OffsetRange | None]]:
    """The ranges of every queued or running run per partition: live runs by their tags,
    backfills (ranges unknown to the planner: None) by their tags or the ranges in their
    config."""
    in_flight: dict[PartitionId, list[OffsetRange | None]] = {}
    for job_name in (xmatch_microbatch.name, xmatch_backfill.name):
        runs = instance.get_runs(
            filters=RunsFilter(job_name=job_name, statuses=UNFINISHED_STATUSES)
        )
        for run in runs:
            topic, partition = run.tags.get(run_tags.TOPIC), run.tags.get(run_tags.PARTITION)
            if topic is not None and partition is not None:
                key = (topic, int(partition))
                in_flight.setdefault(key, []).append(
                    _tagged_range(run.tags)
                    if job_name == xmatch_microbatch.name and BACKFILL_TAG not in run.tags
                    else None
                )
            if job_name == xmatch_backfill.name:
                for key in _backfill_partitions(run.run_config):
                    in_flight.setdefault(key, []).append(None)
    return in_flight


def with_unused_run_key(instance: DagsterInstance, planned: PlannedRun) -> PlannedRun:
    """The planned run, its attempt raised past run keys the instance has already seen.

    Dagster never launches a run key twice. A run that failed before it reached the ledger
    (the partition held by another process, the database down at start) leaves its key
    used while the ledger still says nothing of the range; without this the sensor would
    request that key for ever and the partition would stall without a word.
    """
    while instance.get_run_ids(
        RunsFilter(tags={run_tags.DAGSTER_RUN_KEY: planned.run_key}), limit=1
    ):
        planned = replace(planned, attempt=planned.attempt + 1)
    return planned


def run_request(planned: PlannedRun) -> RunRequest:
    offset_range = planned.offset_range
    return RunRequest(
        run_key=planned.run_key,
        partition_key=offset_range.key,
        run_config=microbatch_run_config(offset_range),
        tags=run_tags.range_tags(offset_range, planned.attempt),
    )


def lag_observation(lags: list[PartitionLag]) -> AssetObservation:
    """Lag in all, per topic and per partition, numbers the UI plots tick after tick."""
    per_topic: dict[str, int] = {}
    for lag in lags:
        per_topic[lag.topic] = per_topic.get(lag.topic, 0) + lag.lag
    metadata = {"lag_total": MetadataValue.int(sum(per_topic.values()))}
    metadata |= {f"lag[{topic}]": MetadataValue.int(value) for topic, value in per_topic.items()}
    metadata |= {f"lag[{lag.topic}][{lag.partition}]": MetadataValue.int(lag.lag) for lag in lags}
    return AssetObservation(INPUT_TOPICS, metadata=metadata)


def cursor_for(runs: list[PlannedRun], previous: str | None) -> str:
    """The last range requested per partition, so operators can see what the sensor did."""
    state: dict[str, dict[str, int]] = json.loads(previous) if previous else {}
    for planned in runs:
        offset_range = planned.offset_range
        state[f"{offset_range.topic}:{offset_range.partition}"] = {
            "start": offset_range.start,
            "end": offset_range.end,
            "attempt": planned.attempt,
        }
    return json.dumps(state, sort_keys=True)


def evaluate_lag(context: SensorEvaluationContext, xmatch: XmatchResource) -> SensorResult:
    services = xmatch.services()
    settings = services.settings
    topics = services.input_topics()
    if not topics:
        return SensorResult(
            skip_reason="no input topic exists yet (check CONSUMER_TOPICS, "
            "TOPIC_STRATEGY_FORMAT or XMATCH_TOPIC_PATTERN)",
            cursor=context.cursor,
        )
    lags = services.offsets_reader.lags(topics)
    ledger = services.ledger
    plan = plan_runs(
        lags,
        ledger.entry_starting_at,
        ledger.is_partition_held,
        runs_in_flight(context.instance),
        max_messages_per_run=settings.max_messages_per_run,
        max_attempts=settings.max_run_attempts,
    )
    runs = [with_unused_run_key(context.instance, planned) for planned in plan.runs]
    for skip in plan.skips:
        log = context.log.error if skip.needs_operator else context.log.info
        log(f"{skip.topic}[{skip.partition}]: {skip.reason}")
    skip_reason = None
    if not runs:
        skip_reason = (
            "; ".join(f"{skip.topic}[{skip.partition}]: {skip.reason}" for skip in plan.skips)
            or f"no lag on {len(lags)} partitions of {', '.join(topics)}"
        )
    return SensorResult(
        run_requests=[run_request(planned) for planned in runs],
        # Each range becomes a partition before its run is launched (a retry's is there).
        dynamic_partitions_requests=[
            AddDynamicPartitionsRequest(
                OFFSET_RANGES_NAME, [planned.offset_range.key for planned in runs]
            )
        ]
        if runs
        else [],
        skip_reason=skip_reason,
        cursor=cursor_for(runs, context.cursor),
        asset_events=[lag_observation(lags)],
    )


def build_kafka_lag_sensor(minimum_interval_seconds: int) -> SensorDefinition:
    @sensor(
        name="kafka_lag_sensor",
        job=xmatch_microbatch,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description="Requests one xmatch_microbatch run per lagging input partition.",
    )
    def kafka_lag_sensor(
        context: SensorEvaluationContext, xmatch: ResourceParam[XmatchResource]
    ) -> SensorResult:
        return evaluate_lag(context, xmatch)

    return kafka_lag_sensor
