"""Run workers through the real daemon: how fast a queued run starts on a warm worker, whether
a worker's memory grows over many runs, and two workers against one on two partitions.

    .venv/bin/python -m bench.workers [--memory-runs 200]

Each phase has its own topics, consumer group, pipeline database and Dagster storage, the
project's dagster.yaml, a ``dagster-daemon`` and ``xmatch-pipeline worker`` processes (the
latency benchmark's harness), the local engine over the demo catalog, and the demo alerts
(``xmatch_pipeline.demo``). Results go to ``bench/results/workers.json``; the numbers are
quoted in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from bench.pipeline.infra import (
    database_name,
    fresh_database,
    fresh_topic,
    pipeline_environment,
    unique_name,
)
from bench.pipeline.latency import (
    _dagster_runs,
    _start_daemon,
    _stop_daemon,
    _wait_for_sensor,
    _write_instance_settings,
    start_worker,
)
from bench.pipeline.workload import PROJECT_ROOT
from xmatch_pipeline.demo import prepare_demo_data
from xmatch_pipeline.devstack import DevstackSettings, ensure_devstack_running

RESULTS = PROJECT_ROOT / "bench" / "results" / "workers.json"
DEMO_ALERTS = 2000


@dataclass
class Phase:
    devstack: DevstackSettings
    home: Path
    environment: dict[str, str]
    input_topic: str
    dagster_url: str
    processes: list[Any]

    def produce(self, values: list[bytes], partitions: int) -> None:
        producer = Producer(
            {"bootstrap.servers": self.devstack.kafka_bootstrap_servers, "linger.ms": 5}
        )
        for number, value in enumerate(values):
            producer.produce(self.input_topic, value, partition=number % partitions)
            producer.poll(0)
        if producer.flush(60):
            raise RuntimeError("bench.workers: alerts undelivered after 60 s")

    def runs(self) -> list[dict[str, Any]]:
        return _dagster_runs(self.dagster_url)

    def finished(self) -> int:
        return sum(1 for run in self.runs() if run["status"] in ("SUCCESS", "FAILURE"))

    def wait_finished(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.finished() < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.finished()} of {count} runs finished in time")
            time.sleep(0.5)

    def worker(self, name: str, concurrency: int = 1) -> Any:
        process = start_worker(
            self.environment, self.home / f"{name}.log", concurrency=concurrency, name=name
        )
        self.processes.append(process)
        return process

    def daemon(self) -> None:
        daemon = _start_daemon(self.environment, self.home / "daemon.log")
        self.processes.append(daemon)
        _wait_for_sensor(daemon, self.home / "daemon.log")


@contextmanager
def phase(
    devstack: DevstackSettings, index_dir: Path, partitions: int, **settings: str
) -> Iterator[Phase]:
    home = Path(tempfile.mkdtemp(prefix="xmatch-bench-workers-"))
    _write_instance_settings(home, None)
    with (
        fresh_database(devstack, with_schema=False) as database_url,
        fresh_database(devstack, with_schema=False) as dagster_url,
        fresh_topic(devstack, "bench-workers-in", partitions) as input_topic,
        fresh_topic(devstack, "bench-workers-out", partitions) as output_topic,
    ):
        environment = os.environ | pipeline_environment(
            devstack,
            database_url=database_url,
            input_topic=input_topic,
            output_topic=output_topic,
            group_id=unique_name("bench-workers"),
            index_dir=index_dir,
            XMATCH_SENSOR_INTERVAL_SECONDS="5",
            DAGSTER_HOME=str(home),
            DAGSTER_PG_DB=database_name(dagster_url),
            **settings,
        )
        current = Phase(devstack, home, environment, input_topic, dagster_url, [])
        try:
            yield current
        finally:
            for process in reversed(current.processes):
                _stop_daemon(process)


def process_tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (a worker and its pool)."""
    children: dict[int, list[int]] = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines())
        except (OSError, ValueError):
            continue
        children.setdefault(int(fields["PPid"]), []).append(int(status.parent.name))
    total_kb, pending = 0, [pid]
    while pending:
        current = pending.pop()
        pending.extend(children.get(current, []))
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def start_delays(runs: list[dict[str, Any]]) -> list[float]:
    return [
        float(run["start_time"]) - float(run["queued"])
        for run in runs
        if run["start_time"] and run["status"] == "SUCCESS"
    ]


