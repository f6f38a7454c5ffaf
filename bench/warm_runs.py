"""Per-run time of ``xmatch_microbatch`` in one long-lived process: warm services vs cold.

A worker executes run after run in one process. This runs the job ``RUNS`` times over
consecutive ranges, in process, twice over the same input: once with the services kept
between runs (``warm_services``, as a worker does), once with them disposed before every
run (every run builds its database pool, Kafka readers, local index and its partition
cache anew). It also times what a run pays for its new transactional producer
(construction + ``init_transactions``), which is never kept (see ``microbatch/runner.py``).

    .venv/bin/python -m bench.warm_runs [--runs 8] [--size 500]

Writes ``bench/results/warm_runs.json`` and prints a Markdown table for
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from dagster import DagsterInstance, mem_io_manager

from bench.pipeline.infra import (
    create_topic,
    delete_topics,
    fresh_database,
    pipeline_environment,
    produce_alerts,
    unique_name,
)
from xmatch_pipeline.devtools.demo import prepare_demo_data
from xmatch_pipeline.devtools.devstack import ensure_devstack_running
from xmatch_pipeline.microbatch.offset_range import OffsetRange
from xmatch_pipeline.orchestration.jobs import microbatch_run_config, xmatch_microbatch
from xmatch_pipeline.orchestration.resources import XmatchResource
from xmatch_pipeline.publish.kafka_transaction import TransactionalPublisher
from xmatch_pipeline.services import kafka_client_config
from xmatch_pipeline.settings import load_settings
from xmatch_pipeline.warm_services import dispose_warm_services

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = PROJECT_ROOT / ".devstack" / "bench-cache" / "warm-runs"
RESULTS = PROJECT_ROOT / "bench" / "results" / "warm_runs.json"


def _run_all(
    environment: dict[str, str], topic: str, runs: int, size: int, *, warm: bool
) -> list[float]:
    xmatch = XmatchResource(load_settings(environment))
    instance = DagsterInstance.ephemeral()
    seconds = []
    for number in range(runs):
        if not warm:
            dispose_warm_services()
        offset_range = OffsetRange(topic, 0, number * size, (number + 1) * size)
        started = time.perf_counter()
        result = xmatch_microbatch.execute_in_process(
            run_config=microbatch_run_config(offset_range),
            instance=instance,
            resources={"xmatch": xmatch, "io_manager": mem_io_manager},
        )
        seconds.append(time.perf_counter() - started)
        if not result.success:
            raise RuntimeError(f"run over {offset_range} failed")
    dispose_warm_services()
    return seconds


def _producer_start_seconds(bootstrap: str, repeats: int = 5) -> list[float]:
    config = kafka_client_config(bootstrap, None)
    seconds = []
    for number in range(repeats):
        started = time.perf_counter()
        publisher = TransactionalPublisher(config, f"xmatch-bench-warm-{number}")
        publisher.init()
        seconds.append(time.perf_counter() - started)
        publisher.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--size", type=int, default=500, help="alerts per run")
    arguments = parser.parse_args()
    runs, size = arguments.runs, arguments.size
    devstack = ensure_devstack_running()
    data = prepare_demo_data(CACHE_DIR, runs * size)
    values = [path.read_bytes() for path in sorted(data.alerts_dir.glob("*.avro"))][: runs * size]
    topic = create_topic(devstack, unique_name("bench-warm-in"))
    outputs: list[str] = [topic]
    load = os.getloadavg()
    results: dict[str, Any] = {"runs": runs, "size": size, "load_before": load}
    try:
        produce_alerts(devstack, topic, values)
        for mode in ("cold", "warm"):
            output = create_topic(devstack, unique_name(f"bench-warm-{mode}-out"))
            outputs.append(output)
            with fresh_database(devstack) as database_url:
                environment = pipeline_environment(
                    devstack,
                    database_url=database_url,
                    input_topic=topic,
                    output_topic=output,
                    group_id=unique_name(f"bench-warm-{mode}"),
                    index_dir=data.catalog_index,
                    XMATCH_MAX_MESSAGES_PER_RUN=str(size),
                )
                results[mode] = _run_all(environment, topic, runs, size, warm=mode == "warm")
        results["producer_start"] = _producer_start_seconds(devstack.kafka_bootstrap_servers)
    finally:
        delete_topics(devstack, outputs)
    results["load_after"] = os.getloadavg()
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"| {runs} runs of {size} alerts, one process | first run | later runs (median) |")
    print("|---|---:|---:|")
    for mode, label in (("cold", "cold (services built every run)"), ("warm", "warm (kept)")):
        seconds = results[mode]
        print(f"| {label} | {seconds[0]:.2f} s | {statistics.median(seconds[1:]):.2f} s |")
    producer_ms = statistics.median(results["producer_start"]) * 1000
    print(f"new transactional producer + init_transactions: median {producer_ms:.0f} ms")
    print(f"load average before {load}, after {results['load_after']}")


if __name__ == "__main__":
    main()
