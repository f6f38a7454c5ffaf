"""One measurement in a fresh process: ``python -m bench.pipeline.child METHOD RANGE``.

The settings come from the environment, as in production. Imports happen before the clock
starts (a deployment pays them once per process, the latency benchmark measures them in the
daemon's runs); the clock covers everything a run does, from building its clients to the
committed offsets. ``job`` and ``runner`` run in a warm process, as a run worker's pool
process runs them: a 1,000-alert backfill went through the same services first, outside the
clock; ``job_cold`` is the first run of a fresh process. The last stdout line is a JSON
object; ``peak_rss_mb`` is the process's ``ru_maxrss`` at the end.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import resource
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from xmatch_pipeline.microbatch.offset_range import OffsetRange
from xmatch_pipeline.settings import PipelineSettings, load_settings

METHODS = ("job", "job_cold", "runner", "passthrough", "naive")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _high_water_mb() -> float:
    """This process's own peak RSS (``VmHWM``).

    ``ru_maxrss`` is not: Linux carries the parent's high-water mark over fork and exec, so a
    child of a large parent reports at least the parent's size.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _report_fields(report: Any) -> dict[str, Any]:
    return {
        "messages": report.messages_in,
        "bytes_in": report.bytes_in,
        "bytes_out": report.bytes_out,
        "matched": report.alerts_matched,
        "stages": asdict(report.seconds),
    }


#: Alerts a warm process runs before the measured run: a backfill, so the group's offsets
#: stay where the measured live run starts.
WARM_UP_ALERTS = 1_000


def warm_up_range(offset_range: OffsetRange, high_watermark: int) -> OffsetRange:
    """What the process runs first: the offsets right after the measured range when the topic
    has them (nothing of the measured run is cached then), else the topic's first offsets."""
    size = min(WARM_UP_ALERTS, offset_range.end - offset_range.start)
    if offset_range.end + size <= high_watermark:
        return replace(offset_range, start=offset_range.end, end=offset_range.end + size)
    return replace(offset_range, start=0, end=size)


def _high_watermark(settings: PipelineSettings, offset_range: OffsetRange) -> int:
    from confluent_kafka import Consumer, TopicPartition

    from xmatch_pipeline.services import kafka_client_config

    kafka = kafka_client_config(settings.kafka_bootstrap_servers, None)
    consumer = Consumer(kafka.as_dict({"group.id": "bench-watermarks"}))
    try:
        _, high = consumer.get_watermark_offsets(
            TopicPartition(offset_range.topic, offset_range.partition), timeout=10
        )
    finally:
        consumer.close()
    return int(high)


def _runner(settings: PipelineSettings, offset_range: OffsetRange) -> Callable[[], dict[str, Any]]:
    """The runner in a warm process: its services have already run a range, as in a worker."""
    from xmatch_pipeline.services import PipelineServices

    services = PipelineServices(settings)
    warm_up = warm_up_range(offset_range, _high_watermark(settings, offset_range))
    services.runner().run(warm_up, run_id=uuid.uuid4().hex, mode="backfill")

    def run() -> dict[str, Any]:
        try:
            report = services.runner().run(offset_range, run_id=uuid.uuid4().hex, mode="live")
        finally:
            services.dispose()
        return _report_fields(report)

    return run


def _job_run(offset_range: OffsetRange) -> dict[str, Any]:
    from dagster import mem_io_manager

    from xmatch_pipeline.orchestration.jobs import microbatch_run_config, xmatch_microbatch
    from xmatch_pipeline.orchestration.resources import XmatchResource

    result = xmatch_microbatch.execute_in_process(
        run_config=microbatch_run_config(offset_range),
        resources={
            "xmatch": XmatchResource(load_settings(os.environ)),
            "io_manager": mem_io_manager,
        },
    )
    if not result.success:
        raise RuntimeError("the xmatch_microbatch run failed")
    return _report_fields(result.output_for_node("crossmatch_offset_range"))


