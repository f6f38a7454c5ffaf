"""The lag sensor's tick time with many existing offset-range partitions (dynamic partitions
grow every night), against none.

    .venv/bin/python -m bench.partitions_sensor [--partitions 10000] [--ticks 10]

A Dagster instance on the devstack's PostgreSQL (as in production, not SQLite) holds N
partitions of ``offset_ranges`` and, for each, a finished ``xmatch_microbatch`` run with the
sensor's tags (the history a deployment accumulates); a topic of two partitions has lag on
both. Each tick is what the daemon does for ``kafka_lag_sensor``: evaluate it (offsets, the
ledger, runs in flight, unused run keys) and apply its partition requests (add the two new
keys, then check each requested key exists). Results go to
``bench/results/partitions_sensor.json`` and a section of docs/benchmarks.md of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from dagster import (
    AddDynamicPartitionsRequest,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    SensorResult,
    build_sensor_context,
    instance_for_test,
)

from bench.pipeline.infra import fresh_database, fresh_topic, pipeline_environment, produce_alerts
from bench.pipeline.workload import PROJECT_ROOT
from xmatch_pipeline.devtools.devstack import ensure_devstack_running
from xmatch_pipeline.microbatch.offset_range import OffsetRange
from xmatch_pipeline.orchestration import run_tags
from xmatch_pipeline.orchestration.partitions import OFFSET_RANGES_NAME
from xmatch_pipeline.orchestration.resources import XmatchResource
from xmatch_pipeline.orchestration.sensors import build_kafka_lag_sensor
from xmatch_pipeline.settings import load_settings

RESULTS = PROJECT_ROOT / "bench" / "results" / "partitions_sensor.json"
REPORT = PROJECT_ROOT / "docs" / "benchmarks.md"
SECTION_START = "<!-- bench.partitions_sensor: start -->"
SECTION_END = "<!-- bench.partitions_sensor: end -->"
TARGET_SECONDS = 2.0


def _history(instance: DagsterInstance, count: int) -> float:
    """``count`` old ranges as partitions, each with a succeeded run; returns seconds taken."""
    started = time.perf_counter()
    ranges = [
        OffsetRange(f"ztf_2020{1 + night // 28:02d}{1 + night % 28:02d}_programid1", p, s, s + 500)
        for night in range(count // 200 + 1)
        for p in range(4)
        for s in range(0, 50 * 500, 500)
    ][:count]
    for first in range(0, len(ranges), 1000):
        instance.add_dynamic_partitions(
            OFFSET_RANGES_NAME, [r.key for r in ranges[first : first + 1000]]
        )
    for offset_range in ranges:
        instance.add_run(
            DagsterRun(
                job_name="xmatch_microbatch",
                run_id=str(uuid.uuid4()),
                status=DagsterRunStatus.SUCCESS,
                tags={
                    **run_tags.range_tags(offset_range, 1),
                    "dagster/partition": offset_range.key,
                    run_tags.DAGSTER_RUN_KEY: f"{offset_range}#attempt1",
                },
            )
        )
    return time.perf_counter() - started


def _tick(instance: DagsterInstance) -> tuple[float, int]:
    sensor = build_kafka_lag_sensor(5)
    started = time.perf_counter()
    with build_sensor_context(
        instance=instance, resources={"xmatch": XmatchResource(load_settings(os.environ))}
    ) as context:
        result = sensor(context)
    assert isinstance(result, SensorResult), result
    for partitions_request in result.dynamic_partitions_requests or []:
        assert isinstance(partitions_request, AddDynamicPartitionsRequest)
        instance.add_dynamic_partitions(
            partitions_request.partitions_def_name, list(partitions_request.partition_keys)
        )
    for request in result.run_requests or []:
        assert request.partition_key is not None
        assert instance.has_dynamic_partition(OFFSET_RANGES_NAME, request.partition_key)
    return time.perf_counter() - started, len(result.run_requests or [])


def _measure(dagster_url: str, partitions: int, ticks: int) -> dict[str, Any]:
    overrides = {"storage": {"postgres": {"postgres_url": dagster_url}}}
    with instance_for_test(overrides=overrides) as instance:
        setup = _history(instance, partitions) if partitions else 0.0
        _tick(instance)  # warm: the resource's clients, the first queries' plans
        samples, requested = [], 0
        for _ in range(ticks):
            seconds, requested = _tick(instance)
            samples.append(seconds)
        keys_started = time.perf_counter()
        existing = len(instance.get_dynamic_partitions(OFFSET_RANGES_NAME))
        all_keys_seconds = time.perf_counter() - keys_started
    return {
        "partitions": partitions,
        "existing_after": existing,
        "setup_seconds": round(setup, 1),
        "runs_requested_per_tick": requested,
        "tick_seconds": [round(s, 4) for s in samples],
        "median_seconds": round(statistics.median(samples), 4),
        "max_seconds": round(max(samples), 4),
        "all_keys_seconds": round(all_keys_seconds, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=10_000)
    parser.add_argument("--ticks", type=int, default=10)
    parser.add_argument("--report-only", action="store_true")
    options = parser.parse_args()
    if not options.report_only:
        devstack = ensure_devstack_running()
        load_before = os.getloadavg()
        results: dict[str, Any] = {"phases": []}
        with fresh_topic(devstack, "bench-partitions-in", partitions=2) as topic:
            produce_alerts(devstack, topic, [b"x"] * 200, partitions=2)
            for count in (0, options.partitions):
                with (
                    fresh_database(devstack) as pipeline_url,
                    fresh_database(devstack, with_schema=False) as dagster_url,
                ):
                    os.environ.update(
                        pipeline_environment(
                            devstack,
                            database_url=pipeline_url,
                            input_topic=topic,
                            output_topic=f"{topic}-out",
                            group_id=f"bench-partitions-{uuid.uuid4().hex[:8]}",
                            index_dir=Path("/nonexistent"),
                            XMATCH_ENGINE="cds",
                            XMATCH_MAX_MESSAGES_PER_RUN="50",
                        )
                    )
                    results["phases"].append(_measure(dagster_url, count, options.ticks))
                    print(json.dumps(results["phases"][-1]))
        results["load_average"] = {"before": load_before, "after": os.getloadavg()}
        results["generated_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        results["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    write_report(json.loads(RESULTS.read_text()))


def section(results: dict[str, Any]) -> str:
    empty, full = results["phases"]
    met = (
        "met"
        if full["median_seconds"] < TARGET_SECONDS and full["max_seconds"] < TARGET_SECONDS
        else "**MISSED**"
    )
    load = results["load_average"]
    return "\n".join(
        [
            SECTION_START,
            "## 10. The lag sensor with many offset-range partitions "
            "(`bench/partitions_sensor.py`)",
            "",
            "Generated by `.venv/bin/python -m bench.partitions_sensor` at "
            f"{results['generated_at']} "
            f"({results['machine']}; load average {load['before'][0]:.1f} before, "
            f"{load['after'][0]:.1f} after). Dagster's storage on the devstack's PostgreSQL; "
            "each tick evaluates `kafka_lag_sensor` (offsets, the ledger, runs in flight, "
            "unused run keys) and applies its partition requests as the daemon does; "
            f"{full['runs_requested_per_tick']} runs requested per tick (two lagging partitions).",
            "",
            "| existing partitions (each with a finished run) | tick median | tick max "
            "| all keys read (what the UI's partitions view loads) |",
            "|---:|---:|---:|---:|",
            *[
                f"| {p['partitions']:,} | {p['median_seconds']:.3f} s | {p['max_seconds']:.3f} s | "
                f"{p['all_keys_seconds']:.3f} s |"
                for p in (empty, full)
            ],
            "",
            f"Target: a tick under {TARGET_SECONDS:.0f} s with {full['partitions']:,} "
            f"partitions: {met}. "
            "The tick does not read the partitions: it adds the keys it plans (an insert of "
            "the missing ones) and checks each requested key by an indexed lookup, and its run "
            "queries filter on status and on the run-key tag, so the tick grows with the runs "
            "in flight, not with the history.",
            SECTION_END,
            "",
        ]
    )


def write_report(results: dict[str, Any]) -> None:
    report = REPORT.read_text()
    text = section(results)
    if SECTION_START in report and SECTION_END in report:
        before = report[: report.index(SECTION_START)]
        after = report[report.index(SECTION_END) + len(SECTION_END) :].lstrip("\n")
        report = before + text + after
    else:
        # Before the soak's section, which bench.soak rewrites to the end of the file.
        soak = report.index("## 9. Soak")
        report = report[:soak] + text + "\n" + report[soak:]
    REPORT.write_text(report)


if __name__ == "__main__":
    main()