def measure_start_latency(devstack, index_dir, alerts: list[bytes], runs: int) -> dict[str, Any]:
    """One partition, a few alerts every sensor tick: each run finds the worker idle."""
    with phase(devstack, index_dir, 1) as current:
        current.worker("latency")
        current.daemon()
        for number in range(runs):
            current.produce(alerts[number * 10 : (number + 1) * 10], 1)
            current.wait_finished(number + 1, 120)
        delays = start_delays(current.runs())
    return {
        "runs": len(delays),
        "queued_to_started_median": statistics.median(delays),
        "queued_to_started_p99": percentile(delays, 0.99),
        "queued_to_started_max": max(delays),
    }


def measure_memory(devstack, index_dir, alerts: list[bytes], runs: int) -> dict[str, Any]:
    """Eight partitions of small runs through one worker with one pool process."""
    partitions = 8
    per_run = 5
    with phase(
        devstack, index_dir, partitions, XMATCH_MAX_MESSAGES_PER_RUN=str(per_run)
    ) as current:
        worker = current.worker("memory")
        current.daemon()
        values = (alerts * (1 + runs * per_run // len(alerts)))[: runs * per_run]
        current.produce(values, partitions)
        samples: dict[int, float] = {}
        started = time.monotonic()
        for checkpoint in (10, runs):
            current.wait_finished(checkpoint, 60 + 10 * runs)
            samples[checkpoint] = process_tree_rss_mb(worker.pid)
        elapsed = time.monotonic() - started
        failed = sum(1 for run in current.runs() if run["status"] == "FAILURE")
    return {
        "runs": runs,
        "rss_mb_after_10": samples[10],
        f"rss_mb_after_{runs}": samples[runs],
        "growth": samples[runs] / samples[10],
        "failed_runs": failed,
        "seconds": elapsed,
    }


def measure_scaling(devstack, index_dir, alerts: list[bytes], workers: int) -> dict[str, Any]:
    """Two partitions of 2,000 alerts each, runs of 1,000: drain time with 1 or 2 workers."""
    with phase(devstack, index_dir, 2, XMATCH_MAX_MESSAGES_PER_RUN="1000") as current:
        for number in range(workers):
            current.worker(f"scaling-{number}")
        current.produce(alerts + alerts, 2)
        started = time.time()
        current.daemon()
        current.wait_finished(4, 600)
        runs = current.runs()
    first_queued = min(float(run["queued"]) for run in runs)
    last_end = max(float(run["end_time"]) for run in runs)
    run_seconds = [float(run["end_time"]) - float(run["start_time"]) for run in runs]
    return {
        "workers": workers,
        "alerts": 2 * len(alerts),
        "drain_seconds": last_end - first_queued,
        "median_run_seconds": statistics.median(run_seconds),
        "daemon_to_first_queued": first_queued - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-runs", type=int, default=20)
    parser.add_argument("--memory-runs", type=int, default=200)
    parser.add_argument("--only", choices=["latency", "memory", "scaling"])
    arguments = parser.parse_args()
    devstack = ensure_devstack_running()
    data = prepare_demo_data(devstack.devstack_dir / "demo", DEMO_ALERTS)
    alerts = [path.read_bytes() for path in sorted(data.alerts_dir.glob("*.avro"))]
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["load_average_at_start"] = os.getloadavg()
    if arguments.only in (None, "latency"):
        results["start_latency"] = measure_start_latency(
            devstack, data.catalog_index, alerts, arguments.latency_runs
        )
        print(json.dumps(results["start_latency"]), flush=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    if arguments.only in (None, "memory"):
        results["memory"] = measure_memory(
            devstack, data.catalog_index, alerts, arguments.memory_runs
        )
        print(json.dumps(results["memory"]), flush=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    if arguments.only in (None, "scaling"):
        results["scaling"] = [
            measure_scaling(devstack, data.catalog_index, alerts, workers) for workers in (1, 2)
        ]
        print(json.dumps(results["scaling"]), flush=True)
    results["load_average_at_end"] = os.getloadavg()
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
