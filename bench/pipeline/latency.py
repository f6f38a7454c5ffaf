"""Latency under Rubin's load, with the real daemon launching the sensor's queued runs.

A producer sends alerts at a steady rate, round-robin over the input partitions; the
Dagster daemon (``dagster-daemon run`` on the project's ``workspace.yaml``, with
``DAGSTER_HOME`` a temporary folder holding the project's ``dagster.yaml`` and its storage in
a fresh database) evaluates ``kafka_lag_sensor`` every 5 s and launches one queued run per
lagging partition to the Celery broker, where a warm ``xmatch-pipeline worker`` (started
beside the daemon, one pool process per partition) takes it; a ``read_committed`` consumer
notes when each enriched alert becomes visible in the output topic. Latency = that moment
minus the moment the input was produced.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from bench.pipeline.infra import (
    database_name,
    fresh_database,
    fresh_topic,
    pipeline_environment,
    unique_name,
)
from bench.pipeline.workload import CACHE_DIR, MAX_ALERTS, PROJECT_ROOT, AlertCache
from xmatch_pipeline.decode.container import read_container
from xmatch_pipeline.devtools.devstack import DevstackSettings

SENSOR_INTERVAL_SECONDS = 5
DAEMON_READY_TIMEOUT_SECONDS = 180
DRAIN_TIMEOUT_SECONDS = 180
KEPT_DAEMON_LOG = CACHE_DIR / "last-latency-daemon.log"


@dataclass
class LatencyResult:
    rate: float
    duration_seconds: float
    partitions: int
    produced: int
    received: int
    latencies: list[float]
    runs: list[dict[str, Any]]
    achieved_rate: float
    dagster_runs: list[dict[str, Any]]

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _read_varint(data: bytes | memoryview, position: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), position
        shift += 7


def object_id_of(value: bytes) -> str:
    """The alert's objectId without decoding it: the third string of a 3.3 record."""
    payload = next(block.payload for block in read_container(value).blocks if block.record_count)
    position = 0
    for _ in range(2):  # schemavsn, publisher
        length, position = _read_varint(payload, position)
        position += length
    length, position = _read_varint(payload, position)
    return bytes(payload[position : position + length]).decode()


def _cycled_alerts(cache: AlertCache, distinct: int) -> Iterator[tuple[str, bytes]]:
    while True:
        for value in cache.read(distinct):
            yield object_id_of(value), value


class _ArrivalRecorder(threading.Thread):
    """Reads the output topic read_committed and notes when each message shows up."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        super().__init__(daemon=True)
        self.arrivals: list[tuple[str, float]] = []
        self.stop = threading.Event()
        self.error: str | None = None
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": unique_name("bench-latency-reader"),
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
            }
        )
        self._consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                for message in self._consumer.consume(500, 0.1):
                    arrived = time.time()
                    error = message.error()
                    if error is not None:
                        if error.code() != KafkaError._PARTITION_EOF:
                            self.error = str(error)
                        continue
                    key = message.key() or b""
                    self.arrivals.append((key.decode(), arrived))
        finally:
            self._consumer.close()


def _start_daemon(environment: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    daemon_program = Path(os.environ.get("VIRTUAL_ENV", PROJECT_ROOT / ".venv")) / "bin"
    executable = daemon_program / "dagster-daemon"
    if not executable.exists():
        executable = PROJECT_ROOT / ".venv" / "bin" / "dagster-daemon"
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [str(executable), "run", "-w", str(PROJECT_ROOT / "workspace.yaml")],
            cwd=PROJECT_ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as one afterwards
        )


def start_worker(
    environment: dict[str, str], log_path: Path, *, concurrency: int = 1, name: str | None = None
) -> subprocess.Popen[bytes]:
    """An ``xmatch-pipeline worker`` (the project's run worker) in its own process group, once
    it is ready to take runs (its code location imported)."""
    command = [
        str(Path(sys.executable)), "-m", "xmatch_pipeline.cli.main", "worker",
        "--concurrency", str(concurrency), *(["--name", name] if name else []),
    ]  # fmt: skip
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as one afterwards
        )
    deadline = time.monotonic() + DAEMON_READY_TIMEOUT_SECONDS
    while " ready." not in log_path.read_text(errors="replace"):
        if worker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"xmatch-pipeline worker not ready:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)
    return worker


def _wait_for_sensor(daemon: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + DAEMON_READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise RuntimeError(f"dagster-daemon exited:\n{log_path.read_text()[-3000:]}")
        if "kafka_lag_sensor" in log_path.read_text(errors="replace"):
            return
        time.sleep(1)
    raise RuntimeError(f"the sensor never ticked in {DAEMON_READY_TIMEOUT_SECONDS} s: {log_path}")


def _stop_daemon(daemon: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group (daemon and code server, or a worker), then SIGKILL."""
    if daemon.poll() is not None:
        return
    os.killpg(daemon.pid, signal.SIGTERM)
    try:
        daemon.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait(timeout=10)


def _produce_steadily(  # noqa: PLR0917
    bootstrap: str, topic: str, partitions: int, rate: float, duration: float,
    cache: AlertCache, sent: dict[str, deque[float]],
) -> tuple[int, float]:  # fmt: skip
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5}
    )
    total = int(rate * duration)
    alerts = _cycled_alerts(cache, min(MAX_ALERTS, total))
    started = time.monotonic()
    for index in range(total):
        delay = started + index / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        object_id, value = next(alerts)
        sent[object_id].append(time.time())
        producer.produce(topic, value, key=object_id, partition=index % partitions)
        producer.poll(0)
    elapsed = time.monotonic() - started
    if producer.flush(60):
        raise RuntimeError("latency producer: messages undelivered after 60 s")
    return total, total / elapsed


