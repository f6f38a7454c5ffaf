"""Run workers through the real daemon: how fast a queued run starts on a warm worker, whether
a worker's memory grows over many runs, and two workers against one on two partitions.

    .venv/bin/python -m bench.workers [--memory-runs 200]

Each phase has its own topics, consumer group, pipeline database and Dagster storage, the
project's dagster.yaml, a ``dagster-daemon`` and ``xmatch-pipeline worker`` processes (the
latency benchmark's harness), the local engine over the demo catalog, and the demo alerts
(``xmatch_pipeline.devtools.demo``). Results go to ``bench/results/workers.json`` and to a section
of docs/benchmarks.md of its own, between markers that ``bench.pipeline`` keeps when it
rewrites the file (``--report-only`` rewrites the section from the saved JSON).
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

import yaml
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
from xmatch_pipeline.devtools.demo import prepare_demo_data
from xmatch_pipeline.devtools.devstack import DevstackSettings, ensure_devstack_running

RESULTS = PROJECT_ROOT / "bench" / "results" / "workers.json"
REPORT = PROJECT_ROOT / "docs" / "benchmarks.md"
SECTION_START = "<!-- bench.workers: start -->"
SECTION_END = "<!-- bench.workers: end -->"
DEMO_ALERTS = 2000
START_TARGET_SECONDS = 0.5
MEMORY_TARGET = 1.1


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


def start_breakdown(dagster_url: str) -> dict[str, float]:
    """Medians of queued → dequeued (the daemon's queue loop took the run and launched it)
    and dequeued → started (broker, worker, the run's own start), from the event log."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(dagster_url, poolclass=NullPool)
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT r.run_id, EXTRACT(EPOCH FROM r.create_timestamp) AS queued, "
                "EXTRACT(EPOCH FROM MIN(e.timestamp) FILTER (WHERE e.dagster_event_type = "
                "'PIPELINE_STARTING')) AS dequeued, EXTRACT(EPOCH FROM MIN(e.timestamp) "
                "FILTER (WHERE e.dagster_event_type = 'PIPELINE_START')) AS started "
                "FROM runs r JOIN event_logs e ON e.run_id = r.run_id "
                "WHERE r.status = 'SUCCESS' GROUP BY r.run_id, r.create_timestamp"
            )
        ).mappings()
        phases = [dict(row) for row in rows]
    engine.dispose()
    return {
        "queued_to_dequeued_median": statistics.median(
            float(row["dequeued"]) - float(row["queued"]) for row in phases
        ),
        "dequeued_to_started_median": statistics.median(
            float(row["started"]) - float(row["dequeued"]) for row in phases
        ),
    }