def _job(settings: PipelineSettings, offset_range: OffsetRange) -> Callable[[], dict[str, Any]]:
    """The job in a warm process, as a run worker executes it: a backfill ran there first."""
    from dagster import mem_io_manager

    from xmatch_pipeline.orchestration.jobs import xmatch_backfill
    from xmatch_pipeline.orchestration.resources import XmatchResource

    warm_up = warm_up_range(offset_range, _high_watermark(settings, offset_range))
    ranges = [{"topic": warm_up.topic, "partition": warm_up.partition,
               "start_offset": warm_up.start, "end_offset": warm_up.end}]  # fmt: skip
    result = xmatch_backfill.execute_in_process(
        run_config={"ops": {"backfill_offset_ranges": {"config": {"ranges": ranges}}}},
        resources={
            "xmatch": XmatchResource(load_settings(os.environ)),
            "io_manager": mem_io_manager,
        },
    )
    if not result.success:
        raise RuntimeError("the warm-up backfill run failed")
    return lambda: _job_run(offset_range)


def _job_cold(
    _settings: PipelineSettings, offset_range: OffsetRange
) -> Callable[[], dict[str, Any]]:
    """The job as the first run of a fresh process (a launcher that starts one per run)."""
    return lambda: _job_run(offset_range)


def _passthrough(
    settings: PipelineSettings, offset_range: OffsetRange
) -> Callable[[], dict[str, Any]]:
    """The limit: read the range and produce the same bytes in a transaction with the offsets."""
    from xmatch_pipeline.publish.kafka_transaction import (
        TransactionalPublisher,
        transactional_id_for,
    )
    from xmatch_pipeline.read.kafka_range_reader import KafkaRangeReader
    from xmatch_pipeline.services import kafka_client_config

    def run() -> dict[str, Any]:
        kafka = kafka_client_config(settings.kafka_bootstrap_servers, None)
        group = settings.consumer_group_id
        reader = KafkaRangeReader(kafka, group)
        publisher = TransactionalPublisher(
            kafka, transactional_id_for(group, offset_range.topic, offset_range.partition)
        )
        messages = size = 0
        try:
            publisher.init()
            publisher.begin()
            for chunk in reader.read(offset_range, settings.chunk_messages):
                for record in chunk:
                    publisher.produce(settings.output_topic, record.value, key=record.key)
                    messages += 1
                    size += record.size
            publisher.commit_with_offsets(
                {(offset_range.topic, offset_range.partition): offset_range.end},
                reader.consumer_group_metadata(),
            )
        finally:
            publisher.close()
            reader.close()
        return {"messages": messages, "bytes_in": size, "bytes_out": size}

    return run


def _naive(settings: PipelineSettings, offset_range: OffsetRange) -> Callable[[], dict[str, Any]]:
    from bench.pipeline.naive import run_naive

    def run() -> dict[str, Any]:
        return dict(run_naive(settings, offset_range, settings.chunk_messages))

    return run


def _ensure_schema(settings: PipelineSettings) -> None:
    """The tables of this code's version, before the clock (a deployment creates them once)."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from xmatch_pipeline.store.schema import ensure_schema

    engine = create_engine(settings.database.sqlalchemy_url(), poolclass=NullPool)
    try:
        ensure_schema(engine)
    finally:
        engine.dispose()


_BUILDERS = {
    "job": _job,
    "job_cold": _job_cold,
    "runner": _runner,
    "passthrough": _passthrough,
    "naive": _naive,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method", choices=METHODS)
    parser.add_argument("topic")
    parser.add_argument("partition", type=int)
    parser.add_argument("start", type=int)
    parser.add_argument("end", type=int)
    parser.add_argument("--profile", help="write a cProfile of the measured part here")
    arguments = parser.parse_args()
    settings = load_settings(os.environ)
    offset_range = OffsetRange(arguments.topic, arguments.partition, arguments.start, arguments.end)
    _ensure_schema(settings)
    run = _BUILDERS[arguments.method](settings, offset_range)
    rss_before = _peak_rss_mb()
    profiler = cProfile.Profile() if arguments.profile else None
    started_at = time.time()
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    result = run()
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(arguments.profile)
    seconds = time.perf_counter() - started
    result |= {
        "method": arguments.method,
        "seconds": seconds,
        "started_at": started_at,
        "finished_at": started_at + seconds,
        "peak_rss_mb": _peak_rss_mb(),
        "high_water_mb": _high_water_mb(),
        "rss_before_mb": rss_before,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