def _ledger_runs(database_url: str) -> list[dict[str, Any]]:
    engine = create_engine(database_url, poolclass=NullPool)
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT partition, start_offset, end_offset, status, "
                "EXTRACT(EPOCH FROM finished_at - started_at) AS seconds "
                "FROM offset_range_ledger ORDER BY started_at"
            )
        ).mappings()
        runs = [dict(row) for row in rows]
    engine.dispose()
    return runs


def _write_instance_settings(home: Path, run_coordinator_config: dict[str, Any] | None) -> None:
    if not run_coordinator_config:
        shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
        return
    settings = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())
    settings["run_coordinator"]["config"] = run_coordinator_config
    (home / "dagster.yaml").write_text(yaml.safe_dump(settings))


def _dagster_runs(dagster_url: str) -> list[dict[str, Any]]:
    """Each run's queued, started and finished times (epoch seconds) from Dagster's storage."""
    engine = create_engine(dagster_url, poolclass=NullPool)
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT status, EXTRACT(EPOCH FROM create_timestamp) AS queued, start_time, "
                "end_time FROM runs ORDER BY create_timestamp"
            )
        ).mappings()
        runs = [dict(row) for row in rows]
    engine.dispose()
    return runs


def run_phases(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Medians of queued → started (launch) and started → finished (the run itself)."""
    done = [run for run in runs if run["start_time"] and run["end_time"]]
    if not done:
        return {}
    return {
        "queued_to_started": statistics.median(
            float(run["start_time"]) - float(run["queued"]) for run in done
        ),
        "started_to_finished": statistics.median(
            float(run["end_time"]) - float(run["start_time"]) for run in done
        ),
    }


def measure_latency(
    devstack: DevstackSettings,
    index_dir: Path,
    *,
    rate: float,
    duration: float,
    partitions: int,
    run_coordinator_config: dict[str, Any] | None = None,
) -> LatencyResult:
    """``run_coordinator_config`` is added to the project's ``dagster.yaml`` (to try a variant)."""
    cache = AlertCache()
    cache.ensure(min(MAX_ALERTS, int(rate * duration)))
    work_dir = Path(tempfile.mkdtemp(prefix="xmatch-bench-dagster-"))
    _write_instance_settings(work_dir, run_coordinator_config)
    log_path = work_dir / "daemon.log"
    with (
        fresh_database(devstack, with_schema=False) as database_url,
        fresh_database(devstack, with_schema=False) as dagster_url,
        fresh_topic(devstack, "bench-latency-in", partitions) as input_topic,
        fresh_topic(devstack, "bench-latency-out", partitions) as output_topic,
    ):
        environment = os.environ | pipeline_environment(
            devstack,
            database_url=database_url,
            input_topic=input_topic,
            output_topic=output_topic,
            group_id=unique_name("bench-latency"),
            index_dir=index_dir,
            XMATCH_SENSOR_INTERVAL_SECONDS=str(SENSOR_INTERVAL_SECONDS),
            DAGSTER_HOME=str(work_dir),
            DAGSTER_PG_DB=database_name(dagster_url),
        )
        worker = start_worker(environment, work_dir / "worker.log", concurrency=partitions)
        daemon = _start_daemon(environment, log_path)
        recorder = _ArrivalRecorder(devstack.kafka_bootstrap_servers, output_topic, partitions)
        try:
            _wait_for_sensor(daemon, log_path)
            recorder.start()
            sent: dict[str, deque[float]] = defaultdict(deque)
            print(f"  daemon up; producing {rate:g} alerts/s for {duration:g} s", flush=True)
            produced, achieved = _produce_steadily(
                devstack.kafka_bootstrap_servers, input_topic, partitions, rate, duration,
                cache, sent,
            )  # fmt: skip
            deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
            while len(recorder.arrivals) < produced and time.monotonic() < deadline:
                time.sleep(1)
            recorder.stop.set()
            recorder.join(timeout=10)
        finally:
            _stop_daemon(daemon)
            _stop_daemon(worker)
            recorder.stop.set()
        runs = _ledger_runs(database_url)
        dagster_runs = _dagster_runs(dagster_url)
        shutil.copy(log_path, KEPT_DAEMON_LOG)
    latencies = [arrived - sent[key].popleft() for key, arrived in recorder.arrivals]
    shutil.rmtree(work_dir, ignore_errors=True)
    if recorder.error:
        print(f"  output reader reported: {recorder.error}", flush=True)
    return LatencyResult(
        rate=rate, duration_seconds=duration, partitions=partitions, produced=produced,
        received=len(recorder.arrivals), latencies=latencies, runs=runs, achieved_rate=achieved,
        dagster_runs=dagster_runs,
    )  # fmt: skip


def summary(result: LatencyResult) -> dict[str, float]:
    succeeded = [run for run in result.runs if run["status"] == "succeeded"]
    sizes = [run["end_offset"] - run["start_offset"] for run in succeeded]
    return {
        "p50": result.percentile(0.50),
        "p95": result.percentile(0.95),
        "p99": result.percentile(0.99),
        "max": max(result.latencies, default=float("nan")),
        "mean": statistics.fmean(result.latencies) if result.latencies else float("nan"),
        "runs": float(len(succeeded)),
        "failed_runs": float(len(result.runs) - len(succeeded)),
        "median_run_size": float(statistics.median(sizes)) if sizes else 0.0,
        "median_run_seconds": (
            float(statistics.median(float(run["seconds"]) for run in succeeded)) if sizes else 0.0
        ),
    }
