"""A soak at Rubin's rate through the real daemon: ``.venv/bin/python -m bench.soak``.

Reuses the latency harness (``bench.pipeline.latency``: its steady producer, its daemon
start and stop, its ``read_committed`` arrival recorder) and samples every
``--sample-seconds`` while the load runs and while it drains: lag per partition, RSS of
every process under the daemon by role (daemon, code server, run processes, a Celery
worker if one runs), alerts produced against read back, Dagster run statuses. At the end
it judges memory growth (the last 10 minutes after the warm-up against the first 10),
lag (max, p99) and exactness (nothing lost, nothing duplicated), writes the raw samples to
``bench/results/soak.json`` and its section of ``docs/benchmarks.md``.
Default: 300 alerts/s for 60 minutes; ``--minutes 5`` for a short try.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.pipeline.infra import (
    database_name,
    fresh_database,
    fresh_topic,
    pipeline_environment,
    unique_name,
)
from bench.pipeline.latency import (
    SENSOR_INTERVAL_SECONDS,
    _ArrivalRecorder,
    _dagster_runs,
    _produce_steadily,
    _start_daemon,
    _stop_daemon,
    _wait_for_sensor,
    _write_instance_settings,
    start_worker,
)
from bench.pipeline.stats import load_average, machine
from bench.pipeline.workload import CACHE_DIR, MAX_ALERTS, PROJECT_ROOT, AlertCache, catalog_index
from bench.soak.processes import (
    LONG_LIVED_ROLES,
    pipeline_processes,
    rss_by_role,
    stop_leftovers,
)
from bench.soak.summary import (
    SOAK_RESULTS,
    exactness,
    lag_statistics,
    memory_growth,
    update_benchmarks_report,
)
from xmatch_pipeline.devtools.devstack import DevstackSettings, ensure_devstack_running
from xmatch_pipeline.kafka.client_config import KafkaClientConfig, KafkaOperationError
from xmatch_pipeline.read.kafka_offsets import KafkaOffsetsReader

KEPT_DAEMON_LOG = CACHE_DIR / "last-soak-daemon.log"


class _Probe:
    """Takes one sample: lag, memory by role, counts, run statuses."""

    def __init__(
        self,
        devstack: DevstackSettings,
        *,
        topic: str,
        group: str,
        dagster_url: str,
        roots: Callable[[], list[int]],
        sent: dict[str, deque[float]],
        recorder: _ArrivalRecorder,
    ) -> None:
        self._offsets = KafkaOffsetsReader(
            KafkaClientConfig(devstack.kafka_bootstrap_servers), group, timeout_seconds=5
        )
        self._topic = topic
        self._dagster_url = dagster_url
        self._roots = roots
        self._sent = sent
        self._recorder = recorder
        self.started = time.monotonic()

    def lags(self) -> dict[str, int] | str:
        try:
            partitions = self._offsets.lags([self._topic])
        except KafkaOperationError as error:
            return str(error)
        deleted = {p.partition: p.offsets_deleted_unprocessed for p in partitions}
        if any(deleted.values()):
            raise SoakInvalidError(
                f"retention deleted input the group had not read yet ({deleted} offsets per "
                "partition): the lag outgrew INPUT_CONFIG's retention, so this "
                "soak's exactness figures would be wrong; lengthen the retention (disk "
                "permitting) or run on a quieter machine"
            )
        return {str(p.partition): p.lag for p in partitions}

    def sample(self, phase: str) -> dict[str, Any]:
        lags = self.lags()
        processes = pipeline_processes(self._roots())
        statuses = Counter(str(run["status"]) for run in _dagster_runs(self._dagster_url))
        return {
            "elapsed": time.monotonic() - self.started,
            "phase": phase,
            "lag": lags if isinstance(lags, dict) else None,
            "lag_error": lags if isinstance(lags, str) else None,
            "rss_by_role": rss_by_role(processes),
            "count_by_role": dict(Counter(p.role for p in processes)),
            "rss_by_pid": {
                str(p.pid): p.rss_bytes for p in processes if p.role in LONG_LIVED_ROLES
            },
            "run_worker_rss": [p.rss_bytes for p in processes if p.role == "run_worker"],
            "processes": len(processes),
            "produced": sum(len(times) for times in list(self._sent.values())),
            "received": len(self._recorder.arrivals),
            "runs": dict(statuses),
        }


def _sample_while(
    probe: _Probe, phase: str, keep_going: Callable[[], bool], every: float
) -> list[dict[str, Any]]:
    samples = []
    next_at = time.monotonic()
    while keep_going():
        samples.append(probe.sample(phase))
        last = samples[-1]
        print(
            f"  {last['elapsed'] / 60:5.1f} min {phase}: produced {last['produced']:,} read "
            f"{last['received']:,} lag {last['lag'] or last['lag_error']} runs {last['runs']} "
            f"RSS MB { {k: round(v / 1e6) for k, v in last['rss_by_role'].items()} }",
            flush=True,
        )
        next_at += every
        while keep_going() and time.monotonic() < next_at:
            time.sleep(min(1.0, max(0.0, next_at - time.monotonic())))
    return samples


#: An hour at 300 alerts/s is ~75 GB of input and as much output again: the soak's topics
#: keep only their last minutes (whole 128 MB segments are deleted), or the disk fills and
#: the broker stops (seen: after 40 minutes with 74 GB free). The input keeps 30 minutes, far
#: more than the lag may reach: 5 minutes was too few on a loaded machine (seen: retention
#: deleted input the group had not read, and the range failed). Every sample checks it, and
#: the soak stops as invalid if retention ever deletes an unread input message. The output
#: is read as it arrives, so its last 5 minutes are plenty.
SEGMENT_BYTES = str(128 * 2**20)
INPUT_CONFIG = {"retention.ms": str(30 * 60 * 1000), "segment.bytes": SEGMENT_BYTES}
OUTPUT_CONFIG = {"retention.ms": str(5 * 60 * 1000), "segment.bytes": SEGMENT_BYTES}
#: The drain waits until every produced alert is read back, at most this long.
DRAIN_MINUTES = 30.0


class SoakInvalidError(RuntimeError):
    """The harness, not the pipeline, lost input: its results would mean nothing."""


def soak(
    devstack: DevstackSettings,
    index_dir: Path,
    *,
    rate: float,
    seconds: float,
    partitions: int,
    sample_seconds: float,
    drain_seconds: float,
) -> dict[str, Any]:
    cache = AlertCache()
    work_dir = Path(tempfile.mkdtemp(prefix="xmatch-soak-dagster-"))
    _write_instance_settings(work_dir, None)
    log_path = work_dir / "daemon.log"
    group = unique_name("bench-soak")
    with (
        fresh_database(devstack, with_schema=False) as database_url,
        fresh_database(devstack, with_schema=False) as dagster_url,
        fresh_topic(devstack, "bench-soak-in", partitions, INPUT_CONFIG) as input_topic,
        fresh_topic(devstack, "bench-soak-out", partitions, OUTPUT_CONFIG) as output_topic,
    ):
        environment = os.environ | pipeline_environment(
            devstack,
            database_url=database_url,
            input_topic=input_topic,
            output_topic=output_topic,
            group_id=group,
            index_dir=index_dir,
            XMATCH_SENSOR_INTERVAL_SECONDS=str(SENSOR_INTERVAL_SECONDS),
            DAGSTER_HOME=str(work_dir),
            DAGSTER_PG_DB=database_name(dagster_url),
        )
        # Runs execute in a warm run worker (dagster.yaml's Celery run launcher), as deployed.
        worker = start_worker(environment, work_dir / "worker.log", concurrency=partitions)
        daemon = _start_daemon(environment, log_path)
        recorder = _ArrivalRecorder(devstack.kafka_bootstrap_servers, output_topic, partitions)
        sent: dict[str, deque[float]] = defaultdict(deque)
        outcome: dict[str, Any] = {}

        def produce() -> None:
            try:
                outcome["produced"], outcome["achieved"] = _produce_steadily(
                    devstack.kafka_bootstrap_servers, input_topic, partitions, rate, seconds,
                    cache, sent,
                )  # fmt: skip
            except Exception as error:  # reported in the results, never swallowed
                outcome["error"] = repr(error)

        try:
            _wait_for_sensor(daemon, log_path)
            recorder.start()
            probe = _Probe(
                devstack, topic=input_topic, group=group, dagster_url=dagster_url,
                roots=lambda: [daemon.pid, worker.pid], sent=sent, recorder=recorder,
            )  # fmt: skip
            producer = threading.Thread(target=produce, name="soak-producer", daemon=True)
            print(f"  daemon up; producing {rate:g} alerts/s for {seconds / 60:g} min", flush=True)
            producer.start()
            samples = _sample_while(probe, "load", producer.is_alive, sample_seconds)
            load_seconds = time.monotonic() - probe.started
            target = outcome.get("produced", 0)
            drain_until = time.monotonic() + drain_seconds
            samples += _sample_while(
                probe,
                "drain",
                lambda: len(recorder.arrivals) < target and time.monotonic() < drain_until,
                sample_seconds,
            )
            time.sleep(2)  # the last arrivals; then one final sample
            samples.append(probe.sample("end"))
            recorder.stop.set()
            recorder.join(timeout=10)
        finally:
            _stop_daemon(daemon)
            _stop_daemon(worker)
            leftovers = stop_leftovers([daemon.pid, worker.pid])
            if leftovers:
                print(f"  stopped {len(leftovers)} processes the daemon left: {leftovers}")
            recorder.stop.set()
        final_lag = probe.lags()
        runs = _dagster_runs(dagster_url)
        shutil.copy(log_path, KEPT_DAEMON_LOG)
    shutil.rmtree(work_dir, ignore_errors=True)
    produced_per_key = {key: len(times) for key, times in sent.items()}
    latencies = sorted(
        arrived - sent[key].popleft() for key, arrived in recorder.arrivals if sent[key]
    )
    # Counted before the daemon is stopped: stopping it interrupts a run still in progress,
    # which Dagster then records as failed (the harness's doing, not the pipeline's).
    statuses = Counter(samples[-1]["runs"])
    return {
        "rate": rate,
        "achieved_rate": outcome.get("achieved", 0.0),
        "producer_error": outcome.get("error"),
        "output_reader_error": recorder.error,
        "load_seconds": load_seconds,
        "partitions": partitions,
        "sample_seconds": sample_seconds,
        "samples": samples,
        "exactness": exactness(
            produced_per_key,
            (key for key, _ in recorder.arrivals),
            pending=int(sum(final_lag.values())) if isinstance(final_lag, dict) else 0,
        ),
        "lag_after_drain": float(sum(final_lag.values())) if isinstance(final_lag, dict) else -1,
        "runs": {
            "succeeded": statuses.get("SUCCESS", 0),
            "failed": statuses.get("FAILURE", 0),
            "other": {k: v for k, v in statuses.items() if k not in ("SUCCESS", "FAILURE")},
            "failed_after_stopping_the_daemon": sum(1 for r in runs if r["status"] == "FAILURE"),
        },
        "latency": {
            "p50": latencies[len(latencies) // 2] if latencies else float("nan"),
            "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
            if latencies
            else float("nan"),
            "max": latencies[-1] if latencies else float("nan"),
        },
    }


def _run_worker_rss(samples: list[dict[str, Any]]) -> dict[str, float | None]:
    values = [rss / 1e6 for sample in samples for rss in sample["run_worker_rss"]]
    if not values:
        return {"median": None, "max": None}
    return {"median": statistics.median(values), "max": max(values)}


def summarise(results: dict[str, Any], warmup_seconds: float) -> dict[str, Any]:
    """Add the judgements (memory growth, lag) to the raw results."""
    load = [s for s in results["samples"] if s["phase"] == "load"]
    results["warmup_seconds"] = warmup_seconds
    results["memory"] = memory_growth(load, results["load_seconds"], warmup_seconds)
    results["lag"] = lag_statistics(load)
    results["run_worker_rss_mb"] = _run_worker_rss(results["samples"])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=300.0, help="alerts per second")
    parser.add_argument("--minutes", type=float, default=60.0, help="how long to load")
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--sample-seconds", type=float, default=10.0)
    parser.add_argument(
        "--drain-minutes", type=float, default=DRAIN_MINUTES,
        help="after the load, how long to wait for the backlog to be read back",
    )  # fmt: skip
    parser.add_argument(
        "--warmup-minutes", type=float, default=None,
        help="excluded from the memory comparison (default 5, or a fifth of a shorter soak)",
    )  # fmt: skip
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the report from soak.json"
    )
    args = parser.parse_args()
    if args.report_only:
        update_benchmarks_report(json.loads(SOAK_RESULTS.read_text()))
        return
    seconds = args.minutes * 60
    warmup = 60 * (
        args.warmup_minutes if args.warmup_minutes is not None else min(5.0, args.minutes / 5)
    )
    devstack = ensure_devstack_running()
    index_dir = catalog_index()
    AlertCache().ensure(min(MAX_ALERTS, int(args.rate * seconds)))
    load_before = load_average()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results = soak(
        devstack, index_dir, rate=args.rate, seconds=seconds, partitions=args.partitions,
        sample_seconds=args.sample_seconds, drain_seconds=args.drain_minutes * 60,
    )  # fmt: skip
    results |= {
        "command": "python -m bench.soak " + " ".join(sys.argv[1:]),
        "started": started,
        "machine": machine(),
        "load_before": load_before,
        "load_after": load_average(),
        "short": seconds < 3600,
    }
    summarise(results, warmup)
    SOAK_RESULTS.parent.mkdir(parents=True, exist_ok=True)
    SOAK_RESULTS.write_text(json.dumps(results, indent=1, default=str))
    update_benchmarks_report(results)
    exact, memory = results["exactness"], results["memory"]
    print(
        f"soak done: produced {exact['produced']:,}, read back {exact['received']:,}, lost "
        f"{exact['lost']}, duplicated {exact['duplicated']}, runs failed "
        f"{results['runs']['failed']}, memory growth {memory['growth']}, lag max "
        f"{results['lag']['max_total']:.0f} p99 {results['lag']['p99_total']:.0f}; "
        f"{SOAK_RESULTS.relative_to(PROJECT_ROOT)}, docs/benchmarks.md",
        flush=True,
    )


if __name__ == "__main__":
    main()
