"""A run's report as asset metadata a person reads at a glance: counts as integers,
durations in seconds and rates rounded to what is meaningful, the range as text, each
value typed so the UI plots it run after run (and per partition: the lag)."""

from collections.abc import Mapping
from typing import Any

from dagster import AssetMaterialization, FloatMetadataValue, MetadataValue

from xmatch_pipeline.microbatch.range_checks import duplicate_count
from xmatch_pipeline.microbatch.report import MicrobatchReport
from xmatch_pipeline.orchestration.assets import CROSSMATCH_TABLES, DEAD_LETTER_TOPIC, OUTPUT_TOPIC
from xmatch_pipeline.read.kafka_offsets import PartitionLag


def _seconds(value: float) -> FloatMetadataValue:
    return MetadataValue.float(round(value, 3))


def report_metadata(report: MicrobatchReport) -> dict[str, Any]:
    seconds = report.seconds
    elapsed = report.elapsed_seconds
    return {
        "offset_range": MetadataValue.text(str(report.offset_range)),
        "partition_key": MetadataValue.text(report.offset_range.key),
        "mode": MetadataValue.text(report.mode),
        "output_produced": MetadataValue.bool(report.output_produced),
        "alerts_in": MetadataValue.int(report.messages_in),
        "alerts_decoded": MetadataValue.int(report.alerts_decoded),
        "matched": MetadataValue.int(report.alerts_matched),
        "match_rate": MetadataValue.float(round(report.match_rate, 4)),
        "produced": MetadataValue.int(report.produced),
        "dead_lettered": MetadataValue.int(report.dead_lettered),
        "duplicate_candids": MetadataValue.int(duplicate_count(report.candids)),
        "sent_to_engine": MetadataValue.int(report.sent_to_engine),
        "served_from_cache": MetadataValue.int(report.served_from_cache),
        "seconds_consume": _seconds(seconds.consume),
        "seconds_decode": _seconds(seconds.decode),
        "seconds_crossmatch": _seconds(seconds.crossmatch),
        "seconds_database": _seconds(seconds.database),
        "seconds_produce": _seconds(seconds.produce),
        "seconds_commit": _seconds(seconds.commit),
        "seconds_total": _seconds(elapsed),
        "alerts_per_second": MetadataValue.float(round(report.alerts_per_second, 1)),
        "megabytes_per_second": MetadataValue.float(
            round(report.bytes_in / 1e6 / elapsed, 2) if elapsed > 0 else 0.0
        ),
    }


def lag_metadata(prefix: str, lag: PartitionLag | None) -> dict[str, Any]:
    return {} if lag is None else {f"lag_{prefix}": MetadataValue.int(lag.lag)}


def run_materializations(
    report: MicrobatchReport, extra: Mapping[str, Any]
) -> list[AssetMaterialization]:
    """One event per asset the run wrote, for the range's partition, so lineage, history
    and the partitions view show what each run did."""
    metadata = {**report_metadata(report), **extra}
    partition = report.offset_range.key
    counts = report.database_counts
    table_metadata = dict(metadata)
    if counts is not None:
        for table, count in (
            ("object", counts.objects),
            *sorted(counts.catalogs.items()),
            ("xmatch", counts.xmatch),
        ):
            table_metadata[f"{table}_inserted"] = MetadataValue.int(count.inserted)
            table_metadata[f"{table}_updated"] = MetadataValue.int(count.updated)
    events = [AssetMaterialization(CROSSMATCH_TABLES, partition=partition, metadata=table_metadata)]
    if report.output_produced:
        events.append(AssetMaterialization(OUTPUT_TOPIC, partition=partition, metadata=metadata))
        if report.dead_lettered:
            events.append(
                AssetMaterialization(
                    DEAD_LETTER_TOPIC,
                    partition=partition,
                    metadata={"dead_lettered": MetadataValue.int(report.dead_lettered)},
                )
            )
    return events
