"""A run's report as asset metadata: numbers the UI can plot run after run."""

from collections.abc import Mapping
from typing import Any

from dagster import AssetMaterialization, MetadataValue

from xmatch_pipeline.microbatch import MicrobatchReport
from xmatch_pipeline.orchestration.assets import CROSSMATCH_TABLES, DEAD_LETTER_TOPIC, OUTPUT_TOPIC
from xmatch_pipeline.read.kafka_offsets import PartitionLag


def report_metadata(report: MicrobatchReport) -> dict[str, Any]:
    seconds = report.seconds
    elapsed = report.elapsed_seconds
    return {
        "offset_range": MetadataValue.text(str(report.offset_range)),
        "mode": MetadataValue.text(report.mode),
        "alerts_in": MetadataValue.int(report.messages_in),
        "alerts_decoded": MetadataValue.int(report.alerts_decoded),
        "matched": MetadataValue.int(report.alerts_matched),
        "match_rate": MetadataValue.float(report.match_rate),
        "dead_lettered": MetadataValue.int(report.dead_lettered),
        "sent_to_engine": MetadataValue.int(report.sent_to_engine),
        "served_from_cache": MetadataValue.int(report.served_from_cache),
        "seconds_consume": MetadataValue.float(seconds.consume),
        "seconds_decode": MetadataValue.float(seconds.decode),
        "seconds_crossmatch": MetadataValue.float(seconds.crossmatch),
        "seconds_database": MetadataValue.float(seconds.database),
        "seconds_produce": MetadataValue.float(seconds.produce),
        "seconds_commit": MetadataValue.float(seconds.commit),
        "seconds_total": MetadataValue.float(elapsed),
        "alerts_per_second": MetadataValue.float(report.alerts_per_second),
        "megabytes_per_second": MetadataValue.float(
            report.bytes_in / 1e6 / elapsed if elapsed > 0 else 0.0
        ),
    }


def lag_metadata(prefix: str, lag: PartitionLag | None) -> dict[str, Any]:
    return {} if lag is None else {f"lag_{prefix}": MetadataValue.int(lag.lag)}


def run_materializations(
    report: MicrobatchReport, extra: Mapping[str, Any]
) -> list[AssetMaterialization]:
    """One event per asset the run wrote, so lineage and history show what each run did."""
    metadata = {**report_metadata(report), **extra}
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
    events = [AssetMaterialization(CROSSMATCH_TABLES, metadata=table_metadata)]
    if report.output_produced:
        events.append(AssetMaterialization(OUTPUT_TOPIC, metadata=metadata))
        if report.dead_lettered:
            events.append(
                AssetMaterialization(
                    DEAD_LETTER_TOPIC,
                    metadata={"dead_lettered": MetadataValue.int(report.dead_lettered)},
                )
            )
    return events