def measure_start_latency(devstack, index_dir, alerts: list[bytes], runs: int) -> dict[str, Any]:
    """One partition, a few alerts every sensor tick: each run finds the worker idle."""
    with phase(devstack, index_dir, 1) as current:
        current.worker("latency")
        current.daemon()
        for number in range(runs):
            current.produce(alerts[number * 10 : (number + 1) * 10], 1)
            current.wait_finished(number + 1, 120)
        delays = start_delays(current.runs())
        breakdown = start_breakdown(current.dagster_url)
    return {
        **breakdown,
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


def _verdict(met: bool) -> str:
    return "met" if met else "**MISSED**"


def workers_section(results: dict[str, Any]) -> str:
    """The report's section on run workers, from the saved results."""
    lines = [
        SECTION_START,
        "## 8. Run workers (Celery)",
        "",
        "Generated by `.venv/bin/python -m bench.workers` at "
        f"{results.get('generated', '?')}. Load average (1, 5, 15 min) "
        f"{_loads(results.get('load_average_at_start'))} at the start, "
        f"{_loads(results.get('load_average_at_end'))} at the end: the machine (2 cores) was "
        "shared with other jobs, which moves every absolute number here.",
        "",
        "Each phase: the real `dagster-daemon` (sensor every 5 s, the queue, run monitoring) "
        "with the project's `dagster.yaml` (Celery run launcher), `xmatch-pipeline worker` "
        "processes on the devstack's Redis, the local engine over the demo catalog, the demo "
        "alerts.",
        "",
    ]
    start = results.get("start_latency")
    if start:
        median = start["queued_to_started_median"]
        dequeue = start.get("queued_to_dequeued_median", float("nan"))
        launch = start.get("dequeued_to_started_median", float("nan"))
        lines += [
            f"- **Queued → started, warm worker** ({start['runs']} runs of 10 alerts on one "
            "partition, the worker idle when each is queued): median "
            f"{median:.2f} s, p99 {start['queued_to_started_p99']:.2f} s, max "
            f"{start['queued_to_started_max']:.2f} s (target median ≤ {START_TARGET_SECONDS} s: "
            f"{_verdict(median <= START_TARGET_SECONDS)}; before the workers: 8.1 s; with "
            "the workers but the queue passed over every second: 1.91 s). Of that, queued → "
            "dequeued (the sensor submitting the run, then the daemon's queue loop, every "
            f"`dequeue_interval_seconds` = {_dequeue_interval()} s) {dequeue:.2f} s, dequeued "
            "→ started (the launch to Redis, the worker taking it, the run's own start in the "
            f"warm pool process) {launch:.2f} s.",
        ]
    memory = results.get("memory")
    if memory:
        runs = memory["runs"]
        lines += [
            f"- **Worker memory** (main process + one pool process, {runs} runs of 5 alerts "
            f"over 8 partitions, {memory['failed_runs']} failed): "
            f"{memory['rss_mb_after_10']:.0f} MB after 10 runs, "
            f"{memory[f'rss_mb_after_{runs}']:.0f} MB after {runs}: {memory['growth']:.2f}x "
            f"(target ≤ {MEMORY_TARGET}x: {_verdict(memory['growth'] <= MEMORY_TARGET)}).",
        ]
    scaling = results.get("scaling")
    if scaling and len(scaling) == 2:
        one, two = scaling
        lines += [
            f"- **Two workers against one** ({one['alerts']:,} alerts on two partitions, runs "
            "of 1,000, one pool process per worker; first run queued → last run finished): "
            f"one worker {one['drain_seconds']:.1f} s, two workers {two['drain_seconds']:.1f} s: "
            f"{one['drain_seconds'] / two['drain_seconds']:.2f}x (median run "
            f"{one['median_run_seconds']:.1f} s and {two['median_run_seconds']:.1f} s).",
        ]
    lines.append("")
    for note in results.get("notes", []):
        lines += [note, ""]
    lines.append(SECTION_END)
    return "\n".join(line for line in lines) + "\n"


def _dequeue_interval() -> str:
    """The project's dagster.yaml queue interval, as configured."""
    settings = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())
    return f"{settings['run_coordinator']['config']['dequeue_interval_seconds']:g}"


def _loads(loads: Any) -> str:
    return ", ".join(f"{value:.1f}" for value in loads) if loads else "?"


def with_workers_section(report: str, section: str) -> str:
    """``report`` with its workers section replaced by ``section`` (appended if absent)."""
    if SECTION_START in report and SECTION_END in report:
        before = report[: report.index(SECTION_START)]
        after = report[report.index(SECTION_END) + len(SECTION_END) :].lstrip("\n")
        return before + section + ("\n" + after if after else "")
    return report.rstrip("\n") + "\n\n" + section


def kept_workers_section(new_report: str, old_report: str) -> str:
    """For ``bench.pipeline``: its new report with the old report's workers section kept."""
    if SECTION_START not in old_report or SECTION_END not in old_report:
        return new_report
    start, end = old_report.index(SECTION_START), old_report.index(SECTION_END)
    return with_workers_section(new_report, old_report[start : end + len(SECTION_END)] + "\n")


def write_section(results: dict[str, Any]) -> None:
    REPORT.write_text(with_workers_section(REPORT.read_text(), workers_section(results)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-runs", type=int, default=20)
    parser.add_argument("--memory-runs", type=int, default=200)
    parser.add_argument("--only", choices=["latency", "memory", "scaling"])
    parser.add_argument("--report-only", action="store_true")
    arguments = parser.parse_args()
    if arguments.report_only:
        write_section(json.loads(RESULTS.read_text()))
        return
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
    results["generated"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    write_section(results)


if __name__ == "__main__":
    main()
