"""The range checks (``xmatch_pipeline.microbatch.range_checks``) as Dagster asset checks on
``postgres/allwise_xmatch``: every microbatch run evaluates them for its range's partition,
and each can also be executed from the UI, where it re-evaluates the asset's latest
materialization."""

from collections.abc import Mapping
from typing import Any

from dagster import (
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    MetadataValue,
    asset_check,
)

from xmatch_pipeline.microbatch.range_checks import (
    CHECK_NAMES,
    CheckName,
    RangeCheckBounds,
    RangeCheckOutcome,
    RangeCounts,
    duplicate_count,
    evaluate_range,
)
from xmatch_pipeline.microbatch.report import MicrobatchReport
from xmatch_pipeline.orchestration.assets import CROSSMATCH_TABLES
from xmatch_pipeline.orchestration.resources import XmatchResource
from xmatch_pipeline.read.kafka_offsets import PartitionLag

_DESCRIPTIONS: dict[CheckName, str] = {
    "offsets_accounted": "Every message of the range is in the output or the dead letters.",
    "no_duplicate_candid": "No candid twice in the range's output.",
    "match_rate_in_bounds": "Match rate within XMATCH_CHECK_MIN/MAX_MATCH_RATE.",
    "lag_below_threshold": "The partition's lag after the run is at most XMATCH_CHECK_MAX_LAG.",
}


def report_counts(report: MicrobatchReport, lag_after: PartitionLag | None) -> RangeCounts:
    return RangeCounts(
        messages=report.messages_in,
        decoded=report.alerts_decoded,
        produced=report.produced,
        dead_lettered=report.dead_lettered,
        matched=report.alerts_matched,
        duplicate_candids=duplicate_count(report.candids),
        output_produced=report.output_produced,
        lag_after=None if lag_after is None else lag_after.lag,
    )


def _metadata(outcome: RangeCheckOutcome) -> dict[str, Any]:
    values = {
        name: MetadataValue.int(value) if isinstance(value, int) else MetadataValue.float(value)
        for name, value in outcome.values.items()
    }
    return {"summary": MetadataValue.text(outcome.description), **values}


def _severity(outcome: RangeCheckOutcome) -> AssetCheckSeverity:
    return AssetCheckSeverity.ERROR if outcome.severity == "error" else AssetCheckSeverity.WARN


def range_check_evaluations(
    report: MicrobatchReport, lag_after: PartitionLag | None, bounds: RangeCheckBounds
) -> list[AssetCheckEvaluation]:
    """The checks of one run, for its range's partition (never blocking: already committed)."""
    return [
        AssetCheckEvaluation(
            asset_key=CROSSMATCH_TABLES,
            check_name=outcome.name,
            passed=outcome.passed,
            metadata=_metadata(outcome),
            severity=_severity(outcome),
            partition=report.offset_range.key,
        )
        for outcome in evaluate_range(report_counts(report, lag_after), bounds)
    ]


def _metadata_int(metadata: Mapping[str, Any], name: str) -> int:
    value = metadata.get(name)
    return int(value.value) if value is not None else 0


def _latest_counts(context: AssetCheckExecutionContext) -> RangeCounts | None:
    event = context.instance.get_latest_materialization_event(CROSSMATCH_TABLES)
    if event is None or event.asset_materialization is None:
        return None
    metadata = event.asset_materialization.metadata
    produced = metadata.get("output_produced")
    lag = metadata.get("lag_after")
    return RangeCounts(
        messages=_metadata_int(metadata, "alerts_in"),
        decoded=_metadata_int(metadata, "alerts_decoded"),
        produced=_metadata_int(metadata, "produced"),
        dead_lettered=_metadata_int(metadata, "dead_lettered"),
        matched=_metadata_int(metadata, "matched"),
        duplicate_candids=_metadata_int(metadata, "duplicate_candids"),
        output_produced=bool(produced.value) if produced is not None else True,
        lag_after=int(lag.value) if lag is not None else None,
    )


def _check_definition(name: CheckName) -> AssetChecksDefinition:
    @asset_check(asset=CROSSMATCH_TABLES, name=name, description=_DESCRIPTIONS[name])
    def _check(context: AssetCheckExecutionContext, xmatch: XmatchResource) -> AssetCheckResult:
        counts = _latest_counts(context)
        if counts is None:
            return AssetCheckResult(passed=True, description="no range materialized yet")
        bounds = xmatch.services().settings.checks
        for outcome in evaluate_range(counts, bounds):
            if outcome.name == name:
                return AssetCheckResult(
                    passed=outcome.passed, metadata=_metadata(outcome), severity=_severity(outcome)
                )
        return AssetCheckResult(passed=True, description="the latest range has no lag recorded")

    return _check


RANGE_CHECKS = [_check_definition(name) for name in CHECK_NAMES]
